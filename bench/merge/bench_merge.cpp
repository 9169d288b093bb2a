// lori_bench_merge: merging adapters into a base weight, and adapter-to-adapter merges.
//   BM_merge_into_base/threads       W (fp32, 4096 x 14336) += sum of 4 adapters (r = 32), blocked, one
//                                    pass over W (target: <= 1.3x BM_merge_baseline_copy)
//   BM_merge_into_base_bf16/threads  the same with bf16 storage of W
//   BM_merge_into_base_sparse/threads       the same W with 4 LoRI-S adapters (r = 32, B 90% sparse:
//                                           random masks of density 0.1): the masked sparse path
//   BM_merge_into_base_sparse_bf16/threads  the same with bf16 storage of W
//   BM_merge_baseline_dense_eigen    what PEFT's merge_and_unload does: per adapter dW = B A (dense
//                                    d x k temporary), W += c dW
//   BM_merge_baseline_copy           memcpy of W (the bandwidth bound of any one-pass merge)
//   BM_merge_svd_lowrank             merge_adapters(svd) of 4 adapters on a 1024 x 1024 module
//   BM_merge_svd_baseline_dense      the same via the dense delta and a dense SVD (what PEFT does)
#include <benchmark/benchmark.h>

#include "lori/merge/merge_into_base.hpp"
#include "lori/merge/weighted_adapter.hpp"

#include <Eigen/Core>
#include <Eigen/SVD>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

void fill(float* p, std::size_t n, std::uint64_t& state) {
  for (std::size_t i = 0; i < n; ++i) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    p[i] = static_cast<float>(static_cast<double>(state >> 11) * (2.0 / 9007199254740992.0) - 1.0) * 0.05f;
  }
}

constexpr int kD = 4096, kK = 14336, kR = 32, kN = 4;

struct setup {
  std::vector<lori::adapter_module<float>> adapters;
  std::vector<double> weights = std::vector<double>(kN, 0.4);
  MatF W;
  setup(int d, int k) {
    std::uint64_t st = 42;
    for (int i = 0; i < kN; ++i) {
      lori::adapter_module<float> m;
      m.A.resize(kR, k);
      m.B.resize(d, kR);
      fill(m.A.data(), static_cast<std::size_t>(m.A.size()), st);
      fill(m.B.data(), static_cast<std::size_t>(m.B.size()), st);
      m.scaling = 2.0;
      adapters.push_back(std::move(m));
    }
    W.resize(d, k);
    fill(W.data(), static_cast<std::size_t>(W.size()), st);
  }
  std::vector<lori::adapter_module_view<float>> views() const {
    std::vector<lori::adapter_module_view<float>> v;
    for (const auto& a : adapters) v.push_back(a.view());
    return v;
  }
};

setup& big() {
  static setup s(kD, kK);
  return s;
}

/// The big setup's adapters with random masks of density 0.1 (B zeroed outside), as LoRI-S.
struct sparse_setup {
  std::vector<lori::adapter_module<float>> adapters;
  sparse_setup() {
    std::uint64_t st = 7;
    for (const auto& a : big().adapters) {
      lori::adapter_module<float> m = a;
      lori::bitmask mask(kD, kR);
      for (int i = 0; i < kD; ++i)
        for (int j = 0; j < kR; ++j) {
          st ^= st << 13;
          st ^= st >> 7;
          st ^= st << 17;
          if (st % 10 == 0) mask.set(i, j);
          else m.B(i, j) = 0.0f;
        }
      m.b_mask = std::move(mask);
      adapters.push_back(std::move(m));
    }
  }
  std::vector<lori::adapter_module_view<float>> views() const {
    std::vector<lori::adapter_module_view<float>> v;
    for (const auto& a : adapters) v.push_back(a.view());
    return v;
  }
};

sparse_setup& big_sparse() {
  static sparse_setup s;
  return s;
}

