// lori/merge/weighted_adapter.hpp - PEFT 0.21's LoraModel.add_weighted_adapter, per module and per
// model, number for number (see docs/merging.md for the formulas and when to use each).
//
// For adapters i = 1..n of one module with A_i (r_i x k), B_i (d x r_i), scaling s_i and weights w_i:
//   cat              A' = [w_1 s_1 A_1; ...; w_n s_n A_n] (rows), B' = [B_1 ... B_n] (columns), rank
//                    sum r_i, so B'A' = sum_i w_i s_i B_i A_i exactly. Ranks may differ.
//   linear, ties, dare_linear, dare_ties, magnitude_prune
//                    c_i = w_i s_i; A' = merge_task_tensors(method, {A_i}, {sign(c_i) sqrt|c_i|}),
//                    B' = merge_task_tensors(method, {B_i}, {sqrt|c_i|}) (sign(0) = +1). Equal ranks
//                    required. B'A' contains the cross terms sqrt|c_i| sqrt|c_j| B_i A_j, i != j.
//   svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd
//                    dW_i = s_i B_i A_i (scaling applied once, as PEFT >= 0.21 does);
//                    dW = merge_task_tensors(linear | ties | dare_linear | dare_ties | magnitude_prune,
//                    {dW_i}, {w_i}); truncated SVD dW ~ U S V^T of rank svd_rank (default: the largest
//                    r_i): A' = V^T (orthonormal rows), B' = U S; optional svd_clamp: hi =
//                    torch.quantile(concat(B', A'), svd_clamp), both clamped to [-hi, hi].
//                    Plain svd never forms d x k when sum r_i <= min(d, k): QR of [B_i] and [c_i A_i]^T
//                    and an SVD of the (sum r_i)^2 core, O((d + k)(sum r_i)^2).
// The merged module has scaling 1 (PEFT writes r = lora_alpha = new rank, use_rslora = false).
// With a single adapter every type becomes linear (PEFT does the same).
// LoRI-S: when every B_i carries a mask, cat's B' carries the column-concatenated mask and the linear
// family's B' the union of the masks (B' is zero outside it); svd results are dense (no mask).
// Singular vectors are unique up to sign: lori makes the largest-|.| entry of each row of A'
// positive; LAPACK/torch may choose the other sign (B'A' is the same; clamping is sign-dependent).
// Not reproduced: PEFT builds its weight tensor with torch.tensor() (float32) even for float64
// adapters; lori keeps the weights in double for T = double.
#ifndef LORI_MERGE_WEIGHTED_ADAPTER_HPP
#define LORI_MERGE_WEIGHTED_ADAPTER_HPP

#include "lori/config.hpp"
#include "lori/error.hpp"
#include "lori/mask/bitmask.hpp"
#include "lori/merge/adapter_module.hpp"
#include "lori/merge/task_tensors.hpp"
#include "lori/detail/merge_rng.hpp"
#include "lori/detail/merge_svd.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace lori {

/// PEFT's combination_type values.
enum class combination_type {
  cat,
  linear,
  ties,
  dare_linear,
  dare_ties,
  magnitude_prune,
  svd,
  ties_svd,
  dare_linear_svd,
  dare_ties_svd,
  magnitude_prune_svd
};

/// PEFT's name of a combination type ("cat", "linear", ..., "magnitude_prune_svd").
inline const char* to_string(combination_type t) noexcept {
  switch (t) {
    case combination_type::cat: return "cat";
    case combination_type::linear: return "linear";
    case combination_type::ties: return "ties";
    case combination_type::dare_linear: return "dare_linear";
    case combination_type::dare_ties: return "dare_ties";
    case combination_type::magnitude_prune: return "magnitude_prune";
    case combination_type::svd: return "svd";
    case combination_type::ties_svd: return "ties_svd";
    case combination_type::dare_linear_svd: return "dare_linear_svd";
    case combination_type::dare_ties_svd: return "dare_ties_svd";
    case combination_type::magnitude_prune_svd: return "magnitude_prune_svd";
  }
  return "?";
}

/// Parses PEFT's name of a combination type; throws lori::error for an unknown name.
inline combination_type combination_from_string(std::string_view s) {
  for (int i = 0; i <= static_cast<int>(combination_type::magnitude_prune_svd); ++i) {
    const auto t = static_cast<combination_type>(i);
    if (s == to_string(t)) return t;
  }
  detail::throw_expects("combination_from_string: unknown combination type", "name is one of PEFT's combination types");
}

