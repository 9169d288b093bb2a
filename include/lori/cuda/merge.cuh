// lori/cuda/merge.cuh - merge T adapters into a base weight in one pass over W.
//
//   W (d x k) += Σₜ sₜ·Bₜ·Aₜ      Bₜ d x rₜ (dense, or a sparse_b), Aₜ rₜ x k
//
// The T low-rank terms are one GEMM with K = R = Σ rₜ: W += [s₁B₁ | … | s_TB_T]·[A₁; …; A_T]. lori packs
// the two thin operands into caller workspace ((d + k)·R elements of T) and runs ONE cuBLAS GEMM with
// beta = 1, which reads and writes W exactly once (fp32 accumulation, W rounded to T once). For 4
// adapters of rank 32 into a 14336 x 4096 bf16 W that is 2·117 MB of W traffic against 4.5 MB of
// packed operands and 15 GFLOP (about 19 µs of tensor-core time on an H100, under W's ~78 µs).
// When every sₜ is equal it becomes the GEMM's alpha and the packed Bₜ are exact copies; otherwise sₜ·Bₜ
// is rounded to T in the packed operand (16-bit: relative 2^-8 of each term; exact if sₜ is a power of 2).
#ifndef LORI_CUDA_MERGE_CUH
#define LORI_CUDA_MERGE_CUH

#include "lori/config.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/cuda/context.cuh"
#include "lori/cuda/sparse_b.cuh"
#include "lori/error.hpp"

#include "lori/detail/cuda_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <mma.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
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

/// Workspace bytes merge_into needs: (d + k)·R elements of T (R = Σ rₜ), plus alignment padding.
template <class T>
std::size_t merge_workspace_bytes(index_t d, index_t k, const std::vector<merge_source<T>>& sources);

/// W += Σₜ sₜ·Bₜ·Aₜ, one GEMM over W (see the file comment). Stream-ordered on ctx.
template <class T>
void merge_into(context& ctx, row_major_view<T> W, const std::vector<merge_source<T>>& sources, void* workspace,
                std::size_t workspace_bytes);

