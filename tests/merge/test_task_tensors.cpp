// Element-wise helpers (PEFT merge_utils): magnitude pruning, DARE, TIES election and disjoint mean,
// each against a double-precision reference written from the definitions.
#include <doctest/doctest.h>

#include "lori/merge/task_tensors.hpp"
#include "merge_test_support.hpp"
#include "test_util.hpp"

#include <cmath>
#include <vector>

using merge_test::dare_keep;
using merge_test::ref_magnitude_prune;

namespace {
template <class T>
std::vector<T> randvec(std::size_t n, std::mt19937_64& g) {
  std::normal_distribution<double> nd;
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(nd(g));
  return v;
}
template <class T>
std::vector<double> todouble(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}
}  // namespace

TEST_CASE_TEMPLATE("magnitude_prune keeps floor(density * n) largest magnitudes, ties to the lowest index", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(11);
  for (std::size_t n : {0u, 1u, 7u, 64u, 1001u}) {
    for (double density : {0.0, 0.1, 0.5, 0.999, 1.0, 2.0}) {
      auto x = randvec<T>(n, g);
      const auto ref = ref_magnitude_prune(todouble(x), density);
      lori::magnitude_prune(lori::vector_view<T>(x.data(), static_cast<lori::index_t>(n)), density);
      INFO("n=" << n << " density=" << density);
      CHECK(todouble(x) == ref);  // selection is exact: the same values, the same order
    }
  }
  // Ties at the threshold: |x| = 1 five times, keep 3 -> the first three.
  std::vector<T> t = {T(-1), T(0.5), T(1), T(1), T(-1), T(2), T(1)};
  lori::magnitude_prune(lori::vector_view<T>(t.data(), 7), 4.0 / 7.0 + 1e-9);  // k = 4: 2 and three of the 1s
  CHECK(t == std::vector<T>{T(-1), T(0), T(1), T(1), T(0), T(2), T(0)});
  CHECK(lori::magnitude_prune_count(0.5, 7) == 3);
  CHECK(lori::magnitude_prune_count(0.3, 10) == 3);
  CHECK(lori::magnitude_prune_count(1.5, 10) == 10);
}

TEST_CASE("magnitude_prune and dare_prune reject bad densities and NaN") {
  std::vector<float> x = {1.f, 2.f, NAN};
  lori::vector_view<float> v(x.data(), 3);
  CHECK_THROWS_AS(lori::magnitude_prune(v, -0.1), lori::error);
  CHECK_THROWS_AS(lori::magnitude_prune(v, std::nan("")), lori::error);
  CHECK_THROWS_AS(lori::magnitude_prune(v, 0.5), lori::error);  // NaN entry
  CHECK_NOTHROW(lori::magnitude_prune(v, 1.0));                  // density >= 1: untouched, as PEFT
  CHECK_THROWS_AS(lori::dare_prune(v, -1.0, true, 1, 2), lori::error);
  CHECK_THROWS_AS(lori::dare_prune(v, 0.0, true, 1, 2), lori::error);  // PEFT: 0/0 = NaN
  std::vector<float> y = {1.f, -2.f, 3.f};
  lori::dare_prune(lori::vector_view<float>(y.data(), 3), 0.0, false, 1, 2);
  CHECK(y == std::vector<float>{0.f, -0.f, 0.f});
  CHECK_THROWS_AS(lori::magnitude_prune_count(-1.0, 3), lori::error);
}

TEST_CASE_TEMPLATE("dare_prune: kept fraction ~ density, kept entries rescaled by 1/density, reproducible", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(12);
  const std::size_t n = 200003;  // not a multiple of 4
  const auto x0 = randvec<T>(n, g);
  for (double density : {0.1, 0.5, 0.9}) {
    const std::uint64_t seed = g(), stream = g();
    auto x = x0;
    lori::dare_prune(lori::vector_view<T>(x.data(), static_cast<lori::index_t>(n)), density, true, seed, stream);
    std::size_t kept = 0;
    bool rescaled = true;
    for (std::size_t e = 0; e < n; ++e) {
      if (x[e] != T(0)) {
        ++kept;
        rescaled = rescaled && x[e] == x0[e] / static_cast<T>(density);
      }
    }
    // Binomial(n, p): 6 standard deviations.
    const double sd = std::sqrt(static_cast<double>(n) * density * (1 - density));
    INFO("density=" << density << " kept=" << kept);
    CHECK(std::abs(static_cast<double>(kept) - density * static_cast<double>(n)) < 6 * sd);
    CHECK(rescaled);
    // Expectation preserved: mean of x / x0 over all entries ~ 1 (each entry is 1/p w.p. p).
    auto y = x0;
    lori::dare_prune(lori::vector_view<T>(y.data(), static_cast<lori::index_t>(n)), density, true, seed, stream);
    CHECK(y == x);  // same (seed, stream): same draws
    auto z = x0;
    lori::dare_prune(lori::vector_view<T>(z.data(), static_cast<lori::index_t>(n)), density, true, seed, stream + 1);
    CHECK(z != x);  // another stream: other draws
    // The keep decisions of different streams are uncorrelated: joint kept fraction ~ p^2.
    const auto k1 = dare_keep(n, density, seed, stream), k2 = dare_keep(n, density, seed, stream + 1);
    double both = 0;
    for (std::size_t e = 0; e < n; ++e) both += k1[e] * k2[e];
    const double p2 = density * density, sd2 = std::sqrt(static_cast<double>(n) * p2 * (1 - p2));
    CHECK(std::abs(both - p2 * static_cast<double>(n)) < 6 * sd2);
  }
  auto x = x0;
  lori::dare_prune(lori::vector_view<T>(x.data(), static_cast<lori::index_t>(n)), 1.0, true, 1, 1);
  CHECK(x == x0);
}

