// Interference metrics in low-rank form, each against its dense definition in double precision.
#include <doctest/doctest.h>

#include "lori/metrics/interference.hpp"
#include "lori/metrics/interference_report.hpp"
#include "test_util.hpp"

#include <Eigen/QR>
#include <Eigen/SVD>

#include <cmath>
#include <random>
#include <vector>

using MatD = lori_test::MatrixXdR;

namespace {

template <class T>
lori::adapter_module<T> random_module(Eigen::Index d, Eigen::Index k, Eigen::Index r, double s, std::mt19937_64& g) {
  lori::adapter_module<T> m;
  m.A = lori_test::randn<T>(r, k, g);
  m.B = lori_test::randn<T>(d, r, g);
  m.scaling = s;
  return m;
}

template <class T>
MatD delta(const lori::adapter_module<T>& m) {
  return m.scaling * (m.B.template cast<double>() * m.A.template cast<double>());
}

/// Dense principal cosines: orthonormal bases by QR (double), singular values of Qi^T Qj.
Eigen::VectorXd dense_cosines(const MatD& Ai, const MatD& Aj) {
  auto basis = [](const MatD& A) {
    Eigen::ColPivHouseholderQR<Eigen::MatrixXd> qr(Eigen::MatrixXd(A.transpose()));
    const auto rank = qr.rank();
    Eigen::MatrixXd Q = qr.householderQ() * Eigen::MatrixXd::Identity(A.cols(), rank);
    return Q;
  };
  const Eigen::MatrixXd Qi = basis(Ai), Qj = basis(Aj);
  return Eigen::JacobiSVD<Eigen::MatrixXd>(Qi.transpose() * Qj).singularValues();
}

double frob_inner(const MatD& X, const MatD& Y) { return X.cwiseProduct(Y).sum(); }

template <class T>
std::vector<lori::adapter_module_view<T>> views_of(const std::vector<lori::adapter_module<T>>& ms) {
  std::vector<lori::adapter_module_view<T>> v;
  for (const auto& m : ms) v.push_back(m.view());
  return v;
}

}  // namespace

TEST_CASE_TEMPLATE("principal cosines, delta cosine and cross-term energy equal their dense definitions", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(41);
  // Float Grams: error ~ sqrt(k) eps_float |A|^2, amplified by cond(A)^2 (~4 for these Gaussian A's).
  const double tol = std::is_same_v<T, float> ? 5e-5 : 1e-10;
  for (auto cfg : {std::tuple<int, int, std::vector<int>>{20, 30, {3, 3, 3}}, {50, 9, {2, 4}}, {7, 64, {5, 5, 5, 5}}, {1, 3, {1, 1}}}) {
    const int d = std::get<0>(cfg), k = std::get<1>(cfg);
    std::vector<lori::adapter_module<T>> ms;
    std::vector<double> w;
    double s = 0.5;
    for (int r : std::get<2>(cfg)) {
      ms.push_back(random_module<T>(d, k, r, s, g));
      w.push_back(s - 1.1);  // negative and positive weights
      s += 0.75;
    }
    const auto res = lori::compute_module_interference<T>(views_of(ms), w);
    INFO("d=" << d << " k=" << k << " n=" << ms.size());
    REQUIRE(res.pairs.size() == ms.size() * (ms.size() - 1) / 2);
    std::size_t t = 0;
    for (std::size_t i = 0; i < ms.size(); ++i) {
      CHECK(res.delta_norms[i] == doctest::Approx(delta(ms[i]).norm()).epsilon(tol));
      for (std::size_t j = i + 1; j < ms.size(); ++j, ++t) {
        const auto& p = res.pairs[t];
        CHECK(p.i == i);
        CHECK(p.j == j);
        const Eigen::VectorXd cs = dense_cosines(ms[i].A.template cast<double>(), ms[j].A.template cast<double>());
        const double mean2 = cs.squaredNorm() / static_cast<double>(std::min(ms[i].rank(), ms[j].rank()));
        CHECK(p.mean_cos2 == doctest::Approx(mean2).epsilon(tol).scale(1.0));
        CHECK(p.max_cos == doctest::Approx(cs.maxCoeff()).epsilon(tol).scale(1.0));
        const MatD Di = delta(ms[i]), Dj = delta(ms[j]);
        CHECK(p.delta_cosine == doctest::Approx(frob_inner(Di, Dj) / (Di.norm() * Dj.norm())).epsilon(tol).scale(1.0));
        const auto pc = lori::principal_cosines<T>(ms[i].view().A, ms[j].view().A);
        REQUIRE(pc.size() == static_cast<std::size_t>(cs.size()));
        for (std::size_t c = 0; c < pc.size(); ++c) CHECK(pc[c] == doctest::Approx(cs(static_cast<Eigen::Index>(c))).epsilon(tol).scale(1.0));
        CHECK(lori::delta_cosine<T>(ms[i].view(), ms[j].view()) == doctest::Approx(p.delta_cosine).epsilon(1e-12));
      }
    }
    // Cross-term energy of the linear merge, dense: X = sum_{i != j} b_i a_j B_i A_j, D = sum_i c_i B_i A_i.
    bool equal = true;
    for (const auto& m : ms) equal = equal && m.rank() == ms[0].rank();
    if (equal) {
      MatD X = MatD::Zero(d, k), D = MatD::Zero(d, k);
      for (std::size_t i = 0; i < ms.size(); ++i) {
        const double ci = w[i] * ms[i].scaling;
        D += ci * ms[i].B.template cast<double>() * ms[i].A.template cast<double>();
        for (std::size_t j = 0; j < ms.size(); ++j) {
          if (i == j) continue;
          const double cj = w[j] * ms[j].scaling;
          const double bi = std::sqrt(std::abs(ci)), aj = (cj >= 0 ? 1 : -1) * std::sqrt(std::abs(cj));
          X += bi * aj * ms[i].B.template cast<double>() * ms[j].A.template cast<double>();
        }
      }
      CHECK(res.cross_term_energy == doctest::Approx(X.norm() / D.norm()).epsilon(tol));
      CHECK(lori::cross_term_energy<T>(views_of(ms), w) == doctest::Approx(res.cross_term_energy).epsilon(1e-12));
    } else {
      CHECK(std::isnan(res.cross_term_energy));
    }
  }
}

