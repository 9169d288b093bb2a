// lori/mask/radix_select.hpp - radix selection of the k-th largest magnitude, in summable steps.
//
// The magnitude |x| of an IEEE-754 float or double, with its sign bit cleared, is an unsigned integer
// whose order is the order of the magnitudes (+0 < subnormals < normals < +Inf < NaN). Selecting the
// k-th largest |x| therefore selects the k-th largest unsigned key, digit by digit from the top:
//
//   pass p looks at digit p of the key (radix_shift / radix_width below: 11 bits at most, so a
//   histogram has at most radix_bins = 2048 counters) of the keys whose higher digits equal the
//   prefix fixed so far, counts them per digit value, and narrows the prefix to the bucket that holds
//   the k-th largest key. After radix_passes<T> passes (3 for float: 11+11+9 bits; 6 for double:
//   5x11+8 bits) the prefix is the k-th largest key itself.
//
// The step is exposed so that histograms from separate shards (tensors, threads, GPUs) are simply
// added before each narrowing: a sharded caller runs, for every pass,
//     counts = 0; for each shard: magnitude_histogram(shard, ..., st.pass, st.prefix, counts)
//     (or sum the shards' counts, e.g. with an NCCL all-reduce of radix_bins uint64 values)
//     radix_select_advance(st, counts)
// and every shard ends with the same threshold. Never a sort, never a concatenated copy: each pass
// reads the data once (lori::calibrate_mask reads it fully only twice, see lori/mask/calibrate.hpp).
//
// Excluded positions (an exclusion bitmask) count as key 0 (|x| = 0), the convention of LoRI's
// continual-learning masks: they take part in ranking as zeros and are never kept.
#ifndef LORI_MASK_RADIX_SELECT_HPP
#define LORI_MASK_RADIX_SELECT_HPP

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/mask/bitmask.hpp"

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace lori {

/// Unsigned key type and constants of the magnitude of T (float or double).
template <class T>
struct magnitude_key;

template <>
struct magnitude_key<float> {
  using type = std::uint32_t;
  static constexpr int bits = 31;                       ///< significant key bits (sign cleared)
  static constexpr type infinity = 0x7f800000u;         ///< key of +Inf; keys >= this are Inf/NaN
  static constexpr type max_finite = 0x7f7fffffu;
};

template <>
struct magnitude_key<double> {
  using type = std::uint64_t;
  static constexpr int bits = 63;
  static constexpr type infinity = 0x7ff0000000000000ull;
  static constexpr type max_finite = 0x7fefffffffffffffull;
};

template <class T>
using magnitude_key_t = typename magnitude_key<T>::type;

/// The magnitude key of x: its bit pattern with the sign bit cleared (so -0 and +0 both give 0).
/// Keys compare like |x| for every finite x; Inf and NaN give keys >= magnitude_key<T>::infinity.
template <class T>
LORI_HOST_DEVICE LORI_FORCEINLINE magnitude_key_t<T> magnitude_bits(T x) noexcept {
  magnitude_key_t<T> u;
  static_assert(sizeof(u) == sizeof(x), "magnitude_bits: key and value sizes differ");
  std::memcpy(&u, &x, sizeof(u));
  return u & ~(magnitude_key_t<T>{1} << magnitude_key<T>::bits);
}

/// The non-negative value whose magnitude key is `key` (inverse of magnitude_bits on |x|).
template <class T>
LORI_HOST_DEVICE LORI_FORCEINLINE T magnitude_from_bits(magnitude_key_t<T> key) noexcept {
  T x;
  std::memcpy(&x, &key, sizeof(x));
  return x;
}

/// Widest digit of a pass, in bits, and so the largest histogram: radix_bins counters.
inline constexpr int radix_digit_bits = 11;
inline constexpr int radix_bins = 1 << radix_digit_bits;

/// Number of digit passes for a key of `key_bits` significant bits (31 -> 3, 63 -> 6).
LORI_HOST_DEVICE constexpr int radix_pass_count(int key_bits) noexcept {
  return (key_bits + radix_digit_bits - 1) / radix_digit_bits;
}
template <class T>
inline constexpr int radix_passes = radix_pass_count(magnitude_key<T>::bits);

/// Lowest key bit of digit `pass`: digits are taken from the top, radix_digit_bits at a time, the
/// last one narrower when key_bits is not a multiple (float: shifts 20, 9, 0).
LORI_HOST_DEVICE constexpr int radix_shift(int key_bits, int pass) noexcept {
  const int lo = key_bits - radix_digit_bits * (pass + 1);
  return lo > 0 ? lo : 0;
}
/// Width in bits of digit `pass` (float: 11, 11, 9).
LORI_HOST_DEVICE constexpr int radix_width(int key_bits, int pass) noexcept {
  return key_bits - radix_digit_bits * pass - radix_shift(key_bits, pass);
}
/// Mask of the key bits above digit `pass` (the bits fixed by the passes before it).
template <class Key>
LORI_HOST_DEVICE constexpr Key radix_prefix_mask(int key_bits, int pass) noexcept {
  const int hi = key_bits - radix_digit_bits * pass;  // first bit above digit `pass`
  return static_cast<Key>(~((Key{1} << hi) - 1));     // hi <= 63, so the shift is defined
}

/// State of one selection of the k-th largest magnitude key (one group of tensors). Plain data,
/// usable on host and device, identical wherever the same summed histograms are fed to it.
template <class Key>
struct radix_select_state {
  index_t k = 0;          ///< rank sought: the k-th largest (1-based); 0 selects nothing
  index_t remaining = 0;  ///< rank of the sought key within the keys matching `prefix`
  index_t greater = 0;    ///< number of keys known to be strictly greater than every key matching `prefix`
  Key prefix = 0;         ///< key bits fixed so far (those under radix_prefix_mask(bits, pass))
  int key_bits = 0;       ///< significant key bits (31 for float, 63 for double)
  int pass = 0;           ///< the next pass to run

  /// True when no further pass is needed: k = 0, or every digit has been fixed.
  LORI_HOST_DEVICE constexpr bool finished() const noexcept { return k == 0 || pass >= radix_pass_count(key_bits); }
  /// The k-th largest key (valid once finished() and k > 0).
  LORI_HOST_DEVICE constexpr Key threshold() const noexcept { return prefix; }
  /// Once finished (k > 0): how many keys equal to threshold() are needed to reach exactly k,
  /// i.e. k - (number of keys strictly greater). 1 <= ties_needed() <= number of keys equal.
  LORI_HOST_DEVICE constexpr index_t ties_needed() const noexcept { return remaining; }
};

/// Starts the selection of the k-th largest key among n keys of type Key with key_bits bits.
/// Throws lori::error unless 0 <= k <= n.
template <class Key>
radix_select_state<Key> radix_select_begin(index_t k, index_t n, int key_bits) {
  LORI_EXPECTS(k >= 0 && k <= n, "radix_select_begin: k must be in [0, n]");
  LORI_EXPECTS(key_bits > 0 && key_bits < static_cast<int>(8 * sizeof(Key)), "radix_select_begin: key_bits out of range");
  radix_select_state<Key> st;
  st.k = k;
  st.remaining = k;
  st.key_bits = key_bits;
  return st;
}

/// Narrows `st` with the summed histogram `counts` (radix_width(st.key_bits, st.pass) bits, i.e.
/// 1 << width counters) of digit st.pass of the keys matching st.prefix, and moves to the next pass.
/// Precondition (checked on the host): the counts add up to at least st.remaining.
/// Complexity: O(number of bins). Returns false (state unchanged) when the counts cannot hold the
/// sought rank, which means the histograms were not of the same data.
template <class Key>
LORI_HOST_DEVICE bool radix_select_advance_unchecked(radix_select_state<Key>& st, const std::uint64_t* counts) noexcept {
  if (st.finished()) return true;
  const int shift = radix_shift(st.key_bits, st.pass);
  const int bins = 1 << radix_width(st.key_bits, st.pass);
  index_t above = 0;
  for (int b = bins - 1; b >= 0; --b) {
    const auto c = static_cast<index_t>(counts[b]);
    if (above + c >= st.remaining) {
      st.greater += above;
      st.remaining -= above;
      st.prefix |= static_cast<Key>(static_cast<Key>(b) << shift);
      ++st.pass;
      return true;
    }
    above += c;
  }
  return false;
}

/// Checked form of radix_select_advance_unchecked: throws lori::error when the counts do not add up
/// to the rank sought (histograms of different data, or of the wrong pass/prefix).
template <class Key>
void radix_select_advance(radix_select_state<Key>& st, const std::uint64_t* counts) {
  LORI_EXPECTS(counts != nullptr || st.finished(), "radix_select_advance: null counts");
  LORI_EXPECTS(radix_select_advance_unchecked(st, counts),
               "radix_select_advance: the histogram holds fewer keys than the rank sought");
}

namespace detail {
[[noreturn]] inline void throw_non_finite(std::string_view fn, std::string_view name, index_t i, index_t j, index_t cols) {
  std::string msg(fn);
  msg += ": non-finite value (NaN or Inf) in tensor '";
  msg += name;
  msg += "' at (";
  msg += std::to_string(i);
  msg += ", ";
  msg += std::to_string(j);
  msg += "), flat index ";
  msg += std::to_string(i * cols + j);
  throw ::lori::error(msg);
}
}  // namespace detail

/// Adds to `counts` (1 << radix_width(bits, pass) counters, bits = magnitude_key<T>::bits) the
/// histogram of digit `pass` of the magnitude keys of `values` whose higher digits equal `prefix`
/// (pass 0: all keys). Positions set in `exclude` (same shape as values, or null) count as key 0.
/// Every value is checked: NaN or +-Inf throws lori::error naming `name`, the row, column and flat
/// row-major index. Summable: histograms of disjoint parts added together equal the histogram of
/// the whole. Complexity: one read of values (and of exclude), O(rows * cols).
template <class T>
void magnitude_histogram(row_major_view<const T> values, const bitmask* exclude, int pass, magnitude_key_t<T> prefix,
                         std::uint64_t* counts, std::string_view name = "") {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  LORI_EXPECTS(pass >= 0 && pass < radix_passes<T>, "magnitude_histogram: pass out of range");
  LORI_EXPECTS(counts != nullptr, "magnitude_histogram: null counts");
  LORI_EXPECTS(exclude == nullptr || (exclude->rows() == values.rows() && exclude->cols() == values.cols()),
               "magnitude_histogram: exclusion mask shape differs from the tensor's");
  const int shift = radix_shift(bits, pass);
  const Key digit_mask = static_cast<Key>((Key{1} << radix_width(bits, pass)) - 1);
  const Key pmask = radix_prefix_mask<Key>(bits, pass);
  LORI_EXPECTS((prefix & ~pmask) == 0, "magnitude_histogram: prefix has bits below the fixed digits");
  const index_t rows = values.rows(), cols = values.cols();
  const index_t wpr = bitmask_words_per_row(cols);
  std::uint32_t sub[radix_bins] = {};  // second sub-histogram of pass 0, flushed before it can overflow
  index_t pending = 0;
  for (index_t i = 0; i < rows; ++i) {
    const T* row = values.row(i);
    const std::uint64_t* ex = exclude != nullptr ? exclude->word_data() + i * wpr : nullptr;
    Key bad = 0;
    if (ex == nullptr && pass == 0) {
      // Two interleaved halves of the row feed two sub-histograms (summed below), halving the chains of
      // increments of one hot bin.
      index_t j = 0;
      for (; j + 2 <= cols; j += 2) {
        const Key k0 = magnitude_bits(row[j]), k1 = magnitude_bits(row[j + 1]);
        bad |= static_cast<Key>(k0 >= magnitude_key<T>::infinity) | static_cast<Key>(k1 >= magnitude_key<T>::infinity);
        ++counts[k0 >> shift];
        ++sub[k1 >> shift];
      }
      for (; j < cols; ++j) {
        const Key key = magnitude_bits(row[j]);
        bad |= static_cast<Key>(key >= magnitude_key<T>::infinity);
        ++counts[key >> shift];
      }
    } else {
      for (index_t j = 0; j < cols; ++j) {
        Key key = magnitude_bits(row[j]);
        bad |= static_cast<Key>(key >= magnitude_key<T>::infinity);
        if (ex != nullptr && ((ex[j >> 6] >> (j & 63)) & 1u)) key = 0;
        if ((key & pmask) == prefix) ++counts[(key >> shift) & digit_mask];
      }
    }
    pending += cols;
    if (ex == nullptr && pass == 0 && (i + 1 == rows || pending + cols > (index_t{1} << 31))) {
      pending = 0;
      for (int b = 0; b < radix_bins; ++b) {
        counts[b] += sub[b];
        sub[b] = 0;
      }
    }
    if (bad != 0) {
      for (index_t j = 0; j < cols; ++j)
        if (magnitude_bits(row[j]) >= magnitude_key<T>::infinity) detail::throw_non_finite("magnitude_histogram", name, i, j, cols);
    }
  }
}

}  // namespace lori

#endif  // LORI_MASK_RADIX_SELECT_HPP
