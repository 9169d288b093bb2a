// merge_into_base: W + sum_i w_i s_i B_i A_i for float, double and bf16 storage, against a double
// reference; bitwise independence of the thread count; error paths.
#include <doctest/doctest.h>

#include "lori/merge/merge_into_base.hpp"
#include "merge_test_support.hpp"
#include "test_util.hpp"

#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

using merge_test::MatD;

namespace {
template <class T>
std::vector<lori::adapter_module<T>> make_adapters(int d, int k, std::mt19937_64& g) {
  return {merge_test::random_module<T>(d, k, 3, 2.0, g), merge_test::random_module<T>(d, k, 1, 0.5, g),
          merge_test::random_module<T>(d, k, 5, 1.0, g)};
}
}  // namespace

TEST_CASE_TEMPLATE("merge_into_base matches W + sum w_i s_i B_i A_i (float and double W)", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(31);
  const std::vector<double> w = {0.5, -0.3, 0.7};
  for (auto dims : {std::pair<int, int>{0, 5}, {1, 1}, {37, 19}, {130, 70}}) {
    const int d = dims.first, k = dims.second;
    const auto ms = make_adapters<T>(d, k, g);
    auto W = lori_test::randn<T>(d, k, g);
    MatD ref = W.template cast<double>();
    for (std::size_t i = 0; i < ms.size(); ++i) ref += w[i] * merge_test::delta(ms[i]);
    for (auto [rows, cols, threads] : {std::tuple<int, int, int>{64, 2048, 1}, {7, 5, 3}, {1, 1, 2}}) {
      auto Wm = W;
      lori::merge_into_base_options opt;
      opt.block_rows = rows;
      opt.block_cols = cols;
      opt.num_threads = threads;
      lori::merge_into_base<T, T>(lori::view(Wm), merge_test::views_of(ms), w, opt);
      // Per element: W + sum of R = 9 products in T, then one rounding: ~10 eps(T) relative to |W| + |dW|.
      const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-14;
      INFO("d=" << d << " k=" << k << " block " << rows << "x" << cols << " threads " << threads);
      CHECK(lori_test::rel_err(Wm, ref) <= tol);
    }
  }
}

TEST_CASE("merge_into_base: bf16 storage rounds once; double W with float adapters") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(32);
  const int d = 45, k = 33;
  const auto ms = make_adapters<float>(d, k, g);
  const std::vector<double> w = {1.0, 0.25, -0.5};
  const auto W0 = lori_test::randn<float>(d, k, g);
  std::vector<lori::bfloat16> Wb(static_cast<std::size_t>(d * k));
  for (int i = 0; i < d * k; ++i) Wb[static_cast<std::size_t>(i)] = lori::bfloat16(W0.data()[i]);
  MatD ref(d, k);
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < k; ++j) ref(i, j) = static_cast<float>(Wb[static_cast<std::size_t>(i * k + j)]);
  for (std::size_t i = 0; i < ms.size(); ++i) ref += w[i] * merge_test::delta(ms[i]);
  lori::merge_into_base_options opt;
  opt.block_cols = 8;
  lori::merge_into_base<lori::bfloat16, float>(lori::row_major_view<lori::bfloat16>(Wb.data(), d, k), merge_test::views_of(ms), w, opt);
  // Each element: float sum (error ~1e-6 relative) then one bf16 rounding: |err| <= 2^-8 |value| + tiny.
  int bad = 0;
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < k; ++j) {
      const double got = static_cast<float>(Wb[static_cast<std::size_t>(i * k + j)]);
      if (std::abs(got - ref(i, j)) > std::abs(ref(i, j)) * (1.0 / 256) + 1e-6) ++bad;
    }
  CHECK(bad == 0);
  // double W, float adapters.
  MatD Wd = W0.cast<double>();
  MatD refd = Wd;
  for (std::size_t i = 0; i < ms.size(); ++i) refd += w[i] * merge_test::delta(ms[i]);
  lori::merge_into_base<double, float>(lori::view(Wd), merge_test::views_of(ms), w, opt);
  CHECK(lori_test::rel_err(Wd, refd) <= 1e-6);
}

TEST_CASE("merge_into_base is bitwise independent of the thread count") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(33);
  const int d = 200, k = 150;
  const auto ms = make_adapters<float>(d, k, g);
  const std::vector<double> w = {0.5, 0.3, 0.7};
  const auto W0 = lori_test::randn<float>(d, k, g);
  auto W1 = W0, W4 = W0;
  lori::merge_into_base_options opt;
  opt.block_rows = 16;
  lori::merge_into_base<float, float>(lori::view(W1), merge_test::views_of(ms), w, opt);
  opt.num_threads = 4;
  lori::merge_into_base<float, float>(lori::view(W4), merge_test::views_of(ms), w, opt);
  CHECK(W1 == W4);
  CHECK(W1 != W0);
}

