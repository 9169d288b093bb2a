// lori - command-line tool for LoRI adapters stored as PEFT folders (see docs/cli.md).
//
//   lori inspect DIR                      modules, shapes, rank, alpha, scaling, B sparsity, parameters
//   lori calibrate DIR --sparsity S ...   LoRI-S mask by global (or grouped) top-|B| calibration
//   lori sparsify DIR --mask MASK -o OUT  B zeroed outside the mask, as a PEFT folder
//   lori merge DIR... --method M ...      PEFT add_weighted_adapter merges, as a PEFT folder
//   lori interference DIR... [--csv F]    pairwise interference metrics of the adapters' deltas
//   lori apply BASE DIR... -o OUT         base weights with the adapters merged in
//   lori pack DIR -o FILE                 compact LoRI file (packed B + bitmask)
//   lori unpack FILE -o DIR               back to a PEFT folder
//
// Every adapter argument may be a PEFT folder or a compact LoRI file. Errors: one line on stderr
// ("lori <command>: error: ..."), exit code 2, and no partial output (files are written under a
// temporary name and renamed into place). Progress goes to stderr only when it is a terminal.
#include "lori/io/compact_adapter.hpp"
#include "lori/io/mask_file.hpp"
#include "lori/io/peft_adapter.hpp"
#include "lori/io/safetensors.hpp"
#include "lori/mask/calibrate.hpp"
#include "lori/merge/weighted_adapter.hpp"
#include "lori/metrics/interference_report.hpp"
#include "lori/random/projection.hpp"
#include "lori/random/stream.hpp"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define LORI_TOOL_ISATTY(fd) (::isatty(fd) != 0)
#define LORI_TOOL_PID() static_cast<long long>(::getpid())
#else
#define LORI_TOOL_ISATTY(fd) false
#define LORI_TOOL_PID() 0LL
#endif

namespace fs = std::filesystem;
using lori::index_t;

namespace {

/// A usage error (bad option, missing argument, bad number): reported like lori::error, exit 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- argument parsing -------------------------------------------------------------------------------

struct args {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> options;  // "--weights" -> values
  bool help = false;

  bool has(const std::string& k) const { return options.count(k) != 0; }
  const std::string* one(const std::string& k) const {
    auto it = options.find(k);
    if (it == options.end()) return nullptr;
    if (it->second.size() != 1) throw usage_error(k + " takes exactly one value");
    return &it->second[0];
  }
  std::string required(const std::string& k) const {
    const std::string* v = one(k);
    if (v == nullptr) throw usage_error("missing required option " + k);
    return *v;
  }
};

/// spec: option name -> number of values (0 = flag, -1 = one or more).
args parse_args(int argc, char** argv, int first, const std::map<std::string, int>& spec) {
  args a;
  for (int i = first; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "-h" || s == "--help") {
      a.help = true;
      continue;
    }
    if (s == "-o") s = "--output";
    if (s.size() > 1 && s[0] == '-' && !(s.size() > 1 && (std::isdigit(static_cast<unsigned char>(s[1])) || s[1] == '.'))) {
      std::string val;
      const auto eq = s.find('=');
      bool inline_val = false;
      if (eq != std::string::npos) {
        val = s.substr(eq + 1);
        s = s.substr(0, eq);
        inline_val = true;
      }
      auto it = spec.find(s);
      if (it == spec.end()) throw usage_error("unknown option '" + s + "'");
      auto& vals = a.options[s];
      if (it->second == 0) {
        if (inline_val) throw usage_error(s + " takes no value");
        continue;
      }
      if (inline_val) {
        vals.push_back(val);
        continue;
      }
      if (it->second > 0) {
        for (int k = 0; k < it->second; ++k) {
          if (i + 1 >= argc) throw usage_error(s + " needs a value");
          vals.push_back(argv[++i]);
        }
      } else {
        while (i + 1 < argc && !(argv[i + 1][0] == '-' && argv[i + 1][1] != '\0' && !std::isdigit(static_cast<unsigned char>(argv[i + 1][1])) && argv[i + 1][1] != '.'))
          vals.push_back(argv[++i]);
        if (vals.empty()) throw usage_error(s + " needs at least one value");
      }
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

double parse_number(const std::string& s, const std::string& what) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v))
    throw usage_error("bad number '" + s + "' for " + what);
  return v;
}

long long parse_integer(const std::string& s, const std::string& what) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE) throw usage_error("bad integer '" + s + "' for " + what);
  return v;
}

// ---- output helpers ---------------------------------------------------------------------------------

bool stderr_is_tty() {
  static const bool tty = LORI_TOOL_ISATTY(2);
  return tty;
}

