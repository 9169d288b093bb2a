// GPU checks of the core headers: device conversions equal host conversions bit for bit, views work
// inside kernels, and CUDA failures become lori::error.
#include <doctest/doctest.h>

#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/cuda/device_buffer.cuh"

#include <cstdint>
#include <vector>

namespace {
__global__ void convert_all(std::uint16_t* bf_out, std::uint16_t* h_out, float* back_bf, float* back_h, const std::uint32_t* in,
                            lori::index_t n) {
  const lori::index_t i = blockIdx.x * static_cast<lori::index_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float f = lori::bits_float(in[i]);
  bf_out[i] = lori::float_to_bf16_bits(f);
  h_out[i] = lori::float_to_half_bits(f);
  back_bf[i] = lori::bf16_bits_to_float(static_cast<std::uint16_t>(in[i] & 0xffffu));
  back_h[i] = lori::half_bits_to_float(static_cast<std::uint16_t>(in[i] & 0xffffu));
}

__global__ void transpose_via_views(lori::row_major_view<const float> a, lori::row_major_view<float> at) {
  const lori::index_t i = blockIdx.x, j = threadIdx.x;
  if (i < a.rows() && j < a.cols()) at(j, i) = a(i, j);
}
}  // namespace

TEST_CASE("bf16/fp16 conversions are bit-identical on host and device") {
  const lori::index_t n = 1 << 20;
  std::vector<std::uint32_t> in(static_cast<std::size_t>(n));
  std::uint64_t s = 0x243f6a8885a308d3ull;
  for (auto& x : in) {  // splitmix64: covers all exponents, subnormals, NaNs and Infs
    s += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    x = static_cast<std::uint32_t>(z ^ (z >> 31));
  }
  lori::cuda::device_buffer<std::uint32_t> d_in(in);
  lori::cuda::device_buffer<std::uint16_t> d_bf(n), d_h(n);
  lori::cuda::device_buffer<float> d_bbf(n), d_bh(n);
  convert_all<<<static_cast<unsigned>((n + 255) / 256), 256>>>(d_bf.data(), d_h.data(), d_bbf.data(), d_bh.data(), d_in.data(), n);
  LORI_CUDA_CHECK_LAUNCH();
  const auto bf = d_bf.download(), h = d_h.download();
  const auto bbf = d_bbf.download(), bh = d_bh.download();
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const float f = lori::bits_float(in[i]);
    const auto lo = static_cast<std::uint16_t>(in[i] & 0xffffu);
    mismatches += bf[i] != lori::float_to_bf16_bits(f);
    mismatches += h[i] != lori::float_to_half_bits(f);
    mismatches += lori::float_bits(bbf[i]) != lori::float_bits(lori::bf16_bits_to_float(lo));
    mismatches += lori::float_bits(bh[i]) != lori::float_bits(lori::half_bits_to_float(lo));
  }
  CHECK(mismatches == 0);
}

TEST_CASE("matrix views are usable as kernel arguments") {
  const lori::index_t r = 37, c = 61;
  std::vector<float> a(static_cast<std::size_t>(r * c));
  for (std::size_t k = 0; k < a.size(); ++k) a[k] = static_cast<float>(k) * 0.5f - 7.0f;
  lori::cuda::device_buffer<float> d_a(a), d_at(r * c);
  d_at.fill_bytes(0xff);  // poison: NaNs everywhere until written
  transpose_via_views<<<static_cast<unsigned>(r), static_cast<unsigned>(c)>>>(lori::row_major_view<const float>(d_a.data(), r, c),
                                                                               d_at.as_matrix(c, r));
  LORI_CUDA_CHECK_LAUNCH();
  const auto at = d_at.download();
  std::size_t wrong = 0;
  for (lori::index_t i = 0; i < r; ++i)
    for (lori::index_t j = 0; j < c; ++j) wrong += at[static_cast<std::size_t>(j * r + i)] != a[static_cast<std::size_t>(i * c + j)];
  CHECK(wrong == 0);
}

TEST_CASE("CUDA failures are thrown as lori::error with file and line") {
  void* p = nullptr;
  // Far beyond any card's memory: cudaMalloc must fail, and the macro must turn that into lori::error.
  CHECK_THROWS_AS(LORI_CUDA_CHECK(cudaMalloc(&p, std::size_t{1} << 62)), lori::error);
  cudaGetLastError();  // clear the sticky-free allocation error
  CHECK_THROWS_WITH_AS(LORI_CUDA_CHECK(cudaErrorInvalidValue), doctest::Contains("test_core_gpu.cu"), lori::error);
}
