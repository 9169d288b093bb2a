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
#include "lori/detail/skinny_gemm.cuh"
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
inline constexpr int mode_w_keep = 4;  // W's loads and stores without the L2 evict-first hint (probe)
inline constexpr int mode_half_runs = 8;  // merge_ws_kernel: blocks own runs of half tiles (not whole tiles)
inline constexpr int mode_store_lag = 16; // merge_ws_kernel: a slot is reloaded 2 stores later (no wait for a fresh store)

struct params {
  void* W;
  index_t ldw, d, k;
  const void* Bcat;  // tiled d x kp (see detail_merge::pack_args; segments padded to 16 with zeros)
  const void* Acat;  // tiled kp x k
  int kp, ntc, tiles;  // padded depth (<= 128), column tiles, tiles
  unsigned long long seg_end;  // bit q set: k-step q (16 deep) is the last of a scale segment
  float seg_mul[max_ksteps];   // at the end of segment j: acc *= s_j / s_j+1 (the last: acc *= s_last)
  int mode;                     // mode_math | mode_w_io for the merge; probes drop one (benchmarks)
  int geo_rows;                 // merge_ws_kernel probe without math: W moved in half tiles of geo_rows rows x
                                // 8192 / geo_rows columns (64 = the merge's geometry)
  int prefetch;                 // merge_ws / merge_strip: also prefetch W's half tile (tile) this many ahead
                                // into L2 (TMA prefetch; 0: none)
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
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
  // Traps (a launch error instead of a hang) if the phase never completes.
  for (long long spin = 0;; ++spin) {
    std::uint32_t done = 0;
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (done != 0) return;
    if (spin > (1ll << 22)) __trap();
  }
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
  if constexpr (std::is_same_v<T, ::lori::bfloat16>) {
    return static_cast<std::uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
           (static_cast<std::uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
  } else {
    return static_cast<std::uint32_t>(__half_as_ushort(__float2half_rn(lo))) |
           (static_cast<std::uint32_t>(__half_as_ushort(__float2half_rn(hi))) << 16);
  }
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
      mbar_wait(b_bar, b_phase);
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
    mbar_wait(bars + 8 * (w_stages + q % a_stages), static_cast<std::uint32_t>((q / a_stages) & 1));
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
    mbar_wait(bars + 8 * slot, static_cast<std::uint32_t>(((i - t_begin) / w_stages) & 1));
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
          uint4* const dst = reinterpret_cast<uint4*>(W + (r0 + row) * p.ldw + c0 + cc);
          if ((p.mode & mode_w_keep) != 0) *dst = v;  // probe: a plain store
          else __stcs(dst, v);                        // streaming: evict-first in L2
        }
      }
    }
    __syncthreads();  // the W slot is free again
    if (i + w_stages < t_end) issue_w(i + w_stages);
  }
}

// ---- warp-specialised variant (merge_ws_kernel) ------------------------------------------------------
// The same tiles, operands, math and rounding as merge_stream_kernel, but the block's phases no longer run
// in lock step: a producer warp (one thread) keeps W moving, and the 8 consumer warps form two groups of 4
// that own the upper / lower 64 rows of each 128 x 128 tile and run independently of each other.
// * W streams in half tiles (64 rows x 128 columns = two 64 x 64 TMA boxes, 128-byte swizzle, 16 KB)
//   through a ring of ws_stages slots: the producer issues TMA loads (zeros outside W) up to ws_stages
//   half tiles ahead; a group adds its ΔW in place (one rounding) and arrives on the slot's `done`
//   barrier; the producer then issues the TMA store of the half tile (clipped to W: padding untouched),
//   waits only until the store has READ the slot (cp.async.bulk.wait_group.read) and reloads the slot.
//   Stores are asynchronous: no thread waits for W's writes.
// * Operands as in merge_stream_kernel (one bulk copy per Acat tile / Bcat band, pitch-136 rows); a slot
//   of the Acat ring is refilled once both groups are done with its tile, the Bcat band buffer once both
//   groups have moved the band into registers (so the next band arrives long before it is needed).
// * Group 1 starts its first tile after group 0's first MMAs, so that one group's epilogue overlaps the
//   other's MMAs.
inline constexpr int ws_half = 64;                       // rows of a half tile (one consumer group)
inline constexpr int ws_box_bytes = ws_half * 64 * 2;    // one 64 x 64 TMA box: 8 KB
inline constexpr int ws_half_bytes = 2 * ws_box_bytes;   // 16 KB
inline constexpr int ws_stages = 7;
inline constexpr int ws_threads = 288;                   // 8 consumer warps + 1 producer warp
inline constexpr std::size_t ws_smem_bytes = 1024 /* alignment of the swizzled ring */ +
                                             static_cast<std::size_t>(ws_stages) * ws_half_bytes +
                                             static_cast<std::size_t>(a_stages + 1) * buf_bytes +
                                             8 * (2 * ws_stages + a_stages + 2);

