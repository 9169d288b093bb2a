// lori/detail/skinny_gemm.cuh - private tensor-core kernels for the masked SDDMM of the backward pass
// (bf16/fp16, r <= 32): stream the big 16-bit G once against a small rank-r operand,
//
//   sddmm     out[p]    = T(s · Σ_t G(t, i) T(H(t, j)))          for the p-th kept (i, j) of B
//             (grad_b_sddmm: G n x d streamed, H n x r fp32 rounded to T while staged)
//
// Bound by one read of G. Design (see docs/cuda.md):
// * a block owns 128 columns of G (rows of B) and all r <= 32 columns of H, and streams its share
//   of the tokens through a ring of shared-memory stages: filled by TMA box copies from a producer
//   warp and released by mbarriers (sddmm_ws_kernel, 4 stages of 24 KB, two blocks per SM; zeros
//   outside the matrix, G read with an L2 evict-first policy) or, where TMA cannot describe H, by
//   16-byte cp.async behind block barriers (sddmm_kernel);
// * warps own 16 or 32 columns of G, ldmatrix.trans + mma.sync m16n8k16 with fp32 accumulation;
//   shared rows are XOR-swizzled in 16-byte units (conflict-free ldmatrix; the same pattern as TMA's
//   128-byte swizzle);
// * the tokens are split over S <= 8 blocks forming a thread-block cluster; the fp32 partial tiles
//   are summed through distributed shared memory in cluster-rank order (a fixed order:
//   deterministic, no workspace, one launch), and s·D is written at the kept positions.
// G's pointer must be 16-byte aligned and d, G's leading dimension multiples of 8 elements; callers
// check sddmm_applies() / sddmm_tma_applies() and otherwise keep the cuBLAS route. (A project kernel
// X·Aᵀ of the same design was measured and dropped: docs/cuda.md.)
#ifndef LORI_DETAIL_SKINNY_GEMM_CUH
#define LORI_DETAIL_SKINNY_GEMM_CUH

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"

#include "lori/core/float16.hpp"
#include "lori/cuda/sparse_b.cuh"
#include "lori/detail/cuda_common.cuh"
#include "lori/error.hpp"

#include <cooperative_groups.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace lori::detail::skinny {

inline constexpr int threads = 256;    // 8 warps
inline constexpr int tile_rows = 128;  // output rows per block (16 per warp)
inline constexpr int max_rank = 32;    // output columns per block (4 n-tiles of 8)
inline constexpr int max_splits = 8;   // portable cluster size
inline constexpr int acc_ld = max_rank + 8;  // fp32 partial tile row stride (epilogue)


// sddmm: per stage 64 tokens x 128 columns of G (256-byte rows) + 64 tokens x 32 of H (fp32, 128-byte
// rows); H of the current stage rounded to T into one 64 x 32 buffer (64-byte rows).
inline constexpr int sd_tc = 64;
inline constexpr int sd_stages = 4;
inline constexpr int sd_g_bytes = sd_tc * tile_rows * 2;                  // 16 KB
inline constexpr int sd_h_bytes = sd_tc * max_rank * 4;                   // 8 KB
inline constexpr int sd_stage_bytes = sd_g_bytes + sd_h_bytes;            // 24 KB
constexpr int sd_smem_of(int stages) { return stages * sd_stage_bytes + sd_tc * max_rank * 2; }
inline constexpr int sd_smem = sd_smem_of(sd_stages);  // 100 KB: 2 blocks per SM
// Blocks per SM the launch bounds ask for: two while two rings fit an SM's 227 KB of shared memory.
constexpr int min_blocks_of(int smem) { return smem <= 110 * 1024 ? 2 : 1; }

static_assert(tile_rows * acc_ld * 4 <= sd_stage_bytes, "epilogue tile must fit the ring");

// The tile and token range of block blockIdx.x in a grid of tiles x S blocks (split index fastest):
// rows [i0, i0 + tile_rows) of B (columns of G), tokens [tb, te) in `steps` stages of sd_tc.
struct split_range {
  int split;
  index_t i0, tb, te;
  int steps;
};
__device__ __forceinline__ split_range block_split(int S, index_t tps, index_t n) {
  split_range w;
  w.split = static_cast<int>(blockIdx.x % static_cast<unsigned>(S));
  w.i0 = static_cast<index_t>(blockIdx.x / static_cast<unsigned>(S)) * tile_rows;
  w.tb = static_cast<index_t>(w.split) * tps;
  w.te = w.tb + tps < n ? w.tb + tps : n;
  w.steps = w.te > w.tb ? static_cast<int>((w.te - w.tb + sd_tc - 1) / sd_tc) : 0;
  return w;
}

