// GPU projections: bit-identical to the CPU for every distribution and element type (float, double,
// bf16, fp16), for single matrices (aligned / unaligned / padded leading dimension / odd shapes) and for
// batches in one launch (random mixes and the full Llama-3-8B r = 32 set), plus error paths.
// Outputs are poisoned (0xff bytes) before every launch, so unwritten elements and writes into
// padding are caught. The CPU reference is lori::projection_values on the host (the scalar path of
// lori/random/projection.hpp, which lori_test_random checks against golden bits and the AVX2 path);
// this file stays Eigen-free.
#include <doctest/doctest.h>

#include "lori/core/float16.hpp"
#include "lori/cuda/device_buffer.cuh"
#include "lori/cuda/projection.cuh"
#include "lori/random/distributions.hpp"
#include "lori/random/stream.hpp"

#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {
using lori::index_t;
using lori::projection_spec;

const projection_spec kAll[] = {projection_spec::kaiming_uniform(), projection_spec::gaussian(),    projection_spec::gaussian(0.37),
                                projection_spec::rademacher(),      projection_spec::sparse(3.0),   projection_spec::sparse(1.0),
                                projection_spec::sparse(17.5),      projection_spec::gaussian_v2(), projection_spec::gaussian_v2(0.37)};

// The gaussian spec of format gk (gaussian or gaussian_v2); sigma 0: the default 1/sqrt(r).
projection_spec gaussian_spec(lori::distribution gk, double sigma = 0.0) {
  const std::optional<double> s = sigma == 0.0 ? std::nullopt : std::optional<double>(sigma);
  return gk == lori::distribution::gaussian_v2 ? projection_spec::gaussian_v2(s) : projection_spec::gaussian(s);
}

// Whether main word w of a gaussian of format gk fails the fast test (a slow element).
bool fails_fast(lori::distribution gk, std::uint32_t w) {
  if (gk == lori::distribution::gaussian_v2) {
    using Z = lori::detail::zig2048;
    return Z::fast_bits(w) >= Z::table()[Z::layer(w)].k;
  }
  using Z = lori::detail::zig256;
  return Z::fast_bits(w) >= Z::table()[Z::layer(w)].k;
}

std::mt19937_64 test_rng(std::uint64_t salt) { return std::mt19937_64(0x5eed0000ull + salt); }

// The CPU projection (rows x cols, row-major), element values as floats, computed on the host.
std::vector<float> cpu_projection(index_t rows, index_t cols, std::uint64_t seed, std::uint64_t stream, const projection_spec& spec) {
  const lori::projection_params p = lori::make_projection_params(spec, rows, cols);
  std::vector<float> a(static_cast<std::size_t>(rows * cols));
  for (index_t i = 0; i < rows; ++i) {
    for (index_t q = 0; q * 4 < cols; ++q) {
      const lori::float4_values v = lori::projection_values(p, seed, stream, i, q);
      for (int t = 0; t < 4 && q * 4 + t < cols; ++t) a[static_cast<std::size_t>(i * cols + q * 4 + t)] = v.v[t];
    }
  }
  return a;
}

// The CPU reference value of A(i, j), in the bit pattern of T.
template <class T>
std::uint64_t expected_bits(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return lori::float_bits(x);
  } else if constexpr (std::is_same_v<T, double>) {
    const double d = x;
    std::uint64_t b;
    std::memcpy(&b, &d, 8);
    return b;
  } else if constexpr (std::is_same_v<T, lori::bfloat16>) {
    return lori::float_to_bf16_bits(x);
  } else {
    return lori::float_to_half_bits(x);
  }
}

template <class T>
std::uint64_t bits_of(const T& v) {
  std::uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}

template <class T>
std::uint64_t poison_bits() {
  std::uint64_t b = 0;
  std::memset(&b, 0xff, sizeof(T));
  return b;
}

// Compares a downloaded rows x cols (leading dimension ld) region at `offset` of `host` with the CPU
// projection; padding columns [cols, ld) and everything outside must still be poison. Returns mismatches.
template <class T>
std::size_t compare(const std::vector<T>& host, index_t offset, index_t rows, index_t cols, index_t ld, std::uint64_t seed,
                    std::uint64_t stream, const projection_spec& spec) {
  const auto a = cpu_projection(rows, cols, seed, stream, spec);
  std::size_t bad = 0;
  for (index_t i = 0; i < rows; ++i) {
    for (index_t j = 0; j < ld; ++j) {
      const std::uint64_t got = bits_of(host[static_cast<std::size_t>(offset + i * ld + j)]);
      bad += got != (j < cols ? expected_bits<T>(a[static_cast<std::size_t>(i * cols + j)]) : poison_bits<T>());
    }
  }
  return bad;
}

template <class T>
void single_matrix_cases() {
  auto g = test_rng(sizeof(T));
  const index_t shapes[][2] = {{0, 0}, {0, 9}, {4, 0}, {1, 1}, {1, 3}, {3, 5}, {7, 13}, {17, 1001}, {32, 4096}, {5, 8200}, {300, 24}};
  for (const auto& sh : shapes) {
    for (const auto& spec : kAll) {
      // 0: packed (vector stores where k allows), 1: shifted by one element (element stores),
      // 2: odd padding of ld (element stores), 3: ld padded to a multiple of 8 plus 8 (vector stores + padding).
      for (int variant = 0; variant < 4; ++variant) {
        const index_t r = sh[0], k = sh[1];
        const index_t ld = variant == 2 ? k + 3 : (variant == 3 ? (k + 7) / 8 * 8 + 8 : k);
        const index_t offset = variant == 1 ? 1 : 0;
        const index_t total = offset + r * ld + 8;
        CAPTURE(r);
        CAPTURE(k);
        CAPTURE(variant);
        CAPTURE(static_cast<int>(spec.kind));
        CAPTURE(sizeof(T));
        lori::cuda::device_buffer<T> buf(total);
        buf.fill_bytes(0xff);
        const std::uint64_t seed = g(), stream = g();
        lori::cuda::generate_projection(lori::row_major_view<T>(buf.data() + offset, r, k, ld), seed, stream, spec);
        LORI_CUDA_CHECK(cudaDeviceSynchronize());
        const auto host = buf.download();
        CHECK(compare(host, offset, r, k, ld, seed, stream, spec) == 0);
        std::size_t outside = 0;  // nothing before the matrix or after it was touched
        for (index_t t = 0; t < offset; ++t) outside += bits_of(host[static_cast<std::size_t>(t)]) != poison_bits<T>();
        for (index_t t = offset + r * ld; t < total; ++t) outside += bits_of(host[static_cast<std::size_t>(t)]) != poison_bits<T>();
        CHECK(outside == 0);
      }
    }
  }
}

