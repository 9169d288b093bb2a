// lori/detail/cuda_common.cuh - private helpers shared by lori's CUDA kernels: element loads/stores
// in fp32, the cudaDataType of each storage type, launch arithmetic, thread-block cluster launch
// configuration and occupancy (cached per device), a row-major GEMM wrapper over cublasGemmEx (fp32
// accumulation), and the zeroing of register accumulator tiles.
#ifndef LORI_DETAIL_CUDA_COMMON_CUH
#define LORI_DETAIL_CUDA_COMMON_CUH

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"

#include "lori/core/float16.hpp"
#include "lori/error.hpp"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <library_types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace lori::detail {

/// Storage types the CUDA kernels accept.
template <class T>
inline constexpr bool is_cuda_storage_v =
    std::is_same_v<T, float> || std::is_same_v<T, ::lori::bfloat16> || std::is_same_v<T, ::lori::half>;

template <class T>
inline constexpr bool is_16bit_v = std::is_same_v<T, ::lori::bfloat16> || std::is_same_v<T, ::lori::half>;

/// Load one element as fp32 (exact widening).
template <class T>
__device__ __forceinline__ float ld_f(const T* p) {
  return ::lori::to_float(*p);
}
/// Store an fp32 value rounded to nearest even into storage type T.
template <class T>
__device__ __forceinline__ void st_f(T* p, float x) {
  *p = ::lori::from_float<T>(x);
}

template <class T>
constexpr cudaDataType_t cuda_data_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, ::lori::bfloat16>) return CUDA_R_16BF;
  else return CUDA_R_16F;
}

constexpr index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

/// Grid dimension from a 64-bit count, checked against CUDA's limit for that dimension.
inline unsigned grid_dim(index_t blocks, bool x_dimension = true) {
  const index_t lim = x_dimension ? index_t{2147483647} : index_t{65535};
  LORI_EXPECTS(blocks >= 0 && blocks <= lim, "lori::cuda: problem too large for one launch (grid dimension limit)");
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

inline int to_int(index_t v, const char* what) {
  if (!(v >= 0 && v <= std::numeric_limits<int>::max())) throw_expects(what, "value fits a 32-bit int (cuBLAS dimension)");
  return static_cast<int>(v);
}

/// Launch configuration of `blocks` blocks of `threads` threads with `smem` bytes of dynamic shared
/// memory, in thread-block clusters of `cluster` blocks along x, on `stream`. `attr` receives the
/// cluster attribute and must outlive the result (the configuration points at it); a caller that needs
/// more attributes passes an array and raises numAttrs.
inline cudaLaunchConfig_t cluster_config(unsigned blocks, unsigned threads, std::size_t smem, unsigned cluster,
                                         cudaStream_t stream, cudaLaunchAttribute& attr) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(blocks, 1, 1);
  cfg.blockDim = dim3(threads, 1, 1);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = cluster;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  return cfg;
}

/// Devices whose occupancy answers the caches of max_active_clusters hold (a device with a larger
/// ordinal is queried at every call).
inline constexpr int max_cached_devices = 32;

/// Clusters of `cluster` blocks of `kernel` (`threads` threads, `smem` bytes of dynamic shared
/// memory) that fit on the current device at once (a cluster must fit one GPC; 0 if none fits).
/// `cache` memoises positive answers per device: each (kernel, threads, smem, cluster) needs its own
/// (a function-local static of the caller, zero-initialised).
inline int max_active_clusters(const void* kernel, unsigned threads, std::size_t smem, unsigned cluster,
                               std::atomic<int> (&cache)[max_cached_devices]) {
  int dev = 0;
  LORI_CUDA_CHECK(cudaGetDevice(&dev));
  const bool cached = dev >= 0 && dev < max_cached_devices;
  if (cached) {
    const int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(cluster, threads, smem, cluster, nullptr, attr);
  int v = 0;
  LORI_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&v, kernel, &cfg));
  if (cached && v > 0) cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

/// Row-major GEMM on cuBLAS: C (M x N, ldc) = alpha * op(P) * op(Q) + beta * C, with
/// op(P) M x K (P stored K x M row-major when trans_p) and op(Q) K x N (Q stored N x K when trans_q).
/// P and Q share storage type ab; C has type c; fp32 accumulation (CUBLAS_COMPUTE_32F, no TF32).
/// A row-major matrix is the column-major transpose, so this runs C^T = op(Q)^T op(P)^T.
inline void gemm_row_major(cublasHandle_t h, bool trans_p, bool trans_q, index_t M, index_t N, index_t K, float alpha,
                           const void* P, index_t ldp, const void* Q, index_t ldq, float beta, void* C, index_t ldc,
                           cudaDataType_t ab, cudaDataType_t c) {
  if (M == 0 || N == 0) return;
  LORI_CUBLAS_CHECK(cublasGemmEx(h, trans_q ? CUBLAS_OP_T : CUBLAS_OP_N, trans_p ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 to_int(N, "gemm: N too large"), to_int(M, "gemm: M too large"),
                                 to_int(K, "gemm: K too large"), &alpha, Q, ab, to_int(ldq, "gemm: ld too large"), P, ab,
                                 to_int(ldp, "gemm: ld too large"), &beta, C, c, to_int(ldc, "gemm: ld too large"),
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/// The dynamic shared memory of the running kernel, 128-byte aligned (one declaration for all kernels).
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char lori_dynamic_smem[];
  return lori_dynamic_smem;
}

/// The hardware cluster barrier in two halves (sm_90): every thread of every block of the cluster
/// arrives (relaxed: no ordering; release: its earlier writes, distributed shared memory included,
/// become visible to the threads that then wait), and wait (acquire) blocks until all have arrived.
__device__ __forceinline__ void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory"); }
__device__ __forceinline__ void cluster_arrive_release() { asm volatile("barrier.cluster.arrive.release;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire;" ::: "memory"); }

/// Sets a register tile of fp32 accumulators to zero (fully unrolled: stays in registers).
template <int M, int N>
__device__ __forceinline__ void zero_acc(float (&acc)[M][N]) {
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int e = 0; e < N; ++e) acc[m][e] = 0.0f;
}

// Waits for the mbarrier at shared address `bar` to complete the phase of parity `parity`. A phase that
// never completes (a lost arrival or byte count: a bug) traps after 20 s of waiting by the global
// timer, so a test fails instead of hanging; the bound is in time, not in spins, because compute-
// sanitizer slows kernels by orders of magnitude.
__device__ __forceinline__ void mbar_wait_parity(std::uint32_t bar, std::uint32_t parity) {
  std::uint64_t start = 0;
  for (std::uint32_t spin = 1;; ++spin) {
    std::uint32_t done = 0;
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (done != 0) return;
    if ((spin & 1023u) == 0) {
      std::uint64_t now = 0;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
      if (start == 0) start = now;
      else if (now - start > 20000000000ull) __trap();
    }
  }
}

}  // namespace lori::detail

#endif  // LORI_DETAIL_CUDA_COMMON_CUH
