// lori_bench_cuda: lori's GPU kernels next to what a user would otherwise run (cuBLAS two-GEMM LoRA as
// PEFT does, cuSPARSE SpMM / SDDMM, cuBLAS GEMM + mask, one addmm per adapter), and a device-to-device
// copy that measures the card's bandwidth in the same run.
//
// Reading the output: every benchmark sets bytes_per_second from the bytes its operation MUST move
// (the byte floor of docs/cuda.md: inputs read once, outputs written once), so
//     time / floor time = BM_gpu_baseline_d2d_copy's bytes_per_second / this benchmark's bytes_per_second.
// Counters: floor_MB (those bytes), TFLOPS (GEMM-like work only). Timing: CUDA events around each
// iteration (UseManualTime), L2 flushed (a 128 MB memset; LORI_BENCH_FLUSH=read: a 128 MB read,
// which leaves no dirty lines) before every timed iteration; use
// --benchmark_repetitions=5 --benchmark_report_aggregates_only=true for medians.
// Shapes: bf16, d = k = 4096, r = 32, B 90% sparse (random mask), n in {1, 64, 4096, 16384}; merge into
// 14336 x 4096; AdamW over a Llama-3-8B-shaped LoRI-S adapter (224 tensors, 4.4 M kept values).
#include <benchmark/benchmark.h>

#include "lori/core/float16.hpp"
#include "lori/cuda/adapter_backward.cuh"
#include "lori/cuda/adapter_forward.cuh"
#include "lori/cuda/context.cuh"
#include "lori/cuda/device_buffer.cuh"
#include "lori/cuda/merge.cuh"
#include "lori/cuda/optim.cuh"
#include "lori/cuda/sparse_b.cuh"
#include "lori/mask/bitmask.hpp"

#include <cooperative_groups.h>
#include <cublas_v2.h>
#include <cusparse.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <exception>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using lori::index_t;
using bf16 = lori::bfloat16;
using lori::cuda::device_buffer;

constexpr index_t D = 4096, K = 4096, R = 32;  // merge also uses d = 14336 (Llama-3-8B MLP)
constexpr double density = 0.1;

// Process-lifetime objects, deliberately never destroyed (no CUDA calls from static destructors).
lori::cuda::context& ctx() {
  static auto* c = new lori::cuda::context();
  return *c;
}

// Random bf16 device data, generated on the device (fast even for 128 MB): approximately normal
// (sum of four hashed uniforms, variance matched) times `scale`; effectively never zero.
__device__ __forceinline__ std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__global__ void fill_random_kernel(bf16* out, index_t count, float scale, std::uint64_t seed) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const std::uint64_t h1 = splitmix64(seed * 0x632BE59BD9B4E019ull + static_cast<std::uint64_t>(i));
    const std::uint64_t h2 = splitmix64(h1);
    const float u = static_cast<float>(h1 & 0xffffffffu) + static_cast<float>(h1 >> 32) +
                    static_cast<float>(h2 & 0xffffffffu) + static_cast<float>(h2 >> 32);
    const float z = (u * 2.3283064365386963e-10f - 2.0f) * 1.7320508075688772f;  // mean 0, variance 1
    out[i] = bf16(scale * z);
  }
}
device_buffer<bf16> random_bf16(index_t count, double scale, std::uint64_t seed) {
  device_buffer<bf16> b(count);
  if (count > 0) {
    fill_random_kernel<<<1024, 256>>>(b.data(), count, static_cast<float>(scale), seed);
    LORI_CUDA_CHECK_LAUNCH();
    LORI_CUDA_CHECK(cudaDeviceSynchronize());
  }
  return b;
}

lori::bitmask random_mask(index_t rows, index_t cols, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::bernoulli_distribution keep(density);
  lori::bitmask m(rows, cols);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      if (keep(g)) m.set(i, j);
  return m;
}

lori::cuda::sparse_b<bf16> random_sparse_b(index_t d, index_t r, std::uint64_t seed) {
  const auto mask = random_mask(d, r, seed);
  std::mt19937_64 g(seed + 1);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<bf16> vals(static_cast<std::size_t>(mask.count()));
  for (auto& v : vals) v = bf16(nd(g));
  return lori::cuda::sparse_b<bf16>::from_host(mask, vals);
}

device_buffer<unsigned char>& flush_buffer() {
  static auto* b = new device_buffer<unsigned char>(index_t{128} << 20);  // > 50 MB L2 of H100/H200
  return *b;
}

// Reads the flush buffer (16-byte loads; the xor keeps the loads alive, the store never happens).
__global__ void l2_flush_read_kernel(const uint4* p, std::size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u && threadIdx.x == 1023) *sink = acc;
}

// LORI_BENCH_FLUSH=read: flush L2 by READING 128 MB instead of the default memset. The memset leaves
// the L2 full of dirty lines, whose write-back the timed kernel then pays (up to ~50 MB of extra DRAM
// writes: large for a kernel that reads 32 MB); reading evicts them before the timed region, so the
// kernel starts from a clean, cold L2. Both modes treat lori and the baselines alike.
bool flush_by_read() {
  static const bool r = [] {
    const char* e = std::getenv("LORI_BENCH_FLUSH");
    return e != nullptr && std::string(e) == "read";
  }();
  return r;
}

void flush_l2(int iteration, cudaStream_t s) {
  auto& b = flush_buffer();
  if (!flush_by_read()) {
    b.fill_bytes(iteration & 0xff, s);
    return;
  }
  l2_flush_read_kernel<<<1056, 256, 0, s>>>(reinterpret_cast<const uint4*>(b.data()),
                                           static_cast<std::size_t>(b.size()) / sizeof(uint4),
                                           reinterpret_cast<unsigned*>(b.data()));
  LORI_CUDA_CHECK_LAUNCH();
}

// Times f() with CUDA events per iteration (recorded as the event time / calls_per_f); flushes L2
// before each (outside the timed region). Returns false when the warm-up call failed (the benchmark is
// then marked skipped with the error).
bool time_with_events(benchmark::State& st, const std::function<void()>& f, int calls_per_f = 1) {
  cudaStream_t s = ctx().stream();
  try {
    f();  // warm-up; an unsupported library path is reported here, before the timing loop
    LORI_CUDA_CHECK(cudaStreamSynchronize(s));
  } catch (const std::exception& e) {
    st.SkipWithError(e.what());
    return false;
  }
  cudaEvent_t a, b;
  LORI_CUDA_CHECK(cudaEventCreate(&a));
  LORI_CUDA_CHECK(cudaEventCreate(&b));
  for (auto _ : st) {
    flush_l2(static_cast<int>(st.iterations()), s);
    LORI_CUDA_CHECK(cudaEventRecord(a, s));
    f();
    LORI_CUDA_CHECK(cudaEventRecord(b, s));
    LORI_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0.0f;
    LORI_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    st.SetIterationTime(static_cast<double>(ms) * 1e-3 / calls_per_f);
  }
  LORI_CUDA_CHECK(cudaEventDestroy(a));
  LORI_CUDA_CHECK(cudaEventDestroy(b));
  return true;
}

// time_with_events, then the bytes (floor_bytes per iteration) and TFLOPS counters.
void run_timed(benchmark::State& st, const std::function<void()>& f, double floor_bytes, double flops = 0.0) {
  if (!time_with_events(st, f)) return;
  st.SetBytesProcessed(static_cast<std::int64_t>(floor_bytes * static_cast<double>(st.iterations())));
  st.counters["floor_MB"] = floor_bytes / 1e6;
  if (flops > 0) st.counters["TFLOPS"] = benchmark::Counter(flops * 1e-12 * static_cast<double>(st.iterations()),
                                                            benchmark::Counter::kIsRate);
}

void gemm_rm(bool tp, bool tq, index_t M, index_t N, index_t Kd, float alpha, const void* P, index_t ldp, const void* Q,
             index_t ldq, float beta, void* C, index_t ldc, cudaDataType_t ab = CUDA_R_16BF,
             cudaDataType_t c = CUDA_R_16BF) {
  lori::detail::gemm_row_major(ctx().cublas(), tp, tq, M, N, Kd, alpha, P, ldp, Q, ldq, beta, C, ldc, ab, c);
}

// ---- bandwidth -------------------------------------------------------------------------------------
void BM_gpu_baseline_d2d_copy(benchmark::State& st) {
  const index_t bytes = st.range(0) << 20;
  device_buffer<unsigned char> src(bytes), dst(bytes);
  src.fill_bytes(1);
  run_timed(st, [&] { LORI_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), static_cast<std::size_t>(bytes), cudaMemcpyDeviceToDevice, ctx().stream())); },
            2.0 * static_cast<double>(bytes));
  st.SetLabel("bytes counted: read + write");
}
BENCHMARK(BM_gpu_baseline_d2d_copy)->Arg(64)->Arg(234)->Arg(512)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);

