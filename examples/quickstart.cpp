// lori quick start: the public API in a few lines.
//
// Wraps an Eigen matrix in a lori view (no copy), builds a LoRI-S style bit mask keeping the largest
// 10% of a random B by magnitude, and shows the error model. Later issues extend this into the full
// LoRI workflow on real PEFT adapters (see docs/).
#include <lori.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  const lori::index_t d = 64, r = 8;
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> B(d, r);
  std::mt19937 g(0);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  for (lori::index_t i = 0; i < B.size(); ++i) B.data()[i] = nd(g);

  auto Bv = lori::view(B);  // non-owning row-major view, 64-bit sizes
  std::vector<float> mags(B.data(), B.data() + B.size());
  for (auto& x : mags) x = std::fabs(x);
  const auto keep = static_cast<std::ptrdiff_t>(0.1 * static_cast<double>(mags.size()));
  std::nth_element(mags.begin(), mags.begin() + (keep - 1), mags.end(), std::greater<float>());
  const float tau = mags[static_cast<std::size_t>(keep - 1)];

  lori::bitmask mask(d, r);
  for (lori::index_t i = 0; i < d; ++i)
    for (lori::index_t j = 0; j < r; ++j)
      if (std::fabs(Bv(i, j)) >= tau) mask.set(i, j);
  std::printf("B: %lld x %lld, threshold %.5f, kept %lld of %lld (%.1f%%), mask bytes %lld\n",
              static_cast<long long>(d), static_cast<long long>(r), static_cast<double>(tau),
              static_cast<long long>(mask.count()), static_cast<long long>(mask.size()), 100.0 * mask.density(),
              static_cast<long long>(mask.memory_bytes()));

  try {
    lori::bitmask bad(-1, 4);
  } catch (const lori::error& e) {
    std::printf("bad input is reported, not undefined: %s\n", e.what());
  }
  return 0;
}
