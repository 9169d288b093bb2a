// The benchmark input: Llama-3-8B LoRA B's at rank 32 (seven projections x 32 layers, 224 tensors,
// 44,040,192 floats), N(0, 0.02^2) draws, generated once per process.
#ifndef LORI_BENCH_MASK_LLAMA_DATA_HPP
#define LORI_BENCH_MASK_LLAMA_DATA_HPP

#include "lori/mask/calibrate.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace lori_bench {

struct llama_b {
  std::vector<float> data;  // all tensors back to back (the benchmark never relies on it being one block)
  std::vector<lori::index_t> offset, rows;
  std::vector<std::string> names;
  lori::index_t rank = 32;
  lori::index_t total = 0;
  std::vector<lori::calibration_tensor<float>> tensors() const {
    std::vector<lori::calibration_tensor<float>> ts;
    for (std::size_t t = 0; t < names.size(); ++t)
      ts.push_back({names[t], lori::row_major_view<const float>(data.data() + offset[t], rows[t], rank), nullptr});
    return ts;
  }
};

inline const llama_b& llama3_8b_r32() {
  static const llama_b b = [] {
    llama_b m;
    const char* projs[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                           "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
    const lori::index_t outs[] = {4096, 1024, 1024, 4096, 14336, 14336, 4096};
    for (int l = 0; l < 32; ++l)
      for (int p = 0; p < 7; ++p) {
        m.names.push_back("base_model.model.model.layers." + std::to_string(l) + "." + projs[p] + ".lora_B.weight");
        m.offset.push_back(m.total);
        m.rows.push_back(outs[p]);
        m.total += outs[p] * m.rank;
      }
    m.data.resize(static_cast<std::size_t>(m.total));
    // splitmix64 + Box-Muller: fast, reproducible normal draws.
    std::uint64_t s = 0x9E3779B97F4A7C15ull;
    auto next = [&s] {
      std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    for (std::size_t i = 0; i + 1 < m.data.size(); i += 2) {
      const double u1 = (static_cast<double>(next() >> 11) + 1.0) * 0x1p-53, u2 = static_cast<double>(next() >> 11) * 0x1p-53;
      const double r = 0.02 * std::sqrt(-2.0 * std::log(u1));
      m.data[i] = static_cast<float>(r * std::cos(6.283185307179586 * u2));
      m.data[i + 1] = static_cast<float>(r * std::sin(6.283185307179586 * u2));
    }
    return m;
  }();
  return b;
}

}  // namespace lori_bench

#endif
