#include <doctest/doctest.h>

#include "lori/mask/bitmask.hpp"
#include "test_util.hpp"

#include <vector>

TEST_CASE("bitmask matches a dense bool reference at several shapes") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(11);
  for (auto [r, c] : {std::pair{0, 0}, std::pair{0, 5}, std::pair{3, 0}, std::pair{1, 1}, std::pair{5, 63},
                      std::pair{4, 64}, std::pair{3, 65}, std::pair{17, 130}}) {
    std::bernoulli_distribution keep(0.3);
    std::vector<std::uint8_t> dense(static_cast<std::size_t>(r * c));
    for (auto& x : dense) x = keep(g);
    auto m = lori::bitmask::from_dense(lori::row_major_view<const std::uint8_t>(dense.data(), r, c));
    CHECK(m.rows() == r);
    CHECK(m.cols() == c);
    CHECK(m.words_per_row() == (c + 63) / 64);
    long expected = 0;
    for (int i = 0; i < r; ++i) {
      long row_count = 0;
      for (int j = 0; j < c; ++j) {
        REQUIRE(m.test(i, j) == (dense[static_cast<std::size_t>(i * c + j)] != 0));
        row_count += dense[static_cast<std::size_t>(i * c + j)];
      }
      REQUIRE(m.count_row(i) == row_count);
      expected += row_count;
    }
    CHECK(m.count() == expected);
    CHECK(m.to_bytes() == dense);
    // CSR round trip.
    auto csr = m.to_csr();
    CHECK(csr.nnz() == expected);
    CHECK(lori::bitmask::from_csr(csr) == m);
    // Filling sets only valid bits (padding stays zero, so counts are exact).
    lori::bitmask full(r, c, true);
    CHECK(full.count() == r * c);
    lori::bitmask inv = full;
    inv.and_not(m);
    CHECK(inv.count() == r * c - expected);
    CHECK(inv.count_and(m) == 0);
    inv |= m;
    CHECK(inv == full);
  }
}

TEST_CASE("bitmask rejects bad input") {
  lori::bitmask m(3, 4);
  CHECK_THROWS_AS(m.set(3, 0), lori::error);
  CHECK_THROWS_AS(m.test(0, 4), lori::error);
  CHECK_THROWS_AS(lori::bitmask(-1, 2), lori::error);
  lori::bitmask other(3, 5);
  CHECK_THROWS_AS(m &= other, lori::error);
  lori::csr_indices<int> bad;
  bad.rows = 1;
  bad.cols = 4;
  bad.row_ptr = {0, 2};
  bad.col_idx = {2, 1};  // not ascending
  CHECK_THROWS_AS(lori::bitmask::from_csr(bad), lori::error);
  bad.col_idx = {1, 4};  // out of range
  CHECK_THROWS_AS(lori::bitmask::from_csr(bad), lori::error);
  // Non-monotone row_ptr whose ends are consistent: must be rejected before col_idx is read
  // (reading rows in order would run past col_idx's single element).
  lori::csr_indices<int> dip;
  dip.rows = 2;
  dip.cols = 4;
  dip.row_ptr = {0, 2, 1};
  dip.col_idx = {3};
  CHECK_THROWS_AS(lori::bitmask::from_csr(dip), lori::error);
}