void BM_merge_into_base(benchmark::State& state) {
  auto& s = big();
  lori::merge_into_base_options opt;
  opt.num_threads = static_cast<int>(state.range(0));
  const auto v = s.views();
  for (auto _ : state) {
    lori::merge_into_base<float, float>(lori::view(s.W), v, s.weights, opt);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(2 * s.W.size() * sizeof(float)));
}
BENCHMARK(BM_merge_into_base)->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_merge_into_base_bf16(benchmark::State& state) {
  auto& s = big();
  std::vector<lori::bfloat16> Wb(static_cast<std::size_t>(s.W.size()));
  for (std::size_t i = 0; i < Wb.size(); ++i) Wb[i] = lori::bfloat16(s.W.data()[i]);
  lori::merge_into_base_options opt;
  opt.num_threads = static_cast<int>(state.range(0));
  const auto v = s.views();
  for (auto _ : state) {
    lori::merge_into_base<lori::bfloat16, float>(lori::row_major_view<lori::bfloat16>(Wb.data(), kD, kK), v, s.weights, opt);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(2 * Wb.size() * sizeof(lori::bfloat16)));
}
BENCHMARK(BM_merge_into_base_bf16)->Arg(1)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_merge_into_base_sparse(benchmark::State& state) {
  auto& s = big();
  lori::merge_into_base_options opt;
  opt.num_threads = static_cast<int>(state.range(0));
  const auto v = big_sparse().views();
  for (auto _ : state) {
    lori::merge_into_base<float, float>(lori::view(s.W), v, s.weights, opt);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(2 * s.W.size() * sizeof(float)));
}
BENCHMARK(BM_merge_into_base_sparse)->Arg(1)->Arg(2)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_merge_into_base_sparse_bf16(benchmark::State& state) {
  auto& s = big();
  std::vector<lori::bfloat16> Wb(static_cast<std::size_t>(s.W.size()));
  for (std::size_t i = 0; i < Wb.size(); ++i) Wb[i] = lori::bfloat16(s.W.data()[i]);
  lori::merge_into_base_options opt;
  opt.num_threads = static_cast<int>(state.range(0));
  const auto v = big_sparse().views();
  for (auto _ : state) {
    lori::merge_into_base<lori::bfloat16, float>(lori::row_major_view<lori::bfloat16>(Wb.data(), kD, kK), v, s.weights, opt);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(2 * Wb.size() * sizeof(lori::bfloat16)));
}
BENCHMARK(BM_merge_into_base_sparse_bf16)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_merge_baseline_dense_eigen(benchmark::State& state) {
  auto& s = big();
  MatF dW = MatF::Zero(kD, kK);
  for (auto _ : state) {
    for (std::size_t i = 0; i < s.adapters.size(); ++i) {
      dW.noalias() = s.adapters[i].B * s.adapters[i].A;
      s.W += static_cast<float>(s.weights[i] * s.adapters[i].scaling) * dW;
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(2 * s.W.size() * sizeof(float)));
}
BENCHMARK(BM_merge_baseline_dense_eigen)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_merge_baseline_copy(benchmark::State& state) {
  auto& s = big();
  MatF dst = MatF::Zero(kD, kK);  // touched once, so no page faults are timed
  for (auto _ : state) {
    std::memcpy(dst.data(), s.W.data(), static_cast<std::size_t>(s.W.size()) * sizeof(float));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(2 * s.W.size() * sizeof(float)));
}
BENCHMARK(BM_merge_baseline_copy)->Unit(benchmark::kMillisecond)->UseRealTime();

setup& small() {
  static setup s(1024, 1024);
  return s;
}

void BM_merge_svd_lowrank(benchmark::State& state) {
  auto& s = small();
  lori::merge_options opt;
  opt.type = lori::combination_type::svd;
  const auto v = s.views();
  for (auto _ : state) {
    auto out = lori::merge_adapters<float>(v, s.weights, opt);
    benchmark::DoNotOptimize(out.A.data());
  }
  state.SetItemsProcessed(state.iterations());  // merges
}
BENCHMARK(BM_merge_svd_lowrank)->Unit(benchmark::kMillisecond);

void BM_merge_svd_baseline_dense(benchmark::State& state) {
  auto& s = small();
  using MatC = Eigen::MatrixXf;
  for (auto _ : state) {
    MatC dW = MatC::Zero(1024, 1024);
    for (std::size_t i = 0; i < s.adapters.size(); ++i)
      dW += static_cast<float>(s.weights[i] * s.adapters[i].scaling) * (s.adapters[i].B * s.adapters[i].A);
    Eigen::BDCSVD<MatC> svd(dW, Eigen::ComputeThinU | Eigen::ComputeThinV);
    MatC B = svd.matrixU().leftCols(kR) * svd.singularValues().head(kR).asDiagonal();
    MatC A = svd.matrixV().leftCols(kR).transpose();
    benchmark::DoNotOptimize(A.data());
    benchmark::DoNotOptimize(B.data());
  }
  state.SetItemsProcessed(state.iterations());  // merges
}
BENCHMARK(BM_merge_svd_baseline_dense)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
