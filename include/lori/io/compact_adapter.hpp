// lori/io/compact_adapter.hpp - the compact LoRI adapter format (one safetensors file).
//
// LoRI-S keeps ~10% of B and never trains A, so a PEFT folder stores mostly zeros and a random
// matrix. The compact file stores, per module:
//   "<module>.B.mask"    U8 [bytes]  which entries of B are kept, in whichever of two codings is
//                        smaller (named in the module's "mask" field):
//                        "bitmap": one bit per entry (row-major, LSB first, bits past out*r zero);
//                        {"rice": k}: the gaps between kept positions (row-major), each as a
//                        Golomb-Rice code with parameter k (quotient in unary as 1s ended by a 0,
//                        then k remainder bits, LSB first) - ~0.5 bit an entry at 10% density
//   "<module>.B.values"  [nnz] in the module's stored dtype: B's kept entries, row-major order
//   "<module>.A"         [r, in] in the stored dtype, only when A is stored densely
// and in "__metadata__":
//   "lori.format" = "compact-lori", "lori.version" = "1",
//   "lori.peft_config" = the adapter_config.json text, "lori.modules" = JSON {module: {rank, in, out,
//   alpha, dtype, "A": "dense" or {"generator", "seed", "stream", "distribution"}}}.
// An entry of B is "kept" when its bit pattern is not +0.0, so unpacking restores every bit
// (-0.0 included). pack -> unpack is lossless: the same A and B bits, ranks, alphas and config.
// A is stored as a generator description instead of values only when the caller supplies one and
// says it regenerates A exactly (compact_a_generator); this file format reserves the field so that
// the lori/random projection can be plugged in without a format change.
//
// Requires nlohmann-json.
#ifndef LORI_IO_COMPACT_ADAPTER_HPP
#define LORI_IO_COMPACT_ADAPTER_HPP

#include "lori/config.hpp"
#include "lori/error.hpp"
#include "lori/io/peft_adapter.hpp"
#include "lori/io/safetensors.hpp"
#include "lori/mask/bitmask.hpp"

#include <nlohmann/json.hpp>

#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace lori::io {

/// How a module's A can be regenerated instead of stored: a named generator and its parameters.
/// pack_adapter calls generate(module, rank, in, seed, stream_of(module), distribution, A) and stores
/// only (generator, seed, stream, distribution) when the result equals the module's A bit for bit;
/// unpack_adapter calls generate with the stored values.
struct compact_a_generator {
  std::string generator;     ///< e.g. "lori.random.projection"
  std::uint64_t seed = 0;
  std::uint64_t stream = 0;  ///< used when stream_of is empty
  std::string distribution;  ///< e.g. "kaiming_uniform"
  /// Per-module stream (e.g. lori::stream_from_name); empty: `stream` for every module.
  std::function<std::uint64_t(const std::string& module)> stream_of;
  /// Fills A (rank x in, row-major).
  std::function<void(const std::string& module, index_t rank, index_t in, std::uint64_t seed, std::uint64_t stream,
                     const std::string& distribution, std::vector<float>& A)>
      generate;
};

/// Size report of a pack.
struct compact_stats {
  index_t peft_bytes = 0;     ///< bytes of A and B as a PEFT safetensors stores them (stored dtype)
  index_t compact_bytes = 0;  ///< size of the compact file
  index_t kept = 0;           ///< kept entries of B over all modules
  index_t b_entries = 0;      ///< all entries of B
  double ratio() const noexcept { return compact_bytes > 0 ? static_cast<double>(peft_bytes) / static_cast<double>(compact_bytes) : 0.0; }
};

