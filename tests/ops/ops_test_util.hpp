// Shared helpers of lori_test_ops: random masks with uneven rows, random sparse B, double references.
#ifndef LORI_TESTS_OPS_TEST_UTIL_HPP
#define LORI_TESTS_OPS_TEST_UTIL_HPP

#include "lori/core/eigen.hpp"
#include "lori/mask/bitmask.hpp"
#include "lori/sparse/csr_matrix.hpp"
#include "test_util.hpp"

#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace ops_test {

using lori::index_t;
template <class T>
using RM = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RMd = RM<double>;

/// One test problem: n tokens, k inputs, d outputs, rank r, fraction of B's entries kept.
struct Shape {
  index_t n, k, d, r;
  double keep;
};

/// Mask with roughly `keep` of the entries kept, rows deliberately uneven (some empty, some full) as a
/// global top-|B| calibration produces. keep = 0 and keep = 1 give the empty and the full mask.
inline lori::bitmask random_mask(index_t rows, index_t cols, double keep, std::mt19937_64& g) {
  lori::bitmask m(rows, cols);
  if (keep <= 0.0) return m;
  if (keep >= 1.0) return lori::bitmask(rows, cols, true);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (index_t i = 0; i < rows; ++i) {
    const double row_keep = std::min(1.0, keep * 2.0 * u(g) * u(g) * 2.0);  // mean ~ keep, spread out
    std::bernoulli_distribution bd(row_keep);
    for (index_t j = 0; j < cols; ++j)
      if (bd(g)) m.set(i, j);
  }
  return m;
}

/// A sparse B (CSR) on `mask` with N(0,1) values, and its dense form in double.
template <class T>
lori::csr_matrix<T> random_sparse(const lori::bitmask& mask, std::mt19937_64& g, RMd* dense_out = nullptr) {
  lori::csr_matrix<T> B(mask);
  std::normal_distribution<double> nd;
  for (auto& v : B.values()) v = static_cast<T>(nd(g));
  if (dense_out) {
    RM<T> d(mask.rows(), mask.cols());
    B.to_dense(lori::view(d));
    *dense_out = d.template cast<double>();
  }
  return B;
}

/// Matrix of N(0,1) values of type T, and the same values in double.
template <class T>
RM<T> randn_t(index_t rows, index_t cols, std::mt19937_64& g) {
  return lori_test::randn<double>(rows, cols, g).template cast<T>();
}

template <class T>
constexpr double eps() {
  return static_cast<double>(std::numeric_limits<T>::epsilon());
}

/// Bitwise equality of two matrices (NaN-safe in the sense that any NaN makes them unequal).
template <class A, class B>
bool bitwise_equal(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Eigen::Index i = 0; i < a.rows(); ++i)
    for (Eigen::Index j = 0; j < a.cols(); ++j)
      if (std::memcmp(&a(i, j), &b(i, j), sizeof(a(i, j))) != 0) return false;
  return true;
}

/// Bitwise equality of two arrays (safe for empty ones).
template <class T>
bool bitwise_equal_vec(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

}  // namespace ops_test

#endif
