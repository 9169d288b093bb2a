// Private: truncated SVD of a merged update, dense (d x k) or in low-rank form (Bc * Ac), with a fixed
// sign convention and PEFT's optional quantile clamp.
#ifndef LORI_DETAIL_MERGE_SVD_HPP
#define LORI_DETAIL_MERGE_SVD_HPP

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"
#include "lori/error.hpp"

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace lori::detail {

template <class T>
using merge_mat_r = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using merge_mat_c = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

/// Sign convention: every kept right singular vector (column of V) has its largest-magnitude entry
/// (first one on ties) positive; the matching column of U flips with it.
template <class T>
void merge_fix_signs(merge_mat_c<T>& U, merge_mat_c<T>& V, index_t rank) {
  for (index_t c = 0; c < rank; ++c) {
    Eigen::Index imax = 0;
    T best = T(-1);
    for (Eigen::Index i = 0; i < V.rows(); ++i) {
      const T a = std::abs(V(i, c));
      if (a > best) {
        best = a;
        imax = i;
      }
    }
    if (V.rows() > 0 && V(imax, c) < T(0)) {
      V.col(c) = -V.col(c);
      U.col(c) = -U.col(c);
    }
  }
}

/// torch.quantile(values, q) with linear interpolation (q in [0, 1], values non-empty).
template <class T>
T merge_quantile(std::vector<T> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  const double w = pos - static_cast<double>(lo);
  const double a = static_cast<double>(v[lo]), b = static_cast<double>(v[hi]);
  // torch.lerp: start + w * (end - start) for w < 0.5, end - (end - start) * (1 - w) otherwise.
  return static_cast<T>(w < 0.5 ? a + w * (b - a) : b - (b - a) * (1.0 - w));
}

/// From U (d x >=rank), S, V (k x >=rank): A' = V[:, :rank]^T (rank x k), B' = U[:, :rank] * S (d x rank),
/// then the optional clamp to [-hi, hi] with hi = quantile(concat(B', A'), clamp) (min > max -> max,
/// as torch.clamp).
template <class T>
void merge_finish_svd(merge_mat_c<T>& U, const Eigen::Matrix<T, Eigen::Dynamic, 1>& S, merge_mat_c<T>& V, index_t rank,
                      const std::optional<double>& clamp, merge_mat_r<T>& A_out, merge_mat_r<T>& B_out) {
  merge_fix_signs(U, V, rank);
  A_out = V.leftCols(rank).transpose();
  B_out = U.leftCols(rank) * S.head(rank).asDiagonal();
  if (clamp) {
    std::vector<T> all;
    all.reserve(static_cast<std::size_t>(A_out.size() + B_out.size()));
    all.insert(all.end(), B_out.data(), B_out.data() + B_out.size());
    all.insert(all.end(), A_out.data(), A_out.data() + A_out.size());
    if (!all.empty()) {
      const T hi = merge_quantile(std::move(all), *clamp);
      const T lo = -hi;
      auto cl = [&](T x) { return std::min(std::max(x, lo), hi); };
      A_out = A_out.unaryExpr(cl);
      B_out = B_out.unaryExpr(cl);
    }
  }
}

/// Truncated SVD of a dense d x k matrix.
template <class T>
void merge_svd_dense(const merge_mat_r<T>& dW, index_t rank, const std::optional<double>& clamp, merge_mat_r<T>& A_out,
                     merge_mat_r<T>& B_out) {
  merge_mat_c<T> M = dW;
  Eigen::BDCSVD<merge_mat_c<T>> svd(M, Eigen::ComputeThinU | Eigen::ComputeThinV);
  merge_mat_c<T> U = svd.matrixU(), V = svd.matrixV();
  Eigen::Matrix<T, Eigen::Dynamic, 1> S = svd.singularValues();
  // Eigen 3.4's divide-and-conquer SVD can return wrong triplets for rank-deficient matrices (e.g. a
  // 20 x 16 matrix of rank 9: reconstruction error 0.2). Check the triplets that are kept,
  // |M v_i - s_i u_i| and |M^T u_i - s_i v_i| against 1000 eps |M|_F (O(d k rank)), and fall back to
  // the one-sided Jacobi SVD (slow, accurate) when they fail.
  const double normM = static_cast<double>(M.norm());
  const double tol = 1000.0 * static_cast<double>(Eigen::NumTraits<T>::epsilon()) * normM;
  bool ok = S.size() >= rank;
  for (index_t i = 0; ok && i < rank; ++i) {
    ok = static_cast<double>((M * V.col(i) - S(i) * U.col(i)).norm()) <= tol &&
         static_cast<double>((M.transpose() * U.col(i) - S(i) * V.col(i)).norm()) <= tol;
  }
  if (!ok) {
    Eigen::JacobiSVD<merge_mat_c<T>> jac(M, Eigen::ComputeThinU | Eigen::ComputeThinV);
    U = jac.matrixU();
    V = jac.matrixV();
    S = jac.singularValues();
  }
  merge_finish_svd<T>(U, S, V, rank, clamp, A_out, B_out);
}

/// Truncated SVD of Bc * Ac (Bc d x R, Ac R x k, R <= min(d, k)) without forming it: thin QR of Bc
/// and Ac^T, SVD of the R x R core. O((d + k) R^2).
template <class T>
void merge_svd_lowrank(const merge_mat_c<T>& Bc, const merge_mat_c<T>& AcT, index_t rank, const std::optional<double>& clamp,
                       merge_mat_r<T>& A_out, merge_mat_r<T>& B_out) {
  const Eigen::Index R = Bc.cols();
  Eigen::HouseholderQR<merge_mat_c<T>> qb(Bc), qa(AcT);
  merge_mat_c<T> QB = qb.householderQ() * merge_mat_c<T>::Identity(Bc.rows(), R);
  merge_mat_c<T> QA = qa.householderQ() * merge_mat_c<T>::Identity(AcT.rows(), R);
  merge_mat_c<T> RB = qb.matrixQR().topRows(R).template triangularView<Eigen::Upper>();
  merge_mat_c<T> RA = qa.matrixQR().topRows(R).template triangularView<Eigen::Upper>();
  merge_mat_c<T> core = RB * RA.transpose();
  Eigen::JacobiSVD<merge_mat_c<T>> svd(core, Eigen::ComputeFullU | Eigen::ComputeFullV);
  merge_mat_c<T> U = QB * svd.matrixU();
  merge_mat_c<T> V = QA * svd.matrixV();
  Eigen::Matrix<T, Eigen::Dynamic, 1> S = svd.singularValues();
  merge_finish_svd<T>(U, S, V, rank, clamp, A_out, B_out);
}

}  // namespace lori::detail

#endif  // LORI_DETAIL_MERGE_SVD_HPP
