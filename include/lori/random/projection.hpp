// lori/random/projection.hpp - random projection matrices A = f(seed, stream, shape, distribution), CPU.
//
// LoRI's A (r x k, frozen) need not be stored: lori regenerates it from (seed, stream, r, k, spec),
// element for element, on any CPU or GPU (lori/cuda/projection.cuh gives the same bits). Element (i, j)
// depends only on (seed, stream, r, k, spec, i, j) - see lori/random/distributions.hpp for the exact
// word layout and formulas - so a tile, a row or the whole matrix can be generated alone, in any order.
//
//   generate_projection(out, seed, stream, spec)        whole A into a row-major view (float or double)
//   generate_projection_tile(out, r, k, i0, j0, ...)    out(i, j) = A(i0 + i, j0 + j) of the r x k A
//   projection_matrix<T>(r, k, seed, stream, spec)      A as an Eigen row-major matrix
//   orthonormalize_rows(a)                               rows of a (r <= k) made orthonormal (Householder QR)
//
// Values are defined in binary32; double output is the exact widening of those floats.
// Cost: one Philox4x32-10 per 4 elements plus, for gaussians, a ziggurat table look-up (and for ~1.5% of
// them, gaussian_v2: 0.23%, a slow path with up to two more Philox calls); on x86-64
// the inner loops are compiled a second time for AVX2+FMA and picked at run time (same bits either way).
#ifndef LORI_RANDOM_PROJECTION_HPP
#define LORI_RANDOM_PROJECTION_HPP

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/random/distributions.hpp"
#include "lori/random/philox.hpp"

#include <Eigen/Core>
#include <Eigen/QR>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && !LORI_COMPILING_CUDA
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && !LORI_COMPILING_CUDA
#define LORI_RANDOM_X86_DISPATCH 1
#else
#define LORI_RANDOM_X86_DISPATCH 0
#endif

// Host code compiled by nvcc takes the portable path, code compiled by g++/clang the x86 dispatch
// path (same bits). Everything below lives in an inline namespace named after the path, so a program
// that includes this header from both kinds of translation unit gets two distinct sets of symbols
// rather than one name with two definitions (an ODR violation). Users never spell the namespace.
#if LORI_RANDOM_X86_DISPATCH
#define LORI_RANDOM_ABI_NAMESPACE projection_x86_dispatch
#else
#define LORI_RANDOM_ABI_NAMESPACE projection_portable
#endif

