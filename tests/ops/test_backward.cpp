// Backward pass: masked dL/dB (SDDMM), dL/dX, dense dL/dB and dL/dA, against double references and
// central finite differences of a scalar loss.
#include <doctest/doctest.h>

#include "lori/ops/backward.hpp"
#include "lori/ops/forward.hpp"
#include "ops_test_util.hpp"

#include <limits>
#include <vector>

using namespace ops_test;

namespace {
// n = 0, n = 1, n not a multiple of the 8 lanes or of the 64-token block, d over several 256-row blocks,
// r = 1, empty and full masks, k = 0.
const Shape kShapes[] = {{0, 5, 7, 3, 0.5},    {1, 33, 17, 4, 0.3},   {1, 1, 1, 1, 1.0},   {3, 9, 40, 5, 0.4},
                         {64, 16, 33, 32, 0.1}, {133, 37, 530, 1, 0.5}, {130, 24, 65, 8, 0.0}, {77, 11, 31, 6, 1.0},
                         {5, 0, 6, 2, 0.5},     {9, 7, 0, 3, 0.5},     {9, 7, 5, 0, 0.5}};
}  // namespace

TEST_CASE_TEMPLATE("masked_grad_B equals s (G^T H) sampled at the mask", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(31);
  for (const Shape& sh : kShapes) {
    CAPTURE(sh.n);
    CAPTURE(sh.d);
    CAPTURE(sh.r);
    CAPTURE(sh.keep);
    const lori::bitmask mask = random_mask(sh.d, sh.r, sh.keep, g);
    const auto B = random_sparse<T>(mask, g);
    const RM<T> G = randn_t<T>(sh.n, sh.d, g), H = randn_t<T>(sh.n, sh.r, g);
    const RMd ref = 0.75 * G.template cast<double>().transpose() * H.template cast<double>();
    // Reference values in B's order (row-major over kept positions).
    std::vector<double> ref_vals;
    for (index_t j = 0; j < sh.d; ++j)
      for (index_t c = 0; c < sh.r; ++c)
        if (mask.test(j, c)) ref_vals.push_back(ref(j, c));
    // Each value sums n products of N(0,1) terms in T: error <= ~n eps sum|g h|; relative to the
    // Frobenius norm of the values (~ sqrt(n) per entry) this is below 2 n eps.
    const double tol = 2.0 * static_cast<double>(sh.n + 1) * eps<T>();
    std::vector<T> first;
    for (int threads : {1, 3}) {
      std::vector<T> vals(static_cast<std::size_t>(B.nnz()), std::numeric_limits<T>::quiet_NaN());
      lori::masked_grad_B(lori::view(G), lori::view(H), B.view(), 0.75, lori::vector_view<T>(vals.data(), B.nnz()), threads);
      Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>> got(vals.data(), B.nnz());
      Eigen::Map<const Eigen::VectorXd> want(ref_vals.data(), static_cast<Eigen::Index>(ref_vals.size()));
      CHECK_FALSE(got.hasNaN());
      CHECK(lori_test::rel_err(got, want) <= tol);
      if (threads == 1) first = vals;
      else CHECK(bitwise_equal_vec(first, vals));
    }
    // Structure-only view (values null) is enough.
    lori::csr_view<const T> structure(B.rows(), B.cols(), B.row_ptr().data(), B.col_idx().data(), nullptr);
    std::vector<T> vals2(static_cast<std::size_t>(B.nnz()));
    lori::masked_grad_B(lori::view(G), lori::view(H), structure, 0.75, lori::vector_view<T>(vals2.data(), B.nnz()));
    CHECK(vals2 == first);
    // Dense gradient agrees too.
    RM<T> dB = RM<T>::Constant(sh.d, sh.r, std::numeric_limits<T>::quiet_NaN());
    lori::dense_grad_B(lori::view(G), lori::view(H), 0.75, lori::view(dB), 2);
    CHECK(lori_test::rel_err(dB, ref) <= tol);
  }
}

