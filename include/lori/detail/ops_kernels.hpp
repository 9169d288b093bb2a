// Private: the inner kernels of lori/ops (sparse-times-dense tiles, SDDMM tiles, checks).
//
// Tiles are "tokens in lanes": a block of up to kTokenBlock tokens is held transposed (r x tb or
// rows-of-B x tb) so that the innermost loops are elementwise over tokens (axpy form). They vectorize
// without reassociating any sum, so every result has a fixed summation order that depends only on the
// problem, never on the thread count or on memory alignment.
#ifndef LORI_DETAIL_OPS_KERNELS_HPP
#define LORI_DETAIL_OPS_KERNELS_HPP

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"
#include "lori/core/eigen.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/sparse/csr_matrix.hpp"

#include <Eigen/Core>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

// x86-64 builds by g++/clang compile the float projection a second time for AVX2+FMA and pick it at
// run time; host code compiled by nvcc takes the portable (Eigen) path. The dispatch-dependent code
// lives in an inline namespace named after the path (see lori/random/projection.hpp), so a program
// with both kinds of translation unit gets distinct symbols instead of one name with two definitions.
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && !LORI_COMPILING_CUDA
#define LORI_OPS_X86_DISPATCH 1
#include <immintrin.h>
#define LORI_OPS_ABI_NAMESPACE ops_x86_dispatch
#else
#define LORI_OPS_X86_DISPATCH 0
#define LORI_OPS_ABI_NAMESPACE ops_portable
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#ifndef LORI_RESTRICT
#if defined(__GNUC__) || defined(__clang__)
#define LORI_RESTRICT __restrict__
#else
#define LORI_RESTRICT
#endif
#endif

