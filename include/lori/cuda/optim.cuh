// lori/cuda/optim.cuh - masked optimizers on compact device values: one fused kernel for all tensors.
//
// LoRI-S trains only the kept entries of each B, stored compactly (sparse_b values), so the
// optimizer runs on dense 1-D arrays: parameters p (T), gradients g (T), and for AdamW the moments
// m, v (fp32). A multi_tensor_plan describes every tensor of a model once (pointers do not move
// between steps) and uploads a chunk table; each step is then ONE kernel launch over all tensors.
//
// AdamW is torch.optim.AdamW's rule (amsgrad = False, maximize = False), step t >= 1:
//   p ← p·(1 − lr·wd);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
//   step = lr / (1 − β1^t);  denom = sqrt(v) / sqrt(1 − β2^t) + eps;  p ← p − step·m / denom
// SGD (no momentum): p ← p − lr·(g + wd·p).
// Arithmetic in fp32; p rounded to T once per step. Bytes touched per value (T = bf16): AdamW 22
// (p r+w, g r, m r+w, v r+w), SGD 6.
#ifndef LORI_CUDA_OPTIM_CUH
#define LORI_CUDA_OPTIM_CUH

#include "lori/config.hpp"
#include "lori/core/float16.hpp"
#include "lori/cuda/context.cuh"
#include "lori/cuda/device_buffer.cuh"
#include "lori/error.hpp"

#include "lori/detail/cuda_common.cuh"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace lori::cuda {

/// One tensor the optimizer updates: n values at param, grad (and fp32 moments m, v for AdamW; may
/// be null for SGD). Device pointers; they must stay valid while a plan refers to them.
template <class T>
struct optim_tensor {
  T* param = nullptr;
  const T* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  index_t n = 0;
};

/// AdamW hyper-parameters (torch.optim.AdamW defaults except lr).
struct adamw_params {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 1e-2f;
};

/// Device descriptors of a set of tensors and the chunk table of the fused kernel (built once).
template <class T>
class multi_tensor_plan {
 public:
  /// Elements per block of the fused kernel.
  static constexpr index_t chunk = 4096;

  multi_tensor_plan() = default;
  /// Uploads descriptors and chunk table (synchronous). `need_moments`: every tensor must carry m
  /// and v (AdamW); plans for SGD may omit them.
  explicit multi_tensor_plan(const std::vector<optim_tensor<T>>& tensors, bool need_moments = true) {
    std::vector<chunk_entry> table;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      LORI_EXPECTS(t.n >= 0, "multi_tensor_plan: negative tensor size");
      LORI_EXPECTS(t.n == 0 || (t.param != nullptr && t.grad != nullptr), "multi_tensor_plan: null param or grad");
      LORI_EXPECTS(!need_moments || t.n == 0 || (t.m != nullptr && t.v != nullptr),
                   "multi_tensor_plan: AdamW needs m and v for every tensor");
      for (index_t s = 0; s < t.n; s += chunk) table.push_back({static_cast<std::int64_t>(i), s});
      total_ += t.n;
    }
    LORI_EXPECTS(static_cast<index_t>(table.size()) <= index_t{2147483647}, "multi_tensor_plan: too many chunks");
    has_moments_ = need_moments;
    tensors_ = device_buffer<optim_tensor<T>>(tensors);
    chunks_ = device_buffer<chunk_entry>(table);
  }

  struct chunk_entry {
    std::int64_t tensor;
    std::int64_t start;
  };

  index_t chunks() const noexcept { return chunks_.size(); }
  index_t total_values() const noexcept { return total_; }
  bool has_moments() const noexcept { return has_moments_; }
  const optim_tensor<T>* tensors() const noexcept { return tensors_.data(); }
  const chunk_entry* chunk_table() const noexcept { return chunks_.data(); }

 private:
  device_buffer<optim_tensor<T>> tensors_;
  device_buffer<chunk_entry> chunks_;
  index_t total_ = 0;
  bool has_moments_ = false;
};