namespace detail_compact {
inline std::uint32_t bits_of(float x) noexcept { return float_bits(x); }
inline void put_value(std::vector<std::uint8_t>& out, dtype t, float v) {
  if (t == dtype::F32) {
    std::uint8_t b[4];
    std::memcpy(b, &v, 4);
    out.insert(out.end(), b, b + 4);
  } else {
    const std::uint16_t h = t == dtype::BF16 ? float_to_bf16_bits(v) : float_to_half_bits(v);
    out.push_back(static_cast<std::uint8_t>(h & 0xff));
    out.push_back(static_cast<std::uint8_t>(h >> 8));
  }
}

// LSB-first bit writer / reader over bytes.
struct bit_writer {
  std::vector<std::uint8_t> bytes;
  std::uint64_t nbits = 0;
  void put(bool b) {
    if ((nbits & 7) == 0) bytes.push_back(0);
    if (b) bytes.back() |= static_cast<std::uint8_t>(1u << (nbits & 7));
    ++nbits;
  }
};
struct bit_reader {
  const std::uint8_t* p;
  std::uint64_t nbits, pos = 0;
  bool get(bool& b) {
    if (pos >= nbits) return false;
    b = (p[pos >> 3] >> (pos & 7)) & 1u;
    ++pos;
    return true;
  }
};

/// Rice-coded size in bits of the gaps for parameter k.
inline std::uint64_t rice_bits(const std::vector<std::uint64_t>& gaps, int k) {
  std::uint64_t n = 0;
  for (auto g : gaps) n += (g >> k) + 1 + static_cast<std::uint64_t>(k);
  return n;
}
inline std::vector<std::uint8_t> rice_encode(const std::vector<std::uint64_t>& gaps, int k) {
  bit_writer w;
  for (auto g : gaps) {
    for (std::uint64_t q = g >> k; q > 0; --q) w.put(true);
    w.put(false);
    for (int b = 0; b < k; ++b) w.put((g >> b) & 1u);
  }
  return std::move(w.bytes);
}
}  // namespace detail_compact

/// Writes `adapter` as a compact LoRI file at `path` (atomically). If `a_gen` is given and its
/// generate() reproduces a module's A bit for bit, that module's A is stored as the generator's
/// (seed, stream, distribution) only; otherwise A is stored densely. Returns the size report.
inline compact_stats pack_adapter(const peft_adapter& adapter, const std::string& path, const compact_a_generator* a_gen = nullptr) {
  safetensors_writer w;
  nlohmann::ordered_json mods = nlohmann::ordered_json::object();
  compact_stats st;
  for (const auto& m : adapter.modules) {
    LORI_EXPECTS(static_cast<index_t>(m.A.size()) == m.rank * m.in_features && static_cast<index_t>(m.B.size()) == m.out_features * m.rank,
                 "pack_adapter: module A/B sizes do not match its shape");
    const dtype t = (m.stored_type == dtype::BF16 || m.stored_type == dtype::F16) ? m.stored_type : dtype::F32;
    bitmask mask(m.out_features, m.rank);
    std::vector<std::uint8_t> values;
    for (index_t i = 0; i < m.out_features; ++i)
      for (index_t j = 0; j < m.rank; ++j) {
        const float v = m.B[static_cast<std::size_t>(i * m.rank + j)];
        if (detail_compact::bits_of(v) != 0) {
          mask.set(i, j);
          detail_compact::put_value(values, t, v);
        }
      }
    const index_t nnz = mask.count();
    st.kept += nnz;
    st.b_entries += m.out_features * m.rank;
    st.peft_bytes += (m.rank * m.in_features + m.out_features * m.rank) * dtype_size(t);
    const index_t nbits = m.out_features * m.rank;
    std::vector<std::uint8_t> packed(static_cast<std::size_t>((nbits + 7) / 8), 0);
    std::vector<std::uint64_t> gaps;
    gaps.reserve(static_cast<std::size_t>(nnz));
    index_t prev = -1;
    for (index_t i = 0; i < m.out_features; ++i)
      for (index_t j = 0; j < m.rank; ++j)
        if (mask.view().test(i, j)) {
          const index_t k = i * m.rank + j;
          packed[static_cast<std::size_t>(k >> 3)] |= static_cast<std::uint8_t>(1u << (k & 7));
          gaps.push_back(static_cast<std::uint64_t>(k - prev - 1));
          prev = k;
        }
    int best_k = 0;
    std::uint64_t best_bits = detail_compact::rice_bits(gaps, 0);
    for (int k = 1; k < 40; ++k) {
      const std::uint64_t b = detail_compact::rice_bits(gaps, k);
      if (b < best_bits) {
        best_bits = b;
        best_k = k;
      }
    }
    nlohmann::ordered_json mask_coding = "bitmap";
    if ((best_bits + 7) / 8 < packed.size()) {
      packed = detail_compact::rice_encode(gaps, best_k);
      mask_coding = {{"rice", best_k}};
    }
    const auto packed_n = static_cast<index_t>(packed.size());
    w.add_bytes(m.name + ".B.mask", dtype::U8, {packed_n}, std::move(packed));
    w.add_bytes(m.name + ".B.values", t, {nnz}, std::move(values));
    nlohmann::ordered_json e;
    e["rank"] = m.rank;
    e["in"] = m.in_features;
    e["out"] = m.out_features;
    e["alpha"] = m.alpha;
    e["dtype"] = dtype_name(t);
    e["nnz"] = nnz;
    e["mask"] = mask_coding;
    bool generated = false;
    const std::uint64_t a_stream = (a_gen != nullptr && a_gen->stream_of) ? a_gen->stream_of(m.name) : (a_gen ? a_gen->stream : 0);
    if (a_gen != nullptr && a_gen->generate) {
      std::vector<float> regen;
      a_gen->generate(m.name, m.rank, m.in_features, a_gen->seed, a_stream, a_gen->distribution, regen);
      generated = regen.size() == m.A.size() && (regen.empty() || std::memcmp(regen.data(), m.A.data(), regen.size() * sizeof(float)) == 0);
    }
    if (generated) {
      e["A"] = {{"generator", a_gen->generator}, {"seed", a_gen->seed}, {"stream", a_stream}, {"distribution", a_gen->distribution}};
    } else {
      e["A"] = "dense";
      std::vector<std::uint8_t> abytes;
      abytes.reserve(m.A.size() * static_cast<std::size_t>(dtype_size(t)));
      for (float v : m.A) detail_compact::put_value(abytes, t, v);
      w.add_bytes(m.name + ".A", t, {m.rank, m.in_features}, std::move(abytes));
    }
    mods[m.name] = e;
  }
  w.set_metadata("lori.format", "compact-lori");
  w.set_metadata("lori.version", "1");
  w.set_metadata("lori.peft_config", peft_config_json(adapter));
  w.set_metadata("lori.modules", mods.dump());
  std::size_t total = 0;
  w.write_to([&](const void*, std::size_t n) { total += n; });
  st.compact_bytes = static_cast<index_t>(total);
  w.save(path);
  return st;
}

