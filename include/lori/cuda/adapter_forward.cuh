// lori/cuda/adapter_forward.cuh - the LoRI forward pass on the device.
//
//   adapter_project      H = X·Aᵀ                        (n x r, fp32; one cuBLAS GEMM)
//   adapter_expand       Y (+)= s·H·Bᵀ, B sparse          (one kernel; reads H and B, reads/writes Y)
//   adapter_forward      Y += s·(X·Aᵀ)·Bᵀ                 (n <= 64: ONE kernel (thread-block clusters);
//                                                        else adapter_project + adapter_expand)
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

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace lori::cuda {

/// Largest n the single-kernel decode path takes.
inline constexpr index_t decode_max_tokens = 64;

/// Whether adapter_forward_decode may overlap the kernel before it on the stream.
enum class decode_overlap {
  /// Ordinary launch: the kernel starts after all earlier work on the stream.
  none,
  /// Programmatic dependent launch: the kernel may start while the previous KERNEL on the stream is
  /// still running and load A and B (the weights) meanwhile; it waits for that kernel to complete
  /// (and its writes to become visible) before it reads X or reads/writes Y. Use it when the kernel
  /// right before does not write A or B (a decode loop: the previous layer's kernels write X and Y
  /// only). Back-to-back dependent calls (Y or X of one call produced by the previous) stay correct.
  weights,
};

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

/// Y += s·(X·Aᵀ)·Bᵀ. For n <= decode_max_tokens this is one kernel (adapter_forward_decode);
/// otherwise adapter_project + adapter_expand (H in the workspace).
template <class T>
void adapter_forward(context& ctx, row_major_view<const T> X, row_major_view<const T> A, const sparse_b<T>& B, float s,
                     row_major_view<T> Y, void* workspace, std::size_t workspace_bytes);

/// The decode path alone: ONE kernel computing Y += s·(X·Aᵀ)·Bᵀ for n <= decode_max_tokens, in
/// thread-block clusters of 8 (sm_90): each block takes a k-slice of X·Aᵀ, the partials meet in
/// distributed shared memory after one cluster barrier and are summed in a fixed order
/// (deterministic), then each block adds s·H·Bᵀ to its columns of Y. No grid-wide barrier; the
/// workspace is not used (the parameters keep adapter_forward's signature; they may be null / 0).
/// overlap: see decode_overlap (default: an ordinary launch).
template <class T>
void adapter_forward_decode(context& ctx, row_major_view<const T> X, row_major_view<const T> A, const sparse_b<T>& B,
                            float s, row_major_view<T> Y, void* workspace = nullptr, std::size_t workspace_bytes = 0,
                            decode_overlap overlap = decode_overlap::none);

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
/// the last r columns (build once per B update with B.scatter_to_dense(W_ext.data() + k, ld, stream)).
/// Give both buffers a row stride (ld) that is a multiple of 64 elements: at k + r = 4128 (bf16) the
/// packed stride of 8256 bytes, not a multiple of 128, cost the base GEMM ~1.5 % on an H100
/// (BM_gpu_widened_layout); any ld >= k + r is accepted.
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

// ---- 8 consecutive elements of a row as raw bits: one 16-byte load (two for fp32) where the row and
// the offset allow it, else element loads (zeros past the row's end) --------------------------------
template <class T>
struct chunk8 {
  static constexpr int words = sizeof(T) == 4 ? 8 : 4;
  std::uint32_t w[words];
};

// One element's raw bits (16-bit types: in the low half) as fp32 (exact).
template <class T>
__device__ __forceinline__ float bits_to_float(std::uint32_t b) {
  if constexpr (std::is_same_v<T, float>) {
    return __uint_as_float(b);
  } else if constexpr (std::is_same_v<T, ::lori::bfloat16>) {
    return __uint_as_float(b << 16);
  } else {
    const auto h = static_cast<unsigned short>(b);
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
  }
}

// chunk_at for the A operand of the decode kernel: the conversion is an opaque instruction at each
// use, so the compiler cannot hoist 64 converted floats of A out of the token loop (it did: 128
// registers and spills); the raw chunks stay in 32 registers.
template <class T>
__device__ __forceinline__ float chunk_at_opaque(const chunk8<T>& c, int e) {
  if constexpr (std::is_same_v<T, ::lori::bfloat16>) {
    std::uint32_t v;
    if (e & 1) asm volatile("and.b32 %0, %1, 0xffff0000;" : "=r"(v) : "r"(c.w[e >> 1]));
    else asm volatile("shl.b32 %0, %1, 16;" : "=r"(v) : "r"(c.w[e >> 1]));
    return __uint_as_float(v);
  } else if constexpr (std::is_same_v<T, ::lori::half>) {
    float f;
    std::uint32_t h;
    if (e & 1) asm volatile("shr.b32 %0, %1, 16;" : "=r"(h) : "r"(c.w[e >> 1]));
    else asm volatile("and.b32 %0, %1, 0xffff;" : "=r"(h) : "r"(c.w[e >> 1]));
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(static_cast<unsigned short>(h)));
    return f;
  } else {
    return __uint_as_float(c.w[e]);
  }
}

