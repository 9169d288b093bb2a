// lori_bench_mask (GPU part): the same Llama-3-8B calibration (44,040,192 floats in 224 device
// tensors, s = 0.9, model granularity) with lori::cuda::calibration_plan, against
// cub::DeviceRadixSort::SortKeys of the whole array of |B| bit patterns (what a user of CUB would do
// to find tau) and a device-to-device copy of the data (the bandwidth ceiling, measured in the same
// run). Times come from CUDA events (manual time).
#include <benchmark/benchmark.h>

#include "llama_data.hpp"
#include "lori/cuda/calibrate.cuh"
#include "lori/cuda/device_buffer.cuh"

#include <cub/device/device_radix_sort.cuh>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace {

bool have_device(benchmark::State& state) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    state.SkipWithError("no CUDA device");
    return false;
  }
  return true;
}

struct gpu_llama {
  lori::cuda::device_buffer<float> data;
  lori::cuda::device_buffer<std::uint64_t> masks;
  std::vector<lori::cuda::device_calibration_tensor<float>> tensors;
  lori::index_t total = 0;
};

const gpu_llama& gpu_data() {
  static const gpu_llama g = [] {
    const auto& b = lori_bench::llama3_8b_r32();
    gpu_llama d;
    d.total = b.total;
    d.data = lori::cuda::device_buffer<float>(b.data);
    lori::index_t words = 0;
    for (auto r : b.rows) words += r * lori::bitmask_words_per_row(b.rank);
    d.masks = lori::cuda::device_buffer<std::uint64_t>(words);
    lori::index_t w = 0;
    for (std::size_t t = 0; t < b.names.size(); ++t) {
      lori::cuda::device_calibration_tensor<float> x;
      x.name = b.names[t];
      x.values = lori::row_major_view<const float>(d.data.data() + b.offset[t], b.rows[t], b.rank);
      x.mask = lori::mutable_bitmask_view{const_cast<std::uint64_t*>(d.masks.data()) + w, b.rows[t], b.rank,
                                          lori::bitmask_words_per_row(b.rank)};
      w += b.rows[t] * lori::bitmask_words_per_row(b.rank);
      d.tensors.push_back(x);
    }
    return d;
  }();
  return g;
}

template <class F>
void time_events(benchmark::State& state, F&& f) {
  cudaEvent_t start, stop;
  LORI_CUDA_CHECK(cudaEventCreate(&start));
  LORI_CUDA_CHECK(cudaEventCreate(&stop));
  f();  // warm-up
  LORI_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto _ : state) {
    LORI_CUDA_CHECK(cudaEventRecord(start));
    f();
    LORI_CUDA_CHECK(cudaEventRecord(stop));
    LORI_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    LORI_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(static_cast<double>(ms) * 1e-3);
  }
  LORI_CUDA_CHECK(cudaEventDestroy(start));
  LORI_CUDA_CHECK(cudaEventDestroy(stop));
}

void calibrate_llama3_8b(benchmark::State& state, bool dependent_launch, bool fused_select = true, bool segments = true) {
  if (!have_device(state)) return;
  const auto& d = gpu_data();
  lori::calibration_options opt;
  opt.sparsity = 0.9;
  opt.semantics = state.range(0) == 0 ? lori::mask_semantics::reference : lori::mask_semantics::exact;
  opt.granularity = static_cast<lori::mask_granularity>(state.range(1));
  lori::cuda::calibration_plan<float> plan(d.tensors, opt);
  plan.set_dependent_launch(dependent_launch);
  plan.set_fused_select(fused_select);
  plan.set_finish_segments(segments);
  lori::cuda::device_buffer<std::byte> ws(static_cast<lori::index_t>(plan.workspace_bytes()));
  plan.run(ws.data(), ws.bytes(), nullptr);  // uploads the descriptors once
  time_events(state, [&] { plan.run(ws.data(), ws.bytes(), nullptr, true); });
  const auto rep = plan.report(ws.data(), nullptr);
  state.counters["kept"] = static_cast<double>(rep.total_kept);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * d.total * static_cast<int64_t>(sizeof(float)));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * d.total);
}

void BM_gpu_calibrate_llama3_8b(benchmark::State& state) { calibrate_llama3_8b(state, true); }
// The same with ordinary launches (each kernel starts after the previous one completed).
void BM_gpu_calibrate_llama3_8b_serial(benchmark::State& state) { calibrate_llama3_8b(state, false); }
// The same with a separate launch for every select step (the default folds them into the kernels
// before them when there are at most two groups).
void BM_gpu_calibrate_llama3_8b_unfused(benchmark::State& state) { calibrate_llama3_8b(state, true, false); }
// The default with calib_finish by candidates instead of by the split blocks' segments.
void BM_gpu_calibrate_llama3_8b_no_segments(benchmark::State& state) { calibrate_llama3_8b(state, true, true, false); }

__global__ void abs_bits(const float* x, std::uint32_t* k, lori::index_t n) {
  const lori::index_t i = blockIdx.x * static_cast<lori::index_t>(blockDim.x) + threadIdx.x;
  if (i < n) k[i] = lori::magnitude_bits(x[i]);
}

void BM_gpu_calibrate_baseline_cub_radix_sort(benchmark::State& state) {
  if (!have_device(state)) return;
  const auto& d = gpu_data();
  const auto n = d.total;
  lori::cuda::device_buffer<std::uint32_t> keys(n), sorted(n);
  abs_bits<<<static_cast<unsigned>((n + 255) / 256), 256>>>(d.data.data(), keys.data(), n);
  LORI_CUDA_CHECK_LAUNCH();
  std::size_t temp = 0;
  LORI_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp, keys.data(), sorted.data(), static_cast<int>(n), 0, 31));
  lori::cuda::device_buffer<std::byte> tmp(static_cast<lori::index_t>(temp));
  time_events(state, [&] {
    LORI_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(tmp.data(), temp, keys.data(), sorted.data(), static_cast<int>(n), 0, 31));
  });
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * static_cast<int64_t>(sizeof(float)));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
}

void BM_gpu_baseline_d2d_copy(benchmark::State& state) {
  if (!have_device(state)) return;
  const auto& d = gpu_data();
  lori::cuda::device_buffer<float> dst(d.total);
  time_events(state, [&] {
    LORI_CUDA_CHECK(cudaMemcpyAsync(dst.data(), d.data.data(), d.data.bytes(), cudaMemcpyDeviceToDevice, nullptr));
  });
  // Bytes moved: read + write. "One read at copy bandwidth" = half of this benchmark's time.
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 2 * d.total * static_cast<int64_t>(sizeof(float)));
}

}  // namespace

// Args: {semantics (0 reference, 1 exact), granularity (0 model, 1 layer, 2 module, 3 projection, 4 matrix)}.
BENCHMARK(BM_gpu_calibrate_llama3_8b)
    ->Args({0, 0})->Args({0, 1})->Args({0, 2})->Args({0, 3})->Args({0, 4})
    ->Args({1, 0})->Args({1, 1})->Args({1, 4})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_calibrate_llama3_8b_serial)->Args({0, 0})->Args({1, 0})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_calibrate_llama3_8b_unfused)->Args({0, 0})->Args({1, 0})->Args({0, 2})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_calibrate_llama3_8b_no_segments)->Args({0, 0})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_calibrate_baseline_cub_radix_sort)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gpu_baseline_d2d_copy)->UseManualTime()->Unit(benchmark::kMicrosecond);
