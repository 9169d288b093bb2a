// Golden bit patterns of lori's projections. Computed once (generic path, -O2, x86-64 baseline) and
// frozen (the gaussian values since the switch from Box-Muller to the 256-layer ziggurat, the
// gaussian_v2 values since that format's introduction): A must be the same function of (seed, stream, shape, spec) forever, on every compiler and
// flag set. This file is also compiled into lori_test_random_fma with -O3 -march=native
// -ffp-contract=fast, where any multiply-add that a compiler could contract into an fma (changing
// rounding) would show up as a mismatch - the host-side half of the CPU == GPU bit-identity argument.
#include <doctest/doctest.h>

#include "lori/core/float16.hpp"
#include "lori/random/projection.hpp"
#include "lori/random/stream.hpp"

#include <cstdint>
#include <vector>

namespace {
std::uint64_t hash_bits(const float* p, lori::index_t n) {
  std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the little-endian bytes of the float bits
  for (lori::index_t i = 0; i < n; ++i) {
    const std::uint32_t b = lori::float_bits(p[i]);
    for (int k = 0; k < 4; ++k) {
      h ^= (b >> (8 * k)) & 0xffu;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

const lori::projection_spec kSpecs[] = {lori::projection_spec::kaiming_uniform(), lori::projection_spec::gaussian(),
                                        lori::projection_spec::rademacher(),      lori::projection_spec::sparse(3.0),
                                        lori::projection_spec::gaussian(2.5),     lori::projection_spec::sparse(1.0),
                                        lori::projection_spec::sparse(64.0),      lori::projection_spec::gaussian_v2(),
                                        lori::projection_spec::gaussian_v2(2.5)};
}  // namespace

TEST_CASE("projection elements match the frozen golden bit patterns") {
  const std::uint64_t seed = 0x0123456789abcdefull;
  const std::uint64_t stream = lori::stream_from_name("model.layers.3.self_attn.q_proj");
  const lori::index_t pos[16][2] = {{0, 0}, {0, 1}, {0, 2}, {0, 3}, {0, 4},    {0, 5},    {0, 6},    {0, 7},
                                    {1, 0}, {1, 1}, {1, 2}, {1, 3}, {5, 4093}, {5, 4094}, {7, 4095}, {7, 2048}};
  const std::uint32_t golden[6][16] = {
      {0x3c4aa7d9u, 0xb93359c0u, 0x3bcb8512u, 0xbb35e77cu, 0x3b3fd32cu, 0x3c35e0ffu, 0x3c09abbbu, 0x3b9e3236u, 0x392bd740u, 0x3b3cb08cu,
       0x3a1845b0u, 0x3c0480bdu, 0x3c41e2c9u, 0xbc393c6bu, 0xbbafa216u, 0x3ab1bb88u},
      {0xbef50752u, 0x3f74a32eu, 0xbe69cd4fu, 0x3f23c547u, 0xbdd4e011u, 0xbeb4317eu, 0xbed6318cu, 0xbd9f9027u, 0xbc2b82e8u, 0xbcc83394u,
       0xbce3970cu, 0xbe930b1fu, 0xbf5d113bu, 0x3e517fd1u, 0x3f595ba0u, 0xbd517b88u},
      {0xbc800000u, 0x3c800000u, 0xbc800000u, 0x3c800000u, 0xbc800000u, 0xbc800000u, 0xbc800000u, 0xbc800000u, 0xbc800000u, 0xbc800000u,
       0xbc800000u, 0xbc800000u, 0xbc800000u, 0x3c800000u, 0x3c800000u, 0xbc800000u},
      {0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u,
       0x00000000u, 0x00000000u, 0x00000000u, 0x3cddb3d7u, 0xbcddb3d7u, 0x00000000u},
      // gaussian_v2 (sigma 1/sqrt(8)), gaussian_v2(2.5)
      {0xbe3d3f18u, 0x3f2f4f37u, 0xbd1c4febu, 0x3e19dd77u, 0xbe653a55u, 0xbcae7fa5u, 0xbe54d55fu, 0xbeab81bau, 0xbd6a62edu, 0xbe04e63du,
       0xbcd16f3cu, 0xbc51a0a0u, 0xbd810288u, 0x3d3a73e3u, 0x3e9a738eu, 0xbe3f9178u},
      {0xbfa74597u, 0x409af3ffu, 0xbe8a2969u, 0x3f87ffb2u, 0xbfca9c57u, 0xbe1a3c88u, 0xbfbc1eb8u, 0xc017978du, 0xbecf2b99u, 0xbf6aef64u,
       0xbe391d9eu, 0xbdb94946u, 0xbee40f36u, 0x3ea4cd6du, 0x4008845cu, 0xbfa952f2u},
  };
  const int spec_of_row[6] = {0, 1, 2, 3, 7, 8};
  for (int d = 0; d < 6; ++d) {
    CAPTURE(d);
    const auto& spec = kSpecs[spec_of_row[d]];
    const auto a = lori::projection_matrix<float>(8, 4096, seed, stream, spec);
    const auto params = lori::make_projection_params(spec, 8, 4096);
    for (int t = 0; t < 16; ++t) {
      CAPTURE(t);
      CHECK(lori::float_bits(a(pos[t][0], pos[t][1])) == golden[d][t]);
      CHECK(lori::float_bits(lori::projection_element(params, seed, stream, pos[t][0], pos[t][1])) == golden[d][t]);
    }
  }
}

TEST_CASE("whole-matrix golden hashes, through the dispatched and the generic path") {
  const std::uint64_t golden[9] = {0x5d07a41b32caeb7aull, 0xd8464a101a8e694eull, 0xcd497113a1d9f330ull, 0x733c70a43da3c381ull,
                                   0x5466440dc9ab5aabull, 0xcd497113a1d9f330ull, 0xdbfe66cfe555f03dull, 0xc993a59cdffdaf02ull,
                                   0x16d1e39d9e309d37ull};
  const lori::index_t r = 37, k = 1001;  // odd sizes: partial Philox blocks at the end of every row
  for (int d = 0; d < 9; ++d) {
    CAPTURE(d);
    const auto a = lori::projection_matrix<float>(r, k, 42, 7, kSpecs[d]);
    CHECK(hash_bits(a.data(), a.size()) == golden[d]);
    std::vector<float> g(static_cast<std::size_t>(r * k));
    lori::detail::fill_projection_tile(lori::matrix_view<float>(g.data(), r, k), 0, 0, 42, 7, lori::make_projection_params(kSpecs[d], r, k),
                                       /*allow_simd=*/false);
    CHECK(hash_bits(g.data(), r * k) == golden[d]);
  }
}

TEST_CASE("gaussian: golden values of the ziggurat's rare paths (tail, bounded-loop fallback)") {
  // Element (2552, 2193) of (seed 99, stream 7) is one of the ~1.5e-8 whose slow path runs out of its
  // six words: its value is the Box-Muller draw of slow block 1, words 2 and 3.
  const auto p = lori::make_projection_params(lori::projection_spec::gaussian(1.0), 4096, 4096);
  const float x = lori::projection_element(p, 99, 7, 2552, 2193);
  const lori::philox_block b1 = lori::detail::zig_slow_block(lori::counter_rng(99, 7), 2552, 2193, 1);
  float z0 = 0.0f, z1 = 0.0f;
  lori::detail::box_muller(b1.v[2], b1.v[3], 1.0f, z0, z1);
  CHECK(lori::float_bits(x) == lori::float_bits(z0));
  CHECK(lori::float_bits(x) == 0x3de1f7d4u);
  // Element (0, 1716): accepted from the tail envelope (|x| > r = 3.6554...).
  CHECK(lori::float_bits(lori::projection_element(p, 99, 7, 0, 1716)) == 0xc073a583u);
}

TEST_CASE("gaussian_v2: golden tail value, and the bounded loop's fallback on constructed words") {
  // Element (8, 2436) of (seed 99, stream 7): accepted from the tail envelope (|x| > r = 4.217...).
  const auto p = lori::make_projection_params(lori::projection_spec::gaussian_v2(1.0), 4096, 4096);
  CHECK(lori::float_bits(lori::projection_element(p, 99, 7, 8, 2436)) == 0x40938abcu);
  // No natural element of a practical search reaches the fallback (none in 2^29: it needs about five
  // rejections in a row), so the path runs on constructed slow words: wedge candidates of layer 1
  // (U20 = 0xfffff >= K_1 = 0: never fast) rejected by y = 0xffffffff (u ~ 1: F + D u ~ f(0) = 1 >
  // exp(-x^2/2)), three times (s0..s5), leave s6, s7 to Box-Muller in the fourth attempt.
  const std::uint32_t cand = (1u << 20) | 0xfffffu;
  const std::uint32_t s[8] = {0xffffffffu, cand, 0xffffffffu, cand, 0xffffffffu, cand, 0x12345678u, 0x9abcdef0u};
  auto word = [&](int k) { return s[k]; };
  lori::detail::zig_slow_state st{cand, 0};
  float out = 0.0f;
  int attempts = 1;
  while (!lori::detail::gaussian_slow_attempt<lori::detail::zig2048>(st, 1.5f, word, out)) ++attempts;
  float z0 = 0.0f, z1 = 0.0f;
  lori::detail::box_muller(s[6], s[7], 1.5f, z0, z1);
  CHECK(attempts == 4);
  CHECK(lori::float_bits(out) == lori::float_bits(z0));
  // A tail candidate (layer 0) rejected (u1 = 0: d = -log(2^-24) / r = 3.94, exp(-d^2/2) = 4e-4 <
  // uniform(u2 = 0xffffffff)), then the next candidate is fast: U20 = 0 < K_5.
  const std::uint32_t tail = 0xfffffu;  // layer 0, U20 = 2^20 - 1 >= K_0
  const std::uint32_t s2[8] = {0x00000000u, 0xffffffffu, (5u << 20), 0, 0, 0, 0, 0};
  auto word2 = [&](int k) { return s2[k]; };
  lori::detail::zig_slow_state st2{tail, 0};
  CHECK(lori::detail::gaussian_slow_attempt<lori::detail::zig2048>(st2, 1.0f, word2, out));
  CHECK(out == 0.0f);  // U20 = 0: the fast value of layer 5 is 0
  CHECK(st2.pos == 3);
}