// ---- PTX wrappers (plain sm_80+/sm_90) --------------------------------------------------------------
__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
// 16 (or 4) bytes global -> shared; pred false zero-fills and reads nothing (src must still be valid).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 16 : 0) : "memory");
}
// L2 policy for the streamed matrix (X, G: read once): evict-first keeps it from displacing what
// L2 holds (the reused A / H, the caller's data); evict-normal is the default behaviour.
__device__ __forceinline__ std::uint64_t stream_policy(bool evict_first) {
  std::uint64_t p;
  if (evict_first) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
  else asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(p));
  return p;
}
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, bool pred) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldsm_x4(unsigned addr, unsigned (&v)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned addr, unsigned (&v)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
               : "r"(addr)
               : "memory");
}
// c += a · b, m16n8k16, 16-bit inputs, fp32 accumulation.
template <class T>
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  if constexpr (std::is_same_v<T, ::lori::bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Warp w's accumulators (rows w*16 .. +16, columns nt*8 .. +8) into the fp32 tile Acc (row stride
// acc_ld): c0, c1 at (lane/4, 2·(lane%4) + {0,1}), c2, c3 eight rows below.
__device__ __forceinline__ void store_acc(float* Acc, const float (&acc)[4][4], int warp, int lane) {
  const int r0 = warp * 16 + (lane >> 2);
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int c = nt * 8 + 2 * (lane & 3);
    *reinterpret_cast<float2*>(Acc + r0 * acc_ld + c) = make_float2(acc[nt][0], acc[nt][1]);
    *reinterpret_cast<float2*>(Acc + (r0 + 8) * acc_ld + c) = make_float2(acc[nt][2], acc[nt][3]);
  }
}


template <class T>
bool aligned16(const T* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

/// Opts `kernel` into `smem` bytes of dynamic shared memory and asks for the largest shared-memory
/// carveout, so that two 100 KB rings share an SM (the default carveout may fit only one).
template <class Kernel>
void set_smem_attributes(Kernel kernel, int smem) {
  LORI_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  LORI_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       static_cast<int>(cudaSharedmemCarveoutMaxShared)));
}

/// Clusters of `S` blocks of `Kernel` (`threads` threads, `smem` bytes of dynamic shared memory: fixed
/// per kernel instance) that fit on the device at once (a cluster must fit one GPC); cached per
/// device, kernel instance and S.
template <auto Kernel>
int active_clusters(int threads, int smem, int S) {
  static std::atomic<int> cache[max_splits + 1][max_cached_devices] = {};
  const int v = max_active_clusters(reinterpret_cast<const void*>(Kernel), static_cast<unsigned>(threads),
                                    static_cast<std::size_t>(smem), static_cast<unsigned>(S), cache[S]);
  LORI_EXPECTS(v >= 1, "lori::cuda skinny kernels: a thread-block cluster does not fit on this device");
  return v;
}

/// Splits S of the reduction dimension per tile (= cluster size): the largest S <= cap (and <= the
/// number of stages) for which all tiles·S blocks run in ONE wave (tiles <= clusters of S that fit
/// at once; a partial second wave would double the time), else 1.
template <auto Kernel>
int choose_splits(int threads, int smem, index_t tiles, index_t reduce_len, index_t chunk, int cap) {
  index_t most = ceil_div(reduce_len, chunk);
  if (most > cap) most = cap;
  for (int S = static_cast<int>(most); S > 1; --S)
    if (tiles <= active_clusters<Kernel>(threads, smem, S)) return S;
  return 1;
}

// ---- TMA + mbarrier helpers (plain sm_90) ------------------------------------------------------------
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void tma_load_2d_hint(unsigned dst, const CUtensorMap* map, int x, int y, unsigned bar,
                                                 std::uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, %3}], "
      "[%4], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(x), "r"(y), "r"(bar), "l"(policy)
      : "memory");
}
__device__ __forceinline__ void tma_load_2d(unsigned dst, const CUtensorMap* map, int x, int y, unsigned bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(x), "r"(y), "r"(bar)
      : "memory");
}

/// cuTensorMapEncodeTiled from the driver, looked up once through the runtime (no -lcuda).
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    LORI_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    LORI_EXPECTS(p != nullptr && q == cudaDriverEntryPointSuccess, "lori::cuda: cuTensorMapEncodeTiled not available");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

