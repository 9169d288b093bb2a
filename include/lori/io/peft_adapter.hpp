// lori/io/peft_adapter.hpp - PEFT LoRA adapter folders (adapter_config.json + adapter_model.safetensors).
//
// Reading follows PEFT 0.21:
//   * tensors "base_model.model.<module>.lora_A.weight" (r x in) and ".lora_B.weight" (out x r) give
//     the module "<module>" (the base model's module path, e.g. "model.layers.0.self_attn.q_proj");
//   * each module's rank and alpha come from rank_pattern / alpha_pattern when a key matches, exactly
//     as peft.utils.other.get_pattern_key does: the FIRST key (in file order) for which
//     re.match(r"(.*\.)?(" + key + r")$", module) matches wins, else r / lora_alpha (keys matched as
//     POSIX extended regexes, see peft_pattern_key);
//   * scaling = alpha / r, or alpha / sqrt(r) with use_rslora (LoraLayer.update_layer).
//   * fan_in_fan_out (GPT-2 Conv1D) does not change A and B; it means the base weight is stored
//     transposed (in x out), so the delta added to it is (s B A)^T.
// Features lori does not implement are refused with a message naming them (DoRA, lora_bias,
// non-LORA peft_type, modules_to_save, trainable tokens, aLoRA, QALoRA, target_parameters,
// layer_replication, embedding/conv LoRA tensors, any unknown tensor key).
//
// Writing produces folders PEFT 0.21 loads with PeftModel.from_pretrained: the adapter's config
// (kept field by field from the folder it came from, when it came from one) with r / lora_alpha set
// to the most common rank and its alpha, and rank_pattern / alpha_pattern entries for modules that
// differ; tensors under the same keys. Files are written atomically.
//
// Requires nlohmann-json.
#ifndef LORI_IO_PEFT_ADAPTER_HPP
#define LORI_IO_PEFT_ADAPTER_HPP

#include "lori/config.hpp"
#include "lori/error.hpp"
#include "lori/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#if defined(__unix__) || defined(__APPLE__)
#include <regex.h>
#define LORI_IO_HAS_POSIX_REGEX 1
#else
#include <regex>
#define LORI_IO_HAS_POSIX_REGEX 0
#endif
#include <string>
#include <utility>
#include <vector>

namespace lori::io {

/// One adapted module: Delta W = scaling * B * A (out x in).
struct lora_module {
  std::string name;          ///< module path in the base model, e.g. "model.layers.0.self_attn.q_proj"
  index_t rank = 0;          ///< r
  index_t in_features = 0;   ///< k (columns of A)
  index_t out_features = 0;  ///< d (rows of B)
  double alpha = 0;          ///< lora_alpha for this module (after alpha_pattern)
  double scaling = 0;        ///< alpha / r, or alpha / sqrt(r) with use_rslora
  dtype stored_type = dtype::F32;  ///< dtype of A and B in the file (kept when written back)
  std::vector<float> A;      ///< r x k, row-major
  std::vector<float> B;      ///< d x r, row-major

