// Optimizers on compact values: AdamW (torch.optim.AdamW rule), SGD, gradient-norm clipping, against
// hand-written double-precision references applied to the dense tensor with the reference's masking.
#include <doctest/doctest.h>

#include "lori/ops/optim.hpp"
#include "lori/sparse/convert.hpp"
#include "ops_test_util.hpp"

#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

using namespace ops_test;

namespace {
// The reference's LoRI-S training step on a dense d x r B, written out in double from the formulas of
// torch.optim.AdamW (PyTorch 2.x _single_tensor_adam with decoupled weight decay):
//   grad <- grad * mask;  clip_grad_norm_(grad, max_norm) if max_norm > 0;
//   p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
//   p <- p - lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps)
struct dense_adamw_ref {
  RMd p, m, v;
  int t = 0;
  void step(RMd grad, const lori::bitmask& mask, const lori::adamw_options& o, double max_norm) {
    for (index_t i = 0; i < grad.rows(); ++i)
      for (index_t j = 0; j < grad.cols(); ++j)
        if (!mask.test(i, j)) grad(i, j) = 0.0;
    if (max_norm > 0) {
      const double total = grad.norm();
      grad *= std::min(max_norm / (total + 1e-6), 1.0);
    }
    ++t;
    p *= 1.0 - o.lr * o.weight_decay;
    m = o.beta1 * m + (1.0 - o.beta1) * grad;
    v = o.beta2 * v + (1.0 - o.beta2) * grad.cwiseProduct(grad);
    const double bc1 = 1.0 - std::pow(o.beta1, t), bc2 = 1.0 - std::pow(o.beta2, t);
    const RMd denom = (v.cwiseSqrt() / std::sqrt(bc2)).array() + o.eps;
    p -= (o.lr / bc1) * m.cwiseQuotient(denom);
  }
};

template <class T>
std::vector<T> gather_kept(const RM<T>& dense, const lori::bitmask& mask) {
  std::vector<T> out;
  for (index_t i = 0; i < mask.rows(); ++i)
    for (index_t j = 0; j < mask.cols(); ++j)
      if (mask.test(i, j)) out.push_back(dense(i, j));
  return out;
}
}  // namespace

TEST_CASE_TEMPLATE("masked AdamW on compact values equals the reference's dense masked AdamW at kept positions", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(41);
  // eps = 0.5 in one case makes its placement (outside the square root, after bias correction) visible.
  struct Case { index_t d, r; double keep, wd, max_norm, eps; };
  for (Case c : {Case{37, 8, 0.1, 0.01, 0.0, 1e-8}, Case{16, 32, 0.5, 0.1, 1.0, 1e-8}, Case{5, 1, 1.0, 0.0, 0.3, 1e-8},
                 Case{9, 4, 0.0, 0.01, 1.0, 1e-8}, Case{0, 4, 0.5, 0.01, 0.0, 1e-8}, Case{21, 16, 0.3, 0.05, 0.0, 0.5}}) {
    CAPTURE(c.d);
    CAPTURE(c.r);
    CAPTURE(c.keep);
    CAPTURE(c.max_norm);
    const lori::bitmask mask = random_mask(c.d, c.r, c.keep, g);
    lori::adamw_options o;
    o.lr = 2e-3;
    o.weight_decay = c.wd;
    o.beta2 = 0.99;  // makes the second-moment bias correction matter over a few steps
    o.eps = c.eps;
    // Start from a B that is nonzero only on the mask (a calibrated LoRI-S B).
    RMd B0 = lori_test::randn<double>(c.d, c.r, g);
    for (index_t i = 0; i < c.d; ++i)
      for (index_t j = 0; j < c.r; ++j)
        if (!mask.test(i, j)) B0(i, j) = 0.0;
    const RM<T> B0t = B0.cast<T>();
    auto packed = lori::packed_matrix<T>::from_dense(lori::view(B0t), mask);
    lori::adamw_state<T> state(packed.nnz());
    dense_adamw_ref ref{B0t.template cast<double>(), RMd::Zero(c.d, c.r), RMd::Zero(c.d, c.r)};
    for (int step = 0; step < 6; ++step) {
      // The dense gradient the reference computes (nonzero everywhere); ours only sees the kept entries.
      const RM<T> gdense = randn_t<T>(c.d, c.r, g);
      std::vector<T> gc = gather_kept(gdense, mask);
      if (c.max_norm > 0) lori::clip_grad_norm(lori::vector_view<T>(gc.data(), packed.nnz()), c.max_norm);
      lori::adamw_step(packed.value_view(), lori::vector_view<const T>(gc.data(), packed.nnz()), state, o);
      ref.step(gdense.template cast<double>(), mask, o, c.max_norm);
    }
    CHECK(state.step == 6);
    RM<T> out = RM<T>::Constant(c.d, c.r, std::numeric_limits<T>::quiet_NaN());
    packed.to_dense(lori::view(out));
    // Masked-out entries stay exactly zero - in ours (never stored) and in the reference (grad, m, v are 0).
    bool zero_outside = true;
    for (index_t i = 0; i < c.d; ++i)
      for (index_t j = 0; j < c.r; ++j)
        if (!mask.test(i, j)) zero_outside = zero_outside && out(i, j) == T(0) && ref.p(i, j) == 0.0;
    CHECK(zero_outside);
    // Per step each kept entry moves by at most ~lr (|m|/denom <~ 1) and T rounds |p| + lr to ~2 eps;
    // over 6 steps (plus clipping's and the moments' roundings) |error| <= 64 eps (|p| + lr).
    double worst = 0.0;
    for (index_t i = 0; i < c.d; ++i)
      for (index_t j = 0; j < c.r; ++j) {
        const double err = std::abs(static_cast<double>(out(i, j)) - ref.p(i, j)) / (std::abs(ref.p(i, j)) + o.lr);
        worst = std::max(worst, err);
      }
    CHECK(worst <= 64 * eps<T>());
    CHECK(state.memory_bytes() == static_cast<index_t>(2 * mask.count() * sizeof(T)));
  }
}