/// A 2-D tensor map of a row-major 16-bit matrix (rows x cols, leading dimension ld): boxes of 64
/// columns x box_rows rows, 128-byte swizzle, zeros outside.
template <class T>
CUtensorMap tensor_map_2d(const T* base, index_t rows, index_t cols, index_t ld, unsigned box_rows) {
  CUtensorMap m;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld) * sizeof(T)};
  const cuuint32_t box[2] = {64, box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult res = tensor_map_encoder()(
      &m, std::is_same_v<T, ::lori::bfloat16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
      const_cast<T*>(base), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  LORI_EXPECTS(res == CUDA_SUCCESS, "lori::cuda: cuTensorMapEncodeTiled failed");
  return m;
}

/// The tensor map of H (n x r fp32, leading dimension r, r % 4 == 0, 16-byte aligned): boxes of
/// 32 columns x sd_tc rows (128-byte rows; columns >= r and rows >= n arrive as zeros), with `swizzle`.
inline CUtensorMap h_tensor_map(const float* H, index_t n, index_t r, CUtensorMapSwizzle swizzle) {
  CUtensorMap m;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(r), static_cast<cuuint64_t>(n)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(r) * sizeof(float)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(max_rank), static_cast<cuuint32_t>(sd_tc)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult res = tensor_map_encoder()(&m, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, const_cast<float*>(H), dims, strides,
                                            box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  LORI_EXPECTS(res == CUDA_SUCCESS, "lori::cuda: cuTensorMapEncodeTiled failed (H)");
  return m;
}

// ---- sddmm ------------------------------------------------------------------------------------------
// Thread tid rounds H(row tid/4, columns 8·(tid & 3) .. +8) of the fp32 stage hs (64 rows of 128
// bytes) to T into hb (64 rows of 64 bytes) at chunk (tid & 3) ^ ((row >> 1) & 3) (the swizzle makes
// the ldmatrix of sddmm_stage_mma conflict-free). Same rounding as lori::from_float.
template <class T>
__device__ __forceinline__ void sddmm_convert_h(const unsigned char* hs, unsigned char* hb) {
  const int tid = static_cast<int>(threadIdx.x);
  const int cv_row = tid >> 2, cv_g = tid & 3;
  const float4* hp = reinterpret_cast<const float4*>(hs + cv_row * 128 + cv_g * 32);
  const float4 h0 = hp[0], h1 = hp[1];
  const float hv[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
  std::uint32_t w[4];
#pragma unroll
  for (int e = 0; e < 4; ++e)
    w[e] = static_cast<std::uint32_t>(::lori::from_float<T>(hv[2 * e]).bits) |
           (static_cast<std::uint32_t>(::lori::from_float<T>(hv[2 * e + 1]).bits) << 16);
  *reinterpret_cast<uint4*>(hb + cv_row * 64 + ((cv_g ^ ((cv_row >> 1) & 3)) << 4)) = make_uint4(w[0], w[1], w[2], w[3]);
}

// One 64-token stage: acc (warp's 16 columns of G x 32) += Gᵀ·T(H). G stage at gs: 64 token rows of
// 128 columns, 256-byte rows with chunk c (0..15) at c ^ (row & 7). A operand = Gᵀ (m = column, k = token), ldmatrix.trans: matrix q =
// lane/8 covers columns warp*16 + (q & 1)*8, tokens (q >> 1)*8 + (lane & 7). B operand = T(H) in hb
// (k = token, n = j), ldmatrix.trans: matrix q covers tokens (q & 1)*8 + (lane & 7), columns
// np*16 + (q >> 1)*8.
template <class T>
__device__ __forceinline__ void sddmm_stage_mma(unsigned gs, unsigned hbase, float (&acc)[4][4]) {
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int ga_tok = ((lane >> 4) << 3) + (lane & 7), ga_ch = warp * 2 + ((lane >> 3) & 1);
  const int hb_tok = (((lane >> 3) & 1) << 3) + (lane & 7), hb_ch = lane >> 4;
#pragma unroll
  for (int kk = 0; kk < sd_tc / 16; ++kk) {
    unsigned af[4];
    {
      const int row = kk * 16 + ga_tok;
      ldsm_x4_trans(gs + static_cast<unsigned>(row * 256 + ((ga_ch ^ (row & 7)) << 4)), af);
    }
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      const int row = kk * 16 + hb_tok, ch = np * 2 + hb_ch;
      unsigned bf[4];
      ldsm_x4_trans(hbase + static_cast<unsigned>(row * 64 + ((ch ^ ((row >> 1) & 3)) << 4)), bf);
      mma16816<T>(acc[2 * np], af, bf[0], bf[1]);
      mma16816<T>(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// Epilogue of both SDDMM kernels (all threads; Acc = this block's free shared memory): the fp32
// partial tile into Acc, a cluster barrier, then rank `split` of S writes rows [split·rpb, +rpb) of
// the tile: one thread per (row, kept slot < r), the S partials summed in rank order (deterministic).
template <class T>
__device__ __forceinline__ void sddmm_epilogue(float* Acc, const float (&acc)[4][4], int S, int split, index_t i0,
                                               index_t d, float s, const ::lori::cuda::sparse_b_view<T>& B, T* out) {
  namespace cg = cooperative_groups;
  const int tid = static_cast<int>(threadIdx.x);
  store_acc(Acc, acc, tid >> 5, tid & 31);
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  const float* parts[max_splits];
#pragma unroll
  for (int u = 0; u < max_splits; ++u) parts[u] = u < S ? cluster.map_shared_rank(Acc, u) : Acc;
  const int rpb = (tile_rows + S - 1) / S;
  for (int e = tid; e < rpb * max_rank; e += threads) {
    const int il = split * rpb + (e >> 5), slot = e & 31;
    const index_t i = i0 + il;
    if (il < tile_rows && i < d) {
      const std::int32_t p = B.row_ptr[i] + slot;
      if (p < B.row_ptr[i + 1]) {
        const int col = B.col_idx[p];
        float v[max_splits];
#pragma unroll
        for (int u = 0; u < max_splits; ++u) v[u] = u < S ? parts[u][il * acc_ld + col] : 0.0f;
        float x = 0.0f;
#pragma unroll
        for (int u = 0; u < max_splits; ++u)
          if (u < S) x += v[u];  // cluster-rank order: deterministic
        out[p] = ::lori::from_float<T>(s * x);
      }
    }
  }
  cluster.sync();  // keep this block's shared memory alive until the cluster has read it
}

template <class T>
struct sddmm_args {
  const T* G;
  index_t n, d, ldg;
  const float* H;  // n x r, leading dimension r
  int r;
  bool h_vec;      // H 16-byte aligned and r % 4 == 0: 16-byte copies of H
  int splits;      // blocks (cluster size) per 128-column tile
  index_t tps;     // tokens per split, a multiple of sd_tc
  float s;
  ::lori::cuda::sparse_b_view<T> B;
  T* out;
};

// Grid: tiles · splits blocks, cluster (splits, 1, 1); block b: columns (b / splits)·128 of G, token
// split b % splits. Requires G 16-byte aligned and d, ldg multiples of 8.
template <class T, int Stages = sd_stages>
__global__ void __launch_bounds__(threads, min_blocks_of(sd_smem_of(Stages))) sddmm_kernel(sddmm_args<T> a) {
  unsigned char* smem = dynamic_smem();
  const unsigned sbase = smem_u32(smem);
  unsigned char* hb = smem + Stages * sd_stage_bytes;  // H of the current stage in T, 64 x 32
  const unsigned hbase = smem_u32(hb);
  const int tid = static_cast<int>(threadIdx.x);
  const int S = a.splits;
  const split_range w = block_split(S, a.tps, a.n);
  const int split = w.split, steps = w.steps;
  const index_t i0 = w.i0, tb = w.tb, te = w.te;
  const int r = a.r;

  // G stage: token row q (0..63) of 256 bytes, chunk c (8 columns) at q·256 + ((c ^ (q & 7))·16).
  // Thread tid copies chunk c = tid & 15 of rows tid/16 + 16·i, i < 4.
  const int gc = tid & 15, gq = tid >> 4;
  const unsigned gdst = static_cast<unsigned>(gq * 256 + ((gc ^ (gq & 7)) << 4));
  const bool gcol_ok = i0 + gc * 8 < a.d;  // d is a multiple of 8
  const T* gsrc = a.G + (gcol_ok ? i0 + gc * 8 : 0);
  // H stage (fp32, unswizzled): token row q of 128 bytes. 16-byte path: chunk tid & 7 of rows tid/8 + 32·i.
  auto issue = [&](int s) {
    if (s < steps) {
      const unsigned st = sbase + static_cast<unsigned>((s % Stages) * sd_stage_bytes);
      const index_t tk = tb + static_cast<index_t>(s) * sd_tc;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const index_t t = tk + gq + 16 * i;
        const bool ok = gcol_ok && t < te;
        cp_async16(st + gdst + static_cast<unsigned>(i * 16 * 256), ok ? gsrc + t * a.ldg : a.G, ok);
      }
      const unsigned hs = st + sd_g_bytes;
      if (a.h_vec) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int q = (tid >> 3) + 32 * i, c = tid & 7;
          const index_t t = tk + q;
          const bool ok = t < te && c * 4 < r;
          cp_async16(hs + static_cast<unsigned>(q * 128 + c * 16), ok ? a.H + t * r + c * 4 : a.H, ok);
        }
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int e = tid + threads * i, q = e >> 5, j = e & 31;
          const index_t t = tk + q;
          const bool ok = t < te && j < r;
          cp_async4(hs + static_cast<unsigned>(q * 128 + j * 4), ok ? a.H + t * r + j : a.H, ok);
        }
      }
    }
    cp_async_commit();
  };

  float acc[4][4];
  zero_acc(acc);

#pragma unroll
  for (int s = 0; s < Stages - 1; ++s) issue(s);
  for (int s = 0; s < steps; ++s) {
    cp_async_wait<Stages - 2>();
    __syncthreads();  // stage s visible; everyone is done with stage s - 1 (ring slot and hb)
    issue(s + Stages - 1);
    const unsigned gs = sbase + static_cast<unsigned>((s % Stages) * sd_stage_bytes);
    sddmm_convert_h<T>(smem + (s % Stages) * sd_stage_bytes + sd_g_bytes, hb);
    __syncthreads();  // hb complete
    sddmm_stage_mma<T>(gs, hbase, acc);
  }
  cp_async_wait<0>();
  __syncthreads();
  sddmm_epilogue(reinterpret_cast<float*>(smem), acc, S, split, i0, a.d, a.s, a.B, a.out);
}

/// Whether sddmm_kernel takes G n x d (ldg) with rank r.
template <class T>
bool sddmm_applies(const T* G, index_t d, index_t ldg, index_t r) {
  return is_16bit_v<T> && r >= 1 && r <= max_rank && d % 8 == 0 && ldg % 8 == 0 && aligned16(G);
}

/// out[p] = T(s · Σ_t G(t, i)·T(H(t, j))) for B's kept (i, j) on `stream` (requires sddmm_applies, n >= 1).
template <class T, int Stages = sd_stages>
void launch_sddmm(cudaStream_t stream, const T* G, index_t n, index_t d, index_t ldg, const float* H,
                  float s, const ::lori::cuda::sparse_b<T>& B, T* out, int cap = max_splits) {
  if (n == 0 || d == 0) return;
  LORI_EXPECTS(cap >= 1 && cap <= max_splits, "skinny::launch_sddmm: split cap must be in [1, 8]");
  const index_t r = B.cols();
  const index_t tiles = ceil_div(d, tile_rows);
  constexpr auto kernel = sddmm_kernel<T, Stages>;
  set_smem_attributes(kernel, sd_smem_of(Stages));
  int S = choose_splits<kernel>(threads, sd_smem_of(Stages), tiles, n, sd_tc, cap);
  const index_t tps = ceil_div(ceil_div(n, S), sd_tc) * sd_tc;
  S = static_cast<int>(ceil_div(n, tps));
  const bool h_vec = r % 4 == 0 && aligned16(H);
  sddmm_args<T> a{G, n, d, ldg, H, static_cast<int>(r), h_vec, S, tps, s, B.view(), out};
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(grid_dim(tiles * S), threads, sd_smem_of(Stages),
                                                static_cast<unsigned>(S), stream, attr);
  LORI_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, a));
  LORI_CUDA_CHECK_LAUNCH();
}