template <class T>
__device__ __forceinline__ float chunk_at(const chunk8<T>& c, int e) {
  if constexpr (std::is_same_v<T, float>) return __uint_as_float(c.w[e]);
  else if constexpr (std::is_same_v<T, ::lori::bfloat16>)
    return __uint_as_float((e & 1) ? (c.w[e >> 1] & 0xffff0000u) : (c.w[e >> 1] << 16));
  else return bits_to_float<T>((e & 1) ? (c.w[e >> 1] >> 16) : (c.w[e >> 1] & 0xffffu));
}

// Raw bits of one element; Cached: through the read-only cache (weights), else L2 only (activations
// another kernel may just have written: no stale L1 line can be hit).
template <class T, bool Cached>
__device__ __forceinline__ std::uint32_t load_bits(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return __float_as_uint(Cached ? __ldg(p) : __ldcg(p));
  } else {
    const auto* u = reinterpret_cast<const unsigned short*>(p);
    return Cached ? __ldg(u) : __ldcg(u);
  }
}

// Elements [kk, kk + 8) of `row` (zero where >= kend). vec: row is 16-byte aligned (kk is a multiple of 8).
template <class T, bool Cached>
__device__ __forceinline__ chunk8<T> load_chunk(const T* row, index_t kk, index_t kend, bool vec) {
  chunk8<T> c;
  if (vec && kk + 8 <= kend) {
    const auto* p = reinterpret_cast<const uint4*>(row + kk);
#pragma unroll
    for (int i = 0; i < chunk8<T>::words / 4; ++i) {
      const uint4 v = Cached ? __ldg(p + i) : __ldcg(p + i);
      c.w[4 * i] = v.x;
      c.w[4 * i + 1] = v.y;
      c.w[4 * i + 2] = v.z;
      c.w[4 * i + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < chunk8<T>::words; ++i) c.w[i] = 0u;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const std::uint32_t b = kk + e < kend ? load_bits<T, Cached>(row + kk + e) : 0u;
      if constexpr (sizeof(T) == 4) c.w[e] = b;
      else c.w[e >> 1] |= b << (16 * (e & 1));
    }
  }
  return c;
}

// Rows of a matrix at p with a row stride of ld_bytes allow 16-byte loads at multiples of 16 bytes.
inline bool host_aligned16(const void* p, index_t ld_bytes) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0 && ld_bytes % 16 == 0;
}

// ---- adapter_expand: Y (+)= s·H·Bᵀ (the session-2 kernel; the session-3 candidates are in
// docs/cuda.md) ---------------------------------------------------------------------------------------
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