TEST_CASE_TEMPLATE("merge_task_tensors matches the merge_utils definitions for every method", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(13);
  // (n + 2) eps for n <= 4 terms: 6 * 6e-8 for float, 6 * 1.1e-16 for double (with margin).
  const double tol = std::is_same_v<T, float> ? 1e-6 : 2e-15;
  for (std::size_t n : {1u, 5u, 333u}) {
    for (std::size_t ntask : {1u, 2u, 4u}) {
      for (double density : {0.0, 0.5, 1.0}) {
        std::vector<std::vector<T>> xs;
        std::vector<lori::vector_view<const T>> views;
        std::vector<T> w;
        std::vector<double> wd;
        for (std::size_t i = 0; i < ntask; ++i) {
          xs.push_back(randvec<T>(n, g));
          const T wi = static_cast<T>(std::uniform_real_distribution<double>(-1.5, 1.5)(g));
          w.push_back(wi);
          wd.push_back(static_cast<double>(wi));
        }
        for (auto& x : xs) views.emplace_back(x.data(), static_cast<lori::index_t>(n));
        lori::task_merge_options opt;
        opt.density = density;
        opt.seed = g();
        opt.stream = g();
        std::vector<std::vector<double>> mag, dare;
        for (std::size_t i = 0; i < ntask; ++i) {
          mag.push_back(ref_magnitude_prune(todouble(xs[i]), density));
          std::vector<double> keep = density >= 1 ? std::vector<double>(n, 1.0)
                                                  : dare_keep(n, density, opt.seed, lori::dare_tensor_stream(opt.stream, i));
          std::vector<double> p(n);
          for (std::size_t e = 0; e < n; ++e)
            p[e] = density >= 1 ? static_cast<double>(xs[i][e])
                                : keep[e] * static_cast<double>(xs[i][e]) / static_cast<double>(static_cast<T>(density > 0 ? density : 1.0));
          dare.push_back(p);
        }
        std::vector<std::vector<double>> raw;
        for (auto& x : xs) raw.push_back(todouble(x));
        struct Case {
          lori::task_combination m;
          std::vector<double> ref;
          bool needs_positive_density;
        };
        std::vector<Case> cases = {
            {lori::task_combination::linear, merge_test::ref_weighted_sum(raw, wd), false},
            {lori::task_combination::magnitude_prune, merge_test::ref_weighted_sum(mag, wd), false},
            {lori::task_combination::ties, merge_test::ref_ties(mag, wd, false), false},
            {lori::task_combination::dare_linear, merge_test::ref_weighted_sum(dare, wd), true},
            {lori::task_combination::dare_ties, merge_test::ref_ties(dare, wd, false), true},
        };
        for (auto& c : cases) {
          INFO("method=" << static_cast<int>(c.m) << " n=" << n << " tasks=" << ntask << " density=" << density);
          std::vector<T> out(n, T(123));
          lori::vector_view<T> ov(out.data(), static_cast<lori::index_t>(n));
          if (c.needs_positive_density && density == 0.0) {
            CHECK_THROWS_AS(lori::merge_task_tensors<T>(c.m, views, w, ov, opt), lori::error);
            continue;
          }
          lori::merge_task_tensors<T>(c.m, views, w, ov, opt);
          // Per element: the error of a weighted sum of <= 4 terms is bounded by ~(n + 2) eps times the
          // sum of the magnitudes of its terms (not of the result, which may cancel); DARE terms are
          // scaled by 1 / density.
          const double inv_p = density > 0 && density < 1 ? 1.0 / density : 1.0;
          bool ok = true;
          for (std::size_t e = 0; e < n; ++e) {
            double scale = 0;
            for (std::size_t i = 0; i < ntask; ++i) scale += std::abs(wd[i]) * std::abs(static_cast<double>(xs[i][e])) * inv_p;
            ok = ok && std::abs(out[e] - c.ref[e]) <= tol * scale;
          }
          CHECK(ok);
        }
        // Frequency election.
        std::vector<T> out(n);
        opt.sign_method = lori::majority_sign_method::frequency;
        lori::merge_task_tensors<T>(lori::task_combination::ties, views, w, lori::vector_view<T>(out.data(), static_cast<lori::index_t>(n)), opt);
        const auto ref = merge_test::ref_ties(mag, wd, true);
        bool ok = true;
        for (std::size_t e = 0; e < n; ++e) {
          double scale = 0;
          for (std::size_t i = 0; i < ntask; ++i) scale += std::abs(wd[i]) * std::abs(static_cast<double>(xs[i][e]));
          ok = ok && std::abs(out[e] - ref[e]) <= tol * scale;
        }
        CHECK(ok);
      }
    }
  }
}

