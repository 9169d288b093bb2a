// lori/mask/bitmask.hpp - a 2-D bit mask, one bit per element of a rows x cols matrix.
//
// The mask of a LoRI-S B (d x r) says which entries are trained and stored. Storage is row-major,
// 64-bit words, each row padded to a whole number of words (words_per_row = ceil(cols / 64)), bit
// (j % 64) of word (j / 64) of row i standing for element (i, j). Padding bits are always zero, so
// popcounts over whole words count kept elements. Row padding lets a row (a GPU warp's unit of work)
// start on a word boundary.
//
//   bitmask             owning mask (std::vector storage)
//   bitmask_view        trivially copyable non-owning view of the same layout, usable in kernels
// Conversions: from/to dense uint8 or bool (row-major), to CSR (row_ptr, col_idx) for sparse kernels.
#ifndef LORI_MASK_BITMASK_HPP
#define LORI_MASK_BITMASK_HPP

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"

#include <cstdint>
#include <limits>
#include <vector>

namespace lori {

namespace detail_bits {
LORI_HOST_DEVICE LORI_FORCEINLINE int popcount64(std::uint64_t x) noexcept {
#if LORI_DEVICE_PASS
  return __popcll(x);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_popcountll(x);
#else
  int c = 0;
  for (; x; x &= x - 1) ++c;
  return c;
#endif
}
}  // namespace detail_bits

/// Number of 64-bit words that hold one row of `cols` bits.
LORI_HOST_DEVICE constexpr index_t bitmask_words_per_row(index_t cols) noexcept { return (cols + 63) / 64; }

/// Non-owning view of a bitmask's words (see bitmask for the layout). Trivially copyable.
template <class Word = const std::uint64_t>
struct basic_bitmask_view {
  Word* words = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t words_per_row = 0;

  /// Whether element (i, j) is kept. Unchecked.
  LORI_HOST_DEVICE bool test(index_t i, index_t j) const noexcept {
    return (words[i * words_per_row + (j >> 6)] >> (j & 63)) & 1u;
  }
};
using bitmask_view = basic_bitmask_view<const std::uint64_t>;
using mutable_bitmask_view = basic_bitmask_view<std::uint64_t>;

/// CSR index structure of a mask: row_ptr has rows + 1 entries, col_idx has nnz entries, columns
/// ascending within each row.
template <class Index = std::int32_t>
struct csr_indices {
  index_t rows = 0;
  index_t cols = 0;
  std::vector<Index> row_ptr;
  std::vector<Index> col_idx;
  index_t nnz() const noexcept { return static_cast<index_t>(col_idx.size()); }
};

/// Owning rows x cols bit mask. Default-constructed: 0 x 0.
class bitmask {
 public:
  bitmask() = default;

  /// A rows x cols mask with every bit set to `value`.
  bitmask(index_t rows, index_t cols, bool value = false) : rows_(rows), cols_(cols) {
    LORI_EXPECTS(rows >= 0 && cols >= 0, "bitmask: rows and cols must be non-negative");
    wpr_ = bitmask_words_per_row(cols);
    words_.assign(static_cast<std::size_t>(rows * wpr_), 0);
    if (value) fill(true);
  }

  index_t rows() const noexcept { return rows_; }
  index_t cols() const noexcept { return cols_; }
  index_t size() const noexcept { return rows_ * cols_; }
  index_t words_per_row() const noexcept { return wpr_; }
  const std::vector<std::uint64_t>& words() const noexcept { return words_; }
  std::uint64_t* word_data() noexcept { return words_.data(); }
  const std::uint64_t* word_data() const noexcept { return words_.data(); }

  /// Whether element (i, j) is kept; throws lori::error when out of range.
  bool test(index_t i, index_t j) const {
    check_index(i, j, "bitmask::test: index out of range");
    return view().test(i, j);
  }

  /// Sets element (i, j) to `value`; throws lori::error when out of range.
  void set(index_t i, index_t j, bool value = true) {
    check_index(i, j, "bitmask::set: index out of range");
    std::uint64_t& w = words_[static_cast<std::size_t>(i * wpr_ + (j >> 6))];
    const std::uint64_t bit = std::uint64_t{1} << (j & 63);
    w = value ? (w | bit) : (w & ~bit);
  }