TEST_CASE_TEMPLATE("input_grad and dense gradients match double references", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(32);
  for (const Shape& sh : kShapes) {
    CAPTURE(sh.n);
    CAPTURE(sh.k);
    CAPTURE(sh.d);
    CAPTURE(sh.r);
    const lori::bitmask mask = random_mask(sh.d, sh.r, sh.keep, g);
    RMd Bd;
    const auto B = random_sparse<T>(mask, g, &Bd);
    const RM<T> Bt = Bd.cast<T>();
    const RM<T> G = randn_t<T>(sh.n, sh.d, g), W = randn_t<T>(sh.d, sh.k, g), A = randn_t<T>(sh.r, sh.k, g);
    const RM<T> X = randn_t<T>(sh.n, sh.k, g);
    const RMd Gd = G.template cast<double>();
    const RMd GB = Gd * Bd;
    const RMd dX_adapter = 1.25 * GB * A.template cast<double>();
    const RMd dX_full = Gd * W.template cast<double>() + dX_adapter;
    const RMd dA_ref = 1.25 * GB.transpose() * X.template cast<double>();
    // Sums of d + d*r*... products: bound by (d + r + n) eps, relative.
    const double tol = 4.0 * static_cast<double>(sh.d + sh.r + sh.n + 1) * eps<T>();
    // dX = G W + s (G B) A adds two products that can cancel (e.g. n = k = d = r = 1, where dX is one
    // scalar g w + s g b a): the float error is bounded relative to the same sum of absolute terms, not
    // to |dX|, so the whole-layer dX is checked against that (the same bound as the forward tests).
    const RMd dX_abs = Gd.cwiseAbs() * W.template cast<double>().cwiseAbs() +
                       1.25 * (Gd.cwiseAbs() * Bd.cwiseAbs()) * A.template cast<double>().cwiseAbs();
    auto within_abs = [&](const RM<T>& M) { return (M.template cast<double>() - dX_full).norm() <= tol * dX_abs.norm(); };
    for (int threads : {1, 3}) {
      RM<T> dX = RM<T>::Constant(sh.n, sh.k, std::numeric_limits<T>::quiet_NaN());
      lori::input_grad(lori::view(G), lori::view(W), lori::view(A), B.view(), 1.25, lori::view(dX), threads);
      CHECK_FALSE(dX.hasNaN());
      CHECK(within_abs(dX));
      RM<T> dXa = RM<T>::Constant(sh.n, sh.k, std::numeric_limits<T>::quiet_NaN());
      lori::input_grad(lori::view(G), lori::row_major_view<const T>(), lori::view(A), B.view(), 1.25, lori::view(dXa), threads);
      CHECK_FALSE(dXa.hasNaN());
      CHECK(lori_test::rel_err(dXa, dX_adapter) <= tol);
      RM<T> dXd = RM<T>::Constant(sh.n, sh.k, std::numeric_limits<T>::quiet_NaN());
      lori::input_grad_dense(lori::view(G), lori::view(W), lori::view(A), lori::view(Bt), 1.25, lori::view(dXd), threads);
      CHECK(within_abs(dXd));
      RM<T> dA = RM<T>::Constant(sh.r, sh.k, std::numeric_limits<T>::quiet_NaN());
      lori::dense_grad_A(lori::view(G), lori::view(X), lori::view(Bt), 1.25, lori::view(dA), threads);
      CHECK_FALSE(dA.hasNaN());
      CHECK(lori_test::rel_err(dA, dA_ref) <= tol);
    }
  }
}

