// lori/detail/cuda_pipeline.cuh - private helpers for streaming kernels: asynchronous global ->
// shared copies (cp.async, sm_80+) with zero fill, and their group commit / wait.
#ifndef LORI_DETAIL_CUDA_PIPELINE_CUH
#define LORI_DETAIL_CUDA_PIPELINE_CUH

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace lori::detail {

/// 8 consecutive 16-bit elements of row t (columns c .. c+7) of a row-major matrix M (leading
/// dimension ld, cols columns) as 16 bytes, zeros outside the matrix (row_ok false, or c + i >=
/// cols). Checked 2-byte loads: the path for rows that are not 16-byte aligned.
template <class T>
__device__ __forceinline__ uint4 load8_or_zero(const T* M, index_t ld, index_t cols, bool row_ok, index_t t, index_t c) {
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if (!row_ok) return v;
  const T* p = M + t * ld + c;
  std::uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
  for (int i = 0; i < 8; ++i)
    if (c + i < cols) w[i >> 1] |= static_cast<std::uint32_t>(p[i].bits) << (16 * (i & 1));
  v.x = w[0];
  v.y = w[1];
  v.z = w[2];
  v.w = w[3];
  return v;
}

/// 16 bytes global -> shared without a register round trip, L2 only (.cg: streamed data is not
/// kept in L1). pred false: the 16 shared bytes are zero-filled and nothing is read (src may be any
/// valid address). Both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  const int bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem_src), "r"(bytes) : "memory");
}

/// 4 bytes global -> shared (.ca), zero-filled when pred is false. Both addresses 4-byte aligned.
__device__ __forceinline__ void cp_async4(void* smem_dst, const void* gmem_src, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  const int bytes = pred ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem_src), "r"(bytes) : "memory");
}

/// Closes the group of cp.async issued by this thread since the last commit (an empty group is fine).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

/// Waits until at most N of this thread's committed groups are still in flight. Other threads'
/// copies become visible only after a following barrier.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace lori::detail

#endif  // LORI_DETAIL_CUDA_PIPELINE_CUH
