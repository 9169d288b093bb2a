// lori/merge/task_tensors.hpp - PEFT's merge_utils on flat task tensors: pruning, TIES sign election,
// disjoint merge, and the five weighted combinations built from them.
//
// These are the element-wise building blocks of add_weighted_adapter (lori/merge/weighted_adapter.hpp),
// reproduced from peft/utils/merge_utils.py (PEFT 0.21):
//
//   magnitude_prune(x, density)      keep the k = floor(density * numel) entries of largest |x|, zero
//                                    the rest (torch.topk). Ties at the k-th magnitude: lori keeps the
//                                    lowest flat indices (torch leaves the choice unspecified).
//   dare_prune(x, density, ...)      keep each entry with probability density (Bernoulli), zero the
//                                    rest, and (rescale) divide the kept ones by density. lori draws
//                                    with its own counter-based generator (Philox4x32-10 keyed by
//                                    seed, one stream per tensor): the statistics equal torch's, the
//                                    individual draws cannot.
//   density >= 1: both return x unchanged (PEFT warns and skips pruning). density < 0: error.
//   dare_prune with 0 <= density < 1 and rescale needs density > 0 (PEFT divides by zero -> NaN;
//   lori reports an error instead).
//
//   merge_task_tensors(method, tensors x_1..x_n, weights c_1..c_n, ...) with n same-sized tensors:
//     linear           sum_i c_i x_i                                      (task_arithmetic)
//     magnitude_prune  sum_i c_i magnitude_prune(x_i)
//     dare_linear      sum_i c_i dare_prune(x_i, rescale)
//     ties             p_i = magnitude_prune(x_i); elect the sign per entry from the UNWEIGHTED p_i
//                      (total: sign of sum_i p_i; frequency: sign of sum_i sign(p_i); a zero
//                      sum elects +1); m_i = (sign(p_i) == elected) (zeros never agree);
//                      result = sum_i c_i p_i m_i / max(1, sum_i m_i)          (disjoint mean)
//     dare_ties        as ties with p_i = dare_prune(x_i, rescale)
//   The weights multiply after pruning and after the election, exactly where PEFT multiplies them.
//   Arithmetic is in T (float or double), accumulating over i in index order as torch's sum(dim=0).
#ifndef LORI_MERGE_TASK_TENSORS_HPP
#define LORI_MERGE_TASK_TENSORS_HPP

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/detail/merge_rng.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <vector>

