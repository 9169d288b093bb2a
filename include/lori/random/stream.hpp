// lori/random/stream.hpp - stable 64-bit stream ids from module names.
//
// A projection is identified by (seed, stream); lori derives the stream of an adapted module from its
// name with FNV-1a 64 (Fowler-Noll-Vo, offset basis 0xcbf29ce484222325, prime 0x100000001b3), over
// the name's bytes exactly as given (no normalisation: "model.layers.3.self_attn.q_proj" and
// "base_model.model.model.layers.3.self_attn.q_proj" are different streams; strip prefixes first if
// you want them equal). This mapping is frozen: changing it would change every regenerated A.
//   stream_from_name("model.layers.3.self_attn.q_proj") == 0x1e721458d2ae4c18 (pinned by a test)
#ifndef LORI_RANDOM_STREAM_HPP
#define LORI_RANDOM_STREAM_HPP

#include "lori/config.hpp"

#include <cstdint>
#include <string_view>

namespace lori {

/// FNV-1a 64-bit hash of the bytes of `bytes`. O(size); constexpr.
constexpr std::uint64_t fnv1a_64(std::string_view bytes) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : bytes) {
    h ^= static_cast<std::uint64_t>(static_cast<unsigned char>(c));
    h *= 0x100000001b3ull;
  }
  return h;
}

/// The stream id of a module: fnv1a_64(module_name). Use it as the `stream` of lori's projections
/// (lori/random/projection.hpp) and of lori::counter_rng. For several independent random objects per
/// module (e.g. A and a pruning mask), hash distinct names, e.g. name + "#dare".
constexpr std::uint64_t stream_from_name(std::string_view module_name) noexcept { return fnv1a_64(module_name); }

}  // namespace lori

#endif  // LORI_RANDOM_STREAM_HPP
