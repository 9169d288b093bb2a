// lori/random/distributions.hpp - the distributions of lori's random projections and the exact map
// from Philox words to matrix elements.
//
// A projection A (r x k, r = rows, k = cols = in_features) is a pure function of
// (seed, stream, r, k, distribution). Element (i, j) uses the 32-bit word
//     w(i, j) = counter_rng{seed, stream}.block((i << 32) | (j >> 2))[j & 3]
// i.e. Philox4x32-10 with key = {seed lo, seed hi} and counter = {j/4, i, stream lo, stream hi}: one
// Philox call yields 4 consecutive elements of a row. Every element is computed in binary32 by the
// exact formulas below (integer operations, table look-ups, fma, multiplies); the result is the same bits on every CPU and GPU. Outputs of other types are
// derived from that float: double = exact widening, bf16/fp16 = round to nearest even
// (lori::float_to_bf16_bits / float_to_half_bits).
//
//   kaiming_uniform  U(-1/sqrt(k), 1/sqrt(k)) - PEFT's lora_A init (kaiming_uniform_, a = sqrt(5)), the
//                    reference LoRI's A. x = n * (b * 2^-24), n = 2*(w >> 8) + 1 - 2^24 (an odd integer
//                    in (-2^24, 2^24), uniform), b = float(1/sqrt(k)): symmetric, |x| <= b.
//   gaussian         N(0, sigma^2), sigma default 1/sqrt(r) (Johnson-Lindenstrauss scaling).
//                    256-layer ziggurat on the element's own word w (lori/detail/random_ziggurat.hpp has
//                    every step): layer L = w & 0xff, sign = top bit, U23 = (w >> 8) & 0x7fffff,
//                    m = 1 + U23 2^-23; if bits(m) < k_L (98.5% of elements):
//                    x = sign * fma(m, Ws_L, -Ws_L), Ws_L = rnd(W_L * sigma) (k, W: frozen tables,
//                    lori/detail/ziggurat_tables.hpp). Otherwise wedge / tail tests and new candidates
//                    with words from two "slow" Philox blocks per element, counter
//                    {2^31 | b << 30 | j >> 2, (j & 3) << 30 | i, stream lo, stream hi} (b = 0, 1; disjoint
//                    from the main counters), at most 6 words, then a Box-Muller fallback on the last two.
//                    Needs rows <= 2^30 and cols <= 2^32.
//   gaussian_v2      N(0, sigma^2) like gaussian, a second frozen format of it: a 2048-layer ziggurat with
//                    another word layout (U20 = w & 0xfffff, L = (w >> 20) & 0x7ff, sign = top bit;
//                    x = sign * rnd(U20 2^-20 * rnd(W_L * sigma)) on the fast path, 99.77% of elements;
//                    slow path as above with its own tables). 0.23% slow elements instead of 1.49%,
//                    which makes it the fastest Gaussian on the GPU (docs/random.md); values have 20
//                    random bits within a layer instead of 23. Recommended for new adapters; gaussian
//                    stays, bit for bit, for adapters that name it. Also needs sigma <= 1e36.
//   rademacher       +-1/sqrt(k), the sign from the top bit of w (set: negative).
//   sparse           Achlioptas / Li et al. very sparse projection, s >= 1:
//                    sqrt(s/k) * {+1 w.p. 1/(2s), 0 w.p. 1 - 1/s, -1 w.p. 1/(2s)}; with
//                    T = round(2^31 / s): w < T -> +, T <= w < 2T -> -, else 0 (probabilities exact
//                    up to 2^-33).
#ifndef LORI_RANDOM_DISTRIBUTIONS_HPP
#define LORI_RANDOM_DISTRIBUTIONS_HPP

#include "lori/config.hpp"
#include "lori/detail/random_math.hpp"
#include "lori/detail/random_ziggurat.hpp"
#include "lori/error.hpp"
#include "lori/random/philox.hpp"

#include <cmath>
#include <cstdint>
#include <optional>

namespace lori {

/// The distribution of a projection's elements (see the header comment for the exact formulas).
enum class distribution : std::uint32_t { kaiming_uniform = 0, gaussian = 1, rademacher = 2, sparse = 3, gaussian_v2 = 4 };

/// Whether d is one of the Gaussian formats (gaussian, gaussian_v2).
LORI_HOST_DEVICE constexpr bool is_gaussian(distribution d) noexcept { return d == distribution::gaussian || d == distribution::gaussian_v2; }

/// What a projection is, independent of its shape. Build with the named constructors.
struct projection_spec {
  distribution kind = distribution::kaiming_uniform;
  std::optional<double> sigma;  ///< gaussian, gaussian_v2 only; empty: 1/sqrt(rows)
  double s = 3.0;               ///< sparse only: density parameter, s >= 1 (1/s of the elements are nonzero)
  bool orthonormal_rows = false;  ///< CPU only: orthonormalise the rows after generation (Eigen QR)

