// lori/detail/merge_sparse.cuh - private: the sparse CUDA-core kernel behind lori::cuda::merge_into for
// 16-bit W and LoRI-S adapters (every Bₜ a sparse_b): W += Σₜ sₜ·Bₜ·Aₜ from the kept entries of each Bₜ.
//
// Row i of ΔW is Σ over the kept (t, c) of row i of sₜ·Bₜ(i, c)·Aₜ(c, :): ~12.8 terms per row for four
// rank-32 adapters at 90 % sparsity, 10x fewer FMAs than the dense product, so CUDA cores suffice and
// no dense operand is packed. Design (a copy kernel first):
// * persistent blocks of 8 warps, several per SM; the work is (strip, row) items, a strip being 256
//   columns of W (512 bytes of a row: one warp, 8 columns = one 16-byte access per lane), in
//   strip-major order; block b owns a contiguous run of items (so it changes strip at most a few times),
//   warp w the items w, w + 8, ... of that run (the 8 warps walk 8 consecutive rows);
// * the block's strip of every Aₜ (rows Σ rₜ <= 128, 16-bit as stored) sits in shared memory, loaded
//   with 16-byte cp.async when the block enters the strip (between two barriers);
// * W: every lane keeps its 16-byte chunk of the next WA rows in a register ring, loaded WA rows before
//   use, so the W stream keeps ~WA · 512 bytes per warp in flight like a copy kernel;
// * the kept entries: a first kernel (entries_kernel, one warp per row) writes every row's list of
//   (sₜ·b in fp32, byte offset of Aₜ's row c in the shared strip), adapters in order, CSR order within
//   each, and (first, count) per row; the merge kernel is launched with programmatic dependent launch,
//   loads its first W rows and A strip, then waits for the lists. Per row: its (first, count) two rows
//   ahead, its first 32 entries (one per lane) one row ahead, and at the row the lanes write them to a
//   per-warp stage; every lane runs acc[8] += (s·b) · A(c, its 8 columns) per entry: one broadcast
//   stage read per two entries, one 16-byte A read, 8 conversions and 8 FFMA. Rows with more than 32
//   entries take further chunks of 32 at the row.
// * acc starts at W's 8 values (exact in fp32); the result is rounded once to T (cvt.rn.*x2) and stored
//   with one 16-byte store; a row without any kept entry is not written (W + 0 = W).
// Deterministic (fixed order: adapters in order, columns ascending); fp32 products s·b (one rounding)
// times A exact in the FMA, fp32 accumulation of W and at most Σ rₜ terms, one rounding to T.
#ifndef LORI_DETAIL_MERGE_SPARSE_CUH
#define LORI_DETAIL_MERGE_SPARSE_CUH

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"

#include "lori/core/float16.hpp"
#include "lori/detail/cuda_common.cuh"
#include "lori/detail/merge_stream.cuh"
#include "lori/error.hpp"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace lori::detail::merge_sparse {

// Kernel shapes: CPL W columns per lane (8: one 16-byte chunk, 256-column strips; 16: two chunks,
// 512-column strips), THREADS per block, MINB blocks per SM (for the register budget).
template <int CPL, int THREADS, int MINB>
struct shape {
  static constexpr int cpl = CPL, threads = THREADS, warps = THREADS / 32, min_blocks = MINB;
  static constexpr int strip = 32 * CPL;       // W columns per item (one warp)
  static constexpr int row_bytes = strip * 2;  // one A row of a strip in shared memory (16-bit)
  static constexpr int vec = CPL / 8;          // 16-byte W chunks per lane
};
using narrow = shape<8, 256, 3>;  // the default: 3 blocks of 8 warps per SM (70 KB of shared memory each)
using wide = shape<16, 512, 1>;   // variant (probe): 1 block of 16 warps per SM, 134 KB

inline constexpr int max_sources = 32;  // one lane per adapter in the entry lists' scan
inline constexpr int max_depth = 128;   // Σ rₜ: A strip rows in shared memory (64 KB: 3 narrow blocks per SM)
inline constexpr int w_ahead = 4;       // W rows in flight per warp (register ring)

inline constexpr int mode_math = 1;  // entries and FMAs (else ΔW = 0: W streamed through unchanged)
inline constexpr int mode_w_io = 2;  // load and store W (else: the entry and math pipeline alone)