TEST_CASE("TIES election: ties elect +1, zeros never vote, disjoint mean divides by the agreeing count") {
  // Three tasks, four entries, unit weights.
  std::vector<double> a = {1, -1, 0, 2}, b = {-1, -1, 0, -3}, c = {0, 3, 0, 0};
  std::vector<lori::vector_view<const double>> v = {{a.data(), 4}, {b.data(), 4}, {c.data(), 4}};
  std::vector<double> w = {1, 1, 1}, out(4);
  lori::task_merge_options opt;  // density 1: no pruning
  lori::merge_task_tensors<double>(lori::task_combination::ties, v, w, lori::vector_view<double>(out.data(), 4), opt);
  // e0: sum 0 -> +1; only a agrees -> 1. e1: sum 1 -> +1; only c agrees -> 3. e2: nobody -> 0.
  // e3: sum -1 -> -1; b agrees -> -3.
  CHECK(out == std::vector<double>{1, 3, 0, -3});
  opt.sign_method = lori::majority_sign_method::frequency;
  lori::merge_task_tensors<double>(lori::task_combination::ties, v, w, lori::vector_view<double>(out.data(), 4), opt);
  // e1 frequency: -1 -1 +1 -> -1; a and b agree -> (-1 - 1) / 2 = -1. e3: +1 -1 -> 0 -> +1: a -> 2.
  CHECK(out == std::vector<double>{1, -1, 0, 2});
  // Weights multiply after the election: negative weights do not change which entries agree.
  w = {-2, 1, 1};
  opt.sign_method = lori::majority_sign_method::total;
  lori::merge_task_tensors<double>(lori::task_combination::ties, v, w, lori::vector_view<double>(out.data(), 4), opt);
  CHECK(out == std::vector<double>{-2, 3, 0, -3});
  // Errors.
  CHECK_THROWS_AS(lori::merge_task_tensors<double>(lori::task_combination::ties, {}, {}, lori::vector_view<double>(out.data(), 4), opt), lori::error);
  CHECK_THROWS_AS(lori::merge_task_tensors<double>(lori::task_combination::ties, v, {1.0}, lori::vector_view<double>(out.data(), 4), opt), lori::error);
  CHECK_THROWS_AS(lori::merge_task_tensors<double>(lori::task_combination::ties, v, w, lori::vector_view<double>(out.data(), 3), opt), lori::error);
  opt.density = -0.5;
  CHECK_THROWS_AS(lori::merge_task_tensors<double>(lori::task_combination::ties, v, w, lori::vector_view<double>(out.data(), 4), opt), lori::error);
}

TEST_CASE("DARE draws come from lori::philox4x32_10 with the 24-bit uniform conversion") {
  // Random123 known answer: counter 0, key 0 -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8.
  const auto u = lori::detail::dare_uniform_block(0, 0, 0);
  CHECK(u[0] == (0x6627e8d5u >> 8));
  CHECK(u[1] == (0xe169c58du >> 8));
  CHECK(u[2] == (0xbc57ac4cu >> 8));
  CHECK(u[3] == (0x9b00dbd8u >> 8));
  // Element e of (seed, stream) is kept iff u24 * 2^-24 < density.
  std::vector<double> x(8, 1.0);
  lori::dare_prune(lori::vector_view<double>(x.data(), 8), 0.5, false, 0, 0);
  for (int e = 0; e < 4; ++e) CHECK(x[static_cast<std::size_t>(e)] == (u[static_cast<std::size_t>(e)] < (1u << 23) ? 1.0 : 0.0));
}
