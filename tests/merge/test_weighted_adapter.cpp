// merge_adapters / merge_models (PEFT add_weighted_adapter) against double-precision references written
// from the definitions: every combination type, mixed ranks where allowed, negative weights, density
// 0 / 0.5 / 1, LoRI-S masks, error paths.
#include <doctest/doctest.h>

#include "lori/io/peft_adapter.hpp"
#include "lori/merge/weighted_adapter.hpp"
#include "merge_test_support.hpp"
#include "test_util.hpp"

#include <Eigen/SVD>

#include <cmath>
#include <string>
#include <vector>

using merge_test::MatD;

namespace {

struct RefAB {
  MatD A, B;
};

/// Reference for the linear family: A' and B' from the definitions.
template <class T>
RefAB ref_linear_family(lori::combination_type type, const std::vector<lori::adapter_module<T>>& ms, const std::vector<double>& w,
                        double density, bool frequency, std::uint64_t seed, std::uint64_t stream) {
  const std::size_t n = ms.size();
  std::vector<double> ca(n), cb(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double c = w[i] * ms[i].scaling;
    cb[i] = std::sqrt(std::abs(c));
    ca[i] = c >= 0 ? cb[i] : -cb[i];
  }
  auto combine = [&](bool isA) {
    std::vector<std::vector<double>> raw, p;
    const auto kind = isA ? lori::merge_tensor_kind::lora_A : lori::merge_tensor_kind::lora_B;
    for (std::size_t i = 0; i < n; ++i) {
      const auto x = isA ? merge_test::flat(ms[i].A) : merge_test::flat(ms[i].B);
      raw.push_back(x);
      if (type == lori::combination_type::dare_linear || type == lori::combination_type::dare_ties) {
        const auto keep = merge_test::dare_keep(x.size(), density, seed, lori::dare_tensor_stream(lori::merge_dare_stream(stream, kind), i));
        std::vector<double> q(x.size());
        for (std::size_t e = 0; e < x.size(); ++e)
          q[e] = density >= 1 ? x[e] : keep[e] * x[e] / static_cast<double>(static_cast<T>(density));
        p.push_back(q);
      } else {
        p.push_back(merge_test::ref_magnitude_prune(x, density));
      }
    }
    const auto& c = isA ? ca : cb;
    switch (type) {
      case lori::combination_type::linear: return merge_test::ref_weighted_sum(raw, c);
      case lori::combination_type::ties:
      case lori::combination_type::dare_ties: return merge_test::ref_ties(p, c, frequency);
      default: return merge_test::ref_weighted_sum(p, c);
    }
  };
  const auto r = ms[0].rank(), k = ms[0].in_features(), d = ms[0].out_features();
  return {merge_test::unflat(combine(true), r, k), merge_test::unflat(combine(false), d, r)};
}

lori::combination_type task_of_svd(lori::combination_type t) {
  switch (t) {
    case lori::combination_type::ties_svd: return lori::combination_type::ties;
    case lori::combination_type::dare_linear_svd: return lori::combination_type::dare_linear;
    case lori::combination_type::dare_ties_svd: return lori::combination_type::dare_ties;
    case lori::combination_type::magnitude_prune_svd: return lori::combination_type::magnitude_prune;
    default: return lori::combination_type::linear;
  }
}

/// Reference for the svd family: the merged full delta (before truncation).
template <class T>
MatD ref_svd_delta(lori::combination_type type, const std::vector<lori::adapter_module<T>>& ms, const std::vector<double>& w,
                   double density, bool frequency, std::uint64_t seed, std::uint64_t stream) {
  const auto t = task_of_svd(type);
  const std::size_t n = ms.size();
  std::vector<std::vector<double>> raw, p;
  for (std::size_t i = 0; i < n; ++i) {
    const auto x = merge_test::flat(merge_test::delta(ms[i]));
    raw.push_back(x);
    if (t == lori::combination_type::dare_linear || t == lori::combination_type::dare_ties) {
      const auto keep = merge_test::dare_keep(
          x.size(), density, seed, lori::dare_tensor_stream(lori::merge_dare_stream(stream, lori::merge_tensor_kind::delta), i));
      std::vector<double> q(x.size());
      for (std::size_t e = 0; e < x.size(); ++e) q[e] = density >= 1 ? x[e] : keep[e] * x[e] / static_cast<double>(static_cast<T>(density));
      p.push_back(q);
    } else {
      p.push_back(merge_test::ref_magnitude_prune(x, density));
    }
  }
  std::vector<double> out;
  if (t == lori::combination_type::linear) out = merge_test::ref_weighted_sum(raw, w);
  else if (t == lori::combination_type::ties || t == lori::combination_type::dare_ties) out = merge_test::ref_ties(p, w, frequency);
  else out = merge_test::ref_weighted_sum(p, w);
  return merge_test::unflat(out, ms[0].out_features(), ms[0].in_features());
}

MatD best_rank(const MatD& M, Eigen::Index r) {
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(M), Eigen::ComputeThinU | Eigen::ComputeThinV);
  return svd.matrixU().leftCols(r) * svd.singularValues().head(r).asDiagonal() * svd.matrixV().leftCols(r).transpose();
}


}  // namespace