template <class T>
void batch_cases() {
  auto g = test_rng(100 + sizeof(T));
  // A random mix of shapes, distributions, alignments and paddings, including empty matrices.
  struct placed {
    index_t offset, rows, cols, ld;
    std::uint64_t seed, stream;
    projection_spec spec;
  };
  std::vector<placed> items;
  index_t cursor = 0;
  for (int t = 0; t < 60; ++t) {
    placed p;
    p.rows = static_cast<index_t>(g() % 40);
    p.cols = static_cast<index_t>(g() % 700);
    if (t % 7 == 0) p.rows = 0;
    p.ld = p.cols + ((g() % 3 == 0) ? static_cast<index_t>(g() % 9) : 0);
    p.offset = cursor + static_cast<index_t>(g() % 3);  // sometimes misaligned
    p.seed = g();
    p.stream = lori::stream_from_name("model.layers." + std::to_string(t) + ".mlp.up_proj");
    p.spec = kAll[g() % (sizeof(kAll) / sizeof(kAll[0]))];
    cursor = p.offset + p.rows * p.ld;
    items.push_back(p);
  }
  const index_t total = cursor + 16;
  lori::cuda::device_buffer<T> buf(total);
  std::vector<lori::cuda::projection_task<T>> tasks;
  for (const auto& p : items)
    tasks.push_back(lori::cuda::make_projection_task(buf.data() + p.offset, p.rows, p.cols, p.seed, p.stream, p.spec, p.ld));
  const std::size_t ws_bytes = lori::cuda::projection_batch_workspace_bytes(static_cast<index_t>(tasks.size()));
  lori::cuda::device_buffer<unsigned char> ws(static_cast<index_t>(ws_bytes));
  const auto plan = lori::cuda::prepare_projection_batch(tasks.data(), static_cast<index_t>(tasks.size()), ws.data(), ws_bytes);
  for (int rep = 0; rep < 2; ++rep) {  // the plan is reusable
    buf.fill_bytes(0xff);
    lori::cuda::generate_projection_batch(plan);
    LORI_CUDA_CHECK(cudaDeviceSynchronize());
    const auto host = buf.download();
    std::size_t bad = 0, touched_gaps = 0;
    index_t prev_end = 0;
    for (const auto& p : items) {
      bad += compare(host, p.offset, p.rows, p.cols, p.ld, p.seed, p.stream, p.spec);
      for (index_t t = prev_end; t < p.offset; ++t) touched_gaps += bits_of(host[static_cast<std::size_t>(t)]) != poison_bits<T>();
      prev_end = p.offset + p.rows * p.ld;
    }
    CHECK(bad == 0);
    CHECK(touched_gaps == 0);
  }
}
}  // namespace

TEST_CASE("single matrix: GPU == CPU bit for bit, float") { single_matrix_cases<float>(); }
TEST_CASE("single matrix: GPU == CPU bit for bit, double") { single_matrix_cases<double>(); }
TEST_CASE("single matrix: GPU == CPU bit for bit, bf16") { single_matrix_cases<lori::bfloat16>(); }
TEST_CASE("single matrix: GPU == CPU bit for bit, fp16") { single_matrix_cases<lori::half>(); }
TEST_CASE("batch in one launch: GPU == CPU bit for bit, float") { batch_cases<float>(); }
TEST_CASE("batch in one launch: GPU == CPU bit for bit, double") { batch_cases<double>(); }
TEST_CASE("batch in one launch: GPU == CPU bit for bit, bf16") { batch_cases<lori::bfloat16>(); }
TEST_CASE("batch in one launch: GPU == CPU bit for bit, fp16") { batch_cases<lori::half>(); }

TEST_CASE("Llama-3-8B r = 32: all 224 A's in one launch equal the CPU, per distribution") {
  struct mod {
    const char* name;
    index_t in;
  };
  const mod mods[] = {{"self_attn.q_proj", 4096}, {"self_attn.k_proj", 4096}, {"self_attn.v_proj", 4096}, {"self_attn.o_proj", 4096},
                      {"mlp.gate_proj", 4096},    {"mlp.up_proj", 4096},      {"mlp.down_proj", 14336}};
  const index_t r = 32;
  std::vector<std::pair<std::string, index_t>> names;
  index_t total = 0;
  for (int layer = 0; layer < 32; ++layer)
    for (const auto& m : mods) {
      names.emplace_back("model.layers." + std::to_string(layer) + "." + m.name, m.in);
      total += r * m.in;
    }
  CHECK(names.size() == 224);
  CHECK(total == 32 * 32 * (6 * 4096 + 14336));  // 29.36 M elements
  lori::cuda::device_buffer<float> buf(total);
  const std::size_t ws_bytes = lori::cuda::projection_batch_workspace_bytes(224);
  lori::cuda::device_buffer<unsigned char> ws(static_cast<index_t>(ws_bytes));
  for (const auto& spec : {projection_spec::kaiming_uniform(), projection_spec::gaussian(), projection_spec::gaussian_v2()}) {
    std::vector<lori::cuda::projection_task<float>> tasks;
    index_t off = 0;
    for (const auto& n : names) {
      tasks.push_back(lori::cuda::make_projection_task(buf.data() + off, r, n.second, 2026, lori::stream_from_name(n.first), spec));
      off += r * n.second;
    }
    buf.fill_bytes(0xff);
    lori::cuda::generate_projection_batch(tasks.data(), 224, ws.data(), ws_bytes);
    LORI_CUDA_CHECK(cudaDeviceSynchronize());
    const auto host = buf.download();
    std::size_t bad = 0;
    off = 0;
    for (const auto& n : names) {
      const auto a = cpu_projection(r, n.second, 2026, lori::stream_from_name(n.first), spec);
      for (std::size_t t = 0; t < a.size(); ++t) bad += lori::float_bits(host[static_cast<std::size_t>(off) + t]) != lori::float_bits(a[t]);
      off += r * n.second;
    }
    CHECK(bad == 0);
  }
}