/// One AdamW step (t = step, counted from 1) over every tensor of the plan: one kernel launch.
template <class T>
void adamw_step(context& ctx, const multi_tensor_plan<T>& plan, const adamw_params& hp, std::int64_t step);

/// One SGD step p ← p − lr·(g + wd·p) over every tensor of the plan: one kernel launch.
template <class T>
void sgd_step(context& ctx, const multi_tensor_plan<T>& plan, float lr, float weight_decay = 0.0f);

// =====================================================================================================
// Implementation
// =====================================================================================================
namespace detail_optim {
inline constexpr int threads = 256;
inline constexpr int per_thread = 16;  // threads * per_thread == multi_tensor_plan::chunk

struct adam_scalars {
  float lr, beta1, beta2, eps, decay;  // decay = 1 - lr*wd
  float step_size;                     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;                  // 1 / sqrt(1 - beta2^t)
};

// One AdamW update of element i (fp32 math), moments read and written in place.
template <class T>
__device__ __forceinline__ T adamw_one(T param, T grad, float& m, float& v, const adam_scalars& a) {
  const float g = ::lori::to_float(grad);
  float p = ::lori::to_float(param) * a.decay;
  m = a.beta1 * m + (1.0f - a.beta1) * g;
  v = a.beta2 * v + (1.0f - a.beta2) * g * g;
  const float denom = sqrtf(v) * a.inv_sqrt_bc2 + a.eps;
  p -= a.step_size * (m / denom);
  return ::lori::from_float<T>(p);
}

// Two consecutive T as one aligned load/store unit (8 bytes for fp32, 4 for 16-bit).
template <class T>
struct alignas(2 * sizeof(T)) two_t {
  T x[2];
};

template <class T>
__global__ void __launch_bounds__(threads)
    adamw_kernel(const optim_tensor<T>* __restrict__ tensors,
                 const typename multi_tensor_plan<T>::chunk_entry* __restrict__ chunks, adam_scalars a) {
  const auto ch = chunks[blockIdx.x];
  const optim_tensor<T> t = tensors[ch.tensor];
  const index_t end = ch.start + multi_tensor_plan<T>::chunk < t.n ? ch.start + multi_tensor_plan<T>::chunk : t.n;
  // Pairs path when every array allows 2-element accesses (chunk starts are multiples of 4096, so
  // the base pointers decide); block-uniform.
  const bool pairs = ((reinterpret_cast<std::uintptr_t>(t.param) | reinterpret_cast<std::uintptr_t>(t.grad)) %
                          (2 * sizeof(T)) ==
                      0) &&
                     ((reinterpret_cast<std::uintptr_t>(t.m) | reinterpret_cast<std::uintptr_t>(t.v)) % 8 == 0);
  if (pairs) {
#pragma unroll 4
    for (int u = 0; u < per_thread / 2; ++u) {
      const index_t i = ch.start + 2 * (static_cast<index_t>(u) * threads + threadIdx.x);
      if (i + 1 < end) {
        two_t<T> p = *reinterpret_cast<const two_t<T>*>(t.param + i);
        const two_t<T> g = *reinterpret_cast<const two_t<T>*>(t.grad + i);
        float2 m = *reinterpret_cast<const float2*>(t.m + i);
        float2 v = *reinterpret_cast<const float2*>(t.v + i);
        p.x[0] = adamw_one(p.x[0], g.x[0], m.x, v.x, a);
        p.x[1] = adamw_one(p.x[1], g.x[1], m.y, v.y, a);
        *reinterpret_cast<two_t<T>*>(t.param + i) = p;
        *reinterpret_cast<float2*>(t.m + i) = m;
        *reinterpret_cast<float2*>(t.v + i) = v;
      } else if (i < end) {  // odd tail element of the tensor
        float m = t.m[i], v = t.v[i];
        t.param[i] = adamw_one(t.param[i], t.grad[i], m, v, a);
        t.m[i] = m;
        t.v[i] = v;
      }
    }
  } else {
#pragma unroll 4
    for (int u = 0; u < per_thread; ++u) {
      const index_t i = ch.start + static_cast<index_t>(u) * threads + threadIdx.x;
      if (i < end) {
        float m = t.m[i], v = t.v[i];
        t.param[i] = adamw_one(t.param[i], t.grad[i], m, v, a);
        t.m[i] = m;
        t.v[i] = v;
      }
    }
  }
}

template <class T>
__global__ void __launch_bounds__(threads)
    sgd_kernel(const optim_tensor<T>* __restrict__ tensors,
               const typename multi_tensor_plan<T>::chunk_entry* __restrict__ chunks, float lr, float wd) {
  const auto ch = chunks[blockIdx.x];
  const optim_tensor<T> t = tensors[ch.tensor];
  const index_t end = ch.start + multi_tensor_plan<T>::chunk < t.n ? ch.start + multi_tensor_plan<T>::chunk : t.n;
#pragma unroll 4
  for (int u = 0; u < per_thread; ++u) {
    const index_t i = ch.start + static_cast<index_t>(u) * threads + threadIdx.x;
    if (i < end) {
      const float p = ::lori::to_float(t.param[i]);
      const float g = ::lori::to_float(t.grad[i]);
      t.param[i] = ::lori::from_float<T>(p - lr * (g + wd * p));
    }
  }
}
}  // namespace detail_optim

