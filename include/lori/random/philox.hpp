// lori/random/philox.hpp - Philox4x32-10, exact uniform conversions, and a counter-based generator.
//
// Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC'11;
// the Random123 library) is a keyed bijection of 128-bit counters: 10 rounds of two 32x32->64-bit
// multiplies and xors. It passes BigCrush, needs no state beyond (counter, key), and costs the same on
// the host and the device, so lori uses it wherever a random number must be reproducible anywhere:
// random projections A (lori/random/projection.hpp), DARE-style pruning masks, test inputs.
//
// Everything here is integer arithmetic (plus exact integer->float conversions), LORI_HOST_DEVICE and
// constexpr, so host and device produce identical bits by construction.
//
// Stable API (names and bit patterns will not change):
//   philox4x32_10(counter, key)          the raw Random123 function (std::array in, std::array out)
//   philox_block                         four 32-bit words, indexable on host and device
//   philox4x32_10_block(c0..c3, k0, k1)  the same function on scalars (for device code)
//   uniform_float(u)                     [0, 1):  (u >> 8) * 2^-24
//   uniform_float_open_closed(u)         (0, 1]:  ((u >> 8) + 1) * 2^-24   (safe for log)
//   uniform_double(u64)                  [0, 1):  (u >> 11) * 2^-53
//   uniform_double_open_closed(u64)      (0, 1]:  ((u >> 11) + 1) * 2^-53
//   words_to_u64(lo, hi)                 (hi << 32) | lo
//   counter_rng{seed, stream}            (seed, stream, index) -> 4 words, random access
#ifndef LORI_RANDOM_PHILOX_HPP
#define LORI_RANDOM_PHILOX_HPP

#include "lori/config.hpp"

#include <array>
#include <cstdint>

namespace lori {

/// Four 32-bit words: one Philox4x32 output (or counter). A plain aggregate that, unlike std::array,
/// can be indexed in device code without --expt-relaxed-constexpr.
struct philox_block {
  std::uint32_t v[4];
  LORI_HOST_DEVICE constexpr std::uint32_t operator[](int i) const noexcept { return v[i]; }
  /// The same four words as a std::array (host code).
  constexpr std::array<std::uint32_t, 4> to_array() const noexcept { return {{v[0], v[1], v[2], v[3]}}; }
};

/// Philox4x32-10 on scalars: counter (c0, c1, c2, c3), key (k0, k1) -> four words. Bit-identical to
/// Random123's philox4x32_R(10, ...) with word 0 = c0 etc. Cost: 10 rounds of 2 widening multiplies.
LORI_HOST_DEVICE LORI_FORCEINLINE constexpr philox_block philox4x32_10_block(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2,
                                                                             std::uint32_t c3, std::uint32_t k0,
                                                                             std::uint32_t k1) noexcept {
  constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;  // multipliers
  constexpr std::uint32_t w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;  // Weyl key increments (golden ratio, sqrt(3)-1)
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += w0;
      k1 += w1;
    }
    // One 32x32->64 multiply gives both halves (a single IMAD.WIDE.U32 on NVIDIA GPUs).
    const std::uint64_t p0 = static_cast<std::uint64_t>(m0) * c0;
    const std::uint64_t p1 = static_cast<std::uint64_t>(m1) * c2;
    const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return philox_block{{c0, c1, c2, c3}};
}

