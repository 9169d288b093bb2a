// lori/sparse/packed_matrix.hpp - a sparse B as a bitmask plus packed values: lori's storage form.
//
// The mask (lori::bitmask, 1 bit per element) says which entries of the rows x cols matrix are kept;
// values holds the kept entries in row-major order of their positions (nnz = mask.count() entries).
// At 90% sparsity with r = 32 this is 1 bit + 0.1 values per element: about a tenth of the dense B.
// The values array is the compact training parameter; its order equals csr_matrix's values order, so
// lori::to_csr / lori::to_packed (lori/sparse/convert.hpp) pass it through unchanged.
#ifndef LORI_SPARSE_PACKED_MATRIX_HPP
#define LORI_SPARSE_PACKED_MATRIX_HPP

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/mask/bitmask.hpp"

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace lori {

/// Owning bitmask + packed values. Default-constructed: 0 x 0.
template <class T>
class packed_matrix {
  static_assert(std::is_floating_point_v<T>, "packed_matrix: T must be a floating-point type");

 public:
  using value_type = T;

  packed_matrix() = default;

  /// The structure of `mask` with every kept value zero.
  explicit packed_matrix(bitmask mask) : mask_(std::move(mask)) { values_.assign(static_cast<std::size_t>(mask_.count()), T{0}); }

  /// From a mask and its packed values; throws lori::error unless values.size() == mask.count().
  packed_matrix(bitmask mask, std::vector<T> values) : mask_(std::move(mask)), values_(std::move(values)) {
    LORI_EXPECTS(static_cast<index_t>(values_.size()) == mask_.count(),
                 "packed_matrix: number of values must equal the number of kept elements of the mask");
  }

  /// The entries of `dense` at the kept positions of `mask` (same shape). With `require_zero_outside`
  /// (default) a nonzero entry outside the mask is an error, since the conversion would lose it.
  template <layout L>
  static packed_matrix from_dense(matrix_view<const T, L> dense, const bitmask& mask, bool require_zero_outside = true) {
    LORI_EXPECTS(dense.rows() == mask.rows() && dense.cols() == mask.cols(), "packed_matrix::from_dense: dense and mask shapes differ");
    packed_matrix m(mask);
    const auto mv = mask.view();
    std::size_t p = 0;
    for (index_t i = 0; i < dense.rows(); ++i)
      for (index_t j = 0; j < dense.cols(); ++j) {
        if (mv.test(i, j)) {
          m.values_[p++] = dense(i, j);
        } else if (require_zero_outside) {
          LORI_EXPECTS(dense(i, j) == T{0}, "packed_matrix::from_dense: nonzero entry outside the mask would be lost");
        }
      }
    return m;
  }
  template <layout L>
  static packed_matrix from_dense(matrix_view<T, L> dense, const bitmask& mask, bool require_zero_outside = true) {
    return from_dense(matrix_view<const T, L>(dense), mask, require_zero_outside);
  }

  /// Writes the matrix densely into `out` (same shape), zeros outside the mask.
  template <layout L>
  void to_dense(matrix_view<T, L> out) const {
    LORI_EXPECTS(out.rows() == rows() && out.cols() == cols(), "packed_matrix::to_dense: output shape mismatch");
    const auto mv = mask_.view();
    std::size_t p = 0;
    for (index_t i = 0; i < rows(); ++i)
      for (index_t j = 0; j < cols(); ++j) out(i, j) = mv.test(i, j) ? values_[p++] : T{0};
  }

  index_t rows() const noexcept { return mask_.rows(); }
  index_t cols() const noexcept { return mask_.cols(); }
  index_t nnz() const noexcept { return static_cast<index_t>(values_.size()); }
  /// Fraction of kept entries (0 for an empty matrix).
  double density() const noexcept { return mask_.density(); }
  /// Bytes of the mask words plus the values.
  index_t memory_bytes() const noexcept { return mask_.memory_bytes() + static_cast<index_t>(values_.size() * sizeof(T)); }

  const bitmask& mask() const noexcept { return mask_; }
  /// The compact values (row-major order of kept positions): the array training updates.
  std::vector<T>& values() noexcept { return values_; }
  const std::vector<T>& values() const noexcept { return values_; }
  vector_view<T> value_view() noexcept { return vector_view<T>(values_.data(), nnz()); }
  vector_view<const T> value_view() const noexcept { return vector_view<const T>(values_.data(), nnz()); }

  friend bool operator==(const packed_matrix& a, const packed_matrix& b) noexcept { return a.mask_ == b.mask_ && a.values_ == b.values_; }
  friend bool operator!=(const packed_matrix& a, const packed_matrix& b) noexcept { return !(a == b); }

 private:
  bitmask mask_;
  std::vector<T> values_;
};

}  // namespace lori

#endif  // LORI_SPARSE_PACKED_MATRIX_HPP