TEST_CASE("gradients equal central finite differences of a scalar loss (double)") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(33);
  // L = 1/2 ||Y||^2 + <C, Y> with Y = X W^T + b + s (X A^T) B^T, so G = dL/dY = Y + C.
  const index_t n = 5, k = 7, d = 6, r = 3;
  const double s = 0.8;
  const lori::bitmask mask = random_mask(d, r, 0.5, g);
  auto B = random_sparse<double>(mask, g);
  RMd X = lori_test::randn<double>(n, k, g), W = lori_test::randn<double>(d, k, g), A = lori_test::randn<double>(r, k, g);
  const RMd C = lori_test::randn<double>(n, d, g), bias = lori_test::randn<double>(1, d, g);
  const lori::vector_view<const double> bv(bias.data(), d);
  auto loss = [&](const RMd& Xv, const RMd& Av, const lori::csr_matrix<double>& Bv) {
    RMd Y(n, d);
    lori::layer_forward(lori::view(Xv), lori::view(W), bv, lori::view(Av), Bv.view(), s, lori::view(Y));
    return 0.5 * Y.squaredNorm() + (C.array() * Y.array()).sum();
  };
  RMd Y(n, d), H(n, r);
  lori::layer_forward(lori::view(X), lori::view(W), bv, lori::view(A), B.view(), s, lori::view(Y), lori::view(H));
  const RMd G = Y + C;
  std::vector<double> dB(static_cast<std::size_t>(B.nnz()));
  lori::masked_grad_B(lori::view(G), lori::view(H), B.view(), s, lori::vector_view<double>(dB.data(), B.nnz()));
  RMd dX(n, k), dA(r, k), dBdense(d, r);
  lori::input_grad(lori::view(G), lori::view(W), lori::view(A), B.view(), s, lori::view(dX));
  RMd Bdense(d, r);
  B.to_dense(lori::view(Bdense));
  lori::dense_grad_A(lori::view(G), lori::view(X), lori::view(Bdense), s, lori::view(dA));
  lori::dense_grad_B(lori::view(G), lori::view(H), s, lori::view(dBdense));
  // The loss is quadratic in each single variable, so central differences are exact up to rounding:
  // |error| <~ eps |L| / h = 1e-16 * O(100) / 1e-5 ~ 1e-9.
  const double h = 1e-5, tol = 1e-6;
  for (index_t p = 0; p < B.nnz(); ++p) {
    auto Bp = B, Bm = B;
    Bp.values()[static_cast<std::size_t>(p)] += h;
    Bm.values()[static_cast<std::size_t>(p)] -= h;
    const double fd = (loss(X, A, Bp) - loss(X, A, Bm)) / (2 * h);
    CHECK(dB[static_cast<std::size_t>(p)] == doctest::Approx(fd).epsilon(tol).scale(1.0));
  }
  // The dense dL/dB at kept positions equals the masked one; elsewhere it is the gradient a dense B
  // (LoRI-D) would get: check a few entries outside the mask against differences of a dense forward.
  for (index_t j = 0; j < d; ++j)
    for (index_t c = 0; c < r; ++c) {
      RMd Bp = Bdense, Bm = Bdense;
      Bp(j, c) += h;
      Bm(j, c) -= h;
      auto dense_loss = [&](const RMd& Bv) {
        RMd Yd(n, d);
        lori::layer_forward_dense(lori::view(X), lori::view(W), bv, lori::view(A), lori::view(Bv), s, lori::view(Yd));
        return 0.5 * Yd.squaredNorm() + (C.array() * Yd.array()).sum();
      };
      const double fd = (dense_loss(Bp) - dense_loss(Bm)) / (2 * h);
      CHECK(dBdense(j, c) == doctest::Approx(fd).epsilon(tol).scale(1.0));
    }
  for (index_t i = 0; i < n; ++i)
    for (index_t c = 0; c < k; ++c) {
      RMd Xp = X, Xm = X;
      Xp(i, c) += h;
      Xm(i, c) -= h;
      CHECK(dX(i, c) == doctest::Approx((loss(Xp, A, B) - loss(Xm, A, B)) / (2 * h)).epsilon(tol).scale(1.0));
    }
  for (index_t i = 0; i < r; ++i)
    for (index_t c = 0; c < k; ++c) {
      RMd Ap = A, Am = A;
      Ap(i, c) += h;
      Am(i, c) -= h;
      CHECK(dA(i, c) == doctest::Approx((loss(X, Ap, B) - loss(X, Am, B)) / (2 * h)).epsilon(tol).scale(1.0));
    }
}

