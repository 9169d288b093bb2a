// lori/ops/forward.hpp - forward pass of a LoRI / LoRA adapter on the CPU.
//
// Shapes follow PyTorch/PEFT: X is n x k (tokens in rows), W is d x k, A is r x k, B is d x r, Y is n x d,
// scale s = alpha / r. All matrices are row-major views (any leading dimension).
//
//   adapter_forward        Y += s * (X A^T) B^T          sparse B (CSR view)
//   adapter_forward_dense  Y += s * (X A^T) B^T          dense B (LoRA, LoRI-D, or the reference's
//                                                        masked-dense LoRI-S)
//   layer_forward          Y  = X W^T (+ bias) + s * (X A^T) B^T        sparse B
//   layer_forward_dense    Y  = X W^T (+ bias) + s * (X A^T) B^T        dense B
// Every function can also store H = X A^T (n x r) in `H_out`, which the backward pass reuses
// (masked_grad_B needs it); pass an empty view (data() == nullptr) not to store it.
//
// Cost: X A^T is n*k*r multiply-adds per token block of 64 (float on x86-64 CPUs with AVX2+FMA: a
// hand-written FMA kernel picked at run time, one summation order per element whatever the block; else
// Eigen's GEMM); the sparse second product is
// n*nnz(B) multiply-adds instead of n*d*r, computed on a transposed 64-token tile so its inner loops are
// vectorized over tokens (blocks of 1-3 float tokens on CPUs with AVX-512F: 16 rows of B per vector,
// same roundings). Y is read and written once.
//
// Threads: `threads` >= 1 std::threads take runs of the fixed 64-token blocks from a shared counter (no
// pool, no global state); results are bitwise identical for every thread count. Eigen must run single-threaded inside
// (it does unless the program is built with OpenMP and Eigen::nbThreads() > 1).
// Outputs must not alias inputs. The element type T is deduced from the output Y alone (the inputs'
// parameter types are non-deduced), so inputs may be mutable or const views and the scale any number.
#ifndef LORI_OPS_FORWARD_HPP
#define LORI_OPS_FORWARD_HPP

#include "lori/config.hpp"
#include "lori/core/eigen.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/sparse/csr_matrix.hpp"
#include "lori/detail/ops_kernels.hpp"
#include "lori/detail/ops_types.hpp"
#include "lori/detail/ops_parallel.hpp"

#include <cstdint>
#include <vector>

