// GPU mask calibration (lori::cuda::calibration_plan) against the CPU path, bit for bit: every
// granularity, both semantics, float and double, ties, exclusions, padded views, odd shapes, the
// compact (candidate) path and the forced full-data fallback, with every output word poisoned first.
//
// LORI_MASK_GPU_QUICK=1 in the environment runs a representative subset (model and matrix
// granularity, default and zero candidate capacity, one sparsity per sweep): every kernel and both
// modes, for compute-sanitizer runs (memcheck, racecheck) that must finish in well under a minute.
#include <doctest/doctest.h>

#include "calibrate_reference.hpp"
#include "lori/cuda/calibrate.cuh"
#include "lori/cuda/device_buffer.cuh"
#include "lori/mask/calibrate.hpp"
#include "test_util.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

bool quick() {
  const char* q = std::getenv("LORI_MASK_GPU_QUICK");
  return q != nullptr && q[0] != '\0' && q[0] != '0';
}

using lori_test::all_granularities;
using lori_test::all_semantics;

// Device copies of a host adapter: values (with their leading dimension, and the host pointer's
// misalignment to 16 bytes, so unaligned views stay unaligned), exclusion words, outputs.
template <class T>
struct device_adapter {
  std::vector<std::size_t> shift;
  std::vector<lori::cuda::device_buffer<T>> values;
  std::vector<lori::cuda::device_buffer<std::uint64_t>> excl, out;
  std::vector<lori::cuda::device_calibration_tensor<T>> tensors;

  explicit device_adapter(const std::vector<lori::calibration_tensor<T>>& ts) {
    for (const auto& t : ts) {
      const lori::index_t r = t.values.rows(), c = t.values.cols(), ld = t.values.ld();
      const std::size_t sh = (reinterpret_cast<std::uintptr_t>(t.values.data()) % 16) / sizeof(T);
      shift.push_back(sh);
      std::vector<T> host(static_cast<std::size_t>(r * ld) + sh, T(7));
      for (lori::index_t i = 0; i < r; ++i)
        for (lori::index_t j = 0; j < ld; ++j) host[sh + static_cast<std::size_t>(i * ld + j)] = j < c ? t.values(i, j) : T(7);
      values.emplace_back(host);
      excl.emplace_back(t.exclude != nullptr ? t.exclude->words() : std::vector<std::uint64_t>{});
      out.emplace_back(r * lori::bitmask_words_per_row(c));
    }
    for (std::size_t k = 0; k < ts.size(); ++k) {
      const auto& t = ts[k];
      const lori::index_t r = t.values.rows(), c = t.values.cols(), wpr = lori::bitmask_words_per_row(c);
      lori::cuda::device_calibration_tensor<T> d;
      d.name = t.name;
      d.values = lori::row_major_view<const T>(values[k].data() + shift[k], r, c, t.values.ld());
      if (t.exclude != nullptr) d.exclude = lori::bitmask_view{excl[k].data(), r, c, wpr};
      d.mask = lori::mutable_bitmask_view{out[k].data(), r, c, wpr};
      tensors.push_back(d);
    }
  }
  void poison() {
    for (auto& o : out) o.fill_bytes(0xff);
  }
};

