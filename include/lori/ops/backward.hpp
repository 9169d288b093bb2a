// lori/ops/backward.hpp - backward pass of a LoRI / LoRA adapter on the CPU.
//
// Forward: Y = X W^T (+ bias) + s * H B^T with H = X A^T (n x r). Given G = dL/dY (n x d):
//   dL/dB = s * G^T H                     (d x r)
//   dL/dA = s * (G B)^T X                 (r x k)
//   dL/dX = G W + s * (G B) A             (n x k)
//
//   masked_grad_B        dL/dB at the kept positions of a sparse B only (an SDDMM), written straight into
//                        a compact array in B's value order; never forms the d x r dense gradient.
//                        n * nnz(B) multiply-adds; reads G once.
//   input_grad           dL/dX for a sparse B (W optional): n*d*k (if W) + n*nnz + n*r*k.
//   dense_grad_B         dense dL/dB (LoRA / LoRI-D): n*d*r.
//   dense_grad_A         dense dL/dA (LoRA): n*d*r + n*r*k.
//   input_grad_dense     dL/dX for a dense B (W optional).
// "W optional": pass an empty 0 x 0 view for an adapter-only gradient (no G W term).
//
// Threads and determinism as in lori/ops/forward.hpp: fixed blocks (64 tokens, 256 rows of B or 256
// columns of A), static partition among `threads` std::threads, bitwise identical results for every
// thread count. T is deduced from the output. Outputs must not alias inputs.
#ifndef LORI_OPS_BACKWARD_HPP
#define LORI_OPS_BACKWARD_HPP

#include "lori/config.hpp"
#include "lori/core/eigen.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/sparse/csr_matrix.hpp"
#include "lori/detail/ops_kernels.hpp"
#include "lori/detail/ops_parallel.hpp"
#include "lori/detail/ops_types.hpp"

#include <vector>

