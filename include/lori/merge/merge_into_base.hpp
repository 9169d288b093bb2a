// lori/merge/merge_into_base.hpp - W' = W + sum_i w_i s_i B_i A_i in one pass over W.
//
// The merged base weight of PEFT's merge_and_unload (for several adapters at once, with weights). W is
// d x k row-major in float, double or bfloat16 storage; the adapters are float or double.
//
// Blocked: the adapters are concatenated once into Bc = [c_1 B_1 ... c_n B_n] (d x R, c_i = w_i s_i)
// and Ac = [A_1; ...; A_n] (R x k), R = sum r_i. For each block of `block_rows` rows of W,
// Bc[rows] * Ac is one GEMM of inner dimension R whose result goes straight into W (float/double W of
// the adapters' type: Eigen accumulates into the destination) or through a cache-resident tile of
// block_rows x block_cols (other storage types: widen, add, round to nearest even once). So W is read
// and written once, and no d x k temporary exists. Row blocks are split statically over num_threads
// std::threads; every block is computed by the same code whatever the thread count, so the result is
// bitwise identical for any num_threads.
// Accuracy: each element is W + fl(sum over R products) in the adapters' type, then one rounding to
// the storage type.
//
// Sparse path (LoRI-S): adapters that carry a mask of B (b_mask != nullptr) are not put in Bc/Ac.
// Their kept entries become, per row i of W, a list of terms (c_t B_t[i, j], A_t row j) and
//   W[i, :] += sum over the terms of c_t B_t[i, j] A_t[j, :]
// costs 2 k nnz(B) flops instead of 2 d k r (10% for a 90%-sparse B). The sweep is blocked over
// columns of W (sparse_block_cols), outermost, so the slices of all A rows used for one column block
// stay in L2 while every row of W is updated; each row slice is read and written once, accumulated in
// registers 64 or 128 columns at a time (AVX-512F and AVX2+FMA clones of the inner loop, same bits, are
// picked at run time on x86 for float adapters; the portable loop is used elsewhere). Per element the terms are added in a fixed order (the dense
// GEMM part of unmasked adapters first, then masked adapters in order, kept columns ascending), so the
// result is bitwise independent of the thread count (and, with masked adapters only, of the block
// sizes). B must be zero outside its
// mask: this is checked (O(d r)), and an entry outside the mask that is not zero is an error.
#ifndef LORI_MERGE_MERGE_INTO_BASE_HPP
#define LORI_MERGE_MERGE_INTO_BASE_HPP

#include "lori/config.hpp"
#include "lori/core/eigen.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/merge/adapter_module.hpp"

#include <Eigen/Core>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && !LORI_COMPILING_CUDA
#include <immintrin.h>
#define LORI_MERGE_X86_DISPATCH 1
#else
#define LORI_MERGE_X86_DISPATCH 0
#endif

#include <algorithm>
#include <cmath>
#include <thread>
#include <type_traits>
#include <vector>