// ---- adapter-only forward: Y += s·(X·Aᵀ)·Bᵀ ----------------------------------------------------------
struct fwd_data {
  index_t n, d;
  device_buffer<bf16> X, A, W, Y, Bd, H16;
  lori::cuda::sparse_b<bf16> B;
  device_buffer<unsigned char> ws;
  explicit fwd_data(index_t n_, index_t d_ = D)
      : n(n_), d(d_), X(random_bf16(n_ * K, 1.0, 1)), A(random_bf16(R * K, 1.0 / 64, 2)), W(random_bf16(d_ * K, 1.0 / 64, 3)),
        Y(random_bf16(n_ * d_, 1.0, 4)), Bd(d_ * R), H16(n_ * R), B(random_sparse_b(d_, R, 5)),
        ws(static_cast<index_t>(lori::cuda::adapter_forward_workspace_bytes(ctx(), n_, R))) {
    B.scatter_to_dense(Bd.data(), R, ctx().stream());
  }
  lori::row_major_view<const bf16> xv() const { return {X.data(), n, K}; }
  lori::row_major_view<const bf16> av() const { return {A.data(), R, K}; }
  lori::row_major_view<const bf16> wv() const { return {W.data(), d, K}; }
  lori::row_major_view<bf16> yv() { return {Y.data(), n, d}; }
};

double adapter_floor(index_t n) {  // X read, Y read + write, A, B values + indices
  return 2.0 * static_cast<double>(n * K) + 4.0 * static_cast<double>(n * D) + 2.0 * R * K + 0.1 * D * R * 6.0 + 4.0 * D;
}

void BM_gpu_adapter_forward(benchmark::State& st) {
  fwd_data f(st.range(0));
  run_timed(st, [&] { lori::cuda::adapter_forward<bf16>(ctx(), f.xv(), f.av(), f.B, 0.5f, f.yv(), f.ws.data(), f.ws.bytes()); },
            adapter_floor(f.n));
  st.SetLabel(lori::cuda::detail_fwd::decode_applies(ctx(), f.n, R) ? "decode: 1 kernel (clusters of 8)" : "cuBLAS X·Aᵀ + expand kernel");
}
// PEFT: H = X·Aᵀ (bf16), Y += s·H·Bᵀ with B dense (two cuBLAS GEMMs).
void BM_gpu_baseline_lora_two_gemm(benchmark::State& st) {
  fwd_data f(st.range(0));
  run_timed(st, [&] {
    gemm_rm(false, true, f.n, R, K, 1.0f, f.X.data(), K, f.A.data(), K, 0.0f, f.H16.data(), R);
    gemm_rm(false, true, f.n, D, R, 0.5f, f.H16.data(), R, f.Bd.data(), R, 1.0f, f.Y.data(), D);
  }, adapter_floor(f.n));
}
// cuSPARSE SpMM with CSR B for the second product: Yᵀ (d x n) += s·B (d x r, CSR)·Hᵀ.
void BM_gpu_baseline_cusparse_spmm(benchmark::State& st) {
  fwd_data f(st.range(0));
  cusparseHandle_t h = ctx().cusparse();
  cusparseSpMatDescr_t b;
  cusparseDnMatDescr_t ht, yt;
  LORI_CUSPARSE_CHECK(cusparseCreateCsr(&b, D, R, f.B.nnz(), const_cast<std::int32_t*>(f.B.row_ptr()),
                                        const_cast<std::int32_t*>(f.B.col_idx()), f.B.values(), CUSPARSE_INDEX_32I,
                                        CUSPARSE_INDEX_32I, CUSPARSE_INDEX_BASE_ZERO, CUDA_R_16BF));
  LORI_CUSPARSE_CHECK(cusparseCreateDnMat(&ht, R, f.n, R, f.H16.data(), CUDA_R_16BF, CUSPARSE_ORDER_COL));
  LORI_CUSPARSE_CHECK(cusparseCreateDnMat(&yt, D, f.n, D, f.Y.data(), CUDA_R_16BF, CUSPARSE_ORDER_COL));
  const float alpha = 0.5f, beta = 1.0f;
  std::size_t bytes = 0;
  const cusparseStatus_t q = cusparseSpMM_bufferSize(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                     &alpha, b, ht, &beta, yt, CUDA_R_32F, CUSPARSE_SPMM_ALG_DEFAULT, &bytes);
  if (q != CUSPARSE_STATUS_SUCCESS) {
    st.SkipWithError((std::string("cusparseSpMM_bufferSize: ") + cusparseGetErrorName(q)).c_str());
  } else {
    device_buffer<unsigned char> buf(static_cast<index_t>(bytes) + 1);
    run_timed(st, [&] {
      gemm_rm(false, true, f.n, R, K, 1.0f, f.X.data(), K, f.A.data(), K, 0.0f, f.H16.data(), R);
      LORI_CUSPARSE_CHECK(cusparseSpMM(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE, &alpha, b, ht,
                                       &beta, yt, CUDA_R_32F, CUSPARSE_SPMM_ALG_DEFAULT, buf.data()));
    }, adapter_floor(f.n));
  }
  cusparseDestroySpMat(b);
  cusparseDestroyDnMat(ht);
  cusparseDestroyDnMat(yt);
}
// The thin GEMM H = X·Aᵀ alone (cuBLAS, fp32 out): the adapter's main extra cost in the whole-layer
// paths; floor = one read of X (+ A, H).
void BM_gpu_adapter_project(benchmark::State& st) {
  fwd_data f(st.range(0));
  device_buffer<float> H(f.n * R);
  run_timed(st, [&] { lori::cuda::adapter_project<bf16>(ctx(), f.xv(), f.av(), H.data()); },
            2.0 * static_cast<double>(f.n * K) + 2.0 * R * K + 4.0 * static_cast<double>(f.n * R));
  st.SetLabel("cuBLAS X·Aᵀ (r = 32 columns), fp32 H; floor = one read of X");
}
// The second half of the adapter alone: Y += s·H·Bᵀ (H fp32 given): floor = Y read + write.
// H for the expansion benchmarks: random fp32 values uploaded from the host (independent of
// adapter_project, so these run whatever the projection kernel does).
device_buffer<float> random_h(index_t count) {
  std::mt19937_64 g(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> h(static_cast<std::size_t>(count));
  for (auto& v : h) v = nd(g);
  return device_buffer<float>(h);
}
void BM_gpu_adapter_expand(benchmark::State& st) {
  fwd_data f(st.range(0));
  device_buffer<float> H = random_h(f.n * R);
  run_timed(st, [&] { lori::cuda::adapter_expand<bf16>(ctx(), H.data(), f.n, 0.5f, f.B, f.yv(), true); },
            4.0 * static_cast<double>(f.n * D) + 4.0 * static_cast<double>(f.n * R));
  st.SetLabel("floor = Y read + write");
}
// adapter_project + adapter_expand at decode sizes (the alternative to the one-kernel decode path).
void BM_gpu_adapter_forward_two_launch(benchmark::State& st) {
  fwd_data f(st.range(0));
  run_timed(st, [&] {
    float* H = reinterpret_cast<float*>(f.ws.data());
    lori::cuda::adapter_project<bf16>(ctx(), f.xv(), f.av(), H);
    lori::cuda::adapter_expand<bf16>(ctx(), H, f.n, 0.5f, f.B, f.yv(), true);
  }, adapter_floor(f.n));
  st.SetLabel("cuBLAS X·Aᵀ (fp32) + expand kernel");
}
BENCHMARK(BM_gpu_adapter_forward_two_launch)->Arg(1)->Arg(64)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05);
BENCHMARK(BM_gpu_adapter_expand)->Arg(4096)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
// Where decode time goes: an EMPTY kernel on one block per SM, launched cooperatively with one grid
// barrier, and launched normally (no barrier), timed like BM_gpu_adapter_forward/1 (events around one
// launch after an L2 flush).
__global__ void probe_coop_kernel(int* sink) {
  cooperative_groups::this_grid().sync();
  if (sink != nullptr && threadIdx.x == 0 && blockIdx.x == 0) *sink = 1;
}
__global__ void probe_plain_kernel(int* sink) {
  if (sink != nullptr && threadIdx.x == 0 && blockIdx.x == 0) *sink = 1;
}
__global__ void probe_cluster_kernel(int* sink) {  // launched in clusters of 8: one cluster barrier
  cooperative_groups::this_cluster().sync();
  if (sink != nullptr && threadIdx.x == 0 && blockIdx.x == 0) *sink = 1;
}
void BM_gpu_probe_launch(benchmark::State& st) {
  const bool coop = st.range(0) != 0;
  device_buffer<int> sink(1);
  int* p = sink.data();
  void* args[] = {&p};
  const bool cluster = st.range(0) == 2;
  run_timed(st, [&] {
    if (cluster) {
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(static_cast<unsigned>(ctx().sm_count() / 8 * 8));
      cfg.blockDim = dim3(256);
      cfg.stream = ctx().stream();
      cudaLaunchAttribute attr{};
      attr.id = cudaLaunchAttributeClusterDimension;
      attr.val.clusterDim.x = 8;
      attr.val.clusterDim.y = 1;
      attr.val.clusterDim.z = 1;
      cfg.attrs = &attr;
      cfg.numAttrs = 1;
      LORI_CUDA_CHECK(cudaLaunchKernelExC(&cfg, reinterpret_cast<const void*>(probe_cluster_kernel), args));
    } else if (coop) {
      LORI_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(probe_coop_kernel), dim3(static_cast<unsigned>(ctx().sm_count())),
                                                  dim3(256), args, 0, ctx().stream()));
    } else {
      probe_plain_kernel<<<ctx().sm_count(), 256, 0, ctx().stream()>>>(p);
      LORI_CUDA_CHECK_LAUNCH();
    }
  }, 4.0);
  st.SetLabel(cluster ? "empty kernel in clusters of 8 + 1 cluster barrier" : coop ? "empty cooperative kernel + 1 grid barrier" : "empty kernel");
}
BENCHMARK(BM_gpu_probe_launch)->Arg(1)->Arg(0)->Arg(2)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.02);

