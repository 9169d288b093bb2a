// lori/cuda/sparse_b.cuh - a LoRI-S B (d x r, a fixed mask) on the device.
//
// One owner holds BOTH index formats of the same kept set, in the same order:
//   * CSR: row_ptr (d + 1 int32), col_idx (nnz int32), columns ascending within a row;
//   * bitmask: the lori::bitmask word layout (row-major 64-bit words, rows padded to whole words);
// and the packed values (nnz elements of T), kept entries in row-major order - the order of
// lori::bitmask::to_csr(), so packed values move between host and device unchanged.
// The index arrays cost (d + 1 + nnz) * 4 + d * ceil(r / 64) * 8 bytes (69 KB for 4096 x 32 at 90%
// sparsity); kernels use whichever suits them.
//
// Build from a host lori::bitmask (+ packed or dense host values), or from a mask already on the
// device (building from a device mask synchronises the stream once, to learn nnz for allocation).
#ifndef LORI_CUDA_SPARSE_B_CUH
#define LORI_CUDA_SPARSE_B_CUH

#include "lori/config.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/cuda/device_buffer.cuh"
#include "lori/error.hpp"
#include "lori/mask/bitmask.hpp"

#include "lori/detail/cuda_common.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace lori::cuda {

/// Trivially copyable view of a device sparse B (see sparse_b). values is mutable: gradients and
/// optimizers write it.
template <class T>
struct sparse_b_view {
  index_t rows = 0;                       ///< d
  index_t cols = 0;                       ///< r
  index_t nnz = 0;                        ///< kept entries
  index_t words_per_row = 0;              ///< ceil(r / 64)
  const std::int32_t* row_ptr = nullptr;  ///< rows + 1 offsets into col_idx / values
  const std::int32_t* col_idx = nullptr;  ///< nnz column indices, ascending per row
  const std::uint64_t* words = nullptr;   ///< rows * words_per_row mask words
  T* values = nullptr;                    ///< nnz packed values, row-major order of kept entries
};

namespace detail_sparse {
__global__ void row_counts_kernel(const std::uint64_t* words, index_t rows, index_t wpr, std::int32_t* counts) {
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (i >= rows) return;
  int c = 0;
  for (index_t w = 0; w < wpr; ++w) c += __popcll(words[i * wpr + w]);
  counts[i] = c;
}

// In-place exclusive scan of counts[0..rows) into row_ptr[0..rows], one block of 1024 threads (rows
// is d, at most a few hundred thousand: one block is ample and keeps the scan deterministic).
__global__ void exclusive_scan_kernel(std::int32_t* row_ptr, index_t rows) {
  __shared__ std::int32_t warp_sums[32];
  __shared__ std::int32_t carry_s;
  if (threadIdx.x == 0) carry_s = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (index_t base = 0; base < rows; base += 1024) {
    const index_t i = base + threadIdx.x;
    const std::int32_t v = i < rows ? row_ptr[i] : 0;
    std::int32_t x = v;
    for (int o = 1; o < 32; o <<= 1) {
      const std::int32_t y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
      std::int32_t s = warp_sums[lane];
      for (int o = 1; o < 32; o <<= 1) {
        const std::int32_t y = __shfl_up_sync(0xffffffffu, s, o);
        if (lane >= o) s += y;
      }
      warp_sums[lane] = s;  // inclusive prefix of warp totals
    }
    __syncthreads();
    const std::int32_t carry = carry_s;
    const std::int32_t incl = x + (warp > 0 ? warp_sums[warp - 1] : 0) + carry;
    if (i < rows) row_ptr[i] = incl - v;
    __syncthreads();  // everyone has read carry_s and warp_sums
    if (threadIdx.x == 1023) carry_s = incl;
    __syncthreads();
  }
  if (threadIdx.x == 0) row_ptr[rows] = carry_s;
}

__global__ void fill_col_idx_kernel(const std::uint64_t* words, index_t rows, index_t wpr, const std::int32_t* row_ptr,
                                    std::int32_t* col_idx) {
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (i >= rows) return;
  std::int32_t p = row_ptr[i];
  for (index_t w = 0; w < wpr; ++w) {
    std::uint64_t b = words[i * wpr + w];
    while (b) {
      const int bit = __ffsll(static_cast<long long>(b)) - 1;
      col_idx[p++] = static_cast<std::int32_t>(w * 64 + bit);
      b &= b - 1;
    }
  }
}

// Position of kept element (i, j) in the packed values, from the mask words: row_ptr[i] plus the
// kept bits of row i before column j (one popcount per preceding word; r <= 64 is one word).
template <class T>
__device__ __forceinline__ std::int32_t packed_index(const sparse_b_view<T>& b, index_t i, index_t j) {
  const std::uint64_t* row = b.words + i * b.words_per_row;
  std::int32_t p = b.row_ptr[i];
  const index_t w = j >> 6;
  for (index_t q = 0; q < w; ++q) p += __popcll(row[q]);
  const int bit = static_cast<int>(j & 63);
  return p + __popcll(row[w] & ((std::uint64_t{1} << bit) - 1u));
}

// One thread per dense element (coalesced over the dense matrix): gather the kept ones.
template <class T>
__global__ void gather_kernel(sparse_b_view<T> b, const T* dense, index_t ld) {
  const index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (e >= b.rows * b.cols) return;
  const index_t i = e / b.cols, j = e - i * b.cols;
  if ((b.words[i * b.words_per_row + (j >> 6)] >> (j & 63)) & 1u) b.values[packed_index(b, i, j)] = dense[i * ld + j];
}

// One thread per dense element: write s * B (zeros where not kept) as type U.
template <class T, class U>
__global__ void scatter_kernel(sparse_b_view<T> b, U* dense, index_t ld, float s) {
  const index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (e >= b.rows * b.cols) return;
  const index_t i = e / b.cols, j = e - i * b.cols;
  float x = 0.0f;
  if ((b.words[i * b.words_per_row + (j >> 6)] >> (j & 63)) & 1u) x = s * ::lori::to_float(b.values[packed_index(b, i, j)]);
  dense[i * ld + j] = ::lori::from_float<U>(x);
}
}  // namespace detail_sparse

