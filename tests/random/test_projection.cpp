// Projection matrices: element formulas against double-precision references, order independence
// (tile / row / whole matrix), dtype consistency, the private math kernels' accuracy, stream hashing,
// orthonormalisation, and error paths.
#include <doctest/doctest.h>

#include "lori/core/float16.hpp"
#include "lori/random/distributions.hpp"
#include "lori/random/projection.hpp"
#include "lori/random/stream.hpp"
#include "test_util.hpp"

#include <Eigen/Dense>

#include <cmath>
#include <array>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace {
using lori::index_t;
using lori::projection_spec;

const projection_spec kAll[] = {projection_spec::kaiming_uniform(), projection_spec::gaussian(),       projection_spec::gaussian(0.37),
                                projection_spec::rademacher(),      projection_spec::sparse(3.0),      projection_spec::sparse(1.0),
                                projection_spec::sparse(17.5),      projection_spec::gaussian_v2(),    projection_spec::gaussian_v2(0.37)};

// The word behind element (i, j), computed from the documented key/counter layout with the raw
// Random123 function (not through counter_rng), so the layout itself is under test.
std::uint32_t word_of(std::uint64_t seed, std::uint64_t stream, index_t i, index_t j) {
  const auto q = static_cast<std::uint32_t>(j >> 2);
  const auto out = lori::philox4x32_10(
      {{q, static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)}},
      {{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}});
  return out[static_cast<std::size_t>(j & 3)];
}

// The words of slow block b of element (i, j), from the documented counter layout with the raw function.
std::array<std::uint32_t, 4> slow_words(std::uint64_t seed, std::uint64_t stream, index_t i, index_t j, std::uint32_t b) {
  return lori::philox4x32_10({{0x80000000u | (b << 30) | static_cast<std::uint32_t>(j >> 2),
                               (static_cast<std::uint32_t>(j & 3) << 30) | static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(stream),
                               static_cast<std::uint32_t>(stream >> 32)}},
                             {{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}});
}

// The documented word layout of a gaussian format (lori/random/distributions.hpp), read independently:
// layer L, the uniform's integer U (ubits bits) and the format's frozen tables.
struct zig_format_ref {
  const lori::detail::zig_layer* tab;
  double r;
  bool v2;
  std::uint32_t layer(std::uint32_t w) const { return v2 ? (w >> 20) & 0x7ffu : w & 0xffu; }
  std::uint32_t u(std::uint32_t w) const { return v2 ? w & 0xfffffu : (w >> 8) & 0x7fffffu; }
  double two_ubits() const { return v2 ? 1048576.0 : 8388608.0; }
  // fast iff U < K_L, the table holding k_L = 0x3f800000 + K_L (scaled to 2^23 for 256 layers)
  bool fast(std::uint32_t w) const { return u(w) < tab[layer(w)].k - 0x3f800000u; }
};
zig_format_ref ref_format(lori::distribution d) {
  if (d == lori::distribution::gaussian_v2) return {lori::detail::zig2048_layers_host, LORI_ZIGGURAT2048_R, true};
  return {lori::detail::zig256_layers_host, LORI_ZIGGURAT_R, false};
}

