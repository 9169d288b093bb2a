// lori/cuda/adapter_backward.cuh - the LoRI backward pass on the device.
//
//   grad_b_sddmm   ∂L/∂B at B's kept positions, into compact values (same order as B's values):
//                  gB[p] = s · Σ_t G(t, i) · H(t, j)   for the p-th kept (i, j), H = X·Aᵀ (n x r fp32,
//                  e.g. from adapter_project in the forward pass). Sampled dense-dense product: G is
//                  read once. bf16/fp16, r <= 32, 16-byte aligned rows of G: ONE tensor-core kernel
//                  (G streamed once by TMA - or cp.async where H's rows are not 16-byte aligned -,
//                  H rounded to T while staged, token splits reduced in a thread-block cluster, s·D
//                  written at the kept positions); other 16-bit shapes: H rounded to T, D = s·Gᵀ·H
//                  on cuBLAS (fp32 out), kept entries of D gathered (docs/cuda.md).
//                  fp32: fp32 FMAs, token splits reduced by a second kernel in a fixed order.
//                  Deterministic either way.
//   grad_x         ∂L/∂X = G·W + s·(G·B)·A   (cuBLAS; B made dense in workspace)
// G is ∂L/∂Y, n x d row-major. Shapes as in adapter_forward.cuh. No alignment requirement beyond the
// element's (a 16-byte vector path is taken when G's rows allow it).
#ifndef LORI_CUDA_ADAPTER_BACKWARD_CUH
#define LORI_CUDA_ADAPTER_BACKWARD_CUH

#include "lori/config.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/cuda/context.cuh"
#include "lori/cuda/sparse_b.cuh"
#include "lori/error.hpp"

#include "lori/detail/cuda_common.cuh"
#include "lori/detail/skinny_gemm.cuh"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace lori::cuda {

/// Workspace bytes grad_b_sddmm needs for G n x d, rank r, on ctx's device: the larger of the fp32
/// path's split partials and the 16-bit path's dense D (d·r fp32) + rounded H (n·r 16-bit).
inline std::size_t grad_b_workspace_bytes(const context& ctx, index_t n, index_t d, index_t r, index_t nnz);

/// grad_values[p] = s · (Gᵀ·H)(i, j) for the p-th kept (i, j) of B (nnz values of T, in B's order).
/// G n x d (T), H n x r fp32 row-major with leading dimension r. Requires 1 <= r <= 128.
template <class T>
void grad_b_sddmm(context& ctx, row_major_view<const T> G, const float* H, float s, const sparse_b<T>& B,
                  T* grad_values, void* workspace, std::size_t workspace_bytes);

/// Workspace bytes grad_x needs: B dense (d x r) and G·B (n x r), both of T, 256-byte aligned parts.
template <class T>
std::size_t grad_x_workspace_bytes(index_t n, index_t d, index_t r);

/// dX (n x k) = G·W + s·(G·B)·A. G n x d, W d x k, A r x k, B d x r sparse. One small kernel (B
/// dense into workspace) and three cuBLAS GEMMs: U = G·B, dX = s·U·A, dX = G·W + dX. U and the
/// low-rank part are rounded to T before the big GEMM adds them (16-bit: relative 2^-8 of that term).
template <class T>
void grad_x(context& ctx, row_major_view<const T> G, row_major_view<const T> W, row_major_view<const T> A,
            const sparse_b<T>& B, float s, row_major_view<T> dX, void* workspace, std::size_t workspace_bytes);