struct ws_params {
  CUtensorMap wmap;  // W: {k, d} elements, leading dimension ldw, 64 x 64 boxes, 128-byte swizzle
  params p;
};

__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void tma_load_w(std::uint32_t dst, const CUtensorMap* map, int x, int y, std::uint32_t bar,
                                           std::uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, %3}], "
      "[%4], %5;" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(x), "r"(y), "r"(bar), "l"(policy)
      : "memory");
}
__device__ __forceinline__ void tma_prefetch_w(const CUtensorMap* map, int x, int y) {
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global.tile [%0, {%1, %2}];" ::"l"(reinterpret_cast<std::uint64_t>(map)),
               "r"(x), "r"(y)
               : "memory");
}
__device__ __forceinline__ void tma_store_w(const CUtensorMap* map, int x, int y, std::uint32_t src, std::uint64_t policy) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group.L2::cache_hint [%0, {%1, %2}], [%3], %4;" ::"l"(
                   reinterpret_cast<std::uint64_t>(map)),
               "r"(x), "r"(y), "r"(src), "l"(policy)
               : "memory");
}

template <class T>
__global__ void __launch_bounds__(ws_threads, 1) merge_ws_kernel(const __grid_constant__ ws_params wp) {
  const params& p = wp.p;
  unsigned char* const smem_raw = ::lori::detail::dynamic_smem();
  const std::uint32_t raw = smem_u32(smem_raw);
  const std::uint32_t s0 = (raw + 1023u) & ~1023u;  // W ring: 1024-byte aligned (128-byte swizzle atoms)
  unsigned char* const smem = smem_raw + (s0 - raw);
  const std::uint32_t a_s = s0 + ws_stages * ws_half_bytes;  // Acat ring (a_stages x buf_bytes)
  const std::uint32_t b_s = a_s + a_stages * buf_bytes;      // Bcat band
  const std::uint32_t bars = b_s + buf_bytes;
  // Barriers: w_full[s] (TMA bytes), w_done[s] (the 128 threads of a group), a_full[a_stages], b_full (bulk
  // bytes), b_empty (the 256 consumer threads have moved the band into registers).
  const auto w_full = [&](int s) { return bars + 8u * static_cast<std::uint32_t>(s); };
  const auto w_done = [&](int s) { return bars + 8u * static_cast<std::uint32_t>(ws_stages + s); };
  const auto a_full = [&](int s) { return bars + 8u * static_cast<std::uint32_t>(2 * ws_stages + s); };
  const std::uint32_t b_full = bars + 8u * (2 * ws_stages + a_stages);
  const std::uint32_t b_empty = b_full + 8u;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  // The block's run: half tiles [hb, he) (half tile h = rows 64 (h & 1) of tile h / 2; tiles band-major),
  // whole tiles unless mode_half_runs (then the runs differ by at most one half tile: a smaller tail).
  // It touches the n tiles i0 .. i0 + n - 1; the first / last may hold only one of their halves.
  const int units = (p.mode & mode_half_runs) != 0 ? 2 * p.tiles : p.tiles, per = (p.mode & mode_half_runs) != 0 ? 1 : 2;
  const int hb = per * static_cast<int>(static_cast<long long>(blockIdx.x) * units / gridDim.x);
  const int he = per * static_cast<int>((static_cast<long long>(blockIdx.x) + 1) * units / gridDim.x);
  const int i0 = hb >> 1, n = ((he - 1) >> 1) - i0 + 1;
  const T* const Bcat = static_cast<const T*>(p.Bcat);
  const T* const Acat = static_cast<const T*>(p.Acat);

  if (tid == 0) {
    for (int s = 0; s < ws_stages; ++s) {
      mbar_init(w_full(s), 1);
      mbar_init(w_done(s), 128);  // every thread of a group arrives (its own reads and writes released)
    }
    for (int s = 0; s < a_stages; ++s) mbar_init(a_full(s), 1);
    mbar_init(b_full, 1);
    mbar_init(b_empty, 256);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (warp == 8) {  // ---- producer: one thread issues every load and store of the block
    if (lane != 0) return;
    const bool w_io = (p.mode & mode_w_io) != 0;
    std::uint64_t pol;
    if ((p.mode & mode_w_keep) != 0) asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(pol));
    else asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    const int H = he - hb;  // local half tiles: hl -> half tile hb + hl
    // Local half tile hl's coordinates; false when it holds no row of W (the lower half of a last band of
    // <= 64 rows) or W traffic is off (probe): then it is neither loaded nor stored.
    const auto coords = [&](int hl, int& x, int& y, int& boxes) {
      const int h = hb + hl, i = h >> 1;
      if (p.geo_rows != ws_half) {  // copy-geometry probe (no math): half tile h = row block x column block
        const int nbx = 128 / p.geo_rows, ncb = static_cast<int>(p.k / (64 * nbx));
        y = (h / ncb) * p.geo_rows;
        x = (h % ncb) * 64 * nbx;
        boxes = nbx;
        return w_io && y < p.d;
      }
      const int band = i / p.ntc, ct = i - band * p.ntc;
      y = band * bm + (h & 1) * ws_half;
      x = ct * bn;
      boxes = p.k - x > 64 ? 2 : 1;  // the second box only where it holds a column of W
      return w_io && y < p.d;
    };
    const auto load_w = [&](int h) {
      const int slot = h % ws_stages;
      int x, y, boxes;
      if (p.prefetch > 0 && h + p.prefetch < H && coords(h + p.prefetch, x, y, boxes))
        for (int b = 0; b < boxes; ++b) tma_prefetch_w(&wp.wmap, x + 64 * b, y);
      if (coords(h, x, y, boxes)) {
        const int box_bytes = p.geo_rows * 128;
        mbar_expect_tx(w_full(slot), static_cast<std::uint32_t>(boxes * box_bytes));
        for (int b = 0; b < boxes; ++b)
          tma_load_w(s0 + static_cast<std::uint32_t>(slot * ws_half_bytes + b * box_bytes), &wp.wmap, x + 64 * b, y,
                     w_full(slot), pol);
      } else {
        mbar_arrive(w_full(slot));
      }
    };
    const auto load_a = [&](int q) {  // Acat tile of tile i0 + q -> ring slot q % a_stages
      const int ct = (i0 + q) % p.ntc, slot = q % a_stages;
      const std::uint32_t bytes = static_cast<std::uint32_t>(p.kp * pitch * 2);
      mbar_expect_tx(a_full(slot), bytes);
      bulk_g2s(a_s + static_cast<std::uint32_t>(slot * buf_bytes), Acat + static_cast<index_t>(ct) * kc * pitch, bytes,
               a_full(slot));
    };
    const auto load_b = [&](int band) {
      const index_t r0 = static_cast<index_t>(band) * bm;
      const index_t rows = p.d - r0 < bm ? p.d - r0 : bm;
      const std::uint32_t bytes = static_cast<std::uint32_t>(rows * pitch * 2);
      mbar_expect_tx(b_full, bytes);
      bulk_g2s(b_s, Bcat + r0 * pitch, bytes, b_full);
    };
    for (int h = 0; h < ws_stages && h < H; ++h) load_w(h);  // W does not depend on the pack kernel
    asm volatile("griddepcontrol.wait;" ::: "memory");        // the operands do
    load_b(i0 / p.ntc);
    std::uint32_t b_loads = 1;
    for (int q = 0; q < a_stages && q < n; ++q) load_a(q);
    for (int hl = 0; hl < H; ++hl) {
      const int slot = hl % ws_stages;
      mbar_wait(w_done(slot), static_cast<std::uint32_t>((hl / ws_stages) & 1));  // the group's ΔW is in the slot
      int x, y, boxes;
      if (coords(hl, x, y, boxes))
        for (int b = 0; b < boxes; ++b)
          tma_store_w(&wp.wmap, x + 64 * b, y, s0 + static_cast<std::uint32_t>(slot * ws_half_bytes + b * p.geo_rows * 128),
                      pol);
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");  // (an empty group where nothing was stored)
      // Reload the slot of half tile j once its store has read it out: j = hl (wait for this store) or,
      // with mode_store_lag, j = hl - 2 (the stores of the last two half tiles stay in flight).
      int j = hl;
      if ((p.mode & mode_store_lag) != 0) {
        asm volatile("cp.async.bulk.wait_group.read 2;" ::: "memory");
        j = hl - 2;
      } else {
        asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      }
      if (j >= 0 && j + ws_stages < H) load_w(j + ws_stages);
      const int h = hb + hl, i = h >> 1;
      if ((h & 1) != 0 || h == he - 1) {  // the last half of tile i in the run is done: its Acat slot is free
        const int q = i - i0, band = i / p.ntc;
        if (q + a_stages < n) load_a(q + a_stages);
        // At the first tile of a band the next band (if the run reaches it) can load as soon as all 256
        // consumer threads have moved this one into registers (b_empty; they do that first, at once).
        const bool first_of_band = q == 0 || (i - 1) / p.ntc != band;
        if (first_of_band && (band + 1) * p.ntc <= i0 + n - 1) {
          mbar_wait(b_empty, (b_loads - 1) & 1u);
          load_b(band + 1);
          ++b_loads;
        }
      }
    }
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");  // W's stores complete before the block exits
    return;
  }

  // ---- consumers: group gi (warps 4 gi .. 4 gi + 3) owns rows [64 gi, +64) of every tile; warp (wr, wc)
  // of the group computes rows [32 wr, +32) x columns [64 wc, +64) of that half. (9 warps per block
  // leave 168 registers per thread: 3 warps share one SM sub-partition's 64 K registers; so each warp
  // keeps 32 Bcat rows x the depth in registers (64), 32 x 64 fp32 accumulators (64), and reads 4
  // Acat fragments per k-step from shared memory.)
  const int gi = warp >> 2, wr = (warp >> 1) & 1, wc = warp & 1;
  const int g = lane >> 2, t4 = lane & 3;
  const int ksteps = p.kp / 16;
  int b_band = -1;
  std::uint32_t b_phase = 0;
  std::uint32_t af[kc / 16][2][4];
  float acc[2][8][4];
  for (int q = 0; q < n; ++q) {
    const int i = i0 + q, band = i / p.ntc;
    const int h = 2 * i + gi;
    const bool mine = h >= hb && h < he;  // this group's half of tile i is in the run
    if (band != b_band) {
      mbar_wait(b_full, b_phase);
      b_phase ^= 1u;
      b_band = band;
      const std::uint32_t a_base =
          b_s + static_cast<std::uint32_t>(((gi * 64 + wr * 32 + (lane & 15)) * pitch + (lane >> 4) * 8) * 2);
#pragma unroll
      for (int ks = 0; ks < kc / 16; ++ks)
        if (ks < ksteps)
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) ldsm_x4(a_base + static_cast<std::uint32_t>((mi * 16 * pitch + ks * 16) * 2), af[ks][mi]);
      mbar_arrive(b_empty);  // release: this thread's ldmatrix reads are ordered before the band's reload
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 8; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
    // Group 1 starts after group 0's first MMAs. Both groups wait for every Acat tile, also of a tile
    // whose half is not theirs (the first tile of a run starting at a lower half), so that no Acat
    // barrier runs two phases ahead of a waiter: the slot is refilled after the present halves of its
    // tile are done, and group 1's first half completes only after group 0 passed this wait (bar 1).
    if (q == 0 && gi == 1) asm volatile("bar.sync 1, 256;" ::: "memory");
    mbar_wait(a_full(q % a_stages), static_cast<std::uint32_t>((q / a_stages) & 1));
    if ((p.mode & mode_math) != 0 && mine) {
      const std::uint32_t b_base =
          a_s + static_cast<std::uint32_t>((q % a_stages) * buf_bytes) +
          static_cast<std::uint32_t>((((lane & 7) + ((lane >> 3) & 1) * 8) * pitch + wc * 64 + (lane >> 4) * 8) * 2);
      int seg = 0;
      // k-step ks's four fragments load at its start; the first MMAs wait for the first of them.
#pragma unroll
      for (int ks = 0; ks < kc / 16; ++ks) {
        if (ks < ksteps) {
          std::uint32_t bf[4][4];
#pragma unroll
          for (int nj = 0; nj < 4; ++nj)
            ldsm_x4_t(b_base + static_cast<std::uint32_t>((ks * 16 * pitch + nj * 16) * 2), bf[nj]);
#pragma unroll
          for (int ni = 0; ni < 8; ++ni)
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
              mma16816<T>(acc[mi][ni], af[ks][mi], bf[ni >> 1][(ni & 1) * 2], bf[ni >> 1][(ni & 1) * 2 + 1]);
          if ((p.seg_end >> ks) & 1ull) {
            const float m = p.seg_mul[seg++];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
              for (int ni = 0; ni < 8; ++ni)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[mi][ni][e] *= m;
          }
        }
      }
    }
    if (q == 0 && gi == 0) asm volatile("bar.arrive 1, 256;" ::: "memory");
    // Epilogue: the half tile (TMA layout: box wc, 128-byte rows, 16-byte chunk c of row r at c ^ (r % 8);
    // row % 8 == g here, so the 32 lanes hit 32 distinct banks) += acc, rounded once to T, in place.
    if (!mine) continue;
    const int hl = h - hb, slot = hl % ws_stages;
    mbar_wait(w_full(slot), static_cast<std::uint32_t>((hl / ws_stages) & 1));
    unsigned char* const wt = smem + slot * ws_half_bytes + wc * ws_box_bytes;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 8; ++ni)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int row = wr * 32 + mi * 16 + g + 8 * hh;
          std::uint32_t* e = reinterpret_cast<std::uint32_t*>(wt + row * 128 + ((ni ^ g) << 4) + t4 * 4);
          const float2 w = unpack2<T>(*e);
          *e = pack2<T>(w.x + acc[mi][ni][2 * hh], w.y + acc[mi][ni][2 * hh + 1]);
        }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // the writes, visible to the TMA store
    mbar_arrive(w_done(slot));
  }
}