TEST_CASE("rank-deficient and zero A's, zero deltas") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(42);
  auto a = random_module<double>(10, 12, 4, 1.0, g), b = random_module<double>(10, 12, 3, 1.0, g);
  a.A.row(3) = 2.0 * a.A.row(1);  // rank 3
  const auto pc = lori::principal_cosines<double>(a.view().A, b.view().A);
  CHECK(pc.size() == 3);
  const auto cs = dense_cosines(a.A, b.A);
  for (std::size_t c = 0; c < pc.size(); ++c) CHECK(pc[c] == doctest::Approx(cs(static_cast<Eigen::Index>(c))).epsilon(1e-9));
  // Same row space: all cosines 1.
  auto c = a;
  c.A = MatD(Eigen::MatrixXd::Random(4, 4)) * a.A;
  const auto same = lori::principal_cosines<double>(a.view().A, c.view().A);
  for (double v : same) CHECK(v == doctest::Approx(1.0).epsilon(1e-9));
  // Zero A: no overlap, zero delta -> cosine 0.
  auto z = b;
  z.A.setZero();
  const auto r = lori::compute_module_interference<double>({a.view(), z.view()}, {1.0, 1.0});
  CHECK(r.pairs[0].mean_cos2 == 0.0);
  CHECK(r.pairs[0].max_cos == 0.0);
  CHECK(r.pairs[0].delta_cosine == 0.0);
  CHECK(r.delta_norms[1] == 0.0);
}

TEST_CASE_TEMPLATE("independent random A's overlap by r / k", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(43);
  const int k = 1024, r = 16, d = 8;
  // E[sum cos^2] = r * r / k for independent uniformly random r-dimensional subspaces; averaged over
  // 20 pairs the mean of mean_cos2 is within ~10% of r / k (its relative sd per pair is ~sqrt(2)/r).
  double acc = 0;
  const int pairs = 20;
  for (int t = 0; t < pairs; ++t) {
    const auto a = random_module<T>(d, k, r, 1.0, g), b = random_module<T>(d, k, r, 1.0, g);
    acc += lori::compute_module_interference<T>({a.view(), b.view()}, {1.0, 1.0}).pairs[0].mean_cos2;
  }
  acc /= pairs;
  CHECK(acc == doctest::Approx(static_cast<double>(r) / k).epsilon(0.1));
}

TEST_CASE_TEMPLATE("output interference equals |dW_i X^T| / |dW_j X^T| formed densely", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(44);
  for (auto dims : {std::tuple<int, int, int>{12, 9, 5}, {3, 40, 1}, {30, 6, 17}}) {
    const int d = std::get<0>(dims), k = std::get<1>(dims), m = std::get<2>(dims);
    const auto a = random_module<T>(d, k, 3, 2.0, g), b = random_module<T>(d, k, 5, 0.5, g);
    const auto X = lori_test::randn<T>(m, k, g);
    const MatD Xd = X.template cast<double>();
    const double ref = (delta(a) * Xd.transpose()).norm() / (delta(b) * Xd.transpose()).norm();
    const double got = lori::output_interference<T>(a.view(), b.view(), lori::view(X));
    CHECK(got == doctest::Approx(ref).epsilon(std::is_same_v<T, float> ? 1e-5 : 1e-11));
  }
  const auto a = random_module<double>(4, 5, 2, 1.0, g);
  const auto Xbad = lori_test::randn<double>(3, 6, g);
  CHECK_THROWS_AS(lori::output_interference<double>(a.view(), a.view(), lori::view(Xbad)), lori::error);
  const MatD X0 = MatD::Zero(3, 5);
  CHECK(lori::output_interference<double>(a.view(), a.view(), lori::view(X0)) == 0.0);
}

