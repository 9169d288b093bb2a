// lori_bench_random (GPU part): all A's of a Llama-3-8B-shaped model at r = 32 (224 matrices, 39.85 M
// elements) generated in one launch, against cuRAND's Philox normal generator (host API) for the same
// count and a device-to-device copy of the same number of floats (the bandwidth reference).
// Timed with CUDA events (UseManualTime). Bytes: ours and cuRAND count bytes written; the copy counts
// bytes read + written (its DRAM traffic), so "ours / copy" in bytes/s is the fraction of the copy
// bandwidth achieved.
#include <benchmark/benchmark.h>

#include "lori/cuda/device_buffer.cuh"
#include "lori/cuda/projection.cuh"
#include "lori/random/stream.hpp"

#include <cuda_runtime.h>
#include <curand.h>

#include <string>
#include <type_traits>
#include <vector>

namespace {
constexpr lori::index_t kRank = 32;

struct llama_module {
  const char* name;
  lori::index_t in_features;
};
constexpr llama_module kModules[] = {{"self_attn.q_proj", 4096}, {"self_attn.k_proj", 4096}, {"self_attn.v_proj", 4096}, {"self_attn.o_proj", 4096},
                                     {"mlp.gate_proj", 4096},    {"mlp.up_proj", 4096},      {"mlp.down_proj", 14336}};

lori::index_t llama_total() {
  lori::index_t n = 0;
  for (int l = 0; l < 32; ++l)
    for (const auto& m : kModules) n += kRank * m.in_features;
  return n;  // 39,845,888
}

template <class T>
std::vector<lori::cuda::projection_task<T>> llama_tasks(T* base, const lori::projection_spec& spec) {
  std::vector<lori::cuda::projection_task<T>> tasks;
  lori::index_t off = 0;
  for (int l = 0; l < 32; ++l) {
    for (const auto& m : kModules) {
      const std::string name = "model.layers." + std::to_string(l) + "." + m.name;
      tasks.push_back(lori::cuda::make_projection_task(base + off, kRank, m.in_features, 2026, lori::stream_from_name(name), spec));
      off += kRank * m.in_features;
    }
  }
  return tasks;
}

bool have_device(benchmark::State& state) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    state.SkipWithError("no CUDA device");
    return false;
  }
  return true;
}

template <class F>
void time_events(benchmark::State& state, F&& launch) {
  cudaEvent_t start, stop;
  LORI_CUDA_CHECK(cudaEventCreate(&start));
  LORI_CUDA_CHECK(cudaEventCreate(&stop));
  launch();  // warm-up
  LORI_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto _ : state) {
    LORI_CUDA_CHECK(cudaEventRecord(start));
    launch();
    LORI_CUDA_CHECK(cudaEventRecord(stop));
    LORI_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    LORI_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(static_cast<double>(ms) * 1e-3);
  }
  LORI_CUDA_CHECK(cudaEventDestroy(start));
  LORI_CUDA_CHECK(cudaEventDestroy(stop));
}

// Benchmark argument -> law: 0 kaiming_uniform, 1 gaussian, 2 rademacher, 3 sparse (s = 3), 4 gaussian_v2.
lori::projection_spec spec_of(int64_t d) {
  switch (d) {
    case 0: return lori::projection_spec::kaiming_uniform();
    case 1: return lori::projection_spec::gaussian();
    case 2: return lori::projection_spec::rademacher();
    case 3: return lori::projection_spec::sparse(3.0);
    default: return lori::projection_spec::gaussian_v2();
  }
}
const char* label_of(int64_t d) {
  const char* names[] = {"kaiming_uniform", "gaussian", "rademacher", "sparse3", "gaussian_v2"};
  return names[d >= 0 && d <= 4 ? d : 0];
}

// The Llama set of `spec` on the device, prepared: output, workspace and plan (every benchmark of a
// batch launch sets up through this).
template <class T>
struct llama_batch {
  lori::cuda::device_buffer<T> out;
  lori::cuda::device_buffer<unsigned char> ws;
  lori::cuda::projection_batch_plan<T> plan;
  explicit llama_batch(const lori::projection_spec& spec) : out(llama_total()) {
    const auto tasks = llama_tasks(out.data(), spec);
    const auto count = static_cast<lori::index_t>(tasks.size());
    const std::size_t ws_bytes = lori::cuda::projection_batch_workspace_bytes(count);
    ws = lori::cuda::device_buffer<unsigned char>(static_cast<lori::index_t>(ws_bytes));
    plan = lori::cuda::prepare_projection_batch(tasks.data(), count, ws.data(), ws_bytes);
  }
};