struct source {
  const std::int32_t* row_ptr;  // d + 1
  const std::int32_t* col_idx;  // nnz, ascending per row
  const void* values;           // nnz 16-bit values
  const void* A;                // r x k, leading dimension lda
  index_t lda;
  float scale;
  int off;  // first row of this adapter's A in the shared strip (Σ of the earlier ranks)
  int r;
};

struct params {
  source src[max_sources];
  void* W;
  index_t ldw, d, k;
  index_t items;  // strips x d (set by launch)
  int count;      // adapters
  int depth;      // Σ rₜ
  int a_vec;      // every Aₜ 16-byte aligned with lda % 8 == 0: 16-byte cp.async of the strip
  int mode;       // mode_math | mode_w_io for the merge; probes drop one (benchmarks)
  // The entry lists (written by entries_kernel): row i's n_i kept entries, adapters in order and CSR
  // order within each, as (sₜ·b in fp32 bits, row of the shared A strip: off_t + c) at
  // ents[lo_i .. lo_i + n_i), rows[i] = (lo_i, n_i), lo_i = Σₜ row_ptrₜ[i].
  const int2* rows;
  const uint2* ents;
};

template <class S>
__host__ __device__ constexpr std::size_t src_offset(int depth) {
  return static_cast<std::size_t>(depth) * S::row_bytes;
}
template <class S>
__host__ __device__ constexpr std::size_t stage_offset(int depth, int count) {
  return src_offset<S>(depth) + (static_cast<std::size_t>(count) * sizeof(source) + 15) / 16 * 16;
}
template <class S>
__host__ __device__ constexpr std::size_t smem_bytes(int depth, int count) {
  return stage_offset<S>(depth, count) + static_cast<std::size_t>(S::warps) * 32 * 8;  // a 32-entry stage per warp
}

__device__ __forceinline__ uint4 ld_w(const void* p) {
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ void st_w(void* p, uint4 v) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}

template <class T>
__device__ __forceinline__ float to_f(std::uint16_t bits) {
  if constexpr (std::is_same_v<T, ::lori::bfloat16>) {
    return __uint_as_float(static_cast<std::uint32_t>(bits) << 16);
  } else {
    return __half2float(__ushort_as_half(bits));
  }
}

// acc[0 .. 8·VEC) += s · (8·VEC 16-bit values of A at a_lane + off).
template <class T, int VEC>
__device__ __forceinline__ void fma_row(float (&acc)[8 * VEC], const unsigned char* a_lane, std::uint32_t s_bits,
                                        std::uint32_t off) {
  const float s = __uint_as_float(s_bits);
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    const uint4 a = *reinterpret_cast<const uint4*>(a_lane + off + 16 * v);
    const std::uint32_t q[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int h = 0; h < 4; ++h) {
      const float2 f = ::lori::detail::merge_stream::unpack2<T>(q[h]);
      acc[8 * v + 2 * h] = fmaf(s, f.x, acc[8 * v + 2 * h]);
      acc[8 * v + 2 * h + 1] = fmaf(s, f.y, acc[8 * v + 2 * h + 1]);
    }
  }
}

// The entry lists (params::rows, ents): one warp per row; lane t < T loads Bₜ's row_ptr[i], [i + 1]; a
// warp scan of the counts gives entry e of the row its adapter and CSR position.
template <class T>
__global__ void __launch_bounds__(256) entries_kernel(const __grid_constant__ params p, int2* rows, uint2* ents) {
  asm volatile("griddepcontrol.launch_dependents;");  // the merge kernel may start loading W now
  // Descriptors to shared memory: lanes index them by adapter (divergent kernel-parameter loads would
  // serialize).
  __shared__ source srcs[max_sources];
  if (static_cast<int>(threadIdx.x) < p.count) srcs[threadIdx.x] = p.src[threadIdx.x];
  __syncthreads();
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const unsigned full = 0xffffffffu;
  const index_t wid = (blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x) >> 5;
  const index_t nw = (static_cast<index_t>(gridDim.x) * blockDim.x) >> 5;
  for (index_t i = wid; i < p.d; i += nw) {
    int lo = 0, cnt = 0;
    if (lane < p.count) {
      lo = __ldg(srcs[lane].row_ptr + i);
      cnt = __ldg(srcs[lane].row_ptr + i + 1) - lo;
    }
    int incl = cnt;
    for (int o = 1; o < p.count; o <<= 1) {
      const int y = __shfl_up_sync(full, incl, o);
      if (lane >= o) incl += y;
    }
    const int n = __shfl_sync(full, incl, p.count - 1);
    const int base = static_cast<int>(__reduce_add_sync(full, static_cast<unsigned>(lo)));  // Σₜ row_ptrₜ[i]
    if (lane == 0) rows[i] = make_int2(base, n);
    for (int e0 = 0; e0 < n; e0 += 32) {
      const int e = e0 + lane;
      int t = 0;
      for (int q = 0; q < p.count; ++q) t += __shfl_sync(full, incl, q) <= e ? 1 : 0;
      t = t < p.count ? t : p.count - 1;
      const int start = __shfl_sync(full, lo - (incl - cnt), t);  // CSR position of entry e = start + e
      if (e < n) {
        const source& S = srcs[t];
        const float b = to_f<T>(__ldg(static_cast<const unsigned short*>(S.values) + start + e));
        const int col = __ldg(S.col_idx + start + e);
        ents[base + e] = make_uint2(__float_as_uint(S.scale * b), static_cast<std::uint32_t>(S.off + col));
      }
    }
  }
}