namespace lori {

namespace detail {
inline namespace LORI_RANDOM_ABI_NAMESPACE {

/// Number of Philox blocks processed per inner batch (structure-of-arrays staging, vectorisable).
constexpr int projection_batch_quads = 64;

/// Philox blocks of quads q0 .. q0+n-1 of row `row`, as four word arrays (structure of arrays).
LORI_FORCEINLINE void projection_words(const counter_rng& g, std::uint64_t row, std::uint64_t q0, int n,
                                       std::uint32_t (&w)[4][projection_batch_quads]) noexcept {
  const std::uint32_t hi = static_cast<std::uint32_t>(row);
  for (int t = 0; t < n; ++t) {
    const std::uint64_t q = q0 + static_cast<std::uint64_t>(t);
    const philox_block b = philox4x32_10_block(static_cast<std::uint32_t>(q), hi, g.stream0, g.stream1, g.key0, g.key1);
    w[0][t] = b.v[0];
    w[1][t] = b.v[1];
    w[2][t] = b.v[2];
    w[3][t] = b.v[3];
  }
}

/// The ziggurat format of gaussian distribution D (lori/detail/random_ziggurat.hpp).
template <distribution D>
using zig_of = std::conditional_t<D == distribution::gaussian, zig256, zig2048>;

/// A gaussian's fast-path table for one sigma and format Z (its first Z::layers entries): k_L (as
/// int32, all < 2^30) and ws_L = Z::scaled(W_L, sigma).
struct zig_scaled {
  alignas(32) std::int32_t k[zig2048::layers];
  alignas(32) float w[zig2048::layers];
};

template <class Z>
void make_zig_scaled(float sigma, zig_scaled& z) noexcept {
  for (int l = 0; l < Z::layers; ++l) {
    z.k[l] = static_cast<std::int32_t>(Z::table()[l].k);
    z.w[l] = Z::scaled(Z::table()[l].w, sigma);
  }
}

/// Ziggurat fast path of format Z over an array of main words (scalar; AVX2 version below): z[t] = fast
/// value, bit t of the result set where the element needs gaussian_slow instead. n <= 64.
template <class Z>
LORI_FORCEINLINE std::uint64_t zig_fast_arrays(const std::uint32_t* w, int n, const zig_scaled& zs, float* z) noexcept {
  std::uint64_t rej = 0;
  for (int t = 0; t < n; ++t) {
    const std::uint32_t l = Z::layer(w[t]);
    const std::uint32_t mb = Z::fast_bits(w[t]);
    z[t] = Z::value(w[t], zs.w[l]);
    if (mb >= static_cast<std::uint32_t>(zs.k[l])) rej |= std::uint64_t{1} << t;
  }
  return rej;
}

/// Index of the lowest set bit of x != 0.
LORI_FORCEINLINE int lowest_bit(std::uint64_t x) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_ctzll(x);
#else
  int i = 0;
  while ((x & 1u) == 0u) {
    x >>= 1;
    ++i;
  }
  return i;
#endif
}

/// Values of quads q0 .. q0+n-1 (n <= projection_batch_quads) of row `row` into out[0 .. 4n).
/// Slow block 0 of elements (row, js[s]), s < n, scalar (the AVX2 version computes 8 at a time).
inline void zig_slow_blocks(const counter_rng& g, std::uint32_t row, const std::uint64_t* js, int n, philox_block* out) noexcept {
  for (int s = 0; s < n; ++s) out[s] = zig_slow_block(g, row, js[s], 0);
}

template <distribution D, class Words, class ZigFast, class SlowBlocks>
LORI_FORCEINLINE void projection_quads(const projection_params& p, const counter_rng& g, std::uint64_t row, std::uint64_t q0, int n,
                                       float* out, const zig_scaled* zs, Words&& words, ZigFast&& zf, SlowBlocks&& sb) noexcept {
  alignas(32) std::uint32_t w[4][projection_batch_quads] = {};
  words(g, row, q0, n, w);
  if constexpr (is_gaussian(D)) {
    alignas(32) float z[4][projection_batch_quads];
    // Fast path over the batch; then the rare slow elements together (their Philox blocks vectorise).
    std::uint64_t js[4 * projection_batch_quads];
    int at[4 * projection_batch_quads];
    int ns = 0;
    for (int t4 = 0; t4 < 4; ++t4) {
      std::uint64_t rej = zf(w[t4], n, *zs, z[t4]);
      while (rej != 0u) {
        const int t = lowest_bit(rej);
        rej &= rej - 1u;
        js[ns] = 4u * (q0 + static_cast<std::uint64_t>(t)) + static_cast<std::uint64_t>(t4);
        at[ns++] = t4 * projection_batch_quads + t;
      }
    }
    if (ns > 0) {
      alignas(32) philox_block b0[4 * projection_batch_quads];
      const auto r32 = static_cast<std::uint32_t>(row);
      sb(g, r32, js, ns, b0);
      for (int s = 0; s < ns; ++s) {
        const int t4 = at[s] / projection_batch_quads, t = at[s] % projection_batch_quads;
        z[t4][t] = gaussian_slow_from<zig_of<D>>(w[t4][t], p.scale, g, r32, js[s], b0[s]);
      }
    }
    for (int t = 0; t < n; ++t) {
      out[4 * t + 0] = z[0][t];
      out[4 * t + 1] = z[1][t];
      out[4 * t + 2] = z[2][t];
      out[4 * t + 3] = z[3][t];
    }
  } else {
    projection_params pd = p;
    pd.kind = D;
    for (int t = 0; t < n; ++t) {
      const float4_values v = projection_values_simple(pd, philox_block{{w[0][t], w[1][t], w[2][t], w[3][t]}});
      out[4 * t + 0] = v.v[0];
      out[4 * t + 1] = v.v[1];
      out[4 * t + 2] = v.v[2];
      out[4 * t + 3] = v.v[3];
    }
  }
}

template <distribution D>
inline void projection_quads_generic(const projection_params& p, const counter_rng& g, std::uint64_t row, std::uint64_t q0, int n,
                                     float* out, const zig_scaled* zs) noexcept {
  projection_quads<D>(
      p, g, row, q0, n, out, zs,
      [](const counter_rng& gg, std::uint64_t r, std::uint64_t q, int m, std::uint32_t(&w)[4][projection_batch_quads]) {
        projection_words(gg, r, q, m, w);
      },
      [](const std::uint32_t* w, int m, const zig_scaled& z, float* out_z) { return zig_fast_arrays<zig_of<D>>(w, m, z, out_z); },
      [](const counter_rng& gg, std::uint32_t r, const std::uint64_t* js, int m, philox_block* b) { zig_slow_blocks(gg, r, js, m, b); });
}

#if LORI_RANDOM_X86_DISPATCH
// AVX2+FMA clone of the inner loops: Philox written with AVX2 intrinsics (8 blocks per step), the
// simple distributions auto-vectorised, and the ziggurat's fast path with gathers; zig_fast_avx2 performs
// exactly the operations of zig_fast_arrays (fma(m, ws, -ws) = m*ws - ws rounded once = vfmsub) lane by
// lane; tests compare this path against the generic one bit for bit.
#define LORI_RANDOM_AVX2_ATTRIBUTES __attribute__((target("avx2,fma")))

template <class Z>
LORI_RANDOM_AVX2_ATTRIBUTES inline std::uint64_t zig_fast_avx2(const std::uint32_t* w, int n, const zig_scaled& zs, float* z) noexcept {
  constexpr bool v1 = std::is_same_v<Z, zig256>;  // zig256: L = w & 0xff, U = (w >> 8) & 0x7fffff; zig2048: U = w & 0xfffff, L = (w >> 20) & 0x7ff
  const __m256i lmask = _mm256_set1_epi32(v1 ? 0xff : 0x7ff);
  const __m256i umask = _mm256_set1_epi32(v1 ? 0x7fffff : 0xfffff);
  const __m256i one = _mm256_set1_epi32(0x3f800000);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  std::uint64_t rej = 0;
  int t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + t));
    const __m256i l = _mm256_and_si256(v1 ? wv : _mm256_srli_epi32(wv, 20), lmask);
    const __m256i k = _mm256_i32gather_epi32(zs.k, l, 4);
    const __m256 ws = _mm256_i32gather_ps(zs.w, l, 4);
    const __m256i mb = _mm256_or_si256(_mm256_and_si256(v1 ? _mm256_srli_epi32(wv, 8) : wv, umask), one);
    const __m256 x = _mm256_fmsub_ps(_mm256_castsi256_ps(mb), ws, ws);
    _mm256_storeu_ps(z + t, _mm256_or_ps(x, _mm256_castsi256_ps(_mm256_and_si256(wv, sign))));
    const __m256i fast = _mm256_cmpgt_epi32(k, mb);
    rej |= static_cast<std::uint64_t>(~static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(fast))) & 0xffu) << t;
  }
  if (t < n) rej |= zig_fast_arrays<Z>(w + t, n - t, zs, z + t) << t;
  return rej;
}