template <class T>
void adamw_step(context& ctx, const multi_tensor_plan<T>& plan, const adamw_params& hp, std::int64_t step) {
  static_assert(detail::is_cuda_storage_v<T>, "adamw_step: T must be float, bfloat16 or half");
  static_assert(detail_optim::threads * detail_optim::per_thread == multi_tensor_plan<T>::chunk, "chunk mismatch");
  LORI_EXPECTS(step >= 1, "adamw_step: step counts from 1");
  LORI_EXPECTS(plan.has_moments(), "adamw_step: the plan was built without moments (m, v)");
  LORI_EXPECTS(hp.lr >= 0.0f && hp.eps >= 0.0f && hp.weight_decay >= 0.0f, "adamw_step: lr, eps and weight_decay must be >= 0");
  LORI_EXPECTS(hp.beta1 >= 0.0f && hp.beta1 < 1.0f && hp.beta2 >= 0.0f && hp.beta2 < 1.0f,
               "adamw_step: betas must be in [0, 1)");
  if (plan.chunks() == 0) return;
  const double bc1 = 1.0 - std::pow(static_cast<double>(hp.beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(hp.beta2), static_cast<double>(step));
  detail_optim::adam_scalars a{hp.lr,
                               hp.beta1,
                               hp.beta2,
                               hp.eps,
                               static_cast<float>(1.0 - static_cast<double>(hp.lr) * hp.weight_decay),
                               static_cast<float>(hp.lr / bc1),
                               static_cast<float>(1.0 / std::sqrt(bc2))};
  detail_optim::adamw_kernel<T><<<detail::grid_dim(plan.chunks()), detail_optim::threads, 0, ctx.stream()>>>(
      plan.tensors(), plan.chunk_table(), a);
  LORI_CUDA_CHECK_LAUNCH();
}

template <class T>
void sgd_step(context& ctx, const multi_tensor_plan<T>& plan, float lr, float weight_decay) {
  static_assert(detail::is_cuda_storage_v<T>, "sgd_step: T must be float, bfloat16 or half");
  LORI_EXPECTS(lr >= 0.0f && weight_decay >= 0.0f, "sgd_step: lr and weight_decay must be >= 0");
  if (plan.chunks() == 0) return;
  detail_optim::sgd_kernel<T><<<detail::grid_dim(plan.chunks()), detail_optim::threads, 0, ctx.stream()>>>(
      plan.tensors(), plan.chunk_table(), lr, weight_decay);
  LORI_CUDA_CHECK_LAUNCH();
}

}  // namespace lori::cuda

#endif  // LORI_CUDA_OPTIM_CUH
