// lori/cuda/adapter_forward.cuh - the LoRI forward pass on the device.
//
//   adapter_project      H = X·Aᵀ                        (n x r, fp32; one cuBLAS GEMM)
//   adapter_expand       Y (+)= s·H·Bᵀ, B sparse          (one kernel; reads H and B, reads/writes Y)
//   adapter_forward      Y += s·(X·Aᵀ)·Bᵀ                 (n <= 64: ONE cooperative kernel; else 2 launches)
//   layer_forward        Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ           (adapter written into Y first, then the base
//                                                        cuBLAS GEMM accumulates with beta = 1)
//   layer_forward_widened  the same as ONE base GEMM with K = k + r over caller-widened X and W buffers
// Shapes (row-major, PyTorch conventions): X n x k, W d x k, A r x k, B d x r (a sparse_b), Y n x d,
// s = alpha / r. Storage T is float, lori::bfloat16 or lori::half; every product accumulates in fp32
// and H stays fp32. Leading dimensions are free (>= the row length); there is no alignment
// requirement beyond the element's own (kernels use element accesses; cuBLAS handles any ld).
// Limits: 1 <= r <= 256; k, d >= 1; n >= 0 (n = 0 does nothing).
// Everything runs on ctx.stream(); workspace is caller memory of at least the queried size.
#ifndef LORI_CUDA_ADAPTER_FORWARD_CUH
#define LORI_CUDA_ADAPTER_FORWARD_CUH

#include "lori/config.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/cuda/context.cuh"
#include "lori/cuda/sparse_b.cuh"
#include "lori/error.hpp"

#include "lori/detail/cuda_common.cuh"

#include <cooperative_groups.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace lori::cuda {

/// Largest n the single-kernel decode path takes (it also needs n * r <= 4096).
inline constexpr index_t decode_max_tokens = 64;

/// Bytes of workspace adapter_forward / layer_forward need for n tokens and rank r on ctx's device.
inline std::size_t adapter_forward_workspace_bytes(const context& ctx, index_t n, index_t r);

/// H (n x r, row-major fp32, leading dimension r) = X·Aᵀ on cuBLAS. X n x k, A r x k.
template <class T>
void adapter_project(context& ctx, row_major_view<const T> X, row_major_view<const T> A, float* H);

/// Y = (accumulate ? Y : 0) + s·H·Bᵀ where H is n x r fp32 (leading dimension r) and B a d x r
/// sparse_b. One kernel; cost: n·d reads (when accumulating) and writes of Y, n·r reads of H per
/// 128 columns of Y (from L2), B's values and indices once per 32 tokens.
template <class T>
void adapter_expand(context& ctx, const float* H, index_t n, float s, const sparse_b<T>& B, row_major_view<T> Y,
                    bool accumulate);

/// Y += s·(X·Aᵀ)·Bᵀ. For n·r <= 512 (n <= 16 at r = 32) on a device with cooperative launch this is
/// one kernel (adapter_forward_decode); otherwise adapter_project + adapter_expand (measured faster
/// than the decode kernel at n = 64, r = 32).
template <class T>
void adapter_forward(context& ctx, row_major_view<const T> X, row_major_view<const T> A, const sparse_b<T>& B, float s,
                     row_major_view<T> Y, void* workspace, std::size_t workspace_bytes);

/// The decode path alone: ONE cooperative kernel computing Y += s·(X·Aᵀ)·Bᵀ (phases: split-k partial
/// H, deterministic reduction, expansion; two grid-wide barriers). Requires n <= 64, n·r <= 4096
/// and ctx.cooperative_launch().
template <class T>
void adapter_forward_decode(context& ctx, row_major_view<const T> X, row_major_view<const T> A, const sparse_b<T>& B,
                            float s, row_major_view<T> Y, void* workspace, std::size_t workspace_bytes);

/// The whole layer: Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ. For n > decode_max_tokens: H = X·Aᵀ (cuBLAS), Y = s·H·Bᵀ
/// (write-only kernel), then Y = X·Wᵀ + 1·Y (cuBLAS, beta = 1): the adapter costs one read of X,
/// one write of Y and the GEMM's read of Y in its epilogue. For small n: base GEMM, then the decode
/// kernel. Y's adapter part is rounded to T once before the base GEMM adds it (16-bit storage:
/// an extra rounding of the adapter term, relative 2^-8 of it).
/// chunks > 1 (at most 16, n > 64 only): token rows split into chunks; chunk c+1's H GEMM and
/// write-only expansion run on ctx.aux_stream() while chunk c's base GEMM runs on ctx.stream(), so
/// only the first chunk's adapter work is exposed (events order the streams).
template <class T>
void layer_forward(context& ctx, row_major_view<const T> X, row_major_view<const T> W, row_major_view<const T> A,
                   const sparse_b<T>& B, float s, row_major_view<T> Y, void* workspace, std::size_t workspace_bytes,
                   index_t chunks = 1);