template <class T>
void generate_llama(benchmark::State& state) {
  if (!have_device(state)) return;
  const lori::index_t n = llama_total();
  const llama_batch<T> batch(spec_of(state.range(0)));
  time_events(state, [&] { lori::cuda::generate_projection_batch(batch.plan); });
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * static_cast<int64_t>(sizeof(T)));
  state.SetLabel(label_of(state.range(0)));
}

void BM_gpu_generate_llama3_8b_r32(benchmark::State& state) { generate_llama<float>(state); }

// The gaussian (float) with the row path switched off (the general per-thread-cursor path for every
// task), same kernel and grid: what the row path gains, measured in the same run.
void BM_gpu_generate_llama3_8b_r32_general_path(benchmark::State& state) {
  if (!have_device(state)) return;
  const lori::index_t n = llama_total();
  const llama_batch<float> batch(spec_of(state.range(0)));
  time_events(state, [&] { lori::cuda::detail_proj::launch_projection_batch(batch.plan, batch.plan.blocks, nullptr, 0, 0); });
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * static_cast<int64_t>(sizeof(float)));
  state.SetLabel(label_of(state.range(0)));
}
void BM_gpu_generate_llama3_8b_r32_bf16(benchmark::State& state) { generate_llama<lori::bfloat16>(state); }

// Diagnostics of the launch: /0 kaiming, /1 gaussian. _x10: ten launches between the events (time per
// launch; back-to-back launches hide the host's launch latency). _tiny: one 1 x 4096 matrix per launch
// (the fixed cost of a launch of the kernel variant).
void BM_gpu_generate_llama3_8b_r32_x10(benchmark::State& state) {
  if (!have_device(state)) return;
  const lori::index_t n = llama_total();
  const llama_batch<float> batch(spec_of(state.range(0)));
  time_events(state, [&] {
    for (int r = 0; r < 10; ++r) lori::cuda::generate_projection_batch(batch.plan);
  });
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n * 10);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * 10 * static_cast<int64_t>(sizeof(float)));
}
void BM_gpu_generate_tiny(benchmark::State& state) {
  if (!have_device(state)) return;
  lori::cuda::device_buffer<float> out(4096);
  const auto task = lori::cuda::make_projection_task(out.data(), 1, 4096, 2026, 7, spec_of(state.range(0)));
  const std::size_t ws_bytes = lori::cuda::projection_batch_workspace_bytes(1);
  lori::cuda::device_buffer<unsigned char> ws(static_cast<lori::index_t>(ws_bytes));
  const auto plan = lori::cuda::prepare_projection_batch(&task, 1, ws.data(), ws_bytes);
  time_events(state, [&] { lori::cuda::generate_projection_batch(plan); });
}