namespace lori {

/// dB_values[p] = s * (G^T H)[j, c] for every stored entry p = (j, c) of B, in B's value order.
/// G: n x d, H = X A^T: n x r (from the forward pass), B: d x r (only its structure is read; values may
/// be null). dB_values: nnz(B) entries, overwritten. Throws lori::error on shape / count mismatches.
template <class T, class Index>
void masked_grad_B(detail::cview<T> G, detail::cview<T> H, csr_view<const detail::nd<T>, Index> B, detail::nd<T> scale,
                   vector_view<T> dB_values, int threads = 1);

/// dX (n x k, overwritten) = G W + s * (G B) A for a sparse B (d x r). W: d x k, or an empty 0 x 0 view
/// for the adapter-only gradient s * (G B) A. A: r x k, G: n x d.
template <class T, class Index>
void input_grad(detail::cview<T> G, detail::cview<T> W, detail::cview<T> A, csr_view<const detail::nd<T>, Index> B,
                detail::nd<T> scale, row_major_view<T> dX, int threads = 1);

/// dB (d x r, overwritten) = s * G^T H (dense; LoRA, LoRI-D).
template <class T>
void dense_grad_B(detail::cview<T> G, detail::cview<T> H, detail::nd<T> scale, row_major_view<T> dB, int threads = 1);

/// dA (r x k, overwritten) = s * (G B)^T X for a dense B (d x r) (LoRA).
template <class T>
void dense_grad_A(detail::cview<T> G, detail::cview<T> X, detail::cview<T> B, detail::nd<T> scale, row_major_view<T> dA,
                  int threads = 1);

/// dX (n x k, overwritten) = G W + s * (G B) A for a dense B; W may be an empty 0 x 0 view (no G W term).
template <class T>
void input_grad_dense(detail::cview<T> G, detail::cview<T> W, detail::cview<T> A, detail::cview<T> B, detail::nd<T> scale,
                      row_major_view<T> dX, int threads = 1);

// ------------------------------------------------------------------------------------------------
// Implementation
// ------------------------------------------------------------------------------------------------

template <class T, class Index>
void masked_grad_B(detail::cview<T> G, detail::cview<T> H, csr_view<const detail::nd<T>, Index> B, detail::nd<T> scale,
                   vector_view<T> dB_values, int threads) {
  detail::ops_check_csr(B, false, "masked_grad_B: malformed B view");
  LORI_EXPECTS(threads >= 1, "masked_grad_B: threads must be >= 1");
  LORI_EXPECTS(G.cols() == B.rows, "masked_grad_B: G must be n x d with d = B.rows");
  LORI_EXPECTS(H.rows() == G.rows() && H.cols() == B.cols, "masked_grad_B: H must be n x r (G.rows x B.cols)");
  LORI_EXPECTS(dB_values.size() == B.nnz(), "masked_grad_B: dB_values must have nnz(B) entries");
  const index_t d = B.rows;
  const index_t nb = detail::ops_num_blocks(d, detail::kGradRowBlock);
  const double work = static_cast<double>(G.rows()) * static_cast<double>(B.nnz() + d);
  const int t = detail::ops_useful_threads(threads, work, 2.0e5);
  detail::ops_parallel_blocks(nb, t, [&](index_t b0, index_t b1) {
    std::vector<T> lanes, Gt, Ht;
    for (index_t b = b0; b < b1; ++b) {
      const index_t j0 = b * detail::kGradRowBlock, jb = std::min(detail::kGradRowBlock, d - j0);
      if (G.rows() == 0) {
        for (index_t p = B.row_ptr[j0]; p < B.row_ptr[j0 + jb]; ++p) dB_values[p] = T{0};
        continue;
      }
      detail::ops_sddmm_rows<T, Index>(G, H, B, j0, jb, scale, dB_values.data(), lanes, Gt, Ht);
    }
  });
}

namespace detail {
template <class T>
bool ops_has_w(const cview<T>& W) {
  return !(W.rows() == 0 && W.cols() == 0);
}
}  // namespace detail

template <class T, class Index>
void input_grad(detail::cview<T> G, detail::cview<T> W, detail::cview<T> A, csr_view<const detail::nd<T>, Index> B,
                detail::nd<T> scale, row_major_view<T> dX, int threads) {
  detail::ops_check_csr(B, true, "input_grad: malformed B view");
  LORI_EXPECTS(threads >= 1, "input_grad: threads must be >= 1");
  const index_t n = G.rows(), d = B.rows, r = B.cols, k = A.cols();
  LORI_EXPECTS(G.cols() == d, "input_grad: G must be n x d with d = B.rows");
  LORI_EXPECTS(A.rows() == r, "input_grad: A must be r x k with r = B.cols");
  LORI_EXPECTS(dX.rows() == n && dX.cols() == k, "input_grad: dX must be n x k");
  const bool has_w = detail::ops_has_w<T>(W);
  LORI_EXPECTS(!has_w || (W.rows() == d && W.cols() == k), "input_grad: W must be d x k (or an empty 0 x 0 view)");
  const index_t nb = detail::ops_num_blocks(n, detail::kTokenBlock);
  const double work = static_cast<double>(n) * (static_cast<double>(has_w ? d * k : 0) + static_cast<double>(B.nnz() + r * k + d));
  const int t = detail::ops_useful_threads(threads, work, 2.0e5);
  detail::ops_parallel_blocks(nb, t, [&](index_t b0, index_t b1) {
    std::vector<T> Gt, GBt(static_cast<std::size_t>(r * detail::kTokenBlock));
    for (index_t b = b0; b < b1; ++b) {
      const index_t i0 = b * detail::kTokenBlock, tb = std::min(detail::kTokenBlock, n - i0);
      auto dXb = as_eigen(dX.block(i0, 0, tb, k));
      if (has_w && d > 0 && k > 0) dXb.noalias() = as_eigen(G.block(i0, 0, tb, d)) * as_eigen(W);
      else dXb.setZero();
      if (r == 0 || k == 0) continue;
      if (tb < 4) {
        // Few tokens: GB rows accumulated directly (same order: j ascending, then p), contiguous.
        for (index_t t = 0; t < tb; ++t) {
          T* LORI_RESTRICT gb = GBt.data() + t * r;
          for (index_t c = 0; c < r; ++c) gb[c] = T{0};
          const T* LORI_RESTRICT grow = G.row(i0 + t);
          for (index_t j = 0; j < d; ++j) {
            const T g = grow[j];
            for (index_t p = B.row_ptr[j], pe = B.row_ptr[j + 1]; p < pe; ++p) gb[B.col_idx[p]] += B.values[p] * g;
          }
        }
        Eigen::Map<const detail::rm_matrix<T>> GBr(GBt.data(), tb, r);
        dXb.noalias() += scale * (GBr * as_eigen(A));
        continue;
      }
      detail::ops_grad_times_sparse<T, Index>(G, i0, tb, B, GBt.data(), Gt);
      // GBt is r x tb row-major with leading dimension kTokenBlock = a tb x r column-major block.
      Eigen::Map<const detail::cm_matrix<T>, Eigen::Unaligned, Eigen::OuterStride<>> GB(
          GBt.data(), tb, r, Eigen::OuterStride<>(detail::kTokenBlock));
      dXb.noalias() += scale * (GB * as_eigen(A));
    }
  });
}

template <class T>
void dense_grad_B(detail::cview<T> G, detail::cview<T> H, detail::nd<T> scale, row_major_view<T> dB, int threads) {
  LORI_EXPECTS(threads >= 1, "dense_grad_B: threads must be >= 1");
  const index_t n = G.rows(), d = G.cols(), r = H.cols();
  LORI_EXPECTS(H.rows() == n, "dense_grad_B: H must be n x r with n = G.rows");
  LORI_EXPECTS(dB.rows() == d && dB.cols() == r, "dense_grad_B: dB must be d x r (G.cols x H.cols)");
  const index_t nb = detail::ops_num_blocks(d, detail::kGradRowBlock);
  const int t = detail::ops_useful_threads(threads, static_cast<double>(n) * d * r, 2.0e5);
  detail::ops_parallel_blocks(nb, t, [&](index_t b0, index_t b1) {
    for (index_t b = b0; b < b1; ++b) {
      const index_t j0 = b * detail::kGradRowBlock, jb = std::min(detail::kGradRowBlock, d - j0);
      auto dBb = as_eigen(dB.block(j0, 0, jb, r));
      if (n == 0 || r == 0) dBb.setZero();
      else dBb.noalias() = scale * (as_eigen(G.block(0, j0, n, jb)).transpose() * as_eigen(H));
    }
  });
}

template <class T>
void dense_grad_A(detail::cview<T> G, detail::cview<T> X, detail::cview<T> B, detail::nd<T> scale, row_major_view<T> dA,
                  int threads) {
  LORI_EXPECTS(threads >= 1, "dense_grad_A: threads must be >= 1");
  const index_t n = G.rows(), d = G.cols(), r = B.cols(), k = X.cols();
  LORI_EXPECTS(B.rows() == d, "dense_grad_A: B must be d x r with d = G.cols");
  LORI_EXPECTS(X.rows() == n, "dense_grad_A: X must be n x k with n = G.rows");
  LORI_EXPECTS(dA.rows() == r && dA.cols() == k, "dense_grad_A: dA must be r x k");
  // Phase 1: GB = G B (n x r), by fixed token blocks.
  detail::rm_matrix<T> GB(n, r);
  const int t1 = detail::ops_useful_threads(threads, static_cast<double>(n) * d * r, 2.0e5);
  detail::ops_parallel_blocks(detail::ops_num_blocks(n, detail::kTokenBlock), t1, [&](index_t b0, index_t b1) {
    for (index_t b = b0; b < b1; ++b) {
      const index_t i0 = b * detail::kTokenBlock, tb = std::min(detail::kTokenBlock, n - i0);
      if (d == 0 || r == 0) GB.middleRows(i0, tb).setZero();
      else GB.middleRows(i0, tb).noalias() = as_eigen(G.block(i0, 0, tb, d)) * as_eigen(B);
    }
  });
  // Phase 2: dA = s GB^T X, by fixed blocks of 256 columns of A.
  const int t2 = detail::ops_useful_threads(threads, static_cast<double>(n) * r * k, 2.0e5);
  detail::ops_parallel_blocks(detail::ops_num_blocks(k, detail::kGradRowBlock), t2, [&](index_t b0, index_t b1) {
    for (index_t b = b0; b < b1; ++b) {
      const index_t c0 = b * detail::kGradRowBlock, kb = std::min(detail::kGradRowBlock, k - c0);
      auto dAb = as_eigen(dA.block(0, c0, r, kb));
      if (n == 0 || r == 0) dAb.setZero();
      else dAb.noalias() = scale * (GB.transpose() * as_eigen(X.block(0, c0, n, kb)));
    }
  });
}

template <class T>
void input_grad_dense(detail::cview<T> G, detail::cview<T> W, detail::cview<T> A, detail::cview<T> B, detail::nd<T> scale,
                      row_major_view<T> dX, int threads) {
  LORI_EXPECTS(threads >= 1, "input_grad_dense: threads must be >= 1");
  const index_t n = G.rows(), d = B.rows(), r = B.cols(), k = A.cols();
  LORI_EXPECTS(G.cols() == d, "input_grad_dense: G must be n x d with d = B.rows");
  LORI_EXPECTS(A.rows() == r, "input_grad_dense: A must be r x k with r = B.cols");
  LORI_EXPECTS(dX.rows() == n && dX.cols() == k, "input_grad_dense: dX must be n x k");
  const bool has_w = detail::ops_has_w<T>(W);
  LORI_EXPECTS(!has_w || (W.rows() == d && W.cols() == k), "input_grad_dense: W must be d x k (or an empty 0 x 0 view)");
  const double work = static_cast<double>(n) * (static_cast<double>(has_w ? d * k : 0) + static_cast<double>(d * r + r * k));
  const int t = detail::ops_useful_threads(threads, work, 2.0e5);
  detail::ops_parallel_blocks(detail::ops_num_blocks(n, detail::kTokenBlock), t, [&](index_t b0, index_t b1) {
    detail::rm_matrix<T> GB;
    for (index_t b = b0; b < b1; ++b) {
      const index_t i0 = b * detail::kTokenBlock, tb = std::min(detail::kTokenBlock, n - i0);
      auto dXb = as_eigen(dX.block(i0, 0, tb, k));
      if (has_w && d > 0 && k > 0) dXb.noalias() = as_eigen(G.block(i0, 0, tb, d)) * as_eigen(W);
      else dXb.setZero();
      if (r == 0 || k == 0) continue;
      if (d == 0) continue;
      GB.noalias() = as_eigen(G.block(i0, 0, tb, d)) * as_eigen(B);
      dXb.noalias() += scale * (GB * as_eigen(A));
    }
  });
}

}  // namespace lori

#endif  // LORI_OPS_BACKWARD_HPP
