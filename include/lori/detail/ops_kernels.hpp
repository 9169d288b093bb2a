// Private: the inner kernels of lori/ops (sparse-times-dense tiles, SDDMM tiles, checks).
//
// Tiles are "tokens in lanes": a block of up to kTokenBlock tokens is held transposed (r x tb or
// rows-of-B x tb) so that the innermost loops are elementwise over tokens (axpy form). They vectorize
// without reassociating any sum, so every result has a fixed summation order that depends only on the
// problem, never on the thread count or on memory alignment.
#ifndef LORI_DETAIL_OPS_KERNELS_HPP
#define LORI_DETAIL_OPS_KERNELS_HPP

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"
#include "lori/core/eigen.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/sparse/csr_matrix.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__GNUC__) || defined(__clang__)
#define LORI_RESTRICT __restrict__
#else
#define LORI_RESTRICT
#endif

namespace lori::detail {

/// Tokens per block: the fixed unit of the token partition (and of the transposed tiles).
inline constexpr index_t kTokenBlock = 64;
/// Rows of B per chunk in the tiled sparse kernels (a chunk's tile is kRowChunk x kTokenBlock).
inline constexpr index_t kRowChunk = 32;
/// Lanes of the explicit partial sums in the SDDMM (summed in lane order at the end).
inline constexpr index_t kLanes = 8;

template <class T>
using rm_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using cm_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

inline index_t ops_num_blocks(index_t n, index_t block) { return (n + block - 1) / block; }

/// Basic validity of a CSR view used as B (d x r): pointers present where needed.
template <class T, class Index>
void ops_check_csr(const csr_view<T, Index>& B, bool need_values, const char* msg) {
  LORI_EXPECTS(B.rows >= 0 && B.cols >= 0, msg);
  LORI_EXPECTS(B.rows == 0 || B.row_ptr != nullptr, msg);
  LORI_EXPECTS(B.rows == 0 || B.row_ptr[0] == 0, msg);
  LORI_EXPECTS(B.nnz() == 0 || B.col_idx != nullptr, msg);
  LORI_EXPECTS(!need_values || B.nnz() == 0 || B.values != nullptr, msg);
}

/// Yt-free sparse product for one token block:
///   Y[t, j] += s * sum_{p in row j of B} val[p] * H[t, col[p]]       for t < tb, j < d
/// Ht is the block's H transposed (r x tb, leading dimension tb). Y rows are at y0 with leading dim ldy.
template <class T, class Index>
void ops_sparse_times_tile(const T* LORI_RESTRICT Ht, index_t tb, const csr_view<const T, Index>& B, T s,
                           T* LORI_RESTRICT y0, index_t ldy) {
  const index_t d = B.rows;
  const Index* LORI_RESTRICT rp = B.row_ptr;
  const Index* LORI_RESTRICT ci = B.col_idx;
  const T* LORI_RESTRICT val = B.values;
  if (tb < 4) {
    // Few tokens: one row of H at a time, a short gather per row of B.
    for (index_t t = 0; t < tb; ++t) {
      T* LORI_RESTRICT y = y0 + t * ldy;
      for (index_t j = 0; j < d; ++j) {
        const index_t pb = rp[j], pe = rp[j + 1];
        if (pb == pe) continue;
        T acc = T{0};
        for (index_t p = pb; p < pe; ++p) acc += val[p] * Ht[static_cast<index_t>(ci[p]) * tb + t];
        y[j] += s * acc;
      }
    }
    return;
  }
  alignas(64) T tile[kRowChunk * kTokenBlock];
  for (index_t j0 = 0; j0 < d; j0 += kRowChunk) {
    const index_t jc = std::min(kRowChunk, d - j0);
    if (rp[j0] == rp[j0 + jc]) continue;  // no kept entry in this chunk: Y unchanged
    for (index_t jj = 0; jj < jc; ++jj) {
      T* LORI_RESTRICT acc = tile + jj * kTokenBlock;
      for (index_t t = 0; t < tb; ++t) acc[t] = T{0};
      for (index_t p = rp[j0 + jj], pe = rp[j0 + jj + 1]; p < pe; ++p) {
        const T v = val[p];
        const T* LORI_RESTRICT h = Ht + static_cast<index_t>(ci[p]) * tb;
        for (index_t t = 0; t < tb; ++t) acc[t] += v * h[t];
      }
    }
    for (index_t t = 0; t < tb; ++t) {
      T* LORI_RESTRICT y = y0 + t * ldy + j0;
      for (index_t jj = 0; jj < jc; ++jj) y[jj] += s * tile[jj * kTokenBlock + t];
    }
  }
}

/// H block (tb x r) = X block * A^T into a column-major tb x r buffer (= Ht, r x tb row-major).
template <class T>
void ops_project_block(const row_major_view<const T>& X, index_t i0, index_t tb, const row_major_view<const T>& A,
                       cm_matrix<T>& Hc) {
  Hc.resize(tb, A.rows());
  if (A.rows() == 0 || tb == 0) return;
  if (A.cols() == 0) {
    Hc.setZero();
    return;
  }
  const auto Xb = as_eigen(X.block(i0, 0, tb, X.cols()));
  const auto Am = as_eigen(A);
  Hc.noalias() = Xb * Am.transpose();
}

/// Copies a column-major tb x r block into rows [i0, i0 + tb) of a row-major n x r output.
template <class T>
void ops_store_h(const cm_matrix<T>& Hc, index_t i0, const row_major_view<T>& H_out) {
  if (H_out.data() == nullptr) return;
  for (index_t t = 0; t < Hc.rows(); ++t)
    for (index_t c = 0; c < Hc.cols(); ++c) H_out(i0 + t, c) = Hc(t, c);
}


/// Rows of B per block of the SDDMM and of G * B (a block's transposed G tile is kGradRowBlock x 64).
inline constexpr index_t kGradRowBlock = 256;

/// Ht (r x tb, leading dimension kTokenBlock) = rows [i0, i0 + tb) of H (n x r) transposed.
template <class T>
void ops_transpose_rows(const row_major_view<const T>& H, index_t i0, index_t tb, index_t c0, index_t nc,
                        T* LORI_RESTRICT Ht) {
  for (index_t t = 0; t < tb; ++t) {
    const T* LORI_RESTRICT h = H.row(i0 + t) + c0;
    for (index_t c = 0; c < nc; ++c) Ht[c * kTokenBlock + t] = h[c];
  }
}

/// SDDMM over rows [j0, j0 + jb) of B, all n tokens:
///   out[p] = s * sum_t G[t, j] * H[t, col[p]]     for every stored p of those rows
/// Partial sums are kept in kLanes lanes per entry (lane = token index mod kLanes within 64-token
/// chunks that start at token 0) and added in lane order at the end: a fixed order of summation.
template <class T, class Index>
void ops_sddmm_rows(const row_major_view<const T>& G, const row_major_view<const T>& H,
                    const csr_view<const T, Index>& B, index_t j0, index_t jb, T s, T* LORI_RESTRICT out,
                    std::vector<T>& lanes, std::vector<T>& Gt, std::vector<T>& Ht) {
  const Index* LORI_RESTRICT rp = B.row_ptr;
  const Index* LORI_RESTRICT ci = B.col_idx;
  const index_t n = G.rows(), r = H.cols();
  const index_t pbeg = rp[j0], pend = rp[j0 + jb];
  if (pbeg == pend) return;
  lanes.assign(static_cast<std::size_t>((pend - pbeg) * kLanes), T{0});
  Gt.resize(static_cast<std::size_t>(jb * kTokenBlock));
  Ht.resize(static_cast<std::size_t>(r * kTokenBlock));
  for (index_t i0 = 0; i0 < n; i0 += kTokenBlock) {
    const index_t tb = std::min(kTokenBlock, n - i0);
    ops_transpose_rows(G, i0, tb, j0, jb, Gt.data());
    ops_transpose_rows(H, i0, tb, 0, r, Ht.data());
    const index_t tfull = tb - tb % kLanes;
    for (index_t jj = 0; jj < jb; ++jj) {
      const T* LORI_RESTRICT g = Gt.data() + jj * kTokenBlock;
      for (index_t p = rp[j0 + jj], pe = rp[j0 + jj + 1]; p < pe; ++p) {
        const T* LORI_RESTRICT h = Ht.data() + static_cast<index_t>(ci[p]) * kTokenBlock;
        T acc[kLanes];
        T* LORI_RESTRICT lp = lanes.data() + (p - pbeg) * kLanes;
        for (index_t l = 0; l < kLanes; ++l) acc[l] = lp[l];
        for (index_t t = 0; t < tfull; t += kLanes)
          for (index_t l = 0; l < kLanes; ++l) acc[l] += g[t + l] * h[t + l];
        for (index_t t = tfull; t < tb; ++t) acc[t - tfull] += g[t] * h[t];
        for (index_t l = 0; l < kLanes; ++l) lp[l] = acc[l];
      }
    }
  }
  for (index_t p = pbeg; p < pend; ++p) {
    const T* lp = lanes.data() + (p - pbeg) * kLanes;
    T sum = lp[0];
    for (index_t l = 1; l < kLanes; ++l) sum += lp[l];
    out[p] = s * sum;
  }
}

/// GBt (r x tb, leading dimension kTokenBlock) = (G block * B)^T for tokens [i0, i0 + tb):
///   GBt[c, t] = sum_j G[i0 + t, j] * B[j, c], accumulated over j ascending, then p ascending.
template <class T, class Index>
void ops_grad_times_sparse(const row_major_view<const T>& G, index_t i0, index_t tb, const csr_view<const T, Index>& B,
                           T* LORI_RESTRICT GBt, std::vector<T>& Gt) {
  const Index* LORI_RESTRICT rp = B.row_ptr;
  const Index* LORI_RESTRICT ci = B.col_idx;
  const T* LORI_RESTRICT val = B.values;
  const index_t d = B.rows, r = B.cols;
  for (index_t c = 0; c < r; ++c)
    for (index_t t = 0; t < tb; ++t) GBt[c * kTokenBlock + t] = T{0};
  Gt.resize(static_cast<std::size_t>(kGradRowBlock * kTokenBlock));
  for (index_t j0 = 0; j0 < d; j0 += kGradRowBlock) {
    const index_t jb = std::min(kGradRowBlock, d - j0);
    if (rp[j0] == rp[j0 + jb]) continue;
    ops_transpose_rows(G, i0, tb, j0, jb, Gt.data());
    for (index_t jj = 0; jj < jb; ++jj) {
      const T* LORI_RESTRICT g = Gt.data() + jj * kTokenBlock;
      for (index_t p = rp[j0 + jj], pe = rp[j0 + jj + 1]; p < pe; ++p) {
        const T v = val[p];
        T* LORI_RESTRICT o = GBt + static_cast<index_t>(ci[p]) * kTokenBlock;
        for (index_t t = 0; t < tb; ++t) o[t] += v * g[t];
      }
    }
  }
}

}  // namespace lori::detail

#endif  // LORI_DETAIL_OPS_KERNELS_HPP