  /// Sets every element to `value` (padding bits stay zero).
  void fill(bool value) {
    for (index_t i = 0; i < rows_; ++i)
      for (index_t w = 0; w < wpr_; ++w) words_[static_cast<std::size_t>(i * wpr_ + w)] = value ? valid_bits(w) : 0;
  }

  /// Number of kept elements.
  index_t count() const noexcept {
    index_t c = 0;
    for (std::uint64_t w : words_) c += detail_bits::popcount64(w);
    return c;
  }

  /// Number of kept elements in row i.
  index_t count_row(index_t i) const {
    LORI_EXPECTS(i >= 0 && i < rows_, "bitmask::count_row: row out of range");
    index_t c = 0;
    for (index_t w = 0; w < wpr_; ++w) c += detail_bits::popcount64(words_[static_cast<std::size_t>(i * wpr_ + w)]);
    return c;
  }

  /// Fraction of kept elements (0 for an empty mask).
  double density() const noexcept { return size() == 0 ? 0.0 : static_cast<double>(count()) / static_cast<double>(size()); }

  /// Bytes of word storage.
  index_t memory_bytes() const noexcept { return static_cast<index_t>(words_.size() * sizeof(std::uint64_t)); }

  bitmask_view view() const noexcept { return {words_.data(), rows_, cols_, wpr_}; }
  mutable_bitmask_view mutable_view() noexcept { return {words_.data(), rows_, cols_, wpr_}; }

  /// Elementwise and / or / and-not (this & ~other) with a mask of the same shape.
  bitmask& operator&=(const bitmask& o) { return combine(o, 0, "bitmask::operator&=: shape mismatch"); }
  bitmask& operator|=(const bitmask& o) { return combine(o, 1, "bitmask::operator|=: shape mismatch"); }
  bitmask& and_not(const bitmask& o) { return combine(o, 2, "bitmask::and_not: shape mismatch"); }

  /// Number of elements kept in both masks (same shape required).
  index_t count_and(const bitmask& o) const {
    LORI_EXPECTS(o.rows_ == rows_ && o.cols_ == cols_, "bitmask::count_and: shape mismatch");
    index_t c = 0;
    for (std::size_t k = 0; k < words_.size(); ++k) c += detail_bits::popcount64(words_[k] & o.words_[k]);
    return c;
  }

  friend bool operator==(const bitmask& a, const bitmask& b) noexcept {
    return a.rows_ == b.rows_ && a.cols_ == b.cols_ && a.words_ == b.words_;
  }
  friend bool operator!=(const bitmask& a, const bitmask& b) noexcept { return !(a == b); }

  /// Mask of the nonzero elements of a dense matrix (uint8, bool, or any arithmetic type).
  template <class T, layout L>
  static bitmask from_dense(matrix_view<const T, L> dense) {
    bitmask m(dense.rows(), dense.cols());
    for (index_t i = 0; i < dense.rows(); ++i)
      for (index_t j = 0; j < dense.cols(); ++j)
        if (dense(i, j) != T{}) m.words_[static_cast<std::size_t>(i * m.wpr_ + (j >> 6))] |= std::uint64_t{1} << (j & 63);
    return m;
  }
  template <class T, layout L>
  static bitmask from_dense(matrix_view<T, L> dense) {
    return from_dense(matrix_view<const T, L>(dense));
  }

  /// Writes the mask as 0/1 into a dense matrix of the same shape.
  template <class T, layout L>
  void to_dense(matrix_view<T, L> out) const {
    LORI_EXPECTS(out.rows() == rows_ && out.cols() == cols_, "bitmask::to_dense: output shape mismatch");
    const auto v = view();
    for (index_t i = 0; i < rows_; ++i)
      for (index_t j = 0; j < cols_; ++j) out(i, j) = v.test(i, j) ? T(1) : T(0);
  }

  /// Row-major 0/1 bytes (rows * cols), e.g. for a U8 mask file.
  std::vector<std::uint8_t> to_bytes() const {
    std::vector<std::uint8_t> out(static_cast<std::size_t>(size()));
    to_dense(matrix_view<std::uint8_t>(out.data(), rows_, cols_));
    return out;
  }

