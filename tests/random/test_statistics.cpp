// Statistical tests of the projections. Every bound is chosen so that a CORRECT generator fails it
// with probability < 1e-6 (per check), while the seeds are fresh each run (LORI_TEST_SEED replays):
//  * mean: |mean - mu| <= 5.3 * sd / sqrt(n)    (two-sided normal tail at 5.3 sd: 1.2e-7; n >= 65536
//          makes the CLT approximation accurate for these bounded / light-tailed laws);
//  * variance: |s^2 - sd^2| <= 5.3 * sd^2 * sqrt((kurtosis - 1) / n)  (the CLT standard error of the
//          sample variance; kurtosis: uniform 9/5, normal 3, rademacher 1 (s^2 is then exact), sparse s);
//  * Kolmogorov-Smirnov: D_n = sup |F_n - F| <= t with P(D_n > t) <= 2 exp(-2 n t^2)
//          (Dvoretzky-Kiefer-Wolfowitz, Massart's constant; valid for any F, discrete included), so
//          t = sqrt(ln(2 / 1e-6) / (2 n)). The generator's own discretisation (2^-24 steps of the
//          uniform; gaussian_v2: 2^-20 of a layer of mass 1/2048) moves the CDF by < 1e-6, negligible
//          against t ~ 5e-3.
#include <doctest/doctest.h>

#include "lori/random/projection.hpp"
#include "test_util.hpp"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

namespace {
using lori::index_t;
using lori::projection_spec;

constexpr double kZ = 5.3;

double ks_bound(std::size_t n) { return std::sqrt(std::log(2.0 / 1e-6) / (2.0 * static_cast<double>(n))); }

// sup_x |F_n(x) - F(x)| for sorted samples; cdf_left(x) = P(X < x), cdf(x) = P(X <= x) (they differ at
// atoms of a discrete law).
double ks_statistic(std::vector<double> x, const std::function<double(double)>& cdf, const std::function<double(double)>& cdf_left) {
  std::sort(x.begin(), x.end());
  const double n = static_cast<double>(x.size());
  double d = 0.0;
  for (std::size_t i = 0; i < x.size();) {
    std::size_t j = i;
    while (j < x.size() && x[j] == x[i]) ++j;  // ties: the empirical CDF jumps from i/n to j/n at x[i]
    d = std::max({d, std::fabs(static_cast<double>(i) / n - cdf_left(x[i])), std::fabs(static_cast<double>(j) / n - cdf(x[i]))});
    i = j;
  }
  return d;
}

struct moments {
  double mean, var;
};
moments sample_moments(const std::vector<double>& x) {
  double s = 0.0;
  for (double v : x) s += v;
  const double mean = s / static_cast<double>(x.size());
  double ss = 0.0;
  for (double v : x) ss += (v - mean) * (v - mean);
  return {mean, ss / static_cast<double>(x.size() - 1)};
}

std::vector<double> samples(index_t r, index_t k, const projection_spec& spec, std::uint64_t seed, std::uint64_t stream) {
  const auto a = lori::projection_matrix<float>(r, k, seed, stream, spec);
  return std::vector<double>(a.data(), a.data() + a.size());
}

void check_moments_and_ks(const std::vector<double>& x, double mu, double sd, double kurtosis, const std::function<double(double)>& cdf,
                          const std::function<double(double)>& cdf_left) {
  const auto n = static_cast<double>(x.size());
  const moments m = sample_moments(x);
  CHECK(std::fabs(m.mean - mu) <= kZ * sd / std::sqrt(n));
  // Rademacher: s^2 = n/(n-1) (1 - mean^2) sd^2 is nearly exact; allow the mean^2 term (<= (5.3/sqrt n)^2).
  CHECK(std::fabs(m.var - sd * sd) <= kZ * sd * sd * std::sqrt((kurtosis - 1.0) / n) + sd * sd * (kZ * kZ + 1.0) / n);
  const double d = ks_statistic(x, cdf, cdf_left);
  CAPTURE(d);
  CHECK(d <= ks_bound(x.size()));
}
}  // namespace

TEST_CASE("kaiming_uniform: U(-1/sqrt(k), 1/sqrt(k)) - mean, variance, KS, bounds") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(21);
  const index_t r = 32, k = 4096;
  const auto x = samples(r, k, projection_spec::kaiming_uniform(), g(), g());
  const double b = 1.0 / std::sqrt(static_cast<double>(k));
  const double bf = static_cast<double>(static_cast<float>(b));
  std::size_t out = 0;
  for (double v : x) out += std::fabs(v) > bf;
  CHECK(out == 0);
  auto cdf = [b](double v) { return std::clamp((v + b) / (2.0 * b), 0.0, 1.0); };
  check_moments_and_ks(x, 0.0, b / std::sqrt(3.0), 1.8, cdf, cdf);
}