/// Reads a compact LoRI file back into a PEFT adapter (bit-exact inverse of pack_adapter). Modules
/// whose A was stored as a generator need `a_gen` with a matching generator name.
inline peft_adapter unpack_adapter(const safetensors_file& f, const compact_a_generator* a_gen = nullptr);
inline peft_adapter unpack_adapter(const std::string& path, const compact_a_generator* a_gen = nullptr) {
  return unpack_adapter(safetensors_file::open(path), a_gen);
}

/// The same, from an already opened (or in-memory) file.
inline peft_adapter unpack_adapter(const safetensors_file& f, const compact_a_generator* a_gen) {
  const std::string& path = f.source();
  const auto& md = f.metadata();
  auto meta = [&](const char* key) -> const std::string& {
    auto it = md.find(key);
    if (it == md.end()) detail::io_fail(path + ": not a compact LoRI file (metadata '" + key + "' missing)");
    return it->second;
  };
  if (meta("lori.format") != "compact-lori") detail::io_fail(path + ": not a compact LoRI file (lori.format is '" + meta("lori.format") + "')");
  if (meta("lori.version") != "1") detail::io_fail(path + ": unsupported compact LoRI version '" + meta("lori.version") + "'");
  peft_adapter ad;
  ad.config = peft_config::parse(meta("lori.peft_config"), path + " (lori.peft_config)");
  nlohmann::ordered_json mods;
  try {
    std::size_t deep = 0;
    if (detail::json_max_depth(meta("lori.modules"), 16, deep) > 16) detail::io_fail(path + ": lori.modules nested too deeply");
    mods = nlohmann::ordered_json::parse(meta("lori.modules"));
  } catch (const nlohmann::json::exception& e) {
    detail::io_fail(path + ": lori.modules is not valid JSON: " + e.what());
  }
  if (!mods.is_object()) detail::io_fail(path + ": lori.modules is not an object");
  std::size_t used_tensors = 0;
  for (auto it = mods.begin(); it != mods.end(); ++it) {
    const std::string& name = it.key();
    const auto& e = it.value();
    const std::string where = path + ": module '" + name + "'";
    auto int_field = [&](const char* k) -> index_t {
      if (!e.is_object() || !e.contains(k) || !e[k].is_number_integer() || e[k].get<long long>() < 0 || e[k].get<long long>() > (1LL << 40))
        detail::io_fail(where + ": field '" + k + "' must be a non-negative integer");
      return e[k].get<long long>();
    };
    lora_module m;
    m.name = name;
    m.rank = int_field("rank");
    m.in_features = int_field("in");
    m.out_features = int_field("out");
    if (m.rank == 0) detail::io_fail(where + ": rank must be positive");
    // Bound what a (possibly hostile) file can make us allocate: B and A are rebuilt densely, so their
    // sizes must be plausible for the file's size (1024 entries a byte is far beyond any real coding).
    {
      const std::uint64_t cap = std::max<std::uint64_t>(std::uint64_t{1} << 24, static_cast<std::uint64_t>(f.file_bytes()) * 1024u);
      std::uint64_t nb = 0, na = 0;
      if (!detail::checked_mul(static_cast<std::uint64_t>(m.out_features), static_cast<std::uint64_t>(m.rank), nb) || nb > cap ||
          !detail::checked_mul(static_cast<std::uint64_t>(m.in_features), static_cast<std::uint64_t>(m.rank), na) || na > cap)
        detail::io_fail(where + ": shape out=" + std::to_string(m.out_features) + ", in=" + std::to_string(m.in_features) + ", rank=" +
                        std::to_string(m.rank) + " is implausibly large for a " + std::to_string(f.file_bytes()) + "-byte file");
    }
    if (!e.contains("alpha") || !e["alpha"].is_number()) detail::io_fail(where + ": field 'alpha' must be a number");
    m.alpha = e["alpha"].get<double>();
    m.scaling = ad.config.scaling_for(m.rank, m.alpha);
    if (!e.contains("dtype") || !e["dtype"].is_string()) detail::io_fail(where + ": field 'dtype' must be a string");
    const auto t = parse_dtype(e["dtype"].get<std::string>());
    if (!t || (*t != dtype::F32 && *t != dtype::BF16 && *t != dtype::F16)) detail::io_fail(where + ": dtype must be F32, BF16 or F16");
    m.stored_type = *t;
    const auto& mask_t = f.at(name + ".B.mask");
    const auto& val_t = f.at(name + ".B.values");
    used_tensors += 2;
    const index_t nbits = m.out_features * m.rank;
    if (mask_t.type != dtype::U8 || mask_t.shape.size() != 1) detail::io_fail(where + ": B.mask must be a 1-D U8 tensor");
    const std::uint8_t* bits = f.raw(mask_t);
    const index_t mask_bytes = mask_t.shape[0];
    bitmask mask(m.out_features, m.rank);
    if (!e.contains("mask")) detail::io_fail(where + ": field 'mask' missing");
    if (e["mask"].is_string() && e["mask"].get<std::string>() == "bitmap") {
      if (mask_bytes != (nbits + 7) / 8) detail::io_fail(where + ": bitmap B.mask must hold ceil(out*rank/8) bytes");
      if (nbits % 8 != 0 && (bits[nbits / 8] >> (nbits % 8)) != 0) detail::io_fail(where + ": B.mask has bits set past out*rank");
      for (index_t i = 0; i < m.out_features; ++i)
        for (index_t j = 0; j < m.rank; ++j) {
          const index_t k = i * m.rank + j;
          if ((bits[k >> 3] >> (k & 7)) & 1u) mask.set(i, j);
        }
    } else if (e["mask"].is_object() && e["mask"].contains("rice") && e["mask"]["rice"].is_number_integer() &&
               e["mask"]["rice"].get<long long>() >= 0 && e["mask"]["rice"].get<long long>() < 40) {
      const int k = static_cast<int>(e["mask"]["rice"].get<long long>());
      const index_t count = int_field("nnz");
      if (count > nbits) detail::io_fail(where + ": nnz exceeds out*rank");
      detail_compact::bit_reader rd{bits, static_cast<std::uint64_t>(mask_bytes) * 8};
      index_t prev = -1;
      for (index_t c = 0; c < count; ++c) {
        std::uint64_t q = 0, r = 0;
        bool b = true;
        while (true) {
          if (!rd.get(b)) detail::io_fail(where + ": Rice-coded B.mask ends early");
          if (!b) break;
          if (++q > static_cast<std::uint64_t>(nbits)) detail::io_fail(where + ": Rice-coded B.mask gap out of range");
        }
        for (int t = 0; t < k; ++t) {
          if (!rd.get(b)) detail::io_fail(where + ": Rice-coded B.mask ends early");
          if (b) r |= std::uint64_t{1} << t;
        }
        const std::uint64_t gap = (q << k) | r;
        if (gap >= static_cast<std::uint64_t>(nbits - prev - 1)) detail::io_fail(where + ": Rice-coded B.mask position past out*rank");
        const index_t pos = prev + 1 + static_cast<index_t>(gap);
        mask.set(pos / m.rank, pos % m.rank);
        prev = pos;
      }
      if ((rd.pos + 7) / 8 != static_cast<std::uint64_t>(mask_bytes)) detail::io_fail(where + ": Rice-coded B.mask has trailing bytes");
    } else {
      detail::io_fail(where + ": field 'mask' must be \"bitmap\" or {\"rice\": k} with 0 <= k < 40");
    }
    const index_t nnz = mask.count();
    if (val_t.type != m.stored_type || val_t.shape != std::vector<index_t>{nnz})
      detail::io_fail(where + ": B.values must hold " + std::to_string(nnz) + " " + dtype_name(m.stored_type) + " values (one per mask bit)");
    const auto vals = f.read<float>(val_t);
    m.B.assign(static_cast<std::size_t>(m.out_features * m.rank), 0.0f);
    std::size_t p = 0;
    for (index_t i = 0; i < m.out_features; ++i)
      for (index_t j = 0; j < m.rank; ++j)
        if (mask.view().test(i, j)) m.B[static_cast<std::size_t>(i * m.rank + j)] = vals[p++];
    if (!e.contains("A")) detail::io_fail(where + ": field 'A' missing");
    if (e["A"].is_string() && e["A"].get<std::string>() == "dense") {
      const auto& a_t = f.at(name + ".A");
      ++used_tensors;
      if (a_t.type != m.stored_type || a_t.shape != std::vector<index_t>{m.rank, m.in_features})
        detail::io_fail(where + ": A must be " + dtype_name(m.stored_type) + " [rank, in]");
      m.A = f.read<float>(a_t);
    } else if (e["A"].is_object()) {
      const auto& g = e["A"];
      const std::string gen = g.contains("generator") && g["generator"].is_string() ? g["generator"].get<std::string>() : "";
      if (a_gen == nullptr || !a_gen->generate || a_gen->generator != gen)
        detail::io_fail(where + ": A is stored as generator '" + gen + "', which this build cannot regenerate");
      auto u64 = [&](const char* k) -> std::uint64_t {
        if (!g.contains(k) || !g[k].is_number_unsigned()) detail::io_fail(where + ": A generator field '" + k + "' must be a non-negative integer");
        return g[k].get<std::uint64_t>();
      };
      if (!g.contains("distribution") || !g["distribution"].is_string()) detail::io_fail(where + ": A generator field 'distribution' must be a string");
      a_gen->generate(name, m.rank, m.in_features, u64("seed"), u64("stream"), g["distribution"].get<std::string>(), m.A);
      if (static_cast<index_t>(m.A.size()) != m.rank * m.in_features) detail::io_fail(where + ": generator returned a wrong-sized A");
    } else {
      detail::io_fail(where + ": field 'A' must be \"dense\" or a generator object");
    }
    ad.modules.push_back(std::move(m));
  }
  if (used_tensors != f.tensors().size()) detail::io_fail(path + ": holds tensors not described by lori.modules");
  std::sort(ad.modules.begin(), ad.modules.end(), [](const lora_module& a, const lora_module& b) { return a.name < b.name; });
  return ad;
}

}  // namespace lori::io

#endif  // LORI_IO_COMPACT_ADAPTER_HPP