/// Whether a combination type prunes (and therefore needs a density).
constexpr bool combination_needs_density(combination_type t) noexcept {
  return !(t == combination_type::cat || t == combination_type::linear || t == combination_type::svd);
}

/// Whether a combination type goes through the full deltas and a truncated SVD.
constexpr bool combination_is_svd(combination_type t) noexcept {
  return t == combination_type::svd || t == combination_type::ties_svd || t == combination_type::dare_linear_svd ||
         t == combination_type::dare_ties_svd || t == combination_type::magnitude_prune_svd;
}

/// Options of merge_adapters / merge_models (PEFT's add_weighted_adapter arguments).
struct merge_options {
  combination_type type = combination_type::svd;  ///< PEFT's default
  std::optional<double> density;                  ///< required by the pruning types; >= 1: no pruning
  majority_sign_method sign_method = majority_sign_method::total;
  index_t svd_rank = 0;                           ///< 0: the largest source rank
  std::optional<double> svd_clamp;                ///< quantile in [0, 1]
  std::uint64_t seed = 0;                         ///< DARE generator key
  std::uint64_t stream = 0;                       ///< DARE base stream (merge_models mixes in the module name)
};

/// Which tensors DARE draws for: the A's and B's of the linear family, or the full deltas (svd family).
enum class merge_tensor_kind : std::uint64_t { lora_A = 0xA, lora_B = 0xB, delta = 0xD };

/// DARE base stream that merge_adapters passes to merge_task_tensors for one tensor kind:
/// mix64(stream ^ kind); task tensor i then draws from dare_tensor_stream(that, i). Public so that
/// the draws can be reproduced (tests, audits).
inline std::uint64_t merge_dare_stream(std::uint64_t stream, merge_tensor_kind kind) noexcept {
  return detail::merge_mix64(stream ^ static_cast<std::uint64_t>(kind));
}

/// The DARE stream merge_models uses for a module: mix64(stream ^ fnv1a(name)).
inline std::uint64_t merge_module_stream(std::uint64_t stream, const std::string& module_name) noexcept {
  return detail::merge_mix64(stream ^ detail::merge_fnv1a(module_name.data(), module_name.size()));
}

namespace detail {

inline task_combination merge_task_of(combination_type t) {
  switch (t) {
    case combination_type::ties:
    case combination_type::ties_svd: return task_combination::ties;
    case combination_type::dare_linear:
    case combination_type::dare_linear_svd: return task_combination::dare_linear;
    case combination_type::dare_ties:
    case combination_type::dare_ties_svd: return task_combination::dare_ties;
    case combination_type::magnitude_prune:
    case combination_type::magnitude_prune_svd: return task_combination::magnitude_prune;
    default: return task_combination::linear;
  }
}

template <class T>
merge_mat_r<T> merge_to_eigen(row_major_view<const T> v) {
  merge_mat_r<T> m(v.rows(), v.cols());
  for (index_t i = 0; i < v.rows(); ++i)
    for (index_t j = 0; j < v.cols(); ++j) m(i, j) = v(i, j);
  return m;
}

/// Combines {X_i} (all rows x cols) element-wise into a new matrix.
template <class T>
merge_mat_r<T> merge_combine(task_combination method, const std::vector<merge_mat_r<T>>& xs, const std::vector<T>& w,
                             const task_merge_options& topt) {
  merge_mat_r<T> out(xs.front().rows(), xs.front().cols());
  std::vector<vector_view<const T>> views;
  for (const auto& x : xs) views.emplace_back(x.data(), static_cast<index_t>(x.size()));
  merge_task_tensors<T>(method, views, w, vector_view<T>(out.data(), static_cast<index_t>(out.size())), topt);
  return out;
}

template <class T>
adapter_module<T> merge_adapters_impl(const std::vector<adapter_module_view<T>>& adapters, const std::vector<double>& weights,
                                      merge_options opt, bool collapse_single, index_t default_svd_rank) {
  const std::size_t n = adapters.size();
  LORI_EXPECTS(n >= 1, "merge_adapters: need at least one adapter");
  LORI_EXPECTS(weights.size() == n, "merge_adapters: one weight per adapter");
  for (double w : weights) LORI_EXPECTS(std::isfinite(w), "merge_adapters: weights must be finite");
  for (const auto& a : adapters) check_adapter_module(a, "merge_adapters: inconsistent adapter module");
  const index_t d = adapters[0].out_features(), k = adapters[0].in_features();
  for (const auto& a : adapters)
    LORI_EXPECTS(a.out_features() == d && a.in_features() == k, "merge_adapters: adapters must adapt the same d x k weight");
  if (collapse_single && n == 1) opt.type = combination_type::linear;
  const combination_type type = opt.type;
  if (combination_needs_density(type)) LORI_EXPECTS(opt.density.has_value(), "merge_adapters: this combination type needs a density");
  const double density = opt.density.value_or(1.0);
  LORI_EXPECTS(density >= 0.0, "merge_adapters: density must be >= 0 (and not NaN)");
  if (opt.svd_clamp)
    LORI_EXPECTS(*opt.svd_clamp >= 0.0 && *opt.svd_clamp <= 1.0, "merge_adapters: svd_clamp must be a quantile in [0, 1]");
  const bool all_masked = std::all_of(adapters.begin(), adapters.end(), [](const auto& a) { return a.b_mask != nullptr; });

  adapter_module<T> out;
  out.scaling = 1.0;

  if (type == combination_type::cat) {
    index_t R = 0;
    for (const auto& a : adapters) R += a.rank();
    out.A.resize(R, k);
    out.B.resize(d, R);
    if (all_masked) out.b_mask = bitmask(d, R);
    index_t off = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& a = adapters[i];
      const T w = static_cast<T>(weights[i]), s = static_cast<T>(a.scaling);
      for (index_t r = 0; r < a.rank(); ++r)
        for (index_t j = 0; j < k; ++j) out.A(off + r, j) = a.A(r, j) * w * s;  // torch: (A * weight) * scaling
      for (index_t row = 0; row < d; ++row)
        for (index_t r = 0; r < a.rank(); ++r) {
          out.B(row, off + r) = a.B(row, r);
          if (all_masked && a.b_mask->view().test(row, r)) out.b_mask->set(row, off + r);
        }
      off += a.rank();
    }
    return out;
  }

