// lori/ops/optim.hpp - optimizers over the compact values of a sparse B (or any parameter array).
//
// A LoRI-S B is trained through its compact value array (nnz entries, lori/sparse/*). The reference
// keeps B dense, zeroes its gradient outside the mask and runs a dense torch.optim.AdamW: entries outside
// the mask then stay exactly zero (their gradient, and hence m and v, are always zero, and decoupled
// weight decay scales zero to zero), so the dense step restricted to the kept entries IS the compact
// step below - with a tenth of the work and of the optimizer state at 90% sparsity.
//
//   adamw_step       torch.optim.AdamW (PyTorch 2.x, amsgrad=False, maximize=False), per element:
//                      p <- p * (1 - lr*wd)
//                      m <- lerp(m, g, 1 - beta1)          (= beta1*m + (1-beta1)*g, ATen's lerp form)
//                      v <- v*beta2 + (1 - beta2)*g*g
//                      t <- t + 1; bc1 = 1 - beta1^t; bc2 = 1 - beta2^t
//                      step_size = lr / bc1;  denom = sqrt(v) / sqrt(bc2) + eps
//                      p <- p + (-step_size)*m / denom
//                    Scalars (1 - lr*wd, bc1, bc2, step_size, sqrt(bc2)) are computed in double as Python
//                    does and rounded to T once, as ATen does; the elementwise operations follow ATen's
//                    CPU kernels' order (lerp, mul then addcmul, sqrt / c + eps, addcdiv).
//   sgd_step         torch.optim.SGD (momentum, dampening, weight decay, Nesterov).
//   clip_grad_norm   torch.nn.utils.clip_grad_norm_ (2-norm): total = ||g||, coef = max_norm/(total+1e-6)
//                    clamped to <= 1, g <- g * coef; returns total. The norm is accumulated in double
//                    over fixed blocks (deterministic for every thread count).
// The element-wise steps run on `threads` std::threads over fixed chunks; results never depend on it.
#ifndef LORI_OPS_OPTIM_HPP
#define LORI_OPS_OPTIM_HPP

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/detail/ops_parallel.hpp"
#include "lori/detail/ops_types.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

namespace lori {

/// torch.optim.AdamW hyperparameters (same defaults).
struct adamw_options {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

/// AdamW state for an array of nnz parameters: first and second moments and the step count.
template <class T>
struct adamw_state {
  std::vector<T> exp_avg;     ///< m
  std::vector<T> exp_avg_sq;  ///< v
  std::int64_t step = 0;      ///< steps taken

