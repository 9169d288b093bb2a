// Golden bit patterns of lori's projections. Computed once (generic path, -O2, x86-64 baseline) and
// frozen (the gaussian values since the switch from Box-Muller to the 256-layer ziggurat): A must be the same function of (seed, stream, shape, spec) forever, on every compiler and
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
                                        lori::projection_spec::sparse(64.0)};
}  // namespace

TEST_CASE("projection elements match the frozen golden bit patterns") {
  const std::uint64_t seed = 0x0123456789abcdefull;
  const std::uint64_t stream = lori::stream_from_name("model.layers.3.self_attn.q_proj");
  const lori::index_t pos[16][2] = {{0, 0}, {0, 1}, {0, 2}, {0, 3}, {0, 4},    {0, 5},    {0, 6},    {0, 7},
                                    {1, 0}, {1, 1}, {1, 2}, {1, 3}, {5, 4093}, {5, 4094}, {7, 4095}, {7, 2048}};
  const std::uint32_t golden[4][16] = {
      {0x3c4aa7d9u, 0xb93359c0u, 0x3bcb8512u, 0xbb35e77cu, 0x3b3fd32cu, 0x3c35e0ffu, 0x3c09abbbu, 0x3b9e3236u, 0x392bd740u, 0x3b3cb08cu,
       0x3a1845b0u, 0x3c0480bdu, 0x3c41e2c9u, 0xbc393c6bu, 0xbbafa216u, 0x3ab1bb88u},
      {0xbef50752u, 0x3f74a32eu, 0xbe69cd4fu, 0x3f23c547u, 0xbdd4e011u, 0xbeb4317eu, 0xbed6318cu, 0xbd9f9027u, 0xbc2b82e8u, 0xbcc83394u,
       0xbce3970cu, 0xbe930b1fu, 0xbf5d113bu, 0x3e517fd1u, 0x3f595ba0u, 0xbd517b88u},
      {0xbc800000u, 0x3c800000u, 0xbc800000u, 0x3c800000u, 0xbc800000u, 0xbc800000u, 0xbc800000u, 0xbc800000u, 0xbc800000u, 0xbc800000u,
       0xbc800000u, 0xbc800000u, 0xbc800000u, 0x3c800000u, 0x3c800000u, 0xbc800000u},
      {0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u,
       0x00000000u, 0x00000000u, 0x00000000u, 0x3cddb3d7u, 0xbcddb3d7u, 0x00000000u},
  };
  for (int d = 0; d < 4; ++d) {
    CAPTURE(d);
    const auto a = lori::projection_matrix<float>(8, 4096, seed, stream, kSpecs[d]);
    const auto params = lori::make_projection_params(kSpecs[d], 8, 4096);
    for (int t = 0; t < 16; ++t) {
      CAPTURE(t);
      CHECK(lori::float_bits(a(pos[t][0], pos[t][1])) == golden[d][t]);
      CHECK(lori::float_bits(lori::projection_element(params, seed, stream, pos[t][0], pos[t][1])) == golden[d][t]);
    }
  }
}

TEST_CASE("whole-matrix golden hashes, through the dispatched and the generic path") {
  const std::uint64_t golden[7] = {0x5d07a41b32caeb7aull, 0xd8464a101a8e694eull, 0xcd497113a1d9f330ull, 0x733c70a43da3c381ull,
                                   0x5466440dc9ab5aabull, 0xcd497113a1d9f330ull, 0xdbfe66cfe555f03dull};
  const lori::index_t r = 37, k = 1001;  // odd sizes: partial Philox blocks at the end of every row
  for (int d = 0; d < 7; ++d) {
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