/// The 10 Philox4x32 rounds on 8 counters (c0..c3 lanes) with key g.key0/key1: 32x32->64 multiplies of
/// even / odd lanes, then the hi/lo halves re-interleaved; the same function as philox4x32_10_block.
LORI_RANDOM_AVX2_ATTRIBUTES LORI_FORCEINLINE void philox_rounds_avx2(__m256i& c0, __m256i& c1, __m256i& c2, __m256i& c3,
                                                                    const counter_rng& g) noexcept {
  const __m256i m0 = _mm256_set1_epi64x(0xD2511F53);
  const __m256i m1 = _mm256_set1_epi64x(0xCD9E8D57);
  const __m256i w0 = _mm256_set1_epi32(static_cast<int>(0x9E3779B9u));
  const __m256i w1 = _mm256_set1_epi32(static_cast<int>(0xBB67AE85u));
  __m256i k0 = _mm256_set1_epi32(static_cast<int>(g.key0));
  __m256i k1 = _mm256_set1_epi32(static_cast<int>(g.key1));
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 = _mm256_add_epi32(k0, w0);
      k1 = _mm256_add_epi32(k1, w1);
    }
    const __m256i pe0 = _mm256_mul_epu32(c0, m0), po0 = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), m0);
    const __m256i pe1 = _mm256_mul_epu32(c2, m1), po1 = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), m1);
    const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(pe0, 32), po0, 0xAA);
    const __m256i lo0 = _mm256_blend_epi32(pe0, _mm256_slli_epi64(po0, 32), 0xAA);
    const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(pe1, 32), po1, 0xAA);
    const __m256i lo1 = _mm256_blend_epi32(pe1, _mm256_slli_epi64(po1, 32), 0xAA);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), k0);
    c1 = lo1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), k1);
    c3 = lo0;
  }
}

