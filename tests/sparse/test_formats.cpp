// Sparse B formats: dense + mask, CSR, bitmask + packed values; lossless round trips, counts, memory.
#include <doctest/doctest.h>

#include "lori/core/eigen.hpp"
#include "lori/sparse/convert.hpp"
#include "lori/sparse/csr_matrix.hpp"
#include "lori/sparse/masked_dense.hpp"
#include "lori/sparse/packed_matrix.hpp"
#include "test_util.hpp"

#include <random>
#include <type_traits>

namespace {
lori::bitmask random_mask(lori::index_t rows, lori::index_t cols, double keep, std::mt19937_64& g) {
  std::bernoulli_distribution bd(keep);
  lori::bitmask m(rows, cols);
  for (lori::index_t i = 0; i < rows; ++i)
    for (lori::index_t j = 0; j < cols; ++j)
      if (bd(g)) m.set(i, j);
  return m;
}

// A dense matrix that is random at kept positions (a few exact zeros kept on purpose) and zero elsewhere.
template <class T>
lori_test::MatrixXdR masked_random(const lori::bitmask& m, std::mt19937_64& g) {
  lori_test::MatrixXdR d = lori_test::randn<double>(m.rows(), m.cols(), g);
  std::uniform_int_distribution<int> pick(0, 9);
  for (lori::index_t i = 0; i < m.rows(); ++i)
    for (lori::index_t j = 0; j < m.cols(); ++j) {
      if (!m.test(i, j)) d(i, j) = 0.0;
      else if (pick(g) == 0) d(i, j) = 0.0;  // a kept entry whose value is zero must stay kept
      else d(i, j) = static_cast<double>(static_cast<T>(d(i, j)));
    }
  return d;
}
}  // namespace

static_assert(std::is_trivially_copyable_v<lori::csr_view<const float>>, "kernel arguments must be trivially copyable");

TEST_CASE_TEMPLATE("sparse B formats convert losslessly and agree on nnz, density and memory", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(11);
  using M = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  struct Shape { lori::index_t d, r; double keep; };
  for (Shape s : {Shape{0, 0, 0.5}, Shape{0, 5, 0.5}, Shape{7, 0, 0.5}, Shape{1, 1, 1.0}, Shape{13, 1, 0.3}, Shape{37, 32, 0.1},
                  Shape{9, 70, 0.5}, Shape{16, 64, 0.0}, Shape{5, 65, 1.0}}) {
    CAPTURE(s.d);
    CAPTURE(s.r);
    CAPTURE(s.keep);
    const lori::bitmask mask = random_mask(s.d, s.r, s.keep, g);
    const M dense = masked_random<T>(mask, g).template cast<T>();
    const auto dv = lori::view(dense);

    const auto md = lori::masked_dense<T>(dv, mask);
    const auto csr = lori::csr_matrix<T>::from_dense(dv, mask);
    const auto pk = lori::packed_matrix<T>::from_dense(dv, mask);
    const lori::index_t nnz = mask.count();
    CHECK(md.nnz() == nnz);
    CHECK(csr.nnz() == nnz);
    CHECK(pk.nnz() == nnz);
    CHECK(csr.density() == doctest::Approx(mask.density()));
    CHECK(pk.density() == doctest::Approx(mask.density()));
    CHECK(md.memory_bytes() == static_cast<lori::index_t>(s.d * s.r * sizeof(T)) + mask.memory_bytes());
    CHECK(csr.memory_bytes() == static_cast<lori::index_t>((s.d + 1 + nnz) * 4 + nnz * sizeof(T)));
    CHECK(pk.memory_bytes() == mask.memory_bytes() + static_cast<lori::index_t>(nnz * sizeof(T)));
    // CSR and packed store the same values in the same (row-major) order.
    CHECK(csr.values() == pk.values());
    // Values are the kept entries in row-major order.
    {
      std::size_t p = 0;
      bool ok = true;
      for (lori::index_t i = 0; i < s.d; ++i)
        for (lori::index_t j = 0; j < s.r; ++j)
          if (mask.test(i, j)) ok = ok && pk.values()[p++] == dense(i, j);
      CHECK(ok);
      CHECK(p == static_cast<std::size_t>(nnz));
    }
    // Round trips through every pair.
    CHECK(lori::to_csr(pk) == csr);
    CHECK(lori::to_csr(md) == csr);
    CHECK(lori::to_packed(csr) == pk);
    CHECK(lori::to_packed(md) == pk);
    CHECK(csr.mask() == mask);
    CHECK(pk.mask() == mask);
    for (const auto& back : {lori::to_masked_dense(csr), lori::to_masked_dense(pk)}) {
      CHECK(back.mask() == mask);
      CHECK(back.zero_outside());
      M out = M::Constant(s.d, s.r, T(-7));
      for (lori::index_t i = 0; i < s.d; ++i)
        for (lori::index_t j = 0; j < s.r; ++j) out(i, j) = back.dense()(i, j);
      CHECK((out - dense).norm() == T(0));
    }
    // to_dense overwrites every element (poisoned output).
    M out = M::Constant(s.d, s.r, std::numeric_limits<T>::quiet_NaN());
    csr.to_dense(lori::view(out));
    CHECK((out - dense).cwiseAbs().sum() == T(0));
    out.setConstant(std::numeric_limits<T>::quiet_NaN());
    pk.to_dense(lori::view(out));
    CHECK((out - dense).cwiseAbs().sum() == T(0));
  }
}