TEST_CASE("gaussian, gaussian_v2: N(0, sigma^2), default sigma = 1/sqrt(r) and explicit sigma") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(22);
  const index_t r = 32, k = 4096;
  for (const bool v2 : {false, true})
  for (const double sigma : {1.0 / std::sqrt(static_cast<double>(r)), 2.5}) {
    CAPTURE(v2);
    CAPTURE(sigma);
    const auto spec = sigma == 2.5 ? (v2 ? projection_spec::gaussian_v2(2.5) : projection_spec::gaussian(2.5))
                                   : (v2 ? projection_spec::gaussian_v2() : projection_spec::gaussian());
    const auto x = samples(r, k, spec, g(), g());
    // Largest possible value: the tail's r + (-ln 2^-24) / r (8.21; gaussian_v2 8.16; the Box-Muller
    // fallback: 5.77).
    const double zr = v2 ? LORI_ZIGGURAT2048_R : LORI_ZIGGURAT_R;
    const double xmax = (zr + 16.636 / zr) * sigma * (1.0 + 1e-5);
    std::size_t out = 0;
    for (double v : x) out += std::fabs(v) > xmax;
    CHECK(out == 0);
    auto cdf = [sigma](double v) { return 0.5 * std::erfc(-v / (sigma * std::sqrt(2.0))); };
    check_moments_and_ks(x, 0.0, sigma, 3.0, cdf, cdf);
    // Odd and even columns separately: each must be N(0, sigma^2) too.
    for (int parity = 0; parity < 2; ++parity) {
      std::vector<double> half;
      for (std::size_t i = static_cast<std::size_t>(parity); i < x.size(); i += 2) half.push_back(x[i]);
      CHECK(ks_statistic(half, cdf, cdf) <= ks_bound(half.size()));
    }
  }
}

// The ziggurat's rare paths (wedges near the tail, the tail envelope beyond r, the fallback) are where
// bugs hide; KS over all samples barely sees them. n = rows * 4096 samples of N(0, 1) (spec, sigma 1),
// generated 64 rows at a time:
//  * count(|x| > t) ~ Binomial(n, p_t), p_t = erfc(t / sqrt 2); bound 5.3 sd (+1 for the normal
//    approximation, accurate here since n p_t >= 250 for every t used);
//  * the conditional law of |x| given |x| > 3 and given |x| > zr, the format's r (every one from the
//    tail envelope): KS against F(v) = 1 - erfc(v / sqrt 2) / erfc(t / sqrt 2), DKW bound.
static void check_gaussian_tails(const projection_spec& spec, index_t rows, double zr, std::uint64_t seed, std::uint64_t stream) {
  const index_t k = 4096, chunk = 64;
  const double ts[] = {1.0, 2.0, 3.0, static_cast<double>(LORI_ZIGGURAT_R), 4.0, zr};
  std::size_t counts[6] = {};
  std::vector<double> beyond3;  // |x| > 3
  for (index_t i0 = 0; i0 < rows; i0 += chunk) {
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> a(chunk, k);
    lori::generate_projection_tile(lori::matrix_view<float>(a.data(), chunk, k), rows, k, i0, 0, seed, stream, spec);
    for (index_t e = 0; e < a.size(); ++e) {
      const double v = std::fabs(static_cast<double>(a.data()[e]));
      for (int c = 0; c < 6; ++c) counts[c] += v > ts[c];
      if (v > 3.0) beyond3.push_back(v);
    }
  }
  const double n = static_cast<double>(rows * k);
  for (int c = 0; c < 6; ++c) {
    const double t = ts[c], p = std::erfc(t / std::sqrt(2.0));
    CAPTURE(t);
    CAPTURE(counts[c]);
    CHECK(n * p >= 250.0);  // (the normal approximation's condition: a test-design check)
    CHECK(std::fabs(static_cast<double>(counts[c]) - n * p) <= kZ * std::sqrt(n * p * (1.0 - p)) + 1.0);
  }
  for (const double t : {3.0, zr}) {
    CAPTURE(t);
    std::vector<double> tail;
    for (double v : beyond3)
      if (v > t) tail.push_back(v);
    const double pt = std::erfc(t / std::sqrt(2.0));
    auto cdf = [pt](double v) { return 1.0 - std::erfc(v / std::sqrt(2.0)) / pt; };
    REQUIRE(tail.size() > 500);
    const double d = ks_statistic(tail, cdf, cdf);
    CAPTURE(d);
    CHECK(d <= ks_bound(tail.size()));
  }
}

TEST_CASE("gaussian tails: P(|x| > t) within binomial bounds, and the law beyond 3 and beyond r") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(26);
  // 2^22 samples: ~1 080 beyond r = 3.655.
  check_gaussian_tails(projection_spec::gaussian(1.0), 1024, LORI_ZIGGURAT_R, g(), g());
}