// ---- strip variant (merge_strip_kernel) ---------------------------------------------------------------
// The warp-specialised kernel with W tiles of 32 rows x 256 columns (512-byte row segments, four 64 x 32
// TMA boxes) in column-strip-major order: a block's run walks down a 256-column strip, so the strip's
// Acat (depth x 256) is loaded once per strip and kept in registers (each consumer warp: its 32 columns
// x the depth, 64 registers), and only the tile's 32 Bcat rows (8.5 KB, one bulk copy, 3-slot ring)
// are read per tile. All 8 consumer warps work on every tile (warp w: columns [32 w, +32), all 32 rows).
inline constexpr int st_rows = 32, st_cols = 256;
inline constexpr int st_box_bytes = st_rows * 128;                // one 64 x 32 box: 4 KB
inline constexpr int st_tile_bytes = 4 * st_box_bytes;            // 16 KB
inline constexpr int st_wstages = 8, st_bstages = 3;
inline constexpr int st_bbuf = st_rows * pitch * 2;               // 8704 B
inline constexpr std::size_t st_smem_bytes = 1024 + static_cast<std::size_t>(st_wstages) * st_tile_bytes +
                                             static_cast<std::size_t>(st_bstages) * st_bbuf + 2 * buf_bytes +
                                             8 * (2 * st_wstages + st_bstages + 2);