  /// Number of trainable parameters (r*k + d*r).
  index_t parameter_count() const noexcept { return rank * in_features + out_features * rank; }
};

/// The safetensors key of a module's A or B ("base_model.model.<module>.lora_A.weight").
inline std::string peft_key(const std::string& module, char which) {
  return "base_model.model." + module + (which == 'A' ? ".lora_A.weight" : ".lora_B.weight");
}

/// PEFT's get_pattern_key: the first key (in the given order) that matches `module` as
/// re.match(r"(.*\.)?(key)$"), or an empty string when none does. Keys are regular expressions, matched
/// as POSIX extended regular expressions (regcomp; std::regex ECMAScript where POSIX regex is not
/// available), which agree with Python's re on the patterns PEFT users write (literals, '.', '\.',
/// '*', '+', '?', '|', groups, classes); Python-only syntax such as (?:...) or \d is refused as
/// invalid rather than matched differently. Throws lori::error for an invalid or over-long
/// (> 512 chars) pattern.
inline std::string peft_pattern_key(const std::vector<std::string>& keys, const std::string& module) {
  for (const auto& key : keys) {
    if (key.size() > 512 || module.size() > 4096) detail::io_fail("rank/alpha pattern '" + key.substr(0, 64) + "': pattern or module name too long");
    if (key.find('\0') != std::string::npos) detail::io_fail("rank/alpha pattern contains a NUL byte");
#if LORI_IO_HAS_POSIX_REGEX
    regex_t re;
    const std::string full = "^(.*\\.)?(" + key + ")$";
    const int rc = ::regcomp(&re, full.c_str(), REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
      char buf[256];
      ::regerror(rc, &re, buf, sizeof buf);
      detail::io_fail("rank/alpha pattern '" + key + "' is not a valid regular expression: " + buf);
    }
    const bool hit = ::regexec(&re, module.c_str(), 0, nullptr, 0) == 0;
    ::regfree(&re);
    if (hit) return key;
#else
    try {
      const std::regex re("(.*\\.)?(" + key + ")");
      if (std::regex_match(module, re)) return key;
    } catch (const std::regex_error& e) {
      detail::io_fail("rank/alpha pattern '" + key + "' is not a valid regular expression: " + e.what());
    }
#endif
  }
  return {};
}

/// The fields of adapter_config.json lori interprets, plus the whole document (kept, in order, so
/// that writing back preserves every other field).
struct peft_config {
  index_t r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  bool fan_in_fan_out = false;
  std::vector<std::pair<std::string, index_t>> rank_pattern;  ///< in file order
  std::vector<std::pair<std::string, double>> alpha_pattern;  ///< in file order
  nlohmann::ordered_json target_modules;                      ///< list of names, a regex string, or null
  nlohmann::ordered_json raw = nlohmann::ordered_json::object();

  /// Rank and alpha of `module` after rank_pattern / alpha_pattern (PEFT's _create_and_replace).
  std::pair<index_t, double> rank_alpha(const std::string& module) const {
    std::vector<std::string> rk, ak;
    for (const auto& p : rank_pattern) rk.push_back(p.first);
    for (const auto& p : alpha_pattern) ak.push_back(p.first);
    index_t rr = r;
    double aa = lora_alpha;
    const std::string kr = peft_pattern_key(rk, module), ka = peft_pattern_key(ak, module);
    for (const auto& p : rank_pattern)
      if (!kr.empty() && p.first == kr) { rr = p.second; break; }
    for (const auto& p : alpha_pattern)
      if (!ka.empty() && p.first == ka) { aa = p.second; break; }
    return {rr, aa};
  }

  /// PEFT's scaling for a module of rank r and alpha a.
  double scaling_for(index_t rank, double alpha) const { return use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank); }

  /// Parses adapter_config.json text; `where` names the file in errors. Throws lori::error for
  /// malformed JSON, wrong field types and unsupported PEFT features.
  static peft_config parse(const std::string& text, const std::string& where);
};

/// A PEFT LoRA adapter: its config and its modules, sorted by name.
struct peft_adapter {
  peft_config config;
  std::vector<lora_module> modules;

  const lora_module* find(const std::string& module) const noexcept {
    for (const auto& m : modules)
      if (m.name == module) return &m;
    return nullptr;
  }
  lora_module* find(const std::string& module) noexcept {
    for (auto& m : modules)
      if (m.name == module) return &m;
    return nullptr;
  }
  /// Total trainable parameters.
  index_t parameter_count() const noexcept {
    index_t n = 0;
    for (const auto& m : modules) n += m.parameter_count();
    return n;
  }
};

/// Reads a PEFT adapter folder (adapter_config.json + adapter_model.safetensors). Tensors of any
/// real dtype are converted to float (bf16/f16 exactly). Throws lori::error naming the file and the
/// module on any inconsistency (missing A or B, rank mismatch with the config, unknown keys).
peft_adapter load_peft_adapter(const std::string& dir);

/// Writes `adapter` as a PEFT folder `dir` (created if missing). A and B are written in each
/// module's stored_type (float -> bf16/f16 rounds to nearest even). Each file is written atomically.
void save_peft_adapter(const peft_adapter& adapter, const std::string& dir);

/// The adapter_config.json text save_peft_adapter writes for `adapter`.
std::string peft_config_json(const peft_adapter& adapter);

// ---- implementation --------------------------------------------------------------------------------

