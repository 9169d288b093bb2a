// lori quick start: one LoRI-S adapted layer, end to end, with the public API.
//
//   1. A (r x k) is a random projection regenerated from (seed, stream): never stored, never trained.
//   2. A "trained" LoRI-D B (d x r) is calibrated to a 90%-sparse mask by global top-|B|.
//   3. The sparse B (CSR) runs the adapter forward pass Y += s * (X A^T) B^T.
//   4. Two tasks with independent A's are nearly orthogonal: principal-angle cosines ~ r/k.
// The command-line workflow on real PEFT adapters is examples/lori_workflow.sh.
#include <lori.hpp>

#include <Eigen/Core>

#include <cstdio>
#include <random>
#include <vector>

int main() {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const lori::index_t d = 512, k = 512, r = 16, n = 8;
  const float scale = 32.0f / static_cast<float>(r);  // alpha / r

  // 1. A from (seed, stream): any runtime, CPU or GPU, regenerates the same bits.
  const std::uint64_t seed = 2025;
  const std::uint64_t stream = lori::stream_from_name("model.layers.0.self_attn.q_proj");
  const Mat A = lori::projection_matrix<float>(r, k, seed, stream, lori::projection_spec::kaiming_uniform());

  // 2. Stand-in for a trained LoRI-D B, then the LoRI-S mask: keep the top 10% of |B|.
  Mat B(d, r);
  std::mt19937 g(0);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (lori::index_t i = 0; i < B.size(); ++i) B.data()[i] = nd(g);
  lori::calibration_options opt;
  opt.sparsity = 0.9;
  const std::vector<lori::calibration_tensor<float>> tensors = {
      {"model.layers.0.self_attn.q_proj.lora_B.weight", lori::view(B), nullptr}};
  const auto calib = lori::calibrate_mask(tensors, opt);
  const lori::bitmask& mask = calib.masks.front();
  std::printf("mask: kept %lld of %lld entries (%.1f%%), threshold %.5f\n", static_cast<long long>(mask.count()),
              static_cast<long long>(mask.size()), 100.0 * mask.density(), calib.report.groups.front().threshold);

  // 3. Sparse B (zeros outside the mask dropped on purpose) and the adapter forward pass.
  Mat Bs = B;
  for (lori::index_t i = 0; i < d; ++i)
    for (lori::index_t j = 0; j < r; ++j)
      if (!mask.test(i, j)) Bs(i, j) = 0.0f;
  const auto Bcsr = lori::csr_matrix<float>::from_dense(lori::view(static_cast<const Mat&>(Bs)), mask);
  Mat X(n, k), Y = Mat::Zero(n, d);
  for (lori::index_t i = 0; i < X.size(); ++i) X.data()[i] = nd(g) * 50.0f;
  lori::adapter_forward<float>(lori::view(static_cast<const Mat&>(X)), lori::view(A), Bcsr.view(), scale, lori::view(Y));
  const Mat Yref = scale * (X * A.transpose()) * Bs.transpose();
  std::printf("adapter forward: |Y| = %.4f, relative difference to the dense product %.2e; B stored in %lld bytes "
              "instead of %lld\n",
              static_cast<double>(Y.norm()), static_cast<double>((Y - Yref).norm() / Yref.norm()),
              static_cast<long long>(Bcsr.memory_bytes()), static_cast<long long>(B.size() * sizeof(float)));

  // 4. A second task's A from another seed: its row space is nearly orthogonal to the first's.
  const Mat A2 = lori::projection_matrix<float>(r, k, seed + 1, stream, lori::projection_spec::kaiming_uniform());
  const auto cosines = lori::principal_cosines<float>(lori::view(A), lori::view(A2));
  double mean_cos2 = 0;
  for (double c : cosines) mean_cos2 += c * c / static_cast<double>(cosines.size());
  std::printf("two tasks' A: mean cos^2 of principal angles %.4f (random subspaces: r/k = %.4f)\n", mean_cos2,
              static_cast<double>(r) / static_cast<double>(k));

  try {
    lori::calibration_options bad;
    bad.sparsity = 1.5;
    lori::calibrate_mask(tensors, bad);
  } catch (const lori::error& e) {
    std::printf("bad input is reported, never undefined: %s\n", e.what());
  }
  return 0;
}