namespace {
__global__ void elements_kernel(lori::projection_params p, std::uint64_t seed, std::uint64_t stream, const index_t* ij, float* out,
                                std::uint32_t* words, int n) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (t >= n) return;
  out[t] = lori::projection_element(p, seed, stream, ij[2 * t], ij[2 * t + 1]);
  const lori::counter_rng g(seed, stream);
  words[t] = g.word(static_cast<std::uint64_t>(ij[2 * t + 1]));  // counter_rng on the device
}
}  // namespace

TEST_CASE("projection_element and counter_rng in user kernels equal the host") {
  auto g = test_rng(7);
  const int n = 4096;
  for (const auto& spec : kAll) {
    const index_t r = 64, k = 100000;
    const auto p = lori::make_projection_params(spec, r, k);
    const std::uint64_t seed = g(), stream = g();
    std::vector<index_t> ij(2 * n);
    for (int t = 0; t < n; ++t) {
      ij[2 * t] = static_cast<index_t>(g() % r);
      ij[2 * t + 1] = static_cast<index_t>(g() % k);
    }
    lori::cuda::device_buffer<index_t> d_ij(ij);
    lori::cuda::device_buffer<float> d_out(n);
    lori::cuda::device_buffer<std::uint32_t> d_w(n);
    d_out.fill_bytes(0xff);
    elements_kernel<<<(n + 255) / 256, 256>>>(p, seed, stream, d_ij.data(), d_out.data(), d_w.data(), n);
    LORI_CUDA_CHECK_LAUNCH();
    const auto out = d_out.download();
    const auto w = d_w.download();
    std::size_t bad = 0;
    const lori::counter_rng hg(seed, stream);
    for (int t = 0; t < n; ++t) {
      bad += lori::float_bits(out[t]) != lori::float_bits(lori::projection_element(p, seed, stream, ij[2 * t], ij[2 * t + 1]));
      bad += w[t] != hg.word(static_cast<std::uint64_t>(ij[2 * t + 1]));
    }
    CHECK(bad == 0);
  }
}

namespace {
// The slow path of gaussian format spec.kind (sigma 1, seed 99, stream 7) on the device:
// 1. 4096 elements that all fail the ziggurat's fast test (chosen on the host; the first ones replaced
//    by `pinned`, known rare elements), through projection_element in a user kernel (the device
//    gaussian_slow against the host's): returns the device values (pinned first);
// 2. the generation kernels (deferred, block-compacted slow path) on a rows x cols matrix, as float and
//    bf16 (different unit sizes and list positions), against `a`, the CPU matrix (returned too).
struct slow_path_run {
  std::vector<float> device_values;
  std::vector<float> a;
};
slow_path_run slow_path_on_device(lori::distribution gk, std::uint64_t salt, const std::vector<std::pair<index_t, index_t>>& pinned, index_t rows,
                                  index_t cols) {
  auto g = test_rng(salt);
  const index_t r = 4096, k = 4096;
  const projection_spec spec = gaussian_spec(gk, 1.0);
  const auto p = lori::make_projection_params(spec, r, k);
  const std::uint64_t seed = 99, stream = 7;
  std::vector<index_t> ij;
  while (ij.size() < 2 * 4096) {
    const auto i = static_cast<index_t>(g() % r), j = static_cast<index_t>(g() % k);
    if (fails_fast(gk, lori::projection_block(seed, stream, i, j >> 2).v[j & 3])) {
      ij.push_back(i);
      ij.push_back(j);
    }
  }
  for (std::size_t t = 0; t < pinned.size(); ++t) {
    ij[2 * t] = pinned[t].first;
    ij[2 * t + 1] = pinned[t].second;
  }
  const int n = static_cast<int>(ij.size() / 2);
  lori::cuda::device_buffer<index_t> d_ij(ij);
  lori::cuda::device_buffer<float> d_out(n);
  lori::cuda::device_buffer<std::uint32_t> d_w(n);
  d_out.fill_bytes(0xff);
  elements_kernel<<<(n + 255) / 256, 256>>>(p, seed, stream, d_ij.data(), d_out.data(), d_w.data(), n);
  LORI_CUDA_CHECK_LAUNCH();
  slow_path_run run{d_out.download(), cpu_projection(rows, cols, seed, stream, spec)};
  std::size_t bad = 0;
  for (int t = 0; t < n; ++t)
    bad += lori::float_bits(run.device_values[t]) != lori::float_bits(lori::projection_element(p, seed, stream, ij[2 * t], ij[2 * t + 1]));
  CHECK(bad == 0);
  {
    lori::cuda::device_buffer<float> buf(rows * cols);
    buf.fill_bytes(0xff);
    lori::cuda::generate_projection(buf.as_matrix(rows, cols), seed, stream, spec);
    LORI_CUDA_CHECK(cudaDeviceSynchronize());
    const auto host = buf.download();
    std::size_t mism = 0;
    for (std::size_t t = 0; t < run.a.size(); ++t) mism += lori::float_bits(host[t]) != lori::float_bits(run.a[t]);
    CHECK(mism == 0);
  }
  {
    lori::cuda::device_buffer<lori::bfloat16> buf(rows * cols);
    buf.fill_bytes(0xff);
    lori::cuda::generate_projection(buf.as_matrix(rows, cols), seed, stream, spec);
    LORI_CUDA_CHECK(cudaDeviceSynchronize());
    const auto host = buf.download();
    std::size_t mism = 0;
    for (std::size_t t = 0; t < run.a.size(); ++t) mism += bits_of(host[t]) != lori::float_to_bf16_bits(run.a[t]);
    CHECK(mism == 0);
  }
  return run;
}
}  // namespace

