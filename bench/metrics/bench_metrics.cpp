// lori_bench_metrics: interference metrics in low-rank form.
//   BM_metrics_llama_4adapters     all pairwise metrics (+ cross-term energy) of 4 Llama-3-8B-shaped
//                                  adapters, 224 modules each, r = 32, float (target: <= 1 s, one core)
//   BM_metrics_module_lowrank      one pair on one d = k = 4096 module, r = 32
//   BM_metrics_baseline_dense      the same pair computed densely: dW_i, dW_j, B_i A_j, B_j A_i formed
//                                  with Eigen, Frobenius inner products and norms (target: >= 100x slower)
#include <benchmark/benchmark.h>

#include "lori/metrics/interference.hpp"
#include "lori/metrics/interference_report.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Fast deterministic fill (uniform in [-1, 1)); N(0,1) draws would only slow the set-up.
void fill(MatF& m, std::uint64_t& state) {
  for (Eigen::Index i = 0; i < m.size(); ++i) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    m.data()[i] = static_cast<float>(static_cast<double>(state >> 11) * (2.0 / 9007199254740992.0) - 1.0);
  }
}

lori::adapter_module<float> make_module(Eigen::Index d, Eigen::Index k, Eigen::Index r, std::uint64_t& st) {
  lori::adapter_module<float> m;
  m.A.resize(r, k);
  m.B.resize(d, r);
  fill(m.A, st);
  fill(m.B, st);
  m.scaling = 2.0;
  return m;
}

constexpr int kRank = 32;

const std::vector<lori::adapter_model<float>>& llama_adapters() {
  static const auto models = [] {
    std::vector<lori::adapter_model<float>> ms(4);
    std::uint64_t st = 0x1234567u;
    const std::vector<std::pair<std::string, std::pair<int, int>>> shapes = {
        {"self_attn.q_proj", {4096, 4096}}, {"self_attn.k_proj", {1024, 4096}}, {"self_attn.v_proj", {1024, 4096}},
        {"self_attn.o_proj", {4096, 4096}}, {"mlp.gate_proj", {14336, 4096}},  {"mlp.up_proj", {14336, 4096}},
        {"mlp.down_proj", {4096, 14336}}};
    for (auto& m : ms)
      for (int layer = 0; layer < 32; ++layer)
        for (const auto& [name, dk] : shapes)
          m["base_model.model.model.layers." + std::to_string(layer) + "." + name] = make_module(dk.first, dk.second, kRank, st);
    return ms;
  }();
  return models;
}

void BM_metrics_llama_4adapters(benchmark::State& state) {
  const auto& ms = llama_adapters();
  const std::vector<const lori::adapter_model<float>*> ptrs = {&ms[0], &ms[1], &ms[2], &ms[3]};
  const std::vector<double> w = {0.4, 0.4, 0.4, 0.4};
  std::int64_t bytes = 0;
  for (const auto& m : ms)
    for (const auto& kv : m) bytes += static_cast<std::int64_t>((kv.second.A.size() + kv.second.B.size()) * sizeof(float));
  for (auto _ : state) {
    auto rep = lori::analyze_interference<float>(ptrs, w);
    benchmark::DoNotOptimize(rep.overall.cross_term_energy);
  }
  state.SetBytesProcessed(state.iterations() * bytes);
  state.SetItemsProcessed(state.iterations() * 224 * 6);  // module pairs
}
BENCHMARK(BM_metrics_llama_4adapters)->Unit(benchmark::kMillisecond)->Iterations(3);

struct pair4096 {
  lori::adapter_module<float> a, b;
  pair4096() {
    std::uint64_t st = 99;
    a = make_module(4096, 4096, kRank, st);
    b = make_module(4096, 4096, kRank, st);
  }
};
const pair4096& module_pair() {
  static const pair4096 p;
  return p;
}

void BM_metrics_module_lowrank(benchmark::State& state) {
  const auto& p = module_pair();
  for (auto _ : state) {
    auto r = lori::compute_module_interference<float>({p.a.view(), p.b.view()}, {0.5, 0.5});
    benchmark::DoNotOptimize(r.cross_term_energy);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_metrics_module_lowrank)->Unit(benchmark::kMicrosecond);

void BM_metrics_baseline_dense(benchmark::State& state) {
  const auto& p = module_pair();
  MatF Di, Dj, Xij, Xji;
  for (auto _ : state) {
    Di.noalias() = p.a.B * p.a.A;
    Dj.noalias() = p.b.B * p.b.A;
    Xij.noalias() = p.a.B * p.b.A;
    Xji.noalias() = p.b.B * p.a.A;
    const double cosine = static_cast<double>(Di.cwiseProduct(Dj).sum()) / (static_cast<double>(Di.norm()) * Dj.norm());
    const double cross = static_cast<double>((Xij + Xji).norm()) / static_cast<double>((Di + Dj).norm());
    benchmark::DoNotOptimize(cosine);
    benchmark::DoNotOptimize(cross);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_metrics_baseline_dense)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