namespace lori {

/// Options of merge_into_base.
struct merge_into_base_options {
  int num_threads = 1;          ///< worker threads (>= 1); results do not depend on it
  index_t block_rows = 64;      ///< rows of W per GEMM block (>= 1)
  index_t block_cols = 2048;    ///< columns per tile for storage types other than the adapters' type (>= 1)
  index_t sparse_block_cols = 1024;  ///< columns of W per sweep of the sparse (masked) path (>= 1); the
                                     ///< slices of all A rows for one block should fit in L2
  bool allow_simd = true;       ///< use the AVX-512F or AVX2+FMA clone of the sparse inner loop when the CPU has it
};

namespace detail {
// The dispatch-dependent code lives in an inline namespace named after the path (no ODR clash between
// translation units compiled with and without the x86 clone, e.g. nvcc and C++).
#if LORI_MERGE_X86_DISPATCH
#define LORI_MERGE_ABI_NAMESPACE merge_x86_dispatch
#else
#define LORI_MERGE_ABI_NAMESPACE merge_portable
#endif
inline namespace LORI_MERGE_ABI_NAMESPACE {

/// W element + accumulated update, in the wider of the two types, rounded once to the storage type
/// (bf16 with double adapters: through float, as the dense path does).
template <class TW, class T>
LORI_FORCEINLINE TW merge_add(TW w, T acc) noexcept {
  if constexpr (std::is_same_v<TW, bfloat16>) return bfloat16(static_cast<float>(static_cast<T>(static_cast<float>(w)) + acc));
  else if constexpr (std::is_same_v<TW, double> || std::is_same_v<T, double>) return static_cast<TW>(static_cast<double>(w) + static_cast<double>(acc));
  else return static_cast<TW>(w + acc);
}

/// One row slice of the sparse path (portable): w[c] = w[c] + (init[c] + sum_t coef[t] a[t][c]),
/// c < cols, terms in order; init may be null (zero).
template <class TW, class T>
void sparse_merge_row(TW* w, const T* init, const T* const* a, const T* coef, index_t nt, index_t cols, const TW* pf) noexcept {
  (void)pf;
  constexpr index_t cw = 16;
  T acc[cw];
  for (index_t c0 = 0; c0 < cols; c0 += cw) {
    const index_t n = std::min(cw, cols - c0);
    for (index_t c = 0; c < n; ++c) acc[c] = init ? init[c0 + c] : T(0);
    for (index_t t = 0; t < nt; ++t) {
      const T* ap = a[t] + c0;
      const T cf = coef[t];
      for (index_t c = 0; c < n; ++c) acc[c] += cf * ap[c];
    }
    for (index_t c = 0; c < n; ++c) w[c0 + c] = merge_add<TW, T>(w[c0 + c], acc[c]);
  }
}

template <class TW, class T>
using sparse_merge_row_fn = void (*)(TW*, const T*, const T* const*, const T*, index_t, index_t, const TW*) noexcept;

#if LORI_MERGE_X86_DISPATCH
#define LORI_MERGE_AVX2_ATTRIBUTES __attribute__((target("avx2,fma")))

/// 8 floats of W (float or bf16 storage) widened.
template <class TW>
LORI_MERGE_AVX2_ATTRIBUTES inline __m256 merge_load8(const TW* w) noexcept {
  if constexpr (std::is_same_v<TW, float>) {
    return _mm256_loadu_ps(w);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

/// Stores 8 floats to W (bf16: round to nearest even, NaN stays quiet NaN, exactly as bfloat16(float)).
template <class TW>
LORI_MERGE_AVX2_ATTRIBUTES inline void merge_store8(TW* w, __m256 x) noexcept {
  if constexpr (std::is_same_v<TW, float>) {
    _mm256_storeu_ps(w, x);
  } else {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i hi = _mm256_srli_epi32(u, 16);
    const __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(hi, _mm256_set1_epi32(1)))), 16);
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    const __m256i r = _mm256_blendv_epi8(rounded, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), is_nan);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(w), _mm256_castsi256_si128(packed));
  }
}

/// AVX2+FMA clone of sparse_merge_row for float adapters (float or bf16 W): 64 columns in 8
/// registers per pass over the terms, then 8-column and scalar tails. Same order of terms per element;
/// differs from the portable loop only by the fused multiply-add's single rounding.
template <class TW>
LORI_MERGE_AVX2_ATTRIBUTES void sparse_merge_row_avx2(TW* w, const float* init, const float* const* a, const float* coef, index_t nt,
                                                      index_t cols, const TW* pf) noexcept {
  index_t c0 = 0;
  for (; c0 + 64 <= cols; c0 += 64) {
    if (pf)
      for (std::size_t q = 0; q < 64 * sizeof(TW); q += 64) _mm_prefetch(reinterpret_cast<const char*>(pf + c0) + q, _MM_HINT_T0);
    __m256 acc[8];
    for (int v = 0; v < 8; ++v) acc[v] = init ? _mm256_loadu_ps(init + c0 + 8 * v) : _mm256_setzero_ps();
    for (index_t t = 0; t < nt; ++t) {
      const float* ap = a[t] + c0;
      const __m256 cf = _mm256_set1_ps(coef[t]);
      for (int v = 0; v < 8; ++v) acc[v] = _mm256_fmadd_ps(cf, _mm256_loadu_ps(ap + 8 * v), acc[v]);
    }
    for (int v = 0; v < 8; ++v) merge_store8(w + c0 + 8 * v, _mm256_add_ps(merge_load8(w + c0 + 8 * v), acc[v]));
  }
  for (; c0 + 8 <= cols; c0 += 8) {
    __m256 acc = init ? _mm256_loadu_ps(init + c0) : _mm256_setzero_ps();
    for (index_t t = 0; t < nt; ++t) acc = _mm256_fmadd_ps(_mm256_set1_ps(coef[t]), _mm256_loadu_ps(a[t] + c0), acc);
    merge_store8(w + c0, _mm256_add_ps(merge_load8(w + c0), acc));
  }
  for (; c0 < cols; ++c0) {
    __m128 acc = _mm_set_ss(init ? init[c0] : 0.0f);
    for (index_t t = 0; t < nt; ++t) acc = _mm_fmadd_ss(_mm_set_ss(coef[t]), _mm_set_ss(a[t][c0]), acc);
    w[c0] = merge_add<TW, float>(w[c0], _mm_cvtss_f32(acc));
  }
}