/// Slow block 0 of elements (row, js[s]), s < n, 8 per step (counters as zig_slow_block).
LORI_RANDOM_AVX2_ATTRIBUTES inline void zig_slow_blocks_avx2(const counter_rng& g, std::uint32_t row, const std::uint64_t* js, int n,
                                                             philox_block* out) noexcept {
  int s = 0;
  for (; s + 8 <= n; s += 8) {
    alignas(32) std::uint32_t a0[8], a1[8];
    for (int l = 0; l < 8; ++l) {
      a0[l] = 0x80000000u | static_cast<std::uint32_t>(js[s + l] >> 2);
      a1[l] = (static_cast<std::uint32_t>(js[s + l] & 3u) << 30) | row;
    }
    __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(a0));
    __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(a1));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(g.stream0));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(g.stream1));
    philox_rounds_avx2(c0, c1, c2, c3, g);
    alignas(32) std::uint32_t r[4][8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(r[0]), c0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(r[1]), c1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(r[2]), c2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(r[3]), c3);
    for (int l = 0; l < 8; ++l) out[s + l] = philox_block{{r[0][l], r[1][l], r[2][l], r[3][l]}};
  }
  zig_slow_blocks(g, row, js + s, n - s, out + s);
}

/// Philox4x32-10 of 8 consecutive blocks per step with AVX2 (32x32->64 multiplies of even / odd lanes,
/// then the hi/lo halves re-interleaved); the same function as philox4x32_10_block, lane by lane.
LORI_RANDOM_AVX2_ATTRIBUTES inline void projection_words_avx2(const counter_rng& g, std::uint64_t row, std::uint64_t q0, int n,
                                                              std::uint32_t (&w)[4][projection_batch_quads]) noexcept {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int t = 0;
  for (; t + 8 <= n; t += 8) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(q0 + static_cast<std::uint64_t>(t)))), lanes);
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(row)));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(g.stream0));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(g.stream1));
    philox_rounds_avx2(c0, c1, c2, c3, g);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&w[0][t]), c0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&w[1][t]), c1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&w[2][t]), c2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&w[3][t]), c3);
  }
  for (; t < n; ++t) {
    const std::uint64_t q = q0 + static_cast<std::uint64_t>(t);
    const philox_block b = philox4x32_10_block(static_cast<std::uint32_t>(q), static_cast<std::uint32_t>(row), g.stream0, g.stream1, g.key0, g.key1);
    w[0][t] = b.v[0];
    w[1][t] = b.v[1];
    w[2][t] = b.v[2];
    w[3][t] = b.v[3];
  }
}