// =====================================================================================================
// Implementation
// =====================================================================================================
namespace detail_merge {

// Up to pack_max sources packed by ONE kernel: Bcat (d x R) columns [off, off + r) = s·Bₜ and
// Acat (R x k) rows [off, off + r) = Aₜ, for the sources' column range [c_begin, c_end).
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

template <class T>
struct pack_args {
  pack_source<T> src[pack_max];
  int count;
  index_t d, k, R, c_begin, c_end;
  bool split;  // 16-bit T with per-adapter scales: Bcat = [hi | lo], Acat = [A; A] (see merge_into)
  T* Bcat;
  T* Acat;
};

template <class T>
__global__ void pack_kernel(pack_args<T> a) {
  const index_t w = a.c_end - a.c_begin;
  const index_t nb = a.d * w, total = nb + w * a.k;
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<index_t>(gridDim.x) * blockDim.x) {
    if (e < nb) {  // Bcat(i, col)
      const index_t i = e / w, col = a.c_begin + (e - i * w);
      int t = 0;
      while (t + 1 < a.count && col >= a.src[t + 1].off) ++t;
      const pack_source<T>& src = a.src[t];
      const index_t j = col - src.off;
      float x = 0.0f;
      if (src.B != nullptr) {
        x = src.scale * ::lori::to_float(src.B[i * src.ldb + j]);
      } else if ((src.S.words[i * src.S.words_per_row + (j >> 6)] >> (j & 63)) & 1u) {
        x = src.scale * ::lori::to_float(src.S.values[detail_sparse::packed_index(src.S, i, j)]);
      }
      const T hi = ::lori::from_float<T>(x);
      const index_t ldb = a.split ? 2 * a.R : a.R;
      a.Bcat[i * ldb + col] = hi;
      // x - hi is exact in float (the rounding residual of a float to a shorter format), so hi + lo
      // carries s*b to ~2^-17 relative instead of the 2^-9 (bf16) a single 16-bit value would.
      if (a.split) a.Bcat[i * ldb + a.R + col] = ::lori::from_float<T>(x - ::lori::to_float(hi));
    } else {  // Acat(row, c)
      const index_t e2 = e - nb, rr = e2 / a.k, c = e2 - rr * a.k, row = a.c_begin + rr;
      int t = 0;
      while (t + 1 < a.count && row >= a.src[t + 1].off) ++t;
      const pack_source<T>& src = a.src[t];
      const T v = src.A[(row - src.off) * src.lda + c];
      a.Acat[row * a.k + c] = v;
      if (a.split) a.Acat[(a.R + row) * a.k + c] = v;
    }
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


// W += Σₜ sₜ·Bₜ·Aₜ in ONE kernel: each block owns a contiguous run of 128 x 64 tiles of W, keeps the
// next tiles of W loading with cp.async, computes the delta with WMMA 16x16x16 (fp32 accumulation, each
// adapter in its own fragments scaled by sₜ in fp32), adds it to W in fp32 and rounds once to T. Exact
// up to fp32 accumulation, but on the H100 (checkpoint 1) it took 212 µs for 4 dense adapters into a
// 14336 x 4096 bf16 W against 142 µs for the cuBLAS route above (which merge_into therefore uses):
// it is measured (BM_gpu_merge_candidate_*) and tested, and goes unless it wins somewhere.
// ---- 16-bit one-pass tensor-core kernel (a candidate, NOT the default path: measured slower) -----------

inline constexpr int tc_threads = 256;   // 8 warps, 4 (rows) x 2 (columns), 32 x 32 outputs each
inline constexpr int tc_bm = 128;        // tile rows (rows of W)
inline constexpr int tc_bn = 64;         // tile columns: one 128-byte line of a bf16 row
inline constexpr int tc_ks = 128;        // rank columns staged per stage (8 chunks of 16)
inline constexpr int tc_max_adapters = 16;
inline constexpr int tc_max_chunks = 64;  // 16-wide rank chunks per launch (total padded rank 1024)
inline constexpr int tc_lds_b = tc_ks + 8;  // shared leading dimensions (elements), padded 16 bytes
inline constexpr int tc_lds_a = tc_bn + 8;  //   against bank conflicts of the fragment loads
inline constexpr int tc_lds_c = tc_bn + 8;  // fp32 staging of the delta (8-byte fragment stores: half-warps hit distinct banks)
inline constexpr std::size_t tc_w_bytes = std::size_t{tc_bm} * tc_bn * 2;         // one W tile, 16 KiB
inline constexpr std::size_t tc_b_bytes = std::size_t{tc_bm} * tc_lds_b * 2;      // 34 KiB
inline constexpr std::size_t tc_a_bytes = std::size_t{tc_ks} * tc_lds_a * 2;      // 18 KiB
inline constexpr std::size_t tc_c_bytes = std::size_t{tc_bm / 2} * tc_lds_c * 4;  // half a tile of fp32, 18 KiB (aliases A)
static_assert(tc_c_bytes <= tc_a_bytes, "merge: the fp32 delta staging must fit in an A panel buffer");
// Two pipelines (template parameter kPipeA of merge_tc_kernel):
//  * false: three W buffers (tiles it + 1 and it + 2 load while tile it computes), one A panel loaded
//    per tile with plain 16-byte loads (its L2 latency is exposed, hidden by the other resident block);
//  * true: two W buffers and two A panel buffers: tile it + 1's W and A panel (stage 0) load with
//    cp.async while tile it computes (one group per tile).
constexpr int tc_wbufs(bool pipe_a) { return pipe_a ? 2 : 3; }
constexpr int tc_abufs(bool pipe_a) { return pipe_a ? 2 : 1; }
constexpr std::size_t tc_smem_bytes(bool pipe_a) {
  return tc_wbufs(pipe_a) * tc_w_bytes + tc_b_bytes + tc_abufs(pipe_a) * tc_a_bytes;
}
static_assert(2 * (tc_smem_bytes(false) + 1024) <= 228 * 1024 && 2 * (tc_smem_bytes(true) + 1024) <= 228 * 1024,
              "merge: two blocks per SM must fit an H100's shared memory");

template <class T>
struct tc_adapter {
  const T* A = nullptr;
  index_t lda = 0;
  const T* B = nullptr;  // dense B, or null: S
  index_t ldb = 0;
  sparse_b_view<T> S;
  float scale = 1.0f;
  int r = 0;
  bool a_vec = false, b_vec = false;  // 16-byte loads allowed (pointer and leading dimension)
};

struct tc_chunk {
  int kbase;            // first rank column of the chunk within its adapter (a multiple of 16)
  short adapter;        // index into tc_args::ad
  short last;           // 1: the adapter's last chunk in this launch (flush its accumulator)
};

template <class T>
struct tc_args {
  tc_adapter<T> ad[tc_max_adapters];
  tc_chunk ch[tc_max_chunks];
  int nchunks;
  T* W;
  index_t ldw, d, k;
  bool w_vec;
  bool w_stream;      // candidate option: W loads/stores with an L2 evict-first policy
  float final_scale;  // the common scale (equal scales) or 1 (per-adapter scales applied in fp32)
};

// Kernel parameters must stay under CUDA's classic 4 KiB limit.
static_assert(sizeof(tc_args<::lori::bfloat16>) <= 4000, "merge: tc_args too large for kernel parameters");

template <class T>
struct wmma_type {
  using type = std::conditional_t<std::is_same_v<T, ::lori::bfloat16>, __nv_bfloat16, __half>;
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
// L2 evict-first policy for the W stream (candidate option w_stream: keep A and B resident in L2).
__device__ __forceinline__ std::uint64_t evict_first_policy() {
  std::uint64_t pol;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
  return pol;
}
__device__ __forceinline__ void cp_async16_hint(void* smem, const void* gmem, std::uint64_t pol) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "l"(pol) : "memory");
}
__device__ __forceinline__ void st16_hint(void* gmem, uint4 v, std::uint64_t pol) {
  asm volatile("st.global.L2::cache_hint.v4.u32 [%0], {%1, %2, %3, %4}, %5;\n" ::"l"(gmem), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w), "l"(pol)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// 8 consecutive 16-bit elements of row `row` from column `col` of a row-major matrix (ld), element by
// element (the ragged edge or unaligned rows; aligned whole pieces use one 16-byte load); elements at
// columns >= cols read as 0.
template <class T>
__device__ __forceinline__ uint4 load8(const T* base, index_t ld, index_t row, index_t col, index_t cols) {
  const T* p = base + row * ld + col;
  std::uint16_t v[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] = col + e < cols ? p[e].bits : std::uint16_t{0};
  uint4 out;
  out.x = v[0] | (static_cast<unsigned>(v[1]) << 16);
  out.y = v[2] | (static_cast<unsigned>(v[3]) << 16);
  out.z = v[4] | (static_cast<unsigned>(v[5]) << 16);
  out.w = v[6] | (static_cast<unsigned>(v[7]) << 16);
  return out;
}

// Columns [kb, kb + 8) of row i of a sparse B as 8 dense 16-bit elements (zeros where not kept or
// kb + e >= r). kb is a multiple of 8, so the 8 bits lie in one mask word.
template <class T>
__device__ __forceinline__ uint4 load8_sparse(const sparse_b_view<T>& S, index_t i, int kb, int r) {
  uint4 out = make_uint4(0u, 0u, 0u, 0u);
  if (kb >= r) return out;
  const std::uint64_t* wrow = S.words + i * S.words_per_row;
  const int w = kb >> 6, sh = kb & 63;
  const std::uint64_t word = wrow[w];
  unsigned bits = static_cast<unsigned>(word >> sh) & 0xffu;
  if (kb + 8 > r) bits &= (1u << (r - kb)) - 1u;
  if (bits == 0u) return out;
  std::int32_t p = S.row_ptr[i];
  for (int q = 0; q < w; ++q) p += __popcll(wrow[q]);
  p += __popcll(word & ((std::uint64_t{1} << sh) - 1u));
  std::uint16_t v[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] = (bits >> e) & 1u ? S.values[p++].bits : std::uint16_t{0};
  out.x = v[0] | (static_cast<unsigned>(v[1]) << 16);
  out.y = v[2] | (static_cast<unsigned>(v[3]) << 16);
  out.z = v[4] | (static_cast<unsigned>(v[5]) << 16);
  out.w = v[6] | (static_cast<unsigned>(v[7]) << 16);
  return out;
}

// Issue the loads of W tile (i0, j0) into shared `dst` (tc_bm x tc_bn, dense): cp.async for whole
// aligned 16-byte pieces, plain loads for the ragged right edge or an unaligned W. Rows/columns outside
// W are left unwritten (the epilogue never reads them).
template <class T>
__device__ __forceinline__ void issue_w_tile(const tc_args<T>& a, index_t i0, index_t j0, std::uint16_t* dst) {
#pragma unroll
  for (int q = 0; q < tc_bm * tc_bn / 8 / tc_threads; ++q) {
    const int c = static_cast<int>(threadIdx.x) + q * tc_threads;
    const int row = c / (tc_bn / 8), col = (c % (tc_bn / 8)) * 8;
    const index_t gi = i0 + row, gj = j0 + col;
    if (gi >= a.d || gj >= a.k) continue;
    std::uint16_t* s = dst + row * tc_bn + col;
    if (a.w_vec && gj + 8 <= a.k) {
      if (a.w_stream) cp_async16_hint(s, a.W + gi * a.ldw + gj, evict_first_policy());
      else cp_async16(s, a.W + gi * a.ldw + gj);
    }
    else *reinterpret_cast<uint4*>(s) = load8(a.W, a.ldw, gi, gj, a.k);
  }
}

// Piece c of the stage's B panel (rows [i0, i0 + tc_bm) x the stage's rank chunks, 8 elements per
// piece, zero padded) as a 16-byte value: one vector load for aligned dense pieces, element loads for
// ragged or unaligned ones, the mask + packed values for a sparse B.
template <class T>
__device__ __forceinline__ uint4 b_piece(const tc_args<T>& a, int c0, int cpr, int c, index_t i0) {
  const int row = c / cpr, q = c - row * cpr;
  const tc_chunk ch = a.ch[c0 + (q >> 1)];
  const tc_adapter<T>& ad = a.ad[ch.adapter];
  const int kb = ch.kbase + (q & 1) * 8;
  const index_t gi = i0 + row;
  if (gi >= a.d) return make_uint4(0u, 0u, 0u, 0u);
  if (ad.B == nullptr) return load8_sparse(ad.S, gi, kb, ad.r);
  if (ad.b_vec && kb + 8 <= ad.r) return __ldg(reinterpret_cast<const uint4*>(ad.B + gi * ad.ldb + kb));
  return load8(ad.B, ad.ldb, gi, kb, ad.r);
}
// Piece c of the stage's A panel (the chunks' rows of A_t x columns [j0, j0 + tc_bn), zero padded).
template <class T>
__device__ __forceinline__ uint4 a_piece(const tc_args<T>& a, int c0, int c, index_t j0) {
  const int kk = c / (tc_bn / 8), col = (c - kk * (tc_bn / 8)) * 8;
  const tc_chunk ch = a.ch[c0 + kk / 16];
  const tc_adapter<T>& ad = a.ad[ch.adapter];
  const int krow = ch.kbase + kk % 16;
  const index_t gj = j0 + col;
  if (krow >= ad.r || gj >= a.k) return make_uint4(0u, 0u, 0u, 0u);
  if (ad.a_vec && gj + 8 <= a.k) return __ldg(reinterpret_cast<const uint4*>(ad.A + krow * ad.lda + gj));
  return load8(ad.A, ad.lda, krow, gj, a.k);
}

// The stage's B panel into Bs with plain loads, 2 pieces in flight per thread (B changes rarely:
// once per band of rows in single-stage launches).
template <class T>
__device__ __forceinline__ void stage_b(const tc_args<T>& a, int c0, int nc, index_t i0, std::uint16_t* Bs) {
  const int cpr = 2 * nc, nb = tc_bm * cpr;  // 8-element pieces per row, in the panel
  for (int base = 0; base < nb; base += 2 * tc_threads) {
    uint4 v[2];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int c = base + static_cast<int>(threadIdx.x) + q * tc_threads;
      if (c < nb) v[q] = b_piece(a, c0, cpr, c, i0);
    }
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int c = base + static_cast<int>(threadIdx.x) + q * tc_threads;
      if (c < nb) {
        const int row = c / cpr, pq = c - row * cpr;
        *reinterpret_cast<uint4*>(Bs + row * tc_lds_b + pq * 8) = v[q];
      }
    }
  }
}