void progress(const char* what, std::size_t done, std::size_t total) {
  if (!stderr_is_tty()) return;
  std::fprintf(stderr, "\r%s %zu/%zu", what, done, total);
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

std::string temp_sibling(const std::string& path) { return path + ".lori-tmp-" + std::to_string(LORI_TOOL_PID()); }

/// Writes a PEFT folder atomically: into a temporary sibling folder, then renamed into place (or its
/// files renamed into an existing folder). On failure nothing is left behind.
void write_peft_dir(const lori::io::peft_adapter& ad, std::string out) {
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  if (fs::exists(out) && !fs::is_directory(out)) throw lori::error(out + ": exists and is not a directory");
  const std::string tmp = temp_sibling(out);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    lori::io::save_peft_adapter(ad, tmp);
    if (!fs::exists(out)) {
      fs::rename(tmp, out);
    } else {
      for (const char* f : {"adapter_model.safetensors", "adapter_config.json"}) fs::rename(fs::path(tmp) / f, fs::path(out) / f);
      fs::remove_all(tmp);
    }
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    throw lori::error(out + ": " + e.code().message());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

/// lori's projection as a compact-format A generator: A = projection(seed, stream_from_name(module),
/// r x k, distribution), in float.
lori::io::compact_a_generator projection_generator(std::uint64_t seed, const std::string& distribution) {
  lori::io::compact_a_generator g;
  g.generator = "lori.random.projection";
  g.seed = seed;
  g.distribution = distribution;
  g.stream_of = [](const std::string& module) { return lori::stream_from_name(module); };
  g.generate = [](const std::string& module, index_t r, index_t k, std::uint64_t sd, std::uint64_t stream, const std::string& dist,
                  std::vector<float>& A) {
    lori::projection_spec spec;
    if (dist == "kaiming_uniform") spec = lori::projection_spec::kaiming_uniform();
    else if (dist == "gaussian") spec = lori::projection_spec::gaussian();
    else if (dist == "gaussian_v2") spec = lori::projection_spec::gaussian_v2();
    else if (dist == "rademacher") spec = lori::projection_spec::rademacher();
    else if (dist == "sparse") spec = lori::projection_spec::sparse();
    else throw lori::error("module '" + module + "': unknown projection distribution '" + dist + "'");
    A.assign(static_cast<std::size_t>(r * k), 0.0f);
    lori::generate_projection(lori::row_major_view<float>(A.data(), r, k), sd, stream, spec);
  };
  return g;
}

/// A PEFT folder or a compact LoRI file.
lori::io::peft_adapter load_adapter(const std::string& path) {
  if (fs::is_directory(path)) return lori::io::load_peft_adapter(path);
  if (fs::is_regular_file(path)) {
    const auto gen = projection_generator(0, "kaiming_uniform");
    return lori::io::unpack_adapter(path, &gen);
  }
  throw lori::error(path + ": no such adapter folder or compact LoRI file");
}

index_t folder_bytes(const std::string& dir) {
  index_t n = 0;
  for (const char* f : {"adapter_model.safetensors", "adapter_config.json"}) {
    std::error_code ec;
    const auto s = fs::file_size(fs::path(dir) / f, ec);
    if (!ec) n += static_cast<index_t>(s);
  }
  return n;
}

/// double -> float rounded to odd (truncate toward zero, set the last bit when inexact).
float round_to_odd_float(double d) {
  float f = static_cast<float>(d);
  if (!std::isfinite(f) || static_cast<double>(f) == d) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  return lori::bits_float(lori::float_bits(f) | 1u);
}

index_t zeros_of(const std::vector<float>& v) {
  index_t z = 0;
  for (float x : v) z += (x == 0.0f);
  return z;
}

// ---- subcommands ------------------------------------------------------------------------------------

struct command {
  const char* name;
  const char* summary;
  const char* usage;
  std::map<std::string, int> options;
  std::function<int(const args&)> run;
};

int cmd_inspect(const args& a) {
  if (a.positional.size() != 1) throw usage_error("expects exactly one adapter (DIR or compact file)");
  const auto ad = load_adapter(a.positional[0]);
  const auto& c = ad.config;
  std::printf("adapter %s\n", a.positional[0].c_str());
  std::printf("peft_type LORA  r %lld  lora_alpha %g  use_rslora %s  fan_in_fan_out %s  rank_pattern %zu  alpha_pattern %zu\n",
              static_cast<long long>(c.r), c.lora_alpha, c.use_rslora ? "true" : "false", c.fan_in_fan_out ? "true" : "false",
              c.rank_pattern.size(), c.alpha_pattern.size());
  std::size_t w = 6;
  for (const auto& m : ad.modules) w = std::max(w, m.name.size());
  std::printf("%-*s %12s %5s %8s %9s %10s %10s %6s\n", static_cast<int>(w), "module", "out x in", "rank", "alpha", "scaling", "B_sparsity", "params", "dtype");
  index_t zeros = 0, b_total = 0;
  for (const auto& m : ad.modules) {
    const index_t z = zeros_of(m.B);
    zeros += z;
    b_total += static_cast<index_t>(m.B.size());
    char shape[64];
    std::snprintf(shape, sizeof shape, "%lld x %lld", static_cast<long long>(m.out_features), static_cast<long long>(m.in_features));
    std::printf("%-*s %12s %5lld %8g %9.6g %10.4f %10lld %6s\n", static_cast<int>(w), m.name.c_str(), shape, static_cast<long long>(m.rank), m.alpha,
                m.scaling, m.B.empty() ? 0.0 : static_cast<double>(z) / static_cast<double>(m.B.size()), static_cast<long long>(m.parameter_count()),
                lori::io::dtype_name(m.stored_type));
  }
  // Per layer: the first all-digit component of the module name ("model.layers.3.mlp.up_proj" -> 3).
  std::map<long long, std::pair<index_t, index_t>> layers;  // layer -> (zeros, entries)
  std::map<long long, index_t> layer_params;
  for (const auto& m : ad.modules) {
    long long layer = -1;
    std::size_t b = 0;
    while (b <= m.name.size()) {
      const std::size_t e = std::min(m.name.find('.', b), m.name.size());
      const std::string part = m.name.substr(b, e - b);
      if (!part.empty() && part.size() < 10 && part.find_first_not_of("0123456789") == std::string::npos) {
        layer = std::stoll(part);
        break;
      }
      b = e + 1;
    }
    layers[layer].first += zeros_of(m.B);
    layers[layer].second += static_cast<index_t>(m.B.size());
    layer_params[layer] += m.parameter_count();
  }
  for (const auto& [layer, zs] : layers)
    std::printf("layer %-4s B sparsity %.4f  parameters %lld\n", layer < 0 ? "-" : std::to_string(layer).c_str(),
                zs.second ? static_cast<double>(zs.first) / static_cast<double>(zs.second) : 0.0, static_cast<long long>(layer_params[layer]));
  std::printf("modules %zu  parameters %lld  B entries %lld  B zeros %lld  B sparsity %.4f\n", ad.modules.size(),
              static_cast<long long>(ad.parameter_count()), static_cast<long long>(b_total), static_cast<long long>(zeros),
              b_total ? static_cast<double>(zeros) / static_cast<double>(b_total) : 0.0);
  return 0;
}

int cmd_calibrate(const args& a) {
  if (a.positional.size() != 1) throw usage_error("expects exactly one adapter (DIR or compact file)");
  const std::string out = a.required("--output");
  lori::calibration_options opt;
  opt.sparsity = parse_number(a.required("--sparsity"), "--sparsity");
  if (!(opt.sparsity >= 0.0 && opt.sparsity <= 1.0)) throw usage_error("--sparsity must be in [0, 1], got " + *a.one("--sparsity"));
  if (const std::string* g = a.one("--granularity")) {
    const std::map<std::string, lori::mask_granularity> names = {{"model", lori::mask_granularity::model},
                                                                 {"layer", lori::mask_granularity::layer},
                                                                 {"module", lori::mask_granularity::module},
                                                                 {"projection", lori::mask_granularity::projection},
                                                                 {"matrix", lori::mask_granularity::matrix}};
    auto it = names.find(*g);
    if (it == names.end()) throw usage_error("unknown granularity '" + *g + "' (model, layer, module, projection, matrix)");
    opt.granularity = it->second;
  }
  if (a.has("--exact")) opt.semantics = lori::mask_semantics::exact;
  const auto ad = load_adapter(a.positional[0]);
  if (ad.modules.empty()) throw lori::error(a.positional[0] + ": adapter has no modules");
  lori::io::module_masks exclude;
  if (const std::string* ex = a.one("--exclude")) exclude = lori::io::load_masks(*ex);
  std::vector<lori::calibration_tensor<float>> tensors;
  for (const auto& m : ad.modules) {
    lori::calibration_tensor<float> t;
    t.name = lori::io::peft_key(m.name, 'B');
    t.values = lori::row_major_view<const float>(m.B.data(), m.out_features, m.rank);
    if (!exclude.empty()) {
      auto it = exclude.find(m.name);
      if (it == exclude.end()) throw lori::error(*a.one("--exclude") + ": no mask for module '" + m.name + "'");
      if (it->second.rows() != m.out_features || it->second.cols() != m.rank)
        throw lori::error(*a.one("--exclude") + ": mask for module '" + m.name + "' is " + std::to_string(it->second.rows()) + "x" +
                          std::to_string(it->second.cols()) + ", lora_B is " + std::to_string(m.out_features) + "x" + std::to_string(m.rank));
      t.exclude = &it->second;
    }
    tensors.push_back(t);
  }
  for (const auto& [name, m] : exclude)
    if (ad.find(name) == nullptr) throw lori::error(*a.one("--exclude") + ": mask for module '" + name + "' which the adapter does not have");
  const auto res = lori::calibrate_mask(tensors, opt);
  lori::io::module_masks masks;
  for (std::size_t i = 0; i < ad.modules.size(); ++i) masks.emplace(ad.modules[i].name, res.masks[i]);
  char sp[64];
  std::snprintf(sp, sizeof sp, "%.17g", opt.sparsity);
  lori::io::save_masks(out, masks, lori::io::dtype::U8,
                       {{"lori.sparsity", sp}, {"lori.granularity", lori::to_string(opt.granularity)},
                        {"lori.semantics", opt.semantics == lori::mask_semantics::exact ? "exact" : "reference"}});
  std::fputs(res.report.to_string().c_str(), stdout);
  for (const auto& t : res.report.tensors)
    std::printf("kept %-60s %8lld / %-8lld %.4f\n", t.name.c_str(), static_cast<long long>(t.kept), static_cast<long long>(t.size), t.fraction);
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

int cmd_sparsify(const args& a) {
  if (a.positional.size() != 1) throw usage_error("expects exactly one adapter (DIR or compact file)");
  const std::string mask_path = a.required("--mask"), out = a.required("--output");
  auto ad = load_adapter(a.positional[0]);
  const auto masks = lori::io::load_masks(mask_path);
  for (const auto& [name, m] : masks)
    if (ad.find(name) == nullptr) throw lori::error(mask_path + ": mask for module '" + name + "' which the adapter does not have");
  index_t kept = 0, total = 0;
  for (auto& m : ad.modules) {
    auto it = masks.find(m.name);
    if (it == masks.end()) throw lori::error(mask_path + ": no mask for module '" + m.name + "'");
    if (it->second.rows() != m.out_features || it->second.cols() != m.rank)
      throw lori::error(mask_path + ": mask for module '" + m.name + "' is " + std::to_string(it->second.rows()) + "x" + std::to_string(it->second.cols()) +
                        ", lora_B is " + std::to_string(m.out_features) + "x" + std::to_string(m.rank));
    const auto v = it->second.view();
    for (index_t i = 0; i < m.out_features; ++i)
      for (index_t j = 0; j < m.rank; ++j)
        if (!v.test(i, j)) m.B[static_cast<std::size_t>(i * m.rank + j)] = 0.0f;
    kept += it->second.count();
    total += m.out_features * m.rank;
  }
  write_peft_dir(ad, out);
  std::printf("sparsified %zu modules: kept %lld of %lld B entries (sparsity %.4f); wrote %s\n", ad.modules.size(), static_cast<long long>(kept),
              static_cast<long long>(total), total ? 1.0 - static_cast<double>(kept) / static_cast<double>(total) : 0.0, out.c_str());
  return 0;
}

std::vector<double> weights_for(const args& a, std::size_t n, bool required) {
  std::vector<double> w;
  auto it = a.options.find("--weights");
  if (it == a.options.end()) {
    if (required) throw usage_error("missing required option --weights");
    return std::vector<double>(n, 1.0);
  }
  for (const auto& s : it->second) w.push_back(parse_number(s, "--weights"));
  if (w.size() != n) throw usage_error("--weights has " + std::to_string(w.size()) + " values for " + std::to_string(n) + " adapters");
  return w;
}

int cmd_apply(const args& a) {
  if (a.positional.size() < 2) throw usage_error("expects BASE.safetensors and at least one adapter");
  const std::string out = a.required("--output");
  const auto base = lori::io::safetensors_file::open(a.positional[0]);
  std::vector<lori::io::peft_adapter> ads;
  for (std::size_t i = 1; i < a.positional.size(); ++i) ads.push_back(load_adapter(a.positional[i]));
  const auto weights = weights_for(a, ads.size(), false);
  // Every adapter module must find "<module>.weight" in the base, with a matching shape.
  std::map<std::string, std::vector<std::pair<const lori::io::lora_module*, double>>> plan;  // base key -> (module, w*s)
  for (std::size_t i = 0; i < ads.size(); ++i)
    for (const auto& m : ads[i].modules) {
      const std::string key = m.name + ".weight";
      const auto* t = base.find(key);
      if (t == nullptr) throw lori::error(a.positional[0] + ": no tensor '" + key + "' for module '" + m.name + "' of " + a.positional[i + 1]);
      const bool fifo = ads[i].config.fan_in_fan_out;
      const std::vector<index_t> want = fifo ? std::vector<index_t>{m.in_features, m.out_features} : std::vector<index_t>{m.out_features, m.in_features};
      if (t->shape != want)
        throw lori::error(a.positional[0] + ": tensor '" + key + "' has shape [" + (t->shape.size() == 2 ? std::to_string(t->shape[0]) + ", " + std::to_string(t->shape[1]) : std::string("not 2-D")) +
                          "] but the adapter " + a.positional[i + 1] + " needs [" + std::to_string(want[0]) + ", " + std::to_string(want[1]) + "]");
      if (t->type != lori::io::dtype::F32 && t->type != lori::io::dtype::F64 && t->type != lori::io::dtype::BF16 && t->type != lori::io::dtype::F16)
        throw lori::error(a.positional[0] + ": tensor '" + key + "' has dtype " + lori::io::dtype_name(t->type) + "; apply needs F32, F64, BF16 or F16");
      plan[key].emplace_back(&m, weights[i] * m.scaling);
    }
  lori::io::safetensors_writer w;
  for (const auto& [k, v] : base.metadata()) w.set_metadata(k, v);
  std::size_t done = 0;
  for (const auto& t : base.tensors()) {
    auto it = plan.find(t.name);
    if (it == plan.end()) {
      w.add_view(t.name, t.type, t.shape, base.raw(t));  // unchanged, zero-copy from the mapping
      continue;
    }
    const index_t rows = t.shape[0], cols = t.shape[1];
    std::vector<double> W = base.read<double>(t);
    for (const auto& [m, ws] : it->second) {
      const bool fifo = rows != m->out_features || cols != m->in_features;  // shape checked above
      // Delta = ws * B (d x r) * A (r x k), accumulated in double.
      std::vector<double> row(static_cast<std::size_t>(m->in_features));
      for (index_t i = 0; i < m->out_features; ++i) {
        std::fill(row.begin(), row.end(), 0.0);
        for (index_t p = 0; p < m->rank; ++p) {
          const double b = m->B[static_cast<std::size_t>(i * m->rank + p)];
          if (b == 0.0) continue;
          const float* arow = m->A.data() + p * m->in_features;
          for (index_t j = 0; j < m->in_features; ++j) row[static_cast<std::size_t>(j)] += b * static_cast<double>(arow[j]);
        }
        for (index_t j = 0; j < m->in_features; ++j) {
          const std::size_t at = fifo ? static_cast<std::size_t>(j * cols + i) : static_cast<std::size_t>(i * cols + j);
          W[at] += ws * row[static_cast<std::size_t>(j)];
        }
      }
    }
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(t.nbytes()));
    for (std::size_t e = 0; e < W.size(); ++e) {
      switch (t.type) {
        case lori::io::dtype::F64: std::memcpy(bytes.data() + 8 * e, &W[e], 8); break;
        case lori::io::dtype::F32: {
          const float f = static_cast<float>(W[e]);
          std::memcpy(bytes.data() + 4 * e, &f, 4);
          break;
        }
        default: {
          // Round the double once to 16 bits: first to float with round-to-odd, which makes the
          // second rounding (float -> bf16/f16, nearest-even) correctly rounded (no double rounding).
          const float f = round_to_odd_float(W[e]);
          const std::uint16_t h = t.type == lori::io::dtype::BF16 ? lori::float_to_bf16_bits(f) : lori::float_to_half_bits(f);
          bytes[2 * e] = static_cast<std::uint8_t>(h & 0xff);
          bytes[2 * e + 1] = static_cast<std::uint8_t>(h >> 8);
        }
      }
    }
    w.add_bytes(t.name, t.type, t.shape, std::move(bytes));
    progress("apply: merged tensors", ++done, plan.size());
  }
  w.save(out);
  std::printf("merged %zu adapter(s) into %zu of %zu tensors; wrote %s\n", ads.size(), plan.size(), base.tensors().size(), out.c_str());
  return 0;
}

lori::adapter_model<double> to_model(const lori::io::peft_adapter& ad) {
  lori::adapter_model<double> m;
  for (const auto& mod : ad.modules) {
    lori::adapter_module<double> x;
    x.A.resize(mod.rank, mod.in_features);
    x.B.resize(mod.out_features, mod.rank);
    for (std::size_t i = 0; i < mod.A.size(); ++i) x.A.data()[i] = mod.A[i];
    for (std::size_t i = 0; i < mod.B.size(); ++i) x.B.data()[i] = mod.B[i];
    x.scaling = mod.scaling;
    m.emplace(mod.name, std::move(x));
  }
  return m;
}

int cmd_merge(const args& a) {
  if (a.positional.empty()) throw usage_error("expects at least one adapter");
  const std::string out = a.required("--output");
  lori::merge_options opt;
  const std::string method = a.required("--method");
  bool known = false;
  for (int i = 0; i <= static_cast<int>(lori::combination_type::magnitude_prune_svd); ++i)
    if (method == lori::to_string(static_cast<lori::combination_type>(i))) {
      opt.type = static_cast<lori::combination_type>(i);
      known = true;
    }
  if (!known) throw usage_error("unknown method '" + method + "' (cat, linear, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd, magnitude_prune, magnitude_prune_svd)");
  const auto weights = weights_for(a, a.positional.size(), true);
  if (const std::string* d = a.one("--density")) {
    opt.density = parse_number(*d, "--density");
    if (!(*opt.density >= 0.0 && *opt.density <= 1.0)) throw usage_error("--density must be in [0, 1], got " + *d);
  } else if (lori::combination_needs_density(opt.type)) {
    throw usage_error("method '" + method + "' needs --density");
  }
  if (const std::string* ms = a.one("--majority-sign")) {
    if (*ms == "total") opt.sign_method = lori::majority_sign_method::total;
    else if (*ms == "frequency") opt.sign_method = lori::majority_sign_method::frequency;
    else throw usage_error("--majority-sign must be total or frequency, got '" + *ms + "'");
  }
  if (const std::string* r = a.one("--svd-rank")) {
    const long long v = parse_integer(*r, "--svd-rank");
    if (v <= 0) throw usage_error("--svd-rank must be positive, got " + *r);
    opt.svd_rank = v;
  }
  if (const std::string* q = a.one("--svd-clamp")) {
    opt.svd_clamp = parse_number(*q, "--svd-clamp");
    if (!(*opt.svd_clamp >= 0.0 && *opt.svd_clamp <= 1.0)) throw usage_error("--svd-clamp must be in [0, 1], got " + *q);
  }
  if (const std::string* sd = a.one("--seed")) {
    const long long v = parse_integer(*sd, "--seed");
    if (v < 0) throw usage_error("--seed must be non-negative, got " + *sd);
    opt.seed = static_cast<std::uint64_t>(v);
  }
  std::vector<lori::io::peft_adapter> ads;
  for (const auto& p : a.positional) ads.push_back(load_adapter(p));
  for (std::size_t i = 1; i < ads.size(); ++i) {
    if (ads[i].config.fan_in_fan_out != ads[0].config.fan_in_fan_out)
      throw lori::error(a.positional[i] + ": fan_in_fan_out differs from " + a.positional[0] + "'s");
    for (const auto& m : ads[i].modules)
      if (const auto* m0 = ads[0].find(m.name))
        if (m0->out_features != m.out_features || m0->in_features != m.in_features)
          throw lori::error(a.positional[i] + ": module '" + m.name + "' is " + std::to_string(m.out_features) + "x" + std::to_string(m.in_features) +
                            " but " + std::to_string(m0->out_features) + "x" + std::to_string(m0->in_features) + " in " + a.positional[0]);
  }
  std::vector<lori::adapter_model<double>> models;
  for (const auto& ad : ads) models.push_back(to_model(ad));
  std::vector<const lori::adapter_model<double>*> ptrs;
  for (const auto& m : models) ptrs.push_back(&m);
  const auto merged = lori::merge_models(ptrs, weights, opt);
  // PEFT writes the merged adapter with r = lora_alpha = its rank (scaling 1), use_rslora false.
  lori::io::peft_adapter res;
  res.config = ads[0].config;
  res.config.use_rslora = false;
  res.config.rank_pattern.clear();
  res.config.alpha_pattern.clear();
  for (const auto& [name, m] : merged) {
    lori::io::lora_module mod;
    mod.name = name;
    mod.rank = m.rank();
    mod.in_features = m.in_features();
    mod.out_features = m.out_features();
    const auto* src = ads[0].find(name);
    mod.stored_type = src ? src->stored_type : lori::io::dtype::F32;
    // Fold any scaling other than 1 into B so that the written adapter has alpha = r.
    mod.alpha = static_cast<double>(mod.rank);
    mod.scaling = 1.0;
    mod.A.resize(static_cast<std::size_t>(m.A.size()));
    mod.B.resize(static_cast<std::size_t>(m.B.size()));
    for (std::size_t i = 0; i < mod.A.size(); ++i) mod.A[i] = static_cast<float>(m.A.data()[i]);
    for (std::size_t i = 0; i < mod.B.size(); ++i) mod.B[i] = static_cast<float>(m.B.data()[i] * m.scaling);
    res.modules.push_back(std::move(mod));
  }
  write_peft_dir(res, out);
  std::printf("merged %zu adapters (%s) into %zu modules; wrote %s\n", ads.size(), method.c_str(), res.modules.size(), out.c_str());
  return 0;
}

int cmd_interference(const args& a) {
  if (a.positional.size() < 2) throw usage_error("expects at least two adapters");
  const auto weights = weights_for(a, a.positional.size(), false);
  std::vector<lori::io::peft_adapter> ads;
  for (const auto& p : a.positional) ads.push_back(load_adapter(p));
  std::vector<lori::adapter_model<double>> models;
  for (const auto& ad : ads) {
    models.push_back(to_model(ad));
    // LoRI-S adapters (B with zeros) carry their nonzero pattern as the mask.
    for (auto& [name, m] : models.back()) {
      bool has_zero = false;
      for (Eigen::Index t = 0; t < m.B.size() && !has_zero; ++t) has_zero = m.B.data()[t] == 0.0;
      if (has_zero) m.b_mask = lori::bitmask::from_dense(lori::row_major_view<const double>(m.B.data(), m.B.rows(), m.B.cols()));
    }
  }
  std::vector<const lori::adapter_model<double>*> ptrs;
  for (const auto& m : models) ptrs.push_back(&m);
  const auto rep = lori::analyze_interference(ptrs, weights);
  if (rep.modules.empty()) throw lori::error("the adapters have no module in common");
  std::printf("adapters:\n");
  for (std::size_t i = 0; i < a.positional.size(); ++i) std::printf("  [%zu] %s\n", i, a.positional[i].c_str());
  std::printf("modules in common: %zu (aggregates weight each module by d*k)\n\n", rep.modules.size());
  std::printf("%-8s %-7s %10s %9s %13s %14s %13s\n", "scope", "pair", "mean_cos2", "max_cos", "delta_cosine", "|delta_cosine|", "mask_jaccard");
  auto rows = [&](const std::string& scope, const lori::group_summary& g) {
    for (const auto& p : g.pairs) {
      char pair[32];
      std::snprintf(pair, sizeof pair, "%zu-%zu", p.i, p.j);
      char jac[32];
      if (p.mask_weight > 0) std::snprintf(jac, sizeof jac, "%.4f", p.mask_jaccard);
      else std::snprintf(jac, sizeof jac, "-");
      std::printf("%-8s %-7s %10.6f %9.6f %13.6f %14.6f %13s\n", scope.c_str(), pair, p.mean_cos2, p.max_cos, p.delta_cosine, p.abs_delta_cosine, jac);
    }
  };
  rows("overall", rep.overall);
  for (const auto& [layer, g] : rep.layers) rows("layer " + std::to_string(layer), g);
  if (rep.overall.cross_weight > 0) std::printf("\ncross-term energy of the linear merge: %.6f\n", rep.overall.cross_term_energy);
  if (const std::string* csv = a.one("--csv")) {
    std::string text = "module,layer,out,in,i,j,mean_cos2,max_cos,delta_cosine,mask_jaccard,cross_term_energy\n";
    char buf[512];
    for (const auto& m : rep.modules)
      for (const auto& p : m.metrics.pairs) {
        std::snprintf(buf, sizeof buf, "%s,%lld,%lld,%lld,%zu,%zu,%.9g,%.9g,%.9g,%s,%.9g\n", m.name.c_str(), static_cast<long long>(m.layer),
                      static_cast<long long>(m.out_features), static_cast<long long>(m.in_features), p.i, p.j, p.mean_cos2, p.max_cos, p.delta_cosine,
                      p.has_masks ? std::to_string(p.masks.jaccard).c_str() : "", m.metrics.cross_term_energy);
        text += buf;
      }
    for (const auto& p : rep.overall.pairs) {
      std::snprintf(buf, sizeof buf, "overall,,,,%zu,%zu,%.9g,%.9g,%.9g,%s,%.9g\n", p.i, p.j, p.mean_cos2, p.max_cos, p.delta_cosine,
                    p.mask_weight > 0 ? std::to_string(p.mask_jaccard).c_str() : "", rep.overall.cross_term_energy);
      text += buf;
    }
    lori::detail::write_file_atomic(*csv, [&](auto& put) { put(text.data(), text.size()); });
    std::printf("wrote %s\n", csv->c_str());
  }
  return 0;
}

int cmd_pack(const args& a) {
  if (a.positional.size() != 1) throw usage_error("expects exactly one adapter folder");
  const std::string out = a.required("--output");
  std::optional<lori::io::compact_a_generator> gen;
  if (const std::string* sd = a.one("--a-seed")) {
    const long long v = parse_integer(*sd, "--a-seed");
    if (v < 0) throw usage_error("--a-seed must be non-negative, got " + *sd);
    std::string dist = "kaiming_uniform";
    if (const std::string* d = a.one("--a-distribution")) dist = *d;
    if (dist != "kaiming_uniform" && dist != "gaussian" && dist != "gaussian_v2" && dist != "rademacher" && dist != "sparse")
      throw usage_error("--a-distribution must be kaiming_uniform, gaussian, gaussian_v2, rademacher or sparse, got '" + dist + "'");
    gen = projection_generator(static_cast<std::uint64_t>(v), dist);
  } else if (a.has("--a-distribution")) {
    throw usage_error("--a-distribution needs --a-seed");
  }
  const auto ad = load_adapter(a.positional[0]);
  const auto st = lori::io::pack_adapter(ad, out, gen ? &*gen : nullptr);
  const auto f = lori::io::safetensors_file::open(out);
  std::size_t generated = 0;
  for (const auto& m : ad.modules) generated += !f.contains(m.name + ".A");
  const index_t folder = fs::is_directory(a.positional[0]) ? folder_bytes(a.positional[0]) : 0;
  std::printf("packed %zu modules: B kept %lld of %lld entries; A regenerated from its seed for %zu modules, stored for %zu\n", ad.modules.size(),
              static_cast<long long>(st.kept), static_cast<long long>(st.b_entries), generated, ad.modules.size() - generated);
  std::printf("A+B tensor bytes %lld, compact file %lld bytes: %.2fx smaller\n", static_cast<long long>(st.peft_bytes), static_cast<long long>(st.compact_bytes), st.ratio());
  if (folder > 0)
    std::printf("PEFT folder %lld bytes: %.2fx smaller\n", static_cast<long long>(folder), static_cast<double>(folder) / static_cast<double>(st.compact_bytes));
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

int cmd_unpack(const args& a) {
  if (a.positional.size() != 1) throw usage_error("expects exactly one compact LoRI file");
  const std::string out = a.required("--output");
  if (!fs::is_regular_file(a.positional[0])) throw lori::error(a.positional[0] + ": no such file");
  const auto gen = projection_generator(0, "kaiming_uniform");
  const auto ad = lori::io::unpack_adapter(a.positional[0], &gen);
  write_peft_dir(ad, out);
  std::printf("unpacked %zu modules; wrote %s\n", ad.modules.size(), out.c_str());
  return 0;
}

std::vector<command> commands();

void print_help(const command& c) { std::printf("usage: %s\n\n%s\n", c.usage, c.summary); }

void print_main_help() {
  std::printf("usage: lori <command> [options]   (lori <command> --help for details)\n\ncommands:\n");
  for (const auto& c : commands()) std::printf("  %-13s %s\n", c.name, c.summary);
  std::printf("\nAdapters are PEFT folders (adapter_config.json + adapter_model.safetensors) or compact LoRI files.\n"
              "Errors print one line on stderr and exit with code 2; outputs are written atomically.\n");
}

std::vector<command> commands() {
  std::vector<command> c;
  c.push_back({"inspect", "Show modules, shapes, rank, alpha, scaling, B sparsity and parameter counts.", "lori inspect DIR", {}, cmd_inspect});
  c.push_back({"calibrate",
               "Compute a LoRI-S mask: keep the (1 - S) fraction of B entries with the largest magnitude, one threshold\n"
               "per group (default: the whole model). Writes a mask file (U8 tensors keyed like lora_B) and prints the\n"
               "threshold(s) and kept fractions. --exact keeps exactly k entries (ties broken by position); the default\n"
               "keeps |B| >= threshold as the LoRI reference does. --exclude MASK ranks positions set in MASK below all\n"
               "others (masks of earlier tasks, for continual learning).",
               "lori calibrate DIR --sparsity S [--granularity model|layer|module|projection|matrix] [--exact] [--exclude MASK] -o MASK",
               {{"--sparsity", 1}, {"--granularity", 1}, {"--exact", 0}, {"--exclude", 1}, {"--output", 1}},
               cmd_calibrate});
  c.push_back({"sparsify", "Zero B outside the mask (LoRI-S) and write the result as a PEFT folder.", "lori sparsify DIR --mask MASK -o OUTDIR",
               {{"--mask", 1}, {"--output", 1}}, cmd_sparsify});
  c.push_back({"merge",
               "Merge adapters as PEFT 0.21's add_weighted_adapter does (same formulas; DARE draws use lori's\n"
               "counter-based generator keyed by --seed, so they are reproducible but not torch's). Writes a PEFT folder\n"
               "with r = lora_alpha = the merged rank (scaling 1). --density is required by the pruning methods.",
               "lori merge DIR... --method cat|linear|svd|ties|ties_svd|dare_linear|dare_ties|dare_linear_svd|dare_ties_svd|"
               "magnitude_prune|magnitude_prune_svd --weights W... [--density D] [--majority-sign total|frequency] "
               "[--svd-rank R] [--svd-clamp Q] [--seed N] -o OUTDIR",
               {{"--method", 1}, {"--weights", -1}, {"--density", 1}, {"--majority-sign", 1}, {"--svd-rank", 1}, {"--svd-clamp", 1}, {"--seed", 1}, {"--output", 1}},
               cmd_merge});
  c.push_back({"interference",
               "Pairwise interference of the adapters' updates (lori/metrics, low-rank form): mean squared and largest\n"
               "principal-angle cosine between the A row spaces, cosine of the deltas s*B*A, Jaccard of LoRI-S masks (B's\n"
               "nonzero pattern, for adapters whose B has zeros), per layer and overall (weighted by d*k); --weights\n"
               "feed the cross-term energy of the linear merge. --csv writes per-module rows.",
               "lori interference DIR... [--weights W...] [--csv FILE]", {{"--weights", -1}, {"--csv", 1}}, cmd_interference});
  c.push_back({"apply",
               "Merge adapters into base weights: W + sum_i w_i s_i B_i A_i for every base tensor '<module>.weight'\n"
               "that an adapter adapts (accumulated in double, stored in the tensor's dtype); other tensors are copied.",
               "lori apply BASE.safetensors DIR... [--weights W...] -o OUT.safetensors", {{"--weights", -1}, {"--output", 1}}, cmd_apply});
  c.push_back({"pack",
               "Write the compact LoRI format (B as its kept values + a bitmap or Rice-coded mask) and report the size\n"
               "ratio. With --a-seed N, every module whose A equals lori's projection (seed N, stream = FNV-1a of the\n"
               "module name, --a-distribution, default kaiming_uniform) bit for bit stores only (seed, stream,\n"
               "distribution); other modules store A densely.",
               "lori pack DIR -o FILE [--a-seed N [--a-distribution kaiming_uniform|gaussian|rademacher|sparse]]",
               {{"--output", 1}, {"--a-seed", 1}, {"--a-distribution", 1}}, cmd_pack});
  c.push_back({"unpack", "Convert a compact LoRI file back into a PEFT folder (bit-exact).", "lori unpack FILE -o DIR", {{"--output", 1}}, cmd_unpack});
  return c;
}

std::string one_line(std::string s) {
  for (char& ch : s)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_main_help();
    return 2;
  }
  const std::string name = argv[1];
  if (name == "-h" || name == "--help" || name == "help") {
    print_main_help();
    return 0;
  }
  if (name == "--version") {
    std::printf("lori %d.%d.%d\n", LORI_VERSION_MAJOR, LORI_VERSION_MINOR, LORI_VERSION_PATCH);
    return 0;
  }
  const auto cmds = commands();
  for (const auto& c : cmds) {
    if (name != c.name) continue;
    try {
      const args a = parse_args(argc, argv, 2, c.options);
      if (a.help) {
        print_help(c);
        return 0;
      }
      return c.run(a);
    } catch (const usage_error& e) {
      std::fprintf(stderr, "lori %s: error: %s (usage: %s)\n", c.name, one_line(e.what()).c_str(), c.usage);
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "lori %s: error: %s\n", c.name, one_line(e.what()).c_str());
      return 2;
    }
  }
  std::fprintf(stderr, "lori: error: unknown command '%s' (lori --help lists the commands)\n", name.c_str());
  return 2;
}
