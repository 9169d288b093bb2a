// lori/detail/merge_stream.cuh - private: the W-streaming tensor-core kernel behind lori::cuda::merge_into
// for 16-bit W (W += Σₜ sₜ·Bₜ·Aₜ over packed operands, see merge.cuh).
//
// Design: a copy kernel first. One persistent block of 8 warps per SM owns a contiguous run of 128 x 128
// tiles of W in band-major order (tile i = (band, column tile)). Its W tiles stream through a 3-stage
// ring in shared memory, loaded with 16-byte cp.async by all threads (completion: one mbarrier per
// stage, one cp.async-triggered arrive per thread), issued 2-3 tiles ahead, so W's reads stay in flight
// while the tensor cores work; results leave with 16-byte coalesced stores. The packed operands come
// from L2, pre-tiled and pre-padded by the pack kernel so that each is ONE cp.async.bulk copy (byte
// count on an mbarrier): the block's 128-row Bcat band (loaded when the band changes, then held by each
// warp in registers as the A operand of all its MMAs: 128 registers for 64 rows x depth 128) and the
// tile's depth x 128 Acat tile (2-stage ring; the only operand read from shared memory per k-step).
// (A first version loaded every 256-byte row with its own bulk copy: the copy engine's per-request cost
// made that 4.4x slower than a copy of W.) The depth is at most 128 (one K chunk); deeper sums take cuBLAS.
// ΔW_tile = Bcat_band · Acat_tile runs on mma.sync.m16n8k16 (bf16/fp16 in, fp32 accumulate; ldmatrix
// from padded rows, conflict-free). Scales stay in fp32, never rounded to 16 bits: Bcat holds the raw
// Bₜ, grouped into scale segments (consecutive adapters with one scale), and ONE fp32 accumulator runs
// through them with acc *= s_j / s_j+1 at the end of segment j and acc *= s_last at the end, so that
// acc = Σ_j s_j·(B_j·A_j) (each term's factor carries ≤ 2 T fp32 roundings: relative ≤ 2T·2^-24).
// W + acc is rounded once to T, in place in the shared W tile.
#ifndef LORI_DETAIL_MERGE_STREAM_CUH
#define LORI_DETAIL_MERGE_STREAM_CUH

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"

#include "lori/core/float16.hpp"
#include "lori/detail/cuda_common.cuh"
#include "lori/error.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace lori::detail::merge_stream {

inline constexpr int bm = 128;             // W tile rows (= Bcat band rows)
inline constexpr int bn = 128;             // W tile columns
inline constexpr int kc = 128;             // K chunk (rows of the Acat tile, columns of the Bcat band)
inline constexpr int pitch = 136;          // shared row pitch in elements: 272 B, 16-byte aligned and
                                           // 68 words (≡ 4 mod 32): 8 rows × 16 B hit 32 distinct banks
inline constexpr int buf_bytes = 128 * pitch * 2;  // one 128-row buffer (34 816 B)
inline constexpr int w_stages = 3, a_stages = 2;
inline constexpr int threads = 256;        // 8 warps: 2 (rows) x 4 (columns), 64 x 32 outputs each
inline constexpr int max_ksteps = kc / 16;  // kp <= 128: one K chunk (deeper sums take cuBLAS)
inline constexpr int max_kp = kc;
inline constexpr std::size_t smem_bytes = static_cast<std::size_t>(w_stages + a_stages + 1) * buf_bytes + 64;

inline constexpr int mode_math = 1;  // compute ΔW (else ΔW = 0: the memory pipeline alone)
inline constexpr int mode_w_io = 2;  // load and store W (else: the operand pipeline and math alone)

