// lori_bench_io: opening a model-sized safetensors file (memory-mapped, validated) and reading a
// tensor, against what a user would otherwise write (read the whole file into memory, then parse the
// header with nlohmann-json); writing a file against a plain fwrite of the same bytes.
#include <benchmark/benchmark.h>

#include "lori/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace {
// A "model" of n_tensors F32 tensors of 1024 x 1024 (4 MiB each), written once per process.
const std::string& model_file(int n_tensors) {
  static std::string path;
  static int made = 0;
  if (made != n_tensors) {
    path = "lori_bench_io_model_" + std::to_string(n_tensors) + ".safetensors";
    lori::io::safetensors_writer w;
    std::vector<float> v(1024 * 1024);
    std::mt19937 g(1);
    std::normal_distribution<float> nd;
    for (auto& x : v) x = nd(g);
    for (int t = 0; t < n_tensors; ++t) w.add_view("model.layers." + std::to_string(t) + ".weight", lori::io::dtype::F32, {1024, 1024}, v.data());
    w.save(path);
    made = n_tensors;
  }
  return path;
}

void BM_safetensors_open_read_one(benchmark::State& state) {
  const auto& path = model_file(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    const auto f = lori::io::safetensors_file::open(path);
    const auto v = f.read<float>("model.layers.0.weight");
    benchmark::DoNotOptimize(v.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 4 * 1024 * 1024);
}

void BM_safetensors_open_read_one_baseline_ifstream_json(benchmark::State& state) {
  const auto& path = model_file(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    const auto h = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
    const auto off = h["model.layers.0.weight"]["data_offsets"][0].get<std::size_t>();
    std::vector<float> v(1024 * 1024);
    std::memcpy(v.data(), bytes.data() + 8 + n + off, v.size() * 4);
    benchmark::DoNotOptimize(v.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 4 * 1024 * 1024);
}

void BM_safetensors_read_bf16_as_float(benchmark::State& state) {
  lori::io::safetensors_writer w;
  std::vector<lori::bfloat16> v(1 << 20);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = lori::bfloat16(static_cast<float>(i % 1000) * 0.001f);
  w.add("x", {1 << 20}, v);
  const auto f = lori::io::safetensors_file::from_memory(w.serialize());
  for (auto _ : state) {
    const auto out = f.read<float>("x");
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * (1 << 20));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * (1 << 20) * 6);
}

void BM_safetensors_read_bf16_as_float_baseline_memcpy_f32(benchmark::State& state) {
  std::vector<float> src(1 << 20, 1.0f), dst(1 << 20);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), src.size() * 4);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * (1 << 20));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * (1 << 20) * 8);
}

void BM_safetensors_save(benchmark::State& state) {
  std::vector<float> v(1 << 22, 1.0f);
  for (auto _ : state) {
    lori::io::safetensors_writer w;
    w.add_view("x", lori::io::dtype::F32, {1 << 22}, v.data());
    w.save("lori_bench_io_out.safetensors");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * (1 << 22) * 4);
  std::remove("lori_bench_io_out.safetensors");
}

void BM_safetensors_save_baseline_fwrite(benchmark::State& state) {
  std::vector<float> v(1 << 22, 1.0f);
  for (auto _ : state) {
    std::FILE* f = std::fopen("lori_bench_io_out.bin", "wb");
    std::fwrite(v.data(), 4, v.size(), f);
    std::fclose(f);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * (1 << 22) * 4);
  std::remove("lori_bench_io_out.bin");
}
}  // namespace

BENCHMARK(BM_safetensors_open_read_one)->Arg(16)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_safetensors_open_read_one_baseline_ifstream_json)->Arg(16)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_safetensors_read_bf16_as_float)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_safetensors_read_bf16_as_float_baseline_memcpy_f32)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_safetensors_save)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_safetensors_save_baseline_fwrite)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
