// Helper of the CLI tests.
//   cli_helper make-base OUT DTYPE        a base model for the fixture adapters: "<module>.weight" for
//                                         every adapted module (out x in) + "lm_head.weight" and
//                                         "model.norm.weight" (not adapted), values from a fixed seed
//   cli_helper check-apply BASE OUT TOL W1 DIR1 [W2 DIR2 ...]
//                                         recomputes W + sum_i w_i s_i B_i A_i in double from the files
//                                         and checks OUT: adapted tensors within one rounding of the
//                                         dtype (+ TOL * max|delta| when TOL > 0), others bit-identical
//   cli_helper make-lori-adapter DIR SEED [gaussian_v2]
//                                         the nlu fixture's shapes/config with A = lori's kaiming (or
//                                         gaussian_v2) projection (seed, stream_from_name(module)) and a
//                                         90%-sparse B
//   cli_helper check-interference CSV DIR0 DIR1
//                                         recomputes, densely in double, the delta cosine and the
//                                         principal-angle cosines (QR + SVD) of pair 0-1 of every module
//   cli_helper check-mask MASK DIR S      the mask file keeps floor((1-S)*N) or more entries (ties)
//                                         and every kept |B| >= every dropped |B| (global threshold)
#include "lori/io/mask_file.hpp"
#include "lori/io/peft_adapter.hpp"
#include "lori/io/safetensors.hpp"

#include "lori/random/projection.hpp"
#include "lori/random/stream.hpp"

#include <Eigen/Dense>