TEST_CASE("merge_into_base reports bad arguments") {
  auto g = lori_test::rng(34);
  const auto ms = make_adapters<float>(6, 5, g);
  auto W = lori_test::randn<float>(6, 5, g);
  auto Wbad = lori_test::randn<float>(5, 6, g);
  const std::vector<double> w = {1, 1, 1};
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(Wbad), merge_test::views_of(ms), w)), lori::error);
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(W), merge_test::views_of(ms), {1.0})), lori::error);
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(W), merge_test::views_of(ms), {1.0, 1.0, INFINITY})), lori::error);
  lori::merge_into_base_options opt;
  opt.num_threads = 0;
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(W), merge_test::views_of(ms), w, opt)), lori::error);
  const auto W0 = W;
  lori::merge_into_base<float, float>(lori::view(W), {}, {});  // nothing to add
  CHECK(W == W0);
}

// ---- sparse (masked, LoRI-S) path ----------------------------------------------------------------

namespace {
template <class TW>
double storage_unit_roundoff() {
  // bf16: 8 significant bits, 2^-8; with double adapters the sum is rounded to float first (+2^-24).
  if constexpr (std::is_same_v<TW, lori::bfloat16>) return 1.0 / 256 + 1.0 / (1 << 23);
  else return std::numeric_limits<TW>::epsilon() / 2;
}

/// Adapters for the sparse tests: masked ones of density 0.1 (LoRI-S), 0 (empty mask) and 1 (full
/// mask), and (with_dense) an unmasked one; ranks 4, 3, 2, 5 (total 14).
template <class T>
std::vector<lori::adapter_module<T>> make_masked(int d, int k, bool with_dense, std::mt19937_64& g) {
  std::vector<lori::adapter_module<T>> ms;
  ms.push_back(merge_test::random_module<T>(d, k, 4, 2.0, g));
  merge_test::sparsify(ms.back(), 0.1, g);
  ms.push_back(merge_test::random_module<T>(d, k, 3, 0.5, g));
  merge_test::sparsify(ms.back(), 0.0, g);
  ms.push_back(merge_test::random_module<T>(d, k, 2, 1.0, g));
  merge_test::sparsify(ms.back(), 1.0, g);
  if (with_dense) ms.push_back(merge_test::random_module<T>(d, k, 5, 1.5, g));
  return ms;
}

/// Runs merge_into_base<TW, T> on W0 (double values, rounded to TW first) and checks every element
/// against the double reference W + sum_i w_i s_i B_i A_i (B_i with its zeros outside the mask).
/// Bound per element: the update is a sum of at most R_total = 14 products plus the dense GEMM and the
/// add to W, each rounding in T: |err| <= (R_total + 2) eps(T) (|W| + sum |w_i s_i B_i(i, r) A_i(r, j)|)
/// (the classical gamma_n bound with a factor 2 of slack, eps = 2u), then one rounding to storage:
/// + u(TW) |result|. Returns the number of elements outside the bound.
template <class TW, class T>
int sparse_case(const MatD& W0, const std::vector<lori::adapter_module<T>>& ms, const std::vector<double>& w,
                const lori::merge_into_base_options& opt, std::vector<TW>* out = nullptr) {
  const auto d = W0.rows(), k = W0.cols();
  std::vector<TW> Wt(static_cast<std::size_t>(d * k));
  MatD ref(d, k), mag(d, k);
  for (Eigen::Index i = 0; i < d * k; ++i) {
    Wt[static_cast<std::size_t>(i)] = lori::from_float<TW>(static_cast<float>(W0.data()[i]));
    if constexpr (std::is_same_v<TW, double>) Wt[static_cast<std::size_t>(i)] = W0.data()[i];
    ref.data()[i] = lori::to_float(Wt[static_cast<std::size_t>(i)]);
  }
  mag = ref.cwiseAbs();
  for (std::size_t t = 0; t < ms.size(); ++t) {
    const double c = w[t] * ms[t].scaling;
    ref += w[t] * merge_test::delta(ms[t]);
    mag += std::abs(c) * (merge_test::to_d(ms[t].B).cwiseAbs() * merge_test::to_d(ms[t].A).cwiseAbs());
  }
  std::vector<lori::adapter_module_view<T>> v;
  for (const auto& m : ms) v.push_back(m.view());
  lori::merge_into_base<TW, T>(lori::row_major_view<TW>(Wt.data(), d, k), v, w, opt);
  const double eps = std::numeric_limits<T>::epsilon(), u = storage_unit_roundoff<TW>();
  int bad = 0;
  for (Eigen::Index i = 0; i < d * k; ++i) {
    const double got = static_cast<double>(lori::to_float(Wt[static_cast<std::size_t>(i)]));
    if (!(std::abs(got - ref.data()[i]) <= 16 * eps * mag.data()[i] + u * std::abs(ref.data()[i]))) ++bad;
  }
  if (out) *out = Wt;
  return bad;
}
}  // namespace