TEST_CASE("CSR structure matches the mask's CSR indices and rejects malformed arrays") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(12);
  const lori::bitmask mask = random_mask(23, 32, 0.2, g);
  const lori::csr_matrix<float> c(mask);
  const auto ind = mask.to_csr();
  CHECK(c.row_ptr() == ind.row_ptr);
  CHECK(c.col_idx() == ind.col_idx);
  CHECK(c.view().nnz() == mask.count());
  // Valid explicit construction.
  CHECK_NOTHROW(lori::csr_matrix<float>(2, 3, {0, 1, 3}, {2, 0, 1}, {1.f, 2.f, 3.f}));
  CHECK_THROWS_AS(lori::csr_matrix<float>(2, 3, {0, 1}, {2}, {1.f}), lori::error);                  // row_ptr size
  CHECK_THROWS_AS(lori::csr_matrix<float>(2, 3, {0, 1, 2}, {2, 0}, {1.f}), lori::error);            // values count
  CHECK_THROWS_AS(lori::csr_matrix<float>(2, 3, {0, 2, 1}, {2}, {1.f}), lori::error);               // end != nnz
  CHECK_THROWS_AS(lori::csr_matrix<float>(2, 3, {0, 2, 2}, {2, 1}, {1.f, 2.f}), lori::error);       // not ascending
  CHECK_THROWS_AS(lori::csr_matrix<float>(2, 3, {0, 1, 2}, {3, 0}, {1.f, 2.f}), lori::error);       // column >= cols
  CHECK_THROWS_AS(lori::csr_matrix<float>(2, 3, {1, 1, 2}, {0, 1}, {1.f, 2.f}), lori::error);       // start != 0
  CHECK_THROWS_AS(lori::csr_matrix<float>(-1, 3, {0}, {}, {}), lori::error);
}

TEST_CASE("conversions refuse to lose entries outside the mask and reject mismatched shapes / counts") {
  lori::bitmask mask(3, 4);
  mask.set(0, 1);
  mask.set(2, 3);
  Eigen::Matrix<double, 3, 4, Eigen::RowMajor> dense = Eigen::Matrix<double, 3, 4, Eigen::RowMajor>::Zero();
  dense(0, 1) = 1.5;
  dense(2, 3) = -2.0;
  dense(1, 1) = 4.0;  // outside the mask
  const auto dv = lori::view(dense);
  CHECK_THROWS_AS(lori::csr_matrix<double>::from_dense(dv, mask), lori::error);
  CHECK_THROWS_AS(lori::packed_matrix<double>::from_dense(dv, mask), lori::error);
  CHECK_THROWS_AS(lori::masked_dense<double>(dv, mask), lori::error);
  // Explicitly dropping is allowed.
  const auto c = lori::csr_matrix<double>::from_dense(dv, mask, false);
  CHECK(c.values() == std::vector<double>{1.5, -2.0});
  lori::masked_dense<double> md(dv, mask, true);
  CHECK(md.dense()(1, 1) == 0.0);
  CHECK(md.zero_outside());
  md.dense()(1, 2) = 3.0;
  CHECK_FALSE(md.zero_outside());
  CHECK_THROWS_AS(lori::to_csr(md), lori::error);
  md.apply_mask();
  CHECK(md.zero_outside());
  CHECK(lori::to_csr(md) == c);
  // Shape and count mismatches.
  Eigen::Matrix<double, 3, 3, Eigen::RowMajor> wrong = Eigen::Matrix<double, 3, 3, Eigen::RowMajor>::Zero();
  CHECK_THROWS_AS(lori::csr_matrix<double>::from_dense(lori::view(wrong), mask), lori::error);
  CHECK_THROWS_AS(lori::packed_matrix<double>::from_dense(lori::view(wrong), mask), lori::error);
  CHECK_THROWS_AS(lori::packed_matrix<double>(mask, std::vector<double>{1.0}), lori::error);
  CHECK_THROWS_AS(lori::packed_matrix<double>(mask, std::vector<double>{1.0, 2.0, 3.0}), lori::error);
  CHECK_NOTHROW(lori::packed_matrix<double>(mask, std::vector<double>{1.0, 2.0}));
  Eigen::Matrix<double, 3, 3, Eigen::RowMajor> out3;
  CHECK_THROWS_AS(c.to_dense(lori::view(out3)), lori::error);
  CHECK_THROWS_AS(lori::to_packed(c).to_dense(lori::view(out3)), lori::error);
}