/// The whole layer with K widened by r, as ONE base GEMM: Y = [X | s·H]·[W | B]ᵀ, H = X·Aᵀ.
/// The caller keeps X and W inside wider buffers: X_ext is n x (k + r) whose first k columns hold X
/// (the last r are overwritten with s·H, rounded to T), W_ext is d x (k + r) = [W | B] with B dense in
/// the last r columns (build once per B update with B.scatter_to_dense(W_ext.data() + k, k + r, stream)).
/// Two cuBLAS calls: the thin H GEMM (reads X once) and the base GEMM with K = k + r (+r/k FLOPs). No
/// workspace. 16-bit: s·H is rounded to T (relative 2^-8 of the adapter term, as PyTorch's bf16 LoRA).
/// chunks > 1 (at most 16): the token rows are split into that many chunks and the thin H GEMM of
/// chunk c + 1 runs on ctx.aux_stream() while the base GEMM of chunk c runs on ctx.stream() (events
/// order them), hiding the H GEMM under the compute-bound base GEMM except for the first chunk.
template <class T>
void layer_forward_widened(context& ctx, row_major_view<T> X_ext, row_major_view<const T> W_ext,
                           row_major_view<const T> A, float s, row_major_view<T> Y, index_t chunks = 1);

// =====================================================================================================
// Implementation
// =====================================================================================================
namespace detail_fwd {

inline constexpr int expand_threads = 128;  // columns of Y per block
inline constexpr int expand_tokens = 32;    // tokens per block (H tile in shared memory)
inline constexpr int expand_unroll = 16;    // tokens held in registers at once

template <class T>
__global__ void __launch_bounds__(expand_threads) expand_kernel(const float* __restrict__ H, index_t n, index_t r,
                                                                sparse_b_view<T> B, float s, T* __restrict__ Y,
                                                                index_t ldy, bool accumulate) {
  float* Hs = reinterpret_cast<float*>(detail::dynamic_smem());  // expand_tokens x r, pre-scaled by s
  const index_t t0 = static_cast<index_t>(blockIdx.y) * expand_tokens;
  const index_t c = static_cast<index_t>(blockIdx.x) * expand_threads + threadIdx.x;
  const bool active = c < B.rows;
  // Issue the first group's Y loads before waiting for the H tile (overlaps the two latencies).
  float y[expand_unroll];
#pragma unroll
  for (int u = 0; u < expand_unroll; ++u) {
    const index_t t = t0 + u;
    y[u] = (accumulate && active && t < n) ? detail::ld_f(Y + t * ldy + c) : 0.0f;
  }
  for (index_t e = threadIdx.x; e < expand_tokens * r; e += expand_threads) {
    const index_t t = e / r, j = e - t * r;
    Hs[e] = (t0 + t < n) ? s * H[(t0 + t) * r + j] : 0.0f;
  }
  __syncthreads();
  if (!active) return;
  const std::int32_t p0 = B.row_ptr[c], p1 = B.row_ptr[c + 1];
  for (int tc = 0; tc < expand_tokens; tc += expand_unroll) {
    if (t0 + tc >= n) break;
    if (tc > 0) {
#pragma unroll
      for (int u = 0; u < expand_unroll; ++u) {
        const index_t t = t0 + tc + u;
        y[u] = (accumulate && t < n) ? detail::ld_f(Y + t * ldy + c) : 0.0f;
      }
    }
    for (std::int32_t p = p0; p < p1; ++p) {
      const index_t j = B.col_idx[p];
      const float v = ::lori::to_float(B.values[p]);
      const float* hcol = Hs + static_cast<index_t>(tc) * r + j;
#pragma unroll
      for (int u = 0; u < expand_unroll; ++u) y[u] = fmaf(hcol[u * r], v, y[u]);
    }
#pragma unroll
    for (int u = 0; u < expand_unroll; ++u) {
      const index_t t = t0 + tc + u;
      if (t < n) detail::st_f(Y + t * ldy + c, y[u]);
    }
  }
}

inline constexpr int decode_threads = 256;
inline constexpr int decode_kc = 32;        // k-chunk staged in shared memory
inline constexpr int decode_max_outputs = 4096;  // n * r
inline constexpr int decode_per_thread = decode_max_outputs / decode_threads;
inline constexpr int decode_local_h = 512;  // n * r up to which every block reduces H itself
inline constexpr int decode_group = 8;      // tokens per thread in phase 3
inline constexpr int decode_max_rank = 256;  // r limit of the forward kernels
inline constexpr int decode_prefetch = 8;   // kept entries of a row of B loaded before the barrier
inline constexpr int decode_outs = 4;       // outputs of H a warp reduces at once (phase 2)
inline constexpr int decode_red = 8;        // partials per lane in flight per output (256 blocks)

template <class T>
struct decode_params {
  const T* X;
  index_t ldx;
  const T* A;
  index_t lda;
  sparse_b_view<T> B;
  float s;
  T* Y;
  index_t ldy;
  index_t n, k, r;
  float* P;  // gridDim.x x n x r partial sums
  float* H;  // n x r
};

template <class T>
__global__ void __launch_bounds__(decode_threads) decode_kernel(decode_params<T> q) {
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  float* Xs = reinterpret_cast<float*>(detail::dynamic_smem());  // n x (kc + 1)
  float* As = Xs + q.n * (decode_kc + 1);                        // r x (kc + 1)
  const index_t nb = gridDim.x, b = blockIdx.x, nr = q.n * q.r;

  // Phase 3's inputs do not depend on H: this thread's first (token group, column) element - its
  // kept entries of B (up to decode_prefetch) and its Y values - are loaded now, so their memory
  // latency overlaps phase 1 and the grid barrier instead of following them.
  const index_t d = q.B.rows;
  const index_t groups = (q.n + decode_group - 1) / decode_group;
  const index_t total = groups * d;
  const index_t g = b * decode_threads + threadIdx.x, stride = nb * decode_threads;
  std::int32_t pb = 0, pe = 0;
  int pcol[decode_prefetch];
  float pval[decode_prefetch], yold[decode_group];
#pragma unroll
  for (int u = 0; u < decode_prefetch; ++u) {
    pcol[u] = 0;
    pval[u] = 0.0f;
  }
#pragma unroll
  for (int u = 0; u < decode_group; ++u) yold[u] = 0.0f;
  if (g < total) {
    const index_t grp = g / d, c = g - grp * d, t0 = grp * decode_group;
    pb = q.B.row_ptr[c];
    pe = q.B.row_ptr[c + 1];
#pragma unroll
    for (int u = 0; u < decode_group; ++u)
      if (t0 + u < q.n) yold[u] = detail::ld_f(q.Y + (t0 + u) * q.ldy + c);
#pragma unroll
    for (int u = 0; u < decode_prefetch; ++u)
      if (pb + u < pe) {
        pcol[u] = q.B.col_idx[pb + u];
        pval[u] = ::lori::to_float(q.B.values[pb + u]);
      }
  }

  // Phase 1: block b sums X·Aᵀ over its slice of k into P (layout: output o, then block: P[o * nb + b]).
  // Each chunk's loads are all issued before any is used (one memory round trip per chunk).
  const index_t kper = (q.k + nb - 1) / nb;
  const index_t kb = b * kper < q.k ? b * kper : q.k, ke = kb + kper < q.k ? kb + kper : q.k;
  float acc[decode_per_thread];
#pragma unroll
  for (int u = 0; u < decode_per_thread; ++u) acc[u] = 0.0f;
  constexpr int xu = decode_max_tokens * decode_kc / decode_threads;  // X elements per thread and chunk
  constexpr int au = decode_max_rank * decode_kc / decode_threads;    // A elements per thread and chunk
  for (index_t k0 = kb; k0 < ke; k0 += decode_kc) {
    const index_t len = ke - k0 < decode_kc ? ke - k0 : decode_kc;
    float xv[xu], av[au];
#pragma unroll
    for (int u = 0; u < xu; ++u) {
      const int e = static_cast<int>(threadIdx.x) + u * decode_threads, t = e / decode_kc, kk = e % decode_kc;
      xv[u] = (t < q.n && kk < len) ? detail::ld_f(q.X + t * q.ldx + k0 + kk) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < au; ++u) {
      const int e = static_cast<int>(threadIdx.x) + u * decode_threads, j = e / decode_kc, kk = e % decode_kc;
      av[u] = (j < q.r && kk < len) ? detail::ld_f(q.A + j * q.lda + k0 + kk) : 0.0f;
    }
    __syncthreads();  // previous chunk fully consumed
#pragma unroll
    for (int u = 0; u < xu; ++u) {
      const int e = static_cast<int>(threadIdx.x) + u * decode_threads, t = e / decode_kc, kk = e % decode_kc;
      if (t < q.n) Xs[t * (decode_kc + 1) + kk] = xv[u];
    }
#pragma unroll
    for (int u = 0; u < au; ++u) {
      const int e = static_cast<int>(threadIdx.x) + u * decode_threads, j = e / decode_kc, kk = e % decode_kc;
      if (j < q.r) As[j * (decode_kc + 1) + kk] = av[u];
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < decode_per_thread; ++u) {
      const index_t o = threadIdx.x + static_cast<index_t>(u) * decode_threads;
      if (o < nr) {
        const index_t t = o / q.r, j = o - t * q.r;
        const float* xr = Xs + t * (decode_kc + 1);
        const float* ar = As + j * (decode_kc + 1);
        float a = acc[u];
#pragma unroll 8
        for (int kk = 0; kk < decode_kc; ++kk) a = fmaf(xr[kk], ar[kk], a);
        acc[u] = a;
      }
    }
  }
#pragma unroll
  for (int u = 0; u < decode_per_thread; ++u) {
    const index_t o = threadIdx.x + static_cast<index_t>(u) * decode_threads;
    if (o < nr) q.P[o * nb + b] = acc[u];
  }
  grid.sync();

  // Phase 2: H = s * sum over blocks of P. One warp per output, decode_outs outputs at a time with
  // all their loads in flight: lane l sums blocks l, l + 32, ... in that order, then a fixed shuffle
  // tree whose lane-0 result is used, so H is bitwise the same wherever and however often it is
  // computed (deterministic). A small H (n*r <= decode_local_h) is reduced by every block into its
  // own shared memory (saves a grid barrier); a larger one is split over the grid into q.H, then a
  // second barrier, then copied into every block's shared memory. Shared memory holds
  // (n + r)(kc + 1) >= n*r floats whenever n*r <= 4096, so H fits where X and A were.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int warps = decode_threads / 32;
  const bool local = nr <= decode_local_h;  // grid-uniform
  float* Hs = Xs;                           // phase 1 is over (grid.sync is also a block barrier)
  auto reduce = [&](index_t ob, float* dst) {  // outputs ob .. ob + decode_outs - 1 (those < nr)
    float h[decode_outs];
#pragma unroll
    for (int i = 0; i < decode_outs; ++i) h[i] = 0.0f;
    for (index_t base = 0; base < nb; base += 32 * decode_red) {
      float v[decode_outs][decode_red];
#pragma unroll
      for (int i = 0; i < decode_outs; ++i)
#pragma unroll
        for (int u = 0; u < decode_red; ++u) {
          const index_t bb = base + lane + 32 * u, o = ob + i;
          v[i][u] = (bb < nb && o < nr) ? __ldcg(q.P + o * nb + bb) : 0.0f;
        }
#pragma unroll
      for (int i = 0; i < decode_outs; ++i)
#pragma unroll
        for (int u = 0; u < decode_red; ++u) h[i] += v[i][u];
    }
#pragma unroll
    for (int i = 0; i < decode_outs; ++i) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) h[i] += __shfl_down_sync(0xffffffffu, h[i], off);
      if (lane == 0 && ob + i < nr) dst[ob + i] = q.s * h[i];
    }
  };
  if (local) {
    for (index_t ob = static_cast<index_t>(warp) * decode_outs; ob < nr; ob += warps * decode_outs) reduce(ob, Hs);
  } else {
    for (index_t ob = (b * warps + warp) * decode_outs; ob < nr; ob += nb * warps * decode_outs) reduce(ob, q.H);
    grid.sync();
    for (index_t o = threadIdx.x; o < nr; o += decode_threads) Hs[o] = __ldcg(q.H + o);  // n*r <= 4096 floats
  }
  __syncthreads();

  // Phase 3: one thread per (group of 8 tokens, output column c): Y(t, c) += Σ_j H(t, j) B(c, j)
  // over c's kept entries, H from shared memory. Consecutive threads take consecutive columns. The
  // first element uses what was prefetched above.
  for (index_t e = g; e < total; e += stride) {
    const index_t grp = e / d, c = e - grp * d, t0 = grp * decode_group;
    const bool first = e == g;
    float y[decode_group];
#pragma unroll
    for (int u = 0; u < decode_group; ++u) y[u] = 0.0f;
    std::int32_t p = first ? pb : q.B.row_ptr[c];
    const std::int32_t p1 = first ? pe : q.B.row_ptr[c + 1];
    if (first) {
#pragma unroll
      for (int w = 0; w < decode_prefetch; ++w)
        if (pb + w < pe) {
          const float* hcol = Hs + t0 * q.r + pcol[w];
#pragma unroll
          for (int u = 0; u < decode_group; ++u)
            if (t0 + u < q.n) y[u] = fmaf(hcol[u * q.r], pval[w], y[u]);
        }
      p = pb + decode_prefetch;
    }
    for (; p < p1; ++p) {
      const float* hcol = Hs + t0 * q.r + q.B.col_idx[p];
      const float v = ::lori::to_float(q.B.values[p]);
#pragma unroll
      for (int u = 0; u < decode_group; ++u)
        if (t0 + u < q.n) y[u] = fmaf(hcol[u * q.r], v, y[u]);
    }
#pragma unroll
    for (int u = 0; u < decode_group; ++u) {
      if (t0 + u < q.n) {
        T* yp = q.Y + (t0 + u) * q.ldy + c;
        detail::st_f(yp, (first ? yold[u] : detail::ld_f(yp)) + y[u]);
      }
    }
  }
}