template <distribution D>
LORI_RANDOM_AVX2_ATTRIBUTES inline void projection_quads_avx2(const projection_params& p, const counter_rng& g, std::uint64_t row,
                                                              std::uint64_t q0, int n, float* out, const zig_scaled* zs) noexcept {
  projection_quads<D>(
      p, g, row, q0, n, out, zs,
      [](const counter_rng& gg, std::uint64_t r, std::uint64_t q, int m, std::uint32_t(&w)[4][projection_batch_quads])
          LORI_RANDOM_AVX2_ATTRIBUTES { projection_words_avx2(gg, r, q, m, w); },
      [](const std::uint32_t* w, int m, const zig_scaled& z, float* out_z) LORI_RANDOM_AVX2_ATTRIBUTES {
        return zig_fast_avx2<zig_of<D>>(w, m, z, out_z);
      },
      [](const counter_rng& gg, std::uint32_t r, const std::uint64_t* js, int m, philox_block* b)
          LORI_RANDOM_AVX2_ATTRIBUTES { zig_slow_blocks_avx2(gg, r, js, m, b); });
}

inline bool cpu_has_avx2_fma() noexcept {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

using projection_quads_fn = void (*)(const projection_params&, const counter_rng&, std::uint64_t, std::uint64_t, int, float*,
                                     const zig_scaled*) noexcept;

template <distribution D>
inline projection_quads_fn select_projection_quads(bool allow_simd) noexcept {
#if LORI_RANDOM_X86_DISPATCH
  if (allow_simd && cpu_has_avx2_fma()) return &projection_quads_avx2<D>;
#else
  (void)allow_simd;
#endif
  return &projection_quads_generic<D>;
}

inline projection_quads_fn select_projection_quads(distribution d, bool allow_simd) noexcept {
  switch (d) {
    case distribution::kaiming_uniform: return select_projection_quads<distribution::kaiming_uniform>(allow_simd);
    case distribution::gaussian: return select_projection_quads<distribution::gaussian>(allow_simd);
    case distribution::gaussian_v2: return select_projection_quads<distribution::gaussian_v2>(allow_simd);
    case distribution::rademacher: return select_projection_quads<distribution::rademacher>(allow_simd);
    case distribution::sparse: return select_projection_quads<distribution::sparse>(allow_simd);
  }
  return &projection_quads_generic<distribution::kaiming_uniform>;
}

/// The tile [i0, i0 + out.rows()) x [j0, j0 + out.cols()) of the projection with params p.
template <class T>
void fill_projection_tile(matrix_view<T, layout::row_major> out, index_t i0, index_t j0, std::uint64_t seed, std::uint64_t stream,
                          const projection_params& p, bool allow_simd) {
  const counter_rng g(seed, stream);
  const projection_quads_fn fn = select_projection_quads(p.kind, allow_simd);
  alignas(64) float buf[4 * projection_batch_quads];
  zig_scaled zs;
  if (p.kind == distribution::gaussian) make_zig_scaled<zig256>(p.scale, zs);
  if (p.kind == distribution::gaussian_v2) make_zig_scaled<zig2048>(p.scale, zs);
  const index_t jend = j0 + out.cols();
  for (index_t i = 0; i < out.rows(); ++i) {
    T* row = out.row(i);
    const auto gi = static_cast<std::uint64_t>(i0 + i);
    index_t j = j0;
    while (j < jend) {
      const index_t q0 = j >> 2;
      const index_t qend = std::min<index_t>((jend + 3) >> 2, q0 + projection_batch_quads);
      fn(p, g, gi, static_cast<std::uint64_t>(q0), static_cast<int>(qend - q0), buf, &zs);
      const index_t stop = std::min<index_t>(jend, qend * 4);
      for (index_t jj = j; jj < stop; ++jj) row[jj - j0] = static_cast<T>(buf[jj - q0 * 4]);
      j = stop;
    }
  }
}

}  // inline namespace LORI_RANDOM_ABI_NAMESPACE
}  // namespace detail

