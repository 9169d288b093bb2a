// lori/random/distributions.hpp - the distributions of lori's random projections and the exact map
// from Philox words to matrix elements.
//
// A projection A (r x k, r = rows, k = cols = in_features) is a pure function of
// (seed, stream, r, k, distribution). Element (i, j) uses the 32-bit word
//     w(i, j) = counter_rng{seed, stream}.block((i << 32) | (j >> 2))[j & 3]
// i.e. Philox4x32-10 with key = {seed lo, seed hi} and counter = {j/4, i, stream lo, stream hi}: one
// Philox call yields 4 consecutive elements of a row. Gaussians pair words (0,1) and (2,3) of a block.
// Every element is computed in binary32 by the exact formulas below (integer operations, fma, one
// multiply, sqrt); the result is the same bits on every CPU and GPU. Outputs of other types are
// derived from that float: double = exact widening, bf16/fp16 = round to nearest even
// (lori::float_to_bf16_bits / float_to_half_bits).
//
//   kaiming_uniform  U(-1/sqrt(k), 1/sqrt(k)) - PEFT's lora_A init (kaiming_uniform_, a = sqrt(5)), the
//                    reference LoRI's A. x = n * (b * 2^-24), n = 2*(w >> 8) + 1 - 2^24 (an odd integer
//                    in (-2^24, 2^24), uniform), b = float(1/sqrt(k)): symmetric, |x| <= b.
//   gaussian         N(0, sigma^2), sigma default 1/sqrt(r) (Johnson-Lindenstrauss scaling).
//                    Box-Muller on the pair (w0, w1) of a block (elements 0, 1; likewise w2, w3 for
//                    elements 2, 3): u = uniform_float_open_closed(w0) in (0, 1],
//                    R = sqrt(-2 log u) * sigma, theta = 2 pi (w1 >> 8) / 2^24;
//                    element 0 = R cos theta, element 1 = R sin theta (log/cos/sin from
//                    lori/detail/random_math.hpp, |x| <= 5.77 sigma).
//   rademacher       +-1/sqrt(k), the sign from the top bit of w (set: negative).
//   sparse           Achlioptas / Li et al. very sparse projection, s >= 1:
//                    sqrt(s/k) * {+1 w.p. 1/(2s), 0 w.p. 1 - 1/s, -1 w.p. 1/(2s)}; with
//                    T = round(2^31 / s): w < T -> +, T <= w < 2T -> -, else 0 (probabilities exact
//                    up to 2^-33).
#ifndef LORI_RANDOM_DISTRIBUTIONS_HPP
#define LORI_RANDOM_DISTRIBUTIONS_HPP

#include "lori/config.hpp"
#include "lori/detail/random_math.hpp"
#include "lori/error.hpp"
#include "lori/random/philox.hpp"

#include <cmath>
#include <cstdint>
#include <optional>

namespace lori {

/// The distribution of a projection's elements (see the header comment for the exact formulas).
enum class distribution : std::uint32_t { kaiming_uniform = 0, gaussian = 1, rademacher = 2, sparse = 3 };

/// What a projection is, independent of its shape. Build with the named constructors.
struct projection_spec {
  distribution kind = distribution::kaiming_uniform;
  std::optional<double> sigma;  ///< gaussian only; empty: 1/sqrt(rows)
  double s = 3.0;               ///< sparse only: density parameter, s >= 1 (1/s of the elements are nonzero)
  bool orthonormal_rows = false;  ///< CPU only: orthonormalise the rows after generation (Eigen QR)

