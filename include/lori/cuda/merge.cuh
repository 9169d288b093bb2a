// lori/cuda/merge.cuh - merge T adapters into a base weight in one pass over W.
//
//   W (d x k) += Σₜ sₜ·Bₜ·Aₜ      Bₜ d x rₜ (dense, or a sparse_b), Aₜ rₜ x k
//
// The T low-rank terms are one product with depth R = Σ rₜ: W += [B₁ | … | B_T]·diag(s)·[A₁; …; A_T].
// lori packs the two thin operands into caller workspace (one pack kernel per 16 adapters), then reads
// and writes W exactly once, by one of two routes:
// * 16-bit W with 16-byte rows (W 16-byte aligned, k and the leading dimension multiples of 8) and a
//   padded depth <= 128 (e.g. 4 adapters of rank 32): lori's streaming tensor-core kernel (lori/detail/merge_stream.cuh), a copy
//   of W through shared memory with ΔW computed per 128 x 128 tile on mma.sync from the packed
//   operands (in L2). Bₜ is packed unscaled; consecutive adapters with one scale form a segment padded
//   to 16 columns; one fp32 accumulator runs through the segments, rescaled by s_j / s_j+1 between
//   them (scales nonzero, finite, within 2^32 of each other); W + ΔW is rounded to T once. For 4 adapters of rank 32 into a 14336 x 4096 bf16 W: 2·117 MB of W traffic, 4.7 MB of
//   packed operands, 15 GFLOP hidden under the copy.
// * otherwise (fp32 W, unaligned W or leading dimension, deeper sums, a zero scale): ONE cuBLAS GEMM with beta = 1
//   over [s₁B₁ | … | s_TB_T] and [A₁; …; A_T]. Equal scales become the GEMM's alpha (packed operands
//   exact); unequal ones are folded into the packed B, split into hi + lo 16-bit parts for 16-bit T
//   (depth 2R) so each term keeps ~2^-17 relative accuracy. cuBLAS's 16-bit epilogue rounds the
//   product to T before adding W (one extra rounding the streaming kernel does not have).
#ifndef LORI_CUDA_MERGE_CUH
#define LORI_CUDA_MERGE_CUH

#include "lori/config.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/cuda/context.cuh"
#include "lori/cuda/sparse_b.cuh"
#include "lori/error.hpp"

#include "lori/detail/cuda_common.cuh"
#include "lori/detail/merge_stream.cuh"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace lori::cuda {

/// One adapter to merge: scale s, A (r x k, row-major, leading dimension >= k) and either a dense B
/// (d x r, row-major, leading dimension >= r) or, when B_dense is null, the sparse B `B_sparse`.
template <class T>
struct merge_source {
  float scale = 1.0f;
  row_major_view<const T> A;
  row_major_view<const T> B_dense;  ///< empty (0 x 0) when B_sparse is used
  const sparse_b<T>* B_sparse = nullptr;
};

/// Workspace bytes merge_into needs: (d + k)·R' elements of T plus alignment padding, R' the larger of
/// the two routes' depths (cuBLAS: R = Σ rₜ, 2R for 16-bit T with unequal scales; streaming kernel:
/// the scale segments each padded to a multiple of 16). Depends only on d, k, the ranks and scales.
template <class T>
std::size_t merge_workspace_bytes(index_t d, index_t k, const std::vector<merge_source<T>>& sources);

/// W (d x k) += Σₜ sₜ·Bₜ·Aₜ, reading and writing W once (routes: see the file comment). Every Aₜ is
/// rₜ x k, every Bₜ d x rₜ (rₜ >= 1), no scale NaN; workspace of at least merge_workspace_bytes(d, k,
/// sources), 256-byte aligned. W's padding (columns k .. ld-1) is left untouched. Deterministic;
/// stream-ordered on ctx.stream().
template <class T>
void merge_into(context& ctx, row_major_view<T> W, const std::vector<merge_source<T>>& sources, void* workspace,
                std::size_t workspace_bytes);

