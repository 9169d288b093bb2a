// lori/mask/grouping.hpp - which tensors share a calibration threshold.
//
// LoRI-S calibrates one magnitude threshold per group of B tensors. The reference (extract_mask.py)
// offers these granularities, all derived from the PEFT parameter names:
//   model       one group: every tensor (LoRI's default, a global threshold)
//   layer       one group per transformer layer index   ("...layers.<i>....")
//   module      attention vs MLP                         ("...self_attn..." / "...mlp...")
//   projection  one group per projection name across layers (q_proj, k_proj, ..., down_proj)
//   matrix      every tensor alone
// parse_peft_name() extracts the layer index, module kind and projection name from a PEFT-style name
// such as "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight" (also "layer.<i>",
// "h.<i>", "blocks.<i>"; "attn"/"attention"/"self_attention"; "mlp"/"feed_forward"/"ffn"). Callers with
// other naming schemes pass their own grouping function (name -> group label).
#ifndef LORI_MASK_GROUPING_HPP
#define LORI_MASK_GROUPING_HPP

#include "lori/config.hpp"
#include "lori/error.hpp"

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lori {

/// How tensors are grouped for calibration (one threshold per group).
enum class mask_granularity { model, layer, module, projection, matrix };

/// Short lower-case name of a granularity ("model", "layer", ...).
inline const char* to_string(mask_granularity g) noexcept {
  switch (g) {
    case mask_granularity::model: return "model";
    case mask_granularity::layer: return "layer";
    case mask_granularity::module: return "module";
    case mask_granularity::projection: return "projection";
    case mask_granularity::matrix: return "matrix";
  }
  return "?";
}

/// What a PEFT-style parameter name says about its place in the model.
struct peft_name_info {
  index_t layer = -1;      ///< transformer layer index, -1 when the name has none
  std::string module;      ///< "attention", "mlp", or "" when neither is recognised
  std::string projection;  ///< e.g. "q_proj": the path component before lora_A/lora_B/weight
};

namespace detail {
inline std::vector<std::string_view> split_dots(std::string_view s) {
  std::vector<std::string_view> parts;
  std::size_t b = 0;
  while (b <= s.size()) {
    const std::size_t e = s.find('.', b);
    const std::size_t end = e == std::string_view::npos ? s.size() : e;
    parts.push_back(s.substr(b, end - b));
    if (e == std::string_view::npos) break;
    b = e + 1;
  }
  return parts;
}
inline bool all_digits(std::string_view s) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}
}  // namespace detail

/// Parses a PEFT-style name. Never throws; fields it cannot find stay at their defaults.
/// Layer: the integer after a "layers" / "layer" / "h" / "blocks" / "block" component.
/// Module: "attention" if a component is self_attn / attn / attention / self_attention,
/// "mlp" if one is mlp / feed_forward / ffn. Projection: the component before the first
/// "lora_A" / "lora_B" / "lora_embedding_A" / "lora_embedding_B" / "weight" component, or the last one.
inline peft_name_info parse_peft_name(std::string_view name) {
  peft_name_info info;
  const auto parts = detail::split_dots(name);
  std::size_t proj_at = parts.size();  // index of the projection component + 1
  for (std::size_t p = 0; p < parts.size(); ++p) {
    const std::string_view c = parts[p];
    if (info.layer < 0 && (c == "layers" || c == "layer" || c == "h" || c == "blocks" || c == "block") &&
        p + 1 < parts.size() && detail::all_digits(parts[p + 1]))
      info.layer = std::stoll(std::string(parts[p + 1]));
    if (info.module.empty()) {
      if (c == "self_attn" || c == "attn" || c == "attention" || c == "self_attention") info.module = "attention";
      else if (c == "mlp" || c == "feed_forward" || c == "ffn") info.module = "mlp";
    }
    if (proj_at == parts.size() && p > 0 &&
        (c == "lora_A" || c == "lora_B" || c == "lora_embedding_A" || c == "lora_embedding_B" || c == "weight"))
      proj_at = p;
  }
  if (proj_at > 0 && proj_at <= parts.size()) info.projection = std::string(parts[proj_at - 1]);
  return info;
}

/// A caller-supplied grouping: tensor name -> group label (tensors with equal labels share a threshold).
using mask_group_function = std::function<std::string(std::string_view name)>;

/// Group label of `name` at granularity g: "model"; "layer.<i>"; "attention"/"mlp"; the projection
/// name; or the name itself (matrix). Throws lori::error naming the tensor when the granularity needs
/// a field the name does not have (e.g. layer granularity and no "layers.<i>" component).
inline std::string mask_group_label(std::string_view name, mask_granularity g) {
  if (g == mask_granularity::model) return "model";
  if (g == mask_granularity::matrix) return std::string(name);
  const peft_name_info info = parse_peft_name(name);
  std::string why;
  if (g == mask_granularity::layer) {
    if (info.layer >= 0) return "layer." + std::to_string(info.layer);
    why = "no layer index (expected a component 'layers.<i>')";
  } else if (g == mask_granularity::module) {
    if (!info.module.empty()) return info.module;
    why = "no module kind (expected a component such as 'self_attn' or 'mlp')";
  } else {
    if (!info.projection.empty()) return info.projection;
    why = "no projection name";
  }
  throw ::lori::error("mask_group_label: cannot group tensor '" + std::string(name) + "' by " + to_string(g) + ": " + why);
}

/// Groups of a list of tensor names: group index per tensor (groups numbered by first appearance)
/// and the label of each group. `custom`, when set, replaces the granularity.
struct mask_groups {
  std::vector<index_t> group_of;    ///< one entry per tensor
  std::vector<std::string> labels;  ///< one entry per group
  index_t count() const noexcept { return static_cast<index_t>(labels.size()); }
};

/// Assigns every name to its group (see mask_group_label); throws lori::error as mask_group_label does.
inline mask_groups assign_mask_groups(const std::vector<std::string>& names, mask_granularity g,
                                      const mask_group_function& custom = {}) {
  mask_groups out;
  out.group_of.reserve(names.size());
  std::unordered_map<std::string, index_t> index;
  for (const auto& n : names) {
    std::string label = custom ? custom(n) : mask_group_label(n, g);
    auto it = index.find(label);
    if (it == index.end()) {
      it = index.emplace(label, static_cast<index_t>(out.labels.size())).first;
      out.labels.push_back(std::move(label));
    }
    out.group_of.push_back(it->second);
  }
  return out;
}

}  // namespace lori

#endif  // LORI_MASK_GROUPING_HPP
