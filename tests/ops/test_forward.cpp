// Forward pass: adapter-only and whole layer, sparse and dense B, against double-precision Eigen references.
#include <doctest/doctest.h>

#include "lori/ops/forward.hpp"
#include "ops_test_util.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace ops_test;

namespace {
// n = 0, n = 1, n < 4 (row path), n = 64 (one whole block), odd sizes, r = 1, d not a multiple of the
// 32-row chunk, empty and full masks.
const Shape kShapes[] = {{0, 5, 7, 3, 0.5},   {1, 33, 17, 4, 0.3},  {1, 1, 1, 1, 1.0},   {3, 9, 40, 5, 0.4},
                         {64, 16, 33, 32, 0.1}, {65, 37, 70, 1, 0.5}, {130, 24, 65, 8, 0.0}, {77, 11, 31, 6, 1.0},
                         {5, 0, 6, 2, 0.5},   {9, 7, 0, 3, 0.5},    {9, 7, 5, 0, 0.5}};
/// ||Y - Yref||_F <= tol * ||Yabs||_F, with Yabs the same sum computed on absolute values: the forward
/// error bound of a float sum is relative to the sum of |terms|, not to |sum| (which can cancel, e.g. at
/// n = k = d = r = 1 where Y is two products of opposite signs).
template <class M>
bool within(const M& Y, const RMd& Yref, const RMd& Yabs, double tol) {
  return (Y.template cast<double>() - Yref).norm() <= tol * Yabs.norm();
}
}  // namespace

TEST_CASE_TEMPLATE("adapter_forward and adapter_forward_dense match Y += s (X A^T) B^T in double", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(21);
  for (const Shape& sh : kShapes) {
    CAPTURE(sh.n);
    CAPTURE(sh.k);
    CAPTURE(sh.d);
    CAPTURE(sh.r);
    CAPTURE(sh.keep);
    const lori::bitmask mask = random_mask(sh.d, sh.r, sh.keep, g);
    RMd Bd;
    const auto B = random_sparse<T>(mask, g, &Bd);
    const RM<T> X = randn_t<T>(sh.n, sh.k, g), A = randn_t<T>(sh.r, sh.k, g), Y0 = randn_t<T>(sh.n, sh.d, g);
    const RM<T> Bt = Bd.cast<T>();
    const T s = T(0.625);
    // Reference in double from the same (rounded) inputs.
    const RMd Href = X.template cast<double>() * A.template cast<double>().transpose();
    const RMd Yref = Y0.template cast<double>() + 0.625 * Href * Bd.transpose();
    const RMd Yabs = Y0.template cast<double>().cwiseAbs() +
                     0.625 * (X.template cast<double>().cwiseAbs() * A.template cast<double>().cwiseAbs().transpose()) * Bd.cwiseAbs().transpose();
    // Error bound: each Y entry is a sum of k*r + r products of N(0,1)-sized terms computed in T; relative
    // Frobenius error <= ~(k + r) * eps (worst-case accumulation bound, far above the typical sqrt(k) eps).
    const double tol = 4.0 * static_cast<double>(sh.k + sh.r + 1) * eps<T>();
    for (int threads : {1, 3}) {
      RM<T> Y = Y0, H = RM<T>::Constant(sh.n, sh.r, std::numeric_limits<T>::quiet_NaN());
      lori::adapter_forward(lori::view(X), lori::view(A), B.view(), s, lori::view(Y), lori::view(H), threads);
      CHECK(within(Y, Yref, Yabs, tol));
      CHECK(lori_test::rel_err(H, Href) <= tol);
      CHECK_FALSE(H.hasNaN());
      RM<T> Yd = Y0, Hd(sh.n, sh.r);
      lori::adapter_forward_dense(lori::view(X), lori::view(A), lori::view(Bt), 0.625, lori::view(Yd), lori::view(Hd), threads);
      CHECK(within(Yd, Yref, Yabs, tol));
      CHECK(bitwise_equal(Hd, H));  // the same blocked GEMM produces H in both
      // Without storing H.
      RM<T> Y2 = Y0;
      lori::adapter_forward(lori::view(X), lori::view(A), B.view(), s, lori::view(Y2), {}, threads);
      CHECK(bitwise_equal(Y2, Y));
    }
  }
}