// Y rows [0, n) (Y points at the first) = (accumulate ? Y : 0) + s·H·Bᵀ on `stream`; checked by callers.
template <class T>
void launch_expand(cudaStream_t stream, const float* H, index_t n, float s, const sparse_b<T>& B, T* Y, index_t ldy,
                   bool accumulate) {
  const index_t d = B.rows(), r = B.cols();
  const dim3 grid(detail::grid_dim(detail::ceil_div(d, expand_threads)),
                  detail::grid_dim(detail::ceil_div(n, expand_tokens), false));
  const std::size_t smem = static_cast<std::size_t>(expand_tokens * r) * sizeof(float);
  expand_kernel<T><<<grid, expand_threads, smem, stream>>>(H, n, r, B.view(), s, Y, ldy, accumulate);
  LORI_CUDA_CHECK_LAUNCH();
}

inline std::size_t decode_smem_bytes(index_t n, index_t r) {
  return static_cast<std::size_t>((n + r) * (decode_kc + 1)) * sizeof(float);
}

inline bool decode_applies(const context& ctx, index_t n, index_t r) {
  return ctx.cooperative_launch() && n >= 1 && n <= decode_max_tokens && n * r <= decode_max_outputs;
}

template <class T>
void check_adapter_shapes(const char* fn, row_major_view<const T> X, row_major_view<const T> A, index_t d, index_t r,
                          row_major_view<T> Y) {
  (void)fn;
  LORI_EXPECTS(r >= 1 && r <= 256, "lori::cuda adapter: rank r must be in [1, 256]");
  LORI_EXPECTS(A.rows() == r, "lori::cuda adapter: A must have r rows (A is r x k, B is d x r)");
  LORI_EXPECTS(X.cols() == A.cols(), "lori::cuda adapter: X and A must have the same number of columns k");
  LORI_EXPECTS(A.cols() >= 1 && d >= 1, "lori::cuda adapter: k and d must be positive");
  LORI_EXPECTS(Y.rows() == X.rows() && Y.cols() == d, "lori::cuda adapter: Y must be n x d");
  LORI_EXPECTS(X.rows() <= index_t{65535} * expand_tokens, "lori::cuda adapter: too many tokens for one call");
}

}  // namespace detail_fwd