TEST_CASE_TEMPLATE("cat merge concatenates w_i s_i A_i rows and B_i columns (mixed ranks)", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(21);
  for (auto dims : {std::pair<int, int>{9, 13}, {24, 7}, {1, 5}}) {
    std::vector<lori::adapter_module<T>> ms = {merge_test::random_module<T>(dims.first, dims.second, 3, 2.0, g),
                                               merge_test::random_module<T>(dims.first, dims.second, 1, 0.5, g),
                                               merge_test::random_module<T>(dims.first, dims.second, 4, 1.0 / std::sqrt(4.0), g)};
    const std::vector<double> w = {0.5, -0.3, 0.7};
    lori::merge_options opt;
    opt.type = lori::combination_type::cat;
    const auto out = lori::merge_adapters<T>(merge_test::views_of(ms), w, opt);
    CHECK(out.rank() == 8);
    CHECK(out.scaling == 1.0);
    CHECK_FALSE(out.b_mask.has_value());
    MatD Aref(8, dims.second), Bref(dims.first, 8), dW = MatD::Zero(dims.first, dims.second);
    Eigen::Index off = 0;
    for (std::size_t i = 0; i < ms.size(); ++i) {
      Aref.middleRows(off, ms[i].rank()) = merge_test::to_d(ms[i].A) * (w[i] * ms[i].scaling);
      Bref.middleCols(off, ms[i].rank()) = merge_test::to_d(ms[i].B);
      dW += w[i] * merge_test::delta(ms[i]);
      off += ms[i].rank();
    }
    // (A * w) * s in T: two roundings per element.
    const double tol = std::is_same_v<T, float> ? 3e-7 : 1e-15;
    CHECK(lori_test::rel_err(out.A, Aref) <= tol);
    CHECK(lori_test::rel_err(out.B, Bref) == 0.0);
    CHECK(lori_test::rel_err(merge_test::to_d(out.B) * merge_test::to_d(out.A), dW) <= 10 * tol);
  }
}