// A decode loop as a model sees it: back-to-back calls on one stream, each on a DIFFERENT adapter
// (224 adapters of A r x k + sparse B d x r, ~78 MB > L2, as the 224 projections of Llama-3-8B), so
// each call finds its A and B cold, as in a real decode step; X and Y are shared. One timed
// iteration = 224 calls (L2 flushed before it); the reported time is PER CALL.
struct decode_loop_data {
  static constexpr int calls = 224;
  index_t n;
  device_buffer<bf16> X, Y, H16;
  std::vector<device_buffer<bf16>> As, Bds;
  std::vector<lori::cuda::sparse_b<bf16>> Bs;
  device_buffer<unsigned char> ws;
  explicit decode_loop_data(index_t n_, bool dense)
      : n(n_), X(random_bf16(n_ * K, 1.0, 1)), Y(random_bf16(n_ * D, 1.0, 4)), H16(n_ * R),
        ws(static_cast<index_t>(lori::cuda::adapter_forward_workspace_bytes(ctx(), n_, R))) {
    Bs.reserve(calls);
    for (int i = 0; i < calls; ++i) {
      As.push_back(random_bf16(R * K, 1.0 / 64, 200 + static_cast<std::uint64_t>(i)));
      Bs.push_back(random_sparse_b(D, R, 500 + static_cast<std::uint64_t>(i)));
      if (dense) {
        Bds.emplace_back(D * R);
        Bs.back().scatter_to_dense(Bds.back().data(), R, ctx().stream());
      }
    }
    LORI_CUDA_CHECK(cudaStreamSynchronize(ctx().stream()));
  }
};
// Like run_timed (L2 flushed, CUDA events), but one iteration is `calls` back-to-back calls and the
// iteration time recorded is the time PER CALL (so these benchmarks use a fixed iteration count:
// a minimum time would count per-call time and run 224x longer than meant).
void run_decode_loop(benchmark::State& st, decode_loop_data& f, const std::function<void(int)>& call) {
  const int calls = decode_loop_data::calls;
  if (!time_with_events(st, [&] { for (int i = 0; i < calls; ++i) call(i); }, calls)) return;
  st.SetBytesProcessed(static_cast<std::int64_t>(adapter_floor(f.n) * static_cast<double>(st.iterations())));
  st.counters["calls_per_iteration"] = calls;
}
void BM_gpu_adapter_forward_decode_loop(benchmark::State& st) {
  decode_loop_data f(st.range(0), false);
  run_decode_loop(st, f, [&](int i) {
    lori::cuda::adapter_forward<bf16>(ctx(), {f.X.data(), f.n, K}, {f.As[static_cast<std::size_t>(i)].data(), R, K},
                                      f.Bs[static_cast<std::size_t>(i)], 0.5f, {f.Y.data(), f.n, D}, f.ws.data(), f.ws.bytes());
  });
  st.SetLabel("224 back-to-back calls, distinct adapters; reported time is per call");
}
void BM_gpu_baseline_lora_two_gemm_decode_loop(benchmark::State& st) {
  decode_loop_data f(st.range(0), true);
  run_decode_loop(st, f, [&](int i) {
    gemm_rm(false, true, f.n, R, K, 1.0f, f.X.data(), K, f.As[static_cast<std::size_t>(i)].data(), K, 0.0f, f.H16.data(), R);
    gemm_rm(false, true, f.n, D, R, 0.5f, f.H16.data(), R, f.Bds[static_cast<std::size_t>(i)].data(), R, 1.0f, f.Y.data(), D);
  });
  st.SetLabel("PEFT two GEMMs, 224 back-to-back calls, distinct adapters; reported time is per call");
}
// The same loop with programmatic dependent launch (decode_overlap::weights): call i + 1 may start
// while call i runs and load its A and B meanwhile (each call's X and Y are read after call i ends).
void BM_gpu_adapter_forward_decode_loop_overlap(benchmark::State& st) {
  decode_loop_data f(st.range(0), false);
  run_decode_loop(st, f, [&](int i) {
    lori::cuda::adapter_forward_decode<bf16>(ctx(), {f.X.data(), f.n, K}, {f.As[static_cast<std::size_t>(i)].data(), R, K},
                                             f.Bs[static_cast<std::size_t>(i)], 0.5f, {f.Y.data(), f.n, D}, nullptr, 0,
                                             lori::cuda::decode_overlap::weights);
  });
  st.SetLabel("decode_overlap::weights (PDL), 224 back-to-back calls, distinct adapters; time per call");
}
// Decode launch configurations (tuning; single cold call like BM_gpu_adapter_forward/n): args n,
// tokens per cluster (1: the one-token variant, 4: the 4-token variant; 0: by shape), clusters (0: by
// shape, about one block per SM).
void BM_gpu_decode_config(benchmark::State& st) {
  fwd_data f(st.range(0));
  const int tile = static_cast<int>(st.range(1));
  const index_t clusters = st.range(2);
  run_timed(st, [&] {
    lori::cuda::detail_fwd::launch_decode<bf16>(ctx(), f.xv(), f.av(), f.B, 0.5f, f.yv(), lori::cuda::decode_overlap::none,
                                                tile, clusters);
  }, adapter_floor(f.n));
  st.SetLabel("tokens per cluster " + std::to_string(tile) + ", clusters " + std::to_string(clusters) + " (0: by shape)");
}
// A candidate route for large n (measured to choose adapter_forward's route by shape): B scattered
// into a dense d x r buffer, H = X·Aᵀ in bf16, Y += s·H·B_denseᵀ on cuBLAS (PEFT's two GEMMs plus the
// scatter of B, which PEFT keeps dense).
void BM_gpu_candidate_dense_route(benchmark::State& st) {
  fwd_data f(st.range(0));
  run_timed(st, [&] {
    f.B.scatter_to_dense(f.Bd.data(), R, ctx().stream());
    gemm_rm(false, true, f.n, R, K, 1.0f, f.X.data(), K, f.A.data(), K, 0.0f, f.H16.data(), R);
    gemm_rm(false, true, f.n, D, R, 0.5f, f.H16.data(), R, f.Bd.data(), R, 1.0f, f.Y.data(), D);
  }, adapter_floor(f.n));
  st.SetLabel("scatter B dense + two cuBLAS GEMMs");
}
BENCHMARK(BM_gpu_candidate_dense_route)->Arg(64)->Arg(4096)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05);
// adapter_forward and PEFT's two GEMMs between the decode sizes above (n = 16, 32: one-token and
// 4-token variants of the decode kernel).
BENCHMARK(BM_gpu_adapter_forward)->Arg(16)->Arg(32)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.02);
BENCHMARK(BM_gpu_baseline_lora_two_gemm)->Arg(16)->Arg(32)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.02);
BENCHMARK(BM_gpu_decode_config)->Args({1, 1, 0})->Args({1, 4, 0})->Args({8, 1, 0})->Args({16, 1, 32})->Args({16, 1, 0})->Args({16, 4, 0})->Args({16, 4, 32})->Args({32, 4, 0})->Args({32, 4, 32})->Args({64, 4, 0})->Args({64, 4, 32})->Args({64, 1, 0})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.01);
BENCHMARK(BM_gpu_adapter_forward_decode_loop)->Arg(1)->Arg(64)->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(30);
BENCHMARK(BM_gpu_adapter_forward_decode_loop_overlap)->Arg(1)->Arg(64)->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(30);
BENCHMARK(BM_gpu_baseline_lora_two_gemm_decode_loop)->Arg(1)->Arg(64)->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(30);
BENCHMARK(BM_gpu_adapter_project)->Arg(4096)->Arg(16384)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_adapter_forward)->Arg(1)->Arg(64)->Arg(4096)->Arg(16384)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_lora_two_gemm)->Arg(1)->Arg(64)->Arg(4096)->Arg(16384)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_cusparse_spmm)->Arg(1)->Arg(64)->Arg(4096)->Arg(16384)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);