inline bool merge_cpu_has_avx2_fma() noexcept {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

#define LORI_MERGE_AVX512_ATTRIBUTES __attribute__((target("avx512f,avx2,fma")))

/// 16 floats of W (float or bf16 storage) widened; stores with bf16 rounding as merge_store8.
template <class TW>
LORI_MERGE_AVX512_ATTRIBUTES inline __m512 merge_load16(const TW* p) noexcept {
  if constexpr (std::is_same_v<TW, float>) {
    return _mm512_loadu_ps(p);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}
template <class TW>
LORI_MERGE_AVX512_ATTRIBUTES inline void merge_store16(TW* p, __m512 x) noexcept {
  if constexpr (std::is_same_v<TW, float>) {
    _mm512_storeu_ps(p, x);
  } else {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, _mm512_set1_epi32(1)))), 16);
    const __mmask16 is_nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i r = _mm512_mask_blend_epi32(is_nan, rounded, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
}

/// AVX-512F clone: 128 columns in 8 registers per pass, then 16-column and scalar tails. Per element
/// the same fused multiply-adds in the same order as the AVX2 clone (the same bits).
template <class TW>
LORI_MERGE_AVX512_ATTRIBUTES void sparse_merge_row_avx512(TW* w, const float* init, const float* const* a, const float* coef,
                                                          index_t nt, index_t cols, const TW* pf) noexcept {
  index_t c0 = 0;
  for (; c0 + 128 <= cols; c0 += 128) {
    if (pf)
      for (std::size_t q = 0; q < 128 * sizeof(TW); q += 64) _mm_prefetch(reinterpret_cast<const char*>(pf + c0) + q, _MM_HINT_T0);
    __m512 acc[8];
    for (int v = 0; v < 8; ++v) acc[v] = init ? _mm512_loadu_ps(init + c0 + 16 * v) : _mm512_setzero_ps();
    for (index_t t = 0; t < nt; ++t) {
      const float* ap = a[t] + c0;
      const __m512 cf = _mm512_set1_ps(coef[t]);
      for (int v = 0; v < 8; ++v) acc[v] = _mm512_fmadd_ps(cf, _mm512_loadu_ps(ap + 16 * v), acc[v]);
    }
    for (int v = 0; v < 8; ++v) merge_store16<TW>(w + c0 + 16 * v, _mm512_add_ps(merge_load16<TW>(w + c0 + 16 * v), acc[v]));
  }
  for (; c0 + 16 <= cols; c0 += 16) {
    __m512 acc = init ? _mm512_loadu_ps(init + c0) : _mm512_setzero_ps();
    for (index_t t = 0; t < nt; ++t) acc = _mm512_fmadd_ps(_mm512_set1_ps(coef[t]), _mm512_loadu_ps(a[t] + c0), acc);
    merge_store16<TW>(w + c0, _mm512_add_ps(merge_load16<TW>(w + c0), acc));
  }
  for (; c0 < cols; ++c0) {
    __m128 acc = _mm_set_ss(init ? init[c0] : 0.0f);
    for (index_t t = 0; t < nt; ++t) acc = _mm_fmadd_ss(_mm_set_ss(coef[t]), _mm_set_ss(a[t][c0]), acc);
    w[c0] = merge_add<TW, float>(w[c0], _mm_cvtss_f32(acc));
  }
}

inline bool merge_cpu_has_avx512f() noexcept {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

/// The row kernel for (TW, T): the AVX-512F, else the AVX2+FMA clone when allowed and available, else
/// the portable loop.
template <class TW, class T>
sparse_merge_row_fn<TW, T> pick_sparse_merge_row(bool allow_simd) noexcept {
#if LORI_MERGE_X86_DISPATCH
  if constexpr (std::is_same_v<T, float> && (std::is_same_v<TW, float> || std::is_same_v<TW, bfloat16>))
    if (allow_simd) {
      if (merge_cpu_has_avx512f()) return &sparse_merge_row_avx512<TW>;
      if (merge_cpu_has_avx2_fma()) return &sparse_merge_row_avx2<TW>;
    }
#endif
  (void)allow_simd;
  return &sparse_merge_row<TW, T>;
}

}  // inline namespace LORI_MERGE_ABI_NAMESPACE
}  // namespace detail

