// lori_bench_mask (CPU part): global top-10% magnitude calibration of Llama-3-8B's LoRA B's (r = 32,
// 224 tensors, 44,040,192 floats), one thread, against what a user would otherwise write: concatenate
// |B| into one array and std::nth_element (or std::sort) it, then threshold every tensor.
#include <benchmark/benchmark.h>

#include "llama_data.hpp"
#include "lori/mask/calibrate.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

namespace {

void set_counters(benchmark::State& state, lori::index_t n) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * static_cast<int64_t>(sizeof(float)));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
}

void BM_calibrate_llama3_8b(benchmark::State& state) {
  const auto& b = lori_bench::llama3_8b_r32();
  const auto ts = b.tensors();
  lori::calibration_options opt;
  opt.sparsity = 0.9;
  opt.semantics = state.range(0) == 0 ? lori::mask_semantics::reference : lori::mask_semantics::exact;
  opt.granularity = static_cast<lori::mask_granularity>(state.range(1));
  for (auto _ : state) {
    auto r = lori::calibrate_mask(ts, opt);
    benchmark::DoNotOptimize(r.masks.data());
  }
  set_counters(state, b.total);
}

// The user's path: one concatenated copy of |B|, a selection or a sort for tau, then |B| >= tau.
template <bool Sort>
void baseline(benchmark::State& state) {
  const auto& b = lori_bench::llama3_8b_r32();
  const auto ts = b.tensors();
  const auto k = lori::calibration_keep_count(b.total, 0.9);
  for (auto _ : state) {
    std::vector<float> all;
    all.reserve(static_cast<std::size_t>(b.total));
    for (const auto& t : ts)
      for (lori::index_t i = 0; i < t.values.rows(); ++i)
        for (lori::index_t j = 0; j < t.values.cols(); ++j) all.push_back(std::fabs(t.values(i, j)));
    if (Sort) std::sort(all.begin(), all.end(), std::greater<>());
    else std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), std::greater<>());
    const float tau = all[static_cast<std::size_t>(k - 1)];
    std::vector<lori::bitmask> masks;
    for (const auto& t : ts) {
      lori::bitmask m(t.values.rows(), t.values.cols());
      for (lori::index_t i = 0; i < t.values.rows(); ++i)
        for (lori::index_t j = 0; j < t.values.cols(); ++j)
          if (std::fabs(t.values(i, j)) >= tau) m.word_data()[i * m.words_per_row() + (j >> 6)] |= std::uint64_t{1} << (j & 63);
      masks.push_back(std::move(m));
    }
    benchmark::DoNotOptimize(masks.data());
  }
  set_counters(state, b.total);
}
void BM_calibrate_baseline_nth_element(benchmark::State& state) { baseline<false>(state); }
void BM_calibrate_baseline_sort(benchmark::State& state) { baseline<true>(state); }

// One read of the data (a sum of |B|), the memory-speed floor of any calibration.
void BM_calibrate_baseline_one_read(benchmark::State& state) {
  const auto& b = lori_bench::llama3_8b_r32();
  for (auto _ : state) {
    float s = 0;
    for (float x : b.data) s += std::fabs(x);
    benchmark::DoNotOptimize(s);
  }
  set_counters(state, b.total);
}

}  // namespace

// Args: semantics (0 reference, 1 exact), granularity (0 model, 1 layer, 2 module, 3 projection, 4 matrix).
BENCHMARK(BM_calibrate_llama3_8b)->Args({0, 0})->Args({1, 0})->Args({0, 1})->Args({0, 4})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_calibrate_baseline_nth_element)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_calibrate_baseline_sort)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_calibrate_baseline_one_read)->Unit(benchmark::kMillisecond);
#ifndef LORI_BENCH_MASK_HAS_GPU
BENCHMARK_MAIN();
#endif
