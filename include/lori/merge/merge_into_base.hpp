// lori/merge/merge_into_base.hpp - W' = W + sum_i w_i s_i B_i A_i in one pass over W.
//
// The merged base weight of PEFT's merge_and_unload (for several adapters at once, with weights). W is
// d x k row-major in float, double or bfloat16 storage; the adapters are float or double.
//
// Blocked: the adapters are concatenated once into Bc = [c_1 B_1 ... c_n B_n] (d x R, c_i = w_i s_i)
// and Ac = [A_1; ...; A_n] (R x k), R = sum r_i. For each block of `block_rows` rows of W,
// Bc[rows] * Ac is one GEMM of inner dimension R whose result goes straight into W (float/double W of
// the adapters' type: Eigen accumulates into the destination) or through a cache-resident tile of
// block_rows x block_cols (other storage types: widen, add, round to nearest even once). So W is read
// and written once, and no d x k temporary exists. Row blocks are split statically over num_threads
// std::threads; every block is computed by the same code whatever the thread count, so the result is
// bitwise identical for any num_threads.
// Accuracy: each element is W + fl(sum over R products) in the adapters' type, then one rounding to
// the storage type.
#ifndef LORI_MERGE_MERGE_INTO_BASE_HPP
#define LORI_MERGE_MERGE_INTO_BASE_HPP

#include "lori/config.hpp"
#include "lori/core/eigen.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/merge/adapter_module.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <thread>
#include <type_traits>
#include <vector>

namespace lori {

/// Options of merge_into_base.
struct merge_into_base_options {
  int num_threads = 1;          ///< worker threads (>= 1); results do not depend on it
  index_t block_rows = 64;      ///< rows of W per GEMM block (>= 1)
  index_t block_cols = 2048;    ///< columns per tile for storage types other than the adapters' type (>= 1)
};

/// W += sum_i weights[i] * adapters[i].scaling * B_i * A_i.
/// W: d x k row-major view (float, double or lori::bfloat16 elements; any leading dimension).
/// adapters: modules with B_i d x r_i and A_i r_i x k (ranks may differ; masks are ignored: B_i is
/// zero outside its mask). weights: one finite weight per adapter (any sign).
/// Cost: 2 d k R flops, one read and one write of W, O((d + k) R) extra memory.
/// Throws lori::error on shape mismatches, weight count mismatch, non-finite weights or bad options.
template <class TW, class T>
void merge_into_base(row_major_view<TW> W, const std::vector<adapter_module_view<T>>& adapters,
                     const std::vector<double>& weights, const merge_into_base_options& opt = {}) {
  static_assert(std::is_same_v<TW, float> || std::is_same_v<TW, double> || std::is_same_v<TW, bfloat16>,
                "merge_into_base: W must be float, double or lori::bfloat16");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "merge_into_base: adapters must be float or double");
  LORI_EXPECTS(weights.size() == adapters.size(), "merge_into_base: one weight per adapter");
  LORI_EXPECTS(opt.num_threads >= 1 && opt.block_rows >= 1 && opt.block_cols >= 1,
               "merge_into_base: num_threads, block_rows and block_cols must be >= 1");
  const index_t d = W.rows(), k = W.cols();
  index_t R = 0;
  for (std::size_t i = 0; i < adapters.size(); ++i) {
    const auto& a = adapters[i];
    check_adapter_module(a, "merge_into_base: inconsistent adapter module");
    LORI_EXPECTS(a.out_features() == d && a.in_features() == k, "merge_into_base: adapter shape does not match W (B is d x r, A is r x k)");
    LORI_EXPECTS(std::isfinite(weights[i]), "merge_into_base: weights must be finite");
    R += a.rank();
  }
  if (d == 0 || k == 0 || R == 0) return;

  using MatR = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  MatR Bc(d, R), Ac(R, k);
  index_t off = 0;
  for (std::size_t i = 0; i < adapters.size(); ++i) {
    const auto& a = adapters[i];
    const T c = static_cast<T>(weights[i] * a.scaling);
    for (index_t row = 0; row < d; ++row)
      for (index_t r = 0; r < a.rank(); ++r) Bc(row, off + r) = a.B(row, r) * c;
    for (index_t r = 0; r < a.rank(); ++r)
      for (index_t j = 0; j < k; ++j) Ac(off + r, j) = a.A(r, j);
    off += a.rank();
  }

  const index_t mb = opt.block_rows, nb = opt.block_cols;
  const index_t nblocks = (d + mb - 1) / mb;
  auto work = [&](index_t first_block, index_t step) {
    MatR tile;
    for (index_t blk = first_block; blk < nblocks; blk += step) {
      const index_t i0 = blk * mb, rows = std::min(mb, d - i0);
      if constexpr (std::is_same_v<TW, T>) {
        auto Wb = as_eigen(W.block(i0, 0, rows, k));
        Wb.noalias() += Bc.middleRows(i0, rows) * Ac;
      } else {
        for (index_t j0 = 0; j0 < k; j0 += nb) {
          const index_t cols = std::min(nb, k - j0);
          tile.noalias() = Bc.middleRows(i0, rows) * Ac.middleCols(j0, cols);
          for (index_t i = 0; i < rows; ++i) {
            TW* w = W.row(i0 + i) + j0;
            const T* t = tile.data() + i * cols;
            for (index_t j = 0; j < cols; ++j) {
              if constexpr (std::is_same_v<TW, bfloat16>)
                w[j] = bfloat16(static_cast<float>(static_cast<T>(static_cast<float>(w[j])) + t[j]));
              else
                w[j] = static_cast<TW>(static_cast<T>(w[j]) + t[j]);
            }
          }
        }
      }
    }
  };
  const index_t nthreads = std::min<index_t>(opt.num_threads, nblocks);
  if (nthreads <= 1) {
    work(0, 1);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(nthreads - 1));
  for (index_t t = 1; t < nthreads; ++t) pool.emplace_back(work, t, nthreads);
  work(0, nthreads);
  for (auto& th : pool) th.join();
}

}  // namespace lori

#endif  // LORI_MERGE_MERGE_INTO_BASE_HPP