// ---- whole layer: Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ ----------------------------------------------------------------
double layer_floor(index_t n, index_t d) { return 2.0 * static_cast<double>(n * K + d * K + n * d) + 2.0 * R * K + 0.1 * static_cast<double>(d) * R * 6.0; }
double layer_flops(index_t n, index_t d) { return 2.0 * static_cast<double>(n) * static_cast<double>(d) * K; }

void BM_gpu_layer_forward(benchmark::State& st) {
  fwd_data f(st.range(0), st.range(1));
  const index_t chunks = st.range(2);
  run_timed(st, [&] { lori::cuda::layer_forward<bf16>(ctx(), f.xv(), f.wv(), f.av(), f.B, 0.5f, f.yv(), f.ws.data(), f.ws.bytes(), chunks); },
            layer_floor(f.n, f.d), layer_flops(f.n, f.d));
  st.SetLabel(chunks > 1 ? "adapter of chunk c+1 on aux stream under base GEMM of chunk c; target (n=4096): <= 1.10x base"
                         : "target (n=4096): <= 1.10x BM_gpu_baseline_base_gemm");
}
// K widened by r: [X | s·H]·[W | B]ᵀ in one base GEMM (caller keeps X and W in (k + r)-wide buffers).
// Row stride of X_ext and W_ext: k + r rounded up to 64 elements (128 bytes), as docs/cuda.md advises
// (BM_gpu_widened_layout measures the packed stride k + r too).
void BM_gpu_layer_forward_widened(benchmark::State& st) {
  const index_t n = st.range(0), d = st.range(1), kr = K + R, ld = (kr + 63) / 64 * 64, chunks = st.range(2);
  auto Xe = random_bf16(n * ld, 1.0, 1), We = random_bf16(d * ld, 1.0 / 64, 3), A = random_bf16(R * K, 1.0 / 64, 2);
  device_buffer<bf16> Y(n * d);
  auto B = random_sparse_b(d, R, 5);
  B.scatter_to_dense(We.data() + K, ld, ctx().stream());
  run_timed(st, [&] {
    lori::cuda::layer_forward_widened<bf16>(ctx(), {Xe.data(), n, kr, ld}, {We.data(), d, kr, ld}, {A.data(), R, K}, 0.5f,
                                            {Y.data(), n, d}, chunks);
  }, layer_floor(n, d), layer_flops(n, d));
  st.SetLabel(chunks > 1 ? "H GEMM of chunk c+1 overlapped with base GEMM of chunk c; target (n=4096): <= 1.10x base"
                         : "target (n=4096): <= 1.10x BM_gpu_baseline_base_gemm");
}
// The widened layer's GEMM by layout (range: n, K of the GEMM (k + r, or k + r padded with zero
// columns to a multiple of 64), row stride ld of X_ext and W_ext, mode 0: the whole layer_forward_widened
// when K = k + r, else thin GEMM + widened GEMM composed; mode 1: the widened GEMM alone): does a row
// stride that is not a multiple of 128 bytes (k + r = 4128 elements = 8256 bytes) cost the base GEMM?
void BM_gpu_widened_layout(benchmark::State& st) {
  const index_t n = st.range(0), kk = st.range(1), ld = st.range(2), mode = st.range(3), d = D;
  auto Xe = random_bf16(n * ld, 1.0, 1), We = random_bf16(d * ld, 1.0 / 64, 3), A = random_bf16(R * K, 1.0 / 64, 2);
  device_buffer<bf16> Y(n * d);
  auto B = random_sparse_b(d, R, 5);
  B.scatter_to_dense(We.data() + K, ld, ctx().stream());
  run_timed(st, [&] {
    if (mode == 0 && kk == K + R) {
      lori::cuda::layer_forward_widened<bf16>(ctx(), {Xe.data(), n, K + R, ld}, {We.data(), d, K + R, ld}, {A.data(), R, K}, 0.5f,
                                              {Y.data(), n, d}, 1);
      return;
    }
    if (mode == 0) gemm_rm(false, true, n, R, K, 0.5f, Xe.data(), ld, A.data(), K, 0.0f, Xe.data() + K, ld);
    gemm_rm(false, true, n, d, kk, 1.0f, Xe.data(), ld, We.data(), ld, 0.0f, Y.data(), d);
  }, layer_floor(n, d), layer_flops(n, d));
  st.SetLabel(std::string(mode == 0 ? "thin + widened GEMM" : "widened GEMM alone") + ", K " + std::to_string(kk) + ", ld " +
              std::to_string(ld));
}
BENCHMARK(BM_gpu_widened_layout)->Args({4096, 4128, 4128, 0})->Args({4096, 4128, 4160, 0})->Args({4096, 4160, 4160, 0})
    ->Args({4096, 4128, 4128, 1})->Args({4096, 4128, 4160, 1})->Args({4096, 4160, 4160, 1})->Args({4096, 4096, 4096, 1})
    ->Args({4096, 4096, 4160, 1})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
// The widened GEMM through cuBLASLt with the i-th heuristic answer (range: K of the GEMM, ld, i; 64 MB
// workspace): does cuBLAS's default pick leave speed for this shape? (i past the answers: skipped.)
void BM_gpu_widened_lt_algo(benchmark::State& st) {
  const index_t n = 4096, d = D, kk = st.range(0), ld = st.range(1), pick = st.range(2);
  auto Xe = random_bf16(n * ld, 1.0, 1), We = random_bf16(d * ld, 1.0 / 64, 3);
  device_buffer<bf16> Y(n * d);
  device_buffer<unsigned char> ws(64 << 20);
  cublasLtHandle_t lt = ctx().cublaslt();
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  // Row-major Y = X·Wᵀ is column-major Yᵀ (d x n) = op(W_cm)ᵀ·X_cm with W_cm kk x d and X_cm kk x n.
  LORI_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
  LORI_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof(tA)));
  LORI_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof(tB)));
  LORI_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, static_cast<std::uint64_t>(kk), static_cast<std::uint64_t>(d), ld));
  LORI_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, static_cast<std::uint64_t>(kk), static_cast<std::uint64_t>(n), ld));
  LORI_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c, CUDA_R_16BF, static_cast<std::uint64_t>(d), static_cast<std::uint64_t>(n), d));
  LORI_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const std::size_t wsb = ws.bytes();
  LORI_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
  cublasLtMatmulHeuristicResult_t res[16] = {};
  int got = 0;
  LORI_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, c, c, pref, 16, res, &got));
  if (pick >= got) {
    st.SkipWithError(("only " + std::to_string(got) + " heuristic answers").c_str());
  } else {
    const float one = 1.0f, zero = 0.0f;
    run_timed(st, [&] {
      LORI_CUBLAS_CHECK(cublasLtMatmul(lt, op, &one, We.data(), a, Xe.data(), b, &zero, Y.data(), c, Y.data(), c,
                                       &res[pick].algo, ws.data(), wsb, ctx().stream()));
    }, layer_floor(n, d), layer_flops(n, d));
    int id = 0, tile = 0, stages = 0, splitk = 0;
    std::size_t w = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&res[pick].algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &w);
    cublasLtMatmulAlgoConfigGetAttribute(&res[pick].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &w);
    cublasLtMatmulAlgoConfigGetAttribute(&res[pick].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &w);
    cublasLtMatmulAlgoConfigGetAttribute(&res[pick].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), &w);
    st.SetLabel("K " + std::to_string(kk) + " ld " + std::to_string(ld) + ": answer " + std::to_string(pick) + " of " +
                std::to_string(got) + ", algo " + std::to_string(id) + " tile " + std::to_string(tile) + " stages " +
                std::to_string(stages) + " splitK " + std::to_string(splitk) + " ws " + std::to_string(res[pick].workspaceSize));
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(c);
  cublasLtMatrixLayoutDestroy(b);
  cublasLtMatrixLayoutDestroy(a);
  cublasLtMatmulDescDestroy(op);
}
BENCHMARK(BM_gpu_widened_lt_algo)->ArgsProduct({{4096, 4128}, {4160}, {0, 1, 2, 3, 4, 5, 6, 7}})
    ->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05);