// =====================================================================================================
// Implementation
// =====================================================================================================
namespace detail_merge {

// Up to pack_max sources packed by ONE kernel: Bcat columns [off, off + r) = (s·)Bₜ and Acat rows
// [off, off + r) = Aₜ, for the sources' column range [c_begin, c_end). Two layouts:
// * linear (cuBLAS route, pack_kernel): Bcat d x R row-major (split: [hi | lo], d x 2R), Acat R x k
//   ([A; A] if split);
// * tiled (streaming kernel, pack_tiled_kernel; R <= 128, raw Bₜ): rows padded to merge_stream::pitch,
//   so that one bulk copy loads a Bcat band or an Acat tile: Bcat(i, col) at i·pitch + col, Acat(row, c)
//   at ((c/128)·128 + row)·pitch + c%128 (column tile c/128 of Acat is 128 padded rows).
inline constexpr int pack_max = 16;

template <class T>
struct pack_source {
  const T* A;
  index_t lda;
  const T* B;  // dense, or null: sparse
  index_t ldb;
  sparse_b_view<T> S;
  float scale;
  index_t off, r;
};

// What both pack kernels are given: up to pack_max sources, the shape, the packed column range
// [c_begin, c_end) of this launch, the outputs.
template <class T>
struct pack_head {
  pack_source<T> src[pack_max];
  int count;
  index_t d, k, c_begin, c_end;
  T* Bcat;
  T* Acat;
};

template <class T>
struct pack_args : pack_head<T> {
  index_t R;
  bool split;  // 16-bit T with per-adapter scales: Bcat = [hi | lo], Acat = [A; A] (see merge_into)
};

template <class T>
__device__ __forceinline__ float b_value(const pack_source<T>& src, index_t i, index_t j) {
  if (j >= src.r) return 0.0f;  // zero padding after a scale segment (tiled layout)
  if (src.B != nullptr) return src.scale * ::lori::to_float(src.B[i * src.ldb + j]);
  if ((src.S.words[i * src.S.words_per_row + (j >> 6)] >> (j & 63)) & 1u)
    return src.scale * ::lori::to_float(src.S.values[detail_sparse::packed_index(src.S, i, j)]);
  return 0.0f;
}

// One thread per 8 consecutive packed elements (a row segment of Bcat or of Acat): all 8 loads are issued
// before the stores, and the index division is paid once per 8 elements.
template <class T>
__global__ void pack_kernel(const __grid_constant__ pack_args<T> a) {
  // Lets a kernel launched after this one with programmatic stream serialization (the streaming merge
  // kernel) start its blocks now; it waits for this grid's completion before reading Bcat/Acat.
  asm volatile("griddepcontrol.launch_dependents;");
  // The source descriptors go to shared memory first: threads of a warp index them with different t,
  // which as kernel-parameter (constant bank) loads would serialize (checkpoint 2: 25 µs, MIO-bound).
  __shared__ pack_source<T> srcs[pack_max];
  if (static_cast<int>(threadIdx.x) < a.count) srcs[threadIdx.x] = a.src[threadIdx.x];
  __syncthreads();
  const index_t w = a.c_end - a.c_begin, w8 = (w + 7) / 8, k8 = (a.k + 7) / 8;
  const index_t nb = a.d * w8, total = nb + w * k8;
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<index_t>(gridDim.x) * blockDim.x) {
    float x[8];
    if (e < nb) {  // Bcat(i, col0 .. col0 + 7)
      const index_t i = e / w8, col0 = a.c_begin + 8 * (e - i * w8);
      int t = 0;
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const index_t col = col0 + u;
        while (t + 1 < a.count && col >= srcs[t + 1].off) ++t;
        x[u] = col < a.c_end ? b_value(srcs[t], i, col - srcs[t].off) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const index_t col = col0 + u;
        if (col >= a.c_end) break;
        const T hi = ::lori::from_float<T>(x[u]);
        const index_t ldb = a.split ? 2 * a.R : a.R;
        a.Bcat[i * ldb + col] = hi;
        // x - hi is exact in float (the rounding residual of a float to a shorter format), so hi + lo
        // carries s*b to ~2^-17 relative instead of the 2^-9 (bf16) a single 16-bit value would.
        if (a.split) a.Bcat[i * ldb + a.R + col] = ::lori::from_float<T>(x[u] - ::lori::to_float(hi));
      }
    } else {  // Acat(row, c0 .. c0 + 7)
      const index_t e2 = e - nb, rr = e2 / k8, c0 = 8 * (e2 - rr * k8), row = a.c_begin + rr;
      int t = 0;
      while (t + 1 < a.count && row >= srcs[t + 1].off) ++t;
      const pack_source<T>& src = srcs[t];
      const index_t j = row - src.off;
#pragma unroll
      for (int u = 0; u < 8; ++u) x[u] = c0 + u < a.k && j < src.r ? ::lori::to_float(src.A[j * src.lda + c0 + u]) : 0.0f;
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const index_t c = c0 + u;
        if (c >= a.k) break;
        const T v = ::lori::from_float<T>(x[u]);  // exact: a value of T, or 0
        a.Acat[row * a.k + c] = v;
        if (a.split) a.Acat[(a.R + row) * a.k + c] = v;
      }
    }
  }
}

