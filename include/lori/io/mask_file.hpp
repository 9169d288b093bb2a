// lori/io/mask_file.hpp - LoRI-S mask files: safetensors of U8 or BOOL 0/1 tensors keyed like the
// lora_B tensors of the adapter they belong to ("base_model.model.<module>.lora_B.weight", shape
// out x r), read into / written from lori::bitmask.
//
// Requires nlohmann-json.
#ifndef LORI_IO_MASK_FILE_HPP
#define LORI_IO_MASK_FILE_HPP

#include "lori/config.hpp"
#include "lori/error.hpp"
#include "lori/io/safetensors.hpp"
#include "lori/mask/bitmask.hpp"

#include <map>
#include <string>
#include <vector>

namespace lori::io {

/// Masks by module name ("model.layers.0.self_attn.q_proj"), each out x r.
using module_masks = std::map<std::string, bitmask>;

/// Reads a mask file. Every tensor must be a 2-D U8 or BOOL tensor of 0/1 values under a key
/// "base_model.model.<module>.lora_B.weight"; anything else is a lori::error naming the tensor.
inline module_masks load_masks(const safetensors_file& f) {
  const std::string& path = f.source();
  module_masks out;
  static const std::string prefix = "base_model.model.", suffix = ".lora_B.weight";
  for (const auto& t : f.tensors()) {
    const std::string where = path + ": tensor '" + t.name + "'";
    if (t.name.size() <= prefix.size() + suffix.size() || t.name.compare(0, prefix.size(), prefix) != 0 ||
        t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0)
      detail::io_fail(where + ": mask keys must look like 'base_model.model.<module>.lora_B.weight'");
    if (t.type != dtype::U8 && t.type != dtype::BOOL) detail::io_fail(where + ": mask tensors must be U8 or BOOL, not " + dtype_name(t.type));
    if (t.shape.size() != 2) detail::io_fail(where + ": mask tensors must be 2-D (out x r)");
    const std::uint8_t* p = f.raw(t);
    const index_t rows = t.shape[0], cols = t.shape[1];
    bitmask m(rows, cols);
    auto* w = m.word_data();
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < cols; ++j) {
        const std::uint8_t v = p[i * cols + j];
        if (v > 1) detail::io_fail(where + ": value " + std::to_string(v) + " at (" + std::to_string(i) + ", " + std::to_string(j) + ") is not 0 or 1");
        if (v) w[i * m.words_per_row() + (j >> 6)] |= std::uint64_t{1} << (j & 63);
      }
    out.emplace(t.name.substr(prefix.size(), t.name.size() - prefix.size() - suffix.size()), std::move(m));
  }
  return out;
}

/// Opens and reads the mask file at `path`.
inline module_masks load_masks(const std::string& path) { return load_masks(safetensors_file::open(path)); }

/// Writes masks as a safetensors file of `type` (U8 or BOOL) tensors, atomically. `metadata` goes
/// to "__metadata__" (e.g. sparsity, granularity, the tool that made it).
inline void save_masks(const std::string& path, const module_masks& masks, dtype type = dtype::U8,
                       const std::map<std::string, std::string>& metadata = {}) {
  LORI_EXPECTS(type == dtype::U8 || type == dtype::BOOL, "save_masks: type must be U8 or BOOL");
  safetensors_writer w;
  for (const auto& [name, m] : masks) w.add_bytes("base_model.model." + name + ".lora_B.weight", type, {m.rows(), m.cols()}, m.to_bytes());
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  w.save(path);
}

}  // namespace lori::io

#endif  // LORI_IO_MASK_FILE_HPP