TEST_CASE("gaussian slow path on the device: slow elements, tail, bounded-loop fallback") {
  // Known rare cases (lori_test_random pins their values): the fallback at (2552, 2193), a tail value at
  // (0, 1716); the matrix (rows 0..2552) holds both.
  const index_t cols = 2200;
  const auto run = slow_path_on_device(lori::distribution::gaussian, 8, {{2552, 2193}, {0, 1716}}, 2553, cols);
  CHECK(lori::float_bits(run.device_values[0]) == 0x3de1f7d4u);
  CHECK(lori::float_bits(run.device_values[1]) == 0xc073a583u);
  CHECK(lori::float_bits(run.a[static_cast<std::size_t>(2552 * cols + 2193)]) == 0x3de1f7d4u);
}

namespace {
// Philox blocks of A (rows x cols, gaussian of format gk) with at least `min_slow` elements inside the row
// that fail the ziggurat's fast test (the slow-path list entries of the kernel; >= 2: entries with two
// or more).
std::size_t slow_blocks(index_t rows, index_t cols, std::uint64_t seed, std::uint64_t stream, int min_slow, lori::distribution gk) {
  std::size_t n = 0;
  for (index_t i = 0; i < rows; ++i) {
    for (index_t q = 0; q * 4 < cols; ++q) {
      const lori::philox_block b = lori::projection_block(seed, stream, i, q);
      int slow = 0;
      for (int t = 0; t < 4 && q * 4 + t < cols; ++t) slow += fails_fast(gk, b.v[t]);
      n += slow >= min_slow;
    }
  }
  return n;
}

// Slow elements of A (rows x cols, gaussian of format gk) whose slow path needs more than one attempt
// (the kernel's thread loops over attempts): lori::detail::gaussian_slow_attempt run on the host.
std::size_t multi_attempt_elements(index_t rows, index_t cols, std::uint64_t seed, std::uint64_t stream, lori::distribution gk) {
  const lori::counter_rng g(seed, stream);
  std::size_t n = 0;
  for (index_t i = 0; i < rows; ++i) {
    for (index_t j = 0; j < cols; ++j) {
      const std::uint32_t w = lori::projection_block(seed, stream, i, j >> 2).v[j & 3];
      if (!fails_fast(gk, w)) continue;
      const auto r32 = static_cast<std::uint32_t>(i);
      const auto j64 = static_cast<std::uint64_t>(j);
      const lori::philox_block b0 = lori::detail::zig_slow_block(g, r32, j64, 0), b1 = lori::detail::zig_slow_block(g, r32, j64, 1);
      auto word = [&](int k) { return k < 4 ? b0.v[k] : b1.v[k - 4]; };
      lori::detail::zig_slow_state st{w, 0};
      float out = 0.0f;
      n += gk == lori::distribution::gaussian_v2 ? !lori::detail::gaussian_slow_attempt<lori::detail::zig2048>(st, 1.0f, word, out)
                                                 : !lori::detail::gaussian_slow_attempt<lori::detail::zig256>(st, 1.0f, word, out);
    }
  }
  return n;
}

// A batch of gaussian tasks (odd shapes, paddings, several sigmas) interleaved with other laws, generated
// with forced grids: with 1 or 2 blocks every warp walks long ranges across many tasks, so its slow-path
// list is finished by the block many times inside one piece (block drains), entries with several slow
// elements occur, pieces end with partial steps and partial warps, and the block's layer table is
// rescaled for each new sigma. Each launch: {blocks (-1: the default grid), drain_period (windows
// between block drains: 0 the library's; 1 a drain after every window; 3; kNever: no block drain before
// the end of a piece, so a warp's list fills past capacity - 32 and the warp finishes it alone)}.
// Returns the number of mismatches (and of touched gaps).
constexpr unsigned kNever = 1u << 30;
struct forced_launch {
  index_t blocks;
  unsigned drain_period;
  unsigned rows = 1;  // 0: gaussian tasks never take the row path (detail::launch_projection_batch)
};

// aligned: gaussian tasks of the row path's shapes (cols a multiple of 2048, ld a multiple of 8, rows
// 16-byte aligned: detail::gaussian_row_path for float, double, bf16 and fp16), every 7th task (and
// the other laws) misaligned by one element (the general path), in the same batch.
// gk: the gaussian format of the gaussian tasks (every 5th task: any law of kAll).
template <class T, class C = lori::cuda::detail_proj::gaussian_cfg_lib<T>>
std::size_t forced_grid_batch(std::uint64_t salt, int ntasks, index_t max_rows, index_t max_cols, const std::vector<forced_launch>& launches,
                              std::size_t* slow_entries = nullptr, std::size_t* requeued = nullptr, std::size_t* resumed = nullptr,
                              bool aligned = false, lori::distribution gk = lori::distribution::gaussian) {
  auto g = test_rng(salt);
  struct placed {
    index_t offset, rows, cols, ld;
    std::uint64_t seed, stream;
    projection_spec spec;
  };
  std::vector<placed> items;
  index_t cursor = 0;
  const double sigmas[] = {0.0, 1.0, 0.37, 2.5e-3};  // 0: the default 1/sqrt(r)
  for (int t = 0; t < ntasks; ++t) {
    placed p;
    p.rows = 1 + static_cast<index_t>(g() % static_cast<std::uint64_t>(max_rows));
    if (aligned) {
      p.cols = 2048 * (1 + static_cast<index_t>(g() % static_cast<std::uint64_t>(max_cols / 2048)));
      p.ld = p.cols + 8 * static_cast<index_t>(g() % 3);
      p.offset = (cursor + 7) / 8 * 8 + (t % 7 == 3 ? 1 : 0);
    } else {
      p.cols = 1 + static_cast<index_t>(g() % static_cast<std::uint64_t>(max_cols));
      p.ld = p.cols + ((g() % 3 == 0) ? static_cast<index_t>(g() % 9) : 0);
      p.offset = cursor + static_cast<index_t>(g() % 3);
    }
    p.seed = g();
    p.stream = g();
    const double s = sigmas[g() % 4];
    p.spec = t % 5 == 4 ? kAll[g() % (sizeof(kAll) / sizeof(kAll[0]))] : gaussian_spec(gk, s);
    cursor = p.offset + p.rows * p.ld;
    items.push_back(p);
    if (lori::is_gaussian(p.spec.kind)) {
      if (slow_entries) *slow_entries += slow_blocks(p.rows, p.cols, p.seed, p.stream, 1, p.spec.kind);
      if (requeued) *requeued += slow_blocks(p.rows, p.cols, p.seed, p.stream, 2, p.spec.kind);
      if (resumed) *resumed += multi_attempt_elements(p.rows, p.cols, p.seed, p.stream, p.spec.kind);
    }
  }
  lori::cuda::device_buffer<T> buf(cursor + 16);  // cudaMalloc: 256-byte aligned base
  std::vector<lori::cuda::projection_task<T>> tasks;
  for (const auto& p : items)
    tasks.push_back(lori::cuda::make_projection_task(buf.data() + p.offset, p.rows, p.cols, p.seed, p.stream, p.spec, p.ld));
  const std::size_t ws_bytes = lori::cuda::projection_batch_workspace_bytes(static_cast<index_t>(tasks.size()));
  lori::cuda::device_buffer<unsigned char> ws(static_cast<index_t>(ws_bytes));
  const auto plan = lori::cuda::prepare_projection_batch(tasks.data(), static_cast<index_t>(tasks.size()), ws.data(), ws_bytes);
  std::size_t bad = 0;
  for (const forced_launch& l : launches) {
    CAPTURE(l.blocks);
    CAPTURE(l.drain_period);
    CAPTURE(l.rows);
    buf.fill_bytes(0xff);
    lori::cuda::detail_proj::launch_projection_batch<T, C>(plan, l.blocks > 0 ? l.blocks : plan.blocks, nullptr, l.drain_period, l.rows);
    LORI_CUDA_CHECK(cudaDeviceSynchronize());
    const auto host = buf.download();
    index_t prev_end = 0;
    for (const auto& p : items) {
      bad += compare(host, p.offset, p.rows, p.cols, p.ld, p.seed, p.stream, p.spec);
      for (index_t t = prev_end; t < p.offset; ++t) bad += bits_of(host[static_cast<std::size_t>(t)]) != poison_bits<T>();
      prev_end = p.offset + p.rows * p.ld;
    }
  }
  return bad;
}
}  // namespace