// Tiled layout (streaming kernel): one thread per 16-byte chunk of the OUTPUT (8 consecutive columns of
// a Bcat row, or of an Acat row within one column tile), 16-byte loads where the source allows them and
// 16-byte stores, no per-element search: the source of every packed column is looked up once per block in
// a shared table. (The first version, one 2-byte store per element and a source search per element, took
// 22 µs for the 4.5 MB of a 4-adapter merge into 14336 x 4096: latency- and instruction-bound.)
// Columns outside [c_begin, c_end) (another launch's sources) are never written.
template <class T>
struct tpack_args : pack_head<T> {
  int ch0, nch, lg_nch;  // Bcat chunks [ch0, ch0 + nch) of every row; 1 << lg_nch >= nch threads per row
};

// The bits of Bₜ(i, j) (0 past its rank: the padding of a scale segment; 0 where a sparse Bₜ is not kept).
template <class T>
__device__ __forceinline__ std::uint16_t tpack_b(const pack_source<T>& src, index_t i, index_t j) {
  static_assert(sizeof(T) == 2, "tiled pack: 16-bit T");
  const T* p = nullptr;
  if (j < src.r) {
    if (src.B != nullptr) {
      p = src.B + i * src.ldb + j;
    } else if ((src.S.words[i * src.S.words_per_row + (j >> 6)] >> (j & 63)) & 1u) {
      p = src.S.values + detail_sparse::packed_index(src.S, i, j);
    }
  }
  return p != nullptr ? *reinterpret_cast<const std::uint16_t*>(p) : std::uint16_t{0};
}

inline constexpr int tpack_batch = 2;

// One 16-byte output chunk of the tiled layout: its 8 values, where they go, and which of them to write
// (mask 0xff: all, one 16-byte store; 0: nothing).
struct tpack_chunk {
  union {
    uint4 v;
    std::uint16_t x[8];
  } u;
  std::uint16_t* out;
  unsigned mask;
};