TEST_CASE("AdamW performs PyTorch's first step exactly in double") {
  // t = 1: m = (1-b1) g, v = (1-b2) g^2, so with wd = 0 the update is -lr * g/|g| * 1/(1 + eps/|g|):
  // p1 = p0 - lr * sign(g) (up to eps). Check with eps = 0 exactly.
  std::vector<double> p{1.0, -2.0, 0.5, 0.0}, gr{0.3, -4.0, 1e-3, 2.0};
  lori::adamw_state<double> st(4);
  lori::adamw_options o;
  o.lr = 0.1;
  o.eps = 0.0;
  o.weight_decay = 0.0;
  lori::adamw_step(lori::vector_view<double>(p.data(), 4), lori::vector_view<const double>(gr.data(), 4), st, o);
  CHECK(p[0] == doctest::Approx(0.9).epsilon(1e-15));
  CHECK(p[1] == doctest::Approx(-1.9).epsilon(1e-15));
  CHECK(p[2] == doctest::Approx(0.4).epsilon(1e-15));
  CHECK(p[3] == doctest::Approx(-0.1).epsilon(1e-15));
}

TEST_CASE_TEMPLATE("SGD with momentum, dampening, Nesterov and weight decay equals torch.optim.SGD's rule", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(42);
  struct Case { double mom, damp, wd; bool nesterov; };
  for (Case c : {Case{0.0, 0.0, 0.0, false}, Case{0.9, 0.0, 0.0, false}, Case{0.9, 0.1, 0.01, false}, Case{0.8, 0.0, 0.05, true}}) {
    const index_t size = 1000;
    lori::sgd_options o;
    o.lr = 0.05;
    o.momentum = c.mom;
    o.dampening = c.damp;
    o.weight_decay = c.wd;
    o.nesterov = c.nesterov;
    const RM<T> p0 = randn_t<T>(1, size, g);
    RM<T> p = p0;
    RMd pr = p0.template cast<double>(), buf = RMd::Zero(1, size);
    lori::sgd_state<T> st;
    for (int step = 0; step < 4; ++step) {
      const RM<T> gr = randn_t<T>(1, size, g);
      lori::sgd_step(lori::vector_view<T>(p.data(), size), lori::vector_view<const T>(gr.data(), size), st, o);
      RMd gd = gr.template cast<double>() + c.wd * pr;
      if (c.mom != 0) {
        buf = step == 0 ? gd : RMd(c.mom * buf + (1 - c.damp) * gd);
        gd = c.nesterov ? RMd(gd + c.mom * buf) : buf;
      }
      pr -= o.lr * gd;
    }
    CHECK(st.memory_bytes() == (c.mom != 0 ? static_cast<index_t>(size * sizeof(T)) : 0));
    // 4 steps of |p| + lr*|g|-sized updates rounded in T: relative error <= 32 eps.
    CHECK(lori_test::rel_err(p, pr) <= 32 * eps<T>());
  }
}