// The stage's A panel into As with plain loads, all (at most 4) pieces of a thread in flight at once.
template <class T>
__device__ __forceinline__ void stage_a(const tc_args<T>& a, int c0, int nc, index_t j0, std::uint16_t* As) {
  const int na = nc * 16 * (tc_bn / 8);  // at most 1024 = 4 per thread
  uint4 v[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int c = static_cast<int>(threadIdx.x) + q * tc_threads;
    if (c < na) v[q] = a_piece(a, c0, c, j0);
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int c = static_cast<int>(threadIdx.x) + q * tc_threads;
    if (c < na) *reinterpret_cast<uint4*>(As + c / (tc_bn / 8) * tc_lds_a + (c % (tc_bn / 8)) * 8) = v[q];
  }
}

// The same panel with cp.async for whole aligned pieces (the caller commits and waits); ragged or
// unaligned pieces and the zero padding are stored directly.
template <class T>
__device__ __forceinline__ void issue_a(const tc_args<T>& a, int c0, int nc, index_t j0, std::uint16_t* As) {
  const int na = nc * 16 * (tc_bn / 8);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int c = static_cast<int>(threadIdx.x) + q * tc_threads;
    if (c >= na) continue;
    const int kk = c / (tc_bn / 8), col = (c - kk * (tc_bn / 8)) * 8;
    const tc_chunk ch = a.ch[c0 + kk / 16];
    const tc_adapter<T>& ad = a.ad[ch.adapter];
    const int krow = ch.kbase + kk % 16;
    const index_t gj = j0 + col;
    std::uint16_t* dst = As + kk * tc_lds_a + col;
    if (krow < ad.r && gj + 8 <= a.k && ad.a_vec) cp_async16(dst, ad.A + krow * ad.lda + gj);
    else *reinterpret_cast<uint4*>(dst) = a_piece(a, c0, c, j0);
  }
}