TEST_CASE("gaussian slow-path lists: forced small grids, many tasks and sigmas, float and bf16") {
  // 1 block: each warp sees every task (~100 slow entries per warp in the large ones: several block
  // drains inside a piece, or with kNever warp drains); 2 and 7 blocks: ranges start and end inside
  // tasks; -1: the default grid.
  const std::vector<forced_launch> grids = {{1, 0}, {2, 0}, {7, 0}, {-1, 0}, {1, 1}, {2, 3}, {3, kNever}, {1, kNever}};
  std::size_t entries = 0, requeued = 0, resumed = 0;
  CHECK(forced_grid_batch<float>(200, 40, 70, 3000, grids, &entries, &requeued, &resumed) == 0);
  CHECK(forced_grid_batch<lori::bfloat16>(201, 40, 70, 3000, grids) == 0);
  // The situations were there: many entries (> 256 per warp of the single block, ~100 in a large
  // task: with kNever its list fills past capacity - 32 there), entries with a second slow element,
  // and elements that need a second attempt.
  CHECK(entries > 8 * 64 * 4);
  CHECK(requeued > 50);
  CHECK(resumed > 20);
}

TEST_CASE("gaussian slow-path lists: small batch on 1 and 2 blocks (racecheck subset)") {
  CHECK(forced_grid_batch<float>(202, 6, 40, 1500, {{1, 0}, {2, 1}, {1, kNever}}) == 0);
  CHECK(forced_grid_batch<lori::half>(203, 6, 40, 1500, {{1, 0}, {2, 1}, {1, kNever}}) == 0);
}

TEST_CASE("gaussian row path: aligned tasks on forced grids, every element type") {
  // Rows of 2048..6144 elements (the row path: aligned windows of 256 units, first and last windows
  // masked, several rows per piece), mixed with misaligned tasks
  // and other laws (the general path) in one batch; 1 block: each warp walks ~100 windows per task
  // and block drains run mid-piece; 2, 3, 5 blocks: pieces start and end inside rows; drain periods
  // 1, 3 and kNever (warp drains); rows = 0: the same batch through the general path only.
  const std::vector<forced_launch> grids = {{1, 0}, {2, 0}, {3, 3}, {5, 1}, {-1, 0}, {1, kNever}, {1, 0, 0}, {-1, 0, 0}, {2, kNever, 0}};
  std::size_t entries = 0, requeued = 0, resumed = 0;
  CHECK(forced_grid_batch<float>(210, 24, 9, 6144, grids, &entries, &requeued, &resumed, true) == 0);
  CHECK(entries > 8 * 64 * 4);
  CHECK(requeued > 20);
  CHECK(resumed > 10);
  CHECK(forced_grid_batch<lori::bfloat16>(211, 24, 9, 6144, grids, nullptr, nullptr, nullptr, true) == 0);
  CHECK(forced_grid_batch<double>(212, 12, 7, 4096, {{1, 0}, {3, 3}, {-1, 0}, {1, kNever}}, nullptr, nullptr, nullptr, true) == 0);
  CHECK(forced_grid_batch<lori::half>(213, 12, 7, 4096, {{1, 0}, {3, 3}, {-1, 0}, {1, kNever}}, nullptr, nullptr, nullptr, true) == 0);
}

TEST_CASE("gaussian row path: small aligned batch on 1 and 2 blocks (racecheck subset)") {
  CHECK(forced_grid_batch<float>(214, 5, 3, 4096, {{1, 0}, {2, 1}, {1, kNever}}, nullptr, nullptr, nullptr, true) == 0);
  CHECK(forced_grid_batch<lori::bfloat16>(215, 5, 3, 4096, {{1, 0}, {2, 1}, {1, kNever}}, nullptr, nullptr, nullptr, true) == 0);
}