// ---- decode: Y += s·(X·Aᵀ)·Bᵀ for n <= 64 in ONE kernel --------------------------------------------
// Thread-block clusters of decode_cluster blocks; cluster = (token tile of up to decode_tile tokens,
// a range of Y's columns). Block rank q of a cluster owns the q-th slice of k:
//   1. loads that do not depend on the previous kernel: its A slice (8-element chunks, all in flight
//      at once) and the kept entries of B of its first output column;  [griddepcontrol.wait: with
//      programmatic dependent launch the kernel may start while the previous one runs; X and Y are
//      read only after it]  Y of its first column, X slice; partial H = X_slice·A_sliceᵀ (lanes split
//      the slice, fixed xor-butterfly reduction);
//   2. pushes its partials into every block of the cluster (distributed shared memory), ONE cluster
//      barrier (hardware), then every block sums the decode_cluster partials in rank order (the same
//      bits everywhere: deterministic);
//   3. each thread adds s·H·Bᵀ to its columns of Y for the tile's tokens.
// No grid-wide barrier and no global workspace; clusters are independent (any number of waves).
inline constexpr int decode_threads = 256;
inline constexpr int decode_cluster = 8;     // blocks per cluster (portable cluster size)
inline constexpr int decode_rows = 4;        // rows of A per warp and pass
inline constexpr int decode_cpl = 2;         // 8-element chunks per lane and pass
inline constexpr int decode_tile = 4;        // tokens per cluster at most
inline constexpr int decode_single_max = 16;  // n up to which every cluster takes one token
inline constexpr int decode_prefetch = 4;    // kept entries of a row of B loaded before the barrier
inline constexpr int decode_prefetch_cols = 2;  // output columns per thread prefetched (Y and B)
inline constexpr int decode_max_rank = 256;  // r limit of the forward kernels

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
  index_t tile;        // tokens per cluster
  index_t col_splits;  // clusters per token tile (each takes a range of Y's columns)
  index_t slice;       // k-slice per block, a multiple of 8
  bool vec_x, vec_a;   // 16-byte loads allowed
  bool early_b;        // load B's kept entries before griddepcontrol.wait (programmatic dependent launch)
};