// The MMAs of one stage: warp (wr, wc) accumulates its 32 x 32 outputs over the stage's nc chunks.
template <class T, bool kPerAdapter>
__device__ __forceinline__ void mma_stage(const tc_args<T>& a, int c0, int nc, const std::uint16_t* Bs,
                                          const std::uint16_t* As, int wr, int wc,
                                          nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> (&acc)[2][2],
                                          nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> (&acc_t)[2][2]) {
  namespace wm = nvcuda::wmma;
  using M = typename wmma_type<T>::type;
  for (int j = 0; j < nc; ++j) {
    wm::fragment<wm::matrix_a, 16, 16, 16, M, wm::row_major> fa[2];
    wm::fragment<wm::matrix_b, 16, 16, 16, M, wm::row_major> fb[2];
#pragma unroll
    for (int x = 0; x < 2; ++x)
      wm::load_matrix_sync(fa[x], reinterpret_cast<const M*>(Bs + (wr * 32 + x * 16) * tc_lds_b + j * 16), tc_lds_b);
#pragma unroll
    for (int y = 0; y < 2; ++y)
      wm::load_matrix_sync(fb[y], reinterpret_cast<const M*>(As + j * 16 * tc_lds_a + wc * 32 + y * 16), tc_lds_a);
    if constexpr (kPerAdapter) {
#pragma unroll
      for (int x = 0; x < 2; ++x)
#pragma unroll
        for (int y = 0; y < 2; ++y) wm::mma_sync(acc_t[x][y], fa[x], fb[y], acc_t[x][y]);
      const tc_chunk ch = a.ch[c0 + j];
      if (ch.last) {  // uniform across the block: fold s_t * (B_t A_t) into the total in fp32
        const float st = a.ad[ch.adapter].scale;
#pragma unroll
        for (int x = 0; x < 2; ++x)
#pragma unroll
          for (int y = 0; y < 2; ++y)
#pragma unroll
            for (int e = 0; e < acc[x][y].num_elements; ++e) {
              acc[x][y].x[e] += st * acc_t[x][y].x[e];
              acc_t[x][y].x[e] = 0.0f;
            }
      }
    } else {
#pragma unroll
      for (int x = 0; x < 2; ++x)
#pragma unroll
        for (int y = 0; y < 2; ++y) wm::mma_sync(acc[x][y], fa[x], fb[y], acc[x][y]);
    }
  }
}