// The two-round block drain (gaussian_cfg Split = 1, detail::gaussian_block_drain_split) with one pool
// of lists (the library's float and double use two), measured against the one-round drain: the same
// forced-grid batches.
using split_cfg = lori::cuda::detail_proj::gaussian_cfg<1, 4, 8, 1>;
TEST_CASE("gaussian slow-path lists, two-round drains: forced grids, general and row path, every element type") {
  const std::vector<forced_launch> grids = {{1, 0}, {2, 0}, {7, 0}, {-1, 0}, {1, 1}, {2, 3}, {3, kNever}, {1, kNever}, {1, 0, 0}};
  std::size_t entries = 0, requeued = 0, resumed = 0;
  CHECK(forced_grid_batch<float, split_cfg>(220, 40, 70, 3000, grids, &entries, &requeued, &resumed) == 0);
  CHECK(entries > 8 * 64 * 4);
  CHECK(requeued > 50);
  CHECK(resumed > 20);
  CHECK(forced_grid_batch<lori::bfloat16, split_cfg>(221, 40, 70, 3000, grids) == 0);
  CHECK(forced_grid_batch<float, split_cfg>(222, 24, 9, 6144, grids, nullptr, nullptr, nullptr, true) == 0);
  CHECK(forced_grid_batch<lori::half, split_cfg>(223, 12, 7, 4096, {{1, 0}, {3, 3}, {-1, 0}}, nullptr, nullptr, nullptr, true) == 0);
  CHECK(forced_grid_batch<double, split_cfg>(224, 12, 7, 4096, {{1, 0}, {3, 3}, {-1, 0}}, nullptr, nullptr, nullptr, true) == 0);
}

// Two pools of lists used in turn (gaussian_cfg Buffers = 2: no barrier after a drain inside a piece;
// 64-entry lists; the library's for float and double), here for bf16/fp16 in one round (a window
// appends up to 64 entries, so a warp with any entry after a window drains its own list: warp drains
// all the time) and for every element type in two rounds with drains every 4 windows.
using two_pools_cfg = lori::cuda::detail_proj::gaussian_cfg<1, 4, 16, 0, 2>;
using two_pools_split_cfg = lori::cuda::detail_proj::gaussian_cfg<1, 4, 4, 1, 2>;
TEST_CASE("gaussian slow-path lists, two pools: forced grids, general and row path, every element type") {
  const std::vector<forced_launch> grids = {{1, 0}, {2, 0}, {7, 0}, {-1, 0}, {1, 1}, {2, 3}, {3, kNever}, {1, kNever}, {1, 0, 0}, {-1, 1, 0}};
  CHECK(forced_grid_batch<lori::bfloat16, two_pools_cfg>(230, 40, 70, 3000, grids) == 0);
  CHECK(forced_grid_batch<lori::half, two_pools_cfg>(231, 12, 7, 4096, grids, nullptr, nullptr, nullptr, true) == 0);
  std::size_t entries = 0, requeued = 0, resumed = 0;
  CHECK(forced_grid_batch<float, two_pools_split_cfg>(232, 40, 70, 3000, grids, &entries, &requeued, &resumed) == 0);
  CHECK(entries > 8 * 64 * 4);
  CHECK(requeued > 50);
  CHECK(resumed > 20);
  CHECK(forced_grid_batch<float, two_pools_split_cfg>(233, 24, 9, 6144, grids, nullptr, nullptr, nullptr, true) == 0);
  CHECK(forced_grid_batch<double, two_pools_split_cfg>(234, 12, 7, 4096, grids, nullptr, nullptr, nullptr, true) == 0);
  CHECK(forced_grid_batch<lori::bfloat16, two_pools_split_cfg>(235, 24, 9, 6144, grids, nullptr, nullptr, nullptr, true) == 0);
}

TEST_CASE("gaussian slow-path lists, two pools: small batch on 1 and 2 blocks (racecheck subset)") {
  CHECK(forced_grid_batch<lori::half, two_pools_cfg>(236, 6, 40, 1500, {{1, 0}, {2, 1}, {1, kNever}}) == 0);
  CHECK(forced_grid_batch<float, two_pools_split_cfg>(237, 5, 3, 4096, {{1, 0}, {2, 1}}, nullptr, nullptr, nullptr, true) == 0);
}

TEST_CASE("gaussian slow-path lists, two-round drains: small batch on 1 and 2 blocks (racecheck subset)") {
  CHECK(forced_grid_batch<float, split_cfg>(225, 6, 40, 1500, {{1, 0}, {2, 1}}) == 0);
  CHECK(forced_grid_batch<lori::bfloat16, split_cfg>(226, 5, 3, 4096, {{1, 0}, {2, 1}}, nullptr, nullptr, nullptr, true) == 0);
}

namespace {
// One gaussian matrix (rows x cols, sigma, format gk) generated on forced grids {blocks (0: the default
// grid), drain period (0: the library's)}, float and (bf16 = true) bf16, each compared bit for bit with
// the CPU (outputs poisoned first).
void forced_single_matrix(index_t rows, index_t cols, std::uint64_t seed, std::uint64_t stream, double sigma,
                          const std::vector<std::pair<index_t, unsigned>>& launches, bool bf16,
                          lori::distribution gk = lori::distribution::gaussian) {
  const projection_spec spec = gaussian_spec(gk, sigma);
  const auto a = cpu_projection(rows, cols, seed, stream, spec);
  for (const auto& l : launches) {
    const index_t blocks = l.first;
    const unsigned drain = l.second;
    CAPTURE(blocks);
    CAPTURE(drain);
    lori::cuda::device_buffer<float> buf(rows * cols);
    buf.fill_bytes(0xff);
    lori::cuda::detail_proj::generate_projection_blocks(buf.as_matrix(rows, cols), seed, stream, spec, blocks, nullptr, drain);
    LORI_CUDA_CHECK(cudaDeviceSynchronize());
    const auto host = buf.download();
    std::size_t mism = 0;
    for (std::size_t t = 0; t < a.size(); ++t) mism += lori::float_bits(host[t]) != lori::float_bits(a[t]);
    CHECK(mism == 0);
    if (!bf16) continue;
    lori::cuda::device_buffer<lori::bfloat16> hb(rows * cols);
    hb.fill_bytes(0xff);
    lori::cuda::detail_proj::generate_projection_blocks(hb.as_matrix(rows, cols), seed, stream, spec, blocks, nullptr, drain);
    LORI_CUDA_CHECK(cudaDeviceSynchronize());
    const auto hhost = hb.download();
    mism = 0;
    for (std::size_t t = 0; t < a.size(); ++t) mism += hhost[t].bits != lori::float_to_bf16_bits(a[t]);
    CHECK(mism == 0);
  }
}
}  // namespace