inline peft_config peft_config::parse(const std::string& text, const std::string& where) {
  std::size_t deep_at = 0;
  if (detail::json_max_depth(text, 64, deep_at) > 64) detail::io_fail(where + ": JSON nested deeper than 64 levels at byte offset " + std::to_string(deep_at));
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    detail::io_fail(where + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) detail::io_fail(where + ": top level is not a JSON object");
  peft_config c;
  auto get = [&](const char* key) -> const nlohmann::ordered_json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  auto flag = [&](const char* key) {
    const auto* v = get(key);
    if (v == nullptr) return false;
    if (!v->is_boolean()) detail::io_fail(where + ": field '" + key + "' must be true or false");
    return v->get<bool>();
  };
  auto positive_int = [&](const nlohmann::ordered_json& v, const std::string& what) -> index_t {
    if (!v.is_number_integer() || v.get<long long>() <= 0 || v.get<long long>() > (1LL << 40))
      detail::io_fail(where + ": " + what + " must be a positive integer");
    return static_cast<index_t>(v.get<long long>());
  };
  auto finite_number = [&](const nlohmann::ordered_json& v, const std::string& what) -> double {
    if (!v.is_number() || !std::isfinite(v.get<double>())) detail::io_fail(where + ": " + what + " must be a finite number");
    return v.get<double>();
  };
  if (const auto* pt = get("peft_type")) {
    if (!pt->is_string()) detail::io_fail(where + ": field 'peft_type' must be a string");
    if (pt->get<std::string>() != "LORA") detail::peft_refuse(where, "peft_type '" + pt->get<std::string>() + "' (only LORA)");
  }
  if (flag("use_dora")) detail::peft_refuse(where, "DoRA (use_dora: true)");
  if (flag("lora_bias")) detail::peft_refuse(where, "lora_bias: true");
  if (flag("use_qalora")) detail::peft_refuse(where, "QALoRA (use_qalora: true)");
  if (flag("use_bdlora")) detail::peft_refuse(where, "use_bdlora");
  for (const char* key : {"alora_invocation_tokens", "target_parameters", "layer_replication", "trainable_token_indices", "modules_to_save", "megatron_config"}) {
    const auto* v = get(key);
    if (v != nullptr && !(v->is_array() && v->empty()) && !(v->is_object() && v->empty())) detail::peft_refuse(where, std::string("'") + key + "'");
  }
  if (const auto* v = get("r")) c.r = positive_int(*v, "'r'");
  if (const auto* v = get("lora_alpha")) c.lora_alpha = finite_number(*v, "'lora_alpha'");  // absent: PEFT's default 8
  c.use_rslora = flag("use_rslora");
  c.fan_in_fan_out = flag("fan_in_fan_out");
  if (const auto* v = get("rank_pattern")) {
    if (!v->is_object()) detail::io_fail(where + ": 'rank_pattern' must be an object");
    for (auto it = v->begin(); it != v->end(); ++it) c.rank_pattern.emplace_back(it.key(), positive_int(it.value(), "rank_pattern['" + it.key() + "']"));
  }
  if (const auto* v = get("alpha_pattern")) {
    if (!v->is_object()) detail::io_fail(where + ": 'alpha_pattern' must be an object");
    for (auto it = v->begin(); it != v->end(); ++it) c.alpha_pattern.emplace_back(it.key(), finite_number(it.value(), "alpha_pattern['" + it.key() + "']"));
  }
  if (const auto* v = get("target_modules")) {
    if (!v->is_string() && !v->is_array()) detail::io_fail(where + ": 'target_modules' must be a list of names or a regex string");
    if (v->is_array())
      for (const auto& e : *v)
        if (!e.is_string()) detail::io_fail(where + ": 'target_modules' entries must be strings");
    c.target_modules = *v;
  }
  c.raw = std::move(j);
  return c;
}

