// lori/cuda/device_buffer.cuh - a minimal owning device allocation for callers and tests.
//
// lori's GPU functions never allocate behind the caller's back: they take device pointers/views and
// a stream, and report scratch sizes up front. device_buffer is the small RAII owner that callers
// (and lori's own tests and benchmarks) use to hold such memory. Every CUDA status is checked.
#ifndef LORI_CUDA_DEVICE_BUFFER_CUH
#define LORI_CUDA_DEVICE_BUFFER_CUH

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>
#include <vector>

namespace lori::cuda {

/// Owning, move-only array of n elements of T in device memory (cudaMalloc / cudaFree).
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  /// Allocates n elements (uninitialised). Throws lori::error on a negative size or a CUDA failure.
  explicit device_buffer(index_t n) : size_(n) {
    LORI_EXPECTS(n >= 0, "device_buffer: size must be non-negative");
    if (n > 0) LORI_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), static_cast<std::size_t>(n) * sizeof(T)));
  }
  /// Allocates and copies a host vector (synchronous).
  explicit device_buffer(const std::vector<T>& host) : device_buffer(static_cast<index_t>(host.size())) { upload(host); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~device_buffer() { release(); }

  T* data() noexcept { return ptr_; }
  const T* data() const noexcept { return ptr_; }
  index_t size() const noexcept { return size_; }
  std::size_t bytes() const noexcept { return static_cast<std::size_t>(size_) * sizeof(T); }

  /// Copies host -> device (synchronous); the host vector must have size() elements.
  void upload(const std::vector<T>& host) {
    LORI_EXPECTS(static_cast<index_t>(host.size()) == size_, "device_buffer::upload: size mismatch");
    if (size_ > 0) LORI_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice));
  }
  /// Copies device -> host (synchronous).
  std::vector<T> download() const {
    std::vector<T> host(static_cast<std::size_t>(size_));
    if (size_ > 0) LORI_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }
  /// Sets every byte to `byte` (e.g. 0xFF to poison outputs before a kernel writes them).
  void fill_bytes(int byte, cudaStream_t stream = nullptr) {
    if (size_ > 0) LORI_CUDA_CHECK(cudaMemsetAsync(ptr_, byte, bytes(), stream));
  }
  /// A row-major view of the buffer as rows x cols (rows * cols must equal size()).
  row_major_view<T> as_matrix(index_t rows, index_t cols) {
    LORI_EXPECTS(rows * cols == size_, "device_buffer::as_matrix: shape does not match the size");
    return row_major_view<T>(ptr_, rows, cols);
  }

 private:
  void release() noexcept {
    if (ptr_ != nullptr) cudaFree(ptr_);  // no throw from a destructor; a failure here is sticky anyway
    ptr_ = nullptr;
    size_ = 0;
  }
  T* ptr_ = nullptr;
  index_t size_ = 0;
};

}  // namespace lori::cuda

#endif  // LORI_CUDA_DEVICE_BUFFER_CUH