TEST_CASE_TEMPLATE("clip_grad_norm follows torch.nn.utils.clip_grad_norm_", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(43);
  for (index_t size : {0, 1, 7, 5000, 20000}) {
    CAPTURE(size);
    const RM<T> g0 = randn_t<T>(1, size, g);
    const double norm = g0.template cast<double>().norm();
    // Clipping to half the norm scales by max_norm / (norm + 1e-6).
    RM<T> a = g0;
    const double got = lori::clip_grad_norm(lori::vector_view<T>(a.data(), size), 0.5 * norm);
    // The norm is summed in double in a different order than Eigen's: relative error <= size * eps(double).
    const double norm_tol = static_cast<double>(size + 1) * eps<double>();
    CHECK(got == doctest::Approx(norm).epsilon(norm_tol));
    const RMd want = g0.template cast<double>() * std::min(0.5 * norm / (norm + 1e-6), 1.0);
    // Plus one rounding of the coefficient to T and one of each product.
    CHECK(lori_test::rel_err(a, want) <= 4 * eps<T>() + norm_tol);
    // Below the threshold the coefficient clamps to exactly 1: values unchanged bit for bit.
    RM<T> b = g0;
    lori::clip_grad_norm(lori::vector_view<T>(b.data(), size), 2.0 * norm + 1.0);
    CHECK(bitwise_equal(b, g0));
  }
  // Several tensors share one total norm.
  RM<T> x = randn_t<T>(1, 30, g), y = randn_t<T>(1, 50, g);
  const double total = std::sqrt(x.template cast<double>().squaredNorm() + y.template cast<double>().squaredNorm());
  const RMd xw = x.template cast<double>() * (1.0 / (total + 1e-6)), yw = y.template cast<double>() * (1.0 / (total + 1e-6));
  std::vector<lori::vector_view<T>> both{lori::vector_view<T>(x.data(), 30), lori::vector_view<T>(y.data(), 50)};
  CHECK(lori::clip_grad_norm(both, 1.0) == doctest::Approx(total).epsilon(100 * eps<double>()));
  CHECK(lori_test::rel_err(x, xw) <= 4 * eps<T>() + 100 * eps<double>());
  CHECK(lori_test::rel_err(y, yw) <= 4 * eps<T>() + 100 * eps<double>());
  // Non-finite norms: an error on request, otherwise NaN propagates as in torch.
  RM<T> bad = randn_t<T>(1, 10, g);
  bad(0, 3) = std::numeric_limits<T>::quiet_NaN();
  CHECK_THROWS_AS(lori::clip_grad_norm(lori::vector_view<T>(bad.data(), 10), 1.0, true), lori::error);
  CHECK(std::isnan(lori::clip_grad_norm(lori::vector_view<T>(bad.data(), 10), 1.0)));
  CHECK(bad.hasNaN());
}

TEST_CASE("optimizer steps are bitwise identical for 1 and 3 threads") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(44);
  const index_t size = 300000;  // > 3 x 65536: three threads really run
  const RM<float> p0 = randn_t<float>(1, size, g), gr = randn_t<float>(1, size, g);
  auto run = [&](int threads) {
    RM<float> p = p0, gg = gr;
    lori::adamw_state<float> st(size);
    lori::sgd_state<float> ss;
    lori::sgd_options so;
    so.momentum = 0.9;
    const double n = lori::clip_grad_norm(lori::vector_view<float>(gg.data(), size), 10.0, false, threads);
    for (int i = 0; i < 3; ++i) lori::adamw_step(lori::vector_view<float>(p.data(), size), lori::vector_view<const float>(gg.data(), size), st, {}, threads);
    for (int i = 0; i < 2; ++i) lori::sgd_step(lori::vector_view<float>(p.data(), size), lori::vector_view<const float>(gg.data(), size), ss, so, threads);
    return std::make_pair(p, n);
  };
  const auto a = run(1), b = run(3);
  CHECK(bitwise_equal(a.first, b.first));
  CHECK(std::memcmp(&a.second, &b.second, sizeof(double)) == 0);
}