TEST_CASE_TEMPLATE("linear, ties, dare_linear, dare_ties, magnitude_prune act on A and B separately", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(22);
  using CT = lori::combination_type;
  // Float: weighted sums/means of <= 3 terms, each weight rounded to float: ~4 eps_float relative.
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-13;
  for (CT type : {CT::linear, CT::ties, CT::dare_linear, CT::dare_ties, CT::magnitude_prune}) {
    for (double density : {0.0, 0.5, 1.0}) {
      for (auto dims : {std::pair<int, int>{17, 11}, {8, 64}}) {
        const int r = 4;
        std::vector<lori::adapter_module<T>> ms = {merge_test::random_module<T>(dims.first, dims.second, r, 2.0, g),
                                                   merge_test::random_module<T>(dims.first, dims.second, r, 0.5, g),
                                                   merge_test::random_module<T>(dims.first, dims.second, r, 4.0, g)};
        const std::vector<double> w = {0.5, -0.3, 0.7};
        lori::merge_options opt;
        opt.type = type;
        opt.density = density;
        opt.seed = g();
        opt.stream = g();
        INFO(std::string(lori::to_string(type)) << " density=" << density << " d=" << dims.first << " k=" << dims.second);
        const bool dare = type == CT::dare_linear || type == CT::dare_ties;
        if (dare && density == 0.0) {
          CHECK_THROWS_AS(lori::merge_adapters<T>(merge_test::views_of(ms), w, opt), lori::error);
          continue;
        }
        for (bool frequency : {false, true}) {
          opt.sign_method = frequency ? lori::majority_sign_method::frequency : lori::majority_sign_method::total;
          const auto out = lori::merge_adapters<T>(merge_test::views_of(ms), w, opt);
          const auto ref = ref_linear_family(type, ms, w, density, frequency, opt.seed, opt.stream);
          CHECK(out.rank() == r);
          CHECK(out.scaling == 1.0);
          if (ref.A.norm() == 0) CHECK(out.A.norm() == 0);
          else CHECK(lori_test::rel_err(out.A, ref.A) <= tol);
          if (ref.B.norm() == 0) CHECK(out.B.norm() == 0);
          else CHECK(lori_test::rel_err(out.B, ref.B) <= tol);
        }
      }
    }
  }
}

TEST_CASE_TEMPLATE("linear merge keeps the cross terms: B'A' = sum_ij b_i a_j B_i A_j", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(23);
  std::vector<lori::adapter_module<T>> ms = {merge_test::random_module<T>(12, 10, 3, 2.0, g), merge_test::random_module<T>(12, 10, 3, 1.0, g)};
  const std::vector<double> w = {0.8, -0.4};
  lori::merge_options opt;
  opt.type = lori::combination_type::linear;
  const auto out = lori::merge_adapters<T>(merge_test::views_of(ms), w, opt);
  MatD expect = MatD::Zero(12, 10);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      const double ci = w[i] * ms[i].scaling, cj = w[j] * ms[j].scaling;
      const double bi = std::sqrt(std::abs(ci)), aj = (cj >= 0 ? 1 : -1) * std::sqrt(std::abs(cj));
      expect += bi * aj * merge_test::to_d(ms[i].B) * merge_test::to_d(ms[j].A);
    }
  CHECK(lori_test::rel_err(merge_test::to_d(out.B) * merge_test::to_d(out.A), expect) <= (std::is_same_v<T, float> ? 1e-5 : 1e-13));
}