TEST_CASE("gaussian row path: one block walks a 640 x 6144 matrix (many block and warp drains mid-piece), float and bf16") {
  // ~59 K slow entries (~7.4 K per warp with one block: ~480 block drains inside the piece, or with
  // kNever ~75 warp drains of a full list); 3 blocks: pieces start and end inside rows; 0: the
  // default grid; drain period 1: a block drain after every window.
  forced_single_matrix(640, 6144, 4242, 17, 0.5, {{1, 0u}, {3, 0u}, {0, 0u}, {1, kNever}, {2, 1u}}, true);
}

namespace {
// A rows x cols gaussian matrix of sigma through generate_projection (bf16/fp16 take the row path, with
// the hardware conversion, for 1e-28 <= sigma <= 1e37), compared bit for bit with the CPU.
template <class T>
std::size_t extreme_sigma_mismatches(index_t rows, index_t cols, double sigma, std::uint64_t seed, lori::distribution gk = lori::distribution::gaussian) {
  const auto a = cpu_projection(rows, cols, seed, 5, gaussian_spec(gk, sigma));
  lori::cuda::device_buffer<T> buf(rows * cols);
  buf.fill_bytes(0xff);
  lori::cuda::generate_projection(buf.as_matrix(rows, cols), seed, 5, gaussian_spec(gk, sigma));
  LORI_CUDA_CHECK(cudaDeviceSynchronize());
  const auto host = buf.download();
  std::size_t bad = 0;
  for (std::size_t t = 0; t < a.size(); ++t) bad += bits_of(host[t]) != expected_bits<T>(a[t]);
  return bad;
}
}  // namespace

TEST_CASE("gaussian row path, bf16/fp16: hardware rounding equals the CPU's at extreme sigmas") {
  // fp16: sigma 1e-4 and 1e-6 (most values fp16 subnormals or zero), 3e4 (3% beyond 65504: infinities);
  // bf16: sigma 1e-27 and 5e36 (inside the row path's range), 2e-29 (the general path).
  for (const double sigma : {1e-4, 1e-6, 3e4, 0.37}) {
    CAPTURE(sigma);
    CHECK(extreme_sigma_mismatches<lori::half>(8, 4096, sigma, 31) == 0);
  }
  for (const double sigma : {1e-27, 5e36, 2e-29, 0.37}) {
    CAPTURE(sigma);
    CHECK(extreme_sigma_mismatches<lori::bfloat16>(8, 4096, sigma, 32) == 0);
  }
  // gaussian_v2 (8 W_L sigma on the fast path, sigma <= 1e36; values from 2^-20 W_L sigma, W_L >= 0.107).
  for (const double sigma : {1e-4, 1e-6, 3e4, 0.37}) {
    CAPTURE(sigma);
    CHECK(extreme_sigma_mismatches<lori::half>(8, 4096, sigma, 33, lori::distribution::gaussian_v2) == 0);
  }
  for (const double sigma : {1e-27, 1e36, 2e-29, 0.37}) {
    CAPTURE(sigma);
    CHECK(extreme_sigma_mismatches<lori::bfloat16>(8, 4096, sigma, 34, lori::distribution::gaussian_v2) == 0);
    CHECK(extreme_sigma_mismatches<float>(8, 4096, sigma, 35, lori::distribution::gaussian_v2) == 0);
  }
}

TEST_CASE("single matrix on forced grids: one block walks the whole matrix (fallback element included)") {
  // 2553 x 2200 holds the bounded loop's fallback element (2552, 2193) of seed 99 / stream 7.
  forced_single_matrix(2553, 2200, 99, 7, 1.0, {{1, 0u}, {3, 0u}, {0, 0u}, {1, kNever}, {3, 1u}}, false);
}

// gaussian_v2 (lori::detail::zig2048: its own word layout and tables, 0.23% slow elements) through the
// same forced grids, configurations and paths as the 256-layer format above. Its slow entries are a
// sixth as many, so the situations the lists must handle are counted again (thresholds below the host
// counts for these salts).
TEST_CASE("gaussian_v2 slow path on the device: slow elements, tail") {
  // A tail value (lori_test_random pins it) at (8, 2436); the matrix (general path: 2440 columns) holds it.
  const index_t cols = 2440;
  const auto run = slow_path_on_device(lori::distribution::gaussian_v2, 9, {{8, 2436}}, 9, cols);
  CHECK(lori::float_bits(run.device_values[0]) == 0x40938abcu);
  CHECK(lori::float_bits(run.a[static_cast<std::size_t>(8 * cols + 2436)]) == 0x40938abcu);
}