// Epilogue in two halves of 64 rows (Cs holds half a tile): warps of rows [64h, 64h + 64) stage their
// fp32 delta, then all threads add it to W in fp32, round once to T and store 16 bytes each. The
// caller has made this tile's W (Wcur) complete for this thread; the first barrier publishes it and
// ends every warp's reads of the memory Cs reuses.
template <class T>
__device__ __forceinline__ void epilogue(const tc_args<T>& a, index_t i0, index_t j0, const std::uint16_t* Wcur, float* Cs,
                                         int wr, int wc,
                                         const nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> (&acc)[2][2]) {
  namespace wm = nvcuda::wmma;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    __syncthreads();  // half 0: Cs's memory is free and W visible; half 1: Cs was consumed
    if (wr / 2 == half) {
#pragma unroll
      for (int x = 0; x < 2; ++x)
#pragma unroll
        for (int y = 0; y < 2; ++y)
          wm::store_matrix_sync(Cs + ((wr % 2) * 32 + x * 16) * tc_lds_c + wc * 32 + y * 16, acc[x][y], tc_lds_c,
                                wm::mem_row_major);
    }
    __syncthreads();  // Cs complete
#pragma unroll
    for (int q = 0; q < tc_bm / 2 * tc_bn / 8 / tc_threads; ++q) {
      const int c = static_cast<int>(threadIdx.x) + q * tc_threads;
      const int hrow = c / (tc_bn / 8), p = c % (tc_bn / 8), col = p * 8, row = half * (tc_bm / 2) + hrow;
      const index_t gi = i0 + row, gj = j0 + col;
      if (gi >= a.d || gj >= a.k) continue;
      // Read the two float4 halves in an order that puts the 8 threads of a row on distinct banks.
      const int h = (p >> 2) & 1;
      const float4 u0 = *reinterpret_cast<const float4*>(Cs + hrow * tc_lds_c + col + 4 * h);
      const float4 u1 = *reinterpret_cast<const float4*>(Cs + hrow * tc_lds_c + col + 4 * (1 - h));
      const float dlt[8] = {h ? u1.x : u0.x, h ? u1.y : u0.y, h ? u1.z : u0.z, h ? u1.w : u0.w,
                            h ? u0.x : u1.x, h ? u0.y : u1.y, h ? u0.z : u1.z, h ? u0.w : u1.w};
      const uint4 wv = *reinterpret_cast<const uint4*>(Wcur + row * tc_bn + col);
      const unsigned wi[4] = {wv.x, wv.y, wv.z, wv.w};
      unsigned o[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float lo = ::lori::to_float(T::from_bits(static_cast<std::uint16_t>(wi[e] & 0xffffu))) + a.final_scale * dlt[2 * e];
        const float hi = ::lori::to_float(T::from_bits(static_cast<std::uint16_t>(wi[e] >> 16))) + a.final_scale * dlt[2 * e + 1];
        o[e] = ::lori::from_float<T>(lo).bits | (static_cast<unsigned>(::lori::from_float<T>(hi).bits) << 16);
      }
      T* dst = a.W + gi * a.ldw + gj;
      if (a.w_vec && gj + 8 <= a.k) {
        if (a.w_stream) st16_hint(dst, make_uint4(o[0], o[1], o[2], o[3]), evict_first_policy());
        else *reinterpret_cast<uint4*>(dst) = make_uint4(o[0], o[1], o[2], o[3]);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e)
          if (gj + e < a.k) dst[e] = T::from_bits(static_cast<std::uint16_t>(o[e / 2] >> (16 * (e % 2))));
      }
    }
  }
}