// The gaussian with other gaussian kernel configurations (detail::gaussian_cfg<K, MinBlocks,
// DrainBlocks, Split, Buffers>: row-path units per thread and window, blocks per SM, Philox blocks per
// lane between block drains, two-round drains, pools of lists used in turn), same plan. Float: /0 two
// rounds every 8 windows with one pool (session 5's library), /1 two pools, every 6 windows, /2 two
// pools, every 12 (session 6, checkpoint 4: 82.3 / 81.4 / 81.3 us against the library's 78.1;
// checkpoint 3: every 16 / 4 windows 91.4 / 89.3); bf16: /0 one round every 6 windows, /1 every 12, /2
// every 16 (checkpoint 4: 75.8 / 74.9 / 76.6 against 74.8; checkpoint 3: two rounds every 4 windows
// 78.7, two pools of 64-entry lists 118). The library's (detail::gaussian_cfg_lib<T>): float two rounds every 8 windows
// with two pools, bf16 one round every 8 windows (BM_gpu_generate_llama3_8b_r32/1, _bf16/1).
template <class T>
void generate_llama_cfg(benchmark::State& state) {
  if (!have_device(state)) return;
  const lori::index_t n = llama_total();
  const llama_batch<T> batch(lori::projection_spec::gaussian());
  namespace d = lori::cuda::detail_proj;
  auto run = [&](auto cfg) {
    using C = decltype(cfg);
    const lori::index_t blocks = d::projection_grid_cfg<C>(batch.plan);
    time_events(state, [&] { d::launch_projection_batch_cfg<C>(batch.plan, blocks, nullptr); });
    state.counters["blocks"] = static_cast<double>(blocks);
  };
  const auto v = state.range(0);
  if constexpr (std::is_same_v<T, float>) {
    if (v == 0) run(d::gaussian_cfg<1, 4, 8, 1>{});
    if (v == 1) run(d::gaussian_cfg<1, 4, 6, 1, 2>{});
    if (v == 2) run(d::gaussian_cfg<1, 4, 12, 1, 2>{});
  } else {
    if (v == 0) run(d::gaussian_cfg<1, 4, 12>{});
    if (v == 1) run(d::gaussian_cfg<1, 4, 24>{});
    if (v == 2) run(d::gaussian_cfg<1, 4, 32>{});
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * static_cast<int64_t>(sizeof(T)));
  state.SetLabel("gaussian");
}
void BM_gpu_generate_llama3_8b_r32_cfg(benchmark::State& state) { generate_llama_cfg<float>(state); }
void BM_gpu_generate_llama3_8b_r32_bf16_cfg(benchmark::State& state) { generate_llama_cfg<lori::bfloat16>(state); }

// One matrix with the same element count (32 x 1,245,184) through generate_projection (the single-
// matrix kernel: the entry is a kernel parameter, the grid is computed per call).
void BM_gpu_generate_single_32x1245184(benchmark::State& state) {
  if (!have_device(state)) return;
  const lori::index_t n = llama_total(), rows = 32, cols = n / rows;
  lori::cuda::device_buffer<float> out(n);
  const auto spec = spec_of(state.range(0));
  time_events(state, [&] { lori::cuda::generate_projection(out.as_matrix(rows, cols), 2026, 7, spec); });
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * 4);
  state.SetLabel(label_of(state.range(0)));
}

void BM_gpu_baseline_curand_normal(benchmark::State& state) {
  if (!have_device(state)) return;
  const lori::index_t n = llama_total();
  lori::cuda::device_buffer<float> out(n);
  curandGenerator_t gen;
  if (curandCreateGenerator(&gen, CURAND_RNG_PSEUDO_PHILOX4_32_10) != CURAND_STATUS_SUCCESS) {
    state.SkipWithError("curandCreateGenerator failed");
    return;
  }
  curandSetPseudoRandomGeneratorSeed(gen, 2026);
  time_events(state, [&] {
    if (curandGenerateNormal(gen, out.data(), static_cast<std::size_t>(n), 0.0f, 1.0f) != CURAND_STATUS_SUCCESS)
      state.SkipWithError("curandGenerateNormal failed");
  });
  curandDestroyGenerator(gen);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * 4);
}

void BM_gpu_baseline_d2d_copy(benchmark::State& state) {
  if (!have_device(state)) return;
  const lori::index_t n = llama_total();
  lori::cuda::device_buffer<float> src(n), dst(n);
  src.fill_bytes(0);
  time_events(state, [&] { LORI_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), src.bytes(), cudaMemcpyDeviceToDevice)); });
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * 4 * 2);  // read + write
}
}  // namespace

BENCHMARK(BM_gpu_baseline_d2d_copy)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_generate_llama3_8b_r32)->DenseRange(0, 4)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_generate_llama3_8b_r32_bf16)->Arg(0)->Arg(1)->Arg(4)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_generate_llama3_8b_r32_general_path)->Arg(1)->Arg(4)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_generate_llama3_8b_r32_x10)->Arg(0)->Arg(1)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_generate_tiny)->Arg(0)->Arg(1)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_generate_llama3_8b_r32_cfg)->DenseRange(0, 2)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_generate_llama3_8b_r32_bf16_cfg)->DenseRange(0, 2)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_generate_single_32x1245184)->Arg(0)->Arg(1)->Arg(4)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_baseline_curand_normal)->UseManualTime()->Unit(benchmark::kMicrosecond);