// Between two barriers (the first: every warp is done with the previous strip), all threads load the A
// strip s of every adapter into shared rows [0, depth), columns past k zero. Out of line: it runs once or
// twice per block, and the hot loop stays small.
template <class T, class S>
__device__ __noinline__ void switch_strip(unsigned char* a_s, const source* srcs, int depth, int count, index_t k, int a_vec,
                                          int s, int tid) {
  __syncthreads();
  const index_t c0 = static_cast<index_t>(s) * S::strip;
  for (int q = tid; q < depth * (S::strip / 8); q += S::threads) {
    const int row = q / (S::strip / 8), cc = (q % (S::strip / 8)) * 8;
    int t = 0;
    while (t + 1 < count && srcs[t + 1].off <= row) ++t;
    const source& Sr = srcs[t];
    const T* a = static_cast<const T*>(Sr.A) + static_cast<index_t>(row - Sr.off) * Sr.lda + c0 + cc;
    unsigned char* dst = a_s + row * S::row_bytes + cc * 2;
    if (a_vec != 0 && c0 + cc + 8 <= k) {
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(static_cast<std::uint32_t>(__cvta_generic_to_shared(dst))),
                   "l"(a)
                   : "memory");
    } else {
      std::uint16_t x[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = c0 + cc + e < k ? reinterpret_cast<const std::uint16_t*>(a)[e] : std::uint16_t{0};
      uint4 v;
      v.x = x[0] | (static_cast<std::uint32_t>(x[1]) << 16);
      v.y = x[2] | (static_cast<std::uint32_t>(x[3]) << 16);
      v.z = x[4] | (static_cast<std::uint32_t>(x[5]) << 16);
      v.w = x[6] | (static_cast<std::uint32_t>(x[7]) << 16);
      *reinterpret_cast<uint4*>(dst) = v;
    }
  }
  asm volatile("cp.async.wait_all;" ::: "memory");
  __syncthreads();
}

