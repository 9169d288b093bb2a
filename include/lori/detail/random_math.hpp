// lori/detail/random_math.hpp - private: the few floating-point kernels behind lori's Gaussians
// (natural log on (0, 1], exp on [-80, 0], sin/cos of 2*pi*n/2^24, sqrt), written so that host and device give the SAME bits.
//
// How bit-identity is obtained (read this before editing anything here):
//  * Only IEEE-754 binary32 operations that are correctly rounded on every target are used:
//    fused multiply-add (rnd_fma: __builtin_fmaf / std::fma on the host, __fmaf_rn on the device),
//    multiply (rnd_mul), subtraction of a non-product (rnd_sub), and exact integer<->float conversions /
//    bit manipulation. Even sqrt is built from these (sqrt_nonneg). No libm or CUDA math function is
//    called, so library differences and --use_fast_math cannot change a bit.
//  * Floating-point contraction (a*b+c silently becoming fma(a,b,c)) is made impossible STRUCTURALLY:
//    every multiply-add is written as an explicit fma_rn, and the result of a plain multiply (mul_rn)
//    is never an operand of an addition or subtraction: it only feeds an fma as a multiplicand,
//    another multiply, a comparison, or the output. With no `product + x` in the code there is nothing a
//    compiler may contract, whatever -ffp-contract / -march say (GCC's gnu++17 default is
//    -ffp-contract=fast and contracts across statements after inlining, nvcc contracts by default).
//    On the device rnd_mul / rnd_sub are __fmul_rn / __fsub_rn, which nvcc never contracts (a second,
//    independent guarantee there), and rnd_fma is __fmaf_rn.
//    lori_test_random_fma rebuilds the golden-bit test with -O3 -march=native -ffp-contract=fast to
//    catch any regression of this rule.
//  * Host flags that break IEEE semantics altogether (-ffast-math, -funsafe-math-optimizations,
//    -fassociative-math) are not supported for these functions.
#ifndef LORI_DETAIL_RANDOM_MATH_HPP
#define LORI_DETAIL_RANDOM_MATH_HPP

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"

#include "lori/core/float16.hpp"

#include <cmath>
#include <cstdint>