// ---- sddmm with TMA loads: arguments --------------------------------------------------------------
// Tensor maps of G (two 64-column x 64-token boxes per stage, 128-byte swizzle) and H (32 x 64 fp32;
// zeros outside). Requires G 16-byte aligned, d and ldg multiples of 8, H 16-byte aligned and
// r % 4 == 0 (16-byte row stride for TMA). (Session 3's TMA kernel with a one-thread producer and
// block barriers per stage was replaced by sddmm_ws_kernel: 23.4-23.9 vs 25.1-25.6 µs at n = 4096,
// 62.2-62.4 vs 64.9-65.0 µs at n = 16384 on the H100, docs/cuda.md.)
template <class T>
struct sddmm_tma_args {
  CUtensorMap gmap;  // G: {d, n} elements, box {64, 64}
  CUtensorMap hmap;  // H: {r, n} fp32, box {32, 64}
  index_t n, d, tps;
  int splits;
  float s;
  ::lori::cuda::sparse_b_view<T> B;
  T* out;
  bool evict_first;  // L2 evict-first policy for G (read once)
};

/// Whether the warp-specialised TMA kernel takes G (as sddmm_applies) and H (16-byte aligned, r % 4 == 0).
template <class T>
bool sddmm_tma_applies(const T* G, index_t d, index_t ldg, index_t r, const float* H) {
  return sddmm_applies(G, d, ldg, r) && r % 4 == 0 && aligned16(H);
}