void BM_gpu_baseline_base_gemm(benchmark::State& st) {
  fwd_data f(st.range(0), st.range(1));
  run_timed(st, [&] { gemm_rm(false, true, f.n, f.d, K, 1.0f, f.X.data(), K, f.W.data(), K, 0.0f, f.Y.data(), f.d); },
            layer_floor(f.n, f.d), layer_flops(f.n, f.d));
  st.SetLabel("X·Wᵀ alone (cuBLAS)");
}
void BM_gpu_baseline_lora_layer(benchmark::State& st) {
  fwd_data f(st.range(0), st.range(1));
  run_timed(st, [&] {
    gemm_rm(false, true, f.n, f.d, K, 1.0f, f.X.data(), K, f.W.data(), K, 0.0f, f.Y.data(), f.d);
    gemm_rm(false, true, f.n, R, K, 1.0f, f.X.data(), K, f.A.data(), K, 0.0f, f.H16.data(), R);
    gemm_rm(false, true, f.n, f.d, R, 0.5f, f.H16.data(), R, f.Bd.data(), R, 1.0f, f.Y.data(), f.d);
  }, layer_floor(f.n, f.d), layer_flops(f.n, f.d));
  st.SetLabel("PEFT: 3 cuBLAS GEMMs");
}
BENCHMARK(BM_gpu_layer_forward)->Args({1, 4096, 1})->Args({64, 4096, 1})->Args({4096, 4096, 1})->Args({4096, 4096, 4})->Args({16384, 4096, 1})->Args({16384, 4096, 4})->Args({4096, 14336, 1})->Args({4096, 14336, 4})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_layer_forward_widened)->Args({1, 4096, 1})->Args({64, 4096, 1})->Args({4096, 4096, 1})->Args({4096, 4096, 4})->Args({16384, 4096, 1})->Args({16384, 4096, 4})->Args({4096, 14336, 1})->Args({4096, 14336, 4})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_base_gemm)->Args({1, 4096})->Args({64, 4096})->Args({4096, 4096})->Args({16384, 4096})->Args({4096, 14336})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_lora_layer)->Args({1, 4096})->Args({64, 4096})->Args({4096, 4096})->Args({16384, 4096})->Args({4096, 14336})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);

// ---- masked gradient ∂L/∂B (SDDMM) -------------------------------------------------------------------------
struct grad_data {
  index_t n;
  device_buffer<bf16> G, H16, dBd, out;
  device_buffer<float> H;
  lori::cuda::sparse_b<bf16> B;
  device_buffer<unsigned char> ws;
  explicit grad_data(index_t n_)
      : n(n_), G(random_bf16(n_ * D, 1.0, 11)), H16(random_bf16(n_ * R, 1.0, 12)), dBd(D * R), out(0), H(n_ * R),
        B(random_sparse_b(D, R, 13)), ws(0) {
    out = device_buffer<bf16>(B.nnz());
    ws = device_buffer<unsigned char>(static_cast<index_t>(lori::cuda::grad_b_workspace_bytes(ctx(), n, D, R, B.nnz())) + 1);
    std::vector<float> h(static_cast<std::size_t>(n * R));
    std::mt19937_64 g(14);
    std::normal_distribution<float> nd;
    for (auto& x : h) x = nd(g);
    H.upload(h);
  }
};
double sddmm_floor(index_t n, index_t nnz) { return 2.0 * static_cast<double>(n * D) + 4.0 * static_cast<double>(n * R) + 2.0 * static_cast<double>(nnz); }

void BM_gpu_grad_b_sddmm(benchmark::State& st) {
  grad_data f(st.range(0));
  run_timed(st, [&] {
    lori::cuda::grad_b_sddmm<bf16>(ctx(), {f.G.data(), f.n, D}, f.H.data(), 0.5f, f.B, f.out.data(), f.ws.data(), f.ws.bytes());
  }, sddmm_floor(f.n, f.B.nnz()));
  st.SetLabel("one skinny tensor-core kernel (TMA, H to T staged, cluster split reduction); target (n=4096): <= 1.3x one read of G");
}
void BM_gpu_baseline_gemm_mask(benchmark::State& st) {
  grad_data f(st.range(0));
  run_timed(st, [&] {
    gemm_rm(true, false, D, R, f.n, 0.5f, f.G.data(), D, f.H16.data(), R, 0.0f, f.dBd.data(), R);
    f.B.gather_from_dense(f.dBd.data(), R, ctx().stream());
  }, sddmm_floor(f.n, f.B.nnz()));
  st.SetLabel("cuBLAS Gᵀ·H dense, then gather the kept entries");
}
void BM_gpu_baseline_cusparse_sddmm(benchmark::State& st) {
  grad_data f(st.range(0));
  cusparseHandle_t h = ctx().cusparse();
  // Try bf16 first; if this cuSPARSE has no bf16 SDDMM, run it in fp32 (inputs converted untimed).
  device_buffer<float> G32(0), C32(0);
  cudaDataType_t type = CUDA_R_16BF;
  void* gp = f.G.data();
  void* hp = f.H16.data();
  void* cp = f.out.data();
  const float alpha = 0.5f, beta = 0.0f;
  std::size_t bytes = 0;
  auto make = [&](cusparseDnMatDescr_t& a, cusparseDnMatDescr_t& b, cusparseSpMatDescr_t& c) {
    LORI_CUSPARSE_CHECK(cusparseCreateDnMat(&a, D, f.n, D, gp, type, CUSPARSE_ORDER_COL));  // Gᵀ, d x n
    LORI_CUSPARSE_CHECK(cusparseCreateDnMat(&b, f.n, R, R, hp, type, CUSPARSE_ORDER_ROW));  // H, n x r
    LORI_CUSPARSE_CHECK(cusparseCreateCsr(&c, D, R, f.B.nnz(), const_cast<std::int32_t*>(f.B.row_ptr()),
                                          const_cast<std::int32_t*>(f.B.col_idx()), cp, CUSPARSE_INDEX_32I, CUSPARSE_INDEX_32I,
                                          CUSPARSE_INDEX_BASE_ZERO, type));
    return cusparseSDDMM_bufferSize(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE, &alpha, a, b, &beta, c,
                                    CUDA_R_32F, CUSPARSE_SDDMM_ALG_DEFAULT, &bytes);
  };
  cusparseDnMatDescr_t a, b;
  cusparseSpMatDescr_t c;
  cusparseStatus_t q = make(a, b, c);
  std::string label = "cuSPARSE SDDMM, bf16";
  if (q != CUSPARSE_STATUS_SUCCESS) {
    cusparseDestroyDnMat(a);
    cusparseDestroyDnMat(b);
    cusparseDestroySpMat(c);
    G32 = device_buffer<float>(f.n * D);
    C32 = device_buffer<float>(f.B.nnz());
    G32.fill_bytes(0x3c);  // ~0.011: random-enough non-zero data; the kernel's speed does not depend on it
    type = CUDA_R_32F;
    gp = G32.data();
    hp = f.H.data();
    cp = C32.data();
    q = make(a, b, c);
    label = std::string("cuSPARSE SDDMM, fp32 (bf16 unsupported: ") + cusparseGetErrorName(q) + ")";
  }
  if (q != CUSPARSE_STATUS_SUCCESS) {
    st.SkipWithError((std::string("cusparseSDDMM_bufferSize: ") + cusparseGetErrorName(q)).c_str());
  } else {
    device_buffer<unsigned char> buf(static_cast<index_t>(bytes) + 1);
    const cusparseStatus_t pre = cusparseSDDMM_preprocess(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                          &alpha, a, b, &beta, c, CUDA_R_32F, CUSPARSE_SDDMM_ALG_DEFAULT, buf.data());
    if (pre != CUSPARSE_STATUS_SUCCESS) st.SkipWithError((std::string("cusparseSDDMM_preprocess: ") + cusparseGetErrorName(pre)).c_str());
    else run_timed(st, [&] {
      LORI_CUSPARSE_CHECK(cusparseSDDMM(h, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE, &alpha, a, b, &beta, c,
                                        CUDA_R_32F, CUSPARSE_SDDMM_ALG_DEFAULT, buf.data()));
    }, sddmm_floor(f.n, f.B.nnz()));
    st.SetLabel(label);
  }
  cusparseDestroyDnMat(a);
  cusparseDestroyDnMat(b);
  cusparseDestroySpMat(c);
}
BENCHMARK(BM_gpu_grad_b_sddmm)->Arg(64)->Arg(4096)->Arg(16384)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_gemm_mask)->Arg(64)->Arg(4096)->Arg(16384)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_cusparse_sddmm)->Arg(4096)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);

