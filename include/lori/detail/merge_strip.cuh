// lori/detail/merge_strip.cuh - private: the register-streaming tensor-core kernel behind
// lori::cuda::merge_into for 16-bit W (W += Bcat · diag(segment scales) · Acat, depth kp <= 128).
//
// Design: a copy kernel first. W never passes through shared memory: every thread loads its W elements
// with 16-byte loads straight into registers PF block steps ahead (register ring of PF + 1 buffers,
// indexed statically by unrolling), adds ΔW from its own mma.sync accumulators and stores 16 bytes back.
// One block (8 warps) per SM owns a contiguous run of block steps in strip-major order; a step is
// 16·MI rows x 256 columns (MI = 2 or 4 m16 blocks per warp; one 32-column strip per warp: 512
// contiguous bytes per row per block).
// * The accumulator columns are PERMUTED so that each thread's outputs are 8 consecutive columns of a
//   row: accumulator (n8 block ni, column 2·t4 + j) is W column 8·t4 + 2·ni + j of the warp's 32, so
//   the mma B fragment of block ni, column n, is W column 8·(n/2) + 2·ni + n%2. Each thread's W chunk
//   (rows g, g + 8, g + 16, g + 24; columns 8·t4 .. +7) is then one 16-byte load and one 16-byte store.
// * The B operand (Acat, depth x the warp's 32 columns) stays in registers for the whole strip (64
//   registers; gathered from the Aₜ rows in the permuted order when the block enters a strip, at most
//   twice per block at 14336 x 4096): no pack of A.
// * The A operand (Bcat, the step's rows x depth) is shared by the 8 warps: a 4-slot shared-memory
//   ring filled with 16-byte cp.async straight from the dense Bₜ rows (8-element depth chunks, each
//   from one source: ranks multiple of 8) or from the packed Bcat (sparse or unaligned Bₜ), read with
//   ldmatrix (272-byte pitch: conflict free). Depth padding (scale segments padded to 16) stays zero.
//   The ring is synchronised by one __syncthreads per step, or (mode_mbar) by full / empty mbarriers.
// * The B fragments are gathered through a per-thread stage in dynamic shared memory (a compact
//   rolled loop), then loaded into registers.
// * Scales stay in fp32, never rounded to 16 bits: Bcat holds the raw Bₜ, grouped into scale segments
//   (consecutive adapters with one scale, each padded with zeros to a multiple of 16 columns so that no
//   16-deep mma step spans two scales), and ONE fp32 accumulator runs through them with
//   acc *= s_j / s_j+1 at the end of segment j and acc *= s_last at the end, so that
//   acc = Σ_j s_j·(B_j·A_j) (each term's factor carries ≤ 2 T fp32 roundings: relative ≤ 2T·2^-24).
//   W + acc is rounded once to T.
// (It replaced a kernel that streamed W through a shared-memory ring in 128 x 128 tiles with packed
// operands: 1.30x a copy of W against this kernel's figures in docs/cuda.md.)
#ifndef LORI_DETAIL_MERGE_STRIP_CUH
#define LORI_DETAIL_MERGE_STRIP_CUH

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