TEST_CASE_TEMPLATE("layer_forward matches Y = X W^T + bias + s (X A^T) B^T in double", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(22);
  for (const Shape& sh : kShapes) {
    CAPTURE(sh.n);
    CAPTURE(sh.k);
    CAPTURE(sh.d);
    CAPTURE(sh.r);
    const lori::bitmask mask = random_mask(sh.d, sh.r, sh.keep, g);
    RMd Bd;
    const auto B = random_sparse<T>(mask, g, &Bd);
    const RM<T> X = randn_t<T>(sh.n, sh.k, g), A = randn_t<T>(sh.r, sh.k, g), W = randn_t<T>(sh.d, sh.k, g);
    const RM<T> bias = randn_t<T>(1, sh.d, g);
    const RM<T> Bt = Bd.cast<T>();
    const RMd Xd = X.template cast<double>();
    const RMd Href = Xd * A.template cast<double>().transpose();
    RMd Yref = Xd * W.template cast<double>().transpose() + 1.5 * Href * Bd.transpose();
    const RMd Yref_nobias = Yref;
    Yref.rowwise() += bias.template cast<double>().row(0);
    const RMd Xa = Xd.cwiseAbs();
    RMd Yabs = Xa * W.template cast<double>().cwiseAbs().transpose() +
               1.5 * (Xa * A.template cast<double>().cwiseAbs().transpose()) * Bd.cwiseAbs().transpose();
    const RMd Yabs_nobias = Yabs;
    Yabs.rowwise() += bias.template cast<double>().cwiseAbs().row(0);
    const double tol = 4.0 * static_cast<double>(sh.k + sh.r + 1) * eps<T>();
    const lori::vector_view<const T> bv(bias.data(), sh.d);
    for (int threads : {1, 2}) {
      RM<T> Y = RM<T>::Constant(sh.n, sh.d, std::numeric_limits<T>::quiet_NaN()), H(sh.n, sh.r);
      lori::layer_forward(lori::view(X), lori::view(W), bv, lori::view(A), B.view(), 1.5, lori::view(Y), lori::view(H), threads);
      CHECK_FALSE(Y.hasNaN());
      CHECK(within(Y, Yref, Yabs, tol));
      CHECK(lori_test::rel_err(H, Href) <= tol);
      RM<T> Yn = RM<T>::Constant(sh.n, sh.d, std::numeric_limits<T>::quiet_NaN());
      lori::layer_forward(lori::view(X), lori::view(W), {}, lori::view(A), B.view(), 1.5, lori::view(Yn), {}, threads);
      CHECK(within(Yn, Yref_nobias, Yabs_nobias, tol));
      RM<T> Yd = RM<T>::Constant(sh.n, sh.d, std::numeric_limits<T>::quiet_NaN());
      lori::layer_forward_dense(lori::view(X), lori::view(W), bv, lori::view(A), lori::view(Bt), 1.5, lori::view(Yd), {}, threads);
      CHECK(within(Yd, Yref, Yabs, tol));
    }
  }
}

TEST_CASE("forward results are bitwise identical for 1, 2 and 3 threads") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(23);
  // Large enough that 3 threads are really started (work >= 3 x the per-thread minimum).
  const index_t n = 300, k = 128, d = 600, r = 16;
  const auto B = random_sparse<float>(random_mask(d, r, 0.2, g), g);
  const RM<float> X = randn_t<float>(n, k, g), A = randn_t<float>(r, k, g), W = randn_t<float>(d, k, g);
  const RM<float> Y0 = randn_t<float>(n, d, g);
  RM<float> Y1 = Y0, H1(n, r);
  lori::adapter_forward(lori::view(X), lori::view(A), B.view(), 0.5f, lori::view(Y1), lori::view(H1), 1);
  RM<float> L1(n, d);
  lori::layer_forward(lori::view(X), lori::view(W), {}, lori::view(A), B.view(), 0.5f, lori::view(L1), {}, 1);
  for (int threads : {2, 3}) {
    RM<float> Yt = Y0, Ht(n, r), Lt(n, d);
    lori::adapter_forward(lori::view(X), lori::view(A), B.view(), 0.5f, lori::view(Yt), lori::view(Ht), threads);
    lori::layer_forward(lori::view(X), lori::view(W), {}, lori::view(A), B.view(), 0.5f, lori::view(Lt), {}, threads);
    CHECK(bitwise_equal(Yt, Y1));
    CHECK(bitwise_equal(Ht, H1));
    CHECK(bitwise_equal(Lt, L1));
  }
}

