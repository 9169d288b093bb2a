// lori_bench_core: bf16 narrowing/widening of a buffer (the conversion on every bf16 load/store in
// lori's I/O and merge paths) against Eigen::bfloat16, the baseline a user of Eigen would reach for.
#include <benchmark/benchmark.h>

#include "lori/core/float16.hpp"

#include <Eigen/Core>

#include <random>
#include <vector>

namespace {
std::vector<float> random_floats(std::size_t n) {
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& x : v) x = nd(g);
  return v;
}

void BM_float_to_bf16(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto src = random_floats(n);
  std::vector<std::uint16_t> dst(n);
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = lori::float_to_bf16_bits(src[i]);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * (sizeof(float) + 2)));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
}

void BM_float_to_bf16_baseline_eigen(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto src = random_floats(n);
  std::vector<Eigen::bfloat16> dst(n);
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = Eigen::bfloat16(src[i]);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * (sizeof(float) + 2)));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
}

void BM_half_to_float(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto f = random_floats(n);
  std::vector<std::uint16_t> src(n);
  for (std::size_t i = 0; i < n; ++i) src[i] = lori::float_to_half_bits(f[i]);
  std::vector<float> dst(n);
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = lori::half_bits_to_float(src[i]);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * (sizeof(float) + 2)));
}

void BM_half_to_float_baseline_eigen(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto f = random_floats(n);
  std::vector<Eigen::half> src(n);
  for (std::size_t i = 0; i < n; ++i) src[i] = Eigen::half(f[i]);
  std::vector<float> dst(n);
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * (sizeof(float) + 2)));
}
}  // namespace

BENCHMARK(BM_float_to_bf16)->Arg(1 << 20);
BENCHMARK(BM_float_to_bf16_baseline_eigen)->Arg(1 << 20);
BENCHMARK(BM_half_to_float)->Arg(1 << 20);
BENCHMARK(BM_half_to_float_baseline_eigen)->Arg(1 << 20);
BENCHMARK_MAIN();
