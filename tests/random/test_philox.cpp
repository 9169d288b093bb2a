// Philox4x32-10 known answers (Random123 kat_vectors), constexpr use, exact uniform conversions and
// the counter_rng mapping.
#include <doctest/doctest.h>

#include "lori/random/philox.hpp"
#include "test_util.hpp"

#include <array>
#include <cstdint>
#include <set>

namespace {
using ctr_t = std::array<std::uint32_t, 4>;
using pkey_t = std::array<std::uint32_t, 2>;

// Usable in constant expressions (the function is constexpr).
static_assert(lori::philox4x32_10(ctr_t{{0, 0, 0, 0}}, pkey_t{{0, 0}})[0] == 0x6627e8d5u, "Philox KAT 1 at compile time");
static_assert(lori::counter_rng(0, 0).block(0)[3] == 0x9b00dbd8u, "counter_rng(0,0) block 0 is Philox(0,0)");
}  // namespace

TEST_CASE("philox4x32_10 reproduces the Random123 known answers") {
  CHECK(lori::philox4x32_10(ctr_t{{0, 0, 0, 0}}, pkey_t{{0, 0}}) == ctr_t{{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}});
  CHECK(lori::philox4x32_10(ctr_t{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, pkey_t{{0xffffffffu, 0xffffffffu}}) ==
        ctr_t{{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}});
  CHECK(lori::philox4x32_10(ctr_t{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, pkey_t{{0xa4093822u, 0x299f31d0u}}) ==
        ctr_t{{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
  // The scalar form is the same function.
  CHECK(lori::philox4x32_10_block(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u).to_array() ==
        ctr_t{{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
}

TEST_CASE("philox4x32_10_scheduled (precomputed key schedule) equals philox4x32_10_block") {
  static_assert(lori::detail::philox4x32_10_scheduled(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u,
                                                      lori::detail::philox_key_schedule(0xa4093822u, 0x299f31d0u))
                        .v[0] == 0xd16cfe09u,
                "scheduled Philox KAT 3 at compile time");
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(31);
  std::size_t bad = 0;
  for (int n = 0; n < 20000; ++n) {
    std::uint32_t c[4], k[2];
    for (auto& x : c) x = static_cast<std::uint32_t>(g());
    for (auto& x : k) x = static_cast<std::uint32_t>(g());
    if (n == 0) k[0] = k[1] = 0xffffffffu;  // wrapping key schedule
    const lori::philox_block a = lori::philox4x32_10_block(c[0], c[1], c[2], c[3], k[0], k[1]);
    const lori::philox_block b = lori::detail::philox4x32_10_scheduled(c[0], c[1], c[2], c[3], lori::detail::philox_key_schedule(k[0], k[1]));
    bad += a.to_array() != b.to_array();
  }
  CHECK(bad == 0);
}

TEST_CASE("uniform conversions are the documented exact formulas") {
  CHECK(lori::uniform_float(0u) == 0.0f);
  CHECK(lori::uniform_float(0xffffffffu) == 1.0f - 0x1p-24f);  // largest value < 1
  CHECK(lori::uniform_float(0x000000ffu) == 0.0f);             // low 8 bits ignored
  CHECK(lori::uniform_float(0x00000100u) == 0x1p-24f);
  CHECK(lori::uniform_float_open_closed(0u) == 0x1p-24f);      // smallest value > 0
  CHECK(lori::uniform_float_open_closed(0xffffffffu) == 1.0f);
  CHECK(lori::uniform_double(0u) == 0.0);
  CHECK(lori::uniform_double(~std::uint64_t{0}) == 1.0 - 0x1p-53);
  CHECK(lori::uniform_double_open_closed(0u) == 0x1p-53);
  CHECK(lori::uniform_double_open_closed(~std::uint64_t{0}) == 1.0);
  CHECK(lori::words_to_u64(0x89abcdefu, 0x01234567u) == 0x0123456789abcdefull);
  // On fresh random words: exactly the formula evaluated in double (exact there too).
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(1);
  for (int t = 0; t < 10000; ++t) {
    const auto u = static_cast<std::uint32_t>(g());
    const std::uint64_t u64 = g();
    REQUIRE(static_cast<double>(lori::uniform_float(u)) == static_cast<double>(u >> 8) / 16777216.0);
    REQUIRE(static_cast<double>(lori::uniform_float_open_closed(u)) == static_cast<double>((u >> 8) + 1) / 16777216.0);
    REQUIRE(lori::uniform_double(u64) == static_cast<double>(u64 >> 11) / 9007199254740992.0);
    REQUIRE(lori::uniform_double_open_closed(u64) == static_cast<double>((u64 >> 11) + 1) / 9007199254740992.0);
  }
}

TEST_CASE("counter_rng maps (seed, stream, index) to Philox key and counter as documented") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(2);
  for (int t = 0; t < 1000; ++t) {
    const std::uint64_t seed = g(), stream = g(), index = g();
    const lori::counter_rng rng(seed, stream);
    const auto expect = lori::philox4x32_10(
        ctr_t{{static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32), static_cast<std::uint32_t>(stream),
               static_cast<std::uint32_t>(stream >> 32)}},
        pkey_t{{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}});
    REQUIRE(rng.block(index).to_array() == expect);
    const std::uint64_t n = g() >> 2;
    REQUIRE(rng.word(n) == rng.block(n >> 2)[static_cast<int>(n & 3)]);
    REQUIRE(rng.uniform(n) == lori::uniform_float(rng.word(n)));
  }
  // Different seeds / streams / indices give different blocks (a collision among these 3000 128-bit
  // values would have probability ~ 3000^2 / 2^129).
  std::set<std::array<std::uint32_t, 4>> seen;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    seen.insert(lori::counter_rng(7, 0).block(i).to_array());
    seen.insert(lori::counter_rng(8, 0).block(i).to_array());
    seen.insert(lori::counter_rng(7, std::uint64_t{1} << 32).block(i).to_array());
  }
  CHECK(seen.size() == 3000);
}