TEST_CASE_TEMPLATE("svd family: truncated SVD of the merged full delta, orthonormal A', fixed signs", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(24);
  using CT = lori::combination_type;
  // Float SVD: singular triplets accurate to ~eps_float * sigma_max / gap; random data has O(1) gaps.
  const double tol = std::is_same_v<T, float> ? 2e-4 : 1e-10;
  for (CT type : {CT::svd, CT::ties_svd, CT::dare_linear_svd, CT::dare_ties_svd, CT::magnitude_prune_svd}) {
    for (double density : {0.0, 0.5, 1.0}) {
      // (d, k, ranks): low-rank path (sum r <= min(d, k)) and dense path for svd.
      for (auto cfg : {std::tuple<int, int, std::vector<int>>{20, 16, {2, 3, 4}}, {9, 6, {4, 2, 3}}, {7, 30, {3, 3}}}) {
        const int d = std::get<0>(cfg), k = std::get<1>(cfg);
        std::vector<lori::adapter_module<T>> ms;
        for (int r : std::get<2>(cfg)) ms.push_back(merge_test::random_module<T>(d, k, r, 2.0, g));
        std::vector<double> w = {0.5, -0.3, 0.7};
        w.resize(ms.size());
        lori::merge_options opt;
        opt.type = type;
        opt.density = density;
        opt.seed = g();
        opt.stream = g();
        INFO(std::string(lori::to_string(type)) << " density=" << density << " d=" << d << " k=" << k);
        const bool dare = type == CT::dare_linear_svd || type == CT::dare_ties_svd;
        if (dare && density == 0.0) {
          CHECK_THROWS_AS(lori::merge_adapters<T>(merge_test::views_of(ms), w, opt), lori::error);
          continue;
        }
        const auto out = lori::merge_adapters<T>(merge_test::views_of(ms), w, opt);
        int rmax = 0;
        for (const auto& m : ms) rmax = std::max<int>(rmax, static_cast<int>(m.rank()));
        REQUIRE(out.rank() == rmax);
        CHECK(out.scaling == 1.0);
        const MatD dW = ref_svd_delta(type, ms, w, density, false, opt.seed, opt.stream);
        const MatD best = best_rank(dW, rmax);
        const MatD prod = merge_test::to_d(out.B) * merge_test::to_d(out.A);
        if (dW.norm() == 0) {
          CHECK(prod.norm() == 0);
          continue;
        }
        // The truncation is only well defined with a gap between sigma_r and sigma_r+1: perturbations
        // of size eps * sigma_1 move the rank-r approximation by ~eps * sigma_1^2 / gap (Wedin).
        const Eigen::VectorXd sv = Eigen::JacobiSVD<Eigen::MatrixXd>(Eigen::MatrixXd(dW)).singularValues();
        const double gap = rmax < sv.size() ? (sv(rmax - 1) - sv(rmax)) / sv(0) : 1.0;
        INFO("relative singular gap " << gap);
        CHECK(lori_test::rel_err(prod, best) <= tol / std::max(gap, 1e-3));
        // A' has orthonormal rows (right singular vectors) with the largest-|.| entry positive.
        const MatD AAt = merge_test::to_d(out.A) * merge_test::to_d(out.A).transpose();
        CHECK((AAt - MatD::Identity(rmax, rmax)).norm() <= (std::is_same_v<T, float> ? 1e-5 : 1e-12));
        for (Eigen::Index i = 0; i < out.A.rows(); ++i) {
          Eigen::Index j;
          out.A.row(i).cwiseAbs().maxCoeff(&j);
          CHECK(out.A(i, j) > 0);
        }
      }
    }
  }
}

TEST_CASE_TEMPLATE("svd_rank and svd_clamp (torch.quantile with linear interpolation)", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(25);
  std::vector<lori::adapter_module<T>> ms = {merge_test::random_module<T>(15, 12, 4, 2.0, g), merge_test::random_module<T>(15, 12, 4, 2.0, g)};
  const std::vector<double> w = {1.0, -0.5};
  lori::merge_options opt;
  opt.type = lori::combination_type::svd;
  opt.svd_rank = 6;
  const auto full = lori::merge_adapters<T>(merge_test::views_of(ms), w, opt);
  CHECK(full.rank() == 6);
  MatD dW = w[0] * merge_test::delta(ms[0]) + w[1] * merge_test::delta(ms[1]);
  CHECK(lori_test::rel_err(merge_test::to_d(full.B) * merge_test::to_d(full.A), best_rank(dW, 6)) <= (std::is_same_v<T, float> ? 2e-4 : 1e-10));
  for (double q : {0.0, 0.37, 0.9, 1.0}) {
    opt.svd_clamp = q;
    const auto cl = lori::merge_adapters<T>(merge_test::views_of(ms), w, opt);
    std::vector<double> all = merge_test::flat(full.B);
    const auto fa = merge_test::flat(full.A);
    all.insert(all.end(), fa.begin(), fa.end());
    std::sort(all.begin(), all.end());
    const double pos = q * static_cast<double>(all.size() - 1);
    const auto lo = static_cast<std::size_t>(std::floor(pos));
    const std::size_t hi = std::min(lo + 1, all.size() - 1);
    const double hv = all[lo] + (pos - static_cast<double>(lo)) * (all[hi] - all[lo]);
    auto clampd = [&](double x) { return std::min(std::max(x, -hv), hv); };
    INFO("q=" << q << " hi=" << hv);
    const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
    CHECK(lori_test::rel_err(cl.A, merge_test::to_d(full.A).unaryExpr(clampd)) <= tol);
    CHECK(lori_test::rel_err(cl.B, merge_test::to_d(full.B).unaryExpr(clampd)) <= tol);
  }
  // The quantile itself on a known list.
  CHECK(lori::detail::merge_quantile<double>({4, 1, 3, 2}, 0.5) == doctest::Approx(2.5));
  CHECK(lori::detail::merge_quantile<double>({4, 1, 3, 2}, 1.0 / 3.0) == doctest::Approx(2.0));
  CHECK(lori::detail::merge_quantile<double>({5}, 0.3) == 5.0);
}

