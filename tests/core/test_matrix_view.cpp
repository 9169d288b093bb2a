#include <doctest/doctest.h>

#include "lori/core/eigen.hpp"
#include "lori/core/matrix_view.hpp"
#include "test_util.hpp"

#include <type_traits>
#include <vector>

static_assert(std::is_trivially_copyable_v<lori::matrix_view<float>>, "views must be trivially copyable (kernel arguments)");
static_assert(std::is_trivially_copyable_v<lori::vector_view<const double>>, "views must be trivially copyable");
static_assert(std::is_same_v<lori::index_t, std::int64_t>, "64-bit sizes");

TEST_CASE("matrix_view indexes row- and column-major storage with a leading dimension") {
  // 3 x 4 matrix inside a 3 x 6 row-major buffer.
  std::vector<int> buf(18);
  for (int k = 0; k < 18; ++k) buf[k] = k;
  lori::row_major_view<int> v(buf.data(), 3, 4, 6);
  CHECK(v(0, 0) == 0);
  CHECK(v(1, 2) == 8);
  CHECK(v(2, 3) == 15);
  CHECK_FALSE(v.is_contiguous());
  auto t = v.transposed();
  static_assert(decltype(t)::order == lori::layout::col_major);
  CHECK(t.rows() == 4);
  CHECK(t.cols() == 3);
  CHECK(t(2, 1) == v(1, 2));
  auto b = v.block(1, 1, 2, 2);
  CHECK(b(0, 0) == 7);
  CHECK(b(1, 1) == 14);
  lori::col_major_view<int> c(buf.data(), 4, 3, 6);
  CHECK(c(1, 2) == 13);
  lori::row_major_view<const int> cv = v;  // mutable -> const
  CHECK(cv(2, 0) == 12);
  CHECK(v.at(2, 3) == 15);
}

TEST_CASE("matrix_view rejects bad shapes and indices with lori::error") {
  std::vector<float> buf(8);
  CHECK_THROWS_AS(lori::row_major_view<float>(buf.data(), -1, 2), lori::error);
  CHECK_THROWS_AS(lori::row_major_view<float>(buf.data(), 2, 4, 3), lori::error);
  CHECK_THROWS_AS(lori::row_major_view<float>(nullptr, 2, 4), lori::error);
  CHECK_NOTHROW(lori::row_major_view<float>(nullptr, 0, 4));
  lori::row_major_view<float> v(buf.data(), 2, 4);
  CHECK_THROWS_AS(v.at(2, 0), lori::error);
  CHECK_THROWS_AS(v.block(1, 1, 2, 2), lori::error);
  CHECK_THROWS_AS(lori::vector_view<float>(nullptr, 3), lori::error);
}

TEST_CASE("Eigen bridges share memory both ways, honouring strides") {
  auto g = lori_test::rng(1);
  for (auto [r, c] : {std::pair{0, 0}, std::pair{1, 1}, std::pair{3, 5}, std::pair{7, 2}}) {
    Eigen::MatrixXd m = lori_test::randn<double>(r, c, g);  // column-major
    auto v = lori::view(m);
    static_assert(decltype(v)::order == lori::layout::col_major);
    CHECK(v.rows() == r);
    CHECK(v.cols() == c);
    for (int i = 0; i < r; ++i)
      for (int j = 0; j < c; ++j) CHECK(v(i, j) == m(i, j));
    auto back = lori::as_eigen(v);
    CHECK(back.data() == m.data());
    lori_test::MatrixXfR rm = lori_test::randn<float>(r, c, g);
    auto rv = lori::view(rm);
    static_assert(decltype(rv)::order == lori::layout::row_major);
    if (r > 0 && c > 0) {
      rv(r - 1, c - 1) = 42.0f;  // writes through
      CHECK(rm(r - 1, c - 1) == 42.0f);
    } else {
      CHECK(rv.empty());
    }
  }
  // A block of a larger matrix keeps the parent's leading dimension.
  lori_test::MatrixXdR big = lori_test::randn<double>(6, 9, g);
  auto blk = lori::view(big).block(2, 3, 3, 4);
  auto mb = lori::as_eigen(blk);
  CHECK((mb - big.block(2, 3, 3, 4)).norm() == 0.0);
  Eigen::Map<Eigen::MatrixXd> mp(big.data(), 9, 6);
  auto mv = lori::view(mp);
  CHECK(mv(4, 5) == mp(4, 5));
}