inline peft_adapter load_peft_adapter(const std::string& dir) {
  const std::string cfg_path = dir + "/adapter_config.json";
  const std::string st_path = dir + "/adapter_model.safetensors";
  peft_adapter ad;
  ad.config = peft_config::parse(detail::read_text_file(cfg_path, 16u << 20), cfg_path);
  const auto file = safetensors_file::open(st_path);
  static const std::string prefix = "base_model.model.";
  std::map<std::string, std::pair<const tensor_info*, const tensor_info*>> found;
  for (const auto& t : file.tensors()) {
    const std::string& key = t.name;
    auto ends_with = [&](const std::string& s) { return key.size() > s.size() && key.compare(key.size() - s.size(), s.size(), s) == 0; };
    const bool is_a = ends_with(".lora_A.weight"), is_b = ends_with(".lora_B.weight");
    if (key.find("lora_embedding_") != std::string::npos) detail::peft_refuse(st_path, "embedding LoRA (tensor '" + key + "')");
    if (ends_with(".lora_B.bias")) detail::peft_refuse(st_path, "lora_bias (tensor '" + key + "')");
    if (key.find("lora_magnitude_vector") != std::string::npos) detail::peft_refuse(st_path, "DoRA (tensor '" + key + "')");
    if ((!is_a && !is_b) || key.compare(0, prefix.size(), prefix) != 0)
      detail::io_fail(st_path + ": tensor '" + key + "' is not a LoRA weight 'base_model.model.<module>.lora_A.weight' / '.lora_B.weight'");
    const std::string module = key.substr(prefix.size(), key.size() - prefix.size() - std::string(".lora_A.weight").size());
    if (module.empty()) detail::io_fail(st_path + ": tensor '" + key + "' has an empty module name");
    (is_a ? found[module].first : found[module].second) = &t;
  }
  for (const auto& [name, ab] : found) {
    const std::string where = st_path + ": module '" + name + "'";
    if (ab.first == nullptr) detail::io_fail(where + ": lora_B without lora_A");
    if (ab.second == nullptr) detail::io_fail(where + ": lora_A without lora_B");
    const tensor_info& A = *ab.first;
    const tensor_info& B = *ab.second;
    if (A.shape.size() != 2 || B.shape.size() != 2) detail::io_fail(where + ": lora_A and lora_B must be 2-D (conv LoRA is not supported)");
    for (const tensor_info* t : {&A, &B})
      if (t->type != dtype::F32 && t->type != dtype::F16 && t->type != dtype::BF16 && t->type != dtype::F64)
        detail::io_fail(where + ": tensor '" + t->name + "' has dtype " + dtype_name(t->type) + "; LoRA weights must be F32, F16, BF16 or F64");
    lora_module m;
    m.name = name;
    m.rank = A.shape[0];
    m.in_features = A.shape[1];
    m.out_features = B.shape[0];
    if (B.shape[1] != m.rank)
      detail::io_fail(where + ": rank mismatch: lora_A is " + std::to_string(A.shape[0]) + "x" + std::to_string(A.shape[1]) + " but lora_B is " +
                      std::to_string(B.shape[0]) + "x" + std::to_string(B.shape[1]));
    if (m.rank <= 0) detail::io_fail(where + ": rank must be positive");
    const auto [cr, ca] = ad.config.rank_alpha(name);
    if (cr != m.rank)
      detail::io_fail(where + ": tensors have rank " + std::to_string(m.rank) + " but adapter_config.json gives r = " + std::to_string(cr) + " for this module");
    m.alpha = ca;
    m.scaling = ad.config.scaling_for(m.rank, ca);
    m.stored_type = A.type == dtype::F64 ? dtype::F32 : A.type;
    m.A = file.read<float>(A);
    m.B = file.read<float>(B);
    ad.modules.push_back(std::move(m));
  }
  return ad;
}

