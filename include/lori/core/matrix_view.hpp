// lori/core/matrix_view.hpp - non-owning 2-D views over raw memory.
//
// A matrix_view<T, Layout> is a pointer, a shape and a leading dimension: trivially copyable, so it
// can be passed by value to CUDA kernels (the cuCollections "view" idea), and it never owns or copies
// data. Sizes are 64-bit signed (lori::index_t). The leading dimension is the distance, in elements,
// between consecutive rows (row_major) or consecutive columns (col_major); it must be at least the
// row length (cols for row_major, rows for col_major) unless the matrix is empty.
//
// Eigen matrices are wrapped without copies by lori/core/eigen.hpp; this header does not need Eigen
// so that device code can use it.
#ifndef LORI_CORE_MATRIX_VIEW_HPP
#define LORI_CORE_MATRIX_VIEW_HPP

#include "lori/config.hpp"
#include "lori/error.hpp"

#include <type_traits>

namespace lori {

/// Storage order of a matrix_view.
enum class layout { row_major, col_major };

/// Non-owning view of a rows x cols matrix of T stored with leading dimension ld.
/// T may be const-qualified for read-only views; a matrix_view<T> converts to matrix_view<const T>.
template <class T, layout L = layout::row_major>
class matrix_view {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  static constexpr layout order = L;

  /// An empty 0 x 0 view.
  constexpr matrix_view() noexcept = default;

  /// Views `data` as rows x cols with leading dimension `ld` (default: tightly packed).
  /// Throws lori::error on negative sizes, a too-small leading dimension, or a null pointer with a
  /// non-empty shape.
  matrix_view(T* data, index_t rows, index_t cols, index_t ld = -1)
      : data_(data), rows_(rows), cols_(cols), ld_(ld < 0 ? packed_ld(rows, cols) : ld) {
    LORI_EXPECTS(rows >= 0 && cols >= 0, "matrix_view: rows and cols must be non-negative");
    LORI_EXPECTS(ld_ >= packed_ld(rows, cols), "matrix_view: leading dimension smaller than the row length");
    LORI_EXPECTS(data != nullptr || rows == 0 || cols == 0, "matrix_view: null data for a non-empty matrix");
  }

  /// Read-only view from a mutable one.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  constexpr matrix_view(const matrix_view<U, L>& other) noexcept  // NOLINT(google-explicit-constructor)
      : data_(other.data()), rows_(other.rows()), cols_(other.cols()), ld_(other.ld()) {}

  LORI_HOST_DEVICE constexpr T* data() const noexcept { return data_; }
  LORI_HOST_DEVICE constexpr index_t rows() const noexcept { return rows_; }
  LORI_HOST_DEVICE constexpr index_t cols() const noexcept { return cols_; }
  LORI_HOST_DEVICE constexpr index_t ld() const noexcept { return ld_; }
  LORI_HOST_DEVICE constexpr index_t size() const noexcept { return rows_ * cols_; }
  LORI_HOST_DEVICE constexpr bool empty() const noexcept { return rows_ == 0 || cols_ == 0; }
  /// True when the elements are contiguous (ld equals the row length, or the view is empty).
  LORI_HOST_DEVICE constexpr bool is_contiguous() const noexcept {
    return empty() || ld_ == (L == layout::row_major ? cols_ : rows_);
  }

  /// Element (i, j). Unchecked, for inner loops and kernels; see at() for the checked form.
  LORI_HOST_DEVICE constexpr T& operator()(index_t i, index_t j) const noexcept {
    return L == layout::row_major ? data_[i * ld_ + j] : data_[j * ld_ + i];
  }

  /// Element (i, j) with bounds checking (host only); throws lori::error when out of range.
  T& at(index_t i, index_t j) const {
    LORI_EXPECTS(i >= 0 && i < rows_ && j >= 0 && j < cols_, "matrix_view::at: index out of range");
    return (*this)(i, j);
  }

  /// Pointer to the start of row i (row_major only).
  template <layout M = L, class = std::enable_if_t<M == layout::row_major>>
  LORI_HOST_DEVICE constexpr T* row(index_t i) const noexcept { return data_ + i * ld_; }

  /// Pointer to the start of column j (col_major only).
  template <layout M = L, class = std::enable_if_t<M == layout::col_major>>
  LORI_HOST_DEVICE constexpr T* col(index_t j) const noexcept { return data_ + j * ld_; }

  /// The transpose as a view of the other layout over the same memory (no copy).
  LORI_HOST_DEVICE constexpr auto transposed() const noexcept {
    constexpr layout other = L == layout::row_major ? layout::col_major : layout::row_major;
    matrix_view<T, other> t;
    t.data_ = data_;
    t.rows_ = cols_;
    t.cols_ = rows_;
    t.ld_ = ld_;
    return t;
  }

  /// The block of `nrows` x `ncols` starting at (i, j), sharing memory and leading dimension.
  matrix_view block(index_t i, index_t j, index_t nrows, index_t ncols) const {
    LORI_EXPECTS(i >= 0 && j >= 0 && nrows >= 0 && ncols >= 0 && i + nrows <= rows_ && j + ncols <= cols_,
                 "matrix_view::block: block outside the matrix");
    matrix_view b;
    b.data_ = (nrows == 0 || ncols == 0) ? data_ : &(*this)(i, j);
    b.rows_ = nrows;
    b.cols_ = ncols;
    b.ld_ = ld_;
    return b;
  }

 private:
  template <class, layout>
  friend class matrix_view;

  static constexpr index_t packed_ld(index_t rows, index_t cols) noexcept {
    return L == layout::row_major ? cols : rows;
  }

  T* data_ = nullptr;
  index_t rows_ = 0;
  index_t cols_ = 0;
  index_t ld_ = 0;
};

template <class T>
using row_major_view = matrix_view<T, layout::row_major>;
template <class T>
using col_major_view = matrix_view<T, layout::col_major>;

/// Convenience: a packed row-major view of rows x cols elements at data.
template <class T>
row_major_view<T> make_row_major(T* data, index_t rows, index_t cols) {
  return row_major_view<T>(data, rows, cols);
}

/// Convenience: a packed column-major view of rows x cols elements at data.
template <class T>
col_major_view<T> make_col_major(T* data, index_t rows, index_t cols) {
  return col_major_view<T>(data, rows, cols);
}

/// Non-owning view of a 1-D array of n elements (compact values, masks, optimizer state).
template <class T>
class vector_view {
 public:
  using element_type = T;
  constexpr vector_view() noexcept = default;
  vector_view(T* data, index_t n) : data_(data), size_(n) {
    LORI_EXPECTS(n >= 0, "vector_view: size must be non-negative");
    LORI_EXPECTS(data != nullptr || n == 0, "vector_view: null data for a non-empty vector");
  }
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  constexpr vector_view(const vector_view<U>& other) noexcept  // NOLINT(google-explicit-constructor)
      : data_(other.data()), size_(other.size()) {}

  LORI_HOST_DEVICE constexpr T* data() const noexcept { return data_; }
  LORI_HOST_DEVICE constexpr index_t size() const noexcept { return size_; }
  LORI_HOST_DEVICE constexpr bool empty() const noexcept { return size_ == 0; }
  LORI_HOST_DEVICE constexpr T& operator[](index_t i) const noexcept { return data_[i]; }
  LORI_HOST_DEVICE constexpr T* begin() const noexcept { return data_; }
  LORI_HOST_DEVICE constexpr T* end() const noexcept { return data_ + size_; }

 private:
  T* data_ = nullptr;
  index_t size_ = 0;
};

}  // namespace lori

#endif  // LORI_CORE_MATRIX_VIEW_HPP