// kNoMath (diagnostic only, wrong results): skip the MMAs, to time the memory pipeline alone.
template <class T, bool kPerAdapter, bool kPipeA, bool kNoMath = false>
__global__ void __launch_bounds__(tc_threads, 2) merge_tc_kernel(const __grid_constant__ tc_args<T> a) {
  namespace wm = nvcuda::wmma;
  constexpr int nw = tc_wbufs(kPipeA);
  unsigned char* smem = detail::dynamic_smem();
  // Shared memory: nw W tile buffers (the block's tile number `it` uses buffer it % nw), B, then the A
  // panel buffer(s) (tile it uses buffer it % 2 when kPipeA); the fp32 delta staging Cs reuses the
  // current A buffer after the math.
  const auto wbuf = [smem](int it) { return reinterpret_cast<std::uint16_t*>(smem + (it % nw) * tc_w_bytes); };
  std::uint16_t* Bs = reinterpret_cast<std::uint16_t*>(smem + nw * tc_w_bytes);
  const auto abuf = [smem](int it) {
    return reinterpret_cast<std::uint16_t*>(smem + nw * tc_w_bytes + tc_b_bytes + (kPipeA ? (it & 1) : 0) * tc_a_bytes);
  };

  const index_t ncolt = (a.k + tc_bn - 1) / tc_bn;
  const index_t ntiles = (a.d + tc_bm - 1) / tc_bm * ncolt;
  // A contiguous run of tiles per block (row-major tile order): consecutive tiles share the band of
  // rows, so the staged B rows are reused while the band does not change (single-stage launches).
  const index_t t_begin = blockIdx.x * ntiles / gridDim.x, t_end = (blockIdx.x + 1) * ntiles / gridDim.x;
  if (t_begin >= t_end) return;
  const int nstages = (a.nchunks + tc_ks / 16 - 1) / (tc_ks / 16);
  const int nc0 = min(tc_ks / 16, a.nchunks);  // chunks of stage 0
  const int warp = static_cast<int>(threadIdx.x) / 32, wr = warp / 2, wc = warp % 2;
  // One cp.async group per tile (empty past the run): its W tile and, with kPipeA, its stage-0 A panel.
  const auto issue = [&](index_t tile, int slot) {
    if (tile < t_end) {
      const index_t band = tile / ncolt, j0 = (tile - band * ncolt) * tc_bn;
      issue_w_tile(a, band * tc_bm, j0, wbuf(slot));
      if constexpr (kPipeA) issue_a(a, 0, nc0, j0, abuf(slot));
    }
    cp_async_commit();
  };
#pragma unroll
  for (int p = 0; p < nw - 1; ++p) issue(t_begin + p, p);

  index_t staged_band = -1;
  int it = 0;
  for (index_t tile = t_begin; tile < t_end; ++tile, ++it) {
    const index_t band = tile / ncolt, i0 = band * tc_bm, j0 = (tile - band * ncolt) * tc_bn;
    // Keep nw - 1 tiles in flight: the buffers of tile it + nw - 1 are those tile it - 1 used,
    // released by the barrier that ended the previous iteration.
    issue(tile + nw - 1, it + nw - 1);
    std::uint16_t* As = abuf(it);

    wm::fragment<wm::accumulator, 16, 16, 16, float> acc[2][2], acc_t[2][2];
#pragma unroll
    for (int x = 0; x < 2; ++x)
#pragma unroll
      for (int y = 0; y < 2; ++y) {
        wm::fill_fragment(acc[x][y], 0.0f);
        if constexpr (kPerAdapter) wm::fill_fragment(acc_t[x][y], 0.0f);
      }
    for (int s = 0; s < nstages; ++s) {
      const int c0 = s * (tc_ks / 16), nc = min(tc_ks / 16, a.nchunks - c0);
      if (s > 0) __syncthreads();  // the previous stage's fragments are loaded
      if (nstages > 1 || band != staged_band) stage_b(a, c0, nc, i0, Bs);
      if (!kPipeA || s > 0) stage_a(a, c0, nc, j0, As);
      if (kPipeA && s == 0) cp_async_wait<nw - 1>();  // this tile's group (W and A panel) has landed
      __syncthreads();
      if constexpr (!kNoMath) mma_stage<T, kPerAdapter>(a, c0, nc, Bs, As, wr, wc, acc, acc_t);
    }
    staged_band = band;
    if constexpr (!kPipeA) cp_async_wait<nw - 1>();  // this tile's W has landed (nw - 1 newer groups may pend)
    epilogue(a, i0, j0, wbuf(it), reinterpret_cast<float*>(As), wr, wc, acc);
    __syncthreads();  // Cs (A's memory) and this tile's buffers are free for the next tiles
  }
  cp_async_wait<0>();
}