  /// CSR indices of the kept elements; throws lori::error if nnz does not fit Index.
  template <class Index = std::int32_t>
  csr_indices<Index> to_csr() const {
    const index_t nnz = count();
    LORI_EXPECTS(nnz <= static_cast<index_t>(std::numeric_limits<Index>::max()),
                 "bitmask::to_csr: number of kept elements does not fit the index type");
    csr_indices<Index> csr;
    csr.rows = rows_;
    csr.cols = cols_;
    csr.row_ptr.resize(static_cast<std::size_t>(rows_ + 1));
    csr.col_idx.reserve(static_cast<std::size_t>(nnz));
    csr.row_ptr[0] = 0;
    for (index_t i = 0; i < rows_; ++i) {
      for (index_t w = 0; w < wpr_; ++w) {
        std::uint64_t bits = words_[static_cast<std::size_t>(i * wpr_ + w)];
        while (bits) {
          const int b = __builtin_ctzll(bits);
          csr.col_idx.push_back(static_cast<Index>(w * 64 + b));
          bits &= bits - 1;
        }
      }
      csr.row_ptr[static_cast<std::size_t>(i + 1)] = static_cast<Index>(csr.col_idx.size());
    }
    return csr;
  }

  /// Mask from CSR indices; throws lori::error on malformed CSR (non-monotone row_ptr, column out
  /// of range, or columns not strictly ascending within a row).
  template <class Index>
  static bitmask from_csr(const csr_indices<Index>& csr) {
    LORI_EXPECTS(static_cast<index_t>(csr.row_ptr.size()) == csr.rows + 1, "bitmask::from_csr: row_ptr must have rows + 1 entries");
    LORI_EXPECTS(csr.row_ptr.front() == 0 && static_cast<index_t>(csr.row_ptr.back()) == csr.nnz(),
                 "bitmask::from_csr: row_ptr must start at 0 and end at nnz");
    // Validate the whole row_ptr before touching col_idx, so a non-monotone row_ptr can never index
    // past the end of col_idx.
    for (index_t i = 0; i < csr.rows; ++i)
      LORI_EXPECTS(csr.row_ptr[static_cast<std::size_t>(i)] <= csr.row_ptr[static_cast<std::size_t>(i + 1)],
                   "bitmask::from_csr: row_ptr must be non-decreasing");
    bitmask m(csr.rows, csr.cols);
    for (index_t i = 0; i < csr.rows; ++i) {
      const index_t b = csr.row_ptr[static_cast<std::size_t>(i)], e = csr.row_ptr[static_cast<std::size_t>(i + 1)];
      index_t prev = -1;
      for (index_t p = b; p < e; ++p) {
        const index_t j = csr.col_idx[static_cast<std::size_t>(p)];
        LORI_EXPECTS(j > prev && j < csr.cols, "bitmask::from_csr: column indices must ascend within a row and be < cols");
        m.set(i, j);
        prev = j;
      }
    }
    return m;
  }

 private:
  void check_index(index_t i, index_t j, const char* msg) const {
    if (!(i >= 0 && i < rows_ && j >= 0 && j < cols_)) detail::throw_expects(msg, "0 <= i < rows && 0 <= j < cols");
  }
  std::uint64_t valid_bits(index_t w) const noexcept {
    const index_t rem = cols_ - w * 64;
    return rem >= 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << rem) - 1);
  }
  bitmask& combine(const bitmask& o, int op, const char* msg) {
    if (!(o.rows_ == rows_ && o.cols_ == cols_)) detail::throw_expects(msg, "same rows and cols");
    for (std::size_t k = 0; k < words_.size(); ++k) {
      if (op == 0) words_[k] &= o.words_[k];
      else if (op == 1) words_[k] |= o.words_[k];
      else words_[k] &= ~o.words_[k];
    }
    return *this;
  }

  index_t rows_ = 0;
  index_t cols_ = 0;
  index_t wpr_ = 0;
  std::vector<std::uint64_t> words_;
};

}  // namespace lori

#endif  // LORI_MASK_BITMASK_HPP