TEST_CASE_TEMPLATE("LoRI-S masks: cat concatenates, the linear family takes the union, svd is dense", T, float, double) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(26);
  std::vector<lori::adapter_module<T>> ms = {merge_test::random_module<T>(30, 20, 4, 2.0, g), merge_test::random_module<T>(30, 20, 4, 2.0, g)};
  for (auto& m : ms) merge_test::sparsify(m, 0.1, g);
  const std::vector<double> w = {0.4, 0.4};
  lori::merge_options opt;
  opt.type = lori::combination_type::cat;
  const auto c = lori::merge_adapters<T>(merge_test::views_of(ms), w, opt);
  REQUIRE(c.b_mask.has_value());
  CHECK(c.b_mask->count() == ms[0].b_mask->count() + ms[1].b_mask->count());
  for (Eigen::Index i = 0; i < 30; ++i)
    for (Eigen::Index j = 0; j < 8; ++j) {
      CHECK(c.b_mask->test(i, j) == (j < 4 ? ms[0].b_mask->test(i, j) : ms[1].b_mask->test(i, j - 4)));
      if (!c.b_mask->test(i, j)) CHECK(c.B(i, j) == T(0));
    }
  for (auto type : {lori::combination_type::linear, lori::combination_type::ties}) {
    opt.type = type;
    opt.density = 0.5;
    const auto l = lori::merge_adapters<T>(merge_test::views_of(ms), w, opt);
    REQUIRE(l.b_mask.has_value());
    lori::bitmask uni = *ms[0].b_mask;
    uni |= *ms[1].b_mask;
    CHECK(*l.b_mask == uni);
    bool zero_outside = true;
    for (Eigen::Index i = 0; i < 30; ++i)
      for (Eigen::Index j = 0; j < 4; ++j)
        if (!uni.test(i, j)) zero_outside = zero_outside && l.B(i, j) == T(0);
    CHECK(zero_outside);
  }
  opt.type = lori::combination_type::svd;
  CHECK_FALSE(lori::merge_adapters<T>(merge_test::views_of(ms), w, opt).b_mask.has_value());
  // One masked, one dense: no mask on the result.
  ms[1].b_mask.reset();
  opt.type = lori::combination_type::cat;
  CHECK_FALSE(lori::merge_adapters<T>(merge_test::views_of(ms), w, opt).b_mask.has_value());
}