// ---- the skinny tensor-core SDDMM kernels (lori/detail/skinny_gemm.cuh) with a forced split cap, and
// the cuBLAS route they replaced (same bytes, same run) -------------------------------------------------
void BM_gpu_skinny_sddmm(benchmark::State& st) {
  grad_data f(st.range(0));
  const int cap = static_cast<int>(st.range(1));
  run_timed(st, [&] {
    lori::detail::skinny::launch_sddmm<bf16>(ctx().stream(), f.G.data(), f.n, D, D, f.H.data(), 0.5f, f.B,
                                             f.out.data(), cap);
  }, sddmm_floor(f.n, f.B.nnz()));
  const int clusters = lori::detail::skinny::active_clusters<lori::detail::skinny::sddmm_kernel<bf16>>(
      lori::detail::skinny::threads, lori::detail::skinny::sd_smem, cap);
  st.SetLabel("cp.async loads (grad_b_sddmm's path when H's rows are not 16-byte aligned); token split over at most range(1) blocks of a cluster; max active clusters of that size: " + std::to_string(clusters));
}
void BM_gpu_baseline_sddmm_cublas_route(benchmark::State& st) {
  grad_data f(st.range(0));
  run_timed(st, [&] {
    lori::cuda::detail_bwd::sddmm_gemm<bf16>(ctx(), {f.G.data(), f.n, D}, f.H.data(), 0.5f, f.B, f.out.data(), f.ws.data());
  }, sddmm_floor(f.n, f.B.nnz()));
  st.SetLabel("H to T, cuBLAS s·Gᵀ·H (fp32), gather (grad_b_sddmm before the skinny kernel)");
}
// The byte floor as this harness measures it: one read of range(0) MiB (32 MiB = X or G at n = d =
// k = 4096) by a plain streaming kernel (16-byte loads, 4 in flight per thread, 2048 threads per SM),
// after the same L2 flush as every benchmark here.
__global__ void read_probe_kernel(const uint4* __restrict__ p, index_t count, unsigned* out) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  unsigned x = 0;
  for (; i + 3 * stride < count; i += 4 * stride) {
    const uint4 a = p[i], b = p[i + stride], c = p[i + 2 * stride], d = p[i + 3 * stride];
    x ^= a.x ^ b.y ^ c.z ^ d.w;
  }
  for (; i < count; i += stride) x ^= p[i].x;
  if (x == 0x9e3779b9u) *out = x;  // keeps the loads; practically never true
}
void BM_gpu_baseline_read(benchmark::State& st) {
  const index_t bytes = st.range(0) << 20;
  device_buffer<unsigned char> src(bytes);
  device_buffer<unsigned> out(1);
  src.fill_bytes(1);
  run_timed(st, [&] {
    read_probe_kernel<<<ctx().sm_count() * 8, 256, 0, ctx().stream()>>>(reinterpret_cast<const uint4*>(src.data()), bytes / 16,
                                                                     out.data());
    LORI_CUDA_CHECK_LAUNCH();
  }, static_cast<double>(bytes));
  st.SetLabel("one read of range(0) MiB, streaming kernel: the read floor under this harness");
}
BENCHMARK(BM_gpu_baseline_read)->Arg(32)->Arg(128)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.02);

BENCHMARK(BM_gpu_skinny_sddmm)->Args({4096, 8})->Args({16384, 8})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.02);
BENCHMARK(BM_gpu_baseline_sddmm_cublas_route)->Arg(4096)->Arg(16384)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.02);

// ---- the warp-specialised SDDMM kernel (lori/detail/skinny_gemm.cuh: TMA producer warp, full/empty
// mbarrier ring) with a forced split cap; range(2) picks the variant: 0 = 8 stages, 1 = 4 stages (two
// blocks per SM), 2 = 6 stages, 3 = 8 stages without the MMAs (the memory pipeline alone: wrong
// results, timing only), 4 = 8 stages with G read evict-normal (default: evict-first), 6 = 7 stages,
// 11 = variant 3 without the H boxes. Compare with BM_gpu_baseline_read/32 of the same run and with
// BM_gpu_grad_b_sddmm (grad_b_sddmm takes variant 1's configuration: 4 stages).
template <int Stages, int Math>
std::string ws_label(index_t n, int cap) {
  namespace sk = lori::detail::skinny;
  constexpr auto kernel = sk::sddmm_ws_kernel<bf16, Stages, Math>;
  constexpr int smem = sk::ws_smem_of(Stages);
  const int S = sk::choose_splits<kernel>(sk::ws_threads, smem, lori::detail::ceil_div(D, sk::tile_rows), n, sk::sd_tc, cap);
  return std::to_string(Stages) + " stages" + (Math == 1 ? "" : Math == 0 ? ", NO MMA (memory pipeline alone)" : ", NO MMA, NO H (G's boxes alone)") +
         ", cluster split S = " + std::to_string(S) +
         " (clusters of S resident: " + std::to_string(sk::active_clusters<kernel>(sk::ws_threads, smem, S)) + "), tiles " +
         std::to_string(lori::detail::ceil_div(D, sk::tile_rows));
}
void BM_gpu_skinny_sddmm_ws(benchmark::State& st) {
  namespace sk = lori::detail::skinny;
  grad_data f(st.range(0));
  const int cap = static_cast<int>(st.range(1));
  const int variant = static_cast<int>(st.range(2));
  run_timed(st, [&] {
    if (variant == 1) sk::launch_sddmm_ws<bf16, 4>(ctx().stream(), f.G.data(), f.n, D, D, f.H.data(), 0.5f, f.B, f.out.data(), cap);
    else if (variant == 2) sk::launch_sddmm_ws<bf16, 6>(ctx().stream(), f.G.data(), f.n, D, D, f.H.data(), 0.5f, f.B, f.out.data(), cap);
    else if (variant == 3) sk::launch_sddmm_ws<bf16, 8, false>(ctx().stream(), f.G.data(), f.n, D, D, f.H.data(), 0.5f, f.B, f.out.data(), cap);
    else if (variant == 6) sk::launch_sddmm_ws<bf16, 7>(ctx().stream(), f.G.data(), f.n, D, D, f.H.data(), 0.5f, f.B, f.out.data(), cap);
    else if (variant == 11) sk::launch_sddmm_ws<bf16, 8, -1>(ctx().stream(), f.G.data(), f.n, D, D, f.H.data(), 0.5f, f.B, f.out.data(), cap);
    else sk::launch_sddmm_ws<bf16, 8>(ctx().stream(), f.G.data(), f.n, D, D, f.H.data(), 0.5f, f.B, f.out.data(), cap, variant != 4);
  }, sddmm_floor(f.n, f.B.nnz()));
  st.SetLabel(variant == 1 ? ws_label<4, true>(f.n, cap) : variant == 2 ? ws_label<6, true>(f.n, cap)
              : variant == 6 ? ws_label<7, true>(f.n, cap)
              : variant == 11 ? ws_label<8, -1>(f.n, cap)
              : variant == 3 ? ws_label<8, false>(f.n, cap) : ws_label<8, true>(f.n, cap) + (variant == 4 ? ", G evict-normal" : ""));
}
BENCHMARK(BM_gpu_skinny_sddmm_ws)->Args({4096, 8, 0})->Args({4096, 8, 1})->Args({4096, 8, 2})->Args({4096, 8, 3})->Args({4096, 8, 4})->Args({4096, 8, 6})->Args({4096, 8, 11})->Args({4096, 4, 0})->Args({4096, 4, 1})->Args({4096, 3, 0})->Args({4096, 2, 0})->Args({16384, 8, 0})->Args({16384, 8, 1})->Args({16384, 8, 3})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.02);

// Fixed costs of a kernel like the SDDMM's after the L2 flush: an empty kernel of one 320-thread block
// per SM with range(0) KB of dynamic shared memory (0: none; 197: the warp-specialised ring, which
// makes the SMs switch to the largest shared-memory carveout after the flush kernel).
template <int Big>
__global__ void probe_smem_kernel(unsigned* out) {
  if (threadIdx.x == 1023) *out = lori::detail::dynamic_smem()[0];  // never true: keeps the kernel
}
void BM_gpu_probe_smem_launch(benchmark::State& st) {
  const int kb = static_cast<int>(st.range(0));
  device_buffer<unsigned> out(1);
  if (kb > 0) lori::detail::skinny::set_smem_attributes(probe_smem_kernel<1>, kb * 1024);  // as the SDDMM kernels
  run_timed(st, [&] {
    if (kb > 0) probe_smem_kernel<1><<<ctx().sm_count(), 320, static_cast<std::size_t>(kb) * 1024, ctx().stream()>>>(out.data());
    else probe_smem_kernel<0><<<ctx().sm_count(), 320, 0, ctx().stream()>>>(out.data());
    LORI_CUDA_CHECK_LAUNCH();
  }, 4.0);
  st.SetLabel("empty kernel, one block per SM, range(0) KB dynamic shared memory");
}
BENCHMARK(BM_gpu_probe_smem_launch)->Arg(0)->Arg(99)->Arg(197)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.02);

