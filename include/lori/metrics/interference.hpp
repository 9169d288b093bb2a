// lori/metrics/interference.hpp - interference between adapters of one module, in low-rank form.
//
// Never forms a d x k matrix. Everything comes from the r x r Gram matrices
//   GA_ij = A_i A_j^T   (r_i x r_j, cost 2 k r_i r_j)      GB_ij = B_i^T B_j   (r_i x r_j, cost 2 d r_i r_j)
// so a pair costs O((d + k) r^2) and n adapters O(n^2 (d + k) r^2) (see docs/metrics.md):
//
//   subspace overlap   cosines of the principal angles between the row spaces of A_i and A_j: the
//                      singular values of Q_i Q_j^T, Q = orthonormal row basis. From the Grams:
//                      GA_ii = V L V^T, Q_i = L^-1/2 V^T A_i, so Q_i Q_j^T = L_i^-1/2 V_i^T GA_ij V_j L_j^-1/2.
//                      mean_cos2 = sum cos^2 / min(rank_i, rank_j); max_cos = largest cosine.
//                      Independent random subspaces of dimension r in R^k give mean_cos2 ~ r / k.
//                      Eigenvalues below 4 sqrt(k) eps(T) max(L) count as rank deficiency (Grams
//                      square the condition number: cosines are accurate to ~eps(T) cond(A)^2).
//   delta cosine       <dW_i, dW_j>_F / (|dW_i|_F |dW_j|_F), <dW_i, dW_j> = s_i s_j <GB_ij, GA_ij>_F
//                      (= s_i s_j tr((B_i^T B_j)(A_j A_i^T))); 0 when either delta is zero.
//   cross-term energy  of PEFT's linear merge with c_i = w_i s_i, a_i = sign(c_i) sqrt|c_i|,
//                      b_i = sqrt|c_i|: |sum_{i != j} b_i a_j B_i A_j|_F / |sum_i c_i B_i A_i|_F, with
//                      <B_i A_j, B_k A_l> = <GB_ik, GA_jl>_F. Needs equal ranks (NaN otherwise);
//                      0 / 0 = 0, x / 0 = +inf.
//   output interference |dW_i X_j^T|_F / |dW_j X_j^T|_F for activations X_j (m x k) of task j, via
//                      Y = A X^T (r x m) and |B Y|_F^2 = tr(Y^T GB Y).
//   mask overlap       for LoRI-S masks of B: Jaccard |Mi & Mj| / |Mi | Mj| and the overlap
//                      fractions |Mi & Mj| / |Mi|, |Mi & Mj| / |Mj| (0 for empty masks).
#ifndef LORI_METRICS_INTERFERENCE_HPP
#define LORI_METRICS_INTERFERENCE_HPP

