// Naive, sort-based reference of LoRI-S mask calibration and random inputs, shared by the CPU and
// GPU mask tests. Deliberately the obvious algorithm: gather every |B| of a group (in double, with
// excluded positions as 0) into one array, sort it, read tau; for exact semantics sort the
// non-excluded entries by (|B| descending, flat index ascending) and keep the first k.
#ifndef LORI_TESTS_MASK_CALIBRATE_REFERENCE_HPP
#define LORI_TESTS_MASK_CALIBRATE_REFERENCE_HPP

#include "lori/mask/calibrate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace lori_test {

// Every granularity and both semantics, for the tests' sweeps.
inline constexpr lori::mask_granularity all_granularities[] = {lori::mask_granularity::model, lori::mask_granularity::layer,
                                                               lori::mask_granularity::module, lori::mask_granularity::projection,
                                                               lori::mask_granularity::matrix};
inline constexpr lori::mask_semantics all_semantics[] = {lori::mask_semantics::reference, lori::mask_semantics::exact};

struct ref_result {
  std::vector<lori::bitmask> masks;
  std::vector<double> thresholds;  // per group (+inf when k = 0)
  std::vector<lori::index_t> ks;
};

template <class T>
ref_result reference_calibrate(const std::vector<lori::calibration_tensor<T>>& ts, const lori::calibration_options& opt) {
  std::vector<std::string> names;
  for (const auto& t : ts) names.push_back(t.name);
  const auto groups = lori::assign_mask_groups(names, opt.granularity, opt.group_by);
  ref_result r;
  for (const auto& t : ts) r.masks.emplace_back(t.values.rows(), t.values.cols());
  struct entry {
    double mag;
    bool excluded;
    std::size_t tensor;
    lori::index_t i, j;
  };
  for (lori::index_t g = 0; g < groups.count(); ++g) {
    std::vector<entry> es;  // in flat order: tensor order, then row-major
    for (std::size_t t = 0; t < ts.size(); ++t) {
      if (groups.group_of[t] != g) continue;
      for (lori::index_t i = 0; i < ts[t].values.rows(); ++i)
        for (lori::index_t j = 0; j < ts[t].values.cols(); ++j) {
          const bool ex = ts[t].exclude != nullptr && ts[t].exclude->test(i, j);
          es.push_back({ex ? 0.0 : std::fabs(static_cast<double>(ts[t].values(i, j))), ex, t, i, j});
        }
    }
    const auto n = static_cast<lori::index_t>(es.size());
    const auto k = static_cast<lori::index_t>(std::floor((1.0 - opt.sparsity) * static_cast<double>(n)));
    r.ks.push_back(k);
    if (k == 0) {
      r.thresholds.push_back(std::numeric_limits<double>::infinity());
      continue;
    }
    std::vector<double> mags;
    for (const auto& e : es) mags.push_back(e.mag);
    std::sort(mags.begin(), mags.end(), std::greater<>());
    const double tau = mags[static_cast<std::size_t>(k - 1)];
    r.thresholds.push_back(tau);
    if (opt.semantics == lori::mask_semantics::reference) {
      for (const auto& e : es)
        if (!e.excluded && e.mag >= tau) r.masks[e.tensor].set(e.i, e.j);
    } else {
      std::vector<entry> live;
      for (const auto& e : es)
        if (!e.excluded) live.push_back(e);
      std::stable_sort(live.begin(), live.end(), [](const entry& a, const entry& b) { return a.mag > b.mag; });
      for (std::size_t p = 0; p < live.size() && static_cast<lori::index_t>(p) < k; ++p) r.masks[live[p].tensor].set(live[p].i, live[p].j);
    }
  }
  return r;
}

/// A random adapter: `layers` layers x the seven Llama projections (shapes scaled down, random
/// rank), optionally with padded leading dimensions. Storage is returned in `store`.
struct random_adapter_spec {
  int layers = 3;
  bool padded_ld = false;
  bool ties = false;           // values drawn from a few levels (with +-0)
  double exclude_prob = 0.0;   // probability of an exclusion mask per tensor (then ~30% excluded)
  bool odd_shapes = false;     // random rows/cols incl. 0, 1, 63, 64, 65
};

template <class T>
struct random_adapter {
  std::vector<std::vector<T>> store;
  std::vector<lori::bitmask> excl;
  std::vector<lori::calibration_tensor<T>> tensors;
};

template <class T>
random_adapter<T> make_random_adapter(const random_adapter_spec& spec, std::mt19937_64& g) {
  static const char* projs[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  static const lori::index_t dims[] = {48, 16, 16, 48, 112, 112, 48};
  static const lori::index_t odd[] = {0, 1, 2, 7, 31, 63, 64, 65, 130};
  std::uniform_int_distribution<int> rank_d(0, 3), odd_d(0, 8);
  const lori::index_t ranks[] = {4, 8, 32, 64};
  std::normal_distribution<double> nd(0.0, 0.05);
  std::uniform_int_distribution<int> level(0, 9);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  random_adapter<T> a;
  const std::size_t nt = static_cast<std::size_t>(spec.layers) * 7;
  a.store.resize(nt);
  a.excl.resize(nt);
  std::vector<bool> has_excl(nt);
  std::vector<lori::index_t> R(nt), C(nt), LD(nt);
  for (std::size_t t = 0; t < nt; ++t) {
    R[t] = spec.odd_shapes ? odd[odd_d(g)] : dims[t % 7];
    C[t] = spec.odd_shapes ? odd[odd_d(g)] : ranks[rank_d(g)];
    LD[t] = C[t] + (spec.padded_ld ? 3 : 0);
    a.store[t].assign(static_cast<std::size_t>(R[t] * LD[t]), static_cast<T>(7.0));  // padding holds junk
    for (lori::index_t i = 0; i < R[t]; ++i)
      for (lori::index_t j = 0; j < C[t]; ++j) {
        T v;
        if (spec.ties) {
          static const double levels[] = {0.0, -0.0, 0.25, -0.25, 0.5, -0.5, 1.0, -1.0, 1.0, 0.5};
          v = static_cast<T>(levels[level(g)]);
        } else {
          v = static_cast<T>(nd(g));
        }
        a.store[t][static_cast<std::size_t>(i * LD[t] + j)] = v;
      }
    a.excl[t] = lori::bitmask(R[t], C[t]);
    has_excl[t] = u(g) < spec.exclude_prob;
    if (has_excl[t])
      for (lori::index_t i = 0; i < R[t]; ++i)
        for (lori::index_t j = 0; j < C[t]; ++j)
          if (u(g) < 0.3) a.excl[t].set(i, j);
  }
  for (std::size_t t = 0; t < nt; ++t) {
    lori::calibration_tensor<T> ct;
    ct.name = "base_model.model.model.layers." + std::to_string(t / 7) + "." + projs[t % 7] + ".lora_B.weight";
    ct.values = lori::row_major_view<const T>(R[t] * C[t] == 0 && a.store[t].empty() ? nullptr : a.store[t].data(), R[t], C[t], LD[t]);
    ct.exclude = has_excl[t] ? &a.excl[t] : nullptr;
    a.tensors.push_back(std::move(ct));
  }
  return a;
}

}  // namespace lori_test

#endif