  adamw_state() = default;
  /// Zero state for `size` parameters (what torch creates lazily on the first step).
  explicit adamw_state(index_t size) {
    LORI_EXPECTS(size >= 0, "adamw_state: size must be non-negative");
    exp_avg.assign(static_cast<std::size_t>(size), T{0});
    exp_avg_sq.assign(static_cast<std::size_t>(size), T{0});
  }
  index_t size() const noexcept { return static_cast<index_t>(exp_avg.size()); }
  /// Bytes of optimizer state (m and v).
  index_t memory_bytes() const noexcept { return static_cast<index_t>((exp_avg.size() + exp_avg_sq.size()) * sizeof(T)); }
};

/// One AdamW step on `params` with gradient `grads` (same size as params and state). Throws lori::error
/// on size mismatches, non-finite or out-of-range hyperparameters (lr, eps, weight_decay >= 0;
/// 0 <= beta < 1) or threads < 1. O(size).
template <class T>
void adamw_step(vector_view<T> params, detail::cvec<T> grads, adamw_state<T>& state, const adamw_options& opt,
                int threads = 1);

/// torch.optim.SGD hyperparameters (lr has no default there; 1e-3 here).
struct sgd_options {
  double lr = 1e-3;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

/// SGD state: the momentum buffer (created from the first gradient, as torch does).
template <class T>
struct sgd_state {
  std::vector<T> momentum_buffer;  ///< empty until the first step with momentum != 0
  index_t memory_bytes() const noexcept { return static_cast<index_t>(momentum_buffer.size() * sizeof(T)); }
};

/// One SGD step, torch.optim.SGD's rule:
///   g <- g + wd*p;  if momentum: buf <- (first step) g  else  momentum*buf + (1-dampening)*g;
///                   g <- nesterov ? g + momentum*buf : buf;
///   p <- p - lr*g.
/// Throws on size mismatches, negative / non-finite hyperparameters, Nesterov without momentum or with
/// dampening (as torch), or threads < 1.
template <class T>
void sgd_step(vector_view<T> params, detail::cvec<T> grads, sgd_state<T>& state, const sgd_options& opt, int threads = 1);

/// Clips `grads` in place to 2-norm `max_norm` with torch.nn.utils.clip_grad_norm_'s rule and returns the
/// norm before clipping. max_norm must be finite and >= 0. With error_if_nonfinite a NaN/inf norm is an
/// error (torch's flag); otherwise the gradient is scaled by the resulting NaN/0 coefficient as torch does.
template <class T>
double clip_grad_norm(vector_view<T> grads, double max_norm, bool error_if_nonfinite = false, int threads = 1);

/// As clip_grad_norm over several tensors together (one total norm across all of them), as
/// clip_grad_norm_ over a parameter list.
template <class T>
double clip_grad_norm(const std::vector<vector_view<T>>& grads, double max_norm, bool error_if_nonfinite = false,
                      int threads = 1);

// ------------------------------------------------------------------------------------------------
// Implementation
// ------------------------------------------------------------------------------------------------
namespace detail {
/// Elements per chunk of the element-wise optimizer loops and of the norm's partial sums.
inline constexpr index_t kOptimChunk = 4096;
inline constexpr double kOptimMinPerThread = 1 << 16;
static_assert(kOptimChunk == 4096, "ops_num_chunks (detail/ops_parallel.hpp) assumes 4096-element chunks");

inline bool ops_finite_nonneg(double x) { return std::isfinite(x) && x >= 0.0; }

/// Sum of squares of g in double over fixed chunks, chunk partials added in order.
template <class T>
double ops_sum_squares(const T* g, index_t size, int threads) {
  const index_t nc = ops_num_chunks(size);
  std::vector<double> part(static_cast<std::size_t>(nc), 0.0);
  ops_parallel_blocks(nc, ops_useful_threads(threads, static_cast<double>(size), kOptimMinPerThread), [&](index_t c0, index_t c1) {
    for (index_t c = c0; c < c1; ++c) {
      const index_t b = c * kOptimChunk, e = std::min(size, b + kOptimChunk);
      double s = 0.0;
      for (index_t i = b; i < e; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
      part[static_cast<std::size_t>(c)] = s;
    }
  });
  double total = 0.0;
  for (double s : part) total += s;
  return total;
}
}  // namespace detail

template <class T>
void adamw_step(vector_view<T> params, detail::cvec<T> grads, adamw_state<T>& state, const adamw_options& opt,
                int threads) {
  LORI_EXPECTS(threads >= 1, "adamw_step: threads must be >= 1");
  LORI_EXPECTS(grads.size() == params.size(), "adamw_step: grads and params must have the same size");
  LORI_EXPECTS(state.size() == params.size() && static_cast<index_t>(state.exp_avg_sq.size()) == params.size(),
               "adamw_step: state size must equal the number of parameters");
  LORI_EXPECTS(detail::ops_finite_nonneg(opt.lr), "adamw_step: lr must be finite and >= 0");
  LORI_EXPECTS(detail::ops_finite_nonneg(opt.eps), "adamw_step: eps must be finite and >= 0");
  LORI_EXPECTS(detail::ops_finite_nonneg(opt.weight_decay), "adamw_step: weight_decay must be finite and >= 0");
  LORI_EXPECTS(opt.beta1 >= 0.0 && opt.beta1 < 1.0, "adamw_step: beta1 must be in [0, 1)");
  LORI_EXPECTS(opt.beta2 >= 0.0 && opt.beta2 < 1.0, "adamw_step: beta2 must be in [0, 1)");
  LORI_EXPECTS(state.step >= 0, "adamw_step: state.step must be non-negative");
  const std::int64_t step = ++state.step;
  const double bc1 = 1.0 - std::pow(opt.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(opt.beta2, static_cast<double>(step));
  const T decay = static_cast<T>(1.0 - opt.lr * opt.weight_decay);
  const T w1 = static_cast<T>(1.0 - opt.beta1);
  const T b2 = static_cast<T>(opt.beta2);
  const T w2 = static_cast<T>(1.0 - opt.beta2);
  const T neg_step = static_cast<T>(-(opt.lr / bc1));
  const T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  const T eps = static_cast<T>(opt.eps);
  const bool lerp_low = w1 < T(0.5);
  T* p = params.data();
  const T* g = grads.data();
  T* m = state.exp_avg.data();
  T* v = state.exp_avg_sq.data();
  const index_t size = params.size();
  const index_t nc = detail::ops_num_chunks(size);
  detail::ops_parallel_blocks(nc, detail::ops_useful_threads(threads, static_cast<double>(size), detail::kOptimMinPerThread),
                              [&](index_t c0, index_t c1) {
                                const index_t b = c0 * detail::kOptimChunk, e = std::min(size, c1 * detail::kOptimChunk);
                                for (index_t i = b; i < e; ++i) {
                                  const T gi = g[i];
                                  const T pi = p[i] * decay;
                                  const T mi = lerp_low ? m[i] + w1 * (gi - m[i]) : gi - (gi - m[i]) * (T(1) - w1);
                                  const T vi = v[i] * b2 + w2 * gi * gi;
                                  const T denom = std::sqrt(vi) / bc2_sqrt + eps;
                                  m[i] = mi;
                                  v[i] = vi;
                                  p[i] = pi + neg_step * mi / denom;
                                }
                              });
}

template <class T>
void sgd_step(vector_view<T> params, detail::cvec<T> grads, sgd_state<T>& state, const sgd_options& opt, int threads) {
  LORI_EXPECTS(threads >= 1, "sgd_step: threads must be >= 1");
  LORI_EXPECTS(grads.size() == params.size(), "sgd_step: grads and params must have the same size");
  LORI_EXPECTS(detail::ops_finite_nonneg(opt.lr), "sgd_step: lr must be finite and >= 0");
  LORI_EXPECTS(detail::ops_finite_nonneg(opt.momentum), "sgd_step: momentum must be finite and >= 0");
  LORI_EXPECTS(std::isfinite(opt.dampening), "sgd_step: dampening must be finite");
  LORI_EXPECTS(detail::ops_finite_nonneg(opt.weight_decay), "sgd_step: weight_decay must be finite and >= 0");
  LORI_EXPECTS(!opt.nesterov || (opt.momentum > 0.0 && opt.dampening == 0.0),
               "sgd_step: Nesterov momentum requires a momentum and zero dampening");
  const bool use_momentum = opt.momentum != 0.0;
  const bool first = use_momentum && state.momentum_buffer.empty();
  if (first) state.momentum_buffer.assign(static_cast<std::size_t>(params.size()), T{0});
  LORI_EXPECTS(!use_momentum || static_cast<index_t>(state.momentum_buffer.size()) == params.size(),
               "sgd_step: momentum buffer size must equal the number of parameters");
  const T wd = static_cast<T>(opt.weight_decay), mom = static_cast<T>(opt.momentum);
  const T damp = static_cast<T>(1.0 - opt.dampening), neg_lr = static_cast<T>(-opt.lr);
  const bool has_wd = opt.weight_decay != 0.0;
  T* p = params.data();
  const T* g = grads.data();
  T* buf = use_momentum ? state.momentum_buffer.data() : nullptr;
  const index_t size = params.size();
  detail::ops_parallel_blocks(detail::ops_num_chunks(size),
                              detail::ops_useful_threads(threads, static_cast<double>(size), detail::kOptimMinPerThread),
                              [&](index_t c0, index_t c1) {
                                const index_t b = c0 * detail::kOptimChunk, e = std::min(size, c1 * detail::kOptimChunk);
                                for (index_t i = b; i < e; ++i) {
                                  T gi = g[i];
                                  if (has_wd) gi = gi + wd * p[i];
                                  if (use_momentum) {
                                    buf[i] = first ? gi : buf[i] * mom + damp * gi;
                                    gi = opt.nesterov ? gi + mom * buf[i] : buf[i];
                                  }
                                  p[i] = p[i] + neg_lr * gi;
                                }
                              });
}

namespace detail {
template <class T>
double ops_clip(const std::vector<vector_view<T>>& grads, double max_norm, bool error_if_nonfinite, int threads) {
  LORI_EXPECTS(threads >= 1, "clip_grad_norm: threads must be >= 1");
  LORI_EXPECTS(std::isfinite(max_norm) && max_norm >= 0.0, "clip_grad_norm: max_norm must be finite and >= 0");
  double ss = 0.0;
  for (const auto& g : grads) ss += ops_sum_squares(g.data(), g.size(), threads);
  const double total = std::sqrt(ss);
  LORI_EXPECTS(!error_if_nonfinite || std::isfinite(total), "clip_grad_norm: the total gradient norm is NaN or infinite");
  const double coef = std::min(max_norm / (total + 1e-6), 1.0);
  const double coef_or_nan = std::isnan(total) ? total : coef;
  const T c = static_cast<T>(coef_or_nan);
  for (const auto& g : grads) {
    T* x = g.data();
    const index_t size = g.size();
    ops_parallel_blocks(ops_num_chunks(size), ops_useful_threads(threads, static_cast<double>(size), kOptimMinPerThread),
                        [&](index_t c0, index_t c1) {
                          const index_t b = c0 * kOptimChunk, e = std::min(size, c1 * kOptimChunk);
                          for (index_t i = b; i < e; ++i) x[i] = x[i] * c;
                        });
  }
  return total;
}
}  // namespace detail

template <class T>
double clip_grad_norm(vector_view<T> grads, double max_norm, bool error_if_nonfinite, int threads) {
  return detail::ops_clip<T>(std::vector<vector_view<T>>{grads}, max_norm, error_if_nonfinite, threads);
}

template <class T>
double clip_grad_norm(const std::vector<vector_view<T>>& grads, double max_norm, bool error_if_nonfinite, int threads) {
  return detail::ops_clip<T>(grads, max_norm, error_if_nonfinite, threads);
}

}  // namespace lori

#endif  // LORI_OPS_OPTIM_HPP
