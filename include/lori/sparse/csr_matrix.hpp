// lori/sparse/csr_matrix.hpp - a sparse B (d x r) in CSR over its rows: the format lori's CPU kernels use.
//
// row_ptr (rows + 1 entries), col_idx (nnz entries, ascending within each row) and values (nnz entries).
// The values are stored in row-major order of the kept positions: exactly the order of the packed values
// of a bitmask + values matrix (lori/sparse/packed_matrix.hpp), so converting between the two copies the
// values array unchanged and the compact values array is one and the same training parameter in both.
// The structure is fixed by the mask, not by the values: a kept entry whose value is exactly zero stays
// stored (a LoRI-S B may pass through zero during training).
//
//   csr_matrix<T, Index>   owning (std::vector storage)
//   csr_view<T, Index>     trivially copyable non-owning view (T may be const), what kernels take
#ifndef LORI_SPARSE_CSR_MATRIX_HPP
#define LORI_SPARSE_CSR_MATRIX_HPP

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/mask/bitmask.hpp"

#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace lori {

/// Non-owning view of a CSR matrix. T may be const-qualified; a csr_view<T> converts to csr_view<const T>.
/// The index arrays are always read-only: kernels update values, never the structure.
template <class T, class Index = std::int32_t>
struct csr_view {
  index_t rows = 0;
  index_t cols = 0;
  const Index* row_ptr = nullptr;  ///< rows + 1 entries (may be null only when rows == 0)
  const Index* col_idx = nullptr;  ///< nnz entries
  T* values = nullptr;             ///< nnz entries (may be null for a structure-only view)

  /// Number of stored entries (row_ptr[rows]; 0 for an empty view).
  LORI_HOST_DEVICE index_t nnz() const noexcept { return rows == 0 || row_ptr == nullptr ? 0 : static_cast<index_t>(row_ptr[rows]); }

  /// The values as a vector_view (nnz entries).
  vector_view<T> value_view() const { return vector_view<T>(values, nnz()); }

  /// Read-only view from a mutable one.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  constexpr csr_view(const csr_view<U, Index>& o) noexcept  // NOLINT(google-explicit-constructor)
      : rows(o.rows), cols(o.cols), row_ptr(o.row_ptr), col_idx(o.col_idx), values(o.values) {}
  constexpr csr_view() noexcept = default;
  constexpr csr_view(index_t rows_, index_t cols_, const Index* row_ptr_, const Index* col_idx_, T* values_) noexcept
      : rows(rows_), cols(cols_), row_ptr(row_ptr_), col_idx(col_idx_), values(values_) {}
};

/// Owning CSR matrix over the rows of a rows x cols matrix (for B: d x r). Index is the type of row_ptr
/// and col_idx (int32 by default: nnz must fit it; checked).
template <class T, class Index = std::int32_t>
class csr_matrix {
  static_assert(std::is_floating_point_v<T>, "csr_matrix: T must be a floating-point type");
  static_assert(std::is_integral_v<Index> && std::is_signed_v<Index>, "csr_matrix: Index must be a signed integer type");

 public:
  using value_type = T;
  using index_type = Index;

  /// An empty 0 x 0 matrix.
  csr_matrix() : row_ptr_(1, Index{0}) {}

  /// The structure of `mask` with every value zero.
  explicit csr_matrix(const bitmask& mask) {
    auto ind = mask.to_csr<Index>();
    rows_ = ind.rows;
    cols_ = ind.cols;
    row_ptr_ = std::move(ind.row_ptr);
    col_idx_ = std::move(ind.col_idx);
    values_.assign(col_idx_.size(), T{0});
  }

  /// From its three arrays; throws lori::error when they are malformed (sizes, row_ptr not starting at 0,
  /// not non-decreasing or not ending at nnz, columns out of range or not strictly ascending in a row).
  csr_matrix(index_t rows, index_t cols, std::vector<Index> row_ptr, std::vector<Index> col_idx, std::vector<T> values)
      : rows_(rows), cols_(cols), row_ptr_(std::move(row_ptr)), col_idx_(std::move(col_idx)), values_(std::move(values)) {
    LORI_EXPECTS(rows >= 0 && cols >= 0, "csr_matrix: rows and cols must be non-negative");
    LORI_EXPECTS(static_cast<index_t>(row_ptr_.size()) == rows + 1, "csr_matrix: row_ptr must have rows + 1 entries");
    LORI_EXPECTS(col_idx_.size() == values_.size(), "csr_matrix: col_idx and values must have the same length");
    LORI_EXPECTS(row_ptr_.front() == 0 && static_cast<index_t>(row_ptr_.back()) == static_cast<index_t>(col_idx_.size()),
                 "csr_matrix: row_ptr must start at 0 and end at nnz");
    for (index_t i = 0; i < rows; ++i) {
      const index_t b = row_ptr_[static_cast<std::size_t>(i)], e = row_ptr_[static_cast<std::size_t>(i + 1)];
      LORI_EXPECTS(b <= e && e <= static_cast<index_t>(col_idx_.size()), "csr_matrix: row_ptr must be non-decreasing");
      index_t prev = -1;
      for (index_t p = b; p < e; ++p) {
        const index_t j = col_idx_[static_cast<std::size_t>(p)];
        LORI_EXPECTS(j > prev && j < cols, "csr_matrix: column indices must ascend within a row and be < cols");
        prev = j;
      }
    }
  }