TEST_CASE("forward honours leading dimensions of sub-blocks") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(24);
  const index_t n = 70, k = 20, d = 45, r = 6;
  const RM<double> big = lori_test::randn<double>(n + 3, k + 5, g), A = lori_test::randn<double>(r, k, g);
  RMd Bd;
  const auto B = random_sparse<double>(random_mask(d, r, 0.5, g), g, &Bd);
  RM<double> Ybig = RM<double>::Zero(n, d + 9);
  auto X = lori::view(big).block(2, 3, n, k);
  auto Y = lori::view(Ybig).block(0, 4, n, d);
  lori::adapter_forward(lori::row_major_view<const double>(X), lori::view(A), B.view(), 2.0, Y);
  const RMd ref = 2.0 * (big.block(2, 3, n, k) * A.transpose()) * Bd.transpose();
  CHECK(lori_test::rel_err(Ybig.block(0, 4, n, d), ref) <= 1e-13);
  CHECK(Ybig.leftCols(4).norm() == 0.0);
  CHECK(Ybig.rightCols(5).norm() == 0.0);
}

TEST_CASE("forward rejects shape mismatches and bad thread counts") {
  auto g = lori_test::rng(25);
  const auto B = random_sparse<float>(random_mask(6, 3, 0.5, g), g);
  RM<float> X = randn_t<float>(4, 5, g), A = randn_t<float>(3, 5, g), Y(4, 6), H(4, 3), W = randn_t<float>(6, 5, g);
  RM<float> A_bad_k = randn_t<float>(3, 4, g), A_bad_r = randn_t<float>(2, 5, g), Y_bad(4, 5), H_bad(4, 2), W_bad(6, 4);
  RM<float> bias_bad(1, 5), Bdense_bad(6, 2);
  auto run = [&](auto&& Xv, auto&& Av, auto&& Yv, auto&& Hv, int threads) {
    lori::adapter_forward(Xv, Av, B.view(), 1.0f, Yv, Hv, threads);
  };
  CHECK_NOTHROW(run(lori::view(X), lori::view(A), lori::view(Y), lori::view(H), 1));
  CHECK_THROWS_AS(run(lori::view(X), lori::view(A_bad_k), lori::view(Y), lori::view(H), 1), lori::error);
  CHECK_THROWS_AS(run(lori::view(X), lori::view(A_bad_r), lori::view(Y), lori::view(H), 1), lori::error);
  CHECK_THROWS_AS(run(lori::view(X), lori::view(A), lori::view(Y_bad), lori::view(H), 1), lori::error);
  CHECK_THROWS_AS(run(lori::view(X), lori::view(A), lori::view(Y), lori::view(H_bad), 1), lori::error);
  CHECK_THROWS_AS(run(lori::view(X), lori::view(A), lori::view(Y), lori::view(H), 0), lori::error);
  CHECK_THROWS_AS(lori::layer_forward(lori::view(X), lori::view(W_bad), {}, lori::view(A), B.view(), 1.0f, lori::view(Y)), lori::error);
  CHECK_THROWS_AS(lori::layer_forward(lori::view(X), lori::view(W), lori::vector_view<const float>(bias_bad.data(), 5), lori::view(A),
                                      B.view(), 1.0f, lori::view(Y)),
                  lori::error);
  CHECK_THROWS_AS(lori::adapter_forward_dense(lori::view(X), lori::view(A), lori::view(Bdense_bad), 1.0f, lori::view(Y)), lori::error);
  CHECK_THROWS_AS(lori::layer_forward_dense(lori::view(X), lori::view(W_bad), {}, lori::view(A), lori::view(Bdense_bad), 1.0f, lori::view(Y)),
                  lori::error);
  // A malformed view (row_ptr missing) is caught.
  lori::csr_view<const float> broken(6, 3, nullptr, nullptr, nullptr);
  CHECK_THROWS_AS(lori::adapter_forward(lori::view(X), lori::view(A), broken, 1.0f, lori::view(Y)), lori::error);
}