inline namespace LORI_RANDOM_ABI_NAMESPACE {

/// Orthonormalises the rows of `a` (r x k, r <= k) in place: a <- Q^T where a^T = Q R is the thin
/// Householder QR (computed in double), with the signs chosen so that diag(R) > 0 - i.e. the
/// Gram-Schmidt basis of the row space, deterministic. Rows then have unit norm.
/// Throws lori::error if r > k or a has a non-finite entry. O(r^2 k).
template <class T>
void orthonormalize_rows(matrix_view<T, layout::row_major> a) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "orthonormalize_rows: T must be float or double");
  LORI_EXPECTS(a.rows() <= a.cols(), "orthonormalize_rows: needs rows <= cols");
  if (a.rows() == 0) return;
  Eigen::MatrixXd at(a.cols(), a.rows());
  for (index_t i = 0; i < a.rows(); ++i)
    for (index_t j = 0; j < a.cols(); ++j) at(j, i) = static_cast<double>(a(i, j));
  LORI_EXPECTS(at.allFinite(), "orthonormalize_rows: matrix has non-finite entries");
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(at);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(a.cols(), a.rows());
  const Eigen::MatrixXd& r = qr.matrixQR();
  for (index_t i = 0; i < a.rows(); ++i) {
    const double sign = r(i, i) < 0.0 ? -1.0 : 1.0;
    for (index_t j = 0; j < a.cols(); ++j) a(i, j) = static_cast<T>(sign * q(j, i));
  }
}

/// Fills `out` (r x k = out.rows() x out.cols(), row-major, any leading dimension) with the projection
/// (seed, stream, spec): out(i, j) = A(i, j) as defined in lori/random/distributions.hpp, then, if
/// spec.orthonormal_rows, orthonormalises the rows (orthonormalize_rows; needs r <= k).
/// T: float or double (double = exact widening of the float values). Throws lori::error on invalid spec
/// (sigma <= 0, s < 1), r > 2^32 or k > 2^34. O(r k), one thread.
template <class T>
void generate_projection(matrix_view<T, layout::row_major> out, std::uint64_t seed, std::uint64_t stream, const projection_spec& spec) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "generate_projection: T must be float or double");
  const projection_params p = make_projection_params(spec, out.rows(), out.cols());
  detail::fill_projection_tile(out, 0, 0, seed, stream, p, true);
  if (spec.orthonormal_rows) orthonormalize_rows(out);
}

/// Fills `out` with a tile of the r x k projection (seed, stream, spec): out(i, j) = A(i0 + i, j0 + j),
/// bit-identical to the same elements of generate_projection (without orthonormalisation, which is a
/// whole-matrix operation: spec.orthonormal_rows is an error here). Needs 0 <= i0, i0 + out.rows() <= r,
/// 0 <= j0, j0 + out.cols() <= k.
template <class T>
void generate_projection_tile(matrix_view<T, layout::row_major> out, index_t rows, index_t cols, index_t i0, index_t j0, std::uint64_t seed,
                              std::uint64_t stream, const projection_spec& spec) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "generate_projection_tile: T must be float or double");
  LORI_EXPECTS(!spec.orthonormal_rows, "generate_projection_tile: orthonormal_rows needs the whole matrix");
  const projection_params p = make_projection_params(spec, rows, cols);
  LORI_EXPECTS(i0 >= 0 && j0 >= 0 && out.rows() <= rows - i0 && out.cols() <= cols - j0,
               "generate_projection_tile: tile lies outside the r x k projection");
  detail::fill_projection_tile(out, i0, j0, seed, stream, p, true);
}

/// The r x k projection (seed, stream, spec) as a row-major Eigen matrix of T (float or double).
template <class T = float>
Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> projection_matrix(index_t rows, index_t cols, std::uint64_t seed,
                                                                                    std::uint64_t stream, const projection_spec& spec) {
  LORI_EXPECTS(rows >= 0 && cols >= 0, "projection_matrix: rows and cols must be >= 0");
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> a(rows, cols);
  generate_projection(matrix_view<T, layout::row_major>(a.data(), rows, cols), seed, stream, spec);
  return a;
}

}  // inline namespace LORI_RANDOM_ABI_NAMESPACE
}  // namespace lori

#endif  // LORI_RANDOM_PROJECTION_HPP