inline std::size_t adapter_forward_workspace_bytes(const context& ctx, index_t n, index_t r) {
  LORI_EXPECTS(n >= 0 && r >= 0, "adapter_forward_workspace_bytes: negative size");
  const std::size_t h = static_cast<std::size_t>(n * r) * sizeof(float);
  if (detail_fwd::decode_applies(ctx, n, r))
    return h + static_cast<std::size_t>(ctx.sm_count()) * static_cast<std::size_t>(n * r) * sizeof(float);
  return h;
}

template <class T>
void adapter_project(context& ctx, row_major_view<const T> X, row_major_view<const T> A, float* H) {
  static_assert(detail::is_cuda_storage_v<T>, "adapter_project: T must be float, bfloat16 or half");
  LORI_EXPECTS(X.cols() == A.cols(), "adapter_project: X and A must have the same number of columns k");
  LORI_EXPECTS(A.rows() >= 1 && A.cols() >= 1, "adapter_project: A must be non-empty");
  LORI_EXPECTS(H != nullptr || X.rows() == 0, "adapter_project: null H");
  detail::gemm_row_major(ctx.cublas(), false, true, X.rows(), A.rows(), X.cols(), 1.0f, X.data(), X.ld(), A.data(),
                         A.ld(), 0.0f, H, A.rows(), detail::cuda_data_type<T>(), CUDA_R_32F);
}