template <class T>
__device__ __forceinline__ tpack_chunk tpack_load(const tpack_args<T>& a, const pack_source<T>* srcs,
                                                  const signed char* col_src, index_t e, index_t nb, index_t k8) {
  constexpr index_t pitch = ::lori::detail::merge_stream::pitch;
  tpack_chunk c;
  c.u.v = make_uint4(0u, 0u, 0u, 0u);
  c.mask = 0;
  c.out = nullptr;
  if (e < nb) {  // Bcat(i, col0 .. col0 + 7)
    const index_t i = e >> a.lg_nch;
    const int cc = static_cast<int>(e & ((index_t{1} << a.lg_nch) - 1));
    if (cc >= a.nch) return c;
    const int col0 = 8 * (a.ch0 + cc);
    const int t0 = col_src[col0];
    const bool full = col0 >= a.c_begin && col0 + 8 <= a.c_end;
    if (full && t0 >= 0 && srcs[t0].B != nullptr && col_src[col0 + 7] == t0 && col0 + 8 - srcs[t0].off <= srcs[t0].r &&
        (reinterpret_cast<std::uintptr_t>(srcs[t0].B + i * srcs[t0].ldb + (col0 - srcs[t0].off)) & 15u) == 0) {
      c.u.v = __ldg(reinterpret_cast<const uint4*>(srcs[t0].B + i * srcs[t0].ldb + (col0 - srcs[t0].off)));
    } else if (full && t0 >= 0 && srcs[t0].B == nullptr && col_src[col0 + 7] == t0 && col0 + 8 - srcs[t0].off <= srcs[t0].r &&
               ((col0 - srcs[t0].off) & 63) + 8 <= 64) {
      // 8 columns of one sparse Bₜ within one mask word: the word and the row offset once, then the
      // kept values (consecutive in the packed order) by rank.
      const sparse_b_view<T>& S = srcs[t0].S;
      const index_t j0 = col0 - srcs[t0].off;
      const std::uint64_t* row = S.words + i * S.words_per_row;
      const std::uint64_t word = row[j0 >> 6];
      std::int32_t p0 = S.row_ptr[i];
      for (index_t q = 0; q < (j0 >> 6); ++q) p0 += __popcll(row[q]);
      const int b = static_cast<int>(j0 & 63);
      p0 += __popcll(word & ((std::uint64_t{1} << b) - 1u));
      const unsigned bits = static_cast<unsigned>(word >> b) & 0xffu;
      const std::uint16_t* vals = reinterpret_cast<const std::uint16_t*>(S.values) + p0;
#pragma unroll
      for (int q = 0; q < 8; ++q)
        if ((bits >> q) & 1u) c.u.x[q] = vals[__popc(bits & ((1u << q) - 1u))];
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const int col = col0 + q;
        const int t = col < ::lori::detail::merge_stream::max_kp ? col_src[col] : -1;
        c.u.x[q] = t >= 0 ? tpack_b(srcs[t], i, col - srcs[t].off) : std::uint16_t{0};
      }
    }
    c.out = reinterpret_cast<std::uint16_t*>(a.Bcat + i * pitch + col0);
    if (full) {
      c.mask = 0xffu;
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q)
        if (col0 + q >= a.c_begin && col0 + q < a.c_end) c.mask |= 1u << q;
    }
  } else {  // Acat(row, c0 .. c0 + 7): row `row` of column tile c0 / 128
    const index_t e2 = e - nb, rr = e2 / k8, c0 = 8 * (e2 - rr * k8);
    const int row = static_cast<int>(a.c_begin + rr);
    const pack_source<T>& src = srcs[col_src[row]];
    const index_t j = row - src.off;
    if (j < src.r) {  // else a padding row: zeros (and columns >= k: zeros)
      const T* in = src.A + j * src.lda + c0;
      if (c0 + 8 <= a.k && (reinterpret_cast<std::uintptr_t>(in) & 15u) == 0) {
        c.u.v = __ldg(reinterpret_cast<const uint4*>(in));
      } else {
#pragma unroll
        for (int q = 0; q < 8; ++q)
          if (c0 + q < a.k) c.u.x[q] = reinterpret_cast<const std::uint16_t*>(in)[q];
      }
    }
    // 8 columns within one 128-column tile (c0 % 8 == 0), 16-byte aligned (pitch * 2 = 272 = 17 * 16).
    c.out = reinterpret_cast<std::uint16_t*>(a.Acat + ((c0 >> 7) * 128 + row) * pitch + (c0 & 127));
    c.mask = 0xffu;
  }
  return c;
}

__device__ __forceinline__ void tpack_store(const tpack_chunk& c) {
  if (c.mask == 0xffu) {
    *reinterpret_cast<uint4*>(c.out) = c.u.v;
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if ((c.mask >> q) & 1u) c.out[q] = c.u.x[q];
  }
}