TEST_CASE("a single adapter is merged linearly whatever the type (as PEFT)") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(27);
  std::vector<lori::adapter_module<double>> ms = {merge_test::random_module<double>(6, 5, 2, 2.0, g)};
  for (auto type : {lori::combination_type::svd, lori::combination_type::cat, lori::combination_type::ties}) {
    lori::merge_options opt;
    opt.type = type;  // no density needed: it becomes linear
    const auto out = lori::merge_adapters<double>(merge_test::views_of(ms), {-0.5}, opt);
    CHECK(lori_test::rel_err(out.A, merge_test::to_d(ms[0].A) * -1.0) <= 1e-15);  // sign(-1) sqrt(|-0.5 * 2|)
    CHECK(lori_test::rel_err(out.B, merge_test::to_d(ms[0].B) * 1.0) <= 1e-15);
  }
}

TEST_CASE("merge_models merges module by module with per-module DARE streams") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(28);
  lori::adapter_model<float> m1, m2;
  m1["model.layers.0.q_proj"] = merge_test::random_module<float>(8, 8, 2, 2.0, g);
  m1["model.layers.0.v_proj"] = merge_test::random_module<float>(4, 8, 2, 2.0, g);
  m2["model.layers.0.q_proj"] = merge_test::random_module<float>(8, 8, 2, 2.0, g);
  const std::vector<double> w = {0.5, 0.3};
  lori::merge_options opt;
  opt.type = lori::combination_type::dare_ties;
  opt.density = 0.5;
  opt.seed = 99;
  opt.stream = 7;
  const auto out = lori::merge_models<float>({&m1, &m2}, w, opt);
  REQUIRE(out.size() == 2);
  lori::merge_options o = opt;
  o.stream = lori::merge_module_stream(7, "model.layers.0.q_proj");
  const auto q = lori::merge_adapters<float>({m1["model.layers.0.q_proj"].view(), m2["model.layers.0.q_proj"].view()}, w, o);
  CHECK(out.at("model.layers.0.q_proj").A == q.A);
  CHECK(out.at("model.layers.0.q_proj").B == q.B);
  // v_proj only in m1: merged from m1 alone with its weight.
  opt.type = lori::combination_type::cat;
  const auto c = lori::merge_models<float>({&m1, &m2}, w, opt);
  const auto& v = c.at("model.layers.0.v_proj");
  CHECK(lori_test::rel_err(merge_test::to_d(v.B) * merge_test::to_d(v.A), 0.5 * merge_test::delta(m1["model.layers.0.v_proj"])) <= 1e-6);
  CHECK_THROWS_AS(lori::merge_models<float>({}, {}, opt), lori::error);
  CHECK_THROWS_AS(lori::merge_models<float>({&m1, nullptr}, w, opt), lori::error);
  CHECK_THROWS_AS(lori::merge_models<float>({&m1}, w, opt), lori::error);
}