TEST_CASE("backward results are bitwise identical for 1, 2 and 3 threads") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(34);
  const index_t n = 300, k = 128, d = 800, r = 16;
  const lori::bitmask mask = random_mask(d, r, 0.2, g);
  RMd Bd;
  const auto B = random_sparse<float>(mask, g, &Bd);
  const RM<float> Bt = Bd.cast<float>();
  const RM<float> G = randn_t<float>(n, d, g), H = randn_t<float>(n, r, g), W = randn_t<float>(d, k, g);
  const RM<float> A = randn_t<float>(r, k, g), X = randn_t<float>(n, k, g);
  auto all = [&](int threads) {
    std::vector<float> v(static_cast<std::size_t>(B.nnz()));
    lori::masked_grad_B(lori::view(G), lori::view(H), B.view(), 0.5f, lori::vector_view<float>(v.data(), B.nnz()), threads);
    RM<float> dX(n, k), dXd(n, k), dB(d, r), dA(r, k);
    lori::input_grad(lori::view(G), lori::view(W), lori::view(A), B.view(), 0.5f, lori::view(dX), threads);
    lori::input_grad_dense(lori::view(G), lori::view(W), lori::view(A), lori::view(Bt), 0.5f, lori::view(dXd), threads);
    lori::dense_grad_B(lori::view(G), lori::view(H), 0.5f, lori::view(dB), threads);
    lori::dense_grad_A(lori::view(G), lori::view(X), lori::view(Bt), 0.5f, lori::view(dA), threads);
    return std::make_tuple(v, dX, dXd, dB, dA);
  };
  const auto one = all(1);
  for (int threads : {2, 3}) {
    const auto t = all(threads);
    CHECK(bitwise_equal_vec(std::get<0>(t), std::get<0>(one)));
    CHECK(bitwise_equal(std::get<1>(t), std::get<1>(one)));
    CHECK(bitwise_equal(std::get<2>(t), std::get<2>(one)));
    CHECK(bitwise_equal(std::get<3>(t), std::get<3>(one)));
    CHECK(bitwise_equal(std::get<4>(t), std::get<4>(one)));
  }
}

