// lori/cuda/context.cuh - the owner of lori's library handles (cuBLAS, cuBLASLt, cuSPARSE) and the
// stream every lori GPU call is ordered on.
//
// Create one context per stream, once (handle creation costs milliseconds); pass it by reference to
// lori::cuda functions. It is not thread-safe: one host thread uses a context at a time (as with the
// underlying handles). The context never allocates device memory for lori's kernels: functions take
// caller memory and report workspace sizes first.
#ifndef LORI_CUDA_CONTEXT_CUH
#define LORI_CUDA_CONTEXT_CUH

#include "lori/config.hpp"
#include "lori/error.hpp"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusparse.h>

namespace lori::cuda {

/// Library handles bound to one stream, plus the device properties kernels size their grids with.
class context {
 public:
  /// Creates the handles on the current device and binds them to `stream` (nullptr: the legacy
  /// default stream). Throws lori::error when a handle cannot be created.
  explicit context(cudaStream_t stream = nullptr) : stream_(stream) {
    LORI_CUDA_CHECK(cudaGetDevice(&device_));
    LORI_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device_));
    LORI_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative_, cudaDevAttrCooperativeLaunch, device_));
    try {
      LORI_CUBLAS_CHECK(cublasCreate(&cublas_));
      disallow_reduced_precision_reduction(cublas_);
      LORI_CUBLAS_CHECK(cublasLtCreate(&cublaslt_));
      LORI_CUSPARSE_CHECK(cusparseCreate(&cusparse_));
      set_stream(stream);
    } catch (...) {
      release();
      throw;
    }
  }
  context(const context&) = delete;
  context& operator=(const context&) = delete;
  ~context() { release(); }

  /// Rebinds every handle to `stream`.
  void set_stream(cudaStream_t stream) {
    stream_ = stream;
    LORI_CUBLAS_CHECK(cublasSetStream(cublas_, stream));
    LORI_CUSPARSE_CHECK(cusparseSetStream(cusparse_, stream));
  }

  cudaStream_t stream() const noexcept { return stream_; }

  /// A second stream and cuBLAS handle on which lori overlaps independent work with the main
  /// stream (created on first use; lori orders them against stream() with events).
  cudaStream_t aux_stream() {
    ensure_aux();
    return aux_stream_;
  }
  cublasHandle_t aux_cublas() {
    ensure_aux();
    return aux_cublas_;
  }
  /// Event i of a small pool (i < 32) for ordering stream() and aux_stream(); created on first use.
  cudaEvent_t event(int i) {
    LORI_EXPECTS(i >= 0 && i < max_events, "context::event: index out of range");
    if (events_[i] == nullptr) LORI_CUDA_CHECK(cudaEventCreateWithFlags(&events_[i], cudaEventDisableTiming));
    return events_[i];
  }
  static constexpr int max_events = 32;
  cublasHandle_t cublas() const noexcept { return cublas_; }
  cublasLtHandle_t cublaslt() const noexcept { return cublaslt_; }
  cusparseHandle_t cusparse() const noexcept { return cusparse_; }
  /// The device the handles were created on, its SM count, and whether it supports cooperative launch.
  int device() const noexcept { return device_; }
  int sm_count() const noexcept { return sm_count_; }
  bool cooperative_launch() const noexcept { return cooperative_ != 0; }

 private:
  // cuBLAS may split K and reduce the partial sums in the OUTPUT type (bf16/fp16) for 16-bit outputs;
  // with beta = 1 (merge_into, the beta = 1 layer paths) that rounds W-sized intermediates and costs
  // a bf16 ulp of |W| (first GPU run: merge_into off its fp32-accumulation bound by 17x). lori wants
  // fp32 accumulation end to end, so every handle it owns forbids that reduction.
  static void disallow_reduced_precision_reduction(cublasHandle_t h) {
    LORI_CUBLAS_CHECK(cublasSetMathMode(
        h, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  }
  void ensure_aux() {
    if (aux_stream_ == nullptr) LORI_CUDA_CHECK(cudaStreamCreateWithFlags(&aux_stream_, cudaStreamNonBlocking));
    if (aux_cublas_ == nullptr) {
      LORI_CUBLAS_CHECK(cublasCreate(&aux_cublas_));
      disallow_reduced_precision_reduction(aux_cublas_);
      LORI_CUBLAS_CHECK(cublasSetStream(aux_cublas_, aux_stream_));
    }
  }
  void release() noexcept {
    for (auto& e : events_) {
      if (e != nullptr) cudaEventDestroy(e);
      e = nullptr;
    }
    if (aux_cublas_ != nullptr) cublasDestroy(aux_cublas_);
    if (aux_stream_ != nullptr) cudaStreamDestroy(aux_stream_);
    aux_cublas_ = nullptr;
    aux_stream_ = nullptr;
    if (cusparse_ != nullptr) cusparseDestroy(cusparse_);
    if (cublaslt_ != nullptr) cublasLtDestroy(cublaslt_);
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    cusparse_ = nullptr;
    cublaslt_ = nullptr;
    cublas_ = nullptr;
  }
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t cublaslt_ = nullptr;
  cusparseHandle_t cusparse_ = nullptr;
  cudaStream_t aux_stream_ = nullptr;
  cublasHandle_t aux_cublas_ = nullptr;
  cudaEvent_t events_[max_events] = {};
  int device_ = 0;
  int sm_count_ = 1;
  int cooperative_ = 0;
};

}  // namespace lori::cuda

#endif  // LORI_CUDA_CONTEXT_CUH