namespace lori::detail {

/// Tokens per block: the fixed unit of the token partition (and of the transposed tiles).
inline constexpr index_t kTokenBlock = 64;
/// Rows of B per chunk in the forward's sparse tile (a chunk's tile is kRowChunk x kTileLanes).
inline constexpr index_t kRowChunk = 64;
/// Lanes of the explicit partial sums in the SDDMM (summed in lane order at the end).
inline constexpr index_t kLanes = 8;

template <class T>
using rm_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using cm_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

inline index_t ops_num_blocks(index_t n, index_t block) { return (n + block - 1) / block; }

/// Basic validity of a CSR view used as B (d x r): pointers present where needed.
template <class T, class Index>
void ops_check_csr(const csr_view<T, Index>& B, bool need_values, const char* msg) {
  LORI_EXPECTS(B.rows >= 0 && B.cols >= 0, msg);
  LORI_EXPECTS(B.rows == 0 || B.row_ptr != nullptr, msg);
  LORI_EXPECTS(B.rows == 0 || B.row_ptr[0] == 0, msg);
  LORI_EXPECTS(B.nnz() == 0 || B.col_idx != nullptr, msg);
  LORI_EXPECTS(!need_values || B.nnz() == 0 || B.values != nullptr, msg);
}

/// Token lanes kept in registers by the sparse product (16 floats = 4 SSE / 2 AVX registers).
inline constexpr index_t kTileLanes = 16;

/// One token, rows [j_begin, j_end) of B, scalar: y[j] += s * (sum over row j's entries, ascending p, of
/// val[p] * h[col[p] * hstride]); rows without entries are left untouched.
template <class T, class Index>
void ops_sparse_rows_token(const T* LORI_RESTRICT h, index_t hstride, const Index* LORI_RESTRICT rp, const Index* LORI_RESTRICT ci,
                           const T* LORI_RESTRICT val, index_t j_begin, index_t j_end, T s, T* LORI_RESTRICT y) {
  for (index_t j = j_begin; j < j_end; ++j) {
    const index_t pb = rp[j], pe = rp[j + 1];
    if (pb == pe) continue;
    T acc = T{0};
    for (index_t p = pb; p < pe; ++p) acc += val[p] * h[static_cast<index_t>(ci[p]) * hstride];
    y[j] += s * acc;
  }
}

/// k-chunk of the AVX2 projection: a chunk of A (32 rows x kProjectChunk floats = 32 KiB) stays in L1
/// while every token pair of the block streams past it. Chunking never changes results (the partial
/// sums are stored and reloaded exactly).
inline constexpr index_t kProjectChunk = 256;

#if LORI_OPS_X86_DISPATCH
#define LORI_OPS_AVX2_ATTRIBUTES __attribute__((target("avx2,fma")))

inline bool ops_cpu_has_avx2_fma() noexcept {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

/// Sum of the 8 lanes of v in a fixed order: ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
LORI_OPS_AVX2_ATTRIBUTES inline float ops_hsum8_avx2(__m256 v) noexcept {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

/// MT tokens x MC rows of A over len (a multiple of 8) elements of k: P[t][c] holds the 8-lane partial
/// sums of H[t, c] (lane l accumulates the products of k = l mod 8 with FMA, in ascending k). The
/// arithmetic of one (t, c) does not depend on MT, MC, the chunking or the packing of A.
template <int MT, int MC>
LORI_OPS_AVX2_ATTRIBUTES inline void ops_project_tile_avx2(const float* const (&x)[MT], const float* const (&a)[MC], index_t len,
                                                           float* const (&P)[MT][MC]) noexcept {
  __m256 acc[MT][MC];
  for (int t = 0; t < MT; ++t)
    for (int c = 0; c < MC; ++c) acc[t][c] = _mm256_loadu_ps(P[t][c]);
  for (index_t kk = 0; kk < len; kk += 8) {
    __m256 xv[MT];
    for (int t = 0; t < MT; ++t) xv[t] = _mm256_loadu_ps(x[t] + kk);
    for (int c = 0; c < MC; ++c) {
      const __m256 av = _mm256_loadu_ps(a[c] + kk);
      for (int t = 0; t < MT; ++t) acc[t][c] = _mm256_fmadd_ps(xv[t], av, acc[t][c]);
    }
  }
  for (int t = 0; t < MT; ++t)
    for (int c = 0; c < MC; ++c) _mm256_storeu_ps(P[t][c], acc[t][c]);
}

/// Tile at tokens t0.., rows of A c0..: x rows start at X (already offset to the chunk), rows of A at
/// A + c * lda (ditto); partial sums P[(t * r + c) * 8 ..].
template <int MT, int MC>
LORI_OPS_AVX2_ATTRIBUTES inline void ops_project_tile_at_avx2(const float* X, index_t ldx, index_t t0, const float* A, index_t lda,
                                                              index_t c0, index_t len, float* P, index_t r) noexcept {
  const float* x[MT];
  const float* a[MC];
  float* p[MT][MC];
  for (int t = 0; t < MT; ++t) x[t] = X + (t0 + t) * ldx;
  for (int c = 0; c < MC; ++c) a[c] = A + (c0 + c) * lda;
  for (int t = 0; t < MT; ++t)
    for (int c = 0; c < MC; ++c) p[t][c] = P + ((t0 + t) * r + c0 + c) * 8;
  ops_project_tile_avx2<MT, MC>(x, a, len, p);
}

/// Scratch floats ops_project_avx2 needs for tb tokens and r rows of A.
/// (Blocks of fewer than 4 tokens read A in place and need no panel.)
inline index_t ops_project_scratch(index_t tb, index_t r) noexcept { return tb * r * 8 + (tb >= 4 ? r * kProjectChunk : 0); }

/// Hc (tb x r, column-major, leading dimension tb) = X rows * A^T with AVX2+FMA. H[t, c] is, for every
/// t, c, tb and thread count: 8 lane sums over k < k8 = k - k mod 8 (FMA, ascending k), added as in
/// ops_hsum8_avx2, then the products of k8 <= k' < k added with FMA in ascending k'. Blocks of 4 tokens
/// or more copy each k-chunk of A into a contiguous panel first (rows of A a multiple of 4 KiB apart
/// would alias in L1). scratch: ops_project_scratch(tb, r) floats.
LORI_OPS_AVX2_ATTRIBUTES inline void ops_project_avx2(const float* X, index_t ldx, index_t tb, const float* A, index_t lda, index_t r,
                                                      index_t k, float* Hc, float* scratch) noexcept {
  const index_t k8 = k - k % 8;
  float* P = scratch;
  float* Ap = scratch + tb * r * 8;
  for (index_t i = 0; i < tb * r * 8; ++i) P[i] = 0.0f;
  const bool pack = tb >= 4;
  const index_t chunk = pack ? kProjectChunk : std::max<index_t>(k8, 8);
  for (index_t k0 = 0; k0 < k8; k0 += chunk) {
    const index_t len = std::min(k8 - k0, chunk);
    const float* Ab = A + k0;
    index_t ldab = lda;
    if (pack) {
      for (index_t c = 0; c < r; ++c) std::memcpy(Ap + c * kProjectChunk, A + c * lda + k0, static_cast<std::size_t>(len) * sizeof(float));
      Ab = Ap;
      ldab = kProjectChunk;
    }
    const float* Xb = X + k0;
    index_t t = 0;
    for (; t + 3 <= tb; t += 3) {
      if (pack && k0 + chunk < k8)  // the next chunk of these tokens' rows of X, while this one computes
        for (index_t tt = t; tt < t + 3; ++tt)
          for (index_t kk = 0; kk < std::min(chunk, k8 - k0 - chunk); kk += 16)
            _mm_prefetch(reinterpret_cast<const char*>(Xb + tt * ldx + chunk + kk), _MM_HINT_T0);
      index_t c = 0;
      for (; c + 4 <= r; c += 4) ops_project_tile_at_avx2<3, 4>(Xb, ldx, t, Ab, ldab, c, len, P, r);
      for (; c < r; ++c) ops_project_tile_at_avx2<3, 1>(Xb, ldx, t, Ab, ldab, c, len, P, r);
    }
    for (; t + 2 <= tb; t += 2) {
      index_t c = 0;
      for (; c + 4 <= r; c += 4) ops_project_tile_at_avx2<2, 4>(Xb, ldx, t, Ab, ldab, c, len, P, r);
      for (; c < r; ++c) ops_project_tile_at_avx2<2, 1>(Xb, ldx, t, Ab, ldab, c, len, P, r);
    }
    for (; t < tb; ++t) {
      index_t c = 0;
      for (; c + 4 <= r; c += 4) ops_project_tile_at_avx2<1, 4>(Xb, ldx, t, Ab, ldab, c, len, P, r);
      for (; c < r; ++c) ops_project_tile_at_avx2<1, 1>(Xb, ldx, t, Ab, ldab, c, len, P, r);
    }
  }
  for (index_t t = 0; t < tb; ++t) {
    const float* x = X + t * ldx;
    for (index_t c = 0; c < r; ++c) {
      const float* a = A + c * lda;
      __m128 s = _mm_set_ss(ops_hsum8_avx2(_mm256_loadu_ps(P + (t * r + c) * 8)));
      for (index_t kk = k8; kk < k; ++kk) s = _mm_fmadd_ss(_mm_set_ss(x[kk]), _mm_set_ss(a[kk]), s);
      Hc[c * tb + t] = _mm_cvtss_f32(s);
    }
  }
}

/// ops_sparse_rows_token kept out of line, for the AVX-512 kernel's fallback rows: inlined into a function
/// compiled for AVX-512 (which implies FMA), GCC would contract its multiply-add into an FMA
/// (-ffp-contract=fast is its default) and round differently from the other paths.
template <class T, class Index>
__attribute__((noinline)) void ops_sparse_rows_token_outlined(const T* h, const Index* rp, const Index* ci, const T* val, index_t j_begin,
                                                              index_t j_end, T s, T* y) {
  ops_sparse_rows_token(h, index_t{1}, rp, ci, val, j_begin, j_end, s, y);
}

#define LORI_OPS_AVX512_ATTRIBUTES __attribute__((target("avx512f")))

inline bool ops_cpu_has_avx512f() noexcept {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

/// Mask of the first `count` lanes of 16 (count clamped to [0, 16]), without branches.
inline __mmask16 ops_first_lanes16(index_t count) noexcept {
  const unsigned c = static_cast<unsigned>(std::min<index_t>(std::max<index_t>(count, 0), 16));
  return static_cast<__mmask16>((1u << c) - 1u);
}

/// Step e of ops_sparse_token_avx512: lanes with more than e entries (len > e) add the product at
/// position off + e of the 64-entry table t.
template <int E>
LORI_OPS_AVX512_ATTRIBUTES __attribute__((always_inline)) inline void ops_sparse_step_avx512(const __m512 (&t)[4], __m512i off, __m512i len,
                                                                                          __m512& acc) noexcept {
  const __m512i e = _mm512_set1_epi32(E);
  const __m512i idx = _mm512_add_epi32(off, e);
  const __m512 lo = _mm512_permutex2var_ps(t[0], idx, t[1]);
  const __m512 hi = _mm512_permutex2var_ps(t[2], idx, t[3]);
  const __m512 v = _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), lo, hi);
  acc = _mm512_mask_add_ps(acc, _mm512_cmpgt_epi32_mask(len, e), acc, v);
}

/// Steps 0..7 of ops_sparse_token_avx512 (entries off .. off + 7 of each lane's row), in order.
LORI_OPS_AVX512_ATTRIBUTES __attribute__((always_inline)) inline void ops_sparse_steps8_avx512(const __m512 (&t)[4], __m512i off,
                                                                                            __m512i len, __m512& acc) noexcept {
  ops_sparse_step_avx512<0>(t, off, len, acc);
  ops_sparse_step_avx512<1>(t, off, len, acc);
  ops_sparse_step_avx512<2>(t, off, len, acc);
  ops_sparse_step_avx512<3>(t, off, len, acc);
  ops_sparse_step_avx512<4>(t, off, len, acc);
  ops_sparse_step_avx512<5>(t, off, len, acc);
  ops_sparse_step_avx512<6>(t, off, len, acc);
  ops_sparse_step_avx512<7>(t, off, len, acc);
}

/// One token's sparse product with AVX-512F, r <= 32 (h: r floats) and 32-bit CSR indices:
///   y[j] += s * acc_j,   acc_j = ((+0 + val[p0] * h[col[p0]]) + val[p1] * h[col[p1]]) + ...
/// over row j's entries in ascending p, each product and each sum rounded: the very operations of the
/// scalar loop, so the bits are the same. 16 rows of B sit in the 16 lanes; their entries (at most 64
/// positions for the group) are multiplied by h once into 4 registers (h looked up with vpermt2ps), then
/// lane j adds its e-th product at step e (two vpermt2ps and a blend pick it, a masked add keeps rows
/// that have ended), 8 steps unconditionally and more only if a row of the group is longer. No branch
/// depends on a single row's length. Rows without entries are left untouched. A group whose entries
/// span more than 64 positions (rows far denser than 10 % of 32) and the last d mod 16 rows take the
/// scalar loop.
LORI_OPS_AVX512_ATTRIBUTES inline void ops_sparse_token_avx512(const float* h, index_t r, const std::int32_t* rp, const std::int32_t* ci,
                                                               const float* val, index_t d, float s, float* y) noexcept {
  const __m512 hlo = _mm512_maskz_loadu_ps(ops_first_lanes16(r), h);
  const __m512 hhi = _mm512_maskz_loadu_ps(ops_first_lanes16(r - 16), h + 16);
  const __m512 sv = _mm512_set1_ps(s);
  const __m512i zero = _mm512_setzero_si512();
  index_t j0 = 0;
  for (; j0 + 16 <= d; j0 += 16) {
    const index_t base = rp[j0], span = static_cast<index_t>(rp[j0 + 16]) - base;
    if (span == 0) continue;
    if (span > 64) {
      ops_sparse_rows_token_outlined(h, rp, ci, val, j0, j0 + 16, s, y);
      continue;
    }
    // B streams from L3 or memory when many layers are decoded in turn: prefetch ~4 groups ahead (the
    // table loads below depend on rp, which the hardware prefetchers do not look through).
    for (int q = 0; q < 4; ++q) {
      _mm_prefetch(reinterpret_cast<const char*>(ci + base + 256 + 16 * q), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(val + base + 256 + 16 * q), _MM_HINT_T0);
    }
    _mm_prefetch(reinterpret_cast<const char*>(rp + j0 + 80), _MM_HINT_T0);
    __m512 t[4];
    for (int q = 0; q < 4; ++q) {
      const __mmask16 m = ops_first_lanes16(span - 16 * q);
      const __m512i c = _mm512_maskz_loadu_epi32(m, ci + base + 16 * q);
      t[q] = _mm512_maskz_mul_ps(m, _mm512_maskz_loadu_ps(m, val + base + 16 * q), _mm512_permutex2var_ps(hlo, c, hhi));
    }
    const __m512i o = _mm512_loadu_si512(rp + j0);
    __m512i len = _mm512_sub_epi32(_mm512_loadu_si512(rp + j0 + 1), o);
    __m512i off = _mm512_sub_epi32(o, _mm512_set1_epi32(static_cast<int>(base)));
    const __mmask16 nonempty = _mm512_cmpgt_epi32_mask(len, zero);
    __m512 acc = _mm512_setzero_ps();
    ops_sparse_steps8_avx512(t, off, len, acc);
    // Rows longer than 8 (rare at 10 % of r = 32): continue 8 entries further along.
    while (_mm512_cmpgt_epi32_mask(len, _mm512_set1_epi32(8)) != 0) {
      off = _mm512_add_epi32(off, _mm512_set1_epi32(8));
      len = _mm512_sub_epi32(len, _mm512_set1_epi32(8));
      ops_sparse_steps8_avx512(t, off, len, acc);
    }
    const __m512 yv = _mm512_loadu_ps(y + j0);
    _mm512_storeu_ps(y + j0, _mm512_mask_add_ps(yv, nonempty, yv, _mm512_mul_ps(sv, acc)));
  }
  if (j0 < d) ops_sparse_rows_token_outlined(h, rp, ci, val, j0, d, s, y);
}
#endif

inline namespace LORI_OPS_ABI_NAMESPACE {

/// Sparse product for one token block:
///   Y[t, j] += s * sum_{p in row j of B} val[p] * H[t, col[p]]       for t < tb, j < d
/// Hc is the block's H column-major (tb x r, leading dimension tb); Y rows start at y0 with leading
/// dimension ldy. `Ht` is scratch of r * kTokenBlock elements. Each (t, j) sums its row's entries in
/// ascending p (acc = +0, then acc += val * h, product and sum each rounded), the same arithmetic for
/// every t and on every path (scalar, 16-lane tile, AVX-512 rows-in-lanes for blocks of fewer than 4
/// float tokens when allow_simd): results do not depend on tb, the path or the thread count. (One
/// exception: the tile adds s * 0 to rows without entries inside a 64-row chunk that has some, while
/// the few-token paths leave them untouched; this differs only for y = -0 or a non-finite s.)
template <class T, class Index>
void ops_sparse_times_tile(const T* LORI_RESTRICT Hc, index_t tb, const csr_view<const T, Index>& B, T s,
                           T* LORI_RESTRICT y0, index_t ldy, T* LORI_RESTRICT Ht, bool allow_simd = true) {
  const index_t d = B.rows, r = B.cols;
  const Index* LORI_RESTRICT rp = B.row_ptr;
  const Index* LORI_RESTRICT ci = B.col_idx;
  const T* LORI_RESTRICT val = B.values;
  if (tb < 4) {
    // Few tokens: one row of H at a time.
#if LORI_OPS_X86_DISPATCH
    if constexpr (std::is_same_v<T, float> && std::is_same_v<Index, std::int32_t>) {
      if (allow_simd && r <= 32 && ops_cpu_has_avx512f()) {
        alignas(64) float h[32];
        for (index_t t = 0; t < tb; ++t) {
          for (index_t c = 0; c < r; ++c) h[c] = Hc[c * tb + t];
          ops_sparse_token_avx512(h, r, rp, ci, val, d, s, y0 + t * ldy);
        }
        return;
      }
    }
#else
    (void)allow_simd;
#endif
    for (index_t t = 0; t < tb; ++t) ops_sparse_rows_token(Hc + t, tb, rp, ci, val, index_t{0}, d, s, y0 + t * ldy);
    return;
  }
  // H transposed into whole lanes (r x kTokenBlock), zero-padded past tb.
  const index_t tw_end = (tb + kTileLanes - 1) / kTileLanes * kTileLanes;
  for (index_t c = 0; c < r; ++c) {
    for (index_t t = 0; t < tb; ++t) Ht[c * kTokenBlock + t] = Hc[c * tb + t];
    for (index_t t = tb; t < tw_end; ++t) Ht[c * kTokenBlock + t] = T{0};
  }
  // Outer loop over groups of 16 tokens so that the write-back touches 16 rows of Y at a time (few
  // enough concurrent streams for the hardware prefetchers), inner over chunks of kRowChunk rows of B.
  constexpr index_t JC = kRowChunk;
  alignas(64) T tile[JC * kTileLanes];
  for (index_t tw = 0; tw < tw_end; tw += kTileLanes) {
    const index_t tn = std::min(kTileLanes, tb - tw);
    for (index_t j0 = 0; j0 < d; j0 += JC) {
      const index_t jc = std::min(JC, d - j0);
      if (rp[j0] == rp[j0 + jc]) continue;
      for (index_t jj = 0; jj < jc; ++jj) {
        const index_t pb = rp[j0 + jj], pe = rp[j0 + jj + 1];
        T a[kTileLanes];
        for (index_t l = 0; l < kTileLanes; ++l) a[l] = T{0};
        for (index_t p = pb; p < pe; ++p) {
          const T v = val[p];
          const T* LORI_RESTRICT h = Ht + static_cast<index_t>(ci[p]) * kTokenBlock + tw;
          for (index_t l = 0; l < kTileLanes; ++l) a[l] += v * h[l];
        }
        for (index_t l = 0; l < kTileLanes; ++l) tile[jj * kTileLanes + l] = a[l];
      }
      for (index_t t = 0; t < tn; ++t) {
        T* LORI_RESTRICT y = y0 + (tw + t) * ldy + j0;
        for (index_t jj = 0; jj < jc; ++jj) y[jj] += s * tile[jj * kTileLanes + t];
      }
    }
  }
}


/// H block (tb x r) = X block * A^T into a column-major tb x r buffer (= Ht, r x tb row-major).
/// float on x86-64 with AVX2+FMA (and allow_simd): ops_project_avx2, else Eigen's GEMM. `scratch`:
/// reusable buffer for the AVX2 path. Either path is deterministic (independent of the thread count).
template <class T>
void ops_project_block(const row_major_view<const T>& X, index_t i0, index_t tb, const row_major_view<const T>& A,
                       cm_matrix<T>& Hc, std::vector<T>& scratch, bool allow_simd = true) {
  Hc.resize(tb, A.rows());
  if (A.rows() == 0 || tb == 0) return;
  if (A.cols() == 0) {
    Hc.setZero();
    return;
  }
#if LORI_OPS_X86_DISPATCH
  if constexpr (std::is_same_v<T, float>) {
    if (allow_simd && ops_cpu_has_avx2_fma()) {
      scratch.resize(static_cast<std::size_t>(ops_project_scratch(tb, A.rows())));
      ops_project_avx2(X.row(i0), X.ld(), tb, A.data(), A.ld(), A.rows(), A.cols(), Hc.data(), scratch.data());
      return;
    }
  }
#else
  (void)allow_simd;
  (void)scratch;
#endif
  const auto Xb = as_eigen(X.block(i0, 0, tb, X.cols()));
  const auto Am = as_eigen(A);
  Hc.noalias() = Xb * Am.transpose();
}

}  // inline namespace LORI_OPS_ABI_NAMESPACE

/// Copies a column-major tb x r block into rows [i0, i0 + tb) of a row-major n x r output.
template <class T>
void ops_store_h(const cm_matrix<T>& Hc, index_t i0, const row_major_view<T>& H_out) {
  if (H_out.data() == nullptr) return;
  for (index_t t = 0; t < Hc.rows(); ++t)
    for (index_t c = 0; c < Hc.cols(); ++c) H_out(i0 + t, c) = Hc(t, c);
}


/// Rows of B per block of the SDDMM and of G * B (a block's transposed G tile is kGradRowBlock x 64).
inline constexpr index_t kGradRowBlock = 256;

/// Out (nc x tb, leading dimension kTokenBlock) = columns [c0, c0 + nc) of rows [i0, i0 + tb) of M,
/// transposed. Pure data movement (4 x 4 SSE transposes for float on x86-64): results never depend on it.
template <class T>
void ops_transpose_rows(const row_major_view<const T>& M, index_t i0, index_t tb, index_t c0, index_t nc,
                        T* LORI_RESTRICT out) {
  index_t t = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float>) {
    for (; t + 4 <= tb; t += 4) {
      const float* r0 = M.row(i0 + t) + c0;
      const float* r1 = M.row(i0 + t + 1) + c0;
      const float* r2 = M.row(i0 + t + 2) + c0;
      const float* r3 = M.row(i0 + t + 3) + c0;
      index_t c = 0;
      for (; c + 4 <= nc; c += 4) {
        __m128 a = _mm_loadu_ps(r0 + c), b = _mm_loadu_ps(r1 + c), e = _mm_loadu_ps(r2 + c), f = _mm_loadu_ps(r3 + c);
        _MM_TRANSPOSE4_PS(a, b, e, f);
        _mm_storeu_ps(out + (c + 0) * kTokenBlock + t, a);
        _mm_storeu_ps(out + (c + 1) * kTokenBlock + t, b);
        _mm_storeu_ps(out + (c + 2) * kTokenBlock + t, e);
        _mm_storeu_ps(out + (c + 3) * kTokenBlock + t, f);
      }
      for (; c < nc; ++c) {
        out[c * kTokenBlock + t] = r0[c];
        out[c * kTokenBlock + t + 1] = r1[c];
        out[c * kTokenBlock + t + 2] = r2[c];
        out[c * kTokenBlock + t + 3] = r3[c];
      }
    }
  }
#endif
  for (; t < tb; ++t) {
    const T* LORI_RESTRICT h = M.row(i0 + t) + c0;
    for (index_t c = 0; c < nc; ++c) out[c * kTokenBlock + t] = h[c];
  }
}

/// SDDMM over rows [j0, j0 + jb) of B, all n tokens:
///   out[p] = s * sum_t G[t, j] * H[t, col[p]]     for every stored p of those rows
/// Partial sums are kept in kLanes lanes per entry (lane = token index mod kLanes within 64-token
/// chunks that start at token 0) and added in lane order at the end: a fixed order of summation.
template <class T, class Index>
void ops_sddmm_rows(const row_major_view<const T>& G, const row_major_view<const T>& H,
                    const csr_view<const T, Index>& B, index_t j0, index_t jb, T s, T* LORI_RESTRICT out,
                    std::vector<T>& lanes, std::vector<T>& Gt, std::vector<T>& Ht) {
  const Index* LORI_RESTRICT rp = B.row_ptr;
  const Index* LORI_RESTRICT ci = B.col_idx;
  const index_t n = G.rows(), r = H.cols();
  const index_t pbeg = rp[j0], pend = rp[j0 + jb];
  if (pbeg == pend) return;
  if (n == 1) {
    // One token (decode-time training steps, per-token updates): out[p] = s * (0 + g h), the same
    // roundings as the n < kLanes loop below (0 + x also maps -0 to +0 there), without its per-entry
    // token loop, which dominated at ~3 kept entries per row.
    const T* LORI_RESTRICT h0 = H.row(0);
    const T* LORI_RESTRICT g0 = G.row(0);
    for (index_t p = pbeg, jj = 0; jj < jb; ++jj) {
      const T g = g0[j0 + jj];
      for (const index_t pe = rp[j0 + jj + 1]; p < pe; ++p) out[p] = s * (T{0} + g * h0[ci[p]]);
    }
    return;
  }
  if (n < kLanes) {
    // Fewer tokens than lanes: each lane holds at most one product and the lanes are added in order,
    // which is exactly this sequential sum (adding the empty lanes' +0 changes nothing).
    const T* hrow[kLanes];
    for (index_t t = 0; t < n; ++t) hrow[t] = H.row(t);
    for (index_t jj = 0; jj < jb; ++jj) {
      const index_t pb = rp[j0 + jj], pe = rp[j0 + jj + 1];
      if (pb == pe) continue;
      T g[kLanes];
      for (index_t t = 0; t < n; ++t) g[t] = G(t, j0 + jj);
      for (index_t p = pb; p < pe; ++p) {
        const index_t c = ci[p];
        T sum = T{0};
        for (index_t t = 0; t < n; ++t) sum += g[t] * hrow[t][c];
        out[p] = s * sum;
      }
    }
    return;
  }
  lanes.assign(static_cast<std::size_t>((pend - pbeg) * kLanes), T{0});
  Gt.resize(static_cast<std::size_t>(jb * kTokenBlock));
  Ht.resize(static_cast<std::size_t>(r * kTokenBlock));
  for (index_t i0 = 0; i0 < n; i0 += kTokenBlock) {
    const index_t tb = std::min(kTokenBlock, n - i0);
    ops_transpose_rows(G, i0, tb, j0, jb, Gt.data());
    ops_transpose_rows(H, i0, tb, 0, r, Ht.data());
    const index_t tfull = tb - tb % kLanes;
    for (index_t jj = 0; jj < jb; ++jj) {
      const T* LORI_RESTRICT g = Gt.data() + jj * kTokenBlock;
      for (index_t p = rp[j0 + jj], pe = rp[j0 + jj + 1]; p < pe; ++p) {
        const T* LORI_RESTRICT h = Ht.data() + static_cast<index_t>(ci[p]) * kTokenBlock;
        T acc[kLanes];
        T* LORI_RESTRICT lp = lanes.data() + (p - pbeg) * kLanes;
        for (index_t l = 0; l < kLanes; ++l) acc[l] = lp[l];
        for (index_t t = 0; t < tfull; t += kLanes)
          for (index_t l = 0; l < kLanes; ++l) acc[l] += g[t + l] * h[t + l];
        for (index_t t = tfull; t < tb; ++t) acc[t - tfull] += g[t] * h[t];
        for (index_t l = 0; l < kLanes; ++l) lp[l] = acc[l];
      }
    }
  }
  for (index_t p = pbeg; p < pend; ++p) {
    const T* lp = lanes.data() + (p - pbeg) * kLanes;
    T sum = lp[0];
    for (index_t l = 1; l < kLanes; ++l) sum += lp[l];
    out[p] = s * sum;
  }
}

/// GBt (r x tb, leading dimension kTokenBlock) = (G block * B)^T for tokens [i0, i0 + tb):
///   GBt[c, t] = sum_j G[i0 + t, j] * B[j, c], accumulated over j ascending, then p ascending.
template <class T, class Index>
void ops_grad_times_sparse(const row_major_view<const T>& G, index_t i0, index_t tb, const csr_view<const T, Index>& B,
                           T* LORI_RESTRICT GBt, std::vector<T>& Gt) {
  const Index* LORI_RESTRICT rp = B.row_ptr;
  const Index* LORI_RESTRICT ci = B.col_idx;
  const T* LORI_RESTRICT val = B.values;
  const index_t d = B.rows, r = B.cols;
  for (index_t c = 0; c < r; ++c)
    for (index_t t = 0; t < tb; ++t) GBt[c * kTokenBlock + t] = T{0};
  Gt.resize(static_cast<std::size_t>(kGradRowBlock * kTokenBlock));
  for (index_t j0 = 0; j0 < d; j0 += kGradRowBlock) {
    const index_t jb = std::min(kGradRowBlock, d - j0);
    if (rp[j0] == rp[j0 + jb]) continue;
    ops_transpose_rows(G, i0, tb, j0, jb, Gt.data());
    for (index_t jj = 0; jj < jb; ++jj) {
      const T* LORI_RESTRICT g = Gt.data() + jj * kTokenBlock;
      for (index_t p = rp[j0 + jj], pe = rp[j0 + jj + 1]; p < pe; ++p) {
        const T v = val[p];
        T* LORI_RESTRICT o = GBt + static_cast<index_t>(ci[p]) * kTokenBlock;
        for (index_t t = 0; t < tb; ++t) o[t] += v * g[t];
      }
    }
  }
}

}  // namespace lori::detail

#endif  // LORI_DETAIL_OPS_KERNELS_HPP