TEST_CASE("masked_grad_B: one token gives the bits of the same token with a zero second token") {
  // n = 1 has its own loop; n = 2 takes the few-token loop, which for a zero second token sums
  // 0 + g h + 0 * h' = the n = 1 value bit for bit. Also checked against the double reference.
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(35);
  for (const index_t d : {index_t{1}, index_t{255}, index_t{600}}) {
    for (const index_t r : {index_t{1}, index_t{7}, index_t{32}}) {
      const lori::bitmask mask = random_mask(d, r, 0.3, g);
      RMd Bd;
      const auto B = random_sparse<float>(mask, g, &Bd);
      RM<float> G2 = randn_t<float>(2, d, g), H2 = randn_t<float>(2, r, g);
      G2.row(1).setZero();
      H2.row(1).setZero();
      const RM<float> G1 = G2.topRows(1), H1 = H2.topRows(1);
      std::vector<float> v1(static_cast<std::size_t>(B.nnz()), std::numeric_limits<float>::quiet_NaN()), v2 = v1;
      lori::masked_grad_B(lori::view(G1), lori::view(H1), B.view(), 0.75f, lori::vector_view<float>(v1.data(), B.nnz()), 2);
      lori::masked_grad_B(lori::view(G2), lori::view(H2), B.view(), 0.75f, lori::vector_view<float>(v2.data(), B.nnz()), 1);
      CHECK(bitwise_equal_vec(v1, v2));
      // Two roundings of a single product: relative error <= 2 eps per entry.
      const RMd ref = 0.75 * (G1.cast<double>().transpose() * H1.cast<double>());
      index_t p = 0, bad = 0;
      for (index_t j = 0; j < d; ++j)
        for (index_t c = 0; c < r; ++c)
          if (mask.test(j, c)) {
            const double e = std::abs(static_cast<double>(v1[static_cast<std::size_t>(p)]) - ref(j, c));
            if (!(e <= 2.0 * 1.1920929e-7 * std::abs(ref(j, c)))) ++bad;
            ++p;
          }
      CHECK(p == B.nnz());
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("backward rejects shape and count mismatches") {
  auto g = lori_test::rng(35);
  const auto B = random_sparse<float>(random_mask(6, 3, 0.5, g), g);
  RM<float> G = randn_t<float>(4, 6, g), H = randn_t<float>(4, 3, g), W = randn_t<float>(6, 5, g), A = randn_t<float>(3, 5, g);
  RM<float> X = randn_t<float>(4, 5, g), dX(4, 5), dB(6, 3), dA(3, 5), Bt(6, 3);
  std::vector<float> v(static_cast<std::size_t>(B.nnz()) + 1);
  const lori::vector_view<float> vals(v.data(), B.nnz()), vals_bad(v.data(), B.nnz() + 1);
  CHECK_NOTHROW(lori::masked_grad_B(lori::view(G), lori::view(H), B.view(), 1.0f, vals));
  CHECK_THROWS_AS(lori::masked_grad_B(lori::view(G), lori::view(H), B.view(), 1.0f, vals_bad), lori::error);
  RM<float> G_bad = randn_t<float>(4, 5, g), H_bad = randn_t<float>(3, 3, g), H_bad2 = randn_t<float>(4, 2, g);
  CHECK_THROWS_AS(lori::masked_grad_B(lori::view(G_bad), lori::view(H), B.view(), 1.0f, vals), lori::error);
  CHECK_THROWS_AS(lori::masked_grad_B(lori::view(G), lori::view(H_bad), B.view(), 1.0f, vals), lori::error);
  CHECK_THROWS_AS(lori::masked_grad_B(lori::view(G), lori::view(H_bad2), B.view(), 1.0f, vals), lori::error);
  CHECK_THROWS_AS(lori::masked_grad_B(lori::view(G), lori::view(H), B.view(), 1.0f, vals, 0), lori::error);
  RM<float> W_bad(6, 4), A_bad(2, 5), dX_bad(4, 4);
  CHECK_NOTHROW(lori::input_grad(lori::view(G), lori::view(W), lori::view(A), B.view(), 1.0f, lori::view(dX)));
  CHECK_THROWS_AS(lori::input_grad(lori::view(G), lori::view(W_bad), lori::view(A), B.view(), 1.0f, lori::view(dX)), lori::error);
  CHECK_THROWS_AS(lori::input_grad(lori::view(G), lori::view(W), lori::view(A_bad), B.view(), 1.0f, lori::view(dX)), lori::error);
  CHECK_THROWS_AS(lori::input_grad(lori::view(G), lori::view(W), lori::view(A), B.view(), 1.0f, lori::view(dX_bad)), lori::error);
  CHECK_THROWS_AS(lori::input_grad(lori::view(G_bad), lori::view(W), lori::view(A), B.view(), 1.0f, lori::view(dX)), lori::error);
  CHECK_THROWS_AS(lori::input_grad_dense(lori::view(G), lori::view(W_bad), lori::view(A), lori::view(Bt), 1.0f, lori::view(dX)), lori::error);
  CHECK_THROWS_AS(lori::dense_grad_B(lori::view(G), lori::view(H_bad), 1.0f, lori::view(dB)), lori::error);
  RM<float> dB_bad(6, 2), dA_bad(3, 4), X_bad(3, 5);
  CHECK_THROWS_AS(lori::dense_grad_B(lori::view(G), lori::view(H), 1.0f, lori::view(dB_bad)), lori::error);
  CHECK_THROWS_AS(lori::dense_grad_A(lori::view(G), lori::view(X), lori::view(Bt), 1.0f, lori::view(dA_bad)), lori::error);
  CHECK_THROWS_AS(lori::dense_grad_A(lori::view(G), lori::view(X_bad), lori::view(Bt), 1.0f, lori::view(dA)), lori::error);
  CHECK_THROWS_AS(lori::dense_grad_A(lori::view(G), lori::view(X), lori::view(Bt), 1.0f, lori::view(dA), 0), lori::error);
}