TEST_CASE("gaussian_v2 tails: P(|x| > t) within binomial bounds, and the law beyond 3 and beyond r") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(27);
  // 2^25 samples: ~830 beyond r = 4.217.
  check_gaussian_tails(projection_spec::gaussian_v2(1.0), 8192, LORI_ZIGGURAT2048_R, g(), g());
}

TEST_CASE("rademacher: +-1/sqrt(k) with probability 1/2 each") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(23);
  const index_t r = 32, k = 4096;
  const auto x = samples(r, k, projection_spec::rademacher(), g(), g());
  const double sc = static_cast<double>(static_cast<float>(1.0 / std::sqrt(static_cast<double>(k))));
  std::size_t other = 0;
  for (double v : x) other += std::fabs(v) != sc;
  CHECK(other == 0);
  auto cdf = [sc](double v) { return v < -sc ? 0.0 : (v < sc ? 0.5 : 1.0); };
  auto cdf_left = [sc](double v) { return v <= -sc ? 0.0 : (v <= sc ? 0.5 : 1.0); };
  check_moments_and_ks(x, 0.0, sc, 1.0, cdf, cdf_left);
}

TEST_CASE("sparse (Achlioptas / Li): sqrt(s/k) * {+1, 0, -1} with probabilities 1/(2s), 1 - 1/s, 1/(2s)") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(24);
  const index_t r = 32, k = 4096;
  for (const double s : {1.0, 3.0, std::sqrt(4096.0)}) {
    CAPTURE(s);
    const auto x = samples(r, k, projection_spec::sparse(s), g(), g());
    const double sc = static_cast<double>(static_cast<float>(std::sqrt(s / static_cast<double>(k))));
    std::size_t other = 0;
    for (double v : x) other += !(v == 0.0 || std::fabs(v) == sc);
    CHECK(other == 0);
    const double p = 1.0 / (2.0 * s);
    auto cdf = [sc, p](double v) { return v < -sc ? 0.0 : (v < 0.0 ? p : (v < sc ? 1.0 - p : 1.0)); };
    auto cdf_left = [sc, p](double v) { return v <= -sc ? 0.0 : (v <= 0.0 ? p : (v <= sc ? 1.0 - p : 1.0)); };
    // Var = s/k * 1/s = 1/k; kurtosis E x^4 / Var^2 = (s/k)^2 (1/s) / (1/k)^2 = s.
    check_moments_and_ks(x, 0.0, std::sqrt(1.0 / static_cast<double>(k)), s, cdf, cdf_left);
  }
}

TEST_CASE("principal angles between independent projections: mean cos^2 ~ r/k (k = 4096, r = 32)") {
  // For two independent uniformly random r-dimensional subspaces of R^k, with orthonormal bases Q1, Q2,
  // sum_i cos^2(theta_i) = ||Q1^T Q2||_F^2 has mean r^2/k and standard deviation ~ sqrt(2) r/k (r^2
  // nearly independent squared inner products, each of mean 1/k and variance ~2/k^2). Rotation-invariant
  // laws (gaussian) give uniformly random row spaces; the others are close for k >> r. So
  // mean cos^2 = ||Q1^T Q2||_F^2 / r = r/k +- 5.3 sqrt(2)/k.
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(25);
  const index_t r = 32, k = 4096;
  for (const auto& spec : {projection_spec::gaussian(), projection_spec::gaussian_v2(), projection_spec::kaiming_uniform(), projection_spec::sparse(3.0)}) {
    CAPTURE(static_cast<int>(spec.kind));
    const auto q1 = lori::projection_matrix<double>(r, k, g(), 1, spec.orthonormalized());
    const auto q2 = lori::projection_matrix<double>(r, k, g(), 1, spec.orthonormalized());
    const Eigen::MatrixXd m = q1 * q2.transpose();
    const double mean_cos2 = m.squaredNorm() / static_cast<double>(r);
    // Cross-check with the SVD definition: cos(theta_i) are the singular values of Q1 Q2^T.
    const Eigen::VectorXd sv = Eigen::JacobiSVD<Eigen::MatrixXd>(m).singularValues();
    CHECK(sv.squaredNorm() / static_cast<double>(r) == doctest::Approx(mean_cos2).epsilon(1e-10));
    CAPTURE(mean_cos2);
    CHECK(std::fabs(mean_cos2 - static_cast<double>(r) / static_cast<double>(k)) <= kZ * std::sqrt(2.0) / static_cast<double>(k));
    // And the same stream with the same seed is the same subspace (all cosines 1).
    const auto q1b = lori::projection_matrix<double>(r, k, 0, 1, spec.orthonormalized());
    CHECK((q1b * q1b.transpose()).squaredNorm() / static_cast<double>(r) == doctest::Approx(1.0).epsilon(1e-10));
  }
}