namespace lori::detail::merge_strip {

inline constexpr int warps = 8;
inline constexpr int threads = 32 * warps;
inline constexpr int wcols = 32;               // columns per warp
inline constexpr int scols = warps * wcols;    // columns per block step (a strip)
inline constexpr int srows = 32;               // rows per block step with MI = 2 (16·MI in general)
inline constexpr int pitch = 136;              // Bcat slot row pitch (elements): 272 B, ldmatrix conflict free
inline constexpr int slots = 4;                // Bcat ring
inline constexpr int max_kp = 128;             // depth limit (one K chunk)
inline constexpr int max_ksteps = max_kp / 16;
inline constexpr int nchunks = max_kp / 8;     // 8-element depth chunks of a Bcat row

inline constexpr int mode_math = 1;  // compute ΔW (else W rewritten unchanged: the memory floor)
inline constexpr int mode_w_io = 2;  // load and store W
inline constexpr int mode_cs = 4;    // W through ld.global.cs / st.global.cs (L2 evict-first)
inline constexpr int mode_l2pf = 8;  // also prefetch W into L2 l2pf_ahead steps beyond the register loads
inline constexpr int l2pf_ahead = 2;
inline constexpr int mode_b_last = 16;  // Bcat loads with an L2 evict-last policy (16 strips re-read each row)
inline constexpr int mode_no_ops = 32;  // probe: no Bcat fills or per-step barrier (math on the zeroed ring)
inline constexpr int mode_mbar = 64;    // the Bcat ring on full / empty mbarriers instead of one __syncthreads per
                                        // step: warps drift up to mbar_ahead steps apart
inline constexpr int mbar_ahead = 2;    // mbar mode: Bcat of step j + 2 filled at step j (slot of step j - 2)
inline constexpr int mode_wsm = 128;    // W moved by the block in whole 512-byte rows (every warp instruction
                                        // full 128-byte lines) and turned into / out of the accumulator layout
                                        // in shared memory with ldmatrix / stmatrix (natural column order)
inline constexpr int wpitch = 264;      // wsm row pitch (elements): 528 B, ldmatrix / stmatrix conflict free
inline constexpr std::size_t stage_bytes = static_cast<std::size_t>(2 * max_ksteps) * threads * 16;
// Dynamic shared memory: the B-fragment stage, the Bcat ring (slots x 16·MI rows), the two W buffers of
// wsm mode (2 x 16·MI rows).
__host__ __device__ constexpr std::size_t ring_bytes(int mi) { return static_cast<std::size_t>(slots) * 16 * mi * pitch * 2; }
__host__ __device__ constexpr std::size_t smem_bytes(int mi) {
  return stage_bytes + ring_bytes(mi) + static_cast<std::size_t>(2) * 16 * mi * wpitch * 2;
}
__device__ __forceinline__ void stsm_x4(std::uint32_t addr, std::uint32_t r0, std::uint32_t r1, std::uint32_t r2,
                                        std::uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(r0), "r"(r1), "r"(r2),
               "r"(r3)
               : "memory");
}

struct params {
  void* W;
  index_t ldw, d, k;
  const void* bptr[nchunks];   // depth chunk q of Bcat row i at bptr[q] + i·bld[q] (null: zeros)
  index_t bld[nchunks];
  const void* arow[max_kp];    // Acat row kk (an Aₜ row; null: a zero padding row)
  int kp;                       // padded depth, multiple of 16, <= 128
  bool a_vec;                   // every Aₜ row 16-byte aligned: 16-byte loads in the B-fragment gather
  index_t nrs, steps;           // row steps per strip, steps in all (strips · nrs)
  unsigned long long seg_end;   // bit q: k-step q is the last of a scale segment
  float seg_mul[max_ksteps];
  int mode;
};

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
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

__device__ __forceinline__ void cp_async16(std::uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async16_hint(std::uint32_t dst, const void* src, std::uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "l"(policy)
               : "memory");
}