  static projection_spec kaiming_uniform() { return projection_spec{}; }
  static projection_spec gaussian(std::optional<double> sigma = std::nullopt) {
    projection_spec p;
    p.kind = distribution::gaussian;
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
  float scale = 0.0f;           ///< kaiming: b*2^-24; gaussian: sigma; rademacher: 1/sqrt(k); sparse: sqrt(s/k)
  std::uint64_t threshold = 0;  ///< sparse: T = round(2^31 / s)
};

/// Validates `spec` for an r x k projection (rows = r, cols = k) and resolves its constants.
/// Throws lori::error for negative shapes, sigma <= 0 or not finite, s < 1 or not finite.
inline projection_params make_projection_params(const projection_spec& spec, index_t rows, index_t cols) {
  LORI_EXPECTS(rows >= 0 && cols >= 0, "make_projection_params: rows and cols must be >= 0");
  LORI_EXPECTS(rows <= (index_t{1} << 32) && cols <= (index_t{1} << 34),
               "make_projection_params: rows must be <= 2^32 and cols <= 2^34 (Philox counter layout)");
  projection_params p;
  p.kind = spec.kind;
  const double k = cols > 0 ? static_cast<double>(cols) : 1.0;
  const double r = rows > 0 ? static_cast<double>(rows) : 1.0;
  switch (spec.kind) {
    case distribution::kaiming_uniform:
      p.scale = static_cast<float>(1.0 / std::sqrt(k)) * 5.9604644775390625e-8f;  // exact * 2^-24
      break;
    case distribution::gaussian: {
      const double sigma = spec.sigma ? *spec.sigma : 1.0 / std::sqrt(r);
      LORI_EXPECTS(std::isfinite(sigma) && sigma > 0.0, "make_projection_params: gaussian sigma must be finite and > 0");
      p.scale = static_cast<float>(sigma);
      LORI_EXPECTS(p.scale > 0.0f && std::isfinite(p.scale), "make_projection_params: gaussian sigma out of float range");
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
/// Box-Muller on one word pair: (R cos theta, R sin theta) * sigma.
LORI_HOST_DEVICE LORI_FORCEINLINE void box_muller(std::uint32_t w0, std::uint32_t w1, float sigma, float& z0, float& z1) noexcept {
  const float u = uniform_float_open_closed(w0);
  const float minus2log = rnd_mul(log_unit(u), -2.0f);  // exact scaling, >= 0
  const float radius = rnd_mul(sqrt_nonneg(minus2log), sigma);
  const cos_sin cs = cos_sin_2pi_24(w1 >> 8);
  z0 = rnd_mul(radius, cs.c);
  z1 = rnd_mul(radius, cs.s);
}

LORI_HOST_DEVICE LORI_FORCEINLINE float sparse_value(std::uint32_t w, float scale, std::uint64_t t) noexcept {
  const std::uint64_t x = w;
  return x < t ? scale : (x < 2 * t ? -scale : 0.0f);
}
}  // namespace detail

/// The four elements generated by one Philox block, for params p (formulas in the header comment).
/// Host and device give identical bits.
LORI_HOST_DEVICE LORI_FORCEINLINE float4_values projection_values(const projection_params& p, const philox_block& b) noexcept {
  float4_values out{{0.0f, 0.0f, 0.0f, 0.0f}};
  switch (p.kind) {
    case distribution::kaiming_uniform:
      for (int t = 0; t < 4; ++t) {
        const int n = static_cast<int>((b.v[t] >> 8) << 1) + 1 - (1 << 24);
        out.v[t] = detail::rnd_mul(static_cast<float>(n), p.scale);
      }
      break;
    case distribution::gaussian:
      detail::box_muller(b.v[0], b.v[1], p.scale, out.v[0], out.v[1]);
      detail::box_muller(b.v[2], b.v[3], p.scale, out.v[2], out.v[3]);
      break;
    case distribution::rademacher:
      for (int t = 0; t < 4; ++t) out.v[t] = bits_float(float_bits(p.scale) | (b.v[t] & 0x80000000u));
      break;
    case distribution::sparse:
      for (int t = 0; t < 4; ++t) out.v[t] = detail::sparse_value(b.v[t], p.scale, p.threshold);
      break;
  }
  return out;
}

/// The Philox block behind elements (i, 4q .. 4q+3) of the projection (seed, stream).
LORI_HOST_DEVICE LORI_FORCEINLINE philox_block projection_block(std::uint64_t seed, std::uint64_t stream, index_t i,
                                                                index_t q) noexcept {
  return counter_rng(seed, stream).block((static_cast<std::uint64_t>(i) << 32) | static_cast<std::uint64_t>(q));
}

/// Element (i, j) of the projection (seed, stream, params), alone (one Philox call). 0 <= i < 2^32,
/// 0 <= j < 2^34.
LORI_HOST_DEVICE LORI_FORCEINLINE float projection_element(const projection_params& p, std::uint64_t seed, std::uint64_t stream,
                                                           index_t i, index_t j) noexcept {
  return projection_values(p, projection_block(seed, stream, i, j >> 2))[static_cast<int>(j & 3)];
}

}  // namespace lori

#endif  // LORI_RANDOM_DISTRIBUTIONS_HPP