TEST_CASE_TEMPLATE("merge_into_base sparse path (masked B) matches the double reference", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(35);
  const std::vector<double> w = {0.3, -0.7, 1.2, -0.4};
  for (auto dims : {std::pair<int, int>{0, 5}, {5, 0}, {1, 1}, {37, 19}, {67, 131}, {130, 83}}) {
    const int d = dims.first, k = dims.second;
    for (bool with_dense : {false, true}) {
      const auto ms = make_masked<T>(d, k, with_dense, g);
      const std::vector<double> ws(w.begin(), w.begin() + static_cast<long>(ms.size()));
      const MatD W0 = lori_test::randn<double>(d, k, g);
      for (auto [rows, cols, threads, simd] :
           {std::tuple<int, int, int, bool>{64, 1024, 1, true}, {7, 5, 3, true}, {1, 1, 2, false}, {16, 70, 4, false}}) {
        lori::merge_into_base_options opt;
        opt.block_rows = rows;
        opt.sparse_block_cols = cols;
        opt.num_threads = threads;
        opt.allow_simd = simd;
        INFO("d=" << d << " k=" << k << " dense adapter " << with_dense << " block " << rows << "x" << cols << " threads "
                  << threads << " simd " << simd);
        CHECK(sparse_case<T, T>(W0, ms, ws, opt) == 0);
        CHECK(sparse_case<lori::bfloat16, T>(W0, ms, ws, opt) == 0);
        if constexpr (std::is_same_v<T, float>) CHECK(sparse_case<double, T>(W0, ms, ws, opt) == 0);
        else CHECK(sparse_case<float, T>(W0, ms, ws, opt) == 0);
      }
    }
  }
}

TEST_CASE("merge_into_base sparse path: a full mask gives the dense path's result; empty masks change nothing") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(36);
  const int d = 50, k = 90;
  auto m = merge_test::random_module<double>(d, k, 6, 1.0, g);
  const MatD W0 = lori_test::randn<double>(d, k, g);
  MatD Wd = W0, Ws = W0;
  lori::merge_into_base<double, double>(lori::view(Wd), {m.view()}, {0.8});
  m.b_mask = lori::bitmask(d, 6, true);
  lori::merge_into_base<double, double>(lori::view(Ws), {m.view()}, {0.8});
  // Same 6 products per element, summed in different orders: ~8 eps relative.
  CHECK(lori_test::rel_err(Ws, Wd) <= 1e-14);
  CHECK(Ws != W0);
  m.b_mask = lori::bitmask(d, 6, false);
  m.B.setZero();
  MatD We = W0;
  lori::merge_into_base<double, double>(lori::view(We), {m.view()}, {0.8});
  CHECK(We == W0);
}

TEST_CASE("merge_into_base sparse path is bitwise independent of threads and block sizes") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(37);
  const int d = 203, k = 300;
  auto ms = make_masked<float>(d, k, false, g);
  for (auto& m : ms) merge_test::sparsify(m, 0.1, g);  // all LoRI-S
  std::vector<lori::adapter_module_view<float>> v;
  for (const auto& m : ms) v.push_back(m.view());
  const std::vector<double> w = {0.4, -0.4, 0.9};
  const auto W0 = lori_test::randn<float>(d, k, g);
  for (bool simd : {true, false}) {
    auto W1 = W0;
    lori::merge_into_base_options opt;
    opt.allow_simd = simd;
    lori::merge_into_base<float, float>(lori::view(W1), v, w, opt);
    CHECK(W1 != W0);
    for (auto [rows, cols, threads] : {std::tuple<int, int, int>{16, 64, 2}, {5, 77, 3}, {64, 1024, 4}, {1, 300, 7}}) {
      auto Wt = W0;
      opt.block_rows = rows;
      opt.sparse_block_cols = cols;
      opt.num_threads = threads;
      lori::merge_into_base<float, float>(lori::view(Wt), v, w, opt);
      INFO("simd " << simd << " block " << rows << "x" << cols << " threads " << threads);
      CHECK(Wt == W1);
    }
  }
  // With an unmasked adapter too (dense GEMM tiles of fixed shape): independent of the thread count.
  ms.push_back(merge_test::random_module<float>(d, k, 5, 1.0, g));
  v.push_back(ms.back().view());
  const std::vector<double> w4 = {0.4, -0.4, 0.9, 0.6};
  auto W1 = W0, W3 = W0;
  lori::merge_into_base_options opt;
  opt.block_rows = 16;
  lori::merge_into_base<float, float>(lori::view(W1), v, w4, opt);
  opt.num_threads = 3;
  lori::merge_into_base<float, float>(lori::view(W3), v, w4, opt);
  CHECK(W1 == W3);
}