#include <cmath>
#include <fstream>
#include <sstream>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using lori::index_t;

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "make-base" && argc == 4) {
      const auto ad = lori::io::load_peft_adapter(std::string(LORI_TEST_DATA_DIR) + "/peft_adapters/nlu");
      const std::string dt = argv[3];
      lori::io::safetensors_writer w;
      std::mt19937_64 g(12345);
      std::normal_distribution<double> nd(0, 0.02);
      auto add = [&](const std::string& name, std::vector<index_t> shape) {
        index_t n = 1;
        for (auto d : shape) n *= d;
        if (dt == "F32") {
          std::vector<float> v(static_cast<std::size_t>(n));
          for (auto& x : v) x = static_cast<float>(nd(g));
          w.add(name, shape, v);
        } else {
          std::vector<lori::bfloat16> v(static_cast<std::size_t>(n));
          for (auto& x : v) x = lori::bfloat16(static_cast<float>(nd(g)));
          w.add(name, shape, v);
        }
      };
      for (const auto& m : ad.modules) add(m.name + ".weight", {m.out_features, m.in_features});
      add("lm_head.weight", {128, 64});
      add("model.norm.weight", {64});
      w.set_metadata("format", "pt");
      w.save(argv[2]);
      return 0;
    }
    if (mode == "check-apply" && argc >= 7 && (argc - 5) % 2 == 0) {
      const double tol = std::stod(argv[4]);
      const auto base = lori::io::safetensors_file::open(argv[2]);
      const auto out = lori::io::safetensors_file::open(argv[3]);
      std::vector<std::pair<double, lori::io::peft_adapter>> ads;
      for (int i = 5; i + 1 < argc; i += 2) ads.emplace_back(std::stod(argv[i]), lori::io::load_peft_adapter(argv[i + 1]));
      if (out.tensors().size() != base.tensors().size() || out.metadata() != base.metadata()) {
        std::fprintf(stderr, "tensor list or metadata differs\n");
        return 1;
      }
      int adapted = 0;
      for (const auto& t : base.tensors()) {
        const auto& o = out.at(t.name);
        if (o.type != t.type || o.shape != t.shape) {
          std::fprintf(stderr, "%s: dtype/shape changed\n", t.name.c_str());
          return 1;
        }
        std::vector<double> ref = base.read<double>(t);
        const std::vector<double> w0 = ref;
        bool touched = false;
        for (const auto& [wt, ad] : ads) {
          const std::string suffix = ".weight";
          const auto* m = ad.find(t.name.substr(0, t.name.size() - suffix.size()));
          if (m == nullptr) continue;
          touched = true;
          for (index_t i = 0; i < m->out_features; ++i)
            for (index_t j = 0; j < m->in_features; ++j) {
              double s = 0;
              for (index_t p = 0; p < m->rank; ++p) s += static_cast<double>(m->B[static_cast<std::size_t>(i * m->rank + p)]) * m->A[static_cast<std::size_t>(p * m->in_features + j)];
              ref[static_cast<std::size_t>(i * m->in_features + j)] += wt * m->scaling * s;
            }
        }
        if (!touched) {
          if (std::memcmp(base.raw(t), out.raw(o), static_cast<std::size_t>(t.nbytes())) != 0) {
            std::fprintf(stderr, "%s: unadapted tensor changed\n", t.name.c_str());
            return 1;
          }
          continue;
        }
        ++adapted;
        const auto got = out.read<double>(o);
        double max_delta = 0;
        for (std::size_t e = 0; e < ref.size(); ++e) max_delta = std::max(max_delta, std::fabs(ref[e] - w0[e]));
        // The tool rounds its double result once to the dtype: half an ulp (2^-24 F32, 2^-8 BF16,
        // relative). This reference sums in another order (difference ~r*2^-53 relative), which can
        // move a value across a rounding boundary: allow one full ulp (2^-23, 2^-7).
        const double rel = t.type == lori::io::dtype::F32 ? std::ldexp(1.0, -23) : std::ldexp(1.0, -7);
        for (std::size_t e = 0; e < ref.size(); ++e)
          if (std::fabs(got[e] - ref[e]) > rel * std::fabs(ref[e]) + tol * max_delta + 1e-30) {
            std::fprintf(stderr, "%s[%zu]: got %.17g, reference %.17g\n", t.name.c_str(), e, got[e], ref[e]);
            return 1;
          }
      }
      std::printf("check-apply: %d adapted tensors match the double reference\n", adapted);
      return adapted > 0 ? 0 : 1;
    }
    if (mode == "make-lori-adapter" && (argc == 4 || (argc == 5 && std::string(argv[4]) == "gaussian_v2"))) {
      const auto spec = argc == 5 ? lori::projection_spec::gaussian_v2() : lori::projection_spec::kaiming_uniform();
      auto ad = lori::io::load_peft_adapter(std::string(LORI_TEST_DATA_DIR) + "/peft_adapters/nlu");
      const std::uint64_t seed = std::stoull(argv[3]);
      std::mt19937_64 g(seed);
      std::bernoulli_distribution keep(0.1);
      for (auto& m : ad.modules) {
        lori::generate_projection(lori::row_major_view<float>(m.A.data(), m.rank, m.in_features), seed, lori::stream_from_name(m.name), spec);
        for (auto& b : m.B)
          if (!keep(g)) b = 0.0f;
      }
      lori::io::save_peft_adapter(ad, argv[2]);
      return 0;
    }
    if (mode == "check-interference" && argc == 5) {
      const auto a0 = lori::io::load_peft_adapter(argv[3]);
      const auto a1 = lori::io::load_peft_adapter(argv[4]);
      std::ifstream in(argv[2]);
      std::string line;
      std::getline(in, line);
      int checked = 0;
      while (std::getline(in, line)) {
        std::vector<std::string> f;
        std::stringstream ss(line);
        for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
        if (f.size() < 9 || f[0] == "overall" || f[4] != "0" || f[5] != "1") continue;
        const auto* m0 = a0.find(f[0]);
        const auto* m1 = a1.find(f[0]);
        if (!m0 || !m1) return 1;
        using M = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
        auto mat = [](const std::vector<float>& v, index_t r, index_t c) {
          M x(r, c);
          for (index_t t = 0; t < r * c; ++t) x.data()[t] = v[static_cast<std::size_t>(t)];
          return x;
        };
        const M A0 = mat(m0->A, m0->rank, m0->in_features), B0 = mat(m0->B, m0->out_features, m0->rank);
        const M A1 = mat(m1->A, m1->rank, m1->in_features), B1 = mat(m1->B, m1->out_features, m1->rank);
        const M D0 = m0->scaling * B0 * A0, D1 = m1->scaling * B1 * A1;
        const double dcos = (D0.array() * D1.array()).sum() / (D0.norm() * D1.norm());
        const Eigen::MatrixXd Q0 = Eigen::HouseholderQR<Eigen::MatrixXd>(A0.transpose()).householderQ() * Eigen::MatrixXd::Identity(A0.cols(), A0.rows());
        const Eigen::MatrixXd Q1 = Eigen::HouseholderQR<Eigen::MatrixXd>(A1.transpose()).householderQ() * Eigen::MatrixXd::Identity(A1.cols(), A1.rows());
        const Eigen::VectorXd cs = Eigen::JacobiSVD<Eigen::MatrixXd>(Q0.transpose() * Q1).singularValues();
        const double mean_cos2 = cs.squaredNorm() / static_cast<double>(std::min(A0.rows(), A1.rows()));
        // Gram-based (lori) vs dense QR/SVD (here), both in double: cosines agree to ~eps * cond(A)^2
        // (A's are well conditioned random matrices): 1e-9 is generous.
        const double e1 = std::fabs(std::stod(f[8]) - dcos), e2 = std::fabs(std::stod(f[6]) - mean_cos2), e3 = std::fabs(std::stod(f[7]) - cs.maxCoeff());
        if (e1 > 1e-9 || e2 > 1e-9 || e3 > 1e-9) {
          std::fprintf(stderr, "%s: delta_cosine %s vs %.12g, mean_cos2 %s vs %.12g, max_cos %s vs %.12g\n", f[0].c_str(), f[8].c_str(), dcos,
                       f[6].c_str(), mean_cos2, f[7].c_str(), cs.maxCoeff());
          return 1;
        }
        ++checked;
      }
      std::printf("check-interference: %d modules match the dense reference\n", checked);
      return checked > 0 ? 0 : 1;
    }
    if (mode == "check-mask" && argc == 5) {
      const auto masks = lori::io::load_masks(argv[2]);
      const auto ad = lori::io::load_peft_adapter(argv[3]);
      const double s = std::stod(argv[4]);
      index_t n = 0, kept = 0;
      double min_kept = INFINITY, max_dropped = 0;
      for (const auto& m : ad.modules) {
        const auto& mk = masks.at(m.name);
        for (index_t i = 0; i < m.out_features; ++i)
          for (index_t j = 0; j < m.rank; ++j) {
            const double a = std::fabs(m.B[static_cast<std::size_t>(i * m.rank + j)]);
            ++n;
            if (mk.test(i, j)) {
              ++kept;
              min_kept = std::min(min_kept, a);
            } else {
              max_dropped = std::max(max_dropped, a);
            }
          }
      }
      const auto k = static_cast<index_t>(std::floor((1.0 - s) * static_cast<double>(n)));
      std::printf("check-mask: kept %lld, k %lld, min kept %.9g, max dropped %.9g\n", static_cast<long long>(kept), static_cast<long long>(k), min_kept, max_dropped);
      return (kept >= k && min_kept >= max_dropped) ? 0 : 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cli_helper: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "cli_helper: bad arguments\n");
  return 2;
}