template <class T>
bool aligned16(const T* p, index_t ld) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0 && ld % 8 == 0;
}

template <class T, bool kPerAdapter, bool kPipeA, bool kNoMath>
void launch_tc(context& ctx, const tc_args<T>& a) {
  auto kernel = merge_tc_kernel<T, kPerAdapter, kPipeA, kNoMath>;
  constexpr std::size_t smem = tc_smem_bytes(kPipeA);
  LORI_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int per_sm = 0;
  LORI_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, tc_threads, smem));
  const index_t ntiles = detail::ceil_div(a.d, tc_bm) * detail::ceil_div(a.k, tc_bn);
  const index_t blocks = std::min<index_t>(ntiles, static_cast<index_t>(std::max(per_sm, 1)) * ctx.sm_count());
  kernel<<<detail::grid_dim(blocks), tc_threads, smem, ctx.stream()>>>(a);
  LORI_CUDA_CHECK_LAUNCH();
}

template <class T, bool kPipeA = false, bool kNoMath = false>
void merge_16bit(context& ctx, row_major_view<T> W, const std::vector<merge_source<T>>& sources, bool same_scale,
                 bool w_stream = false) {
  tc_args<T> a{};
  a.W = W.data();
  a.ldw = W.ld();
  a.d = W.rows();
  a.k = W.cols();
  a.w_vec = aligned16(W.data(), W.ld());
  a.w_stream = w_stream;
  a.final_scale = same_scale ? sources.front().scale : 1.0f;
  auto flush = [&] {
    if (a.nchunks == 0) return;
    a.ch[a.nchunks - 1].last = 1;  // an adapter split over launches is flushed at the launch's end
    if (same_scale) launch_tc<T, false, kPipeA, kNoMath>(ctx, a);
    else launch_tc<T, true, kPipeA, kNoMath>(ctx, a);
    a.nchunks = 0;
    for (auto& ad : a.ad) ad = tc_adapter<T>{};
  };
  int nad = 0;
  for (const auto& src : sources) {
    const index_t r = source_rank(src);
    int slot = -1;
    for (index_t kb = 0; kb < r; kb += 16) {
      if (a.nchunks == tc_max_chunks || (slot < 0 && nad == tc_max_adapters)) {
        flush();
        nad = 0;
        slot = -1;
      }
      if (slot < 0) {  // the adapter's entry in this launch
        slot = nad++;
        tc_adapter<T>& ad = a.ad[slot];
        const bool sparse = src.B_dense.empty();
        ad.A = src.A.data();
        ad.lda = src.A.ld();
        ad.a_vec = aligned16(src.A.data(), src.A.ld());
        ad.B = sparse ? nullptr : src.B_dense.data();
        ad.ldb = sparse ? 0 : src.B_dense.ld();
        ad.b_vec = !sparse && aligned16(src.B_dense.data(), src.B_dense.ld());
        if (sparse) ad.S = src.B_sparse->view();
        ad.scale = src.scale;
        ad.r = static_cast<int>(r);
      }
      a.ch[a.nchunks++] = tc_chunk{static_cast<int>(kb), static_cast<short>(slot), static_cast<short>(kb + 16 >= r)};
    }
  }
  flush();
}

}  // namespace detail_merge