#include "lori/config.hpp"
#include "lori/core/eigen.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/mask/bitmask.hpp"
#include "lori/merge/adapter_module.hpp"

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/SVD>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace lori {

/// Overlap of two B masks (same shape).
struct mask_overlap {
  index_t count_i = 0;       ///< |Mi|
  index_t count_j = 0;       ///< |Mj|
  index_t intersection = 0;  ///< |Mi & Mj|
  double jaccard = 0;        ///< |Mi & Mj| / |Mi | Mj| (0 when both are empty)
  double overlap_i = 0;      ///< |Mi & Mj| / |Mi| (0 when Mi is empty)
  double overlap_j = 0;      ///< |Mi & Mj| / |Mj| (0 when Mj is empty)
};

/// Jaccard index and overlap fractions of two masks of the same shape. O(words). Throws lori::error on
/// a shape mismatch.
inline mask_overlap compute_mask_overlap(const bitmask& mi, const bitmask& mj) {
  LORI_EXPECTS(mi.rows() == mj.rows() && mi.cols() == mj.cols(), "compute_mask_overlap: masks must have the same shape");
  mask_overlap o;
  o.count_i = mi.count();
  o.count_j = mj.count();
  o.intersection = mi.count_and(mj);
  const index_t uni = o.count_i + o.count_j - o.intersection;
  o.jaccard = uni > 0 ? static_cast<double>(o.intersection) / static_cast<double>(uni) : 0.0;
  o.overlap_i = o.count_i > 0 ? static_cast<double>(o.intersection) / static_cast<double>(o.count_i) : 0.0;
  o.overlap_j = o.count_j > 0 ? static_cast<double>(o.intersection) / static_cast<double>(o.count_j) : 0.0;
  return o;
}

/// Interference of adapters i < j on one module.
struct pair_interference {
  std::size_t i = 0, j = 0;     ///< adapter indices
  double mean_cos2 = 0;         ///< mean squared principal-angle cosine of the A row spaces
  double max_cos = 0;           ///< largest principal-angle cosine
  double delta_cosine = 0;      ///< <dW_i, dW_j>_F / (|dW_i| |dW_j|)
  bool has_masks = false;       ///< both B's carry masks; then `masks` is set
  mask_overlap masks;
};

/// Interference among n adapters of one module.
struct module_interference {
  std::vector<pair_interference> pairs;  ///< (0,1), (0,2), ..., (1,2), ... (i < j)
  std::vector<double> delta_norms;       ///< |dW_i|_F (scaling included)
  double cross_term_energy = std::numeric_limits<double>::quiet_NaN();  ///< of the linear merge; NaN for unequal ranks
};

namespace detail {

template <class T>
using metrics_mat_r = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Whitening of an A's row space from its Gram: W = L^-1/2 V^T restricted to the numerically
/// nonzero eigenvalues (rows = numerical rank), so Q = W A has orthonormal rows.
inline Eigen::MatrixXd metrics_whitener(const Eigen::MatrixXd& G, index_t k, double eps) {
  if (G.rows() == 0) return Eigen::MatrixXd(0, 0);
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(G);
  const Eigen::VectorXd& lam = es.eigenvalues();
  const double lmax = lam.maxCoeff();
  const double tol = lmax * 4.0 * std::sqrt(static_cast<double>(std::max<index_t>(k, 1))) * eps;
  std::vector<Eigen::Index> keep;
  for (Eigen::Index t = 0; t < lam.size(); ++t)
    if (lmax > 0 && lam(t) > tol) keep.push_back(t);
  Eigen::MatrixXd W(static_cast<Eigen::Index>(keep.size()), G.rows());
  for (std::size_t t = 0; t < keep.size(); ++t)
    W.row(static_cast<Eigen::Index>(t)) = es.eigenvectors().col(keep[t]).transpose() / std::sqrt(lam(keep[t]));
  return W;
}

}  // namespace detail

/// All interference metrics among n >= 1 adapters of one module (same d and k; ranks may differ).
/// weights: the merge weights w_i used by the cross-term energy (one per adapter; pass 1s if unsure).
/// Cost O(n^2 (d + k) r^2 + n^4 r^2); memory O(n^2 r^2). Throws lori::error on shape or count mismatch.
template <class T>
module_interference compute_module_interference(const std::vector<adapter_module_view<T>>& adapters,
                                                const std::vector<double>& weights) {
  const std::size_t n = adapters.size();
  LORI_EXPECTS(n >= 1, "compute_module_interference: need at least one adapter");
  LORI_EXPECTS(weights.size() == n, "compute_module_interference: one weight per adapter");
  for (const auto& a : adapters) check_adapter_module(a, "compute_module_interference: inconsistent adapter module");
  const index_t d = adapters[0].out_features(), k = adapters[0].in_features();
  for (const auto& a : adapters)
    LORI_EXPECTS(a.out_features() == d && a.in_features() == k, "compute_module_interference: adapters must adapt the same d x k weight");

  using MatT = detail::metrics_mat_r<T>;
  // Grams in T (Eigen GEMM), then double for the small algebra.
  std::vector<std::vector<Eigen::MatrixXd>> GA(n, std::vector<Eigen::MatrixXd>(n)), GB(n, std::vector<Eigen::MatrixXd>(n));
  for (std::size_t i = 0; i < n; ++i) {
    const auto Ai = as_eigen(adapters[i].A);
    const auto Bi = as_eigen(adapters[i].B);
    for (std::size_t j = i; j < n; ++j) {
      const auto Aj = as_eigen(adapters[j].A);
      const auto Bj = as_eigen(adapters[j].B);
      MatT ga, gb;
      if (i == j) {
        MatT la = MatT::Zero(Ai.rows(), Ai.rows());
        la.template selfadjointView<Eigen::Lower>().rankUpdate(Ai);
        ga = la.template selfadjointView<Eigen::Lower>();
        MatT lb = MatT::Zero(Bi.cols(), Bi.cols());
        lb.template selfadjointView<Eigen::Lower>().rankUpdate(Bi.transpose());
        gb = lb.template selfadjointView<Eigen::Lower>();
      } else {
        ga.noalias() = Ai * Aj.transpose();
        gb.noalias() = Bi.transpose() * Bj;
      }
      GA[i][j] = ga.template cast<double>();
      GB[i][j] = gb.template cast<double>();
      if (i != j) {
        GA[j][i] = GA[i][j].transpose();
        GB[j][i] = GB[i][j].transpose();
      }
    }
  }

  module_interference out;
  const double eps = std::numeric_limits<T>::epsilon();
  std::vector<Eigen::MatrixXd> Wh(n);
  for (std::size_t i = 0; i < n; ++i) {
    Wh[i] = detail::metrics_whitener(GA[i][i], k, eps);
    const double s = adapters[i].scaling;
    out.delta_norms.push_back(std::abs(s) * std::sqrt(std::max(0.0, GB[i][i].cwiseProduct(GA[i][i]).sum())));
  }
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = i + 1; j < n; ++j) {
      pair_interference p;
      p.i = i;
      p.j = j;
      if (Wh[i].rows() > 0 && Wh[j].rows() > 0) {
        // cos_t = singular values of M: sum cos^2 = |M|_F^2, max cos^2 = largest eigenvalue of the
        // smaller of M M^T, M^T M (eigenvalues only: cheaper than an SVD).
        const Eigen::MatrixXd M = Wh[i] * GA[i][j] * Wh[j].transpose();
        const Eigen::MatrixXd MM = M.rows() <= M.cols() ? Eigen::MatrixXd(M * M.transpose()) : Eigen::MatrixXd(M.transpose() * M);
        const double lmax = Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(MM, Eigen::EigenvaluesOnly).eigenvalues().maxCoeff();
        p.mean_cos2 = std::min(1.0, M.squaredNorm() / static_cast<double>(std::min(Wh[i].rows(), Wh[j].rows())));
        p.max_cos = std::min(1.0, std::sqrt(std::max(0.0, lmax)));
      }
      const double inner = adapters[i].scaling * adapters[j].scaling * GB[i][j].cwiseProduct(GA[i][j]).sum();
      const double den = out.delta_norms[i] * out.delta_norms[j];
      p.delta_cosine = den > 0 ? std::max(-1.0, std::min(1.0, inner / den)) : 0.0;
      if (adapters[i].b_mask != nullptr && adapters[j].b_mask != nullptr &&
          adapters[i].b_mask->cols() == adapters[j].b_mask->cols()) {
        p.has_masks = true;
        p.masks = compute_mask_overlap(*adapters[i].b_mask, *adapters[j].b_mask);
      }
      out.pairs.push_back(p);
    }

  // Cross-term energy of the linear merge (equal ranks only).
  bool equal = true;
  for (const auto& a : adapters) equal = equal && a.rank() == adapters[0].rank();
  if (equal) {
    std::vector<double> c(n), a(n), b(n);
    for (std::size_t i = 0; i < n; ++i) {
      c[i] = weights[i] * adapters[i].scaling;
      b[i] = std::sqrt(std::abs(c[i]));
      a[i] = c[i] >= 0 ? b[i] : -b[i];
    }
    // |X|^2 = sum_{i,k} b_i b_k <GB_ik, sum_{j != i, l != k} a_j a_l GA_jl>, since
    // <B_i A_j, B_k A_l> = <GB_ik, GA_jl>; the inner sum is H - a_i RA_i - a_k CA_k + a_i a_k GA_ik with
    // H = sum_jl a_j a_l GA_jl, RA_i = sum_l a_l GA_il, CA_k = sum_j a_j GA_jk: O(n^2 r^2) in all.
    const Eigen::Index r = static_cast<Eigen::Index>(adapters[0].rank());
    Eigen::MatrixXd H = Eigen::MatrixXd::Zero(r, r);
    std::vector<Eigen::MatrixXd> RA(n, Eigen::MatrixXd::Zero(r, r)), CA(n, Eigen::MatrixXd::Zero(r, r));
    for (std::size_t j = 0; j < n; ++j)
      for (std::size_t l = 0; l < n; ++l) {
        RA[j] += a[l] * GA[j][l];
        CA[l] += a[j] * GA[j][l];
      }
    for (std::size_t j = 0; j < n; ++j) H += a[j] * RA[j];
    double dd = 0, xx = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t kk = 0; kk < n; ++kk) {
        dd += c[i] * c[kk] * GB[i][kk].cwiseProduct(GA[i][kk]).sum();
        const Eigen::MatrixXd inner = H - a[i] * RA[i] - a[kk] * CA[kk] + (a[i] * a[kk]) * GA[i][kk];
        xx += b[i] * b[kk] * GB[i][kk].cwiseProduct(inner).sum();
      }
    dd = std::max(0.0, dd);
    xx = std::max(0.0, xx);
    out.cross_term_energy = dd > 0 ? std::sqrt(xx / dd) : (xx > 0 ? std::numeric_limits<double>::infinity() : 0.0);
  }
  return out;
}