// W (d x k, 16-bit T, ldw % 8 == 0, 16-byte aligned, k % 8 == 0) += Σₜ sₜ·Bₜ·Aₜ (see the file comment).
// Grid: at most `items` blocks (every block owns >= 1 item); launched after entries_kernel with
// programmatic stream serialization (or alone for a probe without math).
template <class T, class S>
__global__ void __launch_bounds__(S::threads, S::min_blocks) merge_sparse_kernel(const __grid_constant__ params p) {
  constexpr int WA = w_ahead, VEC = S::vec, NW = S::warps;
  unsigned char* const sm = ::lori::detail::dynamic_smem();
  unsigned char* const a_s = sm;  // depth rows of row_bytes
  source* const srcs = reinterpret_cast<source*>(sm + src_offset<S>(p.depth));
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  uint2* const stage = reinterpret_cast<uint2*>(sm + stage_offset<S>(p.depth, p.count)) + warp * 32;
  const bool math = (p.mode & mode_math) != 0, io = (p.mode & mode_w_io) != 0;

  if (tid < p.count) srcs[tid] = p.src[tid];

  const index_t begin = static_cast<index_t>(blockIdx.x) * p.items / gridDim.x;
  const index_t end = (static_cast<index_t>(blockIdx.x) + 1) * p.items / gridDim.x;
  const index_t first = begin + warp;
  const index_t nj = first < end ? (end - first + NW - 1) / NW : 0;  // this warp's items
  const int s_first = static_cast<int>(begin / p.d), s_last = static_cast<int>((end - 1) / p.d);

  // Item cursor: strip s, row i (d < 2^31, checked by the host).
  struct cursor {
    int s, i;
  };
  const auto at = [&](index_t q) {
    cursor c;
    c.s = static_cast<int>(q / p.d);
    c.i = static_cast<int>(q - static_cast<index_t>(c.s) * p.d);
    return c;
  };
  const int d32 = static_cast<int>(p.d);
  const auto next = [&](cursor& c) {
    c.i += NW;
    while (c.i >= d32) {
      c.i -= d32;
      ++c.s;
    }
  };
  // Column of the lane's 16-byte chunk v of item c; chunks at or past k are neither loaded nor stored.
  const auto w_col = [&](const cursor& c, int v) { return static_cast<index_t>(c.s) * S::strip + lane * S::cpl + 8 * v; };
  const auto w_ptr = [&](const cursor& c, int v) { return static_cast<T*>(p.W) + static_cast<index_t>(c.i) * p.ldw + w_col(c, v); };

  // W of the first WA items: issued before anything waits.
  uint4 wv[WA][VEC];
  cursor cw = at(first);
#pragma unroll
  for (int u = 0; u < WA; ++u) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      wv[u][v] = make_uint4(0u, 0u, 0u, 0u);
      if (io && u < nj && w_col(cw, v) < p.k) wv[u][v] = ld_w(w_ptr(cw, v));
    }
    next(cw);
  }

  // Every warp enters every strip s_first .. s_last of the block's run once, in order (a warp without
  // items in a strip still takes part in its barriers and load).
  int cur = s_first - 1;
  const auto switch_to_next = [&]() {
    ++cur;
    switch_strip<T, S>(a_s, srcs, p.depth, p.count, p.k, p.a_vec, cur, tid);
  };
  switch_to_next();
  // The entry lists come from entries_kernel, launched just before with programmatic stream
  // serialization: W's first rows and the A strip above loaded while it finished. (Without a
  // prerequisite grid this returns at once.)
  asm volatile("griddepcontrol.wait;" ::: "memory");

  // Entry pipeline: the row's list bounds two rows ahead, its first 32 entries (one per lane) one row
  // ahead, the stage at the row.
  struct bounds_t {
    int lo, n;
  };
  const auto bounds = [&](int i) {
    const int2 r = __ldg(p.rows + i);
    return bounds_t{r.x, r.y};
  };
  const auto entry = [&](const bounds_t& b, int e0) {
    return e0 + lane < b.n ? __ldg(p.ents + b.lo + e0 + lane) : make_uint2(0u, 0u);
  };
  const unsigned char* const a_lane = a_s + lane * (2 * S::cpl);

  cursor cc = at(first);  // the item being computed
  cursor cm = cc;         // the bounds' item (two ahead)
  next(cm);
  bounds_t b1{0, 0}, b0{0, 0};
  uint2 en0 = make_uint2(0u, 0u);
  if (math && nj > 0) {
    b0 = bounds(cc.i);
    if (nj > 1) b1 = bounds(cm.i);
    en0 = entry(b0, 0);
  }
  next(cm);

  for (index_t j0 = 0; j0 < nj; j0 += WA) {
#pragma unroll
    for (int u = 0; u < WA; ++u) {
      const index_t j = j0 + u;
      if (j >= nj) break;
      bounds_t bn{0, 0};
      uint2 enn = make_uint2(0u, 0u);
      if (math) {
        if (j + 1 < nj) {
          bn = b1;
          enn = entry(b1, 0);
        }
        if (j + 2 < nj) b1 = bounds(cm.i);
      }
      next(cm);
      while (cur < cc.s) switch_to_next();
      // acc starts at W (exact in fp32); the entries add to it; one rounding at the end.
      float acc[8 * VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const std::uint32_t in[4] = {wv[u][v].x, wv[u][v].y, wv[u][v].z, wv[u][v].w};
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const float2 f = ::lori::detail::merge_stream::unpack2<T>(in[h]);
          acc[8 * v + 2 * h] = f.x;
          acc[8 * v + 2 * h + 1] = f.y;
        }
      }
      const int n = math ? b0.n : 1;
      for (int e0 = 0; e0 < b0.n && math; e0 += 32) {  // chunks of 32 entries; later ones (rare) loaded here
        const uint2 en = e0 == 0 ? en0 : entry(b0, e0);
        const int m = b0.n - e0 < 32 ? b0.n - e0 : 32;
        stage[lane] = make_uint2(en.x, en.y * S::row_bytes);  // A row -> byte offset in the strip
        __syncwarp();
        int e = 0;
        for (; e + 4 <= m; e += 4) {  // four entries per step: two broadcast reads of the stage
          const uint4 e01 = *reinterpret_cast<const uint4*>(stage + e);
          const uint4 e23 = *reinterpret_cast<const uint4*>(stage + e + 2);
          fma_row<T, VEC>(acc, a_lane, e01.x, e01.y);
          fma_row<T, VEC>(acc, a_lane, e01.z, e01.w);
          fma_row<T, VEC>(acc, a_lane, e23.x, e23.y);
          fma_row<T, VEC>(acc, a_lane, e23.z, e23.w);
        }
        for (; e < m; ++e) {
          const uint2 x = stage[e];
          fma_row<T, VEC>(acc, a_lane, x.x, x.y);
        }
        __syncwarp();  // the stage is read out before it is written again
      }
      if (n > 0) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          if (w_col(cc, v) >= p.k) continue;
          uint4 out;
          out.x = ::lori::detail::merge_stream::pack2<T>(acc[8 * v], acc[8 * v + 1]);
          out.y = ::lori::detail::merge_stream::pack2<T>(acc[8 * v + 2], acc[8 * v + 3]);
          out.z = ::lori::detail::merge_stream::pack2<T>(acc[8 * v + 4], acc[8 * v + 5]);
          out.w = ::lori::detail::merge_stream::pack2<T>(acc[8 * v + 6], acc[8 * v + 7]);
          // Without W traffic (a probe) the result is still consumed, so that the math is not removed.
          if (io || (out.x == 0x7fc17fc1u && out.y == 0x12345678u)) st_w(w_ptr(cc, v), out);
        }
      }
      if (io && j + WA < nj) {
#pragma unroll
        for (int v = 0; v < VEC; ++v)
          if (w_col(cw, v) < p.k) wv[u][v] = ld_w(w_ptr(cw, v));
      }
      next(cw);
      next(cc);
      b0 = bn;
      en0 = enn;
    }
  }
  while (cur < s_last) switch_to_next();
}

