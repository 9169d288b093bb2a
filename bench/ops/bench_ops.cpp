// lori_bench_ops: LoRI-S adapter kernels (sparse B, 90% zeros) against the dense path the reference takes
// (B stored dense with zeros outside the mask, Eigen dense GEMMs, dense gradient then mask, dense AdamW).
// fp32, d = k = 4096, r = 32. Arguments: {n tokens, threads}. Threads: ours take a thread count; the
// baselines get the same count through Eigen::setNbThreads (OpenMP), and ours set Eigen to 1 thread.
#include <benchmark/benchmark.h>

#include "lori/ops/backward.hpp"
#include "lori/ops/forward.hpp"
#include "lori/ops/optim.hpp"
#include "lori/sparse/csr_matrix.hpp"

#include <Eigen/Core>

#include <cmath>
#include <random>
#include <thread>
#include <vector>

namespace {
using RM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
constexpr lori::index_t kD = 4096, kK = 4096, kR = 32;
constexpr double kKeep = 0.1;
constexpr float kScale = 2.0f;

RM randn(lori::index_t rows, lori::index_t cols, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd;
  RM m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(g);
  return m;
}

struct Problem {
  lori::bitmask mask;
  lori::csr_matrix<float> B;
  RM B_dense;     // the reference's B: dense, zeros outside the mask
  RM mask_dense;  // the reference's mask as a 0/1 float tensor (grad * mask)
  RM A;
  Problem() : mask(kD, kR) {
    std::mt19937 g(7);
    std::bernoulli_distribution keep(kKeep);
    for (lori::index_t i = 0; i < kD; ++i)
      for (lori::index_t j = 0; j < kR; ++j)
        if (keep(g)) mask.set(i, j);
    B = lori::csr_matrix<float>(mask);
    std::normal_distribution<float> nd;
    for (auto& v : B.values()) v = nd(g);
    B_dense.resize(kD, kR);
    B.to_dense(lori::view(B_dense));
    mask_dense.resize(kD, kR);
    mask.to_dense(lori::view(mask_dense));
    A = randn(kR, kK, 3);
  }
};
const Problem& problem() {
  static const Problem p;
  return p;
}

void set_eigen_threads(int t) {
  Eigen::setNbThreads(t);
}

// ---- forward, adapter only: Y += s (X A^T) B^T -------------------------------------------------
void BM_forward_adapter(benchmark::State& state) {
  const auto& P = problem();
  const auto n = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  set_eigen_threads(1);
  const RM X = randn(n, kK, 1);
  RM Y = RM::Zero(n, kD), H(n, kR);
  for (auto _ : state) {
    lori::adapter_forward(lori::view(X), lori::view(P.A), P.B.view(), kScale, lori::view(Y), lori::view(H), threads);
    benchmark::DoNotOptimize(Y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * (kK + 2 * kD) * static_cast<int64_t>(sizeof(float)));
}

void BM_forward_adapter_baseline_dense(benchmark::State& state) {
  const auto& P = problem();
  const auto n = state.range(0);
  set_eigen_threads(static_cast<int>(state.range(1)));
  const RM X = randn(n, kK, 1);
  RM Y = RM::Zero(n, kD), H(n, kR);
  for (auto _ : state) {
    H.noalias() = X * P.A.transpose();
    Y.noalias() += kScale * (H * P.B_dense.transpose());
    benchmark::DoNotOptimize(Y.data());
    benchmark::ClobberMemory();
  }
  set_eigen_threads(1);
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * (kK + 2 * kD) * static_cast<int64_t>(sizeof(float)));
}

// The memory floor of any forward at large n: X (n x k) read once and Y (n x d) read and written once
// (here: Y[i, :] += sum of X[i, :]). Rows split statically over `threads` std::threads.
void BM_forward_adapter_floor_stream(benchmark::State& state) {
  const auto n = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  const RM X = randn(n, kK, 1);
  RM Y = RM::Zero(n, kD);
  auto body = [&](lori::index_t b, lori::index_t e) {
    for (lori::index_t i = b; i < e; ++i) {
      const float* x = X.data() + i * kK;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (lori::index_t c = 0; c + 8 <= kK; c += 8)
        for (int l = 0; l < 8; ++l) acc[l] += x[c + l];
      const float sum = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
      float* y = Y.data() + i * kD;
      for (lori::index_t j = 0; j < kD; ++j) y[j] += sum;
    }
  };
  for (auto _ : state) {
    if (threads <= 1) {
      body(0, n);
    } else {
      std::vector<std::thread> th;
      for (int w = 1; w < threads; ++w) th.emplace_back(body, n * w / threads, n * (w + 1) / threads);
      body(0, n / threads);
      for (auto& x : th) x.join();
    }
    benchmark::DoNotOptimize(Y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * (kK + 2 * kD) * static_cast<int64_t>(sizeof(float)));
}

// ---- masked dL/dB: s (G^T H) at the mask -------------------------------------------------------
void BM_masked_grad_B(benchmark::State& state) {
  const auto& P = problem();
  const auto n = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  set_eigen_threads(1);
  const RM G = randn(n, kD, 4), H = randn(n, kR, 5);
  std::vector<float> dB(static_cast<std::size_t>(P.B.nnz()));
  for (auto _ : state) {
    lori::masked_grad_B(lori::view(G), lori::view(H), P.B.view(), kScale, lori::vector_view<float>(dB.data(), P.B.nnz()), threads);
    benchmark::DoNotOptimize(dB.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * (kD + kR) * static_cast<int64_t>(sizeof(float)));
}

void BM_masked_grad_B_baseline_dense_then_mask(benchmark::State& state) {
  const auto& P = problem();
  const auto n = state.range(0);
  set_eigen_threads(static_cast<int>(state.range(1)));
  const RM G = randn(n, kD, 4), H = randn(n, kR, 5);
  RM dB(kD, kR);
  for (auto _ : state) {
    dB.noalias() = kScale * (G.transpose() * H);
    dB.array() *= P.mask_dense.array();  // B.grad * mask, as the reference does before the step
    benchmark::DoNotOptimize(dB.data());
    benchmark::ClobberMemory();
  }
  set_eigen_threads(1);
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * (kD + kR) * static_cast<int64_t>(sizeof(float)));
}

// The floor of any masked dL/dB: G (n x d) must be read once. One pass summing G.
void BM_masked_grad_B_floor_read_G(benchmark::State& state) {
  const auto n = state.range(0);
  const RM G = randn(n, kD, 4);
  for (auto _ : state) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const float* p = G.data();
    const Eigen::Index size = G.size();
    Eigen::Index i = 0;
    for (; i + 8 <= size; i += 8)
      for (int l = 0; l < 8; ++l) acc[l] += p[i + l];
    for (; i < size; ++i) acc[0] += p[i];
    benchmark::DoNotOptimize(acc);
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * kD * static_cast<int64_t>(sizeof(float)));
}

// ---- AdamW step ---------------------------------------------------------------------------------
void BM_adamw_step(benchmark::State& state) {
  const auto& P = problem();
  const int threads = static_cast<int>(state.range(1));
  auto values = P.B.values();
  const auto nnz = P.B.nnz();
  const RM g = randn(1, nnz, 6);
  lori::adamw_state<float> st(nnz);
  lori::adamw_options o;
  for (auto _ : state) {
    lori::adamw_step(lori::vector_view<float>(values.data(), nnz), lori::vector_view<const float>(g.data(), nnz), st, o, threads);
    benchmark::DoNotOptimize(values.data());
    benchmark::ClobberMemory();
  }
  state.counters["state_bytes"] = static_cast<double>(st.memory_bytes());
  state.SetItemsProcessed(state.iterations() * nnz);
  state.SetBytesProcessed(state.iterations() * nnz * 7 * static_cast<int64_t>(sizeof(float)));
}

// The reference: dense B, grad masked (grad * mask), torch's AdamW over all d x r entries (fused here into
// one loop, which is kinder to the baseline than torch's per-op passes). Split over threads statically.
void BM_adamw_step_baseline_dense(benchmark::State& state) {
  const auto& P = problem();
  const int threads = static_cast<int>(state.range(1));
  RM p = P.B_dense, m = RM::Zero(kD, kR), v = RM::Zero(kD, kR);
  const RM g0 = randn(kD, kR, 6);
  RM g(kD, kR);
  const lori::adamw_options o;
  std::int64_t t = 0;
  for (auto _ : state) {
    ++t;
    const float decay = static_cast<float>(1 - o.lr * o.weight_decay), w1 = static_cast<float>(1 - o.beta1);
    const float b2 = static_cast<float>(o.beta2), w2 = static_cast<float>(1 - o.beta2);
    const float step = static_cast<float>(o.lr / (1 - std::pow(o.beta1, t)));
    const float bc2 = static_cast<float>(std::sqrt(1 - std::pow(o.beta2, t))), eps = static_cast<float>(o.eps);
    const lori::index_t size = kD * kR;
    auto body = [&](lori::index_t b, lori::index_t e) {
      for (lori::index_t i = b; i < e; ++i) {
        const float gi = g0.data()[i] * P.mask_dense.data()[i];
        g.data()[i] = gi;
        p.data()[i] *= decay;
        m.data()[i] += w1 * (gi - m.data()[i]);
        v.data()[i] = v.data()[i] * b2 + w2 * gi * gi;
        p.data()[i] -= step * m.data()[i] / (std::sqrt(v.data()[i]) / bc2 + eps);
      }
    };
    if (threads <= 1) {
      body(0, size);
    } else {
      std::thread th(body, size / 2, size);
      body(0, size / 2);
      th.join();
    }
    benchmark::DoNotOptimize(p.data());
    benchmark::ClobberMemory();
  }
  state.counters["state_bytes"] = static_cast<double>(2 * kD * kR * sizeof(float));
  state.SetItemsProcessed(state.iterations() * kD * kR);
  state.SetBytesProcessed(state.iterations() * kD * kR * 8 * static_cast<int64_t>(sizeof(float)));
}

// ---- dL/dX (adapter part only): s (G B) A ---------------------------------------------------------
void BM_input_grad_adapter(benchmark::State& state) {
  const auto& P = problem();
  const auto n = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  set_eigen_threads(1);
  const RM G = randn(n, kD, 4);
  RM dX(n, kK);
  for (auto _ : state) {
    lori::input_grad(lori::view(G), lori::row_major_view<const float>(), lori::view(P.A), P.B.view(), kScale, lori::view(dX), threads);
    benchmark::DoNotOptimize(dX.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
}

void BM_input_grad_adapter_baseline_dense(benchmark::State& state) {
  const auto& P = problem();
  const auto n = state.range(0);
  set_eigen_threads(static_cast<int>(state.range(1)));
  const RM G = randn(n, kD, 4);
  RM dX(n, kK), GB(n, kR);
  for (auto _ : state) {
    GB.noalias() = G * P.B_dense;
    dX.noalias() = kScale * (GB * P.A);
    benchmark::DoNotOptimize(dX.data());
    benchmark::ClobberMemory();
  }
  set_eigen_threads(1);
  state.SetItemsProcessed(state.iterations() * n);
}


// ---- decode across many layers: n = 1 token through kLayers adapters whose weights do not fit in the
// caches (as in a real model, where each layer's A and B are streamed once per generated token).
constexpr int kLayers = 96;  // 96 x (512 KiB A + 512 KiB dense B) = 96 MiB > the 32 MiB L3 here
struct Layers {
  std::vector<RM> A, B_dense;
  std::vector<lori::csr_matrix<float>> B;
  Layers() {
    const auto& P = problem();
    for (int l = 0; l < kLayers; ++l) {
      A.push_back(P.A);
      B_dense.push_back(P.B_dense);
      B.push_back(P.B);
    }
  }
};
const Layers& layers() {
  static const Layers L;
  return L;
}

void BM_forward_adapter_decode_layers(benchmark::State& state) {
  const auto& L = layers();
  set_eigen_threads(1);
  const RM X = randn(1, kK, 1);
  RM Y = RM::Zero(1, kD), H(1, kR);
  for (auto _ : state) {
    for (int l = 0; l < kLayers; ++l)
      lori::adapter_forward(lori::view(X), lori::view(L.A[static_cast<std::size_t>(l)]), L.B[static_cast<std::size_t>(l)].view(), kScale,
                            lori::view(Y), lori::view(H), static_cast<int>(state.range(1)));
    benchmark::DoNotOptimize(Y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * kLayers);
}

void BM_forward_adapter_decode_layers_baseline_dense(benchmark::State& state) {
  const auto& L = layers();
  set_eigen_threads(static_cast<int>(state.range(1)));
  const RM X = randn(1, kK, 1);
  RM Y = RM::Zero(1, kD), H(1, kR);
  for (auto _ : state) {
    for (int l = 0; l < kLayers; ++l) {
      H.noalias() = X * L.A[static_cast<std::size_t>(l)].transpose();
      Y.noalias() += kScale * (H * L.B_dense[static_cast<std::size_t>(l)].transpose());
    }
    benchmark::DoNotOptimize(Y.data());
    benchmark::ClobberMemory();
  }
  set_eigen_threads(1);
  state.SetItemsProcessed(state.iterations() * kLayers);
}

void token_args(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2})
    for (int n : {1, 64, 512, 4096}) b->Args({n, threads});
  b->ArgNames({"n", "threads"})->Unit(benchmark::kMicrosecond)->UseRealTime();
}
void step_args(benchmark::internal::Benchmark* b) {
  b->Args({0, 1})->Args({0, 2})->ArgNames({"n", "threads"})->Unit(benchmark::kMicrosecond)->UseRealTime();
}
}  // namespace

BENCHMARK(BM_forward_adapter)->Apply(token_args);
BENCHMARK(BM_forward_adapter_baseline_dense)->Apply(token_args);
BENCHMARK(BM_forward_adapter_floor_stream)->Apply(token_args);
BENCHMARK(BM_forward_adapter_decode_layers)->Args({1, 1})->ArgNames({"n", "threads"})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_forward_adapter_decode_layers_baseline_dense)->Args({1, 1})->ArgNames({"n", "threads"})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_masked_grad_B)->Apply(token_args);
BENCHMARK(BM_masked_grad_B_baseline_dense_then_mask)->Apply(token_args);
BENCHMARK(BM_masked_grad_B_floor_read_G)->Apply(token_args);
BENCHMARK(BM_adamw_step)->Apply(step_args);
BENCHMARK(BM_adamw_step_baseline_dense)->Apply(step_args);
BENCHMARK(BM_input_grad_adapter)->Apply(token_args);
BENCHMARK(BM_input_grad_adapter_baseline_dense)->Apply(token_args);
BENCHMARK_MAIN();