template <class T>
void adapter_expand(context& ctx, const float* H, index_t n, float s, const sparse_b<T>& B, row_major_view<T> Y,
                    bool accumulate) {
  static_assert(detail::is_cuda_storage_v<T>, "adapter_expand: T must be float, bfloat16 or half");
  const index_t d = B.rows(), r = B.cols();
  LORI_EXPECTS(r >= 1 && r <= 256, "adapter_expand: rank r must be in [1, 256]");
  LORI_EXPECTS(Y.rows() == n && Y.cols() == d, "adapter_expand: Y must be n x d");
  LORI_EXPECTS(H != nullptr || n == 0, "adapter_expand: null H");
  LORI_EXPECTS(n <= index_t{65535} * detail_fwd::expand_tokens, "adapter_expand: too many tokens for one call");
  if (n == 0 || d == 0) return;
  detail_fwd::launch_expand(ctx.stream(), H, n, s, B, Y.data(), Y.ld(), accumulate);
}

template <class T>
void adapter_forward_decode(context& ctx, row_major_view<const T> X, row_major_view<const T> A, const sparse_b<T>& B,
                            float s, row_major_view<T> Y, void* workspace, std::size_t workspace_bytes) {
  static_assert(detail::is_cuda_storage_v<T>, "adapter_forward_decode: T must be float, bfloat16 or half");
  const index_t n = X.rows(), r = B.cols(), d = B.rows();
  detail_fwd::check_adapter_shapes("adapter_forward_decode", X, A, d, r, Y);
  LORI_EXPECTS(n <= decode_max_tokens && n * r <= detail_fwd::decode_max_outputs,
               "adapter_forward_decode: needs n <= 64 and n * r <= 4096");
  LORI_EXPECTS(ctx.cooperative_launch(), "adapter_forward_decode: the device does not support cooperative launch");
  if (n == 0) return;
  LORI_EXPECTS(workspace != nullptr && workspace_bytes >= adapter_forward_workspace_bytes(ctx, n, r),
               "adapter_forward_decode: workspace missing or smaller than adapter_forward_workspace_bytes()");
  LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % alignof(float) == 0,
               "adapter_forward_decode: workspace must be 4-byte aligned");
  const std::size_t smem = detail_fwd::decode_smem_bytes(n, r);  // <= 36 KB for n*r <= 4096, n <= 64, r <= 256
  auto kernel = detail_fwd::decode_kernel<T>;
  // Co-residency of one block per SM (cooperative launch) checked once, at the largest shared memory
  // any call uses (48 KB), so the per-call host cost stays a launch (decode is latency-bound).
  static const int per_sm = [kernel] {
    int v = 0;
    LORI_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, kernel, detail_fwd::decode_threads, 48 * 1024));
    return v;
  }();
  LORI_EXPECTS(per_sm >= 1 && smem <= 48 * 1024, "adapter_forward_decode: kernel does not fit on an SM");
  const int blocks = ctx.sm_count();  // one block per SM: co-resident, as cooperative launch requires
  detail_fwd::decode_params<T> q{X.data(), X.ld(), A.data(), A.ld(), B.view(), s, Y.data(), Y.ld(), n, X.cols(), r,
                                 nullptr, nullptr};
  q.H = static_cast<float*>(workspace);
  q.P = q.H + n * r;
  void* args[] = {&q};
  LORI_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(static_cast<unsigned>(blocks)),
                                              dim3(detail_fwd::decode_threads), args, smem, ctx.stream()));
  LORI_CUDA_CHECK_LAUNCH();
}

