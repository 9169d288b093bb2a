// lori/cuda/merge.cuh - merge T adapters into a base weight in one pass over W.
//
//   W (d x k) += Σₜ sₜ·Bₜ·Aₜ      Bₜ d x rₜ (dense, or a sparse_b), Aₜ rₜ x k
//
// The T low-rank terms are one GEMM with K = R = Σ rₜ: W += [s₁B₁ | … | s_TB_T]·[A₁; …; A_T]. lori packs
// the two thin operands into caller workspace ((d + k)·R elements of T) and runs ONE cuBLAS GEMM with
// beta = 1, which reads and writes W exactly once (fp32 accumulation, W rounded to T once). For 4
// adapters of rank 32 into a 14336 x 4096 bf16 W that is 2·117 MB of W traffic against 4.5 MB of
// packed operands and 15 GFLOP (about 19 µs of tensor-core time on an H100, under W's ~78 µs).
// When every sₜ is equal it becomes the GEMM's alpha and the packed Bₜ are exact copies; otherwise sₜ·Bₜ
// is rounded to T in the packed operand (16-bit: relative 2^-8 of each term; exact if sₜ is a power of 2).
#ifndef LORI_CUDA_MERGE_CUH
#define LORI_CUDA_MERGE_CUH

#include "lori/config.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/cuda/context.cuh"
#include "lori/cuda/sparse_b.cuh"
#include "lori/error.hpp"

#include "lori/detail/cuda_common.cuh"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace lori::cuda {

/// One adapter to merge: scale s, A (r x k, row-major, leading dimension >= k) and either a dense B
/// (d x r, row-major, leading dimension >= r) or, when B_dense is null, the sparse B `B_sparse`.
template <class T>
struct merge_source {
  float scale = 1.0f;
  row_major_view<const T> A;
  row_major_view<const T> B_dense;  ///< empty (0 x 0) when B_sparse is used
  const sparse_b<T>* B_sparse = nullptr;
};

/// Workspace bytes merge_into needs: (d + k)·R elements of T (R = Σ rₜ), plus alignment padding.
template <class T>
std::size_t merge_workspace_bytes(index_t d, index_t k, const std::vector<merge_source<T>>& sources);

/// W += Σₜ sₜ·Bₜ·Aₜ, one GEMM over W (see the file comment). Stream-ordered on ctx.
template <class T>
void merge_into(context& ctx, row_major_view<T> W, const std::vector<merge_source<T>>& sources, void* workspace,
                std::size_t workspace_bytes);

// =====================================================================================================
// Implementation
// =====================================================================================================
namespace detail_merge {

template <class T>
__global__ void pack_dense_b_kernel(const T* __restrict__ B, index_t d, index_t r, index_t ldb, float s,
                                    T* __restrict__ out, index_t ldo) {
  const index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (e >= d * r) return;
  const index_t i = e / r, j = e - i * r;
  out[i * ldo + j] = s == 1.0f ? B[i * ldb + j] : ::lori::from_float<T>(s * ::lori::to_float(B[i * ldb + j]));
}

template <class T>
index_t source_rank(const merge_source<T>& src) {
  return src.B_sparse != nullptr && src.B_dense.empty() ? src.B_sparse->cols() : src.B_dense.cols();
}

inline std::size_t align256(std::size_t b) { return (b + 255) / 256 * 256; }

}  // namespace detail_merge

template <class T>
std::size_t merge_workspace_bytes(index_t d, index_t k, const std::vector<merge_source<T>>& sources) {
  LORI_EXPECTS(d >= 0 && k >= 0, "merge_workspace_bytes: negative size");
  index_t R = 0;
  for (const auto& s : sources) R += detail_merge::source_rank(s);
  return detail_merge::align256(static_cast<std::size_t>(d * R) * sizeof(T)) +
         detail_merge::align256(static_cast<std::size_t>(R * k) * sizeof(T));
}

template <class T>
void merge_into(context& ctx, row_major_view<T> W, const std::vector<merge_source<T>>& sources, void* workspace,
                std::size_t workspace_bytes) {
  static_assert(detail::is_cuda_storage_v<T>, "merge_into: T must be float, bfloat16 or half");
  const index_t d = W.rows(), k = W.cols();
  index_t R = 0;
  bool same_scale = true;
  for (const auto& src : sources) {
    const bool sparse = src.B_sparse != nullptr && src.B_dense.empty();
    LORI_EXPECTS(sparse || src.B_sparse == nullptr, "merge_into: give either B_dense or B_sparse, not both");
    const index_t r = detail_merge::source_rank(src);
    LORI_EXPECTS(r >= 1, "merge_into: every adapter needs rank >= 1 (B missing?)");
    LORI_EXPECTS(src.A.rows() == r && src.A.cols() == k, "merge_into: A must be r x k");
    LORI_EXPECTS(sparse ? src.B_sparse->rows() == d : src.B_dense.rows() == d, "merge_into: B must be d x r");
    LORI_EXPECTS(src.scale == src.scale, "merge_into: scale is NaN");
    same_scale = same_scale && src.scale == sources.front().scale;
    R += r;
  }
  if (d == 0 || k == 0 || R == 0) return;
  LORI_EXPECTS(workspace != nullptr && workspace_bytes >= merge_workspace_bytes(d, k, sources),
               "merge_into: workspace missing or smaller than merge_workspace_bytes()");
  LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % 256 == 0, "merge_into: workspace must be 256-byte aligned");
  T* Bcat = static_cast<T*>(workspace);  // d x R
  T* Acat = reinterpret_cast<T*>(static_cast<unsigned char*>(workspace) +
                                 detail_merge::align256(static_cast<std::size_t>(d * R) * sizeof(T)));  // R x k
  const float alpha = same_scale ? sources.front().scale : 1.0f;
  index_t off = 0;
  for (const auto& src : sources) {
    const index_t r = detail_merge::source_rank(src);
    const float s = same_scale ? 1.0f : src.scale;
    if (src.B_dense.empty()) {
      src.B_sparse->scatter_to_dense(Bcat + off, R, ctx.stream(), s);
    } else {
      detail_merge::pack_dense_b_kernel<T><<<detail::grid_dim(detail::ceil_div(d * r, 256)), 256, 0, ctx.stream()>>>(
          src.B_dense.data(), d, r, src.B_dense.ld(), s, Bcat + off, R);
      LORI_CUDA_CHECK_LAUNCH();
    }
    LORI_CUDA_CHECK(cudaMemcpy2DAsync(Acat + off * k, static_cast<std::size_t>(k) * sizeof(T), src.A.data(),
                                      static_cast<std::size_t>(src.A.ld()) * sizeof(T),
                                      static_cast<std::size_t>(k) * sizeof(T), static_cast<std::size_t>(r),
                                      cudaMemcpyDeviceToDevice, ctx.stream()));
    off += r;
  }
  const cudaDataType_t t = detail::cuda_data_type<T>();
  detail::gemm_row_major(ctx.cublas(), false, false, d, k, R, alpha, Bcat, R, Acat, k, 1.0f, W.data(), W.ld(), t, t);
}

}  // namespace lori::cuda

#endif  // LORI_CUDA_MERGE_CUH