// ---- sddmm, warp-specialised: a TMA producer warp, a deep full/empty mbarrier ring -------------------
// The same tiles (128 columns of G x r <= 32) and 64-token stages as sddmm_kernel, but no block
// barrier in the steady state: warp 8 (one lane) keeps up to Stages stages (24 KB each: G 16 KB in two
// 64-column boxes, 128-byte swizzle, evict-first; H 8 KB fp32, 128-byte swizzle) in flight, refilling
// a slot as soon as its `empty` mbarrier says the 8 consumer warps are done with it; the consumers wait
// on the slot's `full` mbarrier (TMA byte count), compute, and release the slot (one arrive per warp).
// Consumer warp w owns columns (w & 3)·32 .. +32 of the tile and tokens (w >> 2)·32 .. +32 of each
// stage; it converts its H fragments to T in registers (cvt.rn: the rounding of from_float), so no
// shared H buffer and no barrier is needed. Warp 9 copies the tile's CSR rows (row_ptr, col_idx of
// the rows this block writes) into shared memory while the ring streams, so the epilogue has no
// dependent global load. Epilogue: the two token halves' fp32 tiles in shared memory, one cluster
// barrier, rank q sums its rows over the S blocks (rank order) and the two halves (half 0 + half 1):
// deterministic. Grid: one block per (tile, split), at most one wave (choose_splits); with the
// default 4 stages (97 KB) two blocks per SM (8 stages, 197 KB, one block per SM, measured slower). Splits are multiples of 64 tokens, so a stage crosses
// a split's end only at the end of G, where the box copies zero-fill.
inline constexpr int ws_consumers = 8;                      // consumer warps: 4 column groups x 2 token halves
inline constexpr int ws_threads = (ws_consumers + 2) * 32;  // + the producer warp + the CSR warp
inline constexpr int ws_stages = 4;
constexpr int ws_smem_of(int stages) { return stages * sd_stage_bytes + 1024; }  // + 1024-byte alignment slack
static_assert(2 * tile_rows * acc_ld * 4 <= 2 * sd_stage_bytes, "two epilogue tiles must fit two stages");