using ::lori::detail::cluster_arrive_relaxed;
using ::lori::detail::cluster_arrive_release;
using ::lori::detail::cluster_wait;
// Programmatic dependent launch (no-ops when the kernel was launched without the attribute).
__device__ __forceinline__ void grid_dependency_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void grid_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// TT: tokens per cluster at most (1 or decode_tile). Two blocks per SM (<= 128 registers; the TT = 4
// variant spills what phase 3 prefetched, to L1): one block per SM left clusters of 8 waiting for a
// second wave on GPCs with fewer than 16 free SMs (H200, checkpoint 1: 27.9 us at n = 64).
template <class T, int TT>
__global__ void __launch_bounds__(decode_threads, 2) decode_kernel(decode_params<T> q) {
  namespace cg = cooperative_groups;
  constexpr int C = decode_cluster, RW = decode_rows, CPL = decode_cpl, PF = decode_prefetch;
  constexpr int PC = TT == 1 ? decode_prefetch_cols : 1;  // registers: the 4-token variant prefetches one column
  constexpr int warps = decode_threads / 32;
  cg::cluster_group cluster = cg::this_cluster();
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const auto rank = static_cast<int>(cluster.block_rank());
  const index_t cid = static_cast<index_t>(blockIdx.x) / C;
  const index_t tile_id = cid / q.col_splits, split = cid - tile_id * q.col_splits;
  const index_t t0 = tile_id * q.tile;
  const int tt = static_cast<int>(q.n - t0 < q.tile ? q.n - t0 : q.tile);  // tokens of this tile, >= 1
  const index_t r = q.r, O = q.tile * r;
  float* part = reinterpret_cast<float*>(detail::dynamic_smem());  // C x O: partial H of each rank
  float* Hs = part + C * O;                                          // O: s·H of the tile

  // Columns of Y: the cluster's range, split over its blocks.
  const index_t d = q.B.rows;
  const index_t cpc = (d + q.col_splits - 1) / q.col_splits;
  const index_t cc0 = split * cpc < d ? split * cpc : d, cc1 = cc0 + cpc < d ? cc0 + cpc : d;
  const index_t cpb = (cpc + C - 1) / C;
  const index_t bc0 = cc0 + rank * cpb < cc1 ? cc0 + rank * cpb : cc1, bc1 = bc0 + cpb < cc1 ? bc0 + cpb : cc1;
  // This block's slice of k.
  const index_t kb = rank * q.slice < q.k ? rank * q.slice : q.k, ke = kb + q.slice < q.k ? kb + q.slice : q.k;
  const index_t nch = (ke - kb + 7) / 8;

  cluster_arrive_relaxed();  // "this block runs": the partial pushes below wait for all blocks' arrival

  // 1a. Weights (may overlap the previous kernel): the first pass's A chunks, the first column's
  // row_ptr entries.
  chunk8<T> a[RW][CPL];
  auto load_a = [&](index_t j0, index_t cb) {
#pragma unroll
    for (int i = 0; i < RW; ++i)
#pragma unroll
      for (int u = 0; u < CPL; ++u) {
        const index_t j = j0 + i, c = cb + lane + 32 * u;
        if (j < r && c < nch) {
          a[i][u] = load_chunk<T, true>(q.A + j * q.lda, kb + 8 * c, ke, q.vec_a);
        } else {
#pragma unroll
          for (int w = 0; w < chunk8<T>::words; ++w) a[i][u].w[w] = 0u;
        }
      }
  };
  load_a(static_cast<index_t>(warp) * RW, 0);
  // This thread's first PC output columns (c = bc0 + threadIdx.x + 256·m): row_ptr now, the kept
  // entries (up to PF of each) and Y after the X loads below.
  const index_t cfirst = bc0 + threadIdx.x;
  std::int32_t pb[PC], pe[PC];
  std::uint32_t pent[PC][PF];  // kept entry: column index (low 16 bits) | value bits (16-bit T: high 16)
  float pval[PC][sizeof(T) == 4 ? PF : 1];
  float yold[PC][TT];
#pragma unroll
  for (int m = 0; m < PC; ++m) {
    const index_t c = cfirst + m * decode_threads;
    pb[m] = c < bc1 ? q.B.row_ptr[c] : 0;
    pe[m] = c < bc1 ? q.B.row_ptr[c + 1] : 0;
#pragma unroll
    for (int u = 0; u < PF; ++u) pent[m][u] = 0u;
#pragma unroll
    for (int u = 0; u < (sizeof(T) == 4 ? PF : 1); ++u) pval[m][u] = 0.0f;
  }

  // The kept entries of those columns (their addresses wait for row_ptr). With programmatic dependent
  // launch (early_b) they are loaded before griddepcontrol.wait, while the previous kernel still
  // runs; otherwise after the X loads below, so that the wait for row_ptr overlaps X's latency
  // instead of delaying it.
  auto load_entries = [&] {
#pragma unroll
    for (int m = 0; m < PC; ++m)
#pragma unroll
      for (int u = 0; u < PF; ++u)
        if (pb[m] + u < pe[m]) {
          const auto j = static_cast<std::uint32_t>(q.B.col_idx[pb[m] + u]);  // < 256
          if constexpr (sizeof(T) == 4) {
            pent[m][u] = j;
            pval[m][u] = q.B.values[pb[m] + u];
          } else {
            pent[m][u] = j | (load_bits<T, true>(q.B.values + pb[m] + u) << 16);
          }
        }
  };
  if (q.early_b) load_entries();

  // 1b. What the previous kernel may have written (X, Y): only after its completion.
  grid_dependency_wait();
  grid_launch_dependents();
  constexpr int XP = TT == 1 ? 1 : 0;  // tokens whose first-pass X is preloaded (registers: one-token variant)
  chunk8<T> xpre[1][CPL];
#pragma unroll
  for (int t = 0; t < 1; ++t)
#pragma unroll
    for (int u = 0; u < CPL; ++u) {
      const index_t c = lane + 32 * u;
      if (t < XP && t < tt && c < nch) {
        xpre[t][u] = load_chunk<T, false>(q.X + (t0 + t) * q.ldx, kb + 8 * c, ke, q.vec_x);
      } else {
#pragma unroll
        for (int w = 0; w < chunk8<T>::words; ++w) xpre[t][u].w[w] = 0u;
      }
    }
#pragma unroll
  for (int m = 0; m < PC; ++m) {
    const index_t c = cfirst + m * decode_threads;
#pragma unroll
    for (int t = 0; t < TT; ++t)
      yold[m][t] = (c < bc1 && t < tt) ? bits_to_float<T>(load_bits<T, false>(q.Y + (t0 + t) * q.ldy + c)) : 0.0f;
  }
  if (!q.early_b) load_entries();

  // 1c. Partial H over this block's k-slice; warp w takes rows w*RW.., lanes the slice's chunks.
  bool waited = false, first_pass = true;
  for (index_t j0 = static_cast<index_t>(warp) * RW; j0 < r; j0 += warps * RW) {  // warp-uniform
    float acc[RW][TT];
#pragma unroll
    for (int i = 0; i < RW; ++i)
#pragma unroll
      for (int t = 0; t < TT; ++t) acc[i][t] = 0.0f;
    for (index_t cb = 0; cb < nch; cb += 32 * CPL) {
      const bool pre = first_pass;  // A and X of the first pass are already in registers
      if (!pre) load_a(j0, cb);
      first_pass = false;
#pragma unroll
      for (int t = 0; t < TT; ++t) {
        if (t >= tt) break;
        const T* xrow = q.X + (t0 + t) * q.ldx;
#pragma unroll
        for (int u = 0; u < CPL; ++u) {
          const index_t c = cb + lane + 32 * u;
          if (c >= nch) break;
          const chunk8<T> xc = (pre && t < XP) ? xpre[t < XP ? t : 0][u] : load_chunk<T, false>(xrow, kb + 8 * c, ke, q.vec_x);
          float xf[8];
#pragma unroll
          for (int e = 0; e < 8; ++e) xf[e] = chunk_at(xc, e);
#pragma unroll
          for (int i = 0; i < RW; ++i)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[i][t] = fmaf(chunk_at_opaque(a[i][u], e), xf[e], acc[i][t]);
        }
      }
    }
    first_pass = false;
    // Butterfly: every lane ends with the full sums (fixed pattern: deterministic).
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      if (t >= tt) break;
#pragma unroll
      for (int i = 0; i < RW; ++i)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc[i][t] += __shfl_xor_sync(0xffffffffu, acc[i][t], off);
    }
    if (!waited) {
      cluster_wait();  // every block of the cluster has started: its shared memory may be written
      waited = true;
    }
    if (lane < C) {  // lane q pushes this block's partials into block q's shared memory
      float* dst = cluster.map_shared_rank(part, static_cast<unsigned>(lane)) + rank * O;
#pragma unroll
      for (int t = 0; t < TT; ++t) {
        if (t >= tt) break;
#pragma unroll
        for (int i = 0; i < RW; ++i)
          if (j0 + i < r) dst[t * r + j0 + i] = acc[i][t];
      }
    }
  }
  if (!waited) cluster_wait();  // warps without rows of A (r < 32) still pair their arrive
  // 2. All partials have arrived (release/acquire at cluster scope); H in rank order.
  cluster_arrive_release();
  cluster_wait();
  for (index_t o = threadIdx.x; o < tt * r; o += decode_threads) {
    float h = 0.0f;
#pragma unroll
    for (int qq = 0; qq < C; ++qq) h += part[qq * O + o];
    Hs[o] = q.s * h;
  }
  __syncthreads();

  // 3. Y(t, c) += Σ_j s·H(t, j)·B(c, j) over c's kept entries (in CSR order); the first PC columns
  // use what was loaded before the barrier.
  auto add_entries = [&](float (&y)[TT], std::int32_t p, std::int32_t p1) {
    for (; p < p1; ++p) {
      const index_t j = q.B.col_idx[p];
      const float v = ::lori::to_float(q.B.values[p]);
#pragma unroll
      for (int t = 0; t < TT; ++t)
        if (t < tt) y[t] = fmaf(Hs[t * r + j], v, y[t]);
    }
  };