/// Principal-angle cosines between the row spaces of Ai (ri x k) and Aj (rj x k), descending, via Grams.
/// Returns min(rank_i, rank_j) values in [0, 1]. Throws lori::error when the column counts differ.
template <class T>
std::vector<double> principal_cosines(row_major_view<const T> Ai, row_major_view<const T> Aj) {
  LORI_EXPECTS(Ai.cols() == Aj.cols(), "principal_cosines: A_i and A_j must have the same number of columns");
  const auto ai = as_eigen(Ai);
  const auto aj = as_eigen(Aj);
  const Eigen::MatrixXd Gi = (ai * ai.transpose()).template cast<double>();
  const Eigen::MatrixXd Gj = (aj * aj.transpose()).template cast<double>();
  const Eigen::MatrixXd Gij = (ai * aj.transpose()).template cast<double>();
  const double eps = std::numeric_limits<T>::epsilon();
  const Eigen::MatrixXd Wi = detail::metrics_whitener(Gi, Ai.cols(), eps), Wj = detail::metrics_whitener(Gj, Aj.cols(), eps);
  std::vector<double> out;
  if (Wi.rows() == 0 || Wj.rows() == 0) return out;
  const Eigen::VectorXd sv = Eigen::JacobiSVD<Eigen::MatrixXd>(Wi * Gij * Wj.transpose()).singularValues();
  for (Eigen::Index t = 0; t < sv.size(); ++t) out.push_back(std::min(1.0, sv(t)));
  return out;
}