  /// The entries of `dense` at the kept positions of `mask` (same shape). With `require_zero_outside`
  /// (default) an entry that is nonzero outside the mask is an error, since the conversion would lose it
  /// (use masked_dense::apply_mask first to drop such entries on purpose).
  template <layout L>
  static csr_matrix from_dense(matrix_view<const T, L> dense, const bitmask& mask, bool require_zero_outside = true) {
    LORI_EXPECTS(dense.rows() == mask.rows() && dense.cols() == mask.cols(), "csr_matrix::from_dense: dense and mask shapes differ");
    csr_matrix m(mask);
    const auto mv = mask.view();
    for (index_t i = 0; i < m.rows_; ++i) {
      index_t p = m.row_ptr_[static_cast<std::size_t>(i)];
      for (index_t j = 0; j < m.cols_; ++j) {
        if (mv.test(i, j)) {
          m.values_[static_cast<std::size_t>(p++)] = dense(i, j);
        } else if (require_zero_outside) {
          LORI_EXPECTS(dense(i, j) == T{0}, "csr_matrix::from_dense: nonzero entry outside the mask would be lost");
        }
      }
    }
    return m;
  }
  template <layout L>
  static csr_matrix from_dense(matrix_view<T, L> dense, const bitmask& mask, bool require_zero_outside = true) {
    return from_dense(matrix_view<const T, L>(dense), mask, require_zero_outside);
  }

  /// Writes the matrix densely into `out` (same shape), zeros outside the stored entries.
  template <layout L>
  void to_dense(matrix_view<T, L> out) const {
    LORI_EXPECTS(out.rows() == rows_ && out.cols() == cols_, "csr_matrix::to_dense: output shape mismatch");
    for (index_t i = 0; i < rows_; ++i) {
      for (index_t j = 0; j < cols_; ++j) out(i, j) = T{0};
      for (index_t p = row_ptr_[static_cast<std::size_t>(i)]; p < row_ptr_[static_cast<std::size_t>(i + 1)]; ++p)
        out(i, col_idx_[static_cast<std::size_t>(p)]) = values_[static_cast<std::size_t>(p)];
    }
  }

  /// The mask of stored positions.
  bitmask mask() const {
    csr_indices<Index> ind;
    ind.rows = rows_;
    ind.cols = cols_;
    ind.row_ptr = row_ptr_;
    ind.col_idx = col_idx_;
    return bitmask::from_csr(ind);
  }

  index_t rows() const noexcept { return rows_; }
  index_t cols() const noexcept { return cols_; }
  index_t nnz() const noexcept { return static_cast<index_t>(col_idx_.size()); }
  /// Fraction of stored entries (0 for an empty matrix).
  double density() const noexcept {
    return rows_ * cols_ == 0 ? 0.0 : static_cast<double>(nnz()) / static_cast<double>(rows_ * cols_);
  }
  /// Bytes of the three arrays: (rows + 1 + nnz) * sizeof(Index) + nnz * sizeof(T).
  index_t memory_bytes() const noexcept {
    return static_cast<index_t>((row_ptr_.size() + col_idx_.size()) * sizeof(Index) + values_.size() * sizeof(T));
  }

  const std::vector<Index>& row_ptr() const noexcept { return row_ptr_; }
  const std::vector<Index>& col_idx() const noexcept { return col_idx_; }
  /// The compact values (nnz, row-major order of kept positions): the array training updates.
  std::vector<T>& values() noexcept { return values_; }
  const std::vector<T>& values() const noexcept { return values_; }

  csr_view<const T, Index> view() const noexcept { return {rows_, cols_, row_ptr_.data(), col_idx_.data(), values_.data()}; }
  csr_view<T, Index> mutable_view() noexcept { return {rows_, cols_, row_ptr_.data(), col_idx_.data(), values_.data()}; }

  friend bool operator==(const csr_matrix& a, const csr_matrix& b) noexcept {
    return a.rows_ == b.rows_ && a.cols_ == b.cols_ && a.row_ptr_ == b.row_ptr_ && a.col_idx_ == b.col_idx_ && a.values_ == b.values_;
  }
  friend bool operator!=(const csr_matrix& a, const csr_matrix& b) noexcept { return !(a == b); }

 private:
  index_t rows_ = 0;
  index_t cols_ = 0;
  std::vector<Index> row_ptr_;
  std::vector<Index> col_idx_;
  std::vector<T> values_;
};

}  // namespace lori

#endif  // LORI_SPARSE_CSR_MATRIX_HPP