namespace lori {
// The inline namespaces keep nvcc-compiled (portable) and g++-compiled (AVX2 dispatch) instances apart
// (see lori/detail/ops_kernels.hpp).
inline namespace LORI_OPS_ABI_NAMESPACE {

/// Y (n x d) += s * (X A^T) B^T for a sparse B (d x r, CSR). Optionally stores H = X A^T into H_out
/// (n x r; empty view = not stored). X: n x k, A: r x k. threads >= 1. Throws lori::error on shape
/// mismatches, threads < 1 or a malformed B view. Complexity: n*k*r + n*nnz(B) multiply-adds.
template <class T, class Index>
void adapter_forward(detail::cview<T> X, detail::cview<T> A, csr_view<const detail::nd<T>, Index> B, detail::nd<T> scale,
                     row_major_view<T> Y, detail::mview<T> H_out = {}, int threads = 1);

/// As adapter_forward with a dense B (d x r): Y += s * (X A^T) B^T with Eigen GEMMs.
template <class T>
void adapter_forward_dense(detail::cview<T> X, detail::cview<T> A, detail::cview<T> B, detail::nd<T> scale,
                           row_major_view<T> Y, detail::mview<T> H_out = {}, int threads = 1);

/// Y (n x d) = X W^T + bias + s * (X A^T) B^T for a sparse B (d x r, CSR). W: d x k; bias: d entries or
/// empty (no bias). Optionally stores H = X A^T into H_out. Complexity: n*k*(d + r) + n*nnz(B).
template <class T, class Index>
void layer_forward(detail::cview<T> X, detail::cview<T> W, detail::cvec<T> bias,
                   detail::cview<T> A, csr_view<const detail::nd<T>, Index> B, detail::nd<T> scale, row_major_view<T> Y,
                   detail::mview<T> H_out = {}, int threads = 1);

/// As layer_forward with a dense B (d x r).
template <class T>
void layer_forward_dense(detail::cview<T> X, detail::cview<T> W, detail::cvec<T> bias,
                         detail::cview<T> A, detail::cview<T> B, detail::nd<T> scale, row_major_view<T> Y,
                         detail::mview<T> H_out = {}, int threads = 1);

}  // inline namespace LORI_OPS_ABI_NAMESPACE

// ------------------------------------------------------------------------------------------------
// Implementation
// ------------------------------------------------------------------------------------------------
namespace detail {
inline namespace LORI_OPS_ABI_NAMESPACE {

template <class T>
void ops_check_forward(const row_major_view<const T>& X, const row_major_view<const T>& A, index_t d, index_t r,
                       const row_major_view<T>& Y, const row_major_view<T>& H_out, int threads, const char* fn) {
  (void)fn;
  LORI_EXPECTS(threads >= 1, "adapter/layer forward: threads must be >= 1");
  LORI_EXPECTS(A.cols() == X.cols(), "adapter/layer forward: A must be r x k with k = X.cols()");
  LORI_EXPECTS(A.rows() == r, "adapter/layer forward: B must be d x r with r = A.rows()");
  LORI_EXPECTS(Y.rows() == X.rows() && Y.cols() == d, "adapter/layer forward: Y must be n x d");
  LORI_EXPECTS(H_out.data() == nullptr || (H_out.rows() == X.rows() && H_out.cols() == r),
               "adapter/layer forward: H_out must be n x r (or empty)");
}

/// Work units (multiply-adds) below which an extra thread is not worth starting.
inline constexpr double kMinWorkPerThread = 2.0e5;

/// Y rows [i0, i0 + tb) = X rows · Wᵀ (+ bias): the base product of the whole-layer forward, shared by
/// the sparse and dense paths.
template <class T, class YBlock>
void ops_base_block(const row_major_view<const T>& X, const row_major_view<const T>& W, const vector_view<const T>& bias,
                    index_t i0, index_t tb, YBlock& Yb) {
  const index_t k = X.cols(), d = W.rows();
  if (k == 0 || d == 0) Yb.setZero();
  else Yb.noalias() = as_eigen(X.block(i0, 0, tb, k)) * as_eigen(W).transpose();
  if (!bias.empty()) Yb.rowwise() += as_eigen(bias).transpose();
}

template <class T, class Index>
void ops_forward_sparse_impl(const row_major_view<const T>& X, const row_major_view<const T>* W,
                             const vector_view<const T>& bias, const row_major_view<const T>& A,
                             const csr_view<const T, Index>& B, T s, const row_major_view<T>& Y,
                             const row_major_view<T>& H_out, int threads, bool allow_simd = true) {
  const index_t n = X.rows(), k = X.cols(), d = B.rows, r = A.rows();
  const index_t nb = ops_num_blocks(n, kTokenBlock);
  const double work = static_cast<double>(n) * (static_cast<double>(k) * (r + (W ? d : 0)) + static_cast<double>(B.nnz()));
  const int t = ops_useful_threads(threads, work, kMinWorkPerThread);
  ops_parallel_blocks(nb, t, [&](index_t b0, index_t b1) {
    cm_matrix<T> Hc;
    std::vector<T> scratch;
    std::vector<T> Ht;  // transposed-H scratch, used by blocks of 4 tokens or more only
    if (n >= 4) Ht.resize(static_cast<std::size_t>(r * kTokenBlock));
    for (index_t b = b0; b < b1; ++b) {
      const index_t i0 = b * kTokenBlock, tb = std::min(kTokenBlock, n - i0);
      auto Yb = as_eigen(Y.block(i0, 0, tb, d));
      if (W) ops_base_block(X, *W, bias, i0, tb, Yb);
      ops_project_block(X, i0, tb, A, Hc, scratch, allow_simd);
      ops_store_h(Hc, i0, H_out);
      if (r > 0 && d > 0) ops_sparse_times_tile(Hc.data(), tb, B, s, Y.row(i0), Y.ld(), Ht.data(), allow_simd);
    }
  });
}

template <class T>
void ops_forward_dense_impl(const row_major_view<const T>& X, const row_major_view<const T>* W,
                            const vector_view<const T>& bias, const row_major_view<const T>& A,
                            const row_major_view<const T>& B, T s, const row_major_view<T>& Y,
                            const row_major_view<T>& H_out, int threads, bool allow_simd = true) {
  const index_t n = X.rows(), k = X.cols(), d = B.rows(), r = A.rows();
  const index_t nb = ops_num_blocks(n, kTokenBlock);
  const double work = static_cast<double>(n) * (static_cast<double>(k) * (r + (W ? d : 0)) + static_cast<double>(d * r));
  const int t = ops_useful_threads(threads, work, kMinWorkPerThread);
  ops_parallel_blocks(nb, t, [&](index_t b0, index_t b1) {
    cm_matrix<T> Hc;
    std::vector<T> scratch;
    for (index_t b = b0; b < b1; ++b) {
      const index_t i0 = b * kTokenBlock, tb = std::min(kTokenBlock, n - i0);
      auto Yb = as_eigen(Y.block(i0, 0, tb, d));
      if (W) ops_base_block(X, *W, bias, i0, tb, Yb);
      ops_project_block(X, i0, tb, A, Hc, scratch, allow_simd);
      ops_store_h(Hc, i0, H_out);
      if (r > 0 && d > 0) Yb.noalias() += s * (Hc * as_eigen(B).transpose());
    }
  });
}

}  // inline namespace LORI_OPS_ABI_NAMESPACE
}  // namespace detail

inline namespace LORI_OPS_ABI_NAMESPACE {

template <class T, class Index>
void adapter_forward(detail::cview<T> X, detail::cview<T> A, csr_view<const detail::nd<T>, Index> B, detail::nd<T> scale,
                     row_major_view<T> Y, detail::mview<T> H_out, int threads) {
  detail::ops_check_csr(B, true, "adapter_forward: malformed B view");
  detail::ops_check_forward(X, A, B.rows, B.cols, Y, H_out, threads, "adapter_forward");
  detail::ops_forward_sparse_impl<T, Index>(X, nullptr, {}, A, B, scale, Y, H_out, threads);
}

template <class T>
void adapter_forward_dense(detail::cview<T> X, detail::cview<T> A, detail::cview<T> B, detail::nd<T> scale,
                           row_major_view<T> Y, detail::mview<T> H_out, int threads) {
  detail::ops_check_forward(X, A, B.rows(), B.cols(), Y, H_out, threads, "adapter_forward_dense");
  detail::ops_forward_dense_impl<T>(X, nullptr, {}, A, B, scale, Y, H_out, threads);
}

template <class T, class Index>
void layer_forward(detail::cview<T> X, detail::cview<T> W, detail::cvec<T> bias,
                   detail::cview<T> A, csr_view<const detail::nd<T>, Index> B, detail::nd<T> scale, row_major_view<T> Y,
                   detail::mview<T> H_out, int threads) {
  detail::ops_check_csr(B, true, "layer_forward: malformed B view");
  detail::ops_check_forward(X, A, B.rows, B.cols, Y, H_out, threads, "layer_forward");
  LORI_EXPECTS(W.rows() == B.rows && W.cols() == X.cols(), "layer_forward: W must be d x k");
  LORI_EXPECTS(bias.empty() || bias.size() == B.rows, "layer_forward: bias must have d entries (or be empty)");
  detail::ops_forward_sparse_impl<T, Index>(X, &W, bias, A, B, scale, Y, H_out, threads);
}

template <class T>
void layer_forward_dense(detail::cview<T> X, detail::cview<T> W, detail::cvec<T> bias,
                         detail::cview<T> A, detail::cview<T> B, detail::nd<T> scale, row_major_view<T> Y,
                         detail::mview<T> H_out, int threads) {
  detail::ops_check_forward(X, A, B.rows(), B.cols(), Y, H_out, threads, "layer_forward_dense");
  LORI_EXPECTS(W.rows() == B.rows() && W.cols() == X.cols(), "layer_forward_dense: W must be d x k");
  LORI_EXPECTS(bias.empty() || bias.size() == B.rows(), "layer_forward_dense: bias must have d entries (or be empty)");
  detail::ops_forward_dense_impl<T>(X, &W, bias, A, B, scale, Y, H_out, threads);
}

}  // inline namespace LORI_OPS_ABI_NAMESPACE
}  // namespace lori

#endif  // LORI_OPS_FORWARD_HPP