TEST_CASE("merge_adapters reports bad arguments") {
  auto g = lori_test::rng(29);
  std::vector<lori::adapter_module<double>> ms = {merge_test::random_module<double>(6, 5, 2, 2.0, g),
                                                  merge_test::random_module<double>(6, 5, 3, 2.0, g)};
  auto v = merge_test::views_of(ms);
  lori::merge_options opt;
  opt.type = lori::combination_type::linear;
  CHECK_THROWS_AS(lori::merge_adapters<double>(v, {1.0, 1.0}, opt), lori::error);  // unequal ranks
  opt.type = lori::combination_type::cat;
  CHECK_NOTHROW(lori::merge_adapters<double>(v, {1.0, 1.0}, opt));
  CHECK_THROWS_AS(lori::merge_adapters<double>({}, {}, opt), lori::error);
  CHECK_THROWS_AS(lori::merge_adapters<double>(v, {1.0}, opt), lori::error);
  CHECK_THROWS_AS(lori::merge_adapters<double>(v, {1.0, std::nan("")}, opt), lori::error);
  opt.type = lori::combination_type::ties_svd;
  CHECK_THROWS_AS(lori::merge_adapters<double>(v, {1.0, 1.0}, opt), lori::error);  // no density
  opt.density = -0.1;
  CHECK_THROWS_AS(lori::merge_adapters<double>(v, {1.0, 1.0}, opt), lori::error);
  opt.density = 0.5;
  CHECK_NOTHROW(lori::merge_adapters<double>(v, {1.0, 1.0}, opt));
  opt.svd_rank = 6;  // > min(d, k) = 5
  CHECK_THROWS_AS(lori::merge_adapters<double>(v, {1.0, 1.0}, opt), lori::error);
  opt.svd_rank = -1;
  CHECK_THROWS_AS(lori::merge_adapters<double>(v, {1.0, 1.0}, opt), lori::error);
  opt.svd_rank = 0;
  opt.svd_clamp = 1.5;
  CHECK_THROWS_AS(lori::merge_adapters<double>(v, {1.0, 1.0}, opt), lori::error);
  opt.svd_clamp.reset();
  ms.push_back(merge_test::random_module<double>(7, 5, 2, 2.0, g));  // different d
  CHECK_THROWS_AS(lori::merge_adapters<double>(merge_test::views_of(ms), {1.0, 1.0, 1.0}, opt), lori::error);
  lori::adapter_module<double> bad = ms[0];
  bad.b_mask = lori::bitmask(3, 3);
  CHECK_THROWS_AS(lori::merge_adapters<double>({bad.view(), ms[1].view()}, {1.0, 1.0}, opt), lori::error);
  CHECK(lori::combination_from_string("dare_ties_svd") == lori::combination_type::dare_ties_svd);
  CHECK(std::string(lori::to_string(lori::combination_type::magnitude_prune)) == "magnitude_prune");
  CHECK_THROWS_AS(lori::combination_from_string("average"), lori::error);
}

// ---- The PEFT 0.21 fixture adapters (tests/data/peft_adapters/{nlu,math,code}, r = 8, alpha = 16) -------

namespace {
lori::adapter_model<float> load_fixture(const std::string& name) {
  const auto ad = lori::io::load_peft_adapter(std::string(LORI_TEST_DATA_DIR) + "/peft_adapters/" + name);
  lori::adapter_model<float> m;
  for (const auto& mod : ad.modules) {
    lori::adapter_module<float> a;
    a.A = Eigen::Map<const lori_test::MatrixXfR>(mod.A.data(), mod.rank, mod.in_features);
    a.B = Eigen::Map<const lori_test::MatrixXfR>(mod.B.data(), mod.out_features, mod.rank);
    a.scaling = mod.scaling;
    m.emplace(mod.name, std::move(a));
  }
  return m;
}
}  // namespace

TEST_CASE("PEFT fixtures nlu/math/code merged with weights 0.5, 0.3, 0.7 and density 0.5") {
  LORI_TEST_SEED_INFO();
  const auto nlu = load_fixture("nlu"), math = load_fixture("math"), code = load_fixture("code");
  REQUIRE(nlu.size() == 14);
  REQUIRE(nlu.begin()->second.scaling == 2.0);
  const std::vector<double> w = {0.5, 0.3, 0.7};
  using CT = lori::combination_type;
  for (CT type : {CT::cat, CT::linear, CT::ties, CT::dare_linear, CT::dare_ties, CT::magnitude_prune, CT::svd, CT::ties_svd,
                  CT::dare_linear_svd, CT::dare_ties_svd, CT::magnitude_prune_svd}) {
    lori::merge_options opt;
    opt.type = type;
    opt.density = 0.5;
    opt.seed = 2025;
    opt.stream = 11;
    const auto merged = lori::merge_models<float>({&nlu, &math, &code}, w, opt);
    REQUIRE(merged.size() == 14);
    double worst = 0;
    for (const auto& [name, mod] : merged) {
      CHECK(mod.scaling == 1.0);
      CHECK(mod.rank() == (type == CT::cat ? 24 : 8));
      const std::vector<lori::adapter_module<float>> ms = {nlu.at(name), math.at(name), code.at(name)};
      const std::uint64_t stream = lori::merge_module_stream(opt.stream, name);
      const MatD got = merge_test::to_d(mod.B) * merge_test::to_d(mod.A);
      MatD expect;
      if (type == CT::cat) {
        expect = MatD::Zero(got.rows(), got.cols());
        for (std::size_t i = 0; i < 3; ++i) expect += w[i] * merge_test::delta(ms[i]);
      } else if (lori::combination_is_svd(type)) {
        expect = best_rank(ref_svd_delta(type, ms, w, 0.5, false, opt.seed, stream), 8);
      } else {
        const auto ref = ref_linear_family(type, ms, w, 0.5, false, opt.seed, stream);
        expect = ref.B * ref.A;
        worst = std::max(worst, std::max(lori_test::rel_err(mod.A, ref.A), lori_test::rel_err(mod.B, ref.B)));
      }
      worst = std::max(worst, lori_test::rel_err(got, expect));
    }
    INFO(std::string(lori::to_string(type)) << ": worst relative error " << worst);
    // float: linear family / cat ~1e-6; SVD in float ~1e-5 of sigma_max with O(1) singular gaps.
    CHECK(worst <= (lori::combination_is_svd(type) ? 2e-4 : 1e-5));
  }
}