template <class T>
std::size_t merge_workspace_bytes(index_t d, index_t k, const std::vector<merge_source<T>>& sources) {
  LORI_EXPECTS(d >= 0 && k >= 0, "merge_workspace_bytes: negative size");
  index_t R = 0;
  for (const auto& s : sources) R += detail_merge::source_rank(s);
  if (detail_merge::needs_split(sources)) R *= 2;
  return detail_merge::align256(static_cast<std::size_t>(d * R) * sizeof(T)) +
         detail_merge::align256(static_cast<std::size_t>(R * k) * sizeof(T));
}

template <class T>
void merge_into(context& ctx, row_major_view<T> W, const std::vector<merge_source<T>>& sources, void* workspace,
                std::size_t workspace_bytes) {
  static_assert(detail::is_cuda_storage_v<T>, "merge_into: T must be float, bfloat16 or half");
  const index_t d = W.rows(), k = W.cols();
  index_t R = 0;
  bool same_scale = true;
  for (const auto& src : sources) {
    const bool sparse = src.B_sparse != nullptr && src.B_dense.empty();
    LORI_EXPECTS(sparse || src.B_sparse == nullptr, "merge_into: give either B_dense or B_sparse, not both");
    const index_t r = detail_merge::source_rank(src);
    LORI_EXPECTS(r >= 1, "merge_into: every adapter needs rank >= 1 (B missing?)");
    LORI_EXPECTS(src.A.rows() == r && src.A.cols() == k, "merge_into: A must be r x k");
    LORI_EXPECTS(sparse ? src.B_sparse->rows() == d : src.B_dense.rows() == d, "merge_into: B must be d x r");
    LORI_EXPECTS(src.scale == src.scale, "merge_into: scale is NaN");
    same_scale = same_scale && src.scale == sources.front().scale;
    R += r;
  }
  if (d == 0 || k == 0 || R == 0) return;
  LORI_EXPECTS(workspace != nullptr && workspace_bytes >= merge_workspace_bytes(d, k, sources),
               "merge_into: workspace missing or smaller than merge_workspace_bytes()");
  LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % 256 == 0, "merge_into: workspace must be 256-byte aligned");
  const bool split = detail_merge::needs_split(sources);
  const index_t K = split ? 2 * R : R;   // GEMM depth
  T* Bcat = static_cast<T*>(workspace);  // d x K
  T* Acat = reinterpret_cast<T*>(static_cast<unsigned char*>(workspace) +
                                 detail_merge::align256(static_cast<std::size_t>(d * K) * sizeof(T)));  // K x k
  const float alpha = same_scale ? sources.front().scale : 1.0f;
  // Pack all sources with one kernel launch per pack_max sources (one launch for up to 16 adapters).
  index_t off = 0;
  for (std::size_t first = 0; first < sources.size(); first += detail_merge::pack_max) {
    detail_merge::pack_args<T> a{};
    a.d = d;
    a.k = k;
    a.R = R;
    a.split = split;
    a.Bcat = Bcat;
    a.Acat = Acat;
    a.c_begin = off;
    a.count = 0;
    for (std::size_t q = first; q < sources.size() && q < first + detail_merge::pack_max; ++q) {
      const auto& src = sources[q];
      auto& ps = a.src[a.count++];
      ps.A = src.A.data();
      ps.lda = src.A.ld();
      const bool sparse = src.B_dense.empty();
      ps.B = sparse ? nullptr : src.B_dense.data();
      ps.ldb = sparse ? 0 : src.B_dense.ld();
      if (sparse) ps.S = src.B_sparse->view();
      ps.scale = same_scale ? 1.0f : src.scale;
      ps.off = off;
      ps.r = detail_merge::source_rank(src);
      off += ps.r;
    }
    a.c_end = off;
    const index_t total = (d + k) * (a.c_end - a.c_begin);
    const index_t blocks = std::min<index_t>(detail::ceil_div(total, 256), index_t{8} * 1024);
    detail_merge::pack_kernel<T><<<detail::grid_dim(blocks), 256, 0, ctx.stream()>>>(a);
    LORI_CUDA_CHECK_LAUNCH();
  }
  const cudaDataType_t t = detail::cuda_data_type<T>();
  detail::gemm_row_major(ctx.cublas(), false, false, d, k, K, alpha, Bcat, K, Acat, k, 1.0f, W.data(), W.ld(), t, t);
}

}  // namespace lori::cuda

#endif  // LORI_CUDA_MERGE_CUH