struct params {
  void* W;
  index_t ldw, d, k;
  const void* Bcat;  // tiled d x kp (see detail_merge::pack_args; segments padded to 16 with zeros)
  const void* Acat;  // tiled kp x k
  int kp, ntc, tiles;  // padded depth (<= 128), column tiles, tiles
  unsigned long long seg_end;  // bit q set: k-step q (16 deep) is the last of a scale segment
  float seg_mul[max_ksteps];   // at the end of segment j: acc *= s_j / s_j+1 (the last: acc *= s_last)
  int mode;                     // mode_math | mode_w_io for the merge; probes drop one (benchmarks)
};

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(std::uint32_t bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// One 1-D bulk copy global -> shared (16-byte aligned addresses, size a multiple of 16), completing
// its bytes on the mbarrier.
__device__ __forceinline__ void bulk_g2s(std::uint32_t dst, const void* src, std::uint32_t bytes, std::uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
template <class T>
__device__ __forceinline__ void mma16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  if constexpr (std::is_same_v<T, ::lori::bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}
// Two adjacent 16-bit values (low half = lower column) <-> two floats; pack rounds to nearest even.
template <class T>
__device__ __forceinline__ float2 unpack2(std::uint32_t u) {
  if constexpr (std::is_same_v<T, ::lori::bfloat16>) {
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
  } else {
    return make_float2(__half2float(__ushort_as_half(static_cast<unsigned short>(u & 0xffffu))),
                       __half2float(__ushort_as_half(static_cast<unsigned short>(u >> 16))));
  }
}
template <class T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi) {
  // One cvt of both values (the first operand goes to the upper half), each rounded to nearest even.
  std::uint32_t r;
  if constexpr (std::is_same_v<T, ::lori::bfloat16>) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
}

// W (d x k, 16-bit T, ldw % 8 == 0, 16-byte aligned, k % 8 == 0) += Bcat · diag(segment scales) · Acat.
// Grid: at most one block per tile (every block owns >= 1 tile), one block per SM (shared memory).
template <class T>
__global__ void __launch_bounds__(threads, 1) merge_stream_kernel(const __grid_constant__ params p) {
  unsigned char* smem = ::lori::detail::dynamic_smem();
  const std::uint32_t s0 = smem_u32(smem);
  const std::uint32_t a_s = s0 + w_stages * buf_bytes;  // Acat ring
  const std::uint32_t b_s = a_s + a_stages * buf_bytes;  // Bcat band
  const std::uint32_t bars = b_s + buf_bytes;            // w_full[3], a_full[2], b_full (8 B each)
  const std::uint32_t b_bar = bars + 8 * (w_stages + a_stages);
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int t_begin = static_cast<int>(static_cast<long long>(blockIdx.x) * p.tiles / gridDim.x);
  const int t_end = static_cast<int>((static_cast<long long>(blockIdx.x) + 1) * p.tiles / gridDim.x);
  const int nsteps = t_end - t_begin;  // operand steps (one per tile)
  T* const W = static_cast<T*>(p.W);
  const T* const Bcat = static_cast<const T*>(p.Bcat);
  const T* const Acat = static_cast<const T*>(p.Acat);

  if (tid == 0) {
    for (int b = 0; b < w_stages; ++b) mbar_init(bars + 8 * b, threads);  // one cp.async arrive per thread
    for (int b = w_stages; b < w_stages + a_stages + 1; ++b) mbar_init(bars + 8 * b, 1);  // bulk copies
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  // W tile i -> its ring slot: every thread copies 8 16-byte chunks (rows tid/16 + 16 j, column chunk
  // tid % 16: 16 threads cover one 256-byte row) with cp.async (L2 only), then arms an arrive on the
  // slot's barrier that fires when its copies have landed. Rows past d, chunks past k are skipped
  // (their results are never stored).
  const auto issue_w = [&](int i) {
    const int band = i / p.ntc, ct = i - band * p.ntc;
    const index_t r0 = static_cast<index_t>(band) * bm, c0 = static_cast<index_t>(ct) * bn;
    const int slot = (i - t_begin) % w_stages;
    const int cc = (tid & 15) * 8;
    if (tid == 0 && i != t_begin && ct == 0) {
      // This tile starts a new band, whose Bcat band will be loaded synchronously 2-3 tiles from now:
      // bring it into L2 now (L2 is coherent: harmless even before the pack kernel has finished).
      const index_t rows = p.d - r0 < bm ? p.d - r0 : bm;
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(Bcat + r0 * pitch),
                   "r"(static_cast<std::uint32_t>(rows * pitch * 2))
                   : "memory");
    }
#pragma unroll
    for (int j = 0; j < bm / 16; ++j) {
      const int row = (tid >> 4) + 16 * j;
      if (r0 + row < p.d && c0 + cc < p.k && (p.mode & mode_w_io) != 0)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s0 + slot * buf_bytes + (row * pitch + cc) * 2),
                     "l"(W + (r0 + row) * p.ldw + c0 + cc)
                     : "memory");
    }
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bars + 8 * slot) : "memory");
  };
  // Tile t_begin + q -> A ring slot q % a_stages: ONE bulk copy of the pre-tiled, pre-padded Acat tile
  // (thread 0).
  const auto issue_a = [&](int q) {
    const int ct = (t_begin + q) % p.ntc;
    const int slot = q % a_stages;
    const std::uint32_t bar = bars + 8 * (w_stages + slot), bytes = static_cast<std::uint32_t>(p.kp * pitch * 2);
    mbar_expect_tx(bar, bytes);
    bulk_g2s(a_s + slot * buf_bytes, Acat + static_cast<index_t>(ct) * kc * pitch, bytes, bar);
  };
  // Bcat band: ONE bulk copy of its rows (thread 0).
  const auto issue_b = [&](int band) {
    const index_t r0 = static_cast<index_t>(band) * bm;
    const index_t rows = p.d - r0 < bm ? p.d - r0 : bm;
    const std::uint32_t bytes = static_cast<std::uint32_t>(rows * pitch * 2);
    mbar_expect_tx(b_bar, bytes);
    bulk_g2s(b_s, Bcat + r0 * pitch, bytes, b_bar);
  };

  // W does not depend on the pack kernel before this one (launched with programmatic stream
  // serialization): its first tiles load while that kernel finishes. Thread 0, which issues every
  // Acat/Bcat load, waits for that kernel's completion first.
  for (int j = 0; j < w_stages && t_begin + j < t_end; ++j) issue_w(t_begin + j);
  if (tid == 0) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    for (int q = 0; q < a_stages && q < nsteps; ++q) issue_a(q);
  }

  const int wm = warp >> 2, wn = warp & 3;  // warp tile: rows [64 wm, +64), columns [32 wn, +32)
  const int g = lane >> 2, t4 = lane & 3;   // accumulator fragment: rows g, g + 8; columns 2 t4, +1
  const int ksteps = p.kp / 16;             // kp <= 128: one K chunk
  int b_band = -1;                          // band whose Bcat rows are in the registers below
  std::uint32_t b_phase = 0;
  // The warp's Bcat rows (A operand of every MMA) for the whole depth stay in registers for all tiles
  // of a band: only the Acat tile (B operand) is read from shared memory per k-step.
  std::uint32_t af[kc / 16][4][4];
  float acc[4][4][4];
  for (int i = t_begin; i < t_end; ++i) {
    const int band = i / p.ntc, ct = i - band * p.ntc;
    const int q = i - t_begin;  // operand step = tile
    if (band != b_band) {       // nobody reads B now: a __syncthreads followed the previous MMAs
      if (tid == 0) issue_b(band);
      mbar_wait_parity(b_bar, b_phase);
      b_phase ^= 1u;
      b_band = band;
      const std::uint32_t a_base =
          b_s + static_cast<std::uint32_t>(((wm * 64 + (lane & 15)) * pitch + (lane >> 4) * 8) * 2);
#pragma unroll
      for (int ks = 0; ks < kc / 16; ++ks)
        if (ks < ksteps)
#pragma unroll
          for (int mi = 0; mi < 4; ++mi) ldsm_x4(a_base + static_cast<std::uint32_t>((mi * 16 * pitch + ks * 16) * 2), af[ks][mi]);
    }
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
    mbar_wait_parity(bars + 8 * (w_stages + q % a_stages), static_cast<std::uint32_t>((q / a_stages) & 1));
    if ((p.mode & mode_math) != 0) {
      const std::uint32_t b_base =
          a_s + static_cast<std::uint32_t>((q % a_stages) * buf_bytes) +
          static_cast<std::uint32_t>((((lane & 7) + ((lane >> 3) & 1) * 8) * pitch + wn * 32 + (lane >> 4) * 8) * 2);
      int seg = 0;
      std::uint32_t bf[2][2][4];  // k-step ks+1's fragments load before k-step ks's MMAs
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) ldsm_x4_t(b_base + static_cast<std::uint32_t>(nj * 16 * 2), bf[0][nj]);
#pragma unroll
      for (int ks = 0; ks < kc / 16; ++ks) {
        if (ks < ksteps) {
          if (ks + 1 < ksteps)
#pragma unroll
            for (int nj = 0; nj < 2; ++nj)
              ldsm_x4_t(b_base + static_cast<std::uint32_t>(((ks + 1) * 16 * pitch + nj * 16) * 2), bf[(ks + 1) & 1][nj]);
#pragma unroll
          for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
              mma16816<T>(acc[mi][ni], af[ks][mi], bf[ks & 1][ni >> 1][(ni & 1) * 2], bf[ks & 1][ni >> 1][(ni & 1) * 2 + 1]);
          if ((p.seg_end >> ks) & 1ull) {  // end of a scale segment: acc *= s_j / s_j+1
            const float m = p.seg_mul[seg++];
#pragma unroll
            for (int mi = 0; mi < 4; ++mi)
#pragma unroll
              for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[mi][ni][e] *= m;
          }
        }
      }
    }
    // Epilogue: W tile (stage slot) += acc, rounded once to T, in place; then 16-byte stores.
    const int slot = (i - t_begin) % w_stages;
    mbar_wait_parity(bars + 8 * slot, static_cast<std::uint32_t>(((i - t_begin) / w_stages) & 1));
    unsigned char* wt = smem + slot * buf_bytes;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = wm * 64 + mi * 16 + g + 8 * h, col = wn * 32 + ni * 8 + 2 * t4;
          std::uint32_t* e = reinterpret_cast<std::uint32_t*>(wt + (row * pitch + col) * 2);
          const float2 w = unpack2<T>(*e);
          *e = pack2<T>(w.x + acc[mi][ni][2 * h], w.y + acc[mi][ni][2 * h + 1]);
        }
    __syncthreads();  // W tile complete; every warp is done with A slot q % a_stages (and with B)
    if (tid == 0 && q + a_stages < nsteps) issue_a(q + a_stages);
    {
      const index_t r0 = static_cast<index_t>(band) * bm, c0 = static_cast<index_t>(ct) * bn;
      const int cc = (tid & 15) * 8;
#pragma unroll
      for (int j = 0; j < bm / 16; ++j) {
        const int row = (tid >> 4) + 16 * j;
        if (r0 + row < p.d && c0 + cc < p.k && (p.mode & mode_w_io) != 0) {
          const uint4 v = *reinterpret_cast<const uint4*>(wt + (row * pitch + cc) * 2);
          __stcs(reinterpret_cast<uint4*>(W + (r0 + row) * p.ldw + c0 + cc), v);  // streaming: evict-first in L2
        }
      }
    }
    __syncthreads();  // the W slot is free again
    if (i + w_stages < t_end) issue_w(i + w_stages);
  }
}

// Launch on `stream` with grid = min(tiles, SMs). Preconditions are checked by the caller.
template <class T>
void launch(const params& p, int sm_count, cudaStream_t stream, bool pdl = true) {
  static_assert(::lori::detail::is_16bit_v<T>, "merge_stream: 16-bit W only");
  LORI_CUDA_CHECK(cudaFuncSetAttribute(merge_stream_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem_bytes)));
  // Programmatic dependent launch: the blocks may start while the preceding kernel on the stream (the
  // pack kernel, which triggers at its start) still runs; thread 0 waits for its completion
  // (griddepcontrol.wait) before the first Acat/Bcat load. Every other access of the kernel is to W.
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(p.tiles < sm_count ? p.tiles : sm_count));
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem_bytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  LORI_CUDA_CHECK(cudaLaunchKernelEx(&cfg, merge_stream_kernel<T>, p));
  LORI_CUDA_CHECK_LAUNCH();
}

}  // namespace lori::detail::merge_stream

#endif  // LORI_DETAIL_MERGE_STREAM_CUH