namespace lori {
namespace detail {

/// fma(a, b, c) rounded once (round to nearest even).
LORI_HOST_DEVICE LORI_FORCEINLINE float rnd_fma(float a, float b, float c) noexcept {
#if LORI_DEVICE_PASS
  return __fmaf_rn(a, b, c);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_fmaf(a, b, c);  // an fma instruction where the (caller's) target has one, else libm fmaf
#else
  return std::fma(a, b, c);
#endif
}

/// a * b rounded once. Its result must never be an operand of + or - (see the header comment).
LORI_HOST_DEVICE LORI_FORCEINLINE float rnd_mul(float a, float b) noexcept {
#if LORI_DEVICE_PASS
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

/// a - b rounded once, for operands that are not products.
LORI_HOST_DEVICE LORI_FORCEINLINE float rnd_sub(float a, float b) noexcept {
#if LORI_DEVICE_PASS
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

/// sqrt(x) for finite x >= 0 (x = 0 or -0 gives +0), from fma and multiplies only: no libm/errno
/// path (which would stop vectorisation) and no dependence on the hardware sqrt. Integer-magic
/// reciprocal-sqrt guess, three Newton steps y <- y (3/2 - (x/2) y^2), then s = x y corrected once by
/// s <- s + (x - s^2) y/2. Within 1 ulp of the correctly rounded sqrt (checked in lori_test_random).
LORI_HOST_DEVICE LORI_FORCEINLINE float sqrt_nonneg(float x) noexcept {
  const float h = rnd_mul(x, 0.5f);  // exact (x >= 2^-125 here or the result is selected away)
  float y = bits_float(0x5f375a86u - (float_bits(x) >> 1));
  for (int it = 0; it < 3; ++it) {
    const float t = rnd_fma(-h, rnd_mul(y, y), 1.5f);
    y = rnd_mul(y, t);
  }
  const float s = rnd_mul(x, y);
  const float r = rnd_fma(-s, s, x);
  const float out = rnd_fma(r, rnd_mul(y, 0.5f), s);
  return x > 0.0f ? out : 0.0f;
}

/// Natural log of x for x in [2^-24, 1] (a multiple of 2^-24, e.g. lori::uniform_float_open_closed).
/// x = 2^e * m with m in [sqrt(1/2), sqrt(2)); log x = e*ln2 + log1p(f), f = m - 1 (exact, Sterbenz),
/// log1p(f) = f + f^2 * Q(f) with Q a degree-8 near-minimax polynomial on [sqrt(1/2)-1, sqrt(2)-1].
/// Max error against the exact log: a few ulp of |log x| (measured in lori_test_random).
LORI_HOST_DEVICE LORI_FORCEINLINE float log_unit(float x) noexcept {
  const std::uint32_t bits = float_bits(x);
  // Mantissa bits of sqrt(2) are 0x3504f3: above that, halve m (exponent 126) and bump e.
  const std::uint32_t mant = bits & 0x7fffffu;
  const std::uint32_t big = mant > 0x3504f3u ? 1u : 0u;
  const int e = static_cast<int>(bits >> 23) - 127 + static_cast<int>(big);
  const float m = bits_float(mant | (big != 0u ? 0x3f000000u : 0x3f800000u));
  const float f = rnd_sub(m, 1.0f);
  float q = -7.622104603e-02f;
  q = rnd_fma(q, f, 1.290468707e-01f);
  q = rnd_fma(q, f, -1.324297613e-01f);
  q = rnd_fma(q, f, 1.418177938e-01f);
  q = rnd_fma(q, f, -1.660907773e-01f);
  q = rnd_fma(q, f, 2.000197654e-01f);
  q = rnd_fma(q, f, -2.500158334e-01f);
  q = rnd_fma(q, f, 3.333332565e-01f);
  q = rnd_fma(q, f, -4.999998834e-01f);
  const float f2 = rnd_mul(f, f);
  const float log1pf = rnd_fma(f2, q, f);
  // e*ln2 in two parts: ln2_hi has 12 significant bits, so e*ln2_hi is exact for |e| <= 2^12.
  const float ef = static_cast<float>(e);
  const float t = rnd_fma(ef, -2.12194440e-4f, log1pf);  // ln2_lo = ln2 - ln2_hi
  return rnd_fma(ef, 0.693359375f, t);                   // ln2_hi = 0.693359375 (0x3f318000)
}

/// cos and sin of theta = 2*pi*n/2^24 for a 24-bit integer n (0 <= n < 2^24). Exact quadrant
/// reduction in integers: n = q*2^22 + a*2^22 (mod 2^24) with q in {0..3}, a in [-1/2, 1/2) a multiple
/// of 2^-22, so theta = q*pi/2 + a*pi/2; sin(a*pi/2) = a*S(a^2), cos(a*pi/2) = C(a^2) with
/// near-minimax polynomials (degree 4 and 5 in a^2); then a quadrant swap / sign flip (exact).
struct cos_sin {
  float c, s;
};
LORI_HOST_DEVICE LORI_FORCEINLINE cos_sin cos_sin_2pi_24(std::uint32_t n) noexcept {
  const std::uint32_t m = (n + (1u << 21)) & 0xffffffu;
  const std::uint32_t q = m >> 22;
  const int fi = static_cast<int>(m & 0x3fffffu) - (1 << 21);
  const float a = rnd_mul(static_cast<float>(fi), 2.384185791015625e-07f);  // * 2^-22, exact
  const float a2 = rnd_mul(a, a);
  float sp = 1.582067437e-04f;
  sp = rnd_fma(sp, a2, -4.681266477e-03f);
  sp = rnd_fma(sp, a2, 7.969258276e-02f);
  sp = rnd_fma(sp, a2, -6.459640961e-01f);
  sp = rnd_fma(sp, a2, 1.570796327e+00f);
  const float sa = rnd_mul(a, sp);
  float cp = -2.485101283e-05f;
  cp = rnd_fma(cp, a2, 9.191617679e-04f);
  cp = rnd_fma(cp, a2, -2.086346801e-02f);
  cp = rnd_fma(cp, a2, 2.536695072e-01f);
  cp = rnd_fma(cp, a2, -1.233700550e+00f);
  const float ca = rnd_fma(cp, a2, 1.0f);
  // theta = q*pi/2 + phi: (cos, sin) = (c, s), (-s, c), (-c, -s), (s, -c) for q = 0, 1, 2, 3.
  const float c0 = (q & 1u) != 0u ? sa : ca;
  const float s0 = (q & 1u) != 0u ? ca : sa;
  const std::uint32_t csign = ((q + 1u) & 2u) != 0u ? 0x80000000u : 0u;  // q = 1, 2
  const std::uint32_t ssign = (q & 2u) != 0u ? 0x80000000u : 0u;         // q = 2, 3
  return cos_sin{bits_float(float_bits(c0) ^ csign), bits_float(float_bits(s0) ^ ssign)};
}

/// exp(t) for t in [-80, 0] (the ziggurat's acceptance tests use t >= -12). Round t/ln2 to the nearest
/// integer n with the 1.5*2^23 shifter (an explicit fma), reduce r = t - n*ln2 in two exact-product fmas
/// (ln2_hi = 0x3f317200 has 16 significant bits), degree-6 Taylor polynomial on |r| <= ln2/2 (truncation
/// < 1.3e-7 relative), then scale by 2^n through the exponent bits (the result stays normal: n >= -116).
/// Within a few ulp of exp (checked in lori_test_random); only its determinism matters for the bits.
LORI_HOST_DEVICE LORI_FORCEINLINE float exp_neg(float t) noexcept {
  const float shifted = rnd_fma(t, 1.44269502e+00f, 12582912.0f);  // 1.5 * 2^23 + round(t / ln2)
  const float kf = rnd_sub(shifted, 12582912.0f);                    // exact
  const std::uint32_t n = float_bits(shifted) - 0x4b400000u;         // round(t / ln2) as two's complement
  float r = rnd_fma(kf, -0.693145751953125f, t);                     // exact (Sterbenz + 16-bit ln2_hi)
  r = rnd_fma(kf, -1.42860682030941723212e-06f, r);                  // ln2_lo = ln2 - ln2_hi
  float p = 1.38888889e-03f;
  p = rnd_fma(p, r, 8.33333377e-03f);
  p = rnd_fma(p, r, 4.16666679e-02f);
  p = rnd_fma(p, r, 1.66666672e-01f);
  p = rnd_fma(p, r, 0.5f);
  p = rnd_fma(p, r, 1.0f);
  p = rnd_fma(p, r, 1.0f);
  return bits_float(float_bits(p) + n * 0x800000u);
}

}  // namespace detail
}  // namespace lori

#endif  // LORI_DETAIL_RANDOM_MATH_HPP