#pragma unroll
  for (int m = 0; m < PC; ++m) {
    const index_t c = cfirst + m * decode_threads;
    if (c >= bc1) break;
    float y[TT];
#pragma unroll
    for (int t = 0; t < TT; ++t) y[t] = 0.0f;
#pragma unroll
    for (int w = 0; w < PF; ++w)
      if (pb[m] + w < pe[m]) {
        const int j = static_cast<int>(pent[m][w] & 0xffffu);
        float v;
        if constexpr (sizeof(T) == 4) v = pval[m][w];
        else v = bits_to_float<T>(pent[m][w] >> 16);
#pragma unroll
        for (int t = 0; t < TT; ++t)
          if (t < tt) y[t] = fmaf(Hs[t * r + j], v, y[t]);
      }
    add_entries(y, pb[m] + PF, pe[m]);
#pragma unroll
    for (int t = 0; t < TT; ++t)
      if (t < tt) detail::st_f(q.Y + (t0 + t) * q.ldy + c, yold[m][t] + y[t]);
  }
  for (index_t c = cfirst + PC * decode_threads; c < bc1; c += decode_threads) {
    float y[TT];
#pragma unroll
    for (int t = 0; t < TT; ++t) y[t] = 0.0f;
    add_entries(y, q.B.row_ptr[c], q.B.row_ptr[c + 1]);
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      if (t < tt) {
        T* yp = q.Y + (t0 + t) * q.ldy + c;
        detail::st_f(yp, bits_to_float<T>(load_bits<T, false>(yp)) + y[t]);
      }
    }
  }
}