TEST_CASE("the sparse product gives a token the same bits alone or inside a block (identical H)") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(26);
  // With A = I (k = r) the projection is exact, H = X, so any difference would come from the sparse
  // product: the few-token gather path and the 16-lane tile path must sum in the same order.
  const index_t n = 70, r = 12, d = 150;
  const auto B = random_sparse<float>(random_mask(d, r, 0.3, g), g);
  const RM<float> X = randn_t<float>(n, r, g), I = RM<float>::Identity(r, r), Y0 = randn_t<float>(n, d, g);
  RM<float> Yall = Y0;
  lori::adapter_forward(lori::view(X), lori::view(I), B.view(), 0.3f, lori::view(Yall));
  bool same = true;
  for (index_t i : {index_t{0}, index_t{5}, index_t{63}, index_t{64}, index_t{69}}) {
    RM<float> Xi = X.row(i), Yi = Y0.row(i);
    lori::adapter_forward(lori::view(Xi), lori::view(I), B.view(), 0.3f, lori::view(Yi));
    same = same && bitwise_equal(Yi, RM<float>(Yall.row(i)));
  }
  CHECK(same);
}

TEST_CASE_TEMPLATE("dispatched (AVX2+FMA where available) and portable forward both match the double reference", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(27);
  // Calls the implementation directly with allow_simd = true (run-time dispatch: AVX2+FMA projection for
  // float on CPUs that have it) and allow_simd = false (Eigen), so both paths are exercised on any CPU.
  // Shapes cover k below, at and across the 8-lane width and the 256-element k-chunks (k = 7, 8, 300,
  // 517), odd token counts (token pairs plus a leftover, tb < 4 blocks), r = 1 and r not a multiple of
  // 4 or 8 (leftover rows of A).
  const Shape shapes[] = {{1, 7, 9, 3, 0.5}, {1, 517, 40, 13, 0.3}, {2, 8, 17, 8, 0.5}, {3, 300, 33, 1, 1.0},
                          {67, 517, 70, 32, 0.1}, {129, 300, 65, 9, 0.4}, {5, 0, 6, 2, 0.5}};
  for (const Shape& sh : shapes) {
    CAPTURE(sh.n);
    CAPTURE(sh.k);
    CAPTURE(sh.r);
    RMd Bd;
    const auto B = random_sparse<T>(random_mask(sh.d, sh.r, sh.keep, g), g, &Bd);
    const RM<T> X = randn_t<T>(sh.n, sh.k, g), A = randn_t<T>(sh.r, sh.k, g), Y0 = randn_t<T>(sh.n, sh.d, g);
    const RMd Href = X.template cast<double>() * A.template cast<double>().transpose();
    const RMd Yref = Y0.template cast<double>() + 0.625 * Href * Bd.transpose();
    const RMd Yabs = Y0.template cast<double>().cwiseAbs() +
                     0.625 * (X.template cast<double>().cwiseAbs() * A.template cast<double>().cwiseAbs().transpose()) * Bd.cwiseAbs().transpose();
    // Same bound as above: k*r + r products summed in T (FMA only removes roundings).
    const double tol = 4.0 * static_cast<double>(sh.k + sh.r + 1) * eps<T>();
    RM<T> Yp[2], Hp[2];
    for (int simd = 0; simd < 2; ++simd) {
      for (int threads : {1, 2}) {
        RM<T> Y = Y0, H = RM<T>::Constant(sh.n, sh.r, std::numeric_limits<T>::quiet_NaN());
        lori::detail::ops_forward_sparse_impl<T, typename lori::csr_matrix<T>::index_type>(
            lori::view(X), nullptr, {}, lori::view(A), B.view(), T(0.625), lori::view(Y), lori::view(H), threads, simd == 1);
        CHECK_FALSE(H.hasNaN());
        CHECK(within(Y, Yref, Yabs, tol));
        CHECK(lori_test::rel_err(H, Href) <= tol);
        if (threads == 1) {
          Yp[simd] = Y;
          Hp[simd] = H;
        } else {
          CHECK(bitwise_equal(Y, Yp[simd]));
          CHECK(bitwise_equal(H, Hp[simd]));
        }
      }
    }
  }
}