// =====================================================================================================
// Implementation
// =====================================================================================================
namespace detail_bwd {

inline constexpr int sddmm_cols = 128;    // columns of G (rows of B) per block
inline constexpr int sddmm_tokens = 32;   // tokens staged per step (fp32 path)

// fp32 path splits: enough blocks to fill the device about twice, each split at least 4 token steps.
inline index_t sddmm_splits(const context& ctx, index_t n, index_t d) {
  const index_t tiles = detail::ceil_div(d, sddmm_cols);
  index_t want = detail::ceil_div(2 * static_cast<index_t>(ctx.sm_count()), tiles);
  const index_t most = detail::ceil_div(n, 4 * sddmm_tokens);
  if (want > most) want = most;
  if (want > 64) want = 64;
  return want < 1 ? 1 : want;
}

inline index_t tokens_per_split(index_t n, index_t splits) {
  return detail::ceil_div(detail::ceil_div(n, splits), sddmm_tokens) * sddmm_tokens;
}

// fp32 SDDMM: one thread per row i of B, its kept entries in passes of 8 registers.
inline constexpr int sddmm_f32_threads = 128;
inline constexpr int sddmm_f32_regs = 8;

template <class T>
__global__ void __launch_bounds__(sddmm_f32_threads) sddmm_scalar_kernel(const T* __restrict__ G, index_t n, index_t d,
                                                                         index_t ldg, const float* __restrict__ H,
                                                                         index_t r, index_t tps, sparse_b_view<T> B,
                                                                         float s, T* __restrict__ out,
                                                                         float* __restrict__ partial) {
  float* Hs = reinterpret_cast<float*>(detail::dynamic_smem());  // tokens x r
  __shared__ int max_count;
  const index_t c = static_cast<index_t>(blockIdx.x) * sddmm_f32_threads + threadIdx.x;
  const index_t tb = static_cast<index_t>(blockIdx.y) * tps;
  const index_t te = tb + tps < n ? tb + tps : n;
  const std::int32_t p0 = c < d ? B.row_ptr[c] : 0, cnt = c < d ? B.row_ptr[c + 1] - p0 : 0;
  if (threadIdx.x == 0) max_count = 0;
  __syncthreads();
  atomicMax(&max_count, cnt);
  __syncthreads();
  const int passes = (max_count + sddmm_f32_regs - 1) / sddmm_f32_regs;  // block-uniform
  for (int pass = 0; pass < passes; ++pass) {
    float acc[sddmm_f32_regs];
    int col[sddmm_f32_regs];
#pragma unroll
    for (int q = 0; q < sddmm_f32_regs; ++q) {
      const int pq = pass * sddmm_f32_regs + q;
      acc[q] = 0.0f;
      col[q] = pq < cnt ? B.col_idx[p0 + pq] : 0;
    }
    for (index_t t0 = tb; t0 < te; t0 += sddmm_tokens) {
      __syncthreads();
      for (index_t e = threadIdx.x; e < sddmm_tokens * r; e += sddmm_f32_threads) {
        const index_t t = e / r;
        Hs[e] = t0 + t < te ? H[t0 * r + e] : 0.0f;
      }
      __syncthreads();
      if (c < d) {
        const index_t tn = te - t0 < sddmm_tokens ? te - t0 : sddmm_tokens;
        for (index_t t = 0; t < tn; ++t) {
          const float g = detail::ld_f(G + (t0 + t) * ldg + c);
#pragma unroll
          for (int q = 0; q < sddmm_f32_regs; ++q) acc[q] = fmaf(g, Hs[t * r + col[q]], acc[q]);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < sddmm_f32_regs; ++q) {
      const int pq = pass * sddmm_f32_regs + q;
      if (pq < cnt) {
        if (partial != nullptr) partial[static_cast<index_t>(blockIdx.y) * B.nnz + p0 + pq] = acc[q];
        else out[p0 + pq] = ::lori::from_float<T>(s * acc[q]);
      }
    }
  }
}

template <class T>
__global__ void reduce_splits_kernel(const float* __restrict__ partial, index_t splits, index_t nnz, float s,
                                     T* __restrict__ out) {
  const index_t p = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (p >= nnz) return;
  float x = 0.0f;
  for (index_t q = 0; q < splits; ++q) x += partial[q * nnz + p];
  out[p] = ::lori::from_float<T>(s * x);
}

inline std::size_t align256(std::size_t b) { return (b + 255) / 256 * 256; }

// cuBLAS route of the 16-bit SDDMM (measured fastest on an H100 at n = d = 4096, r = 32): H rounded to
// T, D = s·Gᵀ·H (d x r, fp32, one cuBLAS GEMM with fp32 accumulation), then the kept entries of D
// gathered into the compact values. Workspace: D (d·r fp32) then H in T (n·r).
inline std::size_t sddmm_gemm_workspace_bytes(index_t n, index_t d, index_t r) {
  return align256(static_cast<std::size_t>(d * r) * sizeof(float)) + static_cast<std::size_t>(n * r) * 2;
}

template <class T>
__global__ void round_to_kernel(const float* __restrict__ in, index_t count, T* __restrict__ out) {
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (i < count) out[i] = ::lori::from_float<T>(in[i]);
}

// One thread per row i of B: out[p] = T(D(i, col_idx[p])) for the row's kept entries.
template <class T>
__global__ void gather_rows_kernel(const float* __restrict__ D, index_t r, sparse_b_view<T> B, T* __restrict__ out) {
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (i >= B.rows) return;
  const std::int32_t p1 = B.row_ptr[i + 1];
  for (std::int32_t p = B.row_ptr[i]; p < p1; ++p) out[p] = ::lori::from_float<T>(D[i * r + B.col_idx[p]]);
}

template <class T>
void sddmm_gemm(context& ctx, row_major_view<const T> G, const float* H, float s, const sparse_b<T>& B, T* out,
                void* workspace) {
  const index_t n = G.rows(), d = G.cols(), r = B.cols();
  float* D = static_cast<float*>(workspace);
  T* Ht = reinterpret_cast<T*>(static_cast<unsigned char*>(workspace) + align256(static_cast<std::size_t>(d * r) * sizeof(float)));
  round_to_kernel<T><<<detail::grid_dim(detail::ceil_div(n * r, 256)), 256, 0, ctx.stream()>>>(H, n * r, Ht);
  LORI_CUDA_CHECK_LAUNCH();
  const cudaDataType_t t = detail::cuda_data_type<T>();
  detail::gemm_row_major(ctx.cublas(), true, false, d, r, n, s, G.data(), G.ld(), Ht, r, 0.0f, D, r, t, CUDA_R_32F);
  gather_rows_kernel<T><<<detail::grid_dim(detail::ceil_div(d, 256)), 256, 0, ctx.stream()>>>(D, r, B.view(), out);
  LORI_CUDA_CHECK_LAUNCH();
}

}  // namespace detail_bwd

inline std::size_t grad_b_workspace_bytes(const context& ctx, index_t n, index_t d, index_t r, index_t nnz) {
  LORI_EXPECTS(n >= 0 && d >= 0 && r >= 0 && nnz >= 0, "grad_b_workspace_bytes: negative size");
  if (n == 0 || d == 0) return 0;
  const index_t splits = detail_bwd::sddmm_splits(ctx, n, d);
  const std::size_t f32 = splits > 1 ? static_cast<std::size_t>(splits * nnz) * sizeof(float) : 0;
  const std::size_t b16 = detail_bwd::sddmm_gemm_workspace_bytes(n, d, r);
  return f32 > b16 ? f32 : b16;
}

template <class T>
void grad_b_sddmm(context& ctx, row_major_view<const T> G, const float* H, float s, const sparse_b<T>& B,
                  T* grad_values, void* workspace, std::size_t workspace_bytes) {
  static_assert(detail::is_cuda_storage_v<T>, "grad_b_sddmm: T must be float, bfloat16 or half");
  const index_t n = G.rows(), d = G.cols(), r = B.cols(), nnz = B.nnz();
  LORI_EXPECTS(B.rows() == d, "grad_b_sddmm: G must be n x d with d = B.rows()");
  LORI_EXPECTS(r >= 1 && r <= 128, "grad_b_sddmm: rank r must be in [1, 128]");
  LORI_EXPECTS(H != nullptr || n == 0, "grad_b_sddmm: null H");
  LORI_EXPECTS(grad_values != nullptr || nnz == 0, "grad_b_sddmm: null output");
  if (nnz == 0) return;
  if (n == 0) {
    LORI_CUDA_CHECK(cudaMemsetAsync(grad_values, 0, static_cast<std::size_t>(nnz) * sizeof(T), ctx.stream()));
    return;
  }
  const index_t splits = detail_bwd::sddmm_splits(ctx, n, d);
  const index_t tps = detail_bwd::tokens_per_split(n, splits);
  const index_t grid_y = detail::ceil_div(n, tps);  // <= splits
  float* partial = nullptr;
  if (grid_y > 1 || detail::is_16bit_v<T>) {
    LORI_EXPECTS(workspace != nullptr && workspace_bytes >= grad_b_workspace_bytes(ctx, n, d, r, nnz),
                 "grad_b_sddmm: workspace missing or smaller than grad_b_workspace_bytes()");
    LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % alignof(float) == 0,
                 "grad_b_sddmm: workspace must be 4-byte aligned");
    partial = static_cast<float*>(workspace);
  }
  if constexpr (detail::is_16bit_v<T>) {
    (void)partial;
    // Fastest measured first (H100, n = d = 4096: warp-specialised TMA kernel 23.4-23.9 µs, session 3's
    // TMA kernel 25.1-25.6, cp.async kernel ~26, cuBLAS route ~27); each where it applies.
    if (detail::skinny::sddmm_tma_applies(G.data(), d, G.ld(), r, H))
      detail::skinny::launch_sddmm_ws<T>(ctx.stream(), G.data(), n, d, G.ld(), H, s, B, grad_values);
    else if (detail::skinny::sddmm_applies(G.data(), d, G.ld(), r))
      detail::skinny::launch_sddmm<T>(ctx.stream(), G.data(), n, d, G.ld(), H, s, B, grad_values);
    else
      detail_bwd::sddmm_gemm<T>(ctx, G, H, s, B, grad_values, workspace);
  } else {
    const std::size_t smem = static_cast<std::size_t>(detail_bwd::sddmm_tokens * r) * sizeof(float);
    const dim3 grid(detail::grid_dim(detail::ceil_div(d, detail_bwd::sddmm_f32_threads)), detail::grid_dim(grid_y, false));
    detail_bwd::sddmm_scalar_kernel<T><<<grid, detail_bwd::sddmm_f32_threads, smem, ctx.stream()>>>(
        G.data(), n, d, G.ld(), H, r, tps, B.view(), s, grad_values, partial);
    LORI_CUDA_CHECK_LAUNCH();
    if (partial != nullptr) {
      detail_bwd::reduce_splits_kernel<T><<<detail::grid_dim(detail::ceil_div(nnz, 256)), 256, 0, ctx.stream()>>>(
          partial, grid_y, nnz, s, grad_values);
      LORI_CUDA_CHECK_LAUNCH();
    }
  }
}

template <class T>
std::size_t grad_x_workspace_bytes(index_t n, index_t d, index_t r) {
  LORI_EXPECTS(n >= 0 && d >= 0 && r >= 0, "grad_x_workspace_bytes: negative size");
  return detail_bwd::align256(static_cast<std::size_t>(d * r) * sizeof(T)) +
         detail_bwd::align256(static_cast<std::size_t>(n * r) * sizeof(T));
}

template <class T>
void grad_x(context& ctx, row_major_view<const T> G, row_major_view<const T> W, row_major_view<const T> A,
            const sparse_b<T>& B, float s, row_major_view<T> dX, void* workspace, std::size_t workspace_bytes) {
  static_assert(detail::is_cuda_storage_v<T>, "grad_x: T must be float, bfloat16 or half");
  const index_t n = G.rows(), d = G.cols(), k = W.cols(), r = B.cols();
  LORI_EXPECTS(B.rows() == d && W.rows() == d, "grad_x: G is n x d, W is d x k and B is d x r");
  LORI_EXPECTS(A.rows() == r && A.cols() == k, "grad_x: A must be r x k");
  LORI_EXPECTS(dX.rows() == n && dX.cols() == k, "grad_x: dX must be n x k");
  LORI_EXPECTS(d >= 1 && r >= 1 && k >= 1, "grad_x: d, r and k must be positive");
  if (n == 0) return;
  LORI_EXPECTS(workspace != nullptr && workspace_bytes >= grad_x_workspace_bytes<T>(n, d, r),
               "grad_x: workspace missing or smaller than grad_x_workspace_bytes()");
  LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % 256 == 0, "grad_x: workspace must be 256-byte aligned");
  T* Bd = static_cast<T*>(workspace);
  T* U = reinterpret_cast<T*>(static_cast<unsigned char*>(workspace) +
                              detail_bwd::align256(static_cast<std::size_t>(d * r) * sizeof(T)));
  const cudaDataType_t t = detail::cuda_data_type<T>();
  B.scatter_to_dense(Bd, r, ctx.stream());
  // U = G·B (n x r); dX = s·U·A (thin, write-only); dX = G·W + 1·dX (the big GEMM reads dX in its
  // epilogue, hidden under its math) - cheaper than adding the low-rank term after the big GEMM.
  detail::gemm_row_major(ctx.cublas(), false, false, n, r, d, 1.0f, G.data(), G.ld(), Bd, r, 0.0f, U, r, t, t);
  detail::gemm_row_major(ctx.cublas(), false, false, n, k, r, s, U, r, A.data(), A.ld(), 0.0f, dX.data(), dX.ld(), t, t);
  detail::gemm_row_major(ctx.cublas(), false, false, n, k, d, 1.0f, G.data(), G.ld(), W.data(), W.ld(), 1.0f, dX.data(),
                         dX.ld(), t, t);
}

}  // namespace lori::cuda

#endif  // LORI_CUDA_ADAPTER_BACKWARD_CUH