// entries_kernel, then the merge kernel with programmatic dependent launch, on `stream` (without math,
// a probe, the merge kernel alone). p.rows / p.ents: workspace of d int2 and Σ nnz pairs. `wide`: the
// wide kernel shape (probe). Preconditions are checked by the caller (detail_merge::sparse_route_applies).
template <class T, class S>
void launch_shape(params p, int sm_count, cudaStream_t stream) {
  p.items = ::lori::detail::ceil_div(p.k, S::strip) * p.d;
  const std::size_t smem = smem_bytes<S>(p.depth, p.count);
  const auto kernel = merge_sparse_kernel<T, S>;
  LORI_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int per_sm = 0;
  LORI_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, S::threads, smem));
  const index_t resident = static_cast<index_t>(per_sm > 0 ? per_sm : 1) * sm_count;
  const index_t grid = p.items < resident ? p.items : resident;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(grid));
  cfg.blockDim = dim3(S::threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = (p.mode & mode_math) != 0 ? 1 : 0;
  LORI_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p));
  LORI_CUDA_CHECK_LAUNCH();
}

template <class T>
void launch(const params& p, int sm_count, cudaStream_t stream, bool wide_shape = false) {
  static_assert(::lori::detail::is_16bit_v<T>, "merge_sparse: 16-bit W only");
  if ((p.mode & mode_math) != 0) {
    const index_t blocks = ::lori::detail::ceil_div(p.d, 256 / 32);
    entries_kernel<T><<<::lori::detail::grid_dim(blocks < 4096 ? blocks : 4096), 256, 0, stream>>>(
        p, const_cast<int2*>(p.rows), const_cast<uint2*>(p.ents));
    LORI_CUDA_CHECK_LAUNCH();
  }
  if (wide_shape) {
    launch_shape<T, wide>(p, sm_count, stream);
  } else {
    launch_shape<T, narrow>(p, sm_count, stream);
  }
}

}  // namespace lori::detail::merge_sparse

#endif  // LORI_DETAIL_MERGE_SPARSE_CUH