/// <dW_i, dW_j>_F / (|dW_i|_F |dW_j|_F) for two modules of the same shape (0 if either delta is zero).
template <class T>
double delta_cosine(const adapter_module_view<T>& ai, const adapter_module_view<T>& aj) {
  const auto r = compute_module_interference<T>({ai, aj}, {1.0, 1.0});
  return r.pairs.front().delta_cosine;
}

/// Cross-term energy of PEFT's linear merge of these adapters with these weights (see header).
template <class T>
double cross_term_energy(const std::vector<adapter_module_view<T>>& adapters, const std::vector<double>& weights) {
  return compute_module_interference<T>(adapters, weights).cross_term_energy;
}

/// Output interference |dW_i X^T|_F / |dW_j X^T|_F for activations X (m x k, rows are tokens) of
/// task j, never forming d x m: O((k + d) r m + r^2 d). Returns +inf when dW_j X^T is zero and dW_i X^T
/// is not, 0 when both are zero. Throws lori::error on shape mismatches.
template <class T>
double output_interference(const adapter_module_view<T>& ai, const adapter_module_view<T>& aj, row_major_view<const T> X) {
  check_adapter_module(ai, "output_interference: inconsistent adapter module");
  check_adapter_module(aj, "output_interference: inconsistent adapter module");
  LORI_EXPECTS(ai.in_features() == X.cols() && aj.in_features() == X.cols() && ai.out_features() == aj.out_features(),
               "output_interference: modules and X must share k (and d)");
  const auto x = as_eigen(X);
  auto energy = [&](const adapter_module_view<T>& a) {
    const auto A = as_eigen(a.A);
    const auto B = as_eigen(a.B);
    const Eigen::MatrixXd Y = (A * x.transpose()).template cast<double>();  // r x m
    const Eigen::MatrixXd G = (B.transpose() * B).template cast<double>();  // r x r
    return a.scaling * a.scaling * std::max(0.0, (Y.transpose() * G).cwiseProduct(Y.transpose()).sum());
  };
  const double ei = energy(ai), ej = energy(aj);
  if (ej > 0) return std::sqrt(ei / ej);
  return ei > 0 ? std::numeric_limits<double>::infinity() : 0.0;
}

}  // namespace lori

#endif  // LORI_METRICS_INTERFERENCE_HPP