// Two fp32 values rounded to nearest even into a 16-bit pair (lo in the low half: the smaller k of an
// mma fragment).
template <class T>
__device__ __forceinline__ unsigned pack_round2(float lo, float hi) {
  unsigned d;
  if constexpr (std::is_same_v<T, ::lori::bfloat16>) asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
  else asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}

// One stage for consumer warp (cg, th): acc[mt·4 + nt] (columns cg·32 + mt·16 .. +16 of the tile x
// ranks nt·8 .. +8) += Gᵀ·T(H) over tokens th·32 .. +32 of the stage at st (address st_addr).
// G: two 64-column halves 8 KB apart, rows of 128 bytes, 16-byte chunk c at (c ^ (row & 7)) (TMA's
// 128-byte swizzle); A = Gᵀ by ldmatrix.trans (matrix q = lane/8: tokens (q >> 1)·8 + lane % 8,
// columns + (q & 1)·8). H: fp32 rows of 128 bytes at st + sd_g_bytes, chunk c (4 floats) at
// (c ^ (row & 7)); the B fragment b0 = (H(k, n), H(k + 1, n)), k = 2·(lane % 4), n = lane / 4, b1 at
// k + 8, read as scalars: per load the 32 lanes hit 32 distinct banks (the swizzle spreads the 4 rows).
template <class T>
__device__ __forceinline__ void ws_stage_mma(const unsigned char* st, unsigned st_addr, int cg, int th, int lane,
                                             float (&acc)[8][4]) {
  const unsigned gbase = st_addr + static_cast<unsigned>((cg >> 1) * (sd_tc * 128));
  const int ch0 = (cg & 1) * 4 + ((lane >> 3) & 1);
  const int tok_a = th * 32 + ((lane >> 4) << 3) + (lane & 7);
  const unsigned char* hs = st + sd_g_bytes;
  const int hn = lane >> 2, hk = th * 32 + 2 * (lane & 3);
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    unsigned af[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int row = tok_a + kk * 16, ch = ch0 + mt * 2;
      ldsm_x4_trans(gbase + static_cast<unsigned>(row * 128 + ((ch ^ (row & 7)) << 4)), af[mt]);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int j = nt * 8 + hn;
      float h[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int t = hk + kk * 16 + (e & 1) + (e >> 1) * 8;
        h[e] = *reinterpret_cast<const float*>(hs + t * 128 + ((((j >> 2) ^ (t & 7))) << 4) + (j & 3) * 4);
      }
      const unsigned b0 = pack_round2<T>(h[0], h[1]), b1 = pack_round2<T>(h[2], h[3]);
      mma16816<T>(acc[nt], af[0], b0, b1);
      mma16816<T>(acc[4 + nt], af[1], b0, b1);
    }
  }
}