/// Owning device sparse B: mask words, CSR indices and packed values (see the file comment).
template <class T>
class sparse_b {
  static_assert(detail::is_cuda_storage_v<T>, "sparse_b: T must be float, lori::bfloat16 or lori::half");

 public:
  sparse_b() = default;

  /// From a host mask and its packed values (mask.count() values in row-major kept order, as
  /// lori::bitmask::to_csr lists them). Synchronous uploads. Throws when nnz exceeds int32.
  static sparse_b from_host(const bitmask& mask, const std::vector<T>& packed) {
    LORI_EXPECTS(static_cast<index_t>(packed.size()) == mask.count(), "sparse_b::from_host: need mask.count() packed values");
    const auto csr = mask.to_csr<std::int32_t>();
    sparse_b b;
    b.rows_ = mask.rows();
    b.cols_ = mask.cols();
    b.wpr_ = mask.words_per_row();
    b.nnz_ = csr.nnz();
    b.row_ptr_ = device_buffer<std::int32_t>(csr.row_ptr);
    b.col_idx_ = device_buffer<std::int32_t>(csr.col_idx);
    b.words_ = device_buffer<std::uint64_t>(mask.words());
    b.values_ = device_buffer<T>(packed);
    return b;
  }

  /// From a host mask and a dense host B (rows x cols of the mask): keeps B's entries under the mask.
  static sparse_b from_host_dense(const bitmask& mask, row_major_view<const T> dense) {
    LORI_EXPECTS(dense.rows() == mask.rows() && dense.cols() == mask.cols(), "sparse_b::from_host_dense: shape mismatch");
    std::vector<T> packed;
    packed.reserve(static_cast<std::size_t>(mask.count()));
    const auto v = mask.view();
    for (index_t i = 0; i < mask.rows(); ++i)
      for (index_t j = 0; j < mask.cols(); ++j)
        if (v.test(i, j)) packed.push_back(dense(i, j));
    return from_host(mask, packed);
  }

  /// From a device mask (rows x cols, lori::bitmask word layout with zero padding bits, words_per_row
  /// = ceil(cols / 64)) on ctx's stream. Values are left uninitialised; fill them with
  /// gather_from_dense or by writing values(). Synchronises `stream` once (nnz decides allocation).
  static sparse_b from_device_mask(const std::uint64_t* d_words, index_t rows, index_t cols, cudaStream_t stream) {
    LORI_EXPECTS(rows >= 0 && cols >= 0, "sparse_b::from_device_mask: negative shape");
    LORI_EXPECTS(d_words != nullptr || rows * cols == 0, "sparse_b::from_device_mask: null mask");
    LORI_EXPECTS(rows < std::numeric_limits<std::int32_t>::max(), "sparse_b::from_device_mask: too many rows");
    sparse_b b;
    b.rows_ = rows;
    b.cols_ = cols;
    b.wpr_ = bitmask_words_per_row(cols);
    b.words_ = device_buffer<std::uint64_t>(rows * b.wpr_);
    if (b.words_.size() > 0)
      LORI_CUDA_CHECK(cudaMemcpyAsync(b.words_.data(), d_words, b.words_.bytes(), cudaMemcpyDeviceToDevice, stream));
    b.row_ptr_ = device_buffer<std::int32_t>(rows + 1);
    const unsigned blocks = detail::grid_dim(detail::ceil_div(rows, 256));
    if (rows > 0) {
      detail_sparse::row_counts_kernel<<<blocks, 256, 0, stream>>>(b.words_.data(), rows, b.wpr_, b.row_ptr_.data());
      LORI_CUDA_CHECK_LAUNCH();
    }
    detail_sparse::exclusive_scan_kernel<<<1, 1024, 0, stream>>>(b.row_ptr_.data(), rows);
    LORI_CUDA_CHECK_LAUNCH();
    std::int32_t nnz = 0;
    LORI_CUDA_CHECK(cudaMemcpyAsync(&nnz, b.row_ptr_.data() + rows, sizeof nnz, cudaMemcpyDeviceToHost, stream));
    LORI_CUDA_CHECK(cudaStreamSynchronize(stream));
    // Counts are non-negative and each at most cols, so a negative total means int32 overflow.
    LORI_EXPECTS(nnz >= 0, "sparse_b::from_device_mask: number of kept entries does not fit int32");
    b.nnz_ = nnz;
    b.col_idx_ = device_buffer<std::int32_t>(nnz);
    b.values_ = device_buffer<T>(nnz);
    if (rows > 0 && nnz > 0) {
      detail_sparse::fill_col_idx_kernel<<<blocks, 256, 0, stream>>>(b.words_.data(), rows, b.wpr_, b.row_ptr_.data(),
                                                                     b.col_idx_.data());
      LORI_CUDA_CHECK_LAUNCH();
    }
    return b;
  }