// tpack_batch chunks per thread and iteration, all loads in flight before the stores; the grid is sized
// for one batch per thread (one wave on the GPUs lori targets: the block prologue is paid once per
// tpack_batch chunks).
template <class T>
__global__ void __launch_bounds__(256) pack_tiled_kernel(const __grid_constant__ tpack_args<T> a) {
  asm volatile("griddepcontrol.launch_dependents;");  // see pack_kernel
  __shared__ pack_source<T> srcs[pack_max];
  __shared__ signed char col_src[::lori::detail::merge_stream::max_kp];  // packed column -> source (-1: none)
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < a.count) srcs[tid] = a.src[tid];
  if (tid < ::lori::detail::merge_stream::max_kp) {
    int t = -1;
    if (tid >= a.c_begin && tid < a.c_end)
      for (int q = 0; q < a.count; ++q)
        if (a.src[q].off <= tid) t = q;
    col_src[tid] = static_cast<signed char>(t);
  }
  __syncthreads();
  const index_t nb = a.d << a.lg_nch, k8 = (a.k + 7) / 8;
  const index_t total = nb + (a.c_end - a.c_begin) * k8;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + tid; e < total; e += tpack_batch * stride) {
    tpack_chunk c[tpack_batch];
#pragma unroll
    for (int u = 0; u < tpack_batch; ++u) {
      c[u].mask = 0;
      if (e + u * stride < total) c[u] = tpack_load(a, srcs, col_src, e + u * stride, nb, k8);
    }
#pragma unroll
    for (int u = 0; u < tpack_batch; ++u)
      if (c[u].mask != 0) tpack_store(c[u]);
  }
}

template <class T>
index_t source_rank(const merge_source<T>& src) {
  return src.B_sparse != nullptr && src.B_dense.empty() ? src.B_sparse->cols() : src.B_dense.cols();
}

inline std::size_t align256(std::size_t b) { return (b + 255) / 256 * 256; }

// With 16-bit storage and differing per-adapter scales, s_t*B_t cannot go into the GEMM's alpha and
// rounding it to T would add a 2^-9 (bf16) relative error per term; the packed operand is then split
// into hi + lo parts (doubling the GEMM's K), which keeps the product accurate to ~2^-17.
template <class T>
bool needs_split(const std::vector<merge_source<T>>& sources) {
  bool differ = false;
  for (const auto& s : sources) differ = differ || s.scale != sources.front().scale;
  return differ && !std::is_same_v<T, float>;
}

// Operand layout of the streaming kernel (16-bit W): Bcat holds the raw Bₜ (no scale), adapters grouped
// into scale segments (runs of equal sₜ), each segment's columns padded with zeros to a multiple of 16 so
// that no 16-deep mma step spans two scales; the scales stay in fp32 (kernel parameters).
struct stream_layout {
  std::vector<index_t> off;  // column of Bcat (row of Acat) where each source starts
  index_t kp = 0;            // padded depth
  unsigned long long seg_end = 0;
  std::vector<float> seg_scale;
};

template <class T>
stream_layout make_stream_layout(const std::vector<merge_source<T>>& sources) {
  stream_layout L;
  index_t pos = 0;
  for (std::size_t t = 0; t < sources.size(); ++t) {
    L.off.push_back(pos);
    pos += source_rank(sources[t]);
    if (t + 1 == sources.size() || sources[t + 1].scale != sources[t].scale) {
      pos = (pos + 15) / 16 * 16;
      if (pos / 16 - 1 < detail::merge_stream::max_ksteps) L.seg_end |= 1ull << (pos / 16 - 1);
      L.seg_scale.push_back(sources[t].scale);
    }
  }
  L.kp = pos;
  return L;
}