inline std::string peft_config_json(const peft_adapter& adapter) {
  nlohmann::ordered_json j = adapter.config.raw.is_object() ? adapter.config.raw : nlohmann::ordered_json::object();
  // The most common (rank, alpha) becomes r / lora_alpha; other modules get pattern entries.
  std::map<std::pair<index_t, double>, index_t> counts;
  for (const auto& m : adapter.modules) ++counts[{m.rank, m.alpha}];
  index_t r = adapter.config.r;
  double alpha = adapter.config.lora_alpha;
  index_t best = -1;
  for (const auto& [ra, n] : counts)
    if (n > best) {
      best = n;
      r = ra.first;
      alpha = ra.second;
    }
  nlohmann::ordered_json rp = nlohmann::ordered_json::object(), ap = nlohmann::ordered_json::object();
  for (const auto& m : adapter.modules) {
    if (m.rank != r) rp[m.name] = m.rank;
    if (m.alpha != alpha) ap[m.name] = m.alpha;
  }
  if (!j.contains("peft_type")) j["peft_type"] = "LORA";
  j["r"] = r;
  if (alpha == std::floor(alpha) && std::fabs(alpha) < 1e15) j["lora_alpha"] = static_cast<long long>(alpha);
  else j["lora_alpha"] = alpha;
  j["rank_pattern"] = rp;
  j["alpha_pattern"] = ap;
  j["use_rslora"] = adapter.config.use_rslora;
  j["fan_in_fan_out"] = adapter.config.fan_in_fan_out;
  // target_modules must select exactly the adapted modules: keep the config's when it does, else
  // name them with an anchored regex.
  bool keep = !adapter.config.target_modules.is_null();
  if (keep && adapter.config.target_modules.is_array()) {
    for (const auto& m : adapter.modules) {
      const std::string last = m.name.substr(m.name.rfind('.') == std::string::npos ? 0 : m.name.rfind('.') + 1);
      bool hit = false;
      for (const auto& t : adapter.config.target_modules)
        if (t.get<std::string>() == last || t.get<std::string>() == m.name) hit = true;
      if (!hit) keep = false;
    }
  }
  if (keep) {
    j["target_modules"] = adapter.config.target_modules;
  } else {
    std::string re;
    for (const auto& m : adapter.modules) {
      if (!re.empty()) re += '|';
      for (char ch : m.name) {
        if (std::string("\\^$.|?*+()[]{}").find(ch) != std::string::npos) re += '\\';
        re += ch;
      }
    }
    j["target_modules"] = "^(" + re + ")$";
  }
  // Fields lori refuses on read are written in their neutral form.
  j["use_dora"] = false;
  j["lora_bias"] = false;
  j["inference_mode"] = true;
  if (!j.contains("bias")) j["bias"] = "none";
  return j.dump(2);
}

inline void save_peft_adapter(const peft_adapter& adapter, const std::string& dir) {
  safetensors_writer w;
  std::vector<std::vector<std::uint16_t>> half_store;
  for (const auto& m : adapter.modules) {
    LORI_EXPECTS(static_cast<index_t>(m.A.size()) == m.rank * m.in_features, "save_peft_adapter: A must hold rank * in_features values");
    LORI_EXPECTS(static_cast<index_t>(m.B.size()) == m.out_features * m.rank, "save_peft_adapter: B must hold out_features * rank values");
    const std::pair<const std::vector<float>*, std::vector<index_t>> parts[2] = {{&m.A, {m.rank, m.in_features}}, {&m.B, {m.out_features, m.rank}}};
    for (int p = 0; p < 2; ++p) {
      const std::string key = peft_key(m.name, p == 0 ? 'A' : 'B');
      const auto& vals = *parts[p].first;
      if (m.stored_type == dtype::BF16 || m.stored_type == dtype::F16) {
        std::vector<std::uint8_t> bytes(vals.size() * 2);
        for (std::size_t i = 0; i < vals.size(); ++i) {
          const std::uint16_t h = m.stored_type == dtype::BF16 ? float_to_bf16_bits(vals[i]) : float_to_half_bits(vals[i]);
          bytes[2 * i] = static_cast<std::uint8_t>(h & 0xff);
          bytes[2 * i + 1] = static_cast<std::uint8_t>(h >> 8);
        }
        w.add_bytes(key, m.stored_type, parts[p].second, std::move(bytes));
      } else {
        w.add_view(key, dtype::F32, parts[p].second, vals.data());
      }
    }
  }
  w.set_metadata("format", "pt");  // what PEFT's save_pretrained writes
  const std::string cfg = peft_config_json(adapter);
  detail::make_directory(dir);
  w.save(dir + "/adapter_model.safetensors");
  detail::write_file_atomic(dir + "/adapter_config.json", [&](auto& put) { put(cfg.data(), cfg.size()); });
}

}  // namespace lori::io

#endif  // LORI_IO_PEFT_ADAPTER_HPP