TEST_CASE("the dispatched projection gives a token the same bits alone or inside a block") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(28);
  // Each H[t, c] has one fixed order of summation whatever the tile (token pair or single token) and
  // block size: a token computed alone (tb = 1) equals the same token inside a 64-token block.
  const index_t n = 69, k = 523, d = 50, r = 11;
  const auto B = random_sparse<float>(random_mask(d, r, 0.3, g), g);
  const RM<float> X = randn_t<float>(n, k, g), A = randn_t<float>(r, k, g), Y0 = randn_t<float>(n, d, g);
  RM<float> Yall = Y0, Hall(n, r);
  lori::adapter_forward(lori::view(X), lori::view(A), B.view(), 0.3f, lori::view(Yall), lori::view(Hall));
  const RMd Href = X.cast<double>() * A.cast<double>().transpose();
  CHECK(lori_test::rel_err(Hall, Href) <= 4.0 * static_cast<double>(k + 1) * eps<float>());
#if LORI_OPS_X86_DISPATCH
  if (lori::detail::ops_cpu_has_avx2_fma()) {  // Eigen's GEMV and GEMM (the portable path) differ
    bool same = true;
    for (index_t i : {index_t{0}, index_t{1}, index_t{62}, index_t{63}, index_t{64}, index_t{68}}) {
      RM<float> Xi = X.row(i), Yi = Y0.row(i), Hi(1, r);
      lori::adapter_forward(lori::view(Xi), lori::view(A), B.view(), 0.3f, lori::view(Yi), lori::view(Hi));
      same = same && bitwise_equal(Hi, RM<float>(Hall.row(i))) && bitwise_equal(Yi, RM<float>(Yall.row(i)));
    }
    CHECK(same);
  }
#endif
}