  if (!combination_is_svd(type)) {
    const index_t r = adapters[0].rank();
    for (const auto& a : adapters)
      LORI_EXPECTS(a.rank() == r, "merge_adapters: linear, ties, dare_linear, dare_ties and magnitude_prune need equal ranks");
    std::vector<T> wa(n), wb(n);
    for (std::size_t i = 0; i < n; ++i) {
      const double c = weights[i] * adapters[i].scaling;
      const double sq = std::sqrt(std::abs(c));
      wa[i] = static_cast<T>(c >= 0.0 ? sq : -sq);
      wb[i] = static_cast<T>(sq);
    }
    std::vector<merge_mat_r<T>> As, Bs;
    for (const auto& a : adapters) {
      As.push_back(merge_to_eigen(a.A));
      Bs.push_back(merge_to_eigen(a.B));
    }
    const task_combination method = merge_task_of(type);
    task_merge_options topt;
    topt.density = density;
    topt.sign_method = opt.sign_method;
    topt.seed = opt.seed;
    topt.stream = merge_dare_stream(opt.stream, merge_tensor_kind::lora_A);
    out.A = merge_combine(method, As, wa, topt);
    topt.stream = merge_dare_stream(opt.stream, merge_tensor_kind::lora_B);
    out.B = merge_combine(method, Bs, wb, topt);
    if (all_masked) {
      out.b_mask = *adapters[0].b_mask;
      for (std::size_t i = 1; i < n; ++i) *out.b_mask |= *adapters[i].b_mask;
    }
    return out;
  }

