// Private: the counter-based generator behind DARE's Bernoulli draws.
//
// lori::philox4x32_10 (lori/random/philox.hpp; Random123's Philox4x32-10) with its documented 24-bit
// uniform conversion u = (x >> 8) * 2^-24 in [0, 1) (lori::uniform_float). Everything DARE draws goes
// through dare_uniform_block().
#ifndef LORI_DETAIL_MERGE_RNG_HPP
#define LORI_DETAIL_MERGE_RNG_HPP

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"
#include "lori/random/philox.hpp"

#include <array>
#include <cstdint>

namespace lori::detail {

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
  const philox_block b = philox4x32_10_block(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1]);
  return {b[0] >> 8, b[1] >> 8, b[2] >> 8, b[3] >> 8};
}

}  // namespace lori::detail

#endif  // LORI_DETAIL_MERGE_RNG_HPP