TEST_CASE("few-token sparse product: the AVX-512 path equals the scalar loop bit for bit and the double reference") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(29);
  // ops_sparse_times_tile for blocks of 1-3 tokens, allow_simd = true (AVX-512F rows-in-lanes kernel on
  // CPUs that have it, float with 32-bit indices and r <= 32) against allow_simd = false (the scalar
  // loop). Both must perform the same roundings, so they must agree bit for bit. Masks: d below, at and
  // across the 16-row groups (tail rows take the scalar loop), r = 1, r not a multiple of 8, r = 32;
  // empty and full masks; full rows of r = 4 (16 rows span exactly 64 entries: the widest group the
  // kernel takes) and r = 5 (80 entries: the scalar fallback); and a hand-made mask with a few rows of
  // 9-32 entries among empty rows (groups within 64 entries whose rows run past the 8 unrolled steps).
  struct Case {
    index_t d, r;
    double keep;
  };
  const Case cases[] = {{0, 5, 0.5},  {1, 1, 1.0},  {15, 3, 0.5},  {16, 32, 0.1}, {17, 7, 0.3}, {33, 31, 0.1},
                        {100, 32, 0.1}, {4096, 32, 0.1}, {64, 4, 1.0}, {64, 5, 1.0}, {48, 16, 0.0}, {40, 32, 1.0},
                        {50, 11, 0.3}, {48, 32, -1.0}};
  for (const Case& cs : cases) {
    CAPTURE(cs.d);
    CAPTURE(cs.r);
    CAPTURE(cs.keep);
    lori::bitmask mask(cs.d, cs.r);
    if (cs.keep >= 0.0) {
      mask = random_mask(cs.d, cs.r, cs.keep, g);
    } else {  // long rows (9, 20, 32 entries) among empty ones
      for (index_t c = 0; c < 9; ++c) mask.set(1, c);
      for (index_t c = 0; c < 20; ++c) mask.set(18, c + 5);
      for (index_t c = 0; c < 32; ++c) mask.set(40, c);
      mask.set(41, 3);
    }
    RMd Bd;
    const auto B = random_sparse<float>(mask, g, &Bd);
    for (index_t tb = 1; tb <= 3; ++tb) {
      CAPTURE(tb);
      const RM<float> Hrm = randn_t<float>(tb, cs.r, g);
      std::vector<float> Hc(static_cast<std::size_t>(tb * cs.r));  // column-major tb x r, as the forward holds it
      for (index_t t = 0; t < tb; ++t)
        for (index_t c = 0; c < cs.r; ++c) Hc[static_cast<std::size_t>(c * tb + t)] = Hrm(t, c);
      const RM<float> Y0 = randn_t<float>(tb, cs.d + 3, g);  // 3 padding columns that must stay untouched
      const float s = -0.75f;
      RM<float> Y[2] = {Y0, Y0};
      for (int simd = 0; simd < 2; ++simd)
        lori::detail::ops_sparse_times_tile<float, std::int32_t>(Hc.data(), tb, B.view(), s, Y[simd].data(), cs.d + 3, nullptr, simd == 1);
      CHECK(bitwise_equal(Y[0], Y[1]));
      CHECK(bitwise_equal(RM<float>(Y[1].rightCols(3)), RM<float>(Y0.rightCols(3))));
      // Reference: each entry adds at most r products to Y0; float error <= (r + 2) eps times the sum of
      // absolute terms (sequential summation bound), with a factor 4 of margin.
      const RMd Hd = Hrm.cast<double>();
      const RMd ref = Y0.leftCols(cs.d).cast<double>() + static_cast<double>(s) * Hd * Bd.transpose();
      const RMd abs = Y0.leftCols(cs.d).cast<double>().cwiseAbs() + 0.75 * Hd.cwiseAbs() * Bd.cwiseAbs().transpose();
      CHECK(within(RM<float>(Y[1].leftCols(cs.d)), ref, abs, 4.0 * static_cast<double>(cs.r + 2) * eps<float>()));
    }
  }
}

TEST_CASE("the few-token sparse product leaves rows of B without entries untouched on both paths") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(30);
  // s = inf: any operation on a row without entries (y += s * 0) would turn it into NaN. Y holds -0.0
  // there (y + 0 would turn it into +0).
  const index_t d = 70, r = 32;
  lori::bitmask mask(d, r);  // every 4th row empty, the others ~10 % kept
  std::bernoulli_distribution keep(0.1);
  for (index_t j = 0; j < d; ++j)
    for (index_t c = 0; c < r; ++c)
      if (j % 4 != 0 && keep(g)) mask.set(j, c);
  const auto B = random_sparse<float>(mask, g);
  const auto Bv = B.view();
  // Blocks of 1 and 3 tokens (scalar loop / AVX-512 kernel). (The 16-lane tile of larger blocks adds
  // s * 0 to the empty rows of a chunk that has entries: skipping them there cost 10-20 % at n = 64-4096.)
  std::vector<float> Ht(static_cast<std::size_t>(r * lori::detail::kTokenBlock));
  for (index_t tb : {index_t{1}, index_t{3}}) {
    const RM<float> Hc = randn_t<float>(r, tb, g);  // row-major r x tb = column-major tb x r
    for (int simd = 0; simd < 2; ++simd) {
      CAPTURE(tb);
      CAPTURE(simd);
      RM<float> Y = RM<float>::Constant(tb, d, -0.0f);
      lori::detail::ops_sparse_times_tile<float, std::int32_t>(Hc.data(), tb, Bv, std::numeric_limits<float>::infinity(), Y.data(), d,
                                                               Ht.data(), simd == 1);
      index_t empty = 0;
      bool untouched = true;
      for (index_t j = 0; j < d; ++j) {
        if (Bv.row_ptr[j] != Bv.row_ptr[j + 1]) continue;
        ++empty;
        for (index_t t = 0; t < tb; ++t) untouched = untouched && std::signbit(Y(t, j)) && Y(t, j) == 0.0f;
      }
      CHECK(empty > 0);
      CHECK(untouched);
    }
  }
}