struct st_params {
  CUtensorMap wmap;  // W: {k, d}, 64 x 32 boxes, 128-byte swizzle
  params p;          // p.tiles = nrb x strips (strip-major), p.ntc = Acat column tiles
  int nrb;           // row blocks of 32
};

template <class T>
__global__ void __launch_bounds__(ws_threads, 1) merge_strip_kernel(const __grid_constant__ st_params sp) {
  const params& p = sp.p;
  unsigned char* const smem_raw = ::lori::detail::dynamic_smem();
  const std::uint32_t raw = smem_u32(smem_raw);
  const std::uint32_t s0 = (raw + 1023u) & ~1023u;
  unsigned char* const smem = smem_raw + (s0 - raw);
  const std::uint32_t b_s = s0 + st_wstages * st_tile_bytes;  // Bcat ring (32-row slots)
  const std::uint32_t a_s = b_s + st_bstages * st_bbuf;        // the strip's two Acat tiles
  const std::uint32_t bars = a_s + 2 * buf_bytes;
  const auto w_full = [&](int s) { return bars + 8u * static_cast<std::uint32_t>(s); };
  const auto w_done = [&](int s) { return bars + 8u * static_cast<std::uint32_t>(st_wstages + s); };
  const auto b_full = [&](int s) { return bars + 8u * static_cast<std::uint32_t>(2 * st_wstages + s); };
  const std::uint32_t a_full = bars + 8u * (2 * st_wstages + st_bstages);
  const std::uint32_t a_empty = a_full + 8u;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int t_begin = static_cast<int>(static_cast<long long>(blockIdx.x) * p.tiles / gridDim.x);
  const int t_end = static_cast<int>((static_cast<long long>(blockIdx.x) + 1) * p.tiles / gridDim.x);
  const int n = t_end - t_begin;
  const int nrb = sp.nrb;
  const T* const Bcat = static_cast<const T*>(p.Bcat);
  const T* const Acat = static_cast<const T*>(p.Acat);

  if (tid == 0) {
    for (int s = 0; s < st_wstages; ++s) {
      mbar_init(w_full(s), 1);
      mbar_init(w_done(s), 256);
    }
    for (int s = 0; s < st_bstages; ++s) mbar_init(b_full(s), 1);
    mbar_init(a_full, 1);
    mbar_init(a_empty, 256);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (warp == 8) {  // ---- producer
    if (lane != 0) return;
    const bool w_io = (p.mode & mode_w_io) != 0;
    std::uint64_t pol;
    if ((p.mode & mode_w_keep) != 0) asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(pol));
    else asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    const auto coords = [&](int q, int& x, int& y, int& boxes) {
      const int i = t_begin + q, strip = i / nrb;
      y = (i - strip * nrb) * st_rows;
      x = strip * st_cols;
      const index_t left = p.k - x;
      boxes = left >= st_cols ? 4 : static_cast<int>((left + 63) / 64);
      return w_io;
    };
    const auto load_w = [&](int q) {
      const int slot = q % st_wstages;
      int x, y, boxes;
      if (p.prefetch > 0 && q + p.prefetch < n && coords(q + p.prefetch, x, y, boxes))
        for (int b = 0; b < boxes; ++b) tma_prefetch_w(&sp.wmap, x + 64 * b, y);
      if (coords(q, x, y, boxes)) {
        mbar_expect_tx(w_full(slot), static_cast<std::uint32_t>(boxes * st_box_bytes));
        for (int b = 0; b < boxes; ++b)
          tma_load_w(s0 + static_cast<std::uint32_t>(slot * st_tile_bytes + b * st_box_bytes), &sp.wmap, x + 64 * b, y,
                     w_full(slot), pol);
      } else {
        mbar_arrive(w_full(slot));
      }
    };
    const auto load_b = [&](int q) {  // the tile's 32 Bcat rows
      const int i = t_begin + q, strip = i / nrb, slot = q % st_bstages;
      const index_t r0 = static_cast<index_t>(i - strip * nrb) * st_rows;
      const index_t rows = p.d - r0 < st_rows ? p.d - r0 : st_rows;
      const std::uint32_t bytes = static_cast<std::uint32_t>(rows * pitch * 2);
      mbar_expect_tx(b_full(slot), bytes);
      bulk_g2s(b_s + static_cast<std::uint32_t>(slot * st_bbuf), Bcat + r0 * pitch, bytes, b_full(slot));
    };
    const auto load_a = [&](int strip) {  // Acat column tiles 2 strip, 2 strip + 1 (if it exists)
      const int t0 = 2 * strip, tiles = t0 + 1 < p.ntc ? 2 : 1;
      const std::uint32_t bytes = static_cast<std::uint32_t>(p.kp * pitch * 2);
      mbar_expect_tx(a_full, bytes * static_cast<std::uint32_t>(tiles));
      for (int t = 0; t < tiles; ++t)
        bulk_g2s(a_s + static_cast<std::uint32_t>(t * buf_bytes), Acat + static_cast<index_t>(t0 + t) * kc * pitch, bytes,
                 a_full);
    };
    for (int q = 0; q < st_wstages && q < n; ++q) load_w(q);
    asm volatile("griddepcontrol.wait;" ::: "memory");
    load_a(t_begin / nrb);
    std::uint32_t a_loads = 1;
    for (int q = 0; q < st_bstages && q < n; ++q) load_b(q);
    for (int q = 0; q < n; ++q) {
      const int slot = q % st_wstages;
      mbar_wait(w_done(slot), static_cast<std::uint32_t>((q / st_wstages) & 1));
      int x, y, boxes;
      if (coords(q, x, y, boxes))
        for (int b = 0; b < boxes; ++b)
          tma_store_w(&sp.wmap, x + 64 * b, y, s0 + static_cast<std::uint32_t>(slot * st_tile_bytes + b * st_box_bytes), pol);
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");
      int j = q;
      if ((p.mode & mode_store_lag) != 0) {
        asm volatile("cp.async.bulk.wait_group.read 2;" ::: "memory");
        j = q - 2;
      } else {
        asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      }
      if (j >= 0 && j + st_wstages < n) load_w(j + st_wstages);
      if (q + st_bstages < n) load_b(q + st_bstages);  // all consumers are done with tile q's Bcat slot
      const int i = t_begin + q, strip = i / nrb;
      const bool first_of_strip = q == 0 || (i - 1) / nrb != strip;
      if (first_of_strip && (strip + 1) * nrb <= t_end - 1) {
        mbar_wait(a_empty, (a_loads - 1) & 1u);
        load_a(strip + 1);
        ++a_loads;
      }
    }
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    return;
  }

  // ---- consumers: warp w computes the tile's 32 rows x columns [32 w, +32)
  const int g = lane >> 2, t4 = lane & 3;
  const int ksteps = p.kp / 16;
  int cur_strip = -1;
  std::uint32_t a_phase = 0;
  std::uint32_t bfr[kc / 16][2][4];  // the strip's Acat fragments of this warp's 32 columns
  float acc[2][4][4];
  for (int q = 0; q < n; ++q) {
    const int i = t_begin + q, strip = i / nrb;
    if (strip != cur_strip) {
      mbar_wait(a_full, a_phase);
      a_phase ^= 1u;
      cur_strip = strip;
      const std::uint32_t base =
          a_s + static_cast<std::uint32_t>((warp >> 2) * buf_bytes) +
          static_cast<std::uint32_t>((((lane & 7) + ((lane >> 3) & 1) * 8) * pitch + (warp & 3) * 32 + (lane >> 4) * 8) * 2);
#pragma unroll
      for (int ks = 0; ks < kc / 16; ++ks)
        if (ks < ksteps)
#pragma unroll
          for (int nj = 0; nj < 2; ++nj)
            ldsm_x4_t(base + static_cast<std::uint32_t>((ks * 16 * pitch + nj * 16) * 2), bfr[ks][nj]);
      mbar_arrive(a_empty);
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
    mbar_wait(b_full(q % st_bstages), static_cast<std::uint32_t>((q / st_bstages) & 1));
    if ((p.mode & mode_math) != 0) {
      const std::uint32_t a_base = b_s + static_cast<std::uint32_t>((q % st_bstages) * st_bbuf) +
                                   static_cast<std::uint32_t>(((lane & 15) * pitch + (lane >> 4) * 8) * 2);
      int seg = 0;
#pragma unroll
      for (int ks = 0; ks < kc / 16; ++ks) {
        if (ks < ksteps) {
          std::uint32_t af[2][4];
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) ldsm_x4(a_base + static_cast<std::uint32_t>((mi * 16 * pitch + ks * 16) * 2), af[mi]);
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
              mma16816<T>(acc[mi][ni], af[mi], bfr[ks][ni >> 1][(ni & 1) * 2], bfr[ks][ni >> 1][(ni & 1) * 2 + 1]);
          if ((p.seg_end >> ks) & 1ull) {
            const float m = p.seg_mul[seg++];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
              for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[mi][ni][e] *= m;
          }
        }
      }
    }
    const int slot = q % st_wstages;
    mbar_wait(w_full(slot), static_cast<std::uint32_t>((q / st_wstages) & 1));
    unsigned char* const wt = smem + slot * st_tile_bytes + (warp >> 1) * st_box_bytes;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int row = mi * 16 + g + 8 * hh, chunk = (warp & 1) * 4 + ni;
          std::uint32_t* e = reinterpret_cast<std::uint32_t*>(wt + row * 128 + ((chunk ^ g) << 4) + t4 * 4);
          const float2 w = unpack2<T>(*e);
          *e = pack2<T>(w.x + acc[mi][ni][2 * hh], w.y + acc[mi][ni][2 * hh + 1]);
        }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    mbar_arrive(w_done(slot));
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

// The warp-specialised kernel (same grid and preconditions; W < 2^31 - 256 rows and columns: TMA
// coordinates are 32-bit). The tensor map of W is encoded here (a host call, no device work).
template <class T>
void launch_ws(const params& p, int sm_count, cudaStream_t stream, bool pdl = true) {
  static_assert(::lori::detail::is_16bit_v<T>, "merge_stream: 16-bit W only");
  ws_params wp{};
  wp.wmap = ::lori::detail::skinny::tensor_map_2d(static_cast<const T*>(p.W), p.d, p.k, p.ldw,
                                                  static_cast<unsigned>(p.geo_rows));
  wp.p = p;
  LORI_CUDA_CHECK(cudaFuncSetAttribute(merge_ws_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(ws_smem_bytes)));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(p.tiles < sm_count ? p.tiles : sm_count));
  cfg.blockDim = dim3(ws_threads);
  cfg.dynamicSmemBytes = ws_smem_bytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  LORI_CUDA_CHECK(cudaLaunchKernelEx(&cfg, merge_ws_kernel<T>, wp));
  LORI_CUDA_CHECK_LAUNCH();
}