__device__ __forceinline__ void mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Math = 0: the consumers only wait and release (the memory pipeline alone; benchmarks only); Math =
// -1: the same without the H boxes (G's bytes alone through the TMA unit).
template <class T, int Stages = ws_stages, int Math = 1>
__global__ void __launch_bounds__(ws_threads, min_blocks_of(ws_smem_of(Stages)))
    sddmm_ws_kernel(const __grid_constant__ sddmm_tma_args<T> a) {
  __shared__ alignas(8) std::uint64_t full[Stages];
  __shared__ alignas(8) std::uint64_t empty[Stages];
  __shared__ std::int32_t rp[tile_rows + 1];           // row_ptr of the rows this block writes
  __shared__ unsigned char cols[tile_rows * max_rank];  // their col_idx
  unsigned char* raw = dynamic_smem();
  unsigned char* smem = raw + ((1024u - (smem_u32(raw) & 1023u)) & 1023u);
  const unsigned sbase = smem_u32(smem);
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int S = a.splits;
  const split_range w = block_split(S, a.tps, a.n);
  const int split = w.split, steps = w.steps;
  const index_t i0 = w.i0, tb = w.tb;
  const int rpb = (tile_rows + S - 1) / S;  // tile rows each rank reduces and writes
  const int rbeg = split * rpb;             // < tile_rows for S <= 8
  if (warp == ws_consumers && lane == 0) {  // the producer: fetch both tensor maps while the block sets up
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<std::uint64_t>(&a.gmap)) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<std::uint64_t>(&a.hmap)) : "memory");
  }
  if (tid == 0) {
#pragma unroll
    for (int i = 0; i < Stages; ++i) {
      mbar_init(smem_u32(&full[i]), 1);
      mbar_init(smem_u32(&empty[i]), ws_consumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  float acc[8][4];
  zero_acc(acc);
  if (warp < ws_consumers) {
    const int cgp = warp & 3, th = warp >> 2;
    for (int s = 0; s < steps; ++s) {
      const int slot = s % Stages;
      mbar_wait_parity(smem_u32(&full[slot]), static_cast<unsigned>((s / Stages) & 1));
      if constexpr (Math == 1)
        ws_stage_mma<T>(smem + slot * sd_stage_bytes, sbase + static_cast<unsigned>(slot * sd_stage_bytes), cgp, th, lane,
                        acc);
      __syncwarp();  // the whole warp is done reading the slot
      if (lane == 0) mbar_arrive(smem_u32(&empty[slot]));
    }
  } else if (warp == ws_consumers) {
    if (lane == 0) {
      const std::uint64_t policy = stream_policy(a.evict_first);
      for (int s = 0; s < steps; ++s) {
        const int slot = s % Stages;
        if (s >= Stages) mbar_wait_parity(smem_u32(&empty[slot]), static_cast<unsigned>(((s / Stages) - 1) & 1));
        const unsigned st = sbase + static_cast<unsigned>(slot * sd_stage_bytes), bar = smem_u32(&full[slot]);
        const int y = static_cast<int>(tb + static_cast<index_t>(s) * sd_tc);
        mbar_arrive_expect_tx(bar, static_cast<unsigned>(Math == -1 ? sd_g_bytes : sd_stage_bytes));
        tma_load_2d_hint(st, &a.gmap, static_cast<int>(i0), y, bar, policy);
        tma_load_2d_hint(st + sd_tc * 128, &a.gmap, static_cast<int>(i0 + 64), y, bar, policy);
        if constexpr (Math != -1) tma_load_2d(st + sd_g_bytes, &a.hmap, 0, y, bar);
      }
    }
  } else {
    // The CSR rows [i0 + rbeg, +rpb) (clipped to d) into shared memory, off the critical path.
    const index_t r0 = i0 + rbeg;
    for (int k = lane; k <= rpb; k += 32) rp[k] = a.B.row_ptr[r0 + k < a.d ? r0 + k : a.d];
    __syncwarp();
    const std::int32_t base = rp[0];
    const std::int32_t cnt = rp[rpb] - base;  // <= rpb·r <= tile_rows·max_rank (at most r entries a row)
    for (std::int32_t q = lane; q < cnt; q += 32) cols[q] = static_cast<unsigned char>(a.B.col_idx[base + q]);
  }
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  __syncthreads();  // the ring is consumed (no copy in flight), the CSR rows are in shared memory
  float* tile = reinterpret_cast<float*>(smem);  // token half 0, then half 1 (tile_rows x acc_ld each)
  if (warp < ws_consumers) {
    float* t = tile + (warp >> 2) * (tile_rows * acc_ld);
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int r0 = (warp & 3) * 32 + mt * 16 + (lane >> 2);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int c = nt * 8 + 2 * (lane & 3);
        const float(&v)[4] = acc[mt * 4 + nt];
        *reinterpret_cast<float2*>(t + r0 * acc_ld + c) = make_float2(v[0], v[1]);
        *reinterpret_cast<float2*>(t + (r0 + 8) * acc_ld + c) = make_float2(v[2], v[3]);
      }
    }
  }
  cluster.sync();
  const float* parts[max_splits];
#pragma unroll
  for (int u = 0; u < max_splits; ++u) parts[u] = u < S ? cluster.map_shared_rank(tile, u) : tile;
  for (int e = tid; e < rpb * max_rank; e += ws_threads) {
    const int lr = e >> 5, slot = e & 31, il = rbeg + lr;
    if (il < tile_rows && i0 + il < a.d) {
      const std::int32_t p = rp[lr] + slot;
      if (p < rp[lr + 1]) {
        const int off = il * acc_ld + cols[p - rp[0]];
        float v[2 * max_splits];
#pragma unroll
        for (int u = 0; u < max_splits; ++u) {
          v[2 * u] = u < S ? parts[u][off] : 0.0f;
          v[2 * u + 1] = u < S ? parts[u][tile_rows * acc_ld + off] : 0.0f;
        }
        float x = 0.0f;
#pragma unroll
        for (int u = 0; u < max_splits; ++u)
          if (u < S) x += v[2 * u] + v[2 * u + 1];  // rank order, half 0 + half 1: deterministic
        a.out[p] = ::lori::from_float<T>(a.s * x);
      }
    }
  }
  cluster.sync();  // keep this block's shared memory alive until the cluster has read it
}