template <class T>
void adapter_forward(context& ctx, row_major_view<const T> X, row_major_view<const T> A, const sparse_b<T>& B, float s,
                     row_major_view<T> Y, void* workspace, std::size_t workspace_bytes) {
  static_assert(detail::is_cuda_storage_v<T>, "adapter_forward: T must be float, bfloat16 or half");
  const index_t n = X.rows(), r = B.cols(), d = B.rows();
  detail_fwd::check_adapter_shapes("adapter_forward", X, A, d, r, Y);
  if (n == 0) return;
  // The single kernel only where it measured fastest (H200: n = 1 it wins in a decode loop; at n = 64,
  // where H needs a second grid barrier, project + expand was faster): n·r <= decode_local_h.
  if (detail_fwd::decode_applies(ctx, n, r) && n * r <= detail_fwd::decode_local_h) {
    adapter_forward_decode(ctx, X, A, B, s, Y, workspace, workspace_bytes);
    return;
  }
  LORI_EXPECTS(workspace != nullptr && workspace_bytes >= adapter_forward_workspace_bytes(ctx, n, r),
               "adapter_forward: workspace missing or smaller than adapter_forward_workspace_bytes()");
  LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % alignof(float) == 0,
               "adapter_forward: workspace must be 4-byte aligned");
  float* H = static_cast<float*>(workspace);
  adapter_project(ctx, X, A, H);
  adapter_expand(ctx, H, n, s, B, Y, true);
}