// W += ΔW for the blocks' runs of steps; PF: W loads issued PF steps ahead; MI: m16 blocks per warp (a
// step is 16·MI rows x 256 columns).
template <class T, int PF, int MI>
__global__ void __launch_bounds__(threads, 1) merge_strip_kernel(const __grid_constant__ params p) {
  constexpr int NB = PF + 1;  // W register buffers
  constexpr int SR = 16 * MI;  // rows per step
  constexpr int NQ = 2 * MI;   // W chunks per thread and step
  __shared__ const std::uint16_t* arow[max_kp];
  __shared__ const std::uint16_t* bptr[nchunks];
  __shared__ index_t bld[nchunks];
  __shared__ __align__(8) std::uint64_t full_bar[slots], empty_bar[slots];  // mbar mode
  unsigned char* const dyn = ::lori::detail::dynamic_smem();  // B-fragment stage, then the Bcat ring
  std::uint16_t* const ring = reinterpret_cast<std::uint16_t*>(dyn + stage_bytes);
  std::uint16_t* const wsm = reinterpret_cast<std::uint16_t*>(dyn + stage_bytes + ring_bytes(MI));
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const index_t s_begin = static_cast<index_t>(blockIdx.x) * p.steps / gridDim.x;
  const index_t s_end = (static_cast<index_t>(blockIdx.x) + 1) * p.steps / gridDim.x;
  const int n = static_cast<int>(s_end - s_begin);
  const int ksteps = p.kp / 16;
  const bool math = (p.mode & mode_math) != 0, w_io = (p.mode & mode_w_io) != 0, cs = (p.mode & mode_cs) != 0;
  const bool l2pf = w_io && (p.mode & mode_l2pf) != 0, b_last = (p.mode & mode_b_last) != 0;
  const bool ops = (p.mode & mode_no_ops) == 0, mbar = ops && (p.mode & mode_mbar) != 0;
  const bool wsmode = (p.mode & mode_wsm) != 0;
  std::uint64_t keep = 0;
  if (b_last) asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(keep));
  T* const W = static_cast<T*>(p.W);

  {  // zero the ring (depth padding and rows past d are never copied), copy the operand tables
    uint4* z = reinterpret_cast<uint4*>(ring);
    for (int i = tid; i < slots * SR * pitch / 8; i += threads) z[i] = make_uint4(0u, 0u, 0u, 0u);
    if (tid < max_kp) arow[tid] = tid < p.kp ? static_cast<const std::uint16_t*>(p.arow[tid]) : nullptr;
    if (tid < nchunks) {
      bptr[tid] = tid * 8 < p.kp ? static_cast<const std::uint16_t*>(p.bptr[tid]) : nullptr;
      bld[tid] = p.bld[tid];
    }
    if (tid == 0) {  // mbar mode: every thread arrives once per fill (its cp.async) and once per use
      for (int b = 0; b < slots; ++b) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(&full_bar[b])), "r"(threads) : "memory");
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(&empty_bar[b])), "r"(threads) : "memory");
      }
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
  }
  __syncthreads();
  // mbar mode: arrive on full_bar[slot] when this thread's copies (issued so far) have landed.
  const auto arrive_full = [&](int slot) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_u32(&full_bar[slot])) : "memory");
  };

  // A step's position: row step rs of strip `strip` (steps are strip-major). The block walks its steps
  // with three cursors (W prefetch, Bcat fill, current step), advanced by one step at a time: no
  // division per step.
  struct pos {
    index_t rs, strip;
  };
  const auto at = [&](index_t s) { return pos{s % p.nrs, s / p.nrs}; };
  const auto next = [&](pos& q) {
    if (++q.rs == p.nrs) {
      q.rs = 0;
      ++q.strip;
    }
  };
  // The thread's W chunk of step q: rows row0 + 16 mi + 8 h + g, columns col .. col + 7.
  const auto coords = [&](const pos& q, index_t& row0, index_t& col) {
    row0 = q.rs * SR;
    col = q.strip * scols + warp * wcols + t4 * 8;
  };
  // wsm mode: chunk q of the thread is row (tid + 256 q) / 32 of the step, 16-byte chunk tid % 32 of the
  // strip (a warp instruction: one whole 512-byte row).
  const int lin_col = (tid & 31) * 8, lin_row = tid >> 5;
  const auto load_w = [&](const pos& at_s, uint4 (&buf)[NQ]) {
    index_t row0, col;
    coords(at_s, row0, col);
    if (wsmode) col = at_s.strip * scols + lin_col;
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      const index_t row = wsmode ? row0 + lin_row + 8 * q : row0 + (q >> 1) * 16 + (q & 1) * 8 + g;
      buf[q] = make_uint4(0u, 0u, 0u, 0u);
      if (w_io && row < p.d && col < p.k) {
        const uint4* a = reinterpret_cast<const uint4*>(W + row * p.ldw + col);
        buf[q] = cs ? __ldcs(a) : *a;
      }
    }
  };
  const auto prefetch_w = [&](const pos& at_s) {  // the lines of the thread's W chunks, into L2
    index_t row0, col;
    coords(at_s, row0, col);
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      const index_t row = row0 + (q >> 1) * 16 + (q & 1) * 8 + g;
      if (row < p.d && col < p.k) asm volatile("prefetch.global.L2 [%0];" ::"l"(W + row * p.ldw + col));
    }
  };
  // Bcat rows of step q -> ring slot: 32 rows x 16 chunks, two per thread.
  const auto fill_b = [&](const pos& q, int slot) {
    const index_t row0 = q.rs * SR;
#pragma unroll
    for (int v = 0; v < SR * nchunks / threads; ++v) {
      const int item = tid + v * threads, r = item / nchunks, c = item % nchunks;
      const std::uint16_t* src = bptr[c];
      if (src != nullptr && row0 + r < p.d) {
        const std::uint32_t dst = smem_u32(ring + (slot * SR + r) * pitch + c * 8);
        if (b_last) cp_async16_hint(dst, src + (row0 + r) * bld[c], keep);
        else cp_async16(dst, src + (row0 + r) * bld[c]);
      }
    }
  };

  std::uint32_t bfr[max_ksteps][4][2];  // B fragments of the warp's strip (permuted columns)
  // Gathers the warp's B fragments of a strip from the Aₜ rows into the thread's stage in shared memory
  // (a rolled loop: compact code inside the unrolled step loop), then loads them into bfr. Fragment
  // (ks, ni, h) of lane (g, t4) holds Acat rows kk, kk + 1 (kk = 16 ks + 8 h + 2 t4; low half kk) at W
  // column strip·256 + 32 warp + 8 (g / 2) + 2 ni + g % 2; stage entry q = 2 ks + h (16 bytes at
  // stage[q·256 + tid]) holds ni = 0..3. With 16-byte aligned Aₜ rows (p.a_vec) the lanes g and g ^ 1
  // (lane ^ 4) need the same 16-byte chunks (8 columns from 8 (g / 2)) of rows kk and kk + 1: each loads
  // one (g even: row kk, g odd: row kk + 1), they swap them by a shuffle, and each keeps the even (g
  // even) or odd columns.
  uint4* const stage = reinterpret_cast<uint4*>(dyn);
  const auto gather = [&](index_t strip) {
    const bool odd = (g & 1) != 0;
    if (p.a_vec && !wsmode) {
      const index_t c8 = strip * scols + warp * wcols + (g >> 1) * 8;
      const unsigned sel = odd ? 0x7632u : 0x5410u;  // high or low halves of two words
#pragma unroll 1
      for (int q = 0; q < 2 * ksteps; ++q) {
        const int kk = (q >> 1) * 16 + (q & 1) * 8 + 2 * t4;
        uint4 mine = make_uint4(0u, 0u, 0u, 0u);
        const std::uint16_t* r = arow[kk + (odd ? 1 : 0)];
        if (c8 < p.k && r != nullptr) mine = __ldg(reinterpret_cast<const uint4*>(r + c8));
        uint4 other;
        other.x = __shfl_xor_sync(0xffffffffu, mine.x, 4);
        other.y = __shfl_xor_sync(0xffffffffu, mine.y, 4);
        other.z = __shfl_xor_sync(0xffffffffu, mine.z, 4);
        other.w = __shfl_xor_sync(0xffffffffu, mine.w, 4);
        const uint4 v0 = odd ? other : mine, v1 = odd ? mine : other;  // rows kk, kk + 1
        stage[q * threads + tid] = make_uint4(__byte_perm(v0.x, v1.x, sel), __byte_perm(v0.y, v1.y, sel),
                                              __byte_perm(v0.z, v1.z, sel), __byte_perm(v0.w, v1.w, sel));
      }
    } else {
      // n8 block ni, column g: W column 8 (g / 2) + 2 ni + g % 2 of the warp's 32 (natural order in
      // wsm mode: 8 ni + g).
      const index_t cb = strip * scols + warp * wcols + (wsmode ? g : (g >> 1) * 8 + (g & 1));
      const int cstep = wsmode ? 8 : 2;
#pragma unroll 1
      for (int q = 0; q < 2 * ksteps; ++q) {
        const int kk = (q >> 1) * 16 + (q & 1) * 8 + 2 * t4;
        const std::uint16_t* r0 = arow[kk];
        const std::uint16_t* r1 = arow[kk + 1];
        std::uint32_t v[4];
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const index_t c = cb + cstep * ni;
          std::uint32_t lo = 0, hi = 0;
          if (c < p.k) {
            if (r0 != nullptr) lo = __ldg(r0 + c);
            if (r1 != nullptr) hi = __ldg(r1 + c);
          }
          v[ni] = lo | (hi << 16);
        }
        stage[q * threads + tid] = make_uint4(v[0], v[1], v[2], v[3]);
      }
    }