// Clusters of decode_kernel<T, TT> resident at once on the current device (at the largest shared
// memory a call uses), queried once per device (the kernel is latency-bound: the per-call host cost
// stays a launch).
template <class T, int TT>
int decode_resident_clusters() {
  static std::atomic<int> cache[::lori::detail::max_cached_devices] = {};  // per device: a multi-GPU host may mix cards
  const int v = ::lori::detail::max_active_clusters(
      reinterpret_cast<const void*>(decode_kernel<T, TT>), static_cast<unsigned>(decode_threads),
      static_cast<std::size_t>((decode_cluster + 1) * decode_max_rank) * sizeof(float),
      static_cast<unsigned>(decode_cluster), cache);
  LORI_EXPECTS(v >= 1, "adapter_forward_decode: a cluster of the decode kernel does not fit this device");
  return v;
}

// The decode launch (shapes checked by the caller, 1 <= n <= decode_max_tokens). force_tile (1 or
// decode_tile) and force_clusters (> 0) override the choices by shape: for tuning benchmarks only.
template <class T>
void launch_decode(context& ctx, row_major_view<const T> X, row_major_view<const T> A, const sparse_b<T>& B, float s,
                   row_major_view<T> Y, decode_overlap overlap, int force_tile = 0, index_t force_clusters = 0) {
  const index_t n = X.rows(), r = B.cols(), d = B.rows(), k = X.cols();
  constexpr index_t C = decode_cluster;
  decode_params<T> q{};
  q.X = X.data();
  q.ldx = X.ld();
  q.A = A.data();
  q.lda = A.ld();
  q.B = B.view();
  q.s = s;
  q.Y = Y.data();
  q.ldy = Y.ld();
  q.n = n;
  q.k = k;
  q.r = r;
  // Tokens per cluster: one token for n <= decode_single_max (the kernel variant with few registers:
  // two blocks fit an SM, so the next call's blocks can start beside it); else up to 4, fewer for
  // large r (the block's partials: tile·r <= 256 floats).
  const bool single = force_tile > 0 ? force_tile == 1 : n <= decode_single_max;
  index_t tile = r <= 32 ? decode_tile : 128 / r;
  tile = tile < 1 ? 1 : (tile > decode_tile ? decode_tile : tile);
  q.tile = single ? 1 : (tile < n ? tile : n);
  const index_t tiles = detail::ceil_div(n, q.tile);
  // About one block per SM, as many clusters as are resident at once (a GPC holds whole clusters):
  // the clusters beyond the token tiles split Y's columns (at least 32 columns a block).
  const int resident = single ? decode_resident_clusters<T, 1>() : decode_resident_clusters<T, decode_tile>();
  index_t target = ctx.sm_count() / C > 1 ? ctx.sm_count() / C : 1;
  target = target < resident ? target : resident;
  if (force_clusters > 0) target = force_clusters;
  index_t splits = target / tiles;
  const index_t max_splits = detail::ceil_div(d, 32 * C);
  splits = splits > max_splits ? max_splits : splits;
  q.col_splits = splits < 1 ? 1 : splits;
  q.slice = detail::ceil_div(detail::ceil_div(k, C), 8) * 8;
  q.vec_x = detail_fwd::host_aligned16(X.data(), X.ld() * static_cast<index_t>(sizeof(T)));
  q.vec_a = detail_fwd::host_aligned16(A.data(), A.ld() * static_cast<index_t>(sizeof(T)));
  const index_t blocks = tiles * q.col_splits * C;

  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(detail::grid_dim(blocks));
  cfg.blockDim = dim3(decode_threads);
  cfg.dynamicSmemBytes = static_cast<std::size_t>((C + 1) * q.tile * r) * sizeof(float);  // <= 9 KB
  cfg.stream = ctx.stream();
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(C);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = overlap == decode_overlap::weights ? 2 : 1;
  q.early_b = overlap == decode_overlap::weights;
  void* args[] = {&q};
  const void* kernel = single ? reinterpret_cast<const void*>(decode_kernel<T, 1>)
                              : reinterpret_cast<const void*>(decode_kernel<T, decode_tile>);
  LORI_CUDA_CHECK(cudaLaunchKernelExC(&cfg, kernel, args));
  LORI_CUDA_CHECK_LAUNCH();
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

inline bool decode_applies(const context& ctx, index_t n, index_t r) {
  (void)ctx;
  return n >= 1 && n <= decode_max_tokens && r >= 1 && r <= decode_max_rank;
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
  (void)ctx;
  LORI_EXPECTS(n >= 0 && r >= 0, "adapter_forward_workspace_bytes: negative size");
  return static_cast<std::size_t>(n * r) * sizeof(float);  // H (the decode kernel needs none)
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
                            float s, row_major_view<T> Y, void* workspace, std::size_t workspace_bytes,
                            decode_overlap overlap) {
  static_assert(detail::is_cuda_storage_v<T>, "adapter_forward_decode: T must be float, bfloat16 or half");
  (void)workspace;
  (void)workspace_bytes;
  detail_fwd::check_adapter_shapes("adapter_forward_decode", X, A, B.rows(), B.cols(), Y);
  LORI_EXPECTS(X.rows() <= decode_max_tokens, "adapter_forward_decode: needs n <= 64");
  if (X.rows() == 0) return;
  detail_fwd::launch_decode(ctx, X, A, B, s, Y, overlap);
}

template <class T>
void adapter_forward(context& ctx, row_major_view<const T> X, row_major_view<const T> A, const sparse_b<T>& B, float s,
                     row_major_view<T> Y, void* workspace, std::size_t workspace_bytes) {
  static_assert(detail::is_cuda_storage_v<T>, "adapter_forward: T must be float, bfloat16 or half");
  const index_t n = X.rows(), r = B.cols(), d = B.rows();
  detail_fwd::check_adapter_shapes("adapter_forward", X, A, d, r, Y);
  if (n == 0) return;
  LORI_EXPECTS(workspace != nullptr && workspace_bytes >= adapter_forward_workspace_bytes(ctx, n, r),
               "adapter_forward: workspace missing or smaller than adapter_forward_workspace_bytes()");
  LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % alignof(float) == 0,
               "adapter_forward: workspace must be 4-byte aligned");
  if (detail_fwd::decode_applies(ctx, n, r)) {
    adapter_forward_decode(ctx, X, A, B, s, Y, workspace, workspace_bytes);
    return;
  }
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