template <class T>
void compare_gpu_cpu(const std::vector<lori::calibration_tensor<T>>& ts, const lori::calibration_options& opt, lori::index_t capacity) {
  const auto cpu = lori::calibrate_mask(ts, opt);
  device_adapter<T> dev(ts);
  lori::cuda::calibration_plan<T> plan(dev.tensors, opt, capacity);
  lori::cuda::device_buffer<std::byte> ws(static_cast<lori::index_t>(plan.workspace_bytes()));
  // Where the plan folds the selects into the kernels before them (few groups): rep 3 with separate
  // select launches instead, rep 4 with calib_finish by candidates instead of by segments (where
  // the plan goes by segments).
  const int reps = quick() ? 2 : plan.fused_select() ? 5 : 3;
  for (int rep = 0; rep < reps; ++rep) {  // a plan runs again with the same workspace
    INFO("repetition " << rep);
    dev.poison();
    if (rep != 1) ws.fill_bytes(rep == 0 ? 0xff : 0x5a);  // the workspace needs no initialisation
    plan.set_dependent_launch(rep != 2);                   // rep 2: ordinary launches
    plan.set_fused_select(rep != 3);
    plan.set_finish_segments(rep != 4);
    plan.run(ws.data(), ws.bytes(), nullptr, rep == 1);    // rep 1 reuses the uploaded descriptors
    const auto r = plan.report(ws.data(), nullptr);
    REQUIRE(r.groups.size() == cpu.report.groups.size());
    for (std::size_t g = 0; g < r.groups.size(); ++g) {
      INFO("group " << r.groups[g].label);
      CHECK(r.groups[g].k == cpu.report.groups[g].k);
      CHECK(r.groups[g].threshold == cpu.report.groups[g].threshold);
      CHECK(r.groups[g].threshold_bits == cpu.report.groups[g].threshold_bits);
      CHECK(r.groups[g].kept == cpu.report.groups[g].kept);
      CHECK(r.groups[g].ties_kept == cpu.report.groups[g].ties_kept);
    }
    std::size_t wrong_tensors = 0;
    for (std::size_t t = 0; t < ts.size(); ++t) {
      const auto words = dev.out[t].download();  // padding bits included: must be zero, as on the CPU
      if (words != cpu.masks[t].words()) {
        ++wrong_tensors;
        MESSAGE("mask differs: " << ts[t].name << " " << ts[t].values.rows() << "x" << ts[t].values.cols());
      }
      CHECK(r.tensors[t].kept == cpu.report.tensors[t].kept);
    }
    CHECK(wrong_tensors == 0);
    CHECK(r.total_kept == cpu.report.total_kept);
  }
}

// compare_gpu_cpu at sparsity s, granularity gran, semantics sem and candidate capacity cap (the
// options named in the failure messages).
template <class T>
void compare_one(const std::vector<lori::calibration_tensor<T>>& ts, double s, lori::mask_granularity gran, lori::mask_semantics sem,
                 lori::index_t cap) {
  INFO("s=" << s << " granularity=" << lori::to_string(gran) << " exact=" << (sem == lori::mask_semantics::exact) << " capacity=" << cap);
  lori::calibration_options opt;
  opt.sparsity = s;
  opt.granularity = gran;
  opt.semantics = sem;
  compare_gpu_cpu(ts, opt, cap);
}

template <class T>
void sweep(const lori_test::random_adapter_spec& spec, std::uint64_t salt, const std::vector<double>& sparsities) {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(salt);
  const auto a = lori_test::make_random_adapter<T>(spec, g);
  const bool q = quick();
  for (double s : sparsities) {
    if (q && s != sparsities.back()) continue;
    for (auto gran : all_granularities) {
      if (q && gran != lori::mask_granularity::model && gran != lori::mask_granularity::matrix) continue;
      if (q && gran == lori::mask_granularity::matrix && salt % 2 == 0) continue;
      for (auto sem : all_semantics)
        for (lori::index_t cap : {lori::index_t{-1}, lori::index_t{0}, lori::index_t{37}}) {
          if (q && cap == 37) continue;
          compare_one(a.tensors, s, gran, sem, cap);
        }
    }
  }
}

// Every granularity the names allow (all of them for PEFT names) x both semantics x the given
// capacities, at sparsity s.
template <class T>
void compare_all(const std::vector<lori::calibration_tensor<T>>& ts, double s, const std::vector<lori::index_t>& caps) {
  for (auto gran : all_granularities) {
    if (quick() && gran != lori::mask_granularity::model && gran != lori::mask_granularity::matrix) continue;
    for (auto sem : all_semantics)
      for (lori::index_t cap : caps) compare_one(ts, s, gran, sem, cap);
  }
}

}  // namespace