namespace lori {

/// How the TIES sign is elected per entry (PEFT's majority_sign_method).
enum class majority_sign_method { total, frequency };

/// The element-wise combination of task tensors (PEFT merge_utils functions).
enum class task_combination { linear, ties, dare_linear, dare_ties, magnitude_prune };

/// Number of entries magnitude pruning keeps: floor(density * numel) for 0 <= density < 1 (Python's
/// int(density * numel)), numel for density >= 1. Throws lori::error for density < 0 or NaN.
inline index_t magnitude_prune_count(double density, index_t numel) {
  LORI_EXPECTS(density >= 0.0, "magnitude_prune: density must be >= 0 (and not NaN)");
  LORI_EXPECTS(numel >= 0, "magnitude_prune: numel must be non-negative");
  if (density >= 1.0) return numel;
  return static_cast<index_t>(density * static_cast<double>(numel));
}

/// Magnitude pruning in place: keeps the magnitude_prune_count(density, n) entries of largest |x|
/// (ties at the threshold: lowest indices first) and zeroes the rest. density >= 1 leaves x as is.
/// O(n) average time, n floats of scratch. Throws lori::error for density < 0 or a NaN entry.
template <class T>
void magnitude_prune(vector_view<T> x, double density) {
  static_assert(std::is_floating_point_v<T>, "magnitude_prune: T must be float or double");
  const index_t n = x.size();
  const index_t k = magnitude_prune_count(density, n);
  if (density >= 1.0) return;
  for (index_t i = 0; i < n; ++i) LORI_EXPECTS(!std::isnan(x[i]), "magnitude_prune: tensor holds NaN");
  if (k == 0) {
    std::fill(x.begin(), x.end(), T(0));
    return;
  }
  std::vector<T> mag(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) mag[static_cast<std::size_t>(i)] = std::abs(x[i]);
  std::nth_element(mag.begin(), mag.begin() + (k - 1), mag.end(), std::greater<T>());
  const T thr = mag[static_cast<std::size_t>(k - 1)];
  index_t greater = 0;
  for (index_t i = 0; i < n; ++i) greater += std::abs(x[i]) > thr ? 1 : 0;
  index_t ties_left = k - greater;  // entries equal to thr that are kept, lowest index first
  for (index_t i = 0; i < n; ++i) {
    const T a = std::abs(x[i]);
    if (a > thr) continue;
    if (a == thr && ties_left > 0) {
      --ties_left;
      continue;
    }
    x[i] = T(0);
  }
}

/// DARE random pruning in place: entry e is kept when its uniform u_e (24-bit, from Philox4x32-10
/// keyed by `seed`, counter (e / 4, stream)) is < density, else zeroed; kept entries are divided by
/// density when `rescale`. density >= 1 leaves x as is. Deterministic in (seed, stream, e).
/// Throws lori::error for density < 0, NaN, or density == 0 with rescale.
template <class T>
void dare_prune(vector_view<T> x, double density, bool rescale, std::uint64_t seed, std::uint64_t stream) {
  static_assert(std::is_floating_point_v<T>, "dare_prune: T must be float or double");
  LORI_EXPECTS(density >= 0.0, "dare_prune: density must be >= 0 (and not NaN)");
  if (density >= 1.0) return;
  LORI_EXPECTS(!(rescale && density == 0.0), "dare_prune: density 0 with rescale divides by zero (PEFT returns NaN)");
  const index_t n = x.size();
  const double scale24 = 1.0 / 16777216.0;
  const T dens = static_cast<T>(density);
  for (index_t b = 0; b * 4 < n; ++b) {
    const auto u = detail::dare_uniform_block(seed, stream, static_cast<std::uint64_t>(b));
    for (index_t j = 0; j < 4 && b * 4 + j < n; ++j) {
      T& v = x[b * 4 + j];
      const bool keep = static_cast<double>(u[static_cast<std::size_t>(j)]) * scale24 < density;
      v = keep ? v : T(0) * v;  // torch: tensor * mask keeps the sign of zero
      if (rescale) v = v / dens;
    }
  }
}

/// Options of merge_task_tensors.
struct task_merge_options {
  double density = 1.0;                                     ///< fraction kept by pruning (>= 1: no pruning)
  majority_sign_method sign_method = majority_sign_method::total;  ///< TIES election
  std::uint64_t seed = 0;                                   ///< DARE generator key
  std::uint64_t stream = 0;                                 ///< DARE base stream; tensor i uses mix(stream, i)
};

/// DARE stream of task tensor i under base stream `stream` (what merge_task_tensors uses).
inline std::uint64_t dare_tensor_stream(std::uint64_t stream, std::size_t i) noexcept {
  return detail::merge_mix64(stream ^ detail::merge_mix64(static_cast<std::uint64_t>(i) + 1));
}

/// Combines n same-sized task tensors with weights (see the header comment for each method) into
/// `out` (same size; may not alias the inputs). weights.size() == tensors.size() >= 1.
/// Scratch: n copies of a tensor for the pruning methods. Throws lori::error on size mismatches, an
/// empty list, density < 0, NaN entries under magnitude pruning, density 0 with DARE.
template <class T>
void merge_task_tensors(task_combination method, const std::vector<vector_view<const T>>& tensors,
                        const std::vector<T>& weights, vector_view<T> out, const task_merge_options& opt = {}) {
  static_assert(std::is_floating_point_v<T>, "merge_task_tensors: T must be float or double");
  const std::size_t nt = tensors.size();
  LORI_EXPECTS(nt >= 1, "merge_task_tensors: need at least one task tensor");
  LORI_EXPECTS(weights.size() == nt, "merge_task_tensors: one weight per task tensor");
  const index_t n = out.size();
  for (const auto& t : tensors) LORI_EXPECTS(t.size() == n, "merge_task_tensors: task tensors and out must have the same size");
  LORI_EXPECTS(opt.density >= 0.0, "merge_task_tensors: density must be >= 0 (and not NaN)");

  if (method == task_combination::linear) {
    for (index_t e = 0; e < n; ++e) out[e] = tensors[0][e] * weights[0];
    for (std::size_t i = 1; i < nt; ++i)
      for (index_t e = 0; e < n; ++e) out[e] += tensors[i][e] * weights[i];
    return;
  }

  // Pruned copies p_i.
  const bool dare = method == task_combination::dare_linear || method == task_combination::dare_ties;
  std::vector<std::vector<T>> p(nt);
  for (std::size_t i = 0; i < nt; ++i) {
    p[i].assign(tensors[i].begin(), tensors[i].end());
    vector_view<T> pv(p[i].data(), n);
    if (dare)
      dare_prune(pv, opt.density, /*rescale=*/true, opt.seed, dare_tensor_stream(opt.stream, i));
    else
      magnitude_prune(pv, opt.density);
  }

  if (method == task_combination::magnitude_prune || method == task_combination::dare_linear) {
    for (index_t e = 0; e < n; ++e) out[e] = p[0][static_cast<std::size_t>(e)] * weights[0];
    for (std::size_t i = 1; i < nt; ++i)
      for (index_t e = 0; e < n; ++e) out[e] += p[i][static_cast<std::size_t>(e)] * weights[i];
    return;
  }

  // TIES / DARE-TIES: elect on unweighted pruned tensors, disjoint mean of the weighted ones.
  auto sgn = [](T v) { return v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0)); };
  for (index_t e = 0; e < n; ++e) {
    const auto se = static_cast<std::size_t>(e);
    T vote = T(0);
    if (opt.sign_method == majority_sign_method::total)
      for (std::size_t i = 0; i < nt; ++i) vote += p[i][se];
    else
      for (std::size_t i = 0; i < nt; ++i) vote += sgn(p[i][se]);
    const T elected = vote >= T(0) ? T(1) : T(-1);
    T sum = T(0);
    index_t count = 0;
    for (std::size_t i = 0; i < nt; ++i) {
      const bool agree = sgn(p[i][se]) == elected;
      sum += agree ? p[i][se] * weights[i] : T(0);
      count += agree ? 1 : 0;
    }
    out[e] = sum / static_cast<T>(count > 0 ? count : 1);
  }
}

}  // namespace lori

#endif  // LORI_MERGE_TASK_TENSORS_HPP
