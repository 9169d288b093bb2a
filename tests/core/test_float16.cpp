#include <doctest/doctest.h>

#include "lori/core/float16.hpp"
#include "test_util.hpp"

#include <cmath>
#include <cstdint>
#include <limits>

namespace {
// Reference rounding in double: the representable neighbours of x in a format and round to nearest
// even by comparing distances exactly (doubles hold every float and every 16-bit value exactly).
double round_to_format(double x, int mant_bits, int min_exp, double max_finite) {
  if (x == 0) return x;
  const double ax = std::fabs(x);
  int e;
  std::frexp(ax, &e);  // ax = f * 2^e, f in [0.5, 1)
  int exp = e - 1;
  if (exp < min_exp) exp = min_exp;  // subnormal spacing
  const double ulp = std::ldexp(1.0, exp - mant_bits);
  const double q = ax / ulp;
  double fl = std::floor(q);
  const double rem = q - fl;
  if (rem > 0.5 || (rem == 0.5 && std::fmod(fl, 2.0) == 1.0)) fl += 1.0;
  double r = fl * ulp;
  // Overflow: values that round above max_finite become Inf.
  if (r > max_finite) r = std::numeric_limits<double>::infinity();
  return std::copysign(r, x);
}
}  // namespace

TEST_CASE("bf16 and fp16 widen exactly: every 16-bit pattern") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float fb = lori::bf16_bits_to_float(h);
    const float fh = lori::half_bits_to_float(h);
    // Round trip of every non-NaN pattern is the identity.
    if (!std::isnan(fb)) REQUIRE(lori::float_to_bf16_bits(fb) == h);
    else REQUIRE(std::isnan(lori::bf16_bits_to_float(lori::float_to_bf16_bits(fb))));
    if (!std::isnan(fh)) REQUIRE(lori::float_to_half_bits(fh) == h);
    else REQUIRE(std::isnan(lori::half_bits_to_float(lori::float_to_half_bits(fh))));
  }
  CHECK(lori::half_bits_to_float(0x3c00) == 1.0f);
  CHECK(lori::half_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(lori::half_bits_to_float(0x7bff) == 65504.0f);
  CHECK(lori::bf16_bits_to_float(0x3f80) == 1.0f);
}

TEST_CASE("bf16 and fp16 narrowing rounds to nearest even, against a double reference") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(7);
  std::uniform_int_distribution<std::uint32_t> bits;
  int checked = 0;
  for (int k = 0; k < 400000; ++k) {
    // Random float bit patterns cover every exponent, including subnormals, overflow and ties.
    const std::uint32_t u = bits(g);
    const float f = lori::bits_float(u);
    if (std::isnan(f)) continue;
    const double ref_bf = round_to_format(f, 7, -126, 3.3895313892515355e38);
    const double ref_h = round_to_format(f, 10, -14, 65504.0);
    REQUIRE(static_cast<double>(lori::bf16_bits_to_float(lori::float_to_bf16_bits(f))) == ref_bf);
    REQUIRE(static_cast<double>(lori::half_bits_to_float(lori::float_to_half_bits(f))) == ref_h);
    ++checked;
  }
  // Exact ties: halfway between two bf16 / fp16 neighbours go to the even one.
  CHECK(lori::float_to_bf16_bits(lori::bits_float(0x3f808000u)) == 0x3f80);  // tie, even below
  CHECK(lori::float_to_bf16_bits(lori::bits_float(0x3f818000u)) == 0x3f82);  // tie, even above
  CHECK(lori::float_to_half_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
  CHECK(lori::float_to_half_bits(65520.0f) == 0x7c00);
  CHECK(lori::float_to_half_bits(65519.0f) == 0x7bff);
  CHECK(lori::float_to_half_bits(std::ldexp(1.0f, -25)) == 0x0000);
  CHECK(lori::float_to_half_bits(std::ldexp(1.5f, -25)) == 0x0001);
  CHECK(std::isnan(lori::half_bits_to_float(lori::float_to_half_bits(std::nanf("")))));
  CHECK(checked > 390000);
}

TEST_CASE("storage types convert through from_float / to_float") {
  const lori::bfloat16 b(3.14159f);
  const lori::half h(3.14159f);
  CHECK(lori::to_float(b) == doctest::Approx(3.14159).epsilon(1.0 / 128));
  CHECK(lori::to_float(h) == doctest::Approx(3.14159).epsilon(1.0 / 1024));
  CHECK(lori::from_float<lori::bfloat16>(1.0f).bits == 0x3f80);
  CHECK(lori::from_float<lori::half>(-2.0f).bits == 0xc000);
  CHECK(lori::from_float<float>(0.5f) == 0.5f);
}