  static projection_spec kaiming_uniform() { return projection_spec{}; }
  static projection_spec gaussian(std::optional<double> sigma = std::nullopt) {
    projection_spec p;
    p.kind = distribution::gaussian;
    p.sigma = sigma;
    return p;
  }
  /// The same law as gaussian() in the second, faster format (see the header comment).
  static projection_spec gaussian_v2(std::optional<double> sigma = std::nullopt) {
    projection_spec p;
    p.kind = distribution::gaussian_v2;
    p.sigma = sigma;
    return p;
  }
  static projection_spec rademacher() {
    projection_spec p;
    p.kind = distribution::rademacher;
    return p;
  }
  static projection_spec sparse(double s = 3.0) {
    projection_spec p;
    p.kind = distribution::sparse;
    p.s = s;
    return p;
  }
  /// The same spec with orthonormal_rows set.
  projection_spec orthonormalized() const {
    projection_spec p = *this;
    p.orthonormal_rows = true;
    return p;
  }
};

/// Shape-resolved constants of a projection (trivially copyable; what kernels receive). Build with
/// make_projection_params; computed on the host once, so CPU and GPU use the same constants.
struct projection_params {
  distribution kind = distribution::kaiming_uniform;
  float scale = 0.0f;           ///< kaiming: b*2^-24; gaussians: sigma; rademacher: 1/sqrt(k); sparse: sqrt(s/k)
  std::uint64_t threshold = 0;  ///< sparse: T = round(2^31 / s)
};

/// Validates `spec` for an r x k projection (rows = r, cols = k) and resolves its constants.
/// Throws lori::error for negative shapes, sigma <= 0 or not finite (gaussian_v2: or > 1e36), s < 1 or
/// not finite, an unknown distribution.
inline projection_params make_projection_params(const projection_spec& spec, index_t rows, index_t cols) {
  LORI_EXPECTS(rows >= 0 && cols >= 0, "make_projection_params: rows and cols must be >= 0");
  LORI_EXPECTS(rows <= (index_t{1} << 32) && cols <= (index_t{1} << 34),
               "make_projection_params: rows must be <= 2^32 and cols <= 2^34 (Philox counter layout)");
  projection_params p;
  p.kind = spec.kind;
  const double k = cols > 0 ? static_cast<double>(cols) : 1.0;
  const double r = rows > 0 ? static_cast<double>(rows) : 1.0;
  LORI_EXPECTS(!is_gaussian(spec.kind) || (rows <= (index_t{1} << 30) && cols <= (index_t{1} << 32)),
               "make_projection_params: gaussian needs rows <= 2^30 and cols <= 2^32 (slow-path counter layout)");
  switch (spec.kind) {
    case distribution::kaiming_uniform:
      p.scale = static_cast<float>(1.0 / std::sqrt(k)) * 5.9604644775390625e-8f;  // exact * 2^-24
      break;
    case distribution::gaussian:
    case distribution::gaussian_v2: {
      const double sigma = spec.sigma ? *spec.sigma : 1.0 / std::sqrt(r);
      LORI_EXPECTS(std::isfinite(sigma) && sigma > 0.0, "make_projection_params: gaussian sigma must be finite and > 0");
      p.scale = static_cast<float>(sigma);
      LORI_EXPECTS(p.scale > 0.0f && std::isfinite(p.scale), "make_projection_params: gaussian sigma out of float range");
      // (8 W_L sigma, the fast path's multiplier, must stay finite: W_L < 4.5)
      LORI_EXPECTS(spec.kind != distribution::gaussian_v2 || sigma <= 1e36, "make_projection_params: gaussian_v2 sigma must be <= 1e36");
      break;
    }
    case distribution::rademacher:
      p.scale = static_cast<float>(1.0 / std::sqrt(k));
      break;
    case distribution::sparse:
      LORI_EXPECTS(std::isfinite(spec.s) && spec.s >= 1.0, "make_projection_params: sparse s must be finite and >= 1");
      p.scale = static_cast<float>(std::sqrt(spec.s / k));
      p.threshold = static_cast<std::uint64_t>(std::llround(2147483648.0 / spec.s));
      break;
    default:
      LORI_EXPECTS(false, "make_projection_params: unknown distribution");
  }
  return p;
}

/// Four consecutive floats (elements 4q .. 4q+3 of a row).
struct float4_values {
  float v[4];
  LORI_HOST_DEVICE constexpr float operator[](int i) const noexcept { return v[i]; }
};

namespace detail {
LORI_HOST_DEVICE LORI_FORCEINLINE float sparse_value(std::uint32_t w, float scale, std::uint64_t t) noexcept {
  const std::uint64_t x = w;
  return x < t ? scale : (x < 2 * t ? -scale : 0.0f);
}

/// gaussian_element in the format of gaussian distribution d (gaussian: zig256, gaussian_v2: zig2048).
LORI_HOST_DEVICE LORI_FORCEINLINE float gaussian_element_of(distribution d, std::uint32_t w, float sigma, const counter_rng& g, std::uint32_t i,
                                                            std::uint64_t j) noexcept {
  return d == distribution::gaussian ? gaussian_element<zig256>(w, sigma, g, i, j) : gaussian_element<zig2048>(w, sigma, g, i, j);
}
}  // namespace detail

/// The four elements (i, 4q .. 4q+3) of a kaiming_uniform, rademacher or sparse projection from their
/// Philox block b (formulas in the header comment). Gaussians need more than the block (their rare
/// slow path draws extra words): use projection_values(p, seed, stream, i, q) for every distribution.
LORI_HOST_DEVICE LORI_FORCEINLINE float4_values projection_values_simple(const projection_params& p, const philox_block& b) noexcept {
  float4_values out{{0.0f, 0.0f, 0.0f, 0.0f}};
  switch (p.kind) {
    case distribution::kaiming_uniform:
      for (int t = 0; t < 4; ++t) {
        const int n = static_cast<int>((b.v[t] >> 8) << 1) + 1 - (1 << 24);
        out.v[t] = detail::rnd_mul(static_cast<float>(n), p.scale);
      }
      break;
    case distribution::rademacher:
      for (int t = 0; t < 4; ++t) out.v[t] = bits_float(float_bits(p.scale) | (b.v[t] & 0x80000000u));
      break;
    case distribution::sparse:
      for (int t = 0; t < 4; ++t) out.v[t] = detail::sparse_value(b.v[t], p.scale, p.threshold);
      break;
    case distribution::gaussian:
    case distribution::gaussian_v2:
      break;
  }
  return out;
}

/// The Philox block behind elements (i, 4q .. 4q+3) of the projection (seed, stream).
LORI_HOST_DEVICE LORI_FORCEINLINE philox_block projection_block(std::uint64_t seed, std::uint64_t stream, index_t i,
                                                                index_t q) noexcept {
  return counter_rng(seed, stream).block((static_cast<std::uint64_t>(i) << 32) | static_cast<std::uint64_t>(q));
}

/// The four elements (i, 4q .. 4q+3) of the projection (seed, stream, params), any distribution.
/// Host and device give identical bits. 0 <= i < 2^32 (gaussians: 2^30), 0 <= q < 2^32 (gaussians: 2^30).
LORI_HOST_DEVICE LORI_FORCEINLINE float4_values projection_values(const projection_params& p, std::uint64_t seed, std::uint64_t stream,
                                                                  index_t i, index_t q) noexcept {
  const philox_block b = projection_block(seed, stream, i, q);
  if (!is_gaussian(p.kind)) return projection_values_simple(p, b);
  const counter_rng g(seed, stream);
  float4_values out{{0.0f, 0.0f, 0.0f, 0.0f}};
  for (int t = 0; t < 4; ++t)
    out.v[t] = detail::gaussian_element_of(p.kind, b.v[t], p.scale, g, static_cast<std::uint32_t>(i),
                                           static_cast<std::uint64_t>(q) * 4u + static_cast<std::uint64_t>(t));
  return out;
}

/// Element (i, j) of the projection (seed, stream, params), alone (one Philox call; rarely three for
/// a gaussian). 0 <= i < 2^32, 0 <= j < 2^34 (gaussians: 2^30 and 2^32, see make_projection_params).
LORI_HOST_DEVICE LORI_FORCEINLINE float projection_element(const projection_params& p, std::uint64_t seed, std::uint64_t stream,
                                                           index_t i, index_t j) noexcept {
  const philox_block b = projection_block(seed, stream, i, j >> 2);
  const int t = static_cast<int>(j & 3);
  if (is_gaussian(p.kind))
    return detail::gaussian_element_of(p.kind, detail::block_word(b, t), p.scale, counter_rng(seed, stream), static_cast<std::uint32_t>(i),
                                       static_cast<std::uint64_t>(j));
  const float4_values v = projection_values_simple(p, b);
  return t == 0 ? v.v[0] : (t == 1 ? v.v[1] : (t == 2 ? v.v[2] : v.v[3]));
}

}  // namespace lori

#endif  // LORI_RANDOM_DISTRIBUTIONS_HPP