// ---- ∂L/∂X -----------------------------------------------------------------------------------------------
void BM_gpu_grad_x(benchmark::State& st) {
  const index_t n = st.range(0);
  auto G = random_bf16(n * D, 1.0, 21), W = random_bf16(D * K, 1.0 / 64, 22), A = random_bf16(R * K, 1.0, 23);
  device_buffer<bf16> dX(n * K);
  auto B = random_sparse_b(D, R, 24);
  device_buffer<unsigned char> ws(static_cast<index_t>(lori::cuda::grad_x_workspace_bytes<bf16>(n, D, R)));
  run_timed(st, [&] {
    lori::cuda::grad_x<bf16>(ctx(), {G.data(), n, D}, {W.data(), D, K}, {A.data(), R, K}, B, 0.5f, {dX.data(), n, K}, ws.data(), ws.bytes());
  }, 2.0 * static_cast<double>(n * D + D * K + n * K), 2.0 * static_cast<double>(n) * D * K);
  st.SetLabel("compare BM_gpu_baseline_base_gemm (G·W alone costs the same)");
}
BENCHMARK(BM_gpu_grad_x)->Arg(4096)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);

// ---- masked AdamW over a Llama-3-8B-shaped LoRI-S adapter ---------------------------------------------
struct adam_data {
  std::vector<device_buffer<bf16>> p, g;
  std::vector<device_buffer<float>> m, v;
  std::vector<lori::cuda::optim_tensor<bf16>> tensors;
  index_t total = 0;
  adam_data() {
    const index_t rows[] = {4096, 1024, 1024, 4096, 14336, 14336, 4096};  // q k v o gate up down (B is rows x r)
    std::uint64_t seed = 100;
    for (int layer = 0; layer < 32; ++layer)
      for (const index_t d : rows) {
        const index_t n = static_cast<index_t>(static_cast<double>(d * R) * density);
        p.push_back(random_bf16(n, 0.02, seed++));
        g.push_back(random_bf16(n, 1e-3, seed++));
        m.emplace_back(n);
        v.emplace_back(n);
        m.back().fill_bytes(0);
        v.back().fill_bytes(0);
        total += n;
      }
    for (std::size_t i = 0; i < p.size(); ++i) tensors.push_back({p[i].data(), g[i].data(), m[i].data(), v[i].data(), p[i].size()});
  }
};
void BM_gpu_adamw_fused(benchmark::State& st) {
  adam_data f;
  const lori::cuda::multi_tensor_plan<bf16> plan(f.tensors);
  std::int64_t step = 1;
  run_timed(st, [&] { lori::cuda::adamw_step<bf16>(ctx(), plan, {}, step++); }, 22.0 * static_cast<double>(f.total));
  st.counters["values"] = static_cast<double>(f.total);
  st.counters["tensors"] = static_cast<double>(f.tensors.size());
  st.SetLabel("1 launch; 22 B/value (p rw bf16, g bf16, m rw, v rw fp32); target >= 80% of copy bandwidth");
}
void BM_gpu_baseline_adamw_per_tensor(benchmark::State& st) {
  adam_data f;
  std::vector<std::unique_ptr<lori::cuda::multi_tensor_plan<bf16>>> plans;
  for (const auto& t : f.tensors) plans.push_back(std::make_unique<lori::cuda::multi_tensor_plan<bf16>>(std::vector<lori::cuda::optim_tensor<bf16>>{t}));
  std::int64_t step = 1;
  run_timed(st, [&] {
    for (const auto& pl : plans) lori::cuda::adamw_step<bf16>(ctx(), *pl, {}, step);
    ++step;
  }, 22.0 * static_cast<double>(f.total));
  st.SetLabel("same kernel, one launch per tensor (224 launches, as a per-parameter loop does)");
}
void BM_gpu_sgd_fused(benchmark::State& st) {
  adam_data f;
  const lori::cuda::multi_tensor_plan<bf16> plan(f.tensors, false);
  run_timed(st, [&] { lori::cuda::sgd_step<bf16>(ctx(), plan, 1e-3f, 0.0f); }, 6.0 * static_cast<double>(f.total));
  st.SetLabel("6 B/value");
}
BENCHMARK(BM_gpu_adamw_fused)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_adamw_per_tensor)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_sgd_fused)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);