namespace detail {
/// The key schedule of Philox4x32-10 for key (k0, k1): round r (0..9) uses (k0 + r * 0x9E3779B9,
/// k1 + r * 0xBB67AE85) mod 2^32. Precomputed once per key by callers that run many blocks with one
/// key (the GPU generation kernels keep it in uniform registers).
struct philox_round_keys {
  std::uint32_t k0[10];
  std::uint32_t k1[10];
};

LORI_HOST_DEVICE LORI_FORCEINLINE constexpr philox_round_keys philox_key_schedule(std::uint32_t k0, std::uint32_t k1) noexcept {
  philox_round_keys rk{};
  for (int round = 0; round < 10; ++round) {
    rk.k0[round] = k0 + static_cast<std::uint32_t>(round) * 0x9E3779B9u;
    rk.k1[round] = k1 + static_cast<std::uint32_t>(round) * 0xBB67AE85u;
  }
  return rk;
}

/// Rounds FirstRound .. 9 of Philox4x32-10 on the state {c0, c1, c2, c3} (the counter after rounds
/// 0 .. FirstRound - 1) with the key schedule rk. (The GPU gaussian row path computes its first rounds
/// partly per row and finishes with philox_rounds<3>.)
template <int FirstRound>
LORI_HOST_DEVICE LORI_FORCEINLINE constexpr philox_block philox_rounds(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                                                                      const philox_round_keys& rk) noexcept {
  static_assert(FirstRound >= 0 && FirstRound <= 10, "philox_rounds: FirstRound in 0..10");
  constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = FirstRound; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(m0) * c0;
    const std::uint64_t p1 = static_cast<std::uint64_t>(m1) * c2;
    const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    c0 = hi1 ^ c1 ^ rk.k0[round];
    c1 = lo1;
    c2 = hi0 ^ c3 ^ rk.k1[round];
    c3 = lo0;
  }
  return philox_block{{c0, c1, c2, c3}};
}

/// philox4x32_10_block(c0, c1, c2, c3, k0, k1) with rk = philox_key_schedule(k0, k1): same rounds,
/// same bits (tested against philox4x32_10_block).
LORI_HOST_DEVICE LORI_FORCEINLINE constexpr philox_block philox4x32_10_scheduled(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2,
                                                                                 std::uint32_t c3, const philox_round_keys& rk) noexcept {
  return philox_rounds<0>(c0, c1, c2, c3, rk);
}

struct philox_words4 {
  std::uint32_t v[4];
};
struct philox_words2 {
  std::uint32_t v[2];
};
}  // namespace detail

