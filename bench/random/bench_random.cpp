// lori_bench_random (CPU part): generating projections, one thread, against what a C++ user would
// otherwise write: std::mt19937 + std::normal_distribution / std::uniform_real_distribution.
// Shape r = 32, k = 4096 (one q_proj A of Llama-3-8B at rank 32), float output.
#include <benchmark/benchmark.h>

#include "lori/random/philox.hpp"
#include "lori/random/projection.hpp"

#include <random>
#include <vector>

namespace {
constexpr lori::index_t kRows = 32, kCols = 4096;

void set_counters(benchmark::State& state, lori::index_t n) {
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * static_cast<int64_t>(sizeof(float)));
}

void generate(benchmark::State& state, const lori::projection_spec& spec, bool allow_simd) {
  std::vector<float> a(static_cast<std::size_t>(kRows * kCols));
  const auto p = lori::make_projection_params(spec, kRows, kCols);
  std::uint64_t seed = 1;
  for (auto _ : state) {
    lori::detail::fill_projection_tile(lori::matrix_view<float>(a.data(), kRows, kCols), 0, 0, seed++, 7, p, allow_simd);
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, kRows * kCols);
}

void BM_generate_gaussian(benchmark::State& state) { generate(state, lori::projection_spec::gaussian(), true); }
void BM_generate_gaussian_generic_path(benchmark::State& state) { generate(state, lori::projection_spec::gaussian(), false); }
void BM_generate_gaussian_v2(benchmark::State& state) { generate(state, lori::projection_spec::gaussian_v2(), true); }
void BM_generate_gaussian_v2_generic_path(benchmark::State& state) { generate(state, lori::projection_spec::gaussian_v2(), false); }
void BM_generate_kaiming_uniform(benchmark::State& state) { generate(state, lori::projection_spec::kaiming_uniform(), true); }
void BM_generate_rademacher(benchmark::State& state) { generate(state, lori::projection_spec::rademacher(), true); }
void BM_generate_sparse(benchmark::State& state) { generate(state, lori::projection_spec::sparse(3.0), true); }

void BM_generate_baseline_mt19937_normal(benchmark::State& state) {
  std::vector<float> a(static_cast<std::size_t>(kRows * kCols));
  std::mt19937 g(1);
  std::normal_distribution<float> nd(0.0f, 1.0f / std::sqrt(static_cast<float>(kRows)));
  for (auto _ : state) {
    for (auto& x : a) x = nd(g);
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, kRows * kCols);
}

void BM_generate_baseline_mt19937_uniform(benchmark::State& state) {
  std::vector<float> a(static_cast<std::size_t>(kRows * kCols));
  std::mt19937 g(1);
  const float b = 1.0f / std::sqrt(static_cast<float>(kCols));
  std::uniform_real_distribution<float> ud(-b, b);
  for (auto _ : state) {
    for (auto& x : a) x = ud(g);
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, kRows * kCols);
}

// Raw Philox4x32-10 words (random access) against std::mt19937 words.
void BM_philox_words(benchmark::State& state) {
  std::vector<std::uint32_t> w(1 << 16);
  const lori::counter_rng g(1, 2);
  std::uint64_t base = 0;
  for (auto _ : state) {
    for (std::size_t q = 0; q < w.size() / 4; ++q) {
      const auto b = g.block(base + q);
      w[4 * q + 0] = b.v[0];
      w[4 * q + 1] = b.v[1];
      w[4 * q + 2] = b.v[2];
      w[4 * q + 3] = b.v[3];
    }
    base += w.size() / 4;
    benchmark::DoNotOptimize(w.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * w.size()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * w.size() * 4));
}

void BM_philox_words_baseline_mt19937(benchmark::State& state) {
  std::vector<std::uint32_t> w(1 << 16);
  std::mt19937 g(1);
  for (auto _ : state) {
    for (auto& x : w) x = g();
    benchmark::DoNotOptimize(w.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * w.size()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * w.size() * 4));
}
}  // namespace

BENCHMARK(BM_generate_gaussian);
BENCHMARK(BM_generate_gaussian_generic_path);
BENCHMARK(BM_generate_gaussian_v2);
BENCHMARK(BM_generate_gaussian_v2_generic_path);
BENCHMARK(BM_generate_baseline_mt19937_normal);
BENCHMARK(BM_generate_kaiming_uniform);
BENCHMARK(BM_generate_baseline_mt19937_uniform);
BENCHMARK(BM_generate_rademacher);
BENCHMARK(BM_generate_sparse);
BENCHMARK(BM_philox_words);
BENCHMARK(BM_philox_words_baseline_mt19937);
BENCHMARK_MAIN();
