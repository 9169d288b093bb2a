// Helpers shared by lori's tests: seeded random inputs and relative-error measures.
// Every test draws fresh random inputs from a seed printed on failure (LORI_TEST_SEED overrides it),
// so a failure can be replayed.
#ifndef LORI_TESTS_TEST_UTIL_HPP
#define LORI_TESTS_TEST_UTIL_HPP

#include <Eigen/Core>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>

namespace lori_test {

/// A seed for this process: LORI_TEST_SEED if set, else fresh from the clock (fresh inputs each run).
inline std::uint64_t base_seed() {
  static const std::uint64_t seed = [] {
    if (const char* s = std::getenv("LORI_TEST_SEED")) return static_cast<std::uint64_t>(std::strtoull(s, nullptr, 10));
    return static_cast<std::uint64_t>(std::chrono::high_resolution_clock::now().time_since_epoch().count());
  }();
  return seed;
}

/// A generator seeded from base_seed() and a per-call-site salt.
inline std::mt19937_64 rng(std::uint64_t salt = 0) { return std::mt19937_64(base_seed() ^ (salt * 0x9E3779B97F4A7C15ull)); }

using MatrixXdR = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixXfR = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// rows x cols row-major matrix of N(0, 1) draws.
template <class T = double>
Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> randn(Eigen::Index rows, Eigen::Index cols, std::mt19937_64& g) {
  std::normal_distribution<double> nd(0.0, 1.0);
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(nd(g));
  return m;
}

/// ||a - b||_F / max(||b||_F, tiny): the relative error measure used throughout the tests.
template <class A, class B>
double rel_err(const A& a, const B& b) {
  const double num = (a.template cast<double>() - b.template cast<double>()).norm();
  const double den = b.template cast<double>().norm();
  return den > 0 ? num / den : num;
}

}  // namespace lori_test

#define LORI_TEST_SEED_INFO() INFO("LORI_TEST_SEED=" << ::lori_test::base_seed())

#endif
