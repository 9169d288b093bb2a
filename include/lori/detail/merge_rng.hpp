// Private: the counter-based generator behind DARE's Bernoulli draws.
//
// Philox4x32-10 (Salmon et al., SC'11; the generator of Random123, cuRAND and torch's CUDA RNG) with
// the standard round constants, and the 24-bit uniform conversion u = (x >> 8) * 2^-24 in [0, 1).
// Everything DARE draws goes through dare_uniform_block(), so the generator can be swapped for
// lori::philox4x32_10 (lori/random/philox.hpp) in one place.
#ifndef LORI_DETAIL_MERGE_RNG_HPP
#define LORI_DETAIL_MERGE_RNG_HPP

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"

#include <array>
#include <cstdint>

namespace lori::detail {

/// Philox4x32-10 block: 4 x 32 random bits from a 128-bit counter and a 64-bit key.
inline std::array<std::uint32_t, 4> merge_philox4x32_10(std::array<std::uint32_t, 4> c, std::array<std::uint32_t, 2> k) noexcept {
  constexpr std::uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(M0) * c[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(M1) * c[2];
    const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    k[0] += W0;
    k[1] += W1;
  }
  return c;
}

/// SplitMix64 finaliser: mixes stream identifiers (adapter index, tensor kind, module name hash).
inline std::uint64_t merge_mix64(std::uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// FNV-1a 64-bit hash of a string (module names -> DARE streams; stable across platforms).
inline std::uint64_t merge_fnv1a(const char* s, std::size_t n) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(s[i]);
    h *= 0x100000001b3ull;
  }
  return h;
}

/// The four 24-bit uniforms in [0, 1) (as integers u24 = x >> 8, value u24 * 2^-24) for elements
/// 4*block .. 4*block+3 of the tensor identified by (seed, stream).
inline std::array<std::uint32_t, 4> dare_uniform_block(std::uint64_t seed, std::uint64_t stream, std::uint64_t block) noexcept {
  const std::array<std::uint32_t, 4> ctr = {static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32),
                                            static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)};
  const std::array<std::uint32_t, 2> key = {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)};
  auto x = merge_philox4x32_10(ctr, key);
  for (auto& v : x) v >>= 8;
  return x;
}

}  // namespace lori::detail

#endif  // LORI_DETAIL_MERGE_RNG_HPP