TEST_CASE("PEFT fixtures: DARE statistics (kept fraction, rescale) on the merged A's") {
  const auto nlu = load_fixture("nlu"), math = load_fixture("math"), code = load_fixture("code");
  const std::vector<double> w = {0.5, 0.3, 0.7};
  const double p = 0.5;
  lori::merge_options opt;
  opt.type = lori::combination_type::dare_linear;
  opt.density = p;
  opt.seed = 7;
  const auto dare = lori::merge_models<float>({&nlu, &math, &code}, w, opt);
  opt.type = lori::combination_type::linear;
  const auto lin = lori::merge_models<float>({&nlu, &math, &code}, w, opt);
  // A' = sum_i a_i m_i A_i / p with m_i ~ Bernoulli(p): an entry is zero iff all three draws drop it,
  // probability (1 - p)^3; E|A'|^2 = |A'_linear|^2 + (1 - p) / p sum_i a_i^2 |A_i|^2.
  double zeros = 0, total = 0, e_dare = 0, e_expect = 0;
  for (const auto& [name, mod] : dare) {
    zeros += static_cast<double>((mod.A.array() == 0.0f).count());
    total += static_cast<double>(mod.A.size());
    e_dare += mod.A.cast<double>().squaredNorm();
    e_expect += lin.at(name).A.cast<double>().squaredNorm();
    const std::vector<const lori::adapter_model<float>*> src = {&nlu, &math, &code};
    for (std::size_t i = 0; i < 3; ++i) {
      const auto& a = src[i]->at(name);
      e_expect += (1 - p) / p * std::abs(w[i] * a.scaling) * a.A.cast<double>().squaredNorm();
    }
  }
  const double frac = zeros / total, sd = std::sqrt(0.125 * 0.875 / total);
  INFO("zero fraction " << frac << " over " << total << " entries; energy ratio " << e_dare / e_expect);
  CHECK(std::abs(frac - 0.125) < 6 * sd);
  CHECK(e_dare / e_expect == doctest::Approx(1.0).epsilon(0.1));
}

TEST_CASE("dense truncated SVD is right for rank-deficient deltas (Eigen 3.4 BDCSVD fallback)") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(30);
  // Eigen 3.4.0's BDCSVD returns wrong triplets for about 1 in 200 random 20 x 16 matrices of rank 9.
  int bad = 0;
  for (int t = 0; t < 1000; ++t) {
    const MatD M = lori_test::randn<double>(20, 9, g) * lori_test::randn<double>(9, 16, g);
    lori::detail::merge_mat_r<double> A, B;
    lori::detail::merge_svd_dense<double>(M, 4, std::nullopt, A, B);
    if (lori_test::rel_err(MatD(B * A), best_rank(M, 4)) > 1e-10) ++bad;
  }
  CHECK(bad == 0);
}