/// The SDDMM on the warp-specialised kernel (requires sddmm_tma_applies, n >= 1). Stages and
/// Math = 0 / -1 (the memory pipeline alone, with / without H; wrong results) are for benchmarks.
template <class T, int Stages = ws_stages, int Math = 1>
void launch_sddmm_ws(cudaStream_t stream, const T* G, index_t n, index_t d, index_t ldg, const float* H, float s,
                     const ::lori::cuda::sparse_b<T>& B, T* out, int cap = max_splits, bool evict_first = true) {
  if (n == 0 || d == 0) return;
  LORI_EXPECTS(cap >= 1 && cap <= max_splits, "skinny::launch_sddmm_ws: split cap must be in [1, 8]");
  LORI_EXPECTS(n <= index_t{2147483647} && d <= index_t{2147483647}, "skinny::launch_sddmm_ws: too large");
  const index_t r = B.cols();
  const index_t tiles = ceil_div(d, tile_rows);
  constexpr auto kernel = sddmm_ws_kernel<T, Stages, Math>;
  constexpr int smem = ws_smem_of(Stages);
  static_assert(smem + 8 * 1024 <= 227 * 1024, "ring, receive buffer and static shared memory must fit an SM");
  set_smem_attributes(kernel, smem);
  int S = choose_splits<kernel>(ws_threads, smem, tiles, n, sd_tc, cap);
  const index_t tps = ceil_div(ceil_div(n, S), sd_tc) * sd_tc;  // a multiple of the stage
  S = static_cast<int>(ceil_div(n, tps));
  const sddmm_tma_args<T> a{tensor_map_2d(G, n, d, ldg, static_cast<unsigned>(sd_tc)),
                            h_tensor_map(H, n, r, CU_TENSOR_MAP_SWIZZLE_128B), n, d, tps, S, s, B.view(), out,
                            evict_first};
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(grid_dim(tiles * S), ws_threads, static_cast<std::size_t>(smem),
                                                static_cast<unsigned>(S), stream, attr);
  LORI_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, a));
  LORI_CUDA_CHECK_LAUNCH();
}


}  // namespace lori::detail::skinny

#endif  // LORI_DETAIL_SKINNY_GEMM_CUH