// Double-precision reference of the gaussian element (i, j) of format zf (the algorithm of
// lori/detail/random_ziggurat.hpp, written independently in double from the frozen tables): value and
// the tolerance it is known to. Accept/reject decisions are taken in double; only where the two sides
// of a test are within 1e-6 of each other (the float kernels' error is ~1e-7, so the float code may
// legitimately decide the other way; probability ~1e-6 per test) the float decision is followed.
struct ref_value {
  double x, tol;
};
ref_value gaussian_reference(std::uint64_t seed, std::uint64_t stream, index_t i, index_t j, float sigma, const zig_format_ref& zf) {
  const double two24 = 16777216.0;
  std::uint32_t w = word_of(seed, stream, i, j);
  // Accepted rectangle / wedge candidate: U * 2^-ubits * float(W * sigma) is exact in double (47 bits),
  // so the float result is that product rounded once - exactly.
  auto layer_value = [&](std::uint32_t ww) {
    const auto& z = zf.tab[zf.layer(ww)];
    const double ws = static_cast<float>(static_cast<double>(z.w) * static_cast<double>(sigma));
    const double v = static_cast<float>(static_cast<double>(zf.u(ww)) / zf.two_ubits() * ws);
    return ref_value{(ww >> 31) != 0u ? -v : v, 0.0};
  };
  if (zf.fast(w)) return layer_value(w);
  const auto b0 = slow_words(seed, stream, i, j, 0), b1 = slow_words(seed, stream, i, j, 1);
  const std::uint32_t s[8] = {b0[0], b0[1], b0[2], b0[3], b1[0], b1[1], b1[2], b1[3]};
  const double r = zf.r;
  int pos = 0;
  bool first = true;
  for (;;) {
    const std::uint32_t layer = zf.layer(w);
    const auto& z = zf.tab[layer];
    if (!first && zf.fast(w)) return layer_value(w);
    first = false;
    if (layer != 0u) {
      if (pos + 1 > 6) break;
      const std::uint32_t y = s[pos++];
      const double xu = static_cast<double>(zf.u(w)) / zf.two_ubits() * static_cast<double>(z.w);
      const double lhs = static_cast<double>(y >> 8) / two24 * static_cast<double>(z.d) + static_cast<double>(z.f);
      const double e = std::exp(-xu * xu / 2.0);
      bool accept = lhs < e;
      if (std::fabs(lhs - e) < 1e-6) {
        const auto xf = static_cast<float>(xu);  // (exact in double, rounded once)
        accept = lori::detail::rnd_fma(lori::uniform_float(y), z.d, z.f) <
                 lori::detail::exp_neg(lori::detail::rnd_mul(lori::detail::rnd_mul(xf, xf), -0.5f));
      }
      if (accept) return layer_value(w);
    } else {
      if (pos + 2 > 6) break;
      const std::uint32_t u1 = s[pos++], u2 = s[pos++];
      const double d = -std::log((static_cast<double>(u1 >> 8) + 1.0) / two24) / r;
      const double e = std::exp(-d * d / 2.0), uy = static_cast<double>(u2 >> 8) / two24;
      bool accept = uy < e;
      if (std::fabs(uy - e) < 1e-6) {
        const float lg = lori::detail::log_unit(lori::uniform_float_open_closed(u1));
        const float df = lori::detail::rnd_mul(lg, zf.v2 ? -LORI_ZIGGURAT2048_INV_R : -LORI_ZIGGURAT_INV_R);
        accept = lori::uniform_float(u2) < lori::detail::exp_neg(lori::detail::rnd_mul(lori::detail::rnd_mul(df, df), -0.5f));
      }
      if (accept) {
        // float: log within 4e-7 relative, 1/r and the fma one rounding each: |err| <= 1e-6 |x|.
        const double x = (r + d) * static_cast<double>(sigma);
        return ref_value{(w >> 31) != 0u ? -x : x, 1e-6 * std::fabs(x)};
      }
    }
    if (pos + 1 > 6) break;
    w = s[pos++];
  }
  // Fallback: Box-Muller on (s6, s7), first output. Float error: 3e-6 sigma (see the Box-Muller bound).
  const double u = (static_cast<double>(s[6] >> 8) + 1.0) / two24;
  const double theta = 2.0 * M_PI * static_cast<double>(s[7] >> 8) / two24;
  return ref_value{std::sqrt(-2.0 * std::log(u)) * std::cos(theta) * static_cast<double>(sigma), 3e-6 * static_cast<double>(sigma)};
}

double ulp_distance(float a, float b) {
  if (a == b) return 0.0;
  const double ulp = std::nextafter(std::fabs(static_cast<double>(b)), 1e300) - std::fabs(static_cast<double>(b));
  return std::fabs(static_cast<double>(a) - static_cast<double>(b)) / std::max(ulp, std::ldexp(1.0, -149));
}
}  // namespace

TEST_CASE("stream_from_name is FNV-1a 64 and pinned") {
  static_assert(lori::fnv1a_64("") == 0xcbf29ce484222325ull, "FNV-1a offset basis");
  CHECK(lori::fnv1a_64("a") == 0xaf63dc4c8601ec8cull);       // published FNV-1a test vector
  CHECK(lori::fnv1a_64("foobar") == 0x85944171f73967e8ull);  // published FNV-1a test vector
  CHECK(lori::stream_from_name("model.layers.3.self_attn.q_proj") == 0x1e721458d2ae4c18ull);
  CHECK(lori::stream_from_name("model.layers.3.self_attn.k_proj") != lori::stream_from_name("model.layers.3.self_attn.q_proj"));
}