// ---- merge T adapters into a d x k bf16 W ---------------------------------------------------------------
// Args: T, d, sparse B (0/1), equal scales (0: s_t = 0.5 + 0.25 t; 1: all 0.5). BM_gpu_merge_probe adds
// a 5th: probe bits of the streaming route (detail_merge::probe_*: 1 no math, 2 no PDL, 4 no pack,
// 8 pack alone, 16 no W loads/stores) to split the time into its parts; probe = 32 runs the cuBLAS
// route instead (detail_merge::merge_cublas_route) at the same shape.
void merge_bench(benchmark::State& st, int probe) {
  const index_t T = st.range(0), d = st.range(1);
  const bool sparse = st.range(2) != 0, equal = st.range(3) != 0;
  auto W = random_bf16(d * K, 1.0, 31);
  std::vector<device_buffer<bf16>> As, Bs;
  std::vector<lori::cuda::sparse_b<bf16>> Ss;
  Ss.reserve(static_cast<std::size_t>(T));
  std::vector<lori::cuda::merge_source<bf16>> src;
  for (index_t t = 0; t < T; ++t) {
    As.push_back(random_bf16(R * K, 1.0, 40 + static_cast<std::uint64_t>(t)));
    Bs.push_back(random_bf16(d * R, 0.02, 50 + static_cast<std::uint64_t>(t)));
    Ss.push_back(random_sparse_b(d, R, 60 + static_cast<std::uint64_t>(t)));
  }
  for (index_t t = 0; t < T; ++t) {
    lori::cuda::merge_source<bf16> m;
    m.scale = equal ? 0.5f : 0.5f + 0.25f * static_cast<float>(t);
    m.A = {As[static_cast<std::size_t>(t)].data(), R, K};
    if (sparse) m.B_sparse = &Ss[static_cast<std::size_t>(t)];
    else m.B_dense = {Bs[static_cast<std::size_t>(t)].data(), d, R};
    src.push_back(m);
  }
  const auto ws_bytes = static_cast<index_t>(lori::cuda::merge_workspace_bytes<bf16>(d, K, src));
  device_buffer<unsigned char> ws(ws_bytes);
  const lori::row_major_view<bf16> wv(W.data(), d, K);
  const bool stream = lori::cuda::detail_merge::stream_kernel_applies(wv, src);
  if (probe == 32) {  // the cuBLAS route at the same shape (what 16-bit W ran before the streaming kernel)
    run_timed(st, [&] { lori::cuda::detail_merge::merge_cublas_route<bf16>(ctx(), wv, src, ws.data()); },
              4.0 * static_cast<double>(d * K), 2.0 * static_cast<double>(T * R) * static_cast<double>(d * K));
    st.SetLabel(std::string("cuBLAS route, ") + (sparse ? "sparse" : "dense") + " B, " + (equal ? "equal" : "unequal") + " scales");
    return;
  }
  if (probe != 0) {
    run_timed(st, [&] { lori::cuda::detail_merge::merge_stream_route<bf16>(ctx(), wv, src, ws.data(), probe); },
              4.0 * static_cast<double>(d * K));
    st.SetLabel(std::string("streaming route probe:") + ((probe & 1) ? " no-math" : "") + ((probe & 2) ? " no-PDL" : "") +
                ((probe & 4) ? " kernel-only" : "") + ((probe & 8) ? " pack-only" : "") + ((probe & 16) ? " no-W-traffic" : ""));
    return;
  }
  run_timed(st, [&] { lori::cuda::merge_into<bf16>(ctx(), wv, src, ws.data(), ws.bytes()); },
            4.0 * static_cast<double>(d * K), 2.0 * static_cast<double>(T * R) * static_cast<double>(d * K));
  st.SetLabel(std::string(stream ? "streaming kernel" : "cuBLAS") + ", " + (sparse ? "sparse" : "dense") + " B, " +
              (equal ? "equal" : "unequal") + " scales; floor = one copy of W (BM_gpu_baseline_copy_w)");
}
void BM_gpu_merge(benchmark::State& st) { merge_bench(st, 0); }
void BM_gpu_merge_probe(benchmark::State& st) { merge_bench(st, static_cast<int>(st.range(4))); }
// A device-to-device copy of exactly one d x 4096 bf16 W (read + write counted): the merge's floor.
void BM_gpu_baseline_copy_w(benchmark::State& st) {
  const index_t d = st.range(0);
  device_buffer<bf16> src(d * K), dst(d * K);
  src.fill_bytes(1);
  run_timed(st, [&] { LORI_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), static_cast<std::size_t>(src.bytes()), cudaMemcpyDeviceToDevice, ctx().stream())); },
            4.0 * static_cast<double>(d * K));
  st.SetLabel("copy of one d x 4096 bf16 W; bytes counted: read + write");
}
// The same bytes moved by the SMs: a streaming copy kernel (16-byte accesses, 4 in flight per thread, 8
// blocks of 256 threads per SM), out of place (range 1 = 0) or in place (W rewritten: the merge's access
// pattern without its tiles). Shows how close an SM-side stream of W can get to the copy above.
__global__ void stream_copy_kernel(const uint4* src, uint4* dst, std::size_t n) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], e = src[i + 3 * stride];
    dst[i] = a;
    dst[i + stride] = b;
    dst[i + 2 * stride] = c;
    dst[i + 3 * stride] = e;
  }
  for (; i < n; i += stride) dst[i] = src[i];
}
void BM_gpu_baseline_copy_w_kernel(benchmark::State& st) {
  const index_t d = st.range(0);
  const bool in_place = st.range(1) != 0;
  device_buffer<bf16> src(d * K), dst(in_place ? 0 : d * K);
  src.fill_bytes(1);
  const auto* s = reinterpret_cast<const uint4*>(src.data());
  auto* t = in_place ? reinterpret_cast<uint4*>(src.data()) : reinterpret_cast<uint4*>(dst.data());
  const std::size_t n = static_cast<std::size_t>(src.bytes()) / sizeof(uint4);
  const unsigned blocks = static_cast<unsigned>(8 * ctx().sm_count());
  run_timed(st, [&] {
    stream_copy_kernel<<<blocks, 256, 0, ctx().stream()>>>(s, t, n);
    LORI_CUDA_CHECK_LAUNCH();
  }, 4.0 * static_cast<double>(d * K));
  st.SetLabel(in_place ? "SM kernel, W rewritten in place" : "SM kernel, out of place");
}
// W rewritten in place by tiles of TR x TC elements (16 KB), the way a tiled merge kernel walks W: one
// block of 256 threads per SM owns a contiguous run of tiles in strip-major order (down the rows of a
// TC-wide column strip), every thread loads its 4 16-byte chunks of a tile (a warp: 512 contiguous
// bytes) two tiles ahead into registers and stores them back. Which tile shape streams W in place at
// the copy kernel's speed (the memory floor of a merge kernel with that tile)?
// STRIP: the lane mapping of an mma accumulator layout instead (32 x 256 tiles; warp w, lane (g, t4):
// rows g + 8 v, the 16-byte chunk 4 w + t4: a warp instruction covers 8 rows x 64 bytes; session 5's
// register-streaming kernel, see docs/cuda.md).
template <int TR, int TC, bool STRIP = false>
__global__ void __launch_bounds__(256, 1) tile_copy_kernel(uint4* w, std::size_t ld16, std::size_t nrs, std::size_t tiles) {
  constexpr int per_row = TC / 8;  // 16-byte chunks per tile row
  const std::size_t t0 = blockIdx.x * tiles / gridDim.x, t1 = (blockIdx.x + 1) * tiles / gridDim.x;
  const auto addr = [&](std::size_t t, int v) {
    const int c = static_cast<int>(threadIdx.x) + 256 * v;
    const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
    const int row = STRIP ? (lane >> 2) + 8 * v : c / per_row, chunk = STRIP ? 4 * warp + (lane & 3) : c % per_row;
    const std::size_t strip = t / nrs, rs = t - strip * nrs;
    return w + (rs * TR + static_cast<std::size_t>(row)) * ld16 + strip * per_row + static_cast<std::size_t>(chunk);
  };
  uint4 b[3][4];
  for (std::size_t t = t0; t < t1; t += 3) {
#pragma unroll
    for (int u = 0; u < 3; ++u) {
      if (t + u >= t1) break;
      if (t == t0 && u == 0)
#pragma unroll
        for (int q = 0; q < 2; ++q)
          if (t0 + q < t1)
#pragma unroll
            for (int v = 0; v < 4; ++v) b[q][v] = *addr(t0 + q, v);
      if (t + u + 2 < t1)
#pragma unroll
        for (int v = 0; v < 4; ++v) b[(u + 2) % 3][v] = *addr(t + u + 2, v);
#pragma unroll
      for (int v = 0; v < 4; ++v) *addr(t + u, v) = b[u][v];
    }
  }
}
void BM_gpu_baseline_copy_w_tiles(benchmark::State& st) {
  const index_t d = st.range(0);
  const int shape = static_cast<int>(st.range(1));
  device_buffer<bf16> w(d * K);
  w.fill_bytes(1);
  auto* p = reinterpret_cast<uint4*>(w.data());
  const unsigned blocks = static_cast<unsigned>(ctx().sm_count());
  const std::size_t ld16 = K / 8;
  run_timed(st, [&] {
    if (shape == 0) tile_copy_kernel<32, 256><<<blocks, 256, 0, ctx().stream()>>>(p, ld16, d / 32, (d / 32) * (K / 256));
    else if (shape == 1) tile_copy_kernel<8, 1024><<<blocks, 256, 0, ctx().stream()>>>(p, ld16, d / 8, (d / 8) * (K / 1024));
    else if (shape == 3) tile_copy_kernel<32, 256, true><<<blocks, 256, 0, ctx().stream()>>>(p, ld16, d / 32, (d / 32) * (K / 256));
    else tile_copy_kernel<128, 64><<<blocks, 256, 0, ctx().stream()>>>(p, ld16, d / 128, (d / 128) * (K / 64));
    LORI_CUDA_CHECK_LAUNCH();
  }, 4.0 * static_cast<double>(d * K));
  st.SetLabel(shape == 0   ? "W in place by 32 x 256 tiles"
              : shape == 1 ? "W in place by 8 x 1024 tiles"
              : shape == 3 ? "W in place by 32 x 256 tiles, mma accumulator lane mapping"
                           : "W in place by 128 x 64 tiles");
}
// One cuBLAS GEMM (addmm) per adapter: W += s_t·B_t·A_t, reading and writing W T times.
void BM_gpu_baseline_addmm_per_adapter(benchmark::State& st) {
  const index_t T = st.range(0), d = st.range(1);
  auto W = random_bf16(d * K, 1.0, 31);
  std::vector<device_buffer<bf16>> As, Bs;
  for (index_t t = 0; t < T; ++t) {
    As.push_back(random_bf16(R * K, 1.0, 40 + static_cast<std::uint64_t>(t)));
    Bs.push_back(random_bf16(d * R, 0.02, 50 + static_cast<std::uint64_t>(t)));
  }
  run_timed(st, [&] {
    for (index_t t = 0; t < T; ++t)
      gemm_rm(false, false, d, K, R, 0.5f + 0.25f * static_cast<float>(t), Bs[static_cast<std::size_t>(t)].data(), R,
              As[static_cast<std::size_t>(t)].data(), K, 1.0f, W.data(), K);
  }, 4.0 * static_cast<double>(d * K), 2.0 * static_cast<double>(T * R) * static_cast<double>(d * K));
}
BENCHMARK(BM_gpu_merge)->Args({1, 14336, 1, 0})->Args({1, 14336, 0, 0})->Args({4, 14336, 1, 0})->Args({4, 14336, 0, 0})->Args({4, 14336, 0, 1})->Args({8, 14336, 0, 0})->Args({4, 4096, 1, 0})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_merge_probe)->Args({4, 14336, 0, 0, 2})->Args({4, 14336, 0, 0, 6})->Args({4, 14336, 0, 0, 7})->Args({4, 14336, 0, 0, 8})->Args({4, 14336, 1, 0, 8})->Args({4, 14336, 0, 0, 22})->Args({4, 14336, 0, 0, 32})->Args({8, 14336, 0, 0, 32})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_copy_w)->Arg(14336)->Arg(4096)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_copy_w_kernel)->Args({14336, 0})->Args({14336, 1})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_copy_w_tiles)->Args({14336, 0})->Args({14336, 1})->Args({14336, 2})->Args({14336, 3})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
BENCHMARK(BM_gpu_baseline_addmm_per_adapter)->Args({1, 14336})->Args({4, 14336})->Args({4, 4096})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);

}  // namespace

int main(int argc, char** argv) {
  bool listing = false;
  for (int i = 1; i < argc; ++i) listing = listing || std::string(argv[i]).rfind("--benchmark_list_tests", 0) == 0;
  int devices = 0;
  if (!listing && (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)) {
    std::printf("lori_bench_cuda: no CUDA device; nothing to measure\n");
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