template <class T>
void layer_forward(context& ctx, row_major_view<const T> X, row_major_view<const T> W, row_major_view<const T> A,
                   const sparse_b<T>& B, float s, row_major_view<T> Y, void* workspace, std::size_t workspace_bytes,
                   index_t chunks) {
  static_assert(detail::is_cuda_storage_v<T>, "layer_forward: T must be float, bfloat16 or half");
  const index_t n = X.rows(), r = B.cols(), d = B.rows();
  detail_fwd::check_adapter_shapes("layer_forward", X, A, d, r, Y);
  LORI_EXPECTS(W.rows() == d && W.cols() == X.cols(), "layer_forward: W must be d x k (B's rows x X's columns)");
  if (n == 0) return;
  LORI_EXPECTS(workspace != nullptr && workspace_bytes >= adapter_forward_workspace_bytes(ctx, n, r),
               "layer_forward: workspace missing or smaller than adapter_forward_workspace_bytes()");
  const cudaDataType_t t = detail::cuda_data_type<T>();
  if (detail_fwd::decode_applies(ctx, n, r)) {
    detail::gemm_row_major(ctx.cublas(), false, true, n, d, X.cols(), 1.0f, X.data(), X.ld(), W.data(), W.ld(), 0.0f,
                           Y.data(), Y.ld(), t, t);
    adapter_forward_decode(ctx, X, A, B, s, Y, workspace, workspace_bytes);
    return;
  }
  LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % alignof(float) == 0,
               "layer_forward: workspace must be 4-byte aligned");
  LORI_EXPECTS(chunks >= 1 && chunks <= 16, "layer_forward: chunks must be in [1, 16]");
  float* H = static_cast<float*>(workspace);
  const index_t k = X.cols();
  // Rows [r0, r0 + m): H rows = X rows·Aᵀ; Y rows = s·H·Bᵀ (write-only); Y rows = X rows·Wᵀ + Y rows.
  auto adapter_part = [&](cudaStream_t st, cublasHandle_t h, index_t r0, index_t m) {
    detail::gemm_row_major(h, false, true, m, r, k, 1.0f, X.data() + r0 * X.ld(), X.ld(), A.data(), A.ld(), 0.0f,
                           H + r0 * r, r, t, CUDA_R_32F);
    detail_fwd::launch_expand(st, H + r0 * r, m, s, B, Y.data() + r0 * Y.ld(), Y.ld(), false);
  };
  auto base_gemm = [&](index_t r0, index_t m) {
    detail::gemm_row_major(ctx.cublas(), false, true, m, d, k, 1.0f, X.data() + r0 * X.ld(), X.ld(), W.data(), W.ld(),
                           1.0f, Y.data() + r0 * Y.ld(), Y.ld(), t, t);
  };
  const index_t m = detail::ceil_div(n, chunks);
  const index_t count = detail::ceil_div(n, m);
  if (count <= 1) {
    adapter_part(ctx.stream(), ctx.cublas(), 0, n);
    base_gemm(0, n);
    return;
  }
  cudaStream_t aux = ctx.aux_stream();
  cublasHandle_t aux_h = ctx.aux_cublas();
  LORI_CUDA_CHECK(cudaEventRecord(ctx.event(0), ctx.stream()));  // inputs written by earlier main-stream work
  LORI_CUDA_CHECK(cudaStreamWaitEvent(aux, ctx.event(0), 0));
  adapter_part(ctx.stream(), ctx.cublas(), 0, m);
  for (index_t c = 0; c < count; ++c) {
    const index_t r0 = c * m, rows = n - r0 < m ? n - r0 : m;
    if (c + 1 < count) {
      const index_t r1 = r0 + m, rows1 = n - r1 < m ? n - r1 : m;
      adapter_part(aux, aux_h, r1, rows1);
      LORI_CUDA_CHECK(cudaEventRecord(ctx.event(static_cast<int>(c + 1)), aux));
    }
    if (c > 0) LORI_CUDA_CHECK(cudaStreamWaitEvent(ctx.stream(), ctx.event(static_cast<int>(c)), 0));
    base_gemm(r0, rows);
  }
}