// Tiled operands of the streaming kernel (see pack_args): Bcat d rows, Acat ntc x 128 rows (ntc column
// tiles), every row merge_stream::pitch elements.
template <class T>
std::size_t stream_bcat_bytes(index_t d) {
  return align256(static_cast<std::size_t>(d * detail::merge_stream::pitch) * sizeof(T));
}
template <class T>
std::size_t stream_workspace_bytes(index_t d, index_t k) {
  return stream_bcat_bytes<T>(d) +
         align256(static_cast<std::size_t>(detail::ceil_div(k, 128) * 128 * detail::merge_stream::pitch) * sizeof(T));
}

/// True when merge_into(W, sources) takes the streaming tensor-core kernel: 16-bit W, W 16-byte aligned
/// with k and its leading dimension multiples of 8 (16-byte rows), padded depth kp <= 128, scales
/// nonzero, finite and within 2^32 of each other. Otherwise (fp32, unaligned W, deeper sums, a zero
/// scale) the cuBLAS route runs.
template <class T>
bool stream_kernel_applies(row_major_view<T> W, const std::vector<merge_source<T>>& sources) {
  if constexpr (!detail::is_16bit_v<T>) {
    return false;
  } else {
    const index_t d = W.rows(), k = W.cols();
    if (d <= 0 || k <= 0 || sources.empty()) return false;
    const index_t tiles = detail::ceil_div(d, detail::merge_stream::bm) * detail::ceil_div(k, detail::merge_stream::bn);
    // The kernel's running rescale (acc *= s_j / s_j+1) needs nonzero finite scales within 2^32 of each
    // other (no overflow or underflow of the rescaled partial sums); anything else takes cuBLAS.
    double lo = HUGE_VAL, hi = 0.0;
    for (const auto& s : sources) {
      const double a = std::fabs(static_cast<double>(s.scale));
      lo = std::min(lo, a);
      hi = std::max(hi, a);
    }
    if (!(lo > 0.0) || !(hi < HUGE_VAL) || hi > lo * 4294967296.0) return false;
    return k % 8 == 0 && W.ld() % 8 == 0 && reinterpret_cast<std::uintptr_t>(W.data()) % 16 == 0 &&
           make_stream_layout(sources).kp <= detail::merge_stream::max_kp && tiles <= index_t{1} << 30;
  }
}

// Packs the sources (in groups of pack_max per launch) into Bcat (d x ldc) and Acat (rows x k): source t
// at column/row off[t], its range ending where the next begins (or at `end`); columns past its rank zero.
// `tiled`: the streaming kernel's layout (pack_tiled_kernel; end <= merge_stream::max_kp, unscaled).
template <class T>
void pack_all(context& ctx, const std::vector<merge_source<T>>& sources, index_t d, index_t k, index_t ldc,
              const std::vector<index_t>& off, index_t end, bool scaled, bool split, bool tiled, T* Bcat, T* Acat) {
  for (std::size_t first = 0; first < sources.size(); first += pack_max) {
    pack_head<T> h{};  // the fields both pack kernels share
    std::size_t q = first;
    for (; q < sources.size() && q < first + pack_max; ++q) {
      const auto& src = sources[q];
      auto& ps = h.src[h.count++];
      ps.A = src.A.data();
      ps.lda = src.A.ld();
      const bool sparse = src.B_dense.empty();
      ps.B = sparse ? nullptr : src.B_dense.data();
      ps.ldb = sparse ? 0 : src.B_dense.ld();
      if (sparse) ps.S = src.B_sparse->view();
      ps.scale = scaled ? src.scale : 1.0f;
      ps.off = off[q];
      ps.r = source_rank(src);
    }
    h.d = d;
    h.k = k;
    h.c_begin = off[first];
    h.c_end = q < sources.size() ? off[q] : end;
    h.Bcat = Bcat;
    h.Acat = Acat;
    const index_t w = h.c_end - h.c_begin;
    if constexpr (sizeof(T) == 2) {
      if (tiled) {
        tpack_args<T> a{};
        static_cast<pack_head<T>&>(a) = h;
        a.ch0 = static_cast<int>(h.c_begin / 8);
        a.nch = static_cast<int>(detail::ceil_div(h.c_end, 8) - h.c_begin / 8);
        a.lg_nch = 0;
        while ((1 << a.lg_nch) < a.nch) ++a.lg_nch;
        const index_t items = (d << a.lg_nch) + w * detail::ceil_div(k, 8);
        const index_t blocks = std::min<index_t>(detail::ceil_div(items, 256 * tpack_batch), index_t{16} * 1024);
        pack_tiled_kernel<T><<<detail::grid_dim(blocks), 256, 0, ctx.stream()>>>(a);
        LORI_CUDA_CHECK_LAUNCH();
        continue;
      }
    }
    pack_args<T> a{};
    static_cast<pack_head<T>&>(a) = h;
    a.R = ldc;
    a.split = split;
    const index_t items = d * detail::ceil_div(w, 8) + w * detail::ceil_div(k, 8);
    const index_t blocks = std::min<index_t>(detail::ceil_div(items, 256), index_t{8} * 1024);
    pack_kernel<T><<<detail::grid_dim(blocks), 256, 0, ctx.stream()>>>(a);
    LORI_CUDA_CHECK_LAUNCH();
  }
}