  // SVD family.
  index_t rmax = 0, R = 0;
  for (const auto& a : adapters) {
    rmax = std::max(rmax, a.rank());
    R += a.rank();
  }
  LORI_EXPECTS(opt.svd_rank >= 0, "merge_adapters: svd_rank must be >= 0 (0: largest source rank)");
  const index_t rank = opt.svd_rank > 0 ? opt.svd_rank : (default_svd_rank > 0 ? default_svd_rank : rmax);
  LORI_EXPECTS(rank >= 1 && rank <= std::min(d, k), "merge_adapters: svd rank must be in [1, min(d, k)]");
  // Without pruning (density >= 1) dare_linear_svd and magnitude_prune_svd are the plain weighted sum,
  // exactly svd: take the low-rank path too.
  const bool plain = type == combination_type::svd ||
                     (density >= 1.0 && (type == combination_type::dare_linear_svd || type == combination_type::magnitude_prune_svd));
  if (plain && R <= std::min(d, k)) {
    merge_mat_c<T> Bc(d, R), AcT(k, R);
    index_t off = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& a = adapters[i];
      const T c = static_cast<T>(weights[i] * a.scaling);
      for (index_t row = 0; row < d; ++row)
        for (index_t r = 0; r < a.rank(); ++r) Bc(row, off + r) = a.B(row, r);
      for (index_t r = 0; r < a.rank(); ++r)
        for (index_t j = 0; j < k; ++j) AcT(j, off + r) = a.A(r, j) * c;
      off += a.rank();
    }
    merge_svd_lowrank<T>(Bc, AcT, rank, opt.svd_clamp, out.A, out.B);
    return out;
  }
  std::vector<merge_mat_r<T>> dWs;
  std::vector<T> w(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& a = adapters[i];
    merge_mat_r<T> BA = merge_to_eigen(a.B) * merge_to_eigen(a.A);  // get_delta_weight: (B @ A) * scaling
    dWs.push_back(BA * static_cast<T>(a.scaling));
    w[i] = static_cast<T>(weights[i]);
  }
  task_merge_options topt;
  topt.density = density;
  topt.sign_method = opt.sign_method;
  topt.seed = opt.seed;
  topt.stream = merge_dare_stream(opt.stream, merge_tensor_kind::delta);
  const merge_mat_r<T> dW = merge_combine(merge_task_of(type), dWs, w, topt);
  merge_svd_dense<T>(dW, rank, opt.svd_clamp, out.A, out.B);
  return out;
}

}  // namespace detail

/// Merges n adapters of one module (PEFT add_weighted_adapter for one target layer).
/// adapters: views of the n modules (same d and k); weights: w_1..w_n (any sign); opt: see merge_options.
/// Returns the merged module (scaling 1; mask as described in the header comment).
/// Throws lori::error: no adapters, weight count mismatch, non-finite weight, shape mismatch, unequal
/// ranks for the linear family, missing/negative density for a pruning type, DARE with density 0,
/// svd rank outside [1, min(d, k)], svd_clamp outside [0, 1], NaN under magnitude pruning.
/// Cost: cat/linear O(n (d + k) r); pruning types add O(n (d + k) r) selection; svd O((d + k) R^2) with
/// R = sum r_i (R <= min(d, k)); the *_svd pruning types form n dense d x k deltas and a dense SVD.
template <class T>
adapter_module<T> merge_adapters(const std::vector<adapter_module_view<T>>& adapters, const std::vector<double>& weights,
                                 const merge_options& opt) {
  return detail::merge_adapters_impl<T>(adapters, weights, opt, /*collapse_single=*/true, 0);
}

/// Merges n adapter models module by module, as add_weighted_adapter does for a whole PEFT model:
/// the result has every module that any input has; a module is merged from the adapters that have it
/// (with their weights). With a single model every type becomes linear. The svd rank default is the
/// largest rank over all modules of all inputs (PEFT: the largest config rank). DARE streams mix the
/// module name's FNV-1a hash into opt.stream, so modules draw independently and reproducibly.
/// Differences from PEFT: cat does not zero-pad modules that some adapters lack to the global rank
/// (B'A' is identical). Throws as merge_adapters, plus: no models, null model, weight count mismatch.
template <class T>
adapter_model<T> merge_models(const std::vector<const adapter_model<T>*>& models, const std::vector<double>& weights,
                              const merge_options& opt) {
  LORI_EXPECTS(!models.empty(), "merge_models: need at least one model");
  LORI_EXPECTS(weights.size() == models.size(), "merge_models: one weight per model");
  for (const auto* m : models) LORI_EXPECTS(m != nullptr, "merge_models: null model");
  std::set<std::string> names;
  index_t rmax = 0;
  for (const auto* m : models)
    for (const auto& kv : *m) {
      names.insert(kv.first);
      rmax = std::max(rmax, kv.second.rank());
    }
  adapter_model<T> out;
  for (const auto& name : names) {
    std::vector<adapter_module_view<T>> views;
    std::vector<double> w;
    for (std::size_t i = 0; i < models.size(); ++i) {
      const auto it = models[i]->find(name);
      if (it == models[i]->end()) continue;
      views.push_back(it->second.view());
      w.push_back(weights[i]);
    }
    merge_options o = opt;
    o.stream = merge_module_stream(opt.stream, name);
    out.emplace(name, detail::merge_adapters_impl<T>(views, w, o, /*collapse_single=*/models.size() == 1, rmax));
  }
  return out;
}

}  // namespace lori

#endif  // LORI_MERGE_WEIGHTED_ADAPTER_HPP