template <class T>
void layer_forward_widened(context& ctx, row_major_view<T> X_ext, row_major_view<const T> W_ext,
                           row_major_view<const T> A, float s, row_major_view<T> Y, index_t chunks) {
  static_assert(detail::is_cuda_storage_v<T>, "layer_forward_widened: T must be float, bfloat16 or half");
  const index_t n = X_ext.rows(), r = A.rows(), k = A.cols(), d = W_ext.rows();
  LORI_EXPECTS(r >= 1 && k >= 1 && d >= 1, "layer_forward_widened: r, k and d must be positive");
  LORI_EXPECTS(X_ext.cols() == k + r, "layer_forward_widened: X_ext must be n x (k + r) with A r x k");
  LORI_EXPECTS(W_ext.cols() == k + r, "layer_forward_widened: W_ext must be d x (k + r)");
  LORI_EXPECTS(Y.rows() == n && Y.cols() == d, "layer_forward_widened: Y must be n x d");
  LORI_EXPECTS(chunks >= 1 && chunks <= 16, "layer_forward_widened: chunks must be in [1, 16]");
  if (n == 0) return;
  const cudaDataType_t t = detail::cuda_data_type<T>();
  // Rows [r0, r0 + m): s·H into the last r columns of X_ext (row stride X_ext.ld()), then the base
  // GEMM with K = k + r.
  auto h_gemm = [&](cublasHandle_t h, index_t r0, index_t m) {
    detail::gemm_row_major(h, false, true, m, r, k, s, X_ext.data() + r0 * X_ext.ld(), X_ext.ld(), A.data(), A.ld(),
                           0.0f, X_ext.data() + r0 * X_ext.ld() + k, X_ext.ld(), t, t);
  };
  auto base_gemm = [&](index_t r0, index_t m) {
    detail::gemm_row_major(ctx.cublas(), false, true, m, d, k + r, 1.0f, X_ext.data() + r0 * X_ext.ld(), X_ext.ld(),
                           W_ext.data(), W_ext.ld(), 0.0f, Y.data() + r0 * Y.ld(), Y.ld(), t, t);
  };
  const index_t m = detail::ceil_div(n, chunks);
  const index_t count = detail::ceil_div(n, m);
  if (count <= 1) {
    h_gemm(ctx.cublas(), 0, n);
    base_gemm(0, n);
    return;
  }
  // Chunk 0's H on the main stream; chunk c+1's H on the aux stream while chunk c's base GEMM runs.
  cudaStream_t aux = ctx.aux_stream();
  cublasHandle_t aux_h = ctx.aux_cublas();
  LORI_CUDA_CHECK(cudaEventRecord(ctx.event(0), ctx.stream()));  // X_ext written by earlier main-stream work
  LORI_CUDA_CHECK(cudaStreamWaitEvent(aux, ctx.event(0), 0));
  h_gemm(ctx.cublas(), 0, m);
  for (index_t c = 0; c < count; ++c) {
    const index_t r0 = c * m, rows = n - r0 < m ? n - r0 : m;
    if (c + 1 < count) {
      const index_t r1 = r0 + m, rows1 = n - r1 < m ? n - r1 : m;
      h_gemm(aux_h, r1, rows1);
      LORI_CUDA_CHECK(cudaEventRecord(ctx.event(static_cast<int>(c + 1)), aux));
    }
    if (c > 0) LORI_CUDA_CHECK(cudaStreamWaitEvent(ctx.stream(), ctx.event(static_cast<int>(c)), 0));
    base_gemm(r0, rows);
  }
}

}  // namespace lori::cuda

#endif  // LORI_CUDA_ADAPTER_FORWARD_CUH