TEST_CASE("optimizers reject bad hyperparameters and size mismatches") {
  std::vector<float> p(5, 1.0f), gr(5, 0.5f), g4(4, 0.5f);
  const lori::vector_view<float> pv(p.data(), 5);
  const lori::vector_view<const float> gv(gr.data(), 5), g4v(g4.data(), 4);
  lori::adamw_state<float> st(5), st_bad(4);
  CHECK_NOTHROW(lori::adamw_step(pv, gv, st, {}));
  CHECK_THROWS_AS(lori::adamw_step(pv, g4v, st, {}), lori::error);
  CHECK_THROWS_AS(lori::adamw_step(pv, gv, st_bad, {}), lori::error);
  CHECK_THROWS_AS(lori::adamw_step(pv, gv, st, {}, 0), lori::error);
  auto bad = [&](auto mutate) {
    lori::adamw_options o;
    mutate(o);
    lori::adamw_state<float> s(5);
    CHECK_THROWS_AS(lori::adamw_step(pv, gv, s, o), lori::error);
    CHECK(s.step == 0);  // nothing happened
  };
  bad([](lori::adamw_options& o) { o.lr = -1e-3; });
  bad([](lori::adamw_options& o) { o.lr = std::nan(""); });
  bad([](lori::adamw_options& o) { o.eps = -1.0; });
  bad([](lori::adamw_options& o) { o.beta1 = 1.0; });
  bad([](lori::adamw_options& o) { o.beta1 = -0.1; });
  bad([](lori::adamw_options& o) { o.beta2 = 1.5; });
  bad([](lori::adamw_options& o) { o.weight_decay = -0.01; });
  bad([](lori::adamw_options& o) { o.weight_decay = INFINITY; });
  CHECK_THROWS_AS(lori::adamw_state<float>(-1), lori::error);
  lori::sgd_state<float> ss;
  lori::sgd_options so;
  CHECK_NOTHROW(lori::sgd_step(pv, gv, ss, so));
  CHECK_THROWS_AS(lori::sgd_step(pv, g4v, ss, so), lori::error);
  so.nesterov = true;  // Nesterov needs momentum
  CHECK_THROWS_AS(lori::sgd_step(pv, gv, ss, so), lori::error);
  so.momentum = 0.9;
  so.dampening = 0.1;  // ... and zero dampening
  CHECK_THROWS_AS(lori::sgd_step(pv, gv, ss, so), lori::error);
  so = {};
  so.lr = -1.0;
  CHECK_THROWS_AS(lori::sgd_step(pv, gv, ss, so), lori::error);
  so = {};
  so.momentum = 0.9;
  ss.momentum_buffer.assign(3, 0.0f);  // wrong size
  CHECK_THROWS_AS(lori::sgd_step(pv, gv, ss, so), lori::error);
  CHECK_THROWS_AS(lori::clip_grad_norm(pv, -1.0), lori::error);
  CHECK_THROWS_AS(lori::clip_grad_norm(pv, std::nan("")), lori::error);
  CHECK_THROWS_AS(lori::clip_grad_norm(pv, 1.0, false, 0), lori::error);
}

TEST_CASE("ops_parallel_blocks runs every block exactly once and re-throws a worker's exception") {
  // The dynamic hand-out (runs of ~nblocks / 8t blocks from an atomic counter) must cover [0, nblocks)
  // exactly once for any thread count, including more threads than blocks.
  for (index_t nblocks : {index_t{0}, index_t{1}, index_t{2}, index_t{7}, index_t{16}, index_t{64}, index_t{1001}}) {
    for (int threads : {1, 2, 3, 8}) {
      CAPTURE(nblocks);
      CAPTURE(threads);
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(nblocks));
      for (auto& h : hits) h.store(0);
      std::atomic<bool> bad_range{false};
      lori::detail::ops_parallel_blocks(nblocks, threads, [&](index_t b0, index_t b1) {
        if (!(0 <= b0 && b0 < b1 && b1 <= nblocks)) bad_range.store(true);
        for (index_t b = b0; b < b1 && b < nblocks && b >= 0; ++b) hits[static_cast<std::size_t>(b)].fetch_add(1);
      });
      CHECK_FALSE(bad_range.load());
      bool once = true;
      for (auto& h : hits) once = once && h.load() == 1;
      CHECK(once);
    }
  }
  // An exception in any block reaches the caller after all threads have joined.
  for (int threads : {1, 2, 3}) {
    CHECK_THROWS_AS(lori::detail::ops_parallel_blocks(index_t{50}, threads,
                                                      [&](index_t b0, index_t b1) {
                                                        if (b0 <= 37 && 37 < b1) throw lori::error("block 37");
                                                      }),
                    lori::error);
  }
}