// Probe modes of the streaming route (benchmarks only; 0 = the real merge): bits of `probe`.
inline constexpr int probe_no_math = 1;    // the kernel's memory pipeline with ΔW = 0 (W rewritten unchanged)
inline constexpr int probe_no_pdl = 2;     // plain launch after the pack kernel
inline constexpr int probe_no_pack = 4;    // the kernel alone (operands as left in the workspace)
inline constexpr int probe_no_kernel = 8;  // the pack kernel alone
inline constexpr int probe_no_w_io = 16;   // the kernel without W's loads and stores (operands + math)

// The streaming-kernel route (requires stream_kernel_applies and a checked workspace).
template <class T>
void merge_stream_route(context& ctx, row_major_view<T> W, const std::vector<merge_source<T>>& sources,
                        void* workspace, int probe = 0) {
  const index_t d = W.rows(), k = W.cols();
  const stream_layout L = make_stream_layout(sources);
  T* Bcat = static_cast<T*>(workspace);
  T* Acat = reinterpret_cast<T*>(static_cast<unsigned char*>(workspace) + stream_bcat_bytes<T>(d));
  if ((probe & probe_no_pack) == 0) pack_all<T>(ctx, sources, d, k, L.kp, L.off, L.kp, false, false, true, Bcat, Acat);
  if ((probe & probe_no_kernel) != 0) return;
  detail::merge_stream::params p{};
  p.W = W.data();
  p.ldw = W.ld();
  p.d = d;
  p.k = k;
  p.Bcat = Bcat;
  p.Acat = Acat;
  p.kp = static_cast<int>(L.kp);
  p.ntc = static_cast<int>(detail::ceil_div(k, detail::merge_stream::bn));
  p.tiles = static_cast<int>(detail::ceil_div(d, detail::merge_stream::bm)) * p.ntc;
  p.seg_end = L.seg_end;
  for (std::size_t j = 0; j < L.seg_scale.size(); ++j)  // one rounding of each ratio (see merge_stream.cuh)
    p.seg_mul[j] = j + 1 < L.seg_scale.size()
                       ? static_cast<float>(static_cast<double>(L.seg_scale[j]) / static_cast<double>(L.seg_scale[j + 1]))
                       : L.seg_scale[j];
  p.mode = ((probe & probe_no_math) == 0 ? detail::merge_stream::mode_math : 0) |
           ((probe & probe_no_w_io) == 0 ? detail::merge_stream::mode_w_io : 0);
  detail::merge_stream::launch<T>(p, ctx.sm_count(), ctx.stream(), (probe & probe_no_pdl) == 0);
}