/// Philox4x32-10 as specified by Random123: counter {c0, c1, c2, c3}, key {k0, k1} -> 4 words.
/// Known answers (Random123 kat_vectors): counter 0x0*4, key 0x0*2 -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8;
/// counter ffffffff*4, key ffffffff*2 -> 408f276d 41c83b0e a20bc7c6 6d5451fd.
/// constexpr; usable in device code (in kernels prefer philox4x32_10_block, whose result is indexable).
LORI_HOST_DEVICE constexpr std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> counter,
                                                                      std::array<std::uint32_t, 2> key) noexcept {
#if LORI_DEVICE_PASS
  // std::array's operator[] is a host-only constexpr function under nvcc; a bit cast is not.
  const detail::philox_words4 c = __builtin_bit_cast(detail::philox_words4, counter);
  const detail::philox_words2 k = __builtin_bit_cast(detail::philox_words2, key);
  const philox_block r = philox4x32_10_block(c.v[0], c.v[1], c.v[2], c.v[3], k.v[0], k.v[1]);
#else
  const philox_block r = philox4x32_10_block(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
#endif
  return std::array<std::uint32_t, 4>{{r.v[0], r.v[1], r.v[2], r.v[3]}};
}

// ---- exact conversions of random words to uniform floating-point numbers ---------------------------
// All are exact (no rounding anywhere): the integer has at most 24 (float) / 53 (double) significant
// bits and the scale is a power of two. Every output is a multiple of 2^-24 (2^-53); each of the 2^24
// (2^53) values is equally likely when the input word is uniform.

/// Uniform float in [0, 1): (u >> 8) * 2^-24 (the top 24 bits of u). Never returns 1.
LORI_HOST_DEVICE LORI_FORCEINLINE constexpr float uniform_float(std::uint32_t u) noexcept {
  return static_cast<float>(u >> 8) * 5.9604644775390625e-8f;  // 2^-24
}

/// Uniform float in (0, 1]: ((u >> 8) + 1) * 2^-24. Never returns 0: use it where a log follows.
LORI_HOST_DEVICE LORI_FORCEINLINE constexpr float uniform_float_open_closed(std::uint32_t u) noexcept {
  return static_cast<float>((u >> 8) + 1u) * 5.9604644775390625e-8f;
}

/// (hi << 32) | lo: combine two words (e.g. block[0], block[1]) into one 64-bit word.
LORI_HOST_DEVICE LORI_FORCEINLINE constexpr std::uint64_t words_to_u64(std::uint32_t lo, std::uint32_t hi) noexcept {
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
}

/// Uniform double in [0, 1): (u >> 11) * 2^-53 (the top 53 bits of u).
LORI_HOST_DEVICE LORI_FORCEINLINE constexpr double uniform_double(std::uint64_t u) noexcept {
  return static_cast<double>(u >> 11) * 1.1102230246251565404236316680908203125e-16;  // 2^-53
}

/// Uniform double in (0, 1]: ((u >> 11) + 1) * 2^-53.
LORI_HOST_DEVICE LORI_FORCEINLINE constexpr double uniform_double_open_closed(std::uint64_t u) noexcept {
  return static_cast<double>((u >> 11) + 1u) * 1.1102230246251565404236316680908203125e-16;
}

// ---- counter-based generator: (seed, stream, index) -> 4 words ---------------------------------------

/// A counter-based random generator with random access: block(index) returns Philox4x32-10 of
///   key     = { seed & 0xffffffff, seed >> 32 }
///   counter = { index & 0xffffffff, index >> 32, stream & 0xffffffff, stream >> 32 }.
/// So every (seed, stream, index) names one independent 128-bit block, computable alone in O(1), in any
/// order, on host or device. `seed` selects the experiment/model, `stream` one independent sequence
/// (e.g. one module: lori::stream_from_name in lori/random/stream.hpp; give different uses of the same
/// module different streams), `index` the position in it. Trivially copyable: pass it to kernels by value.
///
/// lori's projection matrices use exactly this mapping: element (i, j) of A is
///   counter_rng{seed, stream}.block((i << 32) | (j >> 2))[j & 3] pushed through the distribution,
/// see lori/random/projection.hpp.
struct counter_rng {
  std::uint32_t key0 = 0, key1 = 0;      ///< seed, low and high word
  std::uint32_t stream0 = 0, stream1 = 0;  ///< stream, low and high word

  counter_rng() = default;
  LORI_HOST_DEVICE constexpr counter_rng(std::uint64_t seed, std::uint64_t stream) noexcept
      : key0(static_cast<std::uint32_t>(seed)),
        key1(static_cast<std::uint32_t>(seed >> 32)),
        stream0(static_cast<std::uint32_t>(stream)),
        stream1(static_cast<std::uint32_t>(stream >> 32)) {}

  /// The 4 words of block `index` (one Philox4x32-10 call).
  LORI_HOST_DEVICE LORI_FORCEINLINE constexpr philox_block block(std::uint64_t index) const noexcept {
    return philox4x32_10_block(static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32), stream0, stream1,
                               key0, key1);
  }

  /// Word n of the stream's sequence: block(n >> 2)[n & 3] (one Philox call; when you need several
  /// consecutive words, call block() once per 4).
  LORI_HOST_DEVICE LORI_FORCEINLINE constexpr std::uint32_t word(std::uint64_t n) const noexcept {
    return block(n >> 2)[static_cast<int>(n & 3u)];
  }

  /// Uniform float in [0, 1) from word n: uniform_float(word(n)).
  LORI_HOST_DEVICE LORI_FORCEINLINE constexpr float uniform(std::uint64_t n) const noexcept { return uniform_float(word(n)); }
};

}  // namespace lori

#endif  // LORI_RANDOM_PHILOX_HPP