// The strip kernel (same preconditions as launch_ws).
template <class T>
void launch_strip(const params& p0, int sm_count, cudaStream_t stream, bool pdl = true) {
  static_assert(::lori::detail::is_16bit_v<T>, "merge_stream: 16-bit W only");
  st_params sp{};
  sp.wmap = ::lori::detail::skinny::tensor_map_2d(static_cast<const T*>(p0.W), p0.d, p0.k, p0.ldw,
                                                  static_cast<unsigned>(st_rows));
  sp.p = p0;
  sp.nrb = static_cast<int>(::lori::detail::ceil_div(p0.d, st_rows));
  sp.p.tiles = sp.nrb * static_cast<int>(::lori::detail::ceil_div(p0.k, st_cols));
  LORI_CUDA_CHECK(cudaFuncSetAttribute(merge_strip_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(st_smem_bytes)));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(sp.p.tiles < sm_count ? sp.p.tiles : sm_count));
  cfg.blockDim = dim3(ws_threads);
  cfg.dynamicSmemBytes = st_smem_bytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  LORI_CUDA_CHECK(cudaLaunchKernelEx(&cfg, merge_strip_kernel<T>, sp));
  LORI_CUDA_CHECK_LAUNCH();
}

}  // namespace lori::detail::merge_stream

#endif  // LORI_DETAIL_MERGE_STREAM_CUH