  /// values[p] = dense(i, j) for every kept (i, j); dense is a device rows x cols row-major matrix
  /// with leading dimension ld >= cols. Stream-ordered.
  void gather_from_dense(const T* dense, index_t ld, cudaStream_t stream) {
    LORI_EXPECTS(ld >= cols_, "sparse_b::gather_from_dense: ld < cols");
    LORI_EXPECTS(dense != nullptr || rows_ == 0, "sparse_b::gather_from_dense: null input");
    if (rows_ == 0 || nnz_ == 0) return;
    detail_sparse::gather_kernel<T><<<detail::grid_dim(detail::ceil_div(rows_ * cols_, 256)), 256, 0, stream>>>(view(), dense, ld);
    LORI_CUDA_CHECK_LAUNCH();
  }

  /// dense = s * B (zeros where not kept) as type U (float, bfloat16 or half), rows x cols row-major,
  /// leading dimension ld >= cols. Stream-ordered.
  template <class U>
  void scatter_to_dense(U* dense, index_t ld, cudaStream_t stream, float s = 1.0f) const {
    LORI_EXPECTS(ld >= cols_, "sparse_b::scatter_to_dense: ld < cols");
    LORI_EXPECTS(dense != nullptr || rows_ == 0, "sparse_b::scatter_to_dense: null output");
    if (rows_ == 0 || cols_ == 0) return;
    detail_sparse::scatter_kernel<T, U>
        <<<detail::grid_dim(detail::ceil_div(rows_ * cols_, 256)), 256, 0, stream>>>(view(), dense, ld, s);
    LORI_CUDA_CHECK_LAUNCH();
  }

  /// The mask back on the host (synchronous), e.g. for checks or saving.
  bitmask mask_to_host() const {
    bitmask m(rows_, cols_);
    if (words_.size() > 0)
      LORI_CUDA_CHECK(cudaMemcpy(m.word_data(), words_.data(), words_.bytes(), cudaMemcpyDeviceToHost));
    return m;
  }

  index_t rows() const noexcept { return rows_; }
  index_t cols() const noexcept { return cols_; }
  index_t nnz() const noexcept { return nnz_; }
  T* values() noexcept { return values_.data(); }
  const T* values() const noexcept { return values_.data(); }
  const std::int32_t* row_ptr() const noexcept { return row_ptr_.data(); }
  const std::int32_t* col_idx() const noexcept { return col_idx_.data(); }
  const std::uint64_t* words() const noexcept { return words_.data(); }
  device_buffer<T>& value_buffer() noexcept { return values_; }
  const device_buffer<T>& value_buffer() const noexcept { return values_; }

  /// Kernel view (values writable).
  sparse_b_view<T> view() noexcept {
    return {rows_, cols_, nnz_, wpr_, row_ptr_.data(), col_idx_.data(), words_.data(), values_.data()};
  }
  /// Kernel view of a const B (functions taking it only read values through it).
  sparse_b_view<T> view() const noexcept {
    return {rows_, cols_, nnz_, wpr_, row_ptr_.data(), col_idx_.data(), words_.data(), const_cast<T*>(values_.data())};
  }

 private:
  index_t rows_ = 0, cols_ = 0, wpr_ = 0, nnz_ = 0;
  device_buffer<std::int32_t> row_ptr_, col_idx_;
  device_buffer<std::uint64_t> words_;
  device_buffer<T> values_;
};

}  // namespace lori::cuda

#endif  // LORI_CUDA_SPARSE_B_CUH
