// merge_into_base: W + sum_i w_i s_i B_i A_i for float, double and bf16 storage, against a double
// reference; bitwise independence of the thread count; error paths.
#include <doctest/doctest.h>

#include "lori/merge/merge_into_base.hpp"
#include "merge_test_support.hpp"
#include "test_util.hpp"

#include <vector>

using merge_test::MatD;

namespace {
template <class T>
std::vector<lori::adapter_module<T>> make_adapters(int d, int k, std::mt19937_64& g) {
  return {merge_test::random_module<T>(d, k, 3, 2.0, g), merge_test::random_module<T>(d, k, 1, 0.5, g),
          merge_test::random_module<T>(d, k, 5, 1.0, g)};
}
template <class T>
std::vector<lori::adapter_module_view<T>> views_of(const std::vector<lori::adapter_module<T>>& ms) {
  std::vector<lori::adapter_module_view<T>> v;
  for (const auto& m : ms) v.push_back(m.view());
  return v;
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
      lori::merge_into_base<T, T>(lori::view(Wm), views_of(ms), w, opt);
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
  lori::merge_into_base<lori::bfloat16, float>(lori::row_major_view<lori::bfloat16>(Wb.data(), d, k), views_of(ms), w, opt);
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
  lori::merge_into_base<double, float>(lori::view(Wd), views_of(ms), w, opt);
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
  lori::merge_into_base<float, float>(lori::view(W1), views_of(ms), w, opt);
  opt.num_threads = 4;
  lori::merge_into_base<float, float>(lori::view(W4), views_of(ms), w, opt);
  CHECK(W1 == W4);
  CHECK(W1 != W0);
}

TEST_CASE("merge_into_base reports bad arguments") {
  auto g = lori_test::rng(34);
  const auto ms = make_adapters<float>(6, 5, g);
  auto W = lori_test::randn<float>(6, 5, g);
  auto Wbad = lori_test::randn<float>(5, 6, g);
  const std::vector<double> w = {1, 1, 1};
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(Wbad), views_of(ms), w)), lori::error);
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(W), views_of(ms), {1.0})), lori::error);
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(W), views_of(ms), {1.0, 1.0, INFINITY})), lori::error);
  lori::merge_into_base_options opt;
  opt.num_threads = 0;
  CHECK_THROWS_AS((lori::merge_into_base<float, float>(lori::view(W), views_of(ms), w, opt)), lori::error);
  const auto W0 = W;
  lori::merge_into_base<float, float>(lori::view(W), {}, {});  // nothing to add
  CHECK(W == W0);
}
