// Shared helpers of the merge tests: random adapters and double-precision references written from the
// definitions (PEFT 0.21 add_weighted_adapter / merge_utils), independent of the library's code paths.
#ifndef LORI_TESTS_MERGE_TEST_SUPPORT_HPP
#define LORI_TESTS_MERGE_TEST_SUPPORT_HPP

#include "lori/merge/adapter_module.hpp"
#include "lori/merge/task_tensors.hpp"
#include "test_util.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace merge_test {

using MatD = lori_test::MatrixXdR;

template <class T>
lori::adapter_module<T> random_module(Eigen::Index d, Eigen::Index k, Eigen::Index r, double scaling, std::mt19937_64& g) {
  lori::adapter_module<T> m;
  m.A = lori_test::randn<T>(r, k, g) / static_cast<T>(std::sqrt(static_cast<double>(std::max<Eigen::Index>(k, 1))));
  m.B = lori_test::randn<T>(d, r, g) * static_cast<T>(0.05);
  m.scaling = scaling;
  return m;
}

/// Zeroes B outside a random mask of the given density and attaches the mask.
template <class T>
void sparsify(lori::adapter_module<T>& m, double density, std::mt19937_64& g) {
  std::bernoulli_distribution bd(density);
  lori::bitmask mask(m.B.rows(), m.B.cols());
  for (Eigen::Index i = 0; i < m.B.rows(); ++i)
    for (Eigen::Index j = 0; j < m.B.cols(); ++j) {
      if (bd(g)) mask.set(i, j);
      else m.B(i, j) = T(0);
    }
  m.b_mask = mask;
}

template <class T>
MatD to_d(const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& m) {
  return m.template cast<double>();
}

/// dW of a module in double: s * B * A.
template <class T>
MatD delta(const lori::adapter_module<T>& m) {
  return m.scaling * (to_d(m.B) * to_d(m.A));
}

/// Reference magnitude pruning: keep the k = floor(density * n) largest |x|, ties -> lowest index.
inline std::vector<double> ref_magnitude_prune(std::vector<double> x, double density) {
  if (density >= 1) return x;
  const auto n = x.size();
  const auto k = static_cast<std::size_t>(density * static_cast<double>(n));
  std::vector<std::size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return std::abs(x[a]) > std::abs(x[b]); });
  std::vector<double> out(n, 0.0);
  for (std::size_t t = 0; t < k; ++t) out[idx[t]] = x[idx[t]];
  return out;
}

inline double sgn(double v) { return v > 0 ? 1.0 : (v < 0 ? -1.0 : 0.0); }

/// Reference TIES combination of already pruned tensors p_i with weights c_i.
inline std::vector<double> ref_ties(const std::vector<std::vector<double>>& p, const std::vector<double>& c, bool frequency) {
  const std::size_t n = p[0].size();
  std::vector<double> out(n);
  for (std::size_t e = 0; e < n; ++e) {
    double vote = 0;
    for (std::size_t i = 0; i < p.size(); ++i) vote += frequency ? sgn(p[i][e]) : p[i][e];
    const double elected = vote >= 0 ? 1.0 : -1.0;
    double sum = 0;
    int count = 0;
    for (std::size_t i = 0; i < p.size(); ++i)
      if (sgn(p[i][e]) == elected) {
        sum += c[i] * p[i][e];
        ++count;
      }
    out[e] = sum / std::max(count, 1);
  }
  return out;
}

inline std::vector<double> ref_weighted_sum(const std::vector<std::vector<double>>& p, const std::vector<double>& c) {
  std::vector<double> out(p[0].size(), 0.0);
  for (std::size_t i = 0; i < p.size(); ++i)
    for (std::size_t e = 0; e < out.size(); ++e) out[e] += c[i] * p[i][e];
  return out;
}

template <class M>
std::vector<double> flat(const M& m) {
  std::vector<double> v(static_cast<std::size_t>(m.size()));
  Eigen::Index t = 0;
  for (Eigen::Index i = 0; i < m.rows(); ++i)
    for (Eigen::Index j = 0; j < m.cols(); ++j) v[static_cast<std::size_t>(t++)] = static_cast<double>(m(i, j));
  return v;
}

inline MatD unflat(const std::vector<double>& v, Eigen::Index rows, Eigen::Index cols) {
  MatD m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = v[static_cast<std::size_t>(i)];
  return m;
}

/// The keep decisions (0/1) of DARE for (seed, stream): dare_prune on ones without rescale.
inline std::vector<double> dare_keep(std::size_t n, double density, std::uint64_t seed, std::uint64_t stream) {
  std::vector<double> ones(n, 1.0);
  if (density >= 1) return ones;
  lori::dare_prune(lori::vector_view<double>(ones.data(), static_cast<lori::index_t>(n)), density, false, seed, stream);
  return ones;
}

/// Views of a list of owning modules, in order (what the merge functions take).
template <class T>
std::vector<lori::adapter_module_view<T>> views_of(const std::vector<lori::adapter_module<T>>& ms) {
  std::vector<lori::adapter_module_view<T>> v;
  for (const auto& m : ms) v.push_back(m.view());
  return v;
}

}  // namespace merge_test

#endif