TEST_CASE("GPU calibration equals the CPU path: normal values") {
  lori_test::random_adapter_spec spec;
  sweep<float>(spec, 101, {0.0, 0.9, 1.0});
  sweep<double>(spec, 102, {0.5, 0.97});
}

TEST_CASE("GPU calibration equals the CPU path: padded views, exclusions, odd shapes") {
  lori_test::random_adapter_spec spec;
  spec.padded_ld = true;
  spec.exclude_prob = 0.6;
  sweep<float>(spec, 103, {0.0, 0.5, 0.9});
  spec.odd_shapes = true;
  sweep<float>(spec, 104, {0.3, 0.9});
  sweep<double>(spec, 105, {0.9});
}

TEST_CASE("GPU calibration equals the CPU path: heavy ties and signed zeros") {
  lori_test::random_adapter_spec spec;
  spec.ties = true;
  sweep<float>(spec, 106, {0.2, 0.5, 0.9});
  spec.exclude_prob = 0.5;
  sweep<float>(spec, 107, {0.1, 0.6});
  sweep<double>(spec, 108, {0.6});
}

TEST_CASE("GPU calibration equals the CPU path on tensors spanning many tiles") {
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(109);
  // 3 layers of 7 tensors with up to 2048 x 64 rows: several 16384-element tiles per tensor.
  std::vector<std::vector<float>> store;
  std::vector<lori::bitmask> ex;
  std::vector<lori::calibration_tensor<float>> ts;
  const char* projs[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
  const lori::index_t rows[] = {1024, 256, 256, 1024, 2048, 2048, 1024};
  std::normal_distribution<float> nd(0.0f, 0.02f);
  store.reserve(21);
  ex.reserve(21);
  for (int l = 0; l < 3; ++l)
    for (int p = 0; p < 7; ++p) {
      const lori::index_t r = rows[p], c = (p % 2 == 0) ? 32 : 64;
      store.emplace_back(static_cast<std::size_t>(r * c));
      for (auto& x : store.back()) x = nd(g);
      ex.emplace_back(r, c);
      if (l == 1)
        for (lori::index_t i = 0; i < r; i += 3) ex.back().set(i, i % c);
      ts.push_back({"model.layers." + std::to_string(l) + "." + projs[p] + ".lora_B.weight",
                    lori::row_major_view<const float>(store.back().data(), r, c), l == 1 ? &ex.back() : nullptr});
    }
  for (auto gran : all_granularities)
    for (auto sem : all_semantics)
      for (lori::index_t cap : {lori::index_t{-1}, lori::index_t{0}}) {
        if (quick() && (gran != lori::mask_granularity::model || sem != lori::mask_semantics::reference || cap != -1)) continue;
        compare_one(ts, 0.9, gran, sem, cap);
      }
}

TEST_CASE("GPU calibration equals the CPU path when one bucket holds all the data (all magnitudes equal)") {
  // Every |B| is 0.5 (signs mixed; one tensor partly excluded): the first-digit bucket holds every
  // entry, so the candidate list needs every non-excluded entry, tau =
  // 0.5, reference semantics keep everything not excluded, exact semantics select k of the ties by
  // flat position, across tiles (4100 x 32 = 131200 elements: 9 tiles) and tensors. Excluded
  // entries rank as 0, outside the bucket: capacity N - excluded fits exactly, one less overflows.
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(110);
  std::uniform_int_distribution<int> coin(0, 1);
  const lori::index_t rows[] = {4100, 33, 1, 257}, cols[] = {32, 5, 1, 64};
  const char* names[] = {"model.layers.0.self_attn.q_proj.lora_B.weight", "model.layers.0.mlp.up_proj.lora_B.weight",
                         "model.layers.1.self_attn.q_proj.lora_B.weight", "model.layers.1.mlp.up_proj.lora_B.weight"};
  std::vector<std::vector<float>> store(4);
  std::vector<lori::bitmask> ex;
  ex.reserve(4);
  std::vector<lori::calibration_tensor<float>> ts;
  lori::index_t n = 0;
  for (int t = 0; t < 4; ++t) {
    store[t].resize(static_cast<std::size_t>(rows[t] * cols[t]));
    for (auto& x : store[t]) x = coin(g) ? 0.5f : -0.5f;
    ex.emplace_back(rows[t], cols[t]);
    if (t == 3)
      for (lori::index_t i = 0; i < rows[t]; i += 2) ex.back().set(i, (i * 7) % cols[t]);
    ts.push_back({names[t], lori::row_major_view<const float>(store[t].data(), rows[t], cols[t]), t == 3 ? &ex.back() : nullptr});
    n += rows[t] * cols[t];
  }
  const lori::index_t m = n - ex[3].count();  // entries in the bucket
  if (quick()) {
    compare_all(ts, 0.9, {m, 0});
  } else {
    for (double s : {0.3, 0.9}) compare_all(ts, s, {-1, m, m - 1, 0});
  }
}

TEST_CASE("GPU calibration equals the CPU path: wide, narrow and unaligned shapes across tiles") {
  // cols 128 and 256 (float4 path, two and four mask words per row), 1 and 3 (one thread per word),
  // 100 (not a float4 shape), 32 in a view starting one element into its buffer (unaligned: one
  // thread per word), several tiles each; a single-element tensor; double as well.
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(111);
  std::normal_distribution<double> nd(0.0, 0.02);
  const lori::index_t rows[] = {300, 70, 20000, 6000, 200, 1, 129};
  const lori::index_t cols[] = {128, 256, 1, 3, 100, 1, 32};
  std::vector<std::vector<float>> sf(7);
  std::vector<std::vector<double>> sd(7);
  std::vector<lori::calibration_tensor<float>> tf;
  std::vector<lori::calibration_tensor<double>> td;
  for (int t = 0; t < 7; ++t) {
    const std::size_t n = static_cast<std::size_t>(rows[t] * cols[t]) + 1;
    sf[t].resize(n);
    sd[t].resize(n);
    for (std::size_t i = 0; i < n; ++i) sd[t][i] = nd(g), sf[t][i] = static_cast<float>(sd[t][i]);
    const std::size_t off = t == 6 ? 1 : 0;  // unaligned view
    const std::string name = "model.layers." + std::to_string(t % 2) + (t % 3 == 0 ? ".mlp.down_proj" : ".self_attn.o_proj") + ".lora_B." + std::to_string(t);
    tf.push_back({name, lori::row_major_view<const float>(sf[t].data() + off, rows[t], cols[t]), nullptr});
    td.push_back({name, lori::row_major_view<const double>(sd[t].data() + off, rows[t], cols[t]), nullptr});
  }
  compare_all(tf, 0.9, {-1, 0});
  if (!quick()) {
    compare_all(tf, 0.5, {-1});
    compare_all(td, 0.9, {-1, 0});
  }
  // One element alone, every sparsity boundary (k = 0 for s > 0: floor((1 - s) * 1) = 0).
  std::vector<lori::calibration_tensor<float>> one = {{"model.layers.0.mlp.up_proj.lora_B.weight",
                                                       lori::row_major_view<const float>(sf[5].data(), 1, 1), nullptr}};
  for (double s : {0.0, 0.5, 1.0}) compare_all(one, s, {-1, 0});
}

TEST_CASE("GPU calibration equals the CPU path: ballot split shapes, bucket edges, subnormals") {
  // The ballot split (packed float rows with cols in {1, 2, 4, 8, 16} or a multiple of 32 up to 16384,
  // any alignment): narrow rows whose last 32-entry chunk is partial (rows not a multiple of 32 /
  // cols) in tiles of 16384 / cols rows, odd numbers of 32-entry halves per row (96, 160: the row's
  // last word written whole), views one element into their buffer, exclusions, one-row tiles of
  // 16384 columns, and next to them shapes of the other split (16416 columns, padded rows). Three
  // data sets: normal values; magnitudes on and next to the 13-bit bucket edges (keys b * 2^18 + {0,
  // 1, 2^18 - 2, 2^18 - 1}: the bucket bounds the split compares as floats), signs mixed; subnormals
  // and zeros only (an IEEE compare that flushed subnormals would keep or drop the wrong entries).
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(112);
  struct shape {
    lori::index_t rows, cols, ld;
    std::size_t off;
    bool excl;
  };
  const shape shapes[] = {{1000, 1, 1, 0, true},    {777, 2, 2, 1, false},   {4099, 4, 4, 0, true},     {515, 8, 8, 1, false},
                          {2049, 16, 16, 0, true},   {600, 32, 32, 1, false}, {300, 64, 64, 0, true},     {171, 96, 96, 1, true},
                          {130, 160, 160, 0, false}, {3, 16384, 16384, 0, true}, {2, 16416, 16416, 0, false}, {90, 32, 40, 0, true},
                          {0, 32, 32, 0, false}};
  constexpr int nshapes = sizeof(shapes) / sizeof(shapes[0]);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::uniform_int_distribution<std::uint32_t> bucket(3860, 3899), edge(0, 3), sub(0, 0x007fffffu), coin(0, 1);
  const std::uint32_t edges[] = {0u, 1u, (1u << 18) - 2u, (1u << 18) - 1u};
  for (int kind = 0; kind < 3; ++kind) {
    if (quick() && kind != 1) continue;
    INFO("data kind " << kind << " (0 normal, 1 bucket edges, 2 subnormals)");
    std::vector<std::vector<float>> store(nshapes);
    std::vector<lori::bitmask> ex;
    ex.reserve(nshapes);
    std::vector<lori::calibration_tensor<float>> ts;
    for (int t = 0; t < nshapes; ++t) {
      const auto& sh = shapes[t];
      store[t].resize(static_cast<std::size_t>(sh.rows * sh.ld) + sh.off);
      for (auto& x : store[t]) {
        std::uint32_t key = 0;
        if (kind == 0) {
          x = nd(g);
          continue;
        }
        key = kind == 1 ? (bucket(g) << 18) + edges[edge(g)] : (coin(g) ? sub(g) : 0u);
        const std::uint32_t b = key | (coin(g) ? 0x80000000u : 0u);
        std::memcpy(&x, &b, sizeof(x));
      }
      ex.emplace_back(sh.rows, sh.cols);
      if (sh.excl)
        for (lori::index_t i = 0; i < sh.rows; ++i)
          for (lori::index_t j = (i * 5) % 7; j < sh.cols; j += 7) ex.back().set(i, j);
      const std::string name = "model.layers." + std::to_string(t % 3) + (t % 2 == 0 ? ".mlp.up_proj" : ".self_attn.k_proj") +
                               ".lora_B." + std::to_string(t);
      ts.push_back({name, lori::row_major_view<const float>(store[t].data() + sh.off, sh.rows, sh.cols, sh.ld),
                    sh.excl ? &ex.back() : nullptr});
    }
    compare_all(ts, 0.9, {-1, 0});
    if (!quick()) compare_all(ts, 0.3, {-1});
  }
}

TEST_CASE("GPU calibration equals the CPU path when every tensor is a float4 tensor (pass 0 by bulk copies)") {
  // Packed, 16-byte aligned float tensors with 4, 8, 16, 32 or a multiple of 64 columns and no
  // exclusion mask: pass 0 streams its tiles into shared memory by bulk copies. Tensors of one to
  // several pass-0 tiles (8192 entries), a last tile shorter than the others, several groups per
  // persistent block (layer, matrix granularity); normal values and heavy ties.
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(113);
  const lori::index_t rows[] = {4096, 1024, 333, 2049, 64, 1, 7000, 515};
  const lori::index_t cols[] = {32, 32, 64, 16, 128, 4, 8, 32};
  constexpr int nt = sizeof(rows) / sizeof(rows[0]);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::uniform_int_distribution<int> level(0, 5);
  for (int kind = 0; kind < 2; ++kind) {
    if (quick() && kind == 1) continue;
    INFO("data kind " << kind << " (0 normal, 1 six levels)");
    std::vector<std::vector<float>> store(nt);
    std::vector<lori::calibration_tensor<float>> ts;
    for (int t = 0; t < nt; ++t) {
      store[t].resize(static_cast<std::size_t>(rows[t] * cols[t]));
      for (auto& x : store[t]) x = kind == 0 ? nd(g) : 0.01f * static_cast<float>(level(g) - 2);
      const std::string name = "model.layers." + std::to_string(t % 3) + (t % 2 == 0 ? ".mlp.down_proj" : ".self_attn.v_proj") +
                               ".lora_B." + std::to_string(t);
      ts.push_back({name, lori::row_major_view<const float>(store[t].data(), rows[t], cols[t]), nullptr});
    }
    compare_all(ts, 0.9, {-1, 0});
    if (!quick()) compare_all(ts, 0.5, {-1});
  }
}

TEST_CASE("GPU calibration equals the CPU path with folded selects and finish segments") {
  // One or two groups of packed, aligned float tensors of ballot-split shapes: the plan folds the
  // value selects into the last block of pass 0 (no exclusions: bulk copies) and of calib_hist
  // (calib_ticket_select), and calib_finish goes by the split blocks' candidate segments. One block per kernel (a single 16 x 4 tensor), many blocks (0.52 M
  // entries over 67 pass-0 and 35 split tiles), all magnitudes equal (one bucket holds all: the
  // candidate capacity exactly enough, one short, zero: calib_hist's fused select then), mostly
  // exact zeros with an exclusion mask (tau = 0: the excluded count joins bin 0), s = 0 and s = 1; model and module granularity (the last block selects two groups one
  // after the other), both semantics; each also with separate select launches and without finish
  // segments (compare_gpu_cpu's repetitions 3 and 4).
  LORI_TEST_SEED_INFO();
  auto g = lori_test::rng(114);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::uniform_int_distribution<int> coin(0, 1);
  struct shape {
    lori::index_t rows, cols;
  };
  const std::vector<std::vector<shape>> sets = {{{16, 4}}, {{4096, 32}, {1024, 64}, {333, 16}, {9001, 32}, {2049, 8}, {515, 32}}};
  for (std::size_t set = 0; set < sets.size(); ++set) {
    if (quick() && set == 1) continue;  // (compute-sanitizer: one block per kernel is enough)
    for (int kind = 0; kind < 3; ++kind) {
      INFO("set " << set << " data kind " << kind << " (0 normal, 1 all |x| = 0.5, 2 70% zeros, exclusions)");
      std::vector<std::vector<float>> store;
      std::vector<lori::bitmask> ex;
      ex.reserve(sets[set].size());
      std::vector<lori::calibration_tensor<float>> ts;
      lori::index_t n = 0;
      std::uniform_real_distribution<float> u01(0.0f, 1.0f);
      for (std::size_t t = 0; t < sets[set].size(); ++t) {
        const auto sh = sets[set][t];
        store.emplace_back(static_cast<std::size_t>(sh.rows * sh.cols));
        for (auto& x : store.back()) x = kind == 0 ? nd(g) : kind == 1 ? (coin(g) ? 0.5f : -0.5f) : (u01(g) < 0.7f ? 0.0f : nd(g));
        ex.emplace_back(sh.rows, sh.cols);
        if (kind == 2 && t == 0)
          for (lori::index_t i = 0; i < sh.rows; ++i)
            for (lori::index_t j = i % 3; j < sh.cols; j += 3) ex.back().set(i, j);
        const std::string name = "model.layers." + std::to_string(t) + (t % 2 == 0 ? ".mlp.gate_proj" : ".self_attn.o_proj") + ".lora_B.weight";
        ts.push_back({name, lori::row_major_view<const float>(store.back().data(), sh.rows, sh.cols), kind == 2 && t == 0 ? &ex.back() : nullptr});
        n += sh.rows * sh.cols;
      }
      {  // the plan does fold the selects for these tensors (one and two groups)
        device_adapter<float> dev(ts);
        for (auto gran : {lori::mask_granularity::model, lori::mask_granularity::module}) {
          lori::calibration_options opt;
          opt.granularity = gran;
          lori::cuda::calibration_plan<float> plan(dev.tensors, opt);
          CHECK(plan.fused_select());
        }
      }
      // (compute-sanitizer, quick(): model granularity, default capacity and, for equal
      // magnitudes, one short of enough)
      const std::vector<lori::index_t> caps = kind == 1   ? (quick() ? std::vector<lori::index_t>{-1, n - 1} : std::vector<lori::index_t>{-1, n, n - 1, 0})
                                              : quick() ? std::vector<lori::index_t>{-1}
                                                        : std::vector<lori::index_t>{-1, 0};
      for (auto gran : {lori::mask_granularity::model, lori::mask_granularity::module})
        for (auto sem : all_semantics)
          for (double s : {0.0, 0.5, 0.9, 1.0}) {
            if (quick() && (s != 0.9 || gran != lori::mask_granularity::model)) continue;
            for (lori::index_t cap : caps) compare_one(ts, s, gran, sem, cap);
          }
    }
  }
}

TEST_CASE("GPU calibration reports NaN/Inf with the tensor's name and index; checks its arguments") {
  std::vector<float> a(40, 0.5f), b(64, 0.25f);
  b[37] = std::numeric_limits<float>::quiet_NaN();
  std::vector<lori::calibration_tensor<float>> ts = {{"layers.0.self_attn.q_proj", lori::row_major_view<const float>(a.data(), 5, 8), nullptr},
                                                     {"layers.0.mlp.up_proj", lori::row_major_view<const float>(b.data(), 8, 8), nullptr}};
  device_adapter<float> dev(ts);
  for (double s : {0.5, 1.0}) {
    lori::calibration_options opt;
    opt.sparsity = s;
    lori::cuda::calibration_plan<float> plan(dev.tensors, opt);
    lori::cuda::device_buffer<std::byte> ws(static_cast<lori::index_t>(plan.workspace_bytes()));
    plan.run(ws.data(), ws.bytes(), nullptr);
    CHECK_THROWS_WITH_AS(plan.report(ws.data(), nullptr), doctest::Contains("layers.0.mlp.up_proj"), lori::error);
    plan.run(ws.data(), ws.bytes(), nullptr);
    CHECK_THROWS_WITH_AS(plan.report(ws.data(), nullptr), doctest::Contains("flat index 37"), lori::error);
    CHECK_THROWS_AS(plan.run(ws.data(), ws.bytes() - 1, nullptr), lori::error);
  }
  {  // +Inf in a shape read one thread per word (cols = 3), and a second, later NaN: the first is named
    std::vector<float> c(21, 0.125f);
    c[14] = std::numeric_limits<float>::infinity();
    c[20] = -std::numeric_limits<float>::quiet_NaN();
    std::vector<lori::calibration_tensor<float>> ts2 = {ts[0], {"layers.1.mlp.down_proj", lori::row_major_view<const float>(c.data(), 7, 3), nullptr}};
    device_adapter<float> dev2(ts2);
    lori::cuda::calibration_plan<float> plan(dev2.tensors, lori::calibration_options{});
    lori::cuda::device_buffer<std::byte> ws(static_cast<lori::index_t>(plan.workspace_bytes()));
    plan.run(ws.data(), ws.bytes(), nullptr);
    CHECK_THROWS_WITH_AS(plan.report(ws.data(), nullptr), doctest::Contains("'layers.1.mlp.down_proj' at (4, 2), flat index 14"), lori::error);
  }
  lori::calibration_options bad;
  bad.sparsity = 2.0;
  CHECK_THROWS_AS(lori::cuda::calibration_plan<float>(dev.tensors, bad), lori::error);
  CHECK_THROWS_AS(lori::cuda::calibration_plan<float>({}, lori::calibration_options{}), lori::error);
  auto wrong = dev.tensors;
  wrong[0].mask.cols = 9;
  CHECK_THROWS_AS(lori::cuda::calibration_plan<float>(wrong, lori::calibration_options{}), lori::error);
}