TEST_CASE("merge_into_base sparse path: bf16 W keeps NaN and Inf, rounds like bfloat16(float)") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(38);
  const int d = 9, k = 150;
  auto m = merge_test::random_module<float>(d, k, 8, 1.0, g);
  merge_test::sparsify(m, 0.5, g);
  const auto W0 = lori_test::randn<float>(d, k, g);
  for (bool simd : {true, false}) {
    std::vector<lori::bfloat16> Wb(static_cast<std::size_t>(d * k));
    for (int i = 0; i < d * k; ++i) Wb[static_cast<std::size_t>(i)] = lori::bfloat16(W0.data()[i]);
    Wb[3] = lori::bfloat16(std::numeric_limits<float>::quiet_NaN());
    Wb[70] = lori::bfloat16(std::numeric_limits<float>::infinity());
    Wb[141] = lori::bfloat16(-std::numeric_limits<float>::infinity());
    std::vector<float> expect(Wb.size());
    // Expected: the float sum of the kept terms in order (as the portable loop does, mul then add),
    // added to W and rounded once; with FMA the float sum may differ in the last bit, so compare the
    // rounded bf16 value within one bf16 ulp and the specials exactly.
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < k; ++j) {
        double acc = 0;
        for (int r = 0; r < 8; ++r) acc += 0.5 * static_cast<double>(m.B(i, r)) * m.A(r, j);
        expect[static_cast<std::size_t>(i * k + j)] = static_cast<float>(Wb[static_cast<std::size_t>(i * k + j)]) + static_cast<float>(acc);
      }
    lori::merge_into_base_options opt;
    opt.allow_simd = simd;
    lori::merge_into_base<lori::bfloat16, float>(lori::row_major_view<lori::bfloat16>(Wb.data(), d, k), {m.view()}, {0.5}, opt);
    CHECK(std::isnan(static_cast<float>(Wb[3])));
    CHECK(static_cast<float>(Wb[70]) == std::numeric_limits<float>::infinity());
    CHECK(static_cast<float>(Wb[141]) == -std::numeric_limits<float>::infinity());
    int bad = 0;
    for (std::size_t i = 0; i < Wb.size(); ++i) {
      if (i == 3 || i == 70 || i == 141) continue;
      const float e = static_cast<float>(lori::bfloat16(expect[i]));
      if (!(std::abs(static_cast<float>(Wb[i]) - e) <= std::abs(e) * (1.0f / 128))) ++bad;  // one bf16 ulp
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("merge_into_base sparse path rejects a masked B that is not zero outside its mask") {
  auto g = lori_test::rng(39);
  auto m = merge_test::random_module<float>(12, 10, 4, 1.0, g);
  merge_test::sparsify(m, 0.5, g);
  auto W = lori_test::randn<float>(12, 10, g);
  const auto W0 = W;
  lori::merge_into_base<float, float>(lori::view(W), {m.view()}, {1.0});  // valid: zeros outside
  CHECK(W != W0);
  W = W0;
  // Put a non-zero (and then a NaN) at a position outside the mask: error, W untouched.
  int oi = -1, oj = -1;
  for (int i = 0; i < 12 && oi < 0; ++i)
    for (int j = 0; j < 4; ++j)
      if (!m.b_mask->test(i, j)) {
        oi = i;
        oj = j;
        break;
      }
  REQUIRE(oi >= 0);
  m.B(oi, oj) = 1e-30f;
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(W), {m.view()}, {1.0})), lori::error);
  m.B(oi, oj) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(W), {m.view()}, {1.0})), lori::error);
  CHECK(W == W0);
  // Mask of the wrong shape, and sparse_block_cols < 1.
  m.B(oi, oj) = 0;
  m.b_mask = lori::bitmask(12, 3);
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(W), {m.view()}, {1.0})), lori::error);
  m.b_mask = lori::bitmask(12, 4);
  lori::merge_into_base_options opt;
  opt.sparse_block_cols = 0;
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(W), {m.view()}, {1.0}, opt)), lori::error);
}