TEST_CASE("elements follow the documented formulas (double-precision references)") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(11);
  for (int trial = 0; trial < 4; ++trial) {
    const index_t r = 1 + static_cast<index_t>(g() % 40), k = 1 + static_cast<index_t>(g() % 3000);
    const std::uint64_t seed = g(), stream = g();
    CAPTURE(r);
    CAPTURE(k);
    for (const auto& spec : kAll) {
      CAPTURE(static_cast<int>(spec.kind));
      const auto a = lori::projection_matrix<float>(r, k, seed, stream, spec);
      std::size_t bad = 0;
      for (index_t i = 0; i < r; ++i) {
        for (index_t j = 0; j < k; ++j) {
          const std::uint32_t w = word_of(seed, stream, i, j);
          const double x = a(i, j);
          switch (spec.kind) {
            case lori::distribution::kaiming_uniform: {
              // n * (b * 2^-24) with n = 2*(w >> 8) + 1 - 2^24: the product is exact in double, so
              // the float result must be exactly that product rounded once.
              const double n = 2.0 * static_cast<double>(w >> 8) + 1.0 - 16777216.0;
              const double b = static_cast<double>(static_cast<float>(1.0 / std::sqrt(static_cast<double>(k))));
              bad += x != static_cast<double>(static_cast<float>(n * b / 16777216.0));
              bad += std::fabs(x) > b;
              break;
            }
            case lori::distribution::rademacher:
              bad += x != ((w >> 31) != 0u ? -1.0 : 1.0) * static_cast<double>(static_cast<float>(1.0 / std::sqrt(static_cast<double>(k))));
              break;
            case lori::distribution::sparse: {
              const double t = std::round(2147483648.0 / spec.s);
              const double sc = static_cast<double>(static_cast<float>(std::sqrt(spec.s / static_cast<double>(k))));
              const double expect = w < t ? sc : (w < 2 * t ? -sc : 0.0);
              bad += x != expect;
              break;
            }
            case lori::distribution::gaussian:
            case lori::distribution::gaussian_v2: {
              // The ziggurat in double (gaussian_reference): fast-path and wedge values exactly, tail and
              // fallback values within their float error bounds.
              const double sigma = spec.sigma ? *spec.sigma : 1.0 / std::sqrt(static_cast<double>(r));
              const ref_value ref = gaussian_reference(seed, stream, i, j, static_cast<float>(sigma), ref_format(spec.kind));
              bad += !(std::fabs(x - ref.x) <= ref.tol);
              break;
            }
          }
        }
      }
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("tile, row and whole matrix give identical bits; double is the exact widening") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(12);
  const index_t shapes[][2] = {{0, 0}, {0, 5}, {3, 0}, {1, 1}, {5, 7}, {13, 129}, {32, 4097}};
  for (const auto& sh : shapes) {
    const index_t r = sh[0], k = sh[1];
    for (const auto& spec : kAll) {
      CAPTURE(r);
      CAPTURE(k);
      CAPTURE(static_cast<int>(spec.kind));
      const std::uint64_t seed = g(), stream = g();
      const auto whole = lori::projection_matrix<float>(r, k, seed, stream, spec);
      const auto whole_d = lori::projection_matrix<double>(r, k, seed, stream, spec);
      std::size_t bad = 0;
      for (index_t i = 0; i < whole.size(); ++i) bad += static_cast<double>(whole.data()[i]) != whole_d.data()[i];
      // Rows one at a time, bottom to top.
      std::vector<float> row(static_cast<std::size_t>(k));
      for (index_t i = r - 1; i >= 0; --i) {
        lori::generate_projection_tile(lori::matrix_view<float>(row.data(), 1, k), r, k, i, 0, seed, stream, spec);
        for (index_t j = 0; j < k; ++j) bad += lori::float_bits(row[static_cast<std::size_t>(j)]) != lori::float_bits(whole(i, j));
      }
      // Random tiles with unaligned offsets, written into a buffer with a larger leading dimension.
      for (int t = 0; t < 5 && r > 0 && k > 0; ++t) {
        const index_t i0 = static_cast<index_t>(g() % static_cast<std::uint64_t>(r)), j0 = static_cast<index_t>(g() % static_cast<std::uint64_t>(k));
        const index_t tr = 1 + static_cast<index_t>(g() % static_cast<std::uint64_t>(r - i0));
        const index_t tc = 1 + static_cast<index_t>(g() % static_cast<std::uint64_t>(k - j0));
        std::vector<double> tile(static_cast<std::size_t>(tr * (tc + 3)), -7.0);
        lori::generate_projection_tile(lori::matrix_view<double>(tile.data(), tr, tc, tc + 3), r, k, i0, j0, seed, stream, spec);
        for (index_t i = 0; i < tr; ++i) {
          for (index_t j = 0; j < tc; ++j) bad += tile[static_cast<std::size_t>(i * (tc + 3) + j)] != static_cast<double>(whole(i0 + i, j0 + j));
          for (index_t j = tc; j < tc + 3; ++j) bad += tile[static_cast<std::size_t>(i * (tc + 3) + j)] != -7.0;  // padding untouched
        }
      }
      // Single elements.
      const auto p = lori::make_projection_params(spec, r, k);
      for (int t = 0; t < 20 && r > 0 && k > 0; ++t) {
        const index_t i = static_cast<index_t>(g() % static_cast<std::uint64_t>(r)), j = static_cast<index_t>(g() % static_cast<std::uint64_t>(k));
        bad += lori::float_bits(lori::projection_element(p, seed, stream, i, j)) != lori::float_bits(whole(i, j));
      }
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("the AVX2 path and the generic path agree bit for bit") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(13);
  const index_t r = 9, k = 1003;
  for (const auto& spec : kAll) {
    const std::uint64_t seed = g(), stream = g();
    const auto p = lori::make_projection_params(spec, r, k);
    std::vector<float> a(static_cast<std::size_t>(r * k)), b(a.size());
    lori::detail::fill_projection_tile(lori::matrix_view<float>(a.data(), r, k), 0, 0, seed, stream, p, true);
    lori::detail::fill_projection_tile(lori::matrix_view<float>(b.data(), r, k), 0, 0, seed, stream, p, false);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < a.size(); ++i) bad += lori::float_bits(a[i]) != lori::float_bits(b[i]);
    CHECK(bad == 0);
  }
}

TEST_CASE("different seeds and streams give unrelated matrices") {
  const auto a = lori::projection_matrix<float>(8, 256, 1, 2, projection_spec::gaussian());
  const auto b = lori::projection_matrix<float>(8, 256, 1, 3, projection_spec::gaussian());
  const auto c = lori::projection_matrix<float>(8, 256, 2, 2, projection_spec::gaussian());
  // Correlation of independent N(0,1) samples over n = 2048 elements: |rho| < 5.3/sqrt(n) ~ 0.12.
  auto corr = [](const auto& x, const auto& y) {
    return x.template cast<double>().cwiseProduct(y.template cast<double>()).sum() / (x.template cast<double>().norm() * y.template cast<double>().norm());
  };
  CHECK(std::fabs(corr(a, b)) < 0.12);
  CHECK(std::fabs(corr(a, c)) < 0.12);
  CHECK(std::fabs(corr(b, c)) < 0.12);
}

TEST_CASE("private math kernels: log, sin/cos, sqrt accuracy") {
  // log_unit on every 2^-24 multiple would be 16 M evaluations: take all 2^16 smallest (where the
  // exponent varies most), and a strided sweep of the rest, against std::log in double.
  double worst_log = 0.0;
  auto check_log = [&](std::uint32_t n) {  // x = n * 2^-24, n in [1, 2^24]
    const float x = static_cast<float>(n) * 5.9604644775390625e-8f;
    const double ref = std::log(static_cast<double>(x));
    const double got = lori::detail::log_unit(x);
    // Relative error with an absolute floor of 2^-24 * 2^-24 (near x = 1, log x ~ x - 1 ~ 2^-24).
    const double err = std::fabs(got - ref) / std::max(std::fabs(ref), 3.5e-15);
    worst_log = std::max(worst_log, err);
  };
  for (std::uint32_t n = 1; n <= 65536; ++n) check_log(n);
  for (std::uint32_t n = 65536; n <= (1u << 24); n += 97) check_log(n);
  check_log(1u << 24);
  check_log((1u << 24) - 1);
  CHECK(lori::detail::log_unit(1.0f) == 0.0f);
  // A few float ulps (2^-24 relative each): polynomial ~1e-8, plus e*ln2 + log1p rounding.
  CHECK(worst_log < 4e-7);

  // exp_neg on [-80, 0] (the ziggurat uses [-12, 0]) against std::exp in double.
  double worst_exp = 0.0;
  for (int t = 0; t <= 800000; ++t) {
    const float v = -static_cast<float>(t) * 1e-4f;
    const double ref = std::exp(static_cast<double>(v));
    worst_exp = std::max(worst_exp, std::fabs(static_cast<double>(lori::detail::exp_neg(v)) - ref) / ref);
  }
  CHECK(lori::detail::exp_neg(0.0f) == 1.0f);
  // Degree-6 Taylor on |r| <= ln2/2: truncation 1.2e-7, plus a few roundings (r, Horner): < 4e-7.
  CHECK(worst_exp < 4e-7);

  double worst_trig = 0.0;
  for (std::uint32_t n = 0; n < (1u << 24); n += 13) {
    const auto cs = lori::detail::cos_sin_2pi_24(n);
    const double th = 2.0 * M_PI * static_cast<double>(n) / 16777216.0;
    worst_trig = std::max({worst_trig, std::fabs(cs.c - std::cos(th)), std::fabs(cs.s - std::sin(th))});
  }
  CHECK(worst_trig < 3e-7);  // |a| <= 1/2 reduced argument, degree-4/5 polynomials, ~2 ulp of 1

  double worst_sqrt = 0.0;
  auto g = lori_test::rng(14);
  for (int t = 0; t < 200000; ++t) {
    const float x = std::ldexp(static_cast<float>(g() >> 40) / 16777216.0f + 0.5f, static_cast<int>(g() % 20) - 12);
    worst_sqrt = std::max(worst_sqrt, ulp_distance(lori::detail::sqrt_nonneg(x), std::sqrt(x)));
  }
  CHECK(worst_sqrt <= 1.0);
  CHECK(lori::detail::sqrt_nonneg(0.0f) == 0.0f);
  CHECK(lori::detail::sqrt_nonneg(-0.0f) == 0.0f);
  CHECK(lori::detail::sqrt_nonneg(33.3f) == doctest::Approx(std::sqrt(33.3f)).epsilon(1e-7));
}

TEST_CASE("orthonormal rows: Q^T of the QR of A^T, same row space") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(15);
  const index_t shapes[][2] = {{1, 1}, {3, 7}, {16, 16}, {32, 513}};
  for (const auto& sh : shapes) {
    const index_t r = sh[0], k = sh[1];
    const std::uint64_t seed = g();
    for (const auto& base : {projection_spec::gaussian(), projection_spec::gaussian_v2(), projection_spec::kaiming_uniform()}) {
      const auto a = lori::projection_matrix<double>(r, k, seed, 5, base);
      const auto q = lori::projection_matrix<double>(r, k, seed, 5, base.orthonormalized());
      const auto qf = lori::projection_matrix<float>(r, k, seed, 5, base.orthonormalized());
      // Orthonormal in double: Householder QR gives ||Q^T Q - I|| ~ k * eps.
      CHECK((q * q.transpose() - Eigen::MatrixXd::Identity(r, r)).norm() < 1e-12 * static_cast<double>(k));
      // Same row space: A = (A Q^T) Q, with relative error ~ cond(A) * eps (random A: well conditioned).
      const Eigen::MatrixXd recon = (a * q.transpose()) * q;
      CHECK(lori_test::rel_err(recon, a) < 1e-10);
      // Gram-Schmidt sign convention: <a_0, q_0> > 0.
      CHECK(a.row(0).dot(q.row(0)) > 0.0);
      // float output = the double result rounded: |error| <= 2^-24 per element.
      CHECK((qf.cast<double>() - q).cwiseAbs().maxCoeff() <= std::ldexp(1.0, -24));
    }
  }
}

TEST_CASE("invalid arguments throw lori::error") {
  std::vector<float> buf(64);
  const lori::matrix_view<float> v(buf.data(), 4, 16);
  CHECK_THROWS_AS(lori::generate_projection(v, 1, 2, projection_spec::sparse(0.5)), lori::error);
  CHECK_THROWS_AS(lori::generate_projection(v, 1, 2, projection_spec::sparse(std::numeric_limits<double>::quiet_NaN())), lori::error);
  CHECK_THROWS_AS(lori::generate_projection(v, 1, 2, projection_spec::gaussian(0.0)), lori::error);
  CHECK_THROWS_AS(lori::generate_projection(v, 1, 2, projection_spec::gaussian(-1.0)), lori::error);
  CHECK_THROWS_AS(lori::generate_projection(v, 1, 2, projection_spec::gaussian(std::numeric_limits<double>::infinity())), lori::error);
  CHECK_THROWS_AS(lori::generate_projection(v, 1, 2, projection_spec::gaussian(1e-300)), lori::error);  // underflows float
  CHECK_THROWS_AS(lori::make_projection_params(projection_spec::gaussian(), -1, 4), lori::error);
  CHECK_THROWS_AS(lori::make_projection_params(projection_spec::gaussian(), 4, -1), lori::error);
  CHECK_THROWS_AS(lori::make_projection_params(projection_spec::gaussian(), index_t{1} << 33, 4), lori::error);
  CHECK_THROWS_AS(lori::make_projection_params(projection_spec::gaussian(), 4, index_t{1} << 35), lori::error);
  CHECK_THROWS_AS(lori::projection_matrix<float>(-1, 3, 1, 2, projection_spec::gaussian()), lori::error);
  // Gaussians: rows <= 2^30 and cols <= 2^32 (the slow path's counter layout); other laws go further.
  CHECK_THROWS_AS(lori::make_projection_params(projection_spec::gaussian(), (index_t{1} << 30) + 1, 4), lori::error);
  CHECK_THROWS_AS(lori::make_projection_params(projection_spec::gaussian(), 4, (index_t{1} << 32) + 1), lori::error);
  CHECK_NOTHROW(lori::make_projection_params(projection_spec::gaussian(), index_t{1} << 30, index_t{1} << 32));
  CHECK_THROWS_AS(lori::make_projection_params(projection_spec::gaussian_v2(), (index_t{1} << 30) + 1, 4), lori::error);
  CHECK_THROWS_AS(lori::make_projection_params(projection_spec::gaussian_v2(), 4, (index_t{1} << 32) + 1), lori::error);
  CHECK_NOTHROW(lori::make_projection_params(projection_spec::gaussian_v2(), index_t{1} << 30, index_t{1} << 32));
  // gaussian_v2: sigma <= 1e36 (8 W_L sigma stays finite); gaussian takes any float sigma.
  CHECK_THROWS_AS(lori::make_projection_params(projection_spec::gaussian_v2(1.01e36), 4, 4), lori::error);
  CHECK_THROWS_AS(lori::generate_projection(v, 1, 2, projection_spec::gaussian_v2(0.0)), lori::error);
  CHECK_NOTHROW(lori::make_projection_params(projection_spec::gaussian_v2(1e36), 4, 4));
  CHECK_NOTHROW(lori::make_projection_params(projection_spec::gaussian(3e38), 4, 4));
  // An unknown distribution value.
  projection_spec bogus;
  bogus.kind = static_cast<lori::distribution>(5);
  CHECK_THROWS_AS(lori::make_projection_params(bogus, 4, 4), lori::error);
  CHECK_NOTHROW(lori::make_projection_params(projection_spec::kaiming_uniform(), (index_t{1} << 30) + 1, (index_t{1} << 32) + 1));
  // Tiles outside the matrix.
  CHECK_THROWS_AS(lori::generate_projection_tile(v, 4, 16, 1, 0, 1, 2, projection_spec::gaussian()), lori::error);
  CHECK_THROWS_AS(lori::generate_projection_tile(v, 4, 16, 0, 1, 1, 2, projection_spec::gaussian()), lori::error);
  CHECK_THROWS_AS(lori::generate_projection_tile(v, 4, 16, -1, 0, 1, 2, projection_spec::gaussian()), lori::error);
  CHECK_THROWS_AS(lori::generate_projection_tile(v, 3, 16, 0, 0, 1, 2, projection_spec::gaussian()), lori::error);
  CHECK_THROWS_AS(lori::generate_projection_tile(v, 4, 16, 0, 0, 1, 2, projection_spec::gaussian().orthonormalized()), lori::error);
  CHECK_NOTHROW(lori::generate_projection_tile(v, 4, 16, 0, 0, 1, 2, projection_spec::gaussian()));
  // Orthonormal rows need r <= k; null data is rejected by the view.
  std::vector<float> tall(16 * 4);
  CHECK_THROWS_AS(lori::generate_projection(lori::matrix_view<float>(tall.data(), 16, 4), 1, 2, projection_spec::gaussian().orthonormalized()),
                  lori::error);
  CHECK_THROWS_AS(lori::matrix_view<float>(nullptr, 2, 2), lori::error);
}
