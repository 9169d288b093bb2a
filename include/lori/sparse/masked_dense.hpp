// lori/sparse/masked_dense.hpp - a sparse B as the reference (LoRI + PEFT) holds it: a dense rows x cols
// matrix whose entries outside a mask are zero, plus the mask.
//
// This is the form a PEFT checkpoint of LoRI-S stores and the form the reference trains (dense gradient,
// zeroed outside the mask, dense AdamW). It costs a dense B plus a bit per element; lori's kernels use
// csr_matrix / packed_matrix instead (lori/sparse/convert.hpp converts, losslessly).
#ifndef LORI_SPARSE_MASKED_DENSE_HPP
#define LORI_SPARSE_MASKED_DENSE_HPP

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/mask/bitmask.hpp"

#include <type_traits>
#include <utility>
#include <vector>

namespace lori {

/// Owning dense row-major matrix + mask. Invariant the class does not force (the dense data is freely
/// writable): entries outside the mask should be zero; apply_mask() restores it, zero_outside() checks it.
template <class T>
class masked_dense {
  static_assert(std::is_floating_point_v<T>, "masked_dense: T must be a floating-point type");

 public:
  using value_type = T;

  masked_dense() = default;

  /// A zero matrix with the shape and mask of `mask`.
  explicit masked_dense(bitmask mask) : mask_(std::move(mask)), dense_(static_cast<std::size_t>(mask_.size()), T{0}) {}

  /// Copies `dense` (same shape as `mask`); entries outside the mask are zeroed when `apply` is true,
  /// otherwise a nonzero entry outside the mask is an error.
  template <layout L>
  masked_dense(matrix_view<const T, L> dense, bitmask mask, bool apply = false) : masked_dense(std::move(mask)) {
    LORI_EXPECTS(dense.rows() == mask_.rows() && dense.cols() == mask_.cols(), "masked_dense: dense and mask shapes differ");
    const auto mv = mask_.view();
    for (index_t i = 0; i < rows(); ++i)
      for (index_t j = 0; j < cols(); ++j) {
        const bool keep = mv.test(i, j);
        LORI_EXPECTS(keep || apply || dense(i, j) == T{0}, "masked_dense: nonzero entry outside the mask (pass apply = true to drop it)");
        dense_[static_cast<std::size_t>(i * cols() + j)] = keep ? dense(i, j) : T{0};
      }
  }

  template <layout L>
  masked_dense(matrix_view<T, L> dense, bitmask mask, bool apply = false)
      : masked_dense(matrix_view<const T, L>(dense), std::move(mask), apply) {}

  /// Zeroes every entry outside the mask (what the reference does to B's gradient before each step).
  void apply_mask() noexcept {
    const auto mv = mask_.view();
    for (index_t i = 0; i < rows(); ++i)
      for (index_t j = 0; j < cols(); ++j)
        if (!mv.test(i, j)) dense_[static_cast<std::size_t>(i * cols() + j)] = T{0};
  }

  /// Whether every entry outside the mask is zero.
  bool zero_outside() const noexcept {
    const auto mv = mask_.view();
    for (index_t i = 0; i < rows(); ++i)
      for (index_t j = 0; j < cols(); ++j)
        if (!mv.test(i, j) && dense_[static_cast<std::size_t>(i * cols() + j)] != T{0}) return false;
    return true;
  }

  index_t rows() const noexcept { return mask_.rows(); }
  index_t cols() const noexcept { return mask_.cols(); }
  /// Number of kept entries (the mask's count, not the count of nonzero values).
  index_t nnz() const noexcept { return mask_.count(); }
  double density() const noexcept { return mask_.density(); }
  /// Bytes of the dense values plus the mask words.
  index_t memory_bytes() const noexcept { return static_cast<index_t>(dense_.size() * sizeof(T)) + mask_.memory_bytes(); }

  const bitmask& mask() const noexcept { return mask_; }
  row_major_view<T> dense() noexcept { return row_major_view<T>(dense_.data(), rows(), cols()); }
  row_major_view<const T> dense() const noexcept { return row_major_view<const T>(dense_.data(), rows(), cols()); }

 private:
  bitmask mask_;
  std::vector<T> dense_;
};

}  // namespace lori

#endif  // LORI_SPARSE_MASKED_DENSE_HPP