TEST_CASE("gaussian_v2 slow-path lists: forced grids, general and row path, every element type and configuration") {
  constexpr auto v2 = lori::distribution::gaussian_v2;
  const std::vector<forced_launch> grids = {{1, 0}, {2, 0}, {7, 0}, {-1, 0}, {1, 1}, {2, 3}, {3, kNever}, {1, kNever}, {1, 0, 0}};
  std::size_t entries = 0, requeued = 0, resumed = 0;
  CHECK(forced_grid_batch<float>(240, 40, 70, 3000, grids, &entries, &requeued, &resumed, false, v2) == 0);
  CHECK(forced_grid_batch<lori::bfloat16>(241, 40, 70, 3000, grids, nullptr, nullptr, nullptr, false, v2) == 0);
  // (host counts for salt 240: 3716 entries, 11 with two slow elements, 3 elements with a second attempt)
  CHECK(entries > 8 * 64 * 4);
  CHECK(requeued > 5);
  CHECK(resumed > 0);
  std::size_t row_entries = 0;
  CHECK(forced_grid_batch<float>(242, 24, 9, 6144, grids, &row_entries, nullptr, nullptr, true, v2) == 0);
  CHECK(row_entries > 500);  // (897)
  CHECK(forced_grid_batch<lori::bfloat16>(243, 24, 9, 6144, grids, nullptr, nullptr, nullptr, true, v2) == 0);
  CHECK(forced_grid_batch<double>(244, 12, 7, 4096, {{1, 0}, {3, 3}, {-1, 0}, {1, kNever}}, nullptr, nullptr, nullptr, true, v2) == 0);
  CHECK(forced_grid_batch<lori::half>(245, 12, 7, 4096, {{1, 0}, {3, 3}, {-1, 0}, {1, kNever}}, nullptr, nullptr, nullptr, true, v2) == 0);
  CHECK(forced_grid_batch<float, split_cfg>(246, 40, 70, 3000, grids, nullptr, nullptr, nullptr, false, v2) == 0);
  CHECK(forced_grid_batch<float, two_pools_split_cfg>(247, 24, 9, 6144, grids, nullptr, nullptr, nullptr, true, v2) == 0);
  CHECK(forced_grid_batch<lori::bfloat16, two_pools_cfg>(248, 40, 70, 3000, grids, nullptr, nullptr, nullptr, false, v2) == 0);
}

TEST_CASE("gaussian slow-path lists, gaussian_v2: small batch on 1 and 2 blocks (racecheck subset)") {
  constexpr auto v2 = lori::distribution::gaussian_v2;
  CHECK(forced_grid_batch<float>(249, 6, 40, 1500, {{1, 0}, {2, 1}, {1, kNever}}, nullptr, nullptr, nullptr, false, v2) == 0);
  CHECK(forced_grid_batch<lori::bfloat16>(250, 5, 3, 4096, {{1, 0}, {2, 1}, {1, kNever}}, nullptr, nullptr, nullptr, true, v2) == 0);
}

TEST_CASE("gaussian_v2 row path: one block walks a 640 x 6144 matrix, float and bf16") {
  forced_single_matrix(640, 6144, 4243, 18, 0.5, {{1, 0u}, {3, 0u}, {0, 0u}, {1, kNever}, {2, 1u}}, true, lori::distribution::gaussian_v2);
}

TEST_CASE("GPU projection errors are lori::error") {
  lori::cuda::device_buffer<float> buf(64);
  CHECK_THROWS_AS(lori::cuda::make_projection_task<float>(nullptr, 2, 2, 1, 2, projection_spec::gaussian()), lori::error);
  CHECK_THROWS_AS(lori::cuda::make_projection_task(buf.data(), -1, 2, 1, 2, projection_spec::gaussian()), lori::error);
  CHECK_THROWS_AS(lori::cuda::make_projection_task(buf.data(), 2, 8, 1, 2, projection_spec::gaussian(), 4), lori::error);  // ld < cols
  CHECK_THROWS_AS(lori::cuda::make_projection_task(buf.data(), 2, 8, 1, 2, projection_spec::sparse(0.5)), lori::error);
  CHECK_THROWS_AS(lori::cuda::make_projection_task(buf.data(), 2, 8, 1, 2, projection_spec::gaussian(-1.0)), lori::error);
  // Gaussians: rows <= 2^30 (the slow path's counter layout).
  CHECK_THROWS_AS(lori::cuda::make_projection_task(buf.data(), (index_t{1} << 30) + 1, 8, 1, 2, projection_spec::gaussian()), lori::error);
  CHECK_THROWS_AS(lori::cuda::make_projection_task(buf.data(), (index_t{1} << 30) + 1, 8, 1, 2, projection_spec::gaussian_v2()), lori::error);
  CHECK_THROWS_AS(lori::cuda::make_projection_task(buf.data(), 2, 8, 1, 2, projection_spec::gaussian_v2(2e36)), lori::error);
  CHECK_THROWS_AS(lori::cuda::make_projection_task(buf.data(), 2, 8, 1, 2, projection_spec::gaussian().orthonormalized()), lori::error);
  CHECK_THROWS_AS(lori::cuda::generate_projection(buf.as_matrix(8, 8), 1, 2, projection_spec::sparse(0.0)), lori::error);
  // Workspace checks.
  auto task = lori::cuda::make_projection_task(buf.data(), 8, 8, 1, 2, projection_spec::rademacher());
  lori::cuda::device_buffer<unsigned char> ws(static_cast<index_t>(lori::cuda::projection_batch_workspace_bytes(1)));
  CHECK_THROWS_AS(lori::cuda::generate_projection_batch(&task, 1, nullptr, ws.bytes()), lori::error);
  CHECK_THROWS_AS(lori::cuda::generate_projection_batch(&task, 1, ws.data(), ws.bytes() - 1), lori::error);
  CHECK_THROWS_AS(lori::cuda::generate_projection_batch<float>(nullptr, 1, ws.data(), ws.bytes()), lori::error);
  CHECK_THROWS_AS(lori::cuda::projection_batch_workspace_bytes(-1), lori::error);
  // A hand-made task with unresolved params is rejected.
  lori::cuda::projection_task<float> raw;
  raw.out = buf.data();
  raw.rows = raw.cols = raw.ld = 8;
  CHECK_THROWS_AS(lori::cuda::generate_projection_batch(&raw, 1, ws.data(), ws.bytes()), lori::error);
  // ... and so are an unknown distribution and a gaussian_v2 scale beyond 1e36.
  raw.params.scale = 1.0f;
  raw.params.kind = static_cast<lori::distribution>(5);
  CHECK_THROWS_AS(lori::cuda::generate_projection_batch(&raw, 1, ws.data(), ws.bytes()), lori::error);
  raw.params.kind = lori::distribution::gaussian_v2;
  raw.params.scale = 2e36f;
  CHECK_THROWS_AS(lori::cuda::generate_projection_batch(&raw, 1, ws.data(), ws.bytes()), lori::error);
  raw.params.scale = 1e36f;
  CHECK_NOTHROW(lori::cuda::generate_projection_batch(&raw, 1, ws.data(), ws.bytes()));
  // An empty batch is a no-op.
  CHECK_NOTHROW(lori::cuda::generate_projection_batch<float>(nullptr, 0, nullptr, 0));
}