#pragma unroll
    for (int ks = 0; ks < max_ksteps; ++ks)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4 v = ks < ksteps ? stage[(2 * ks + h) * threads + tid] : make_uint4(0u, 0u, 0u, 0u);
        bfr[ks][0][h] = v.x;
        bfr[ks][1][h] = v.y;
        bfr[ks][2][h] = v.z;
        bfr[ks][3][h] = v.w;
      }
  };

  uint4 wb[NB][NQ];
  pos w_at = at(s_begin), b_at = w_at, cur = w_at, l_at = w_at;
#pragma unroll
  for (int u = 0; u < PF; ++u)
    if (u < n) {
      load_w(w_at, wb[u]);
      next(w_at);
    }
  if (l2pf) {  // l_at: the L2 prefetch cursor, l2pf_ahead steps past w_at
    l_at = w_at;
    for (int u = PF; u < PF + l2pf_ahead && u < n; ++u) {
      prefetch_w(l_at);
      next(l_at);
    }
  }
  // Launched with programmatic stream serialization after the pack kernel (packed Bcat): W and the Aₜ
  // are not written by it, the packed Bcat is read only after it completed.
  asm volatile("griddepcontrol.wait;" ::: "memory");
#pragma unroll
  for (int j = 0; j < slots - 1; ++j) {
    if (mbar) {
      if (j < mbar_ahead && j < n) {
        fill_b(b_at, j);
        next(b_at);
        arrive_full(j);
      }
    } else {
      if (j < n && ops) {
        fill_b(b_at, j);
        next(b_at);
      }
      asm volatile("cp.async.commit_group;" ::: "memory");
    }
  }

  index_t cur_strip = -1;
  const std::uint32_t a_lane = static_cast<std::uint32_t>(((lane & 15) * pitch + (lane >> 4) * 8) * 2);
  for (int j0 = 0; j0 < n; j0 += NB) {
#pragma unroll
    for (int u = 0; u < NB; ++u) {
      const int j = j0 + u;
      if (j >= n) break;
      if (j + PF < n) {  // W of step j + PF
        load_w(w_at, wb[(u + PF) % NB]);
        next(w_at);
      }
      if (l2pf && j + PF + l2pf_ahead < n) {  // into L2: step j + PF + l2pf_ahead
        prefetch_w(l_at);
        next(l_at);
      }
      if (cur.strip != cur_strip) {
        gather(cur.strip);
        cur_strip = cur.strip;
      }
      if (wsmode) {  // W of step j into its buffer (the barrier below publishes it)
        std::uint16_t* const wb_s = wsm + (j & 1) * SR * wpitch;
#pragma unroll
        for (int q = 0; q < NQ; ++q)
          *reinterpret_cast<uint4*>(wb_s + (lin_row + 8 * q) * wpitch + lin_col) = wb[u][q];
        if (!ops) __syncthreads();
      }
      if (mbar) {
        if (j + mbar_ahead < n) {  // Bcat of step j + 2 into the slot of step j + 2 - slots, once every thread is done with it
          const int js = j + mbar_ahead, prev = js - slots;
          if (prev >= 0) mbar_wait_parity(smem_u32(&empty_bar[js % slots]), static_cast<std::uint32_t>((prev / slots) & 1));
          fill_b(b_at, js % slots);
          next(b_at);
          arrive_full(js % slots);
        }
        mbar_wait_parity(smem_u32(&full_bar[j % slots]), static_cast<std::uint32_t>((j / slots) & 1));
      } else {
        if (ops) {
          asm volatile("cp.async.wait_group %0;" ::"n"(slots - 2) : "memory");
          __syncthreads();  // slice j landed for all threads; slot (j - 1) % slots is free (step j - 1 done)
        }
        if (ops && j + slots - 1 < n) {  // Bcat of step j + slots - 1
          fill_b(b_at, (j + slots - 1) % slots);
          next(b_at);
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
      }

      float acc[MI][4][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
      if (math) {
        const std::uint32_t a_base = smem_u32(ring + (j % slots) * SR * pitch) + a_lane;
        int seg = 0;
        std::uint32_t af[2][MI][4];  // A fragments, k-step ks + 1's loaded before k-step ks's MMAs
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) ldsm_x4(a_base + static_cast<std::uint32_t>(mi * 16 * pitch * 2), af[0][mi]);
#pragma unroll
        for (int ks = 0; ks < max_ksteps; ++ks) {
          if (ks < ksteps) {
            if (ks + 1 < ksteps)
#pragma unroll
              for (int mi = 0; mi < MI; ++mi)
                ldsm_x4(a_base + static_cast<std::uint32_t>((mi * 16 * pitch + (ks + 1) * 16) * 2), af[(ks + 1) & 1][mi]);
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
              for (int ni = 0; ni < 4; ++ni)
                mma16816<T>(acc[mi][ni], af[ks & 1][mi], bfr[ks][ni][0], bfr[ks][ni][1]);
            if ((p.seg_end >> ks) & 1ull) {  // end of a scale segment: acc *= s_j / s_j+1 (last: s_last)
              const float m = p.seg_mul[seg++];
#pragma unroll
              for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                  for (int e = 0; e < 4; ++e) acc[mi][ni][e] *= m;
            }
          }
        }
      }
      if (mbar)  // this thread is done with slot j % slots (its ldmatrix reads precede the release)
        asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(&empty_bar[j % slots])) : "memory");
      // W chunk += acc (element e of the chunk: n8 block e / 2, accumulator column 2 t4 + e % 2), one
      // rounding to T, one 16-byte store.
      index_t row0, col;
      coords(cur, row0, col);
      next(cur);
      if (wsmode) {
        // The warp's W values in the accumulator layout: 8 x 8 matrix (mi, h, ni) = rows 16 mi + 8 h ..,
        // columns 32 warp + 8 ni ..; lane l addresses row l % 8 of matrix ni = l / 8.
        std::uint16_t* const wb_s = wsm + (j & 1) * SR * wpitch;
        if (mbar) __syncthreads();  // every thread's W stores of this step are visible (the ring barrier is gone)
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const std::uint32_t addr =
                smem_u32(wb_s + (mi * 16 + h * 8 + (lane & 7)) * wpitch + warp * wcols + (lane >> 3) * 8);
            std::uint32_t x[4];
            ldsm_x4(addr, x);
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
              const float2 w = unpack2<T>(x[ni]);
              x[ni] = pack2<T>(w.x + acc[mi][ni][2 * h], w.y + acc[mi][ni][2 * h + 1]);
            }
            stsm_x4(addr, x[0], x[1], x[2], x[3]);
          }
        __syncthreads();  // the updated rows, back in the linear layout for the stores
        const index_t col_l = cur_strip * scols + lin_col;