// The cuBLAS route (checked sources and workspace): one GEMM with beta = 1 over the packed operands.
template <class T>
void merge_cublas_route(context& ctx, row_major_view<T> W, const std::vector<merge_source<T>>& sources,
                        void* workspace) {
  const index_t d = W.rows(), k = W.cols();
  std::vector<index_t> off;
  index_t R = 0;
  for (const auto& src : sources) {
    off.push_back(R);
    R += source_rank(src);
  }
  bool same_scale = true;
  for (const auto& s : sources) same_scale = same_scale && s.scale == sources.front().scale;
  const bool split = needs_split(sources);
  const index_t K = split ? 2 * R : R;   // GEMM depth
  T* Bcat = static_cast<T*>(workspace);  // d x K
  T* Acat = reinterpret_cast<T*>(static_cast<unsigned char*>(workspace) +
                                 align256(static_cast<std::size_t>(d * K) * sizeof(T)));  // K x k
  const float alpha = same_scale ? sources.front().scale : 1.0f;
  pack_all<T>(ctx, sources, d, k, R, off, R, !same_scale, split, false, Bcat, Acat);
  const cudaDataType_t t = detail::cuda_data_type<T>();
  detail::gemm_row_major(ctx.cublas(), false, false, d, k, K, alpha, Bcat, K, Acat, k, 1.0f, W.data(), W.ld(), t, t);
}

}  // namespace detail_merge

template <class T>
std::size_t merge_workspace_bytes(index_t d, index_t k, const std::vector<merge_source<T>>& sources) {
  LORI_EXPECTS(d >= 0 && k >= 0, "merge_workspace_bytes: negative size");
  index_t R = 0;
  for (const auto& s : sources) R += detail_merge::source_rank(s);
  if (detail_merge::needs_split(sources)) R *= 2;
  std::size_t bytes = detail_merge::align256(static_cast<std::size_t>(d * R) * sizeof(T)) +
                      detail_merge::align256(static_cast<std::size_t>(R * k) * sizeof(T));
  if constexpr (detail::is_16bit_v<T>) {  // the streaming kernel's padded layout, when it may run
    const index_t kp = detail_merge::make_stream_layout(sources).kp;
    if (kp <= detail::merge_stream::max_kp) bytes = std::max(bytes, detail_merge::stream_workspace_bytes<T>(d, k));
  }
  return bytes;
}

template <class T>
void merge_into(context& ctx, row_major_view<T> W, const std::vector<merge_source<T>>& sources, void* workspace,
                std::size_t workspace_bytes) {
  static_assert(detail::is_cuda_storage_v<T>, "merge_into: T must be float, bfloat16 or half");
  const index_t d = W.rows(), k = W.cols();
  index_t R = 0;
  for (const auto& src : sources) {
    const bool sparse = src.B_sparse != nullptr && src.B_dense.empty();
    LORI_EXPECTS(sparse || src.B_sparse == nullptr, "merge_into: give either B_dense or B_sparse, not both");
    const index_t r = detail_merge::source_rank(src);
    LORI_EXPECTS(r >= 1, "merge_into: every adapter needs rank >= 1 (B missing?)");
    LORI_EXPECTS(src.A.rows() == r && src.A.cols() == k, "merge_into: A must be r x k");
    LORI_EXPECTS(sparse ? src.B_sparse->rows() == d : src.B_dense.rows() == d, "merge_into: B must be d x r");
    LORI_EXPECTS(src.scale == src.scale, "merge_into: scale is NaN");
    R += r;
  }
  if (d == 0 || k == 0 || R == 0) return;
  LORI_EXPECTS(workspace != nullptr && workspace_bytes >= merge_workspace_bytes(d, k, sources),
               "merge_into: workspace missing or smaller than merge_workspace_bytes()");
  LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % 256 == 0, "merge_into: workspace must be 256-byte aligned");
  if constexpr (detail::is_16bit_v<T>) {
    if (detail_merge::stream_kernel_applies(W, sources)) {
      detail_merge::merge_stream_route(ctx, W, sources, workspace);
      return;
    }
  }
  detail_merge::merge_cublas_route(ctx, W, sources, workspace);
}

}  // namespace lori::cuda

#endif  // LORI_CUDA_MERGE_CUH