/// W += sum_i weights[i] * adapters[i].scaling * B_i * A_i.
/// W: d x k row-major view (float, double or lori::bfloat16 elements; any leading dimension).
/// adapters: modules with B_i d x r_i and A_i r_i x k (ranks may differ). An adapter with a mask
/// (b_mask != nullptr, LoRI-S) goes through the sparse path: only its kept entries are used, and B_i
/// must be zero outside the mask (checked: a non-zero entry outside the mask throws lori::error before
/// W is touched). Adapters without a mask go through the dense blocked GEMM. Both kinds may be mixed;
/// W is still read and written once. weights: one finite weight per adapter (any sign).
/// Cost: 2 d k R_dense + 2 k nnz_masked flops (R_dense: total rank of unmasked adapters, nnz_masked:
/// kept entries of the masked B's), one read and one write of W, O((d + k) R + nnz) extra memory.
/// Results are bitwise independent of num_threads (and, when every adapter is masked, of the block sizes).
/// Throws lori::error on shape mismatches, weight count mismatch, non-finite weights, bad options,
/// or a masked B with a non-zero entry outside its mask.
template <class TW, class T>
void merge_into_base(row_major_view<TW> W, const std::vector<adapter_module_view<T>>& adapters,
                     const std::vector<double>& weights, const merge_into_base_options& opt = {}) {
  static_assert(std::is_same_v<TW, float> || std::is_same_v<TW, double> || std::is_same_v<TW, bfloat16>,
                "merge_into_base: W must be float, double or lori::bfloat16");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "merge_into_base: adapters must be float or double");
  LORI_EXPECTS(weights.size() == adapters.size(), "merge_into_base: one weight per adapter");
  LORI_EXPECTS(opt.num_threads >= 1 && opt.block_rows >= 1 && opt.block_cols >= 1 && opt.sparse_block_cols >= 1,
               "merge_into_base: num_threads, block_rows, block_cols and sparse_block_cols must be >= 1");
  const index_t d = W.rows(), k = W.cols();
  index_t R = 0, nnz = 0;
  bool any_masked = false;
  for (std::size_t i = 0; i < adapters.size(); ++i) {
    const auto& a = adapters[i];
    check_adapter_module(a, "merge_into_base: inconsistent adapter module");
    LORI_EXPECTS(a.out_features() == d && a.in_features() == k, "merge_into_base: adapter shape does not match W (B is d x r, A is r x k)");
    LORI_EXPECTS(std::isfinite(weights[i]), "merge_into_base: weights must be finite");
    if (a.b_mask == nullptr) {
      R += a.rank();
      continue;
    }
    any_masked = true;
    const bitmask_view mv = a.b_mask->view();
    for (index_t row = 0; row < d; ++row)
      for (index_t r = 0; r < a.rank(); ++r) {
        if (mv.test(row, r)) ++nnz;
        else LORI_EXPECTS(a.B(row, r) == T(0), "merge_into_base: a masked B must be zero outside its mask");
      }
  }
  if (d == 0 || k == 0 || (R == 0 && nnz == 0)) return;

  // Dense part: Bc = [c_i B_i] and Ac = [A_i] over the unmasked adapters.
  using MatR = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  MatR Bc(d, R), Ac(R, k);
  index_t off = 0;
  for (std::size_t i = 0; i < adapters.size(); ++i) {
    const auto& a = adapters[i];
    if (a.b_mask != nullptr) continue;
    const T c = static_cast<T>(weights[i] * a.scaling);
    for (index_t row = 0; row < d; ++row)
      for (index_t r = 0; r < a.rank(); ++r) Bc(row, off + r) = a.B(row, r) * c;
    for (index_t r = 0; r < a.rank(); ++r)
      for (index_t j = 0; j < k; ++j) Ac(off + r, j) = a.A(r, j);
    off += a.rank();
  }

  const index_t mb = opt.block_rows, nb = opt.block_cols;
  const index_t nblocks = (d + mb - 1) / mb;
  const index_t nthreads = std::min<index_t>(opt.num_threads, nblocks);
  auto run_threads = [&](auto&& work) {
    if (nthreads <= 1) {
      work(index_t{0}, index_t{1});
      return;
    }
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(nthreads - 1));
    for (index_t t = 1; t < nthreads; ++t) pool.emplace_back(work, t, nthreads);
    work(index_t{0}, nthreads);
    for (auto& th : pool) th.join();
  };

  if (!any_masked) {
    auto work = [&](index_t first_block, index_t step) {
      MatR tile;
      for (index_t blk = first_block; blk < nblocks; blk += step) {
        const index_t i0 = blk * mb, rows = std::min(mb, d - i0);
        if constexpr (std::is_same_v<TW, T>) {
          auto Wb = as_eigen(W.block(i0, 0, rows, k));
          Wb.noalias() += Bc.middleRows(i0, rows) * Ac;
        } else {
          for (index_t j0 = 0; j0 < k; j0 += nb) {
            const index_t cols = std::min(nb, k - j0);
            tile.noalias() = Bc.middleRows(i0, rows) * Ac.middleCols(j0, cols);
            for (index_t i = 0; i < rows; ++i) {
              TW* w = W.row(i0 + i) + j0;
              const T* t = tile.data() + i * cols;
              for (index_t j = 0; j < cols; ++j) {
                if constexpr (std::is_same_v<TW, bfloat16>)
                  w[j] = bfloat16(static_cast<float>(static_cast<T>(static_cast<float>(w[j])) + t[j]));
                else
                  w[j] = static_cast<TW>(static_cast<T>(w[j]) + t[j]);
              }
            }
          }
        }
      }
    };
    run_threads(work);
    return;
  }

  // Sparse part: per row of W, the terms (c_t B_t[i, j], A_t row j) of the masked adapters, in adapter
  // order and ascending j (CSR over the rows of W).
  std::vector<index_t> row_ptr(static_cast<std::size_t>(d) + 1, 0);
  std::vector<const T*> term_a(static_cast<std::size_t>(nnz));
  std::vector<T> term_coef(static_cast<std::size_t>(nnz));
  {
    index_t p = 0;
    for (index_t row = 0; row < d; ++row) {
      for (std::size_t i = 0; i < adapters.size(); ++i) {
        const auto& a = adapters[i];
        if (a.b_mask == nullptr) continue;
        const T c = static_cast<T>(weights[i] * a.scaling);
        const bitmask_view mv = a.b_mask->view();
        for (index_t r = 0; r < a.rank(); ++r)
          if (mv.test(row, r)) {
            term_a[static_cast<std::size_t>(p)] = a.A.row(r);
            term_coef[static_cast<std::size_t>(p)] = a.B(row, r) * c;
            ++p;
          }
      }
      row_ptr[static_cast<std::size_t>(row) + 1] = p;
    }
  }
  const auto kernel = detail::pick_sparse_merge_row<TW, T>(opt.allow_simd);
  const index_t sb = opt.sparse_block_cols;
  // Each thread owns a contiguous range of row blocks and sweeps it once per column block (column
  // blocks outermost, so the A slices stay in cache). With unmasked adapters, the dense GEMM tile of
  // a (row block, column block) initialises the accumulators: one read and write of W in all cases.
  auto work = [&](index_t t, index_t n) {
    const index_t b0 = nblocks * t / n, b1 = nblocks * (t + 1) / n;
    std::vector<const T*> ap;
    MatR tile;
    for (index_t j0 = 0; j0 < k; j0 += sb) {
      const index_t cols = std::min(sb, k - j0);
      for (index_t blk = b0; blk < b1; ++blk) {
        const index_t i0 = blk * mb, rows = std::min(mb, d - i0);
        if (R > 0) tile.noalias() = Bc.middleRows(i0, rows) * Ac.middleCols(j0, cols);
        for (index_t i = i0; i < i0 + rows; ++i) {
          const index_t p0 = row_ptr[static_cast<std::size_t>(i)], p1 = row_ptr[static_cast<std::size_t>(i) + 1];
          if (R == 0 && p0 == p1) continue;
          ap.resize(static_cast<std::size_t>(p1 - p0));
          for (index_t p = p0; p < p1; ++p) ap[static_cast<std::size_t>(p - p0)] = term_a[static_cast<std::size_t>(p)] + j0;
          // Prefetch hint: the same slice four rows ahead (rows are far apart in memory, so the hardware
          // prefetcher, which stays within a page, cannot see the next slice coming).
          const TW* pf = i + 4 < b1 * mb && i + 4 < d ? W.row(i + 4) + j0 : nullptr;
          kernel(W.row(i) + j0, R > 0 ? tile.data() + (i - i0) * cols : nullptr, ap.data(), term_coef.data() + p0, p1 - p0, cols, pf);
        }
      }
    }
  };
  run_threads(work);
}

}  // namespace lori

#endif  // LORI_MERGE_MERGE_INTO_BASE_HPP