#pragma unroll
        for (int q = 0; q < NQ; ++q) {
          const index_t row = row0 + lin_row + 8 * q;
          if (w_io && row < p.d && col_l < p.k) {
            const uint4 v = *reinterpret_cast<const uint4*>(wb_s + (lin_row + 8 * q) * wpitch + lin_col);
            uint4* out = reinterpret_cast<uint4*>(W + row * p.ldw + col_l);
            if (cs) __stcs(out, v);
            else __stwb(out, v);
          }
        }
        continue;
      }
#pragma unroll
      for (int q = 0; q < NQ; ++q) {
        const int mi = q >> 1, h = q & 1;
        const index_t row = row0 + mi * 16 + h * 8 + g;
        if (w_io && row < p.d && col < p.k) {
          uint4 v = wb[u][q];
          std::uint32_t* x = reinterpret_cast<std::uint32_t*>(&v);
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) {
            const float2 w = unpack2<T>(x[ni]);
            x[ni] = pack2<T>(w.x + acc[mi][ni][2 * h], w.y + acc[mi][ni][2 * h + 1]);
          }
          // One 16-byte store either way (a plain `*out = v` of this uint4, written through 32-bit
          // views above, compiled to four 4-byte stores: checkpoint 0 of session 5).
          uint4* out = reinterpret_cast<uint4*>(W + row * p.ldw + col);
          if (cs) __stcs(out, v);
          else __stwb(out, v);
        }
      }
    }
  }
  asm volatile("cp.async.wait_group 0;" ::: "memory");
}

// Launch on `stream`, one block per SM (at most one per step); pdl: programmatic dependent launch
// after the pack kernel. Preconditions are checked by the caller.
template <class T, int PF, int MI>
void launch(const params& p, int sm_count, cudaStream_t stream, bool pdl) {
  static_assert(::lori::detail::is_16bit_v<T>, "merge_strip: 16-bit W only");
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(p.steps < sm_count ? p.steps : sm_count));
  cfg.blockDim = dim3(threads);
  LORI_CUDA_CHECK(cudaFuncSetAttribute(merge_strip_kernel<T, PF, MI>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem_bytes(MI))));
  cfg.dynamicSmemBytes = smem_bytes(MI);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  LORI_CUDA_CHECK(cudaLaunchKernelEx(&cfg, merge_strip_kernel<T, PF, MI>, p));
  LORI_CUDA_CHECK_LAUNCH();
}

}  // namespace lori::detail::merge_strip

#endif  // LORI_DETAIL_MERGE_STRIP_CUH