TEST_CASE("mask overlap: Jaccard and overlap fractions") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(45);
  std::bernoulli_distribution b1(0.1), b2(0.3);
  lori::bitmask m1(70, 9), m2(70, 9);
  int c1 = 0, c2 = 0, both = 0;
  for (int i = 0; i < 70; ++i)
    for (int j = 0; j < 9; ++j) {
      const bool x = b1(g), y = b2(g);
      m1.set(i, j, x);
      m2.set(i, j, y);
      c1 += x;
      c2 += y;
      both += x && y;
    }
  const auto o = lori::compute_mask_overlap(m1, m2);
  CHECK(o.count_i == c1);
  CHECK(o.count_j == c2);
  CHECK(o.intersection == both);
  CHECK(o.jaccard == doctest::Approx(static_cast<double>(both) / (c1 + c2 - both)));
  CHECK(o.overlap_i == doctest::Approx(static_cast<double>(both) / c1));
  CHECK(o.overlap_j == doctest::Approx(static_cast<double>(both) / c2));
  const auto e = lori::compute_mask_overlap(lori::bitmask(3, 3), lori::bitmask(3, 3));
  CHECK(e.jaccard == 0.0);
  CHECK_THROWS_AS(lori::compute_mask_overlap(m1, lori::bitmask(9, 70)), lori::error);
  // Through compute_module_interference when both B's carry masks.
  auto a = random_module<double>(70, 5, 9, 1.0, g), b = random_module<double>(70, 5, 9, 1.0, g);
  a.b_mask = m1;
  b.b_mask = m2;
  const auto r = lori::compute_module_interference<double>({a.view(), b.view()}, {1.0, 1.0});
  CHECK(r.pairs[0].has_masks);
  CHECK(r.pairs[0].masks.intersection == both);
}

TEST_CASE("analyze_interference aggregates per layer and overall, weighted by d * k") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(46);
  lori::adapter_model<double> m1, m2, m3;
  const std::vector<std::pair<std::string, std::pair<int, int>>> mods = {
      {"model.layers.0.self_attn.q_proj", {16, 16}}, {"model.layers.0.mlp.down_proj", {16, 40}},
      {"model.layers.1.self_attn.q_proj", {16, 16}}, {"lm_head", {8, 16}}};
  for (const auto& [name, dk] : mods) {
    m1[name] = random_module<double>(dk.first, dk.second, 4, 2.0, g);
    m2[name] = random_module<double>(dk.first, dk.second, 4, 2.0, g);
    m3[name] = random_module<double>(dk.first, dk.second, 4, 2.0, g);
  }
  m3.erase("lm_head");  // not in every model: skipped
  const std::vector<double> w = {0.5, 0.3, 0.7};
  const auto rep = lori::analyze_interference<double>({&m1, &m2, &m3}, w);
  REQUIRE(rep.modules.size() == 3);
  CHECK(rep.layers.size() == 2);
  CHECK(rep.layers.at(0).modules == 2);
  CHECK(rep.overall.modules == 3);
  CHECK(rep.overall.weight == 16 * 16 + 16 * 40 + 16 * 16);
  // Manual weighted mean of pair (0, 2) delta cosine and of the cross-term energy over layer 0.
  double num = 0, den = 0, cnum = 0, mx = 0;
  for (const auto& mr : rep.modules) {
    if (mr.layer != 0) continue;
    const double wt = static_cast<double>(mr.out_features * mr.in_features);
    num += wt * mr.metrics.pairs[1].delta_cosine;
    cnum += wt * mr.metrics.cross_term_energy;
    mx = std::max(mx, mr.metrics.pairs[1].max_cos);
    den += wt;
    const auto direct = lori::compute_module_interference<double>(
        {m1[mr.name].view(), m2[mr.name].view(), m3[mr.name].view()}, w);
    CHECK(direct.pairs[1].delta_cosine == mr.metrics.pairs[1].delta_cosine);
  }
  const auto& p02 = rep.layers.at(0).pairs[1];
  CHECK(p02.i == 0);
  CHECK(p02.j == 2);
  CHECK(p02.delta_cosine == doctest::Approx(num / den));
  CHECK(p02.max_cos == mx);
  CHECK(rep.layers.at(0).cross_term_energy == doctest::Approx(cnum / den));
  CHECK(lori::module_layer_index("base_model.model.model.layers.17.mlp.up_proj") == 17);
  CHECK(lori::module_layer_index("lm_head") == -1);
  CHECK_THROWS_AS(lori::analyze_interference<double>({&m1, nullptr}, {1.0, 1.0}), lori::error);
  CHECK_THROWS_AS(lori::analyze_interference<double>({&m1}, {1.0, 1.0}), lori::error);
  CHECK_THROWS_AS(lori::analyze_interference<double>({}, {}), lori::error);
  auto bad = random_module<double>(16, 17, 4, 1.0, g);
  CHECK_THROWS_AS(lori::compute_module_interference<double>({m1["lm_head"].view(), bad.view()}, {1.0, 1.0}), lori::error);
}
