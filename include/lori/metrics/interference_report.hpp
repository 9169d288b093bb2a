// lori/metrics/interference_report.hpp - interference of n adapter models, per module, per layer and
// overall.
//
// analyze_interference() runs compute_module_interference (lori/metrics/interference.hpp) on every
// module that all n models adapt, then aggregates per layer (the first all-digit component of the
// module name, e.g. 3 in "model.layers.3.mlp.up_proj"; -1 when there is none) and overall. Aggregates
// weight each module by its parameter count d * k (the size of the weight it adapts):
//   mean_cos2, delta_cosine, abs_delta_cosine, mask_jaccard, cross_term_energy: weighted means
//   (mask_jaccard over modules where both B's carry masks, cross_term_energy over modules where it
//   is finite);
//   max_cos: the largest over the group.
#ifndef LORI_METRICS_INTERFERENCE_REPORT_HPP
#define LORI_METRICS_INTERFERENCE_REPORT_HPP

#include "lori/config.hpp"
#include "lori/error.hpp"
#include "lori/merge/adapter_module.hpp"
#include "lori/metrics/interference.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace lori {

/// Aggregated metrics of one adapter pair (i < j) over a group of modules.
struct pair_summary {
  std::size_t i = 0, j = 0;
  double mean_cos2 = 0;         ///< weighted mean of the modules' mean_cos2
  double max_cos = 0;           ///< largest max_cos in the group
  double delta_cosine = 0;      ///< weighted mean of delta cosines
  double abs_delta_cosine = 0;  ///< weighted mean of |delta cosine|
  double mask_jaccard = 0;      ///< weighted mean Jaccard over masked modules (0 if none)
  double weight = 0;            ///< sum of d * k over the group
  double mask_weight = 0;       ///< sum of d * k over the masked modules
};

/// Aggregates of a group of modules (a layer, or the whole model).
struct group_summary {
  std::vector<pair_summary> pairs;  ///< (0,1), (0,2), ..., one per adapter pair
  double cross_term_energy = 0;     ///< weighted mean over modules with a finite value
  double cross_weight = 0;          ///< sum of d * k over those modules
  double weight = 0;                ///< sum of d * k over the group
  index_t modules = 0;              ///< number of modules
};

/// One analysed module.
struct module_report {
  std::string name;
  index_t layer = -1;
  index_t out_features = 0, in_features = 0;
  module_interference metrics;
};

/// The full report.
struct interference_report {
  std::vector<module_report> modules;       ///< modules adapted by every model, in name order
  std::map<index_t, group_summary> layers;  ///< layer index -> aggregates (-1: names without a layer index)
  group_summary overall;
};

/// Layer index of a module name: the first '.'-separated component made only of digits; -1 if none.
inline index_t module_layer_index(const std::string& name) {
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t end = name.find('.', start);
    if (end == std::string::npos) end = name.size();
    if (end > start) {
      bool digits = true;
      for (std::size_t c = start; c < end; ++c) digits = digits && std::isdigit(static_cast<unsigned char>(name[c]));
      if (digits && end - start <= 18) return static_cast<index_t>(std::stoll(name.substr(start, end - start)));
    }
    start = end + 1;
  }
  return -1;
}

namespace detail {
inline void report_accumulate(group_summary& g, std::size_t n, const module_interference& m, double w) {
  if (g.pairs.empty())
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) {
        pair_summary p;
        p.i = i;
        p.j = j;
        g.pairs.push_back(p);
      }
  for (std::size_t t = 0; t < m.pairs.size(); ++t) {
    auto& p = g.pairs[t];
    const auto& q = m.pairs[t];
    p.mean_cos2 += w * q.mean_cos2;
    p.max_cos = std::max(p.max_cos, q.max_cos);
    p.delta_cosine += w * q.delta_cosine;
    p.abs_delta_cosine += w * std::abs(q.delta_cosine);
    if (q.has_masks) {
      p.mask_jaccard += w * q.masks.jaccard;
      p.mask_weight += w;
    }
    p.weight += w;
  }
  if (std::isfinite(m.cross_term_energy)) {
    g.cross_term_energy += w * m.cross_term_energy;
    g.cross_weight += w;
  }
  g.weight += w;
  g.modules += 1;
}

inline void report_finish(group_summary& g) {
  for (auto& p : g.pairs) {
    if (p.weight > 0) {
      p.mean_cos2 /= p.weight;
      p.delta_cosine /= p.weight;
      p.abs_delta_cosine /= p.weight;
    }
    if (p.mask_weight > 0) p.mask_jaccard /= p.mask_weight;
  }
  if (g.cross_weight > 0) g.cross_term_energy /= g.cross_weight;
}
}  // namespace detail

/// Interference of n >= 1 adapter models (pointers must be non-null) with merge weights (used by the
/// cross-term energy). Modules missing from any model are skipped. Cost: the sum of the modules'
/// compute_module_interference costs, O(n^2 (d + k) r^2) each. Throws lori::error on count mismatch,
/// null models, or inconsistent modules.
template <class T>
interference_report analyze_interference(const std::vector<const adapter_model<T>*>& models, const std::vector<double>& weights) {
  LORI_EXPECTS(!models.empty(), "analyze_interference: need at least one model");
  LORI_EXPECTS(weights.size() == models.size(), "analyze_interference: one weight per model");
  for (const auto* m : models) LORI_EXPECTS(m != nullptr, "analyze_interference: null model");
  const std::size_t n = models.size();
  interference_report rep;
  for (const auto& kv : *models[0]) {
    std::vector<adapter_module_view<T>> views;
    views.push_back(kv.second.view());
    for (std::size_t i = 1; i < n; ++i) {
      const auto it = models[i]->find(kv.first);
      if (it == models[i]->end()) break;
      views.push_back(it->second.view());
    }
    if (views.size() != n) continue;
    module_report mr;
    mr.name = kv.first;
    mr.layer = module_layer_index(kv.first);
    mr.out_features = kv.second.out_features();
    mr.in_features = kv.second.in_features();
    mr.metrics = compute_module_interference<T>(views, weights);
    const double w = static_cast<double>(mr.out_features) * static_cast<double>(mr.in_features);
    detail::report_accumulate(rep.layers[mr.layer], n, mr.metrics, w);
    detail::report_accumulate(rep.overall, n, mr.metrics, w);
    rep.modules.push_back(std::move(mr));
  }
  for (auto& kv : rep.layers) detail::report_finish(kv.second);
  detail::report_finish(rep.overall);
  return rep;
}

}  // namespace lori

#endif  // LORI_METRICS_INTERFERENCE_REPORT_HPP
