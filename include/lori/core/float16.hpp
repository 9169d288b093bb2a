// lori/core/float16.hpp - bfloat16 and IEEE half as 16-bit storage types, with exact conversions.
//
// lori stores bf16/fp16 tensors (safetensors files, GPU buffers, merged weights) but computes in
// float or double. These types are plain 16-bit storage (trivially copyable, layout-compatible with
// __nv_bfloat16 / __half and with the bytes in a safetensors file) plus conversions:
//   widening (to float) is exact;
//   narrowing (from float) rounds to nearest, ties to even, as torch, numpy (ml_dtypes) and CUDA's
//   __float2bfloat16_rn / __float2half_rn do; NaN stays NaN (quiet), overflow goes to +-Inf.
// The conversions are integer bit manipulation only, so host and device give identical results.
#ifndef LORI_CORE_FLOAT16_HPP
#define LORI_CORE_FLOAT16_HPP

#include "lori/config.hpp"

#include <cstdint>
#include <cstring>

namespace lori {

/// Bit-exact float <-> uint32 reinterpretation usable on host and device.
LORI_HOST_DEVICE LORI_FORCEINLINE std::uint32_t float_bits(float f) noexcept {
#if LORI_DEVICE_PASS
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

/// Inverse of float_bits.
LORI_HOST_DEVICE LORI_FORCEINLINE float bits_float(std::uint32_t u) noexcept {
#if LORI_DEVICE_PASS
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

/// bf16 bits -> float (exact).
LORI_HOST_DEVICE LORI_FORCEINLINE float bf16_bits_to_float(std::uint16_t h) noexcept {
  return bits_float(static_cast<std::uint32_t>(h) << 16);
}

/// float -> bf16 bits, round to nearest even; NaN -> quiet NaN with the sign kept.
LORI_HOST_DEVICE LORI_FORCEINLINE std::uint16_t float_to_bf16_bits(float f) noexcept {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

/// IEEE binary16 bits -> float (exact, subnormals included).
LORI_HOST_DEVICE LORI_FORCEINLINE float half_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));  // Inf / NaN
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);
  // Subnormal: value = mant * 2^-24, exact in float.
  const float mag = static_cast<float>(mant) * 5.9604644775390625e-8f;
  return bits_float(sign | float_bits(mag));
}

/// float -> IEEE binary16 bits, round to nearest even; overflow -> Inf; NaN -> quiet NaN.
LORI_HOST_DEVICE LORI_FORCEINLINE std::uint16_t float_to_half_bits(float f) noexcept {
  const std::uint32_t u = float_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520 -> Inf
  if (a < 0x38800000u) {
    // Result is subnormal (or zero): value / 2^-24 rounded to an integer, ties to even.
    if (a < 0x33000000u) return sign;  // below half the smallest subnormal -> 0 (2^-25 itself ties to 0)
    const std::uint32_t e = a >> 23;                      // biased exponent, 102..112
    const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;  // 24-bit significand
    const std::uint32_t shift = 126u - e;                 // 14..24
    std::uint32_t q = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
    return static_cast<std::uint16_t>(sign | q);
  }
  // Normal: rebias exponent and round the 13 dropped bits to nearest even.
  const std::uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

/// bfloat16 storage type (1 sign, 8 exponent, 7 mantissa bits).
struct bfloat16 {
  std::uint16_t bits = 0;
  bfloat16() = default;
  LORI_HOST_DEVICE explicit bfloat16(float f) noexcept : bits(float_to_bf16_bits(f)) {}
  LORI_HOST_DEVICE static bfloat16 from_bits(std::uint16_t b) noexcept {
    bfloat16 h;
    h.bits = b;
    return h;
  }
  LORI_HOST_DEVICE explicit operator float() const noexcept { return bf16_bits_to_float(bits); }
};

/// IEEE 754 binary16 storage type (1 sign, 5 exponent, 10 mantissa bits).
struct half {
  std::uint16_t bits = 0;
  half() = default;
  LORI_HOST_DEVICE explicit half(float f) noexcept : bits(float_to_half_bits(f)) {}
  LORI_HOST_DEVICE static half from_bits(std::uint16_t b) noexcept {
    half h;
    h.bits = b;
    return h;
  }
  LORI_HOST_DEVICE explicit operator float() const noexcept { return half_bits_to_float(bits); }
};

static_assert(sizeof(bfloat16) == 2 && sizeof(half) == 2, "16-bit storage types must be 2 bytes");

/// Widen any lori element type to float/double for arithmetic (identity for float and double).
LORI_HOST_DEVICE LORI_FORCEINLINE float to_float(bfloat16 x) noexcept { return static_cast<float>(x); }
LORI_HOST_DEVICE LORI_FORCEINLINE float to_float(half x) noexcept { return static_cast<float>(x); }
LORI_HOST_DEVICE LORI_FORCEINLINE float to_float(float x) noexcept { return x; }
LORI_HOST_DEVICE LORI_FORCEINLINE double to_float(double x) noexcept { return x; }

/// Narrow a float/double to a storage type T (rounding as documented above for 16-bit types).
template <class T>
LORI_HOST_DEVICE LORI_FORCEINLINE T from_float(float x) noexcept {
  return static_cast<T>(x);
}
template <>
LORI_HOST_DEVICE LORI_FORCEINLINE bfloat16 from_float<bfloat16>(float x) noexcept {
  return bfloat16(x);
}
template <>
LORI_HOST_DEVICE LORI_FORCEINLINE half from_float<half>(float x) noexcept {
  return half(x);
}

}  // namespace lori

#endif  // LORI_CORE_FLOAT16_HPP
