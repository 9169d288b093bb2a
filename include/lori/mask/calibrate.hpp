// lori/mask/calibrate.hpp - LoRI-S mask calibration: keep the top-magnitude entries of the B's.
//
// After LoRI-D training, LoRI-S keeps the (1 - s) fraction of B entries with the largest magnitude,
// chosen per group of tensors (lori/mask/grouping.hpp; by default one group: the whole model), and
// trains only those. calibrate_mask() computes the masks without sorting and without concatenating:
//
//   per group: N = number of elements (excluded positions included), k = floor((1 - s) * N) computed
//   in double exactly as Python's int((1 - s) * N); tau = the k-th largest |B| (excluded positions
//   ranked as |B| = 0) found by radix selection (lori/mask/radix_select.hpp);
//   reference semantics (default; juzhengz/LoRI's `mask = |B| >= threshold`): keep |B| >= tau and not
//     excluded. Ties are all kept, so more than k may survive. When tau = 0 (k exceeds the number of
//     non-zero entries) every non-excluded entry is kept, zeros included, as the reference does.
//   exact semantics: keep exactly min(k, number of non-excluded entries) entries: those with
//     |B| > tau, then entries with |B| == tau in flat order (tensor order of the input list, then
//     row-major) until k are kept; excluded entries rank below every non-excluded one. Deterministic,
//     and identical on CPU and GPU (lori/cuda/calibrate.cuh).
//   k = 0 keeps nothing (threshold reported as +Inf).
//
// Algorithm (one thread): pass 0 reads every tensor of a group once and builds the histogram of the
// top 11 key bits (magnitude_histogram); pass 1 reads them once more, writes every mask word with the
// entries whose top digit is above the selected bucket (certainly kept) and collects the entries in
// the selected bucket (usually a few % of N) as candidates; the remaining digits and the tie-break
// run on the candidates only; their bits are then set. Two reads of the data, O(N + 2048 * passes).
// Memory: the masks, plus 16 bytes per candidate (at most N in degenerate inputs such as all-equal).
//
// Errors (lori::error): empty input list, sparsity outside [0, 1] or NaN, an exclusion mask whose
// shape differs from its tensor's, a granularity the names cannot support (mask_group_label), and
// any NaN or +-Inf in a B (the message names the tensor, the row, column and flat index).
#ifndef LORI_MASK_CALIBRATE_HPP
#define LORI_MASK_CALIBRATE_HPP

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/mask/bitmask.hpp"
#include "lori/mask/grouping.hpp"
#include "lori/mask/radix_select.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

namespace lori {

/// How ties at the threshold are treated (see the header comment).
enum class mask_semantics {
  reference,  ///< keep |B| >= tau (juzhengz/LoRI); more than k may be kept when values tie
  exact       ///< keep exactly k: ties broken by lower flat index (tensor order, then row-major)
};

/// One named B tensor to calibrate: a d x r row-major view (any leading dimension) and an optional
/// exclusion mask of the same shape (positions owned by earlier tasks: ranked as 0, never kept).
/// The view and the mask are not copied; they must outlive the call.
template <class T>
struct calibration_tensor {
  std::string name;
  row_major_view<const T> values;
  const bitmask* exclude = nullptr;
};

/// Options of calibrate_mask.
struct calibration_options {
  double sparsity = 0.9;                                    ///< s in [0, 1]: the fraction dropped
  mask_granularity granularity = mask_granularity::model;  ///< one threshold per group
  mask_semantics semantics = mask_semantics::reference;    ///< tie handling
  mask_group_function group_by;                             ///< when set, replaces `granularity`
};

/// Per-group outcome: the threshold tau and how many entries were kept.
struct calibration_group_report {
  std::string label;          ///< group label (see mask_group_label)
  index_t size = 0;           ///< N: elements in the group (excluded ones included)
  index_t k = 0;              ///< floor((1 - s) * N)
  index_t kept = 0;           ///< entries kept (== min(k, non-excluded) under exact semantics)
  double threshold = 0;       ///< tau = the k-th largest |B| (+Inf when k = 0)
  std::uint64_t threshold_bits = 0;  ///< tau's magnitude key (float: 32-bit pattern), 0 when k = 0
  index_t ties_kept = 0;      ///< entries kept with |B| == tau
};

/// Per-tensor outcome (what the reference's check_sparsity prints).
struct calibration_tensor_report {
  std::string name;
  index_t group = 0;   ///< index into calibration_report::groups
  index_t layer = -1;  ///< parsed layer index (-1 when the name has none)
  index_t rows = 0, cols = 0;
  index_t size = 0;
  index_t kept = 0;
  double fraction = 0;  ///< kept / size (0 for an empty tensor)
};

/// Per-layer totals, over the tensors whose names carry a layer index.
struct calibration_layer_report {
  index_t layer = 0;
  index_t size = 0;
  index_t kept = 0;
  double fraction = 0;
};

/// What calibration did: thresholds per group, kept counts per tensor, per layer and in total.
struct calibration_report {
  double sparsity = 0;
  mask_granularity granularity = mask_granularity::model;
  mask_semantics semantics = mask_semantics::reference;
  bool custom_grouping = false;
  std::vector<calibration_group_report> groups;
  std::vector<calibration_tensor_report> tensors;
  std::vector<calibration_layer_report> layers;  ///< ascending layer index
  index_t total_size = 0;
  index_t total_kept = 0;
  double total_fraction = 0;  ///< total_kept / total_size

  /// A human-readable summary: one line per group, per layer, and the total (sparsity = 1 - fraction).
  std::string to_string() const {
    std::string out;
    char buf[512];
    for (const auto& g : groups) {
      std::snprintf(buf, sizeof(buf), "group %s: N %lld, k %lld, threshold %.9g, kept %lld\n", g.label.c_str(),
                    static_cast<long long>(g.size), static_cast<long long>(g.k), g.threshold, static_cast<long long>(g.kept));
      out += buf;
    }
    for (const auto& l : layers) {
      std::snprintf(buf, sizeof(buf), "layer %lld sparsity %.6f (kept %lld of %lld)\n", static_cast<long long>(l.layer),
                    1.0 - l.fraction, static_cast<long long>(l.kept), static_cast<long long>(l.size));
      out += buf;
    }
    std::snprintf(buf, sizeof(buf), "total sparsity %.6f (kept %lld of %lld)\n", 1.0 - total_fraction,
                  static_cast<long long>(total_kept), static_cast<long long>(total_size));
    out += buf;
    return out;
  }
};

/// Masks (one per input tensor, same order and shape) and the report.
struct calibration_result {
  std::vector<bitmask> masks;
  calibration_report report;
};

/// k = floor((1 - s) * n), computed in double as Python's int((1 - s) * n) (so k matches the
/// reference bit for bit, e.g. s = 0.9 gives (1 - 0.9) = 0.09999999999999998). Throws lori::error
/// unless 0 <= s <= 1 and n >= 0.
inline index_t calibration_keep_count(index_t n, double sparsity) {
  LORI_EXPECTS(sparsity >= 0.0 && sparsity <= 1.0, "calibrate_mask: sparsity must be in [0, 1]");
  LORI_EXPECTS(n >= 0, "calibrate_mask: negative element count");
  const double kd = std::floor((1.0 - sparsity) * static_cast<double>(n));
  const auto k = static_cast<index_t>(kd);
  return k < 0 ? 0 : (k > n ? n : k);
}

namespace detail {
/// Group assignment and checks shared by the CPU and GPU paths.
template <class Names>
mask_groups calibration_groups(const Names& names, const calibration_options& opt) {
  LORI_EXPECTS(!names.empty(), "calibrate_mask: no tensors given");
  LORI_EXPECTS(opt.sparsity >= 0.0 && opt.sparsity <= 1.0, "calibrate_mask: sparsity must be in [0, 1]");
  return assign_mask_groups(names, opt.granularity, opt.group_by);
}

/// Fills the per-tensor, per-layer and total parts of a report from kept counts per tensor.
inline void finish_calibration_report(calibration_report& rep, const std::vector<std::string>& names,
                                      const std::vector<index_t>& rows, const std::vector<index_t>& cols,
                                      const mask_groups& groups, const std::vector<index_t>& kept) {
  std::map<index_t, calibration_layer_report> layers;
  rep.tensors.clear();
  rep.total_size = rep.total_kept = 0;
  for (std::size_t t = 0; t < names.size(); ++t) {
    calibration_tensor_report tr;
    tr.name = names[t];
    tr.group = groups.group_of[t];
    tr.layer = parse_peft_name(names[t]).layer;
    tr.rows = rows[t];
    tr.cols = cols[t];
    tr.size = rows[t] * cols[t];
    tr.kept = kept[t];
    tr.fraction = tr.size > 0 ? static_cast<double>(tr.kept) / static_cast<double>(tr.size) : 0.0;
    rep.total_size += tr.size;
    rep.total_kept += tr.kept;
    if (tr.layer >= 0) {
      auto& l = layers[tr.layer];
      l.layer = tr.layer;
      l.size += tr.size;
      l.kept += tr.kept;
    }
    rep.tensors.push_back(std::move(tr));
  }
  rep.layers.clear();
  for (auto& [i, l] : layers) {
    l.fraction = l.size > 0 ? static_cast<double>(l.kept) / static_cast<double>(l.size) : 0.0;
    rep.layers.push_back(l);
  }
  rep.total_fraction = rep.total_size > 0 ? static_cast<double>(rep.total_kept) / static_cast<double>(rep.total_size) : 0.0;
}

template <class Key>
struct calibration_candidate {
  Key key;
  std::uint32_t tensor;  // index in the input list
  index_t bit;           // bit position in the tensor's mask storage: (i * words_per_row + j / 64) * 64 + j % 64
};

/// Pass 1 of the CPU path for one tensor: writes every mask word with the entries certainly kept
/// (key > bucket_max, not excluded) and appends the non-excluded entries of the selected bucket
/// ((key & pmask) == prefix) to `cands`, in row-major order. Returns the number of excluded entries.
template <class T>
index_t calibration_split_tensor(row_major_view<const T> v, const bitmask* ex, bitmask& out, std::uint32_t tensor,
                                 magnitude_key_t<T> pmask, magnitude_key_t<T> prefix, magnitude_key_t<T> bucket_max,
                                 std::vector<calibration_candidate<magnitude_key_t<T>>>& cands) {
  using Key = magnitude_key_t<T>;
  const index_t rows = v.rows(), cols = v.cols(), wpr = bitmask_words_per_row(cols);
  std::uint64_t* ow = out.word_data();
  index_t excluded = 0;
  for (index_t i = 0; i < rows; ++i) {
    const T* row = v.row(i);
    for (index_t w = 0; w < wpr; ++w) {
      const index_t j0 = w * 64;
      const int n = static_cast<int>(cols - j0 < 64 ? cols - j0 : 64);
      std::uint64_t def = 0, cand = 0;
      const T* p = row + j0;
      int b = 0;
#if defined(__SSE2__)
      if constexpr (std::is_same_v<T, float>) {
        // Keys are < 2^31, so signed 32-bit compares order them correctly.
        const __m128i absmask = _mm_set1_epi32(0x7fffffff), vmax = _mm_set1_epi32(static_cast<int>(bucket_max));
        const __m128i vpm = _mm_set1_epi32(static_cast<int>(pmask)), vpre = _mm_set1_epi32(static_cast<int>(prefix));
        for (; b + 4 <= n; b += 4) {
          const __m128i key = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + b)), absmask);
          const auto d = static_cast<std::uint64_t>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(key, vmax))));
          const auto c = static_cast<std::uint64_t>(
              _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(key, vpm), vpre))));
          def |= d << b;
          cand |= c << b;
        }
      }
#endif
      for (; b < n; ++b) {
        const Key key = magnitude_bits(p[b]);
        def |= static_cast<std::uint64_t>(key > bucket_max) << b;
        cand |= static_cast<std::uint64_t>((key & pmask) == prefix) << b;
      }
      if (ex != nullptr) {
        const std::uint64_t e = ex->word_data()[i * wpr + w];
        excluded += detail_bits::popcount64(e);
        def &= ~e;
        cand &= ~e;
      }
      ow[i * wpr + w] = def;
      while (cand != 0) {
        const int b = __builtin_ctzll(cand);
        cand &= cand - 1;
        cands.push_back({magnitude_bits(p[b]), tensor, (i * wpr + w) * 64 + b});
      }
    }
  }
  return excluded;
}
}  // namespace detail

/// Calibrates LoRI-S masks: for each group of tensors, keeps the top (1 - s) fraction of entries by
/// magnitude (see the header comment for the exact semantics). T is float or double.
/// Returns one bitmask per tensor (same order, rows x cols of each view) and the report.
/// Complexity: two reads of every tensor plus O(candidates * passes); one thread; no sort, no copy
/// of the data. Throws lori::error on the conditions listed in the header comment.
template <class T>
calibration_result calibrate_mask(const std::vector<calibration_tensor<T>>& tensors, const calibration_options& opt = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "calibrate_mask: T must be float or double");
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  constexpr int passes = radix_passes<T>;
  std::vector<std::string> names;
  std::vector<index_t> rows, cols;
  names.reserve(tensors.size());
  for (const auto& t : tensors) {
    names.push_back(t.name);
    rows.push_back(t.values.rows());
    cols.push_back(t.values.cols());
    LORI_EXPECTS(t.exclude == nullptr || (t.exclude->rows() == t.values.rows() && t.exclude->cols() == t.values.cols()),
                 "calibrate_mask: exclusion mask shape differs from its tensor's");
  }
  LORI_EXPECTS(tensors.size() < (std::size_t{1} << 32), "calibrate_mask: too many tensors");
  const mask_groups groups = detail::calibration_groups(names, opt);
  const index_t ng = groups.count();
  std::vector<std::vector<std::uint32_t>> members(static_cast<std::size_t>(ng));
  for (std::size_t t = 0; t < tensors.size(); ++t) members[static_cast<std::size_t>(groups.group_of[t])].push_back(static_cast<std::uint32_t>(t));

  calibration_result res;
  res.masks.reserve(tensors.size());
  for (const auto& t : tensors) res.masks.emplace_back(t.values.rows(), t.values.cols());
  auto& rep = res.report;
  rep.sparsity = opt.sparsity;
  rep.granularity = opt.granularity;
  rep.semantics = opt.semantics;
  rep.custom_grouping = static_cast<bool>(opt.group_by);
  rep.groups.resize(static_cast<std::size_t>(ng));

  std::vector<std::uint64_t> counts(radix_bins);
  std::vector<detail::calibration_candidate<Key>> cands;
  for (index_t g = 0; g < ng; ++g) {
    const auto& mem = members[static_cast<std::size_t>(g)];
    auto& gr = rep.groups[static_cast<std::size_t>(g)];
    gr.label = groups.labels[static_cast<std::size_t>(g)];
    for (auto t : mem) gr.size += tensors[t].values.size();
    gr.k = calibration_keep_count(gr.size, opt.sparsity);
    auto st = radix_select_begin<Key>(gr.k, gr.size, bits);

    // Pass 0: histogram of the top digit over the whole group (also the NaN/Inf check, always run).
    std::fill(counts.begin(), counts.end(), 0);
    for (auto t : mem) magnitude_histogram<T>(tensors[t].values, tensors[t].exclude, 0, 0, counts.data(), tensors[t].name);
    if (gr.k == 0) {
      gr.threshold = std::numeric_limits<double>::infinity();
      continue;  // masks stay all zero
    }
    radix_select_advance(st, counts.data());

    // Pass 1: certain bits written, the selected bucket's entries collected as candidates.
    const Key pmask = radix_prefix_mask<Key>(bits, 1);
    const Key bucket_max = static_cast<Key>(st.prefix | (~pmask & ((Key{1} << bits) - 1)));
    cands.clear();
    cands.reserve(static_cast<std::size_t>(counts[static_cast<std::size_t>(st.prefix >> radix_shift(bits, 0))]));
    index_t excluded = 0;
    for (auto t : mem)
      excluded += detail::calibration_split_tensor<T>(tensors[t].values, tensors[t].exclude, res.masks[t], t, pmask, st.prefix,
                                                      bucket_max, cands);
    // Excluded entries rank as key 0: they belong to the bucket (and to every later one) iff it is 0.
    for (int p = 1; p < passes && !st.finished(); ++p) {
      const int shift = radix_shift(bits, p);
      const Key dmask = static_cast<Key>((Key{1} << radix_width(bits, p)) - 1);
      const Key pm = radix_prefix_mask<Key>(bits, p);
      std::fill(counts.begin(), counts.end(), 0);
      for (const auto& c : cands)
        if ((c.key & pm) == st.prefix) ++counts[static_cast<std::size_t>((c.key >> shift) & dmask)];
      if (st.prefix == 0) counts[0] += static_cast<std::uint64_t>(excluded);
      radix_select_advance(st, counts.data());
    }
    const Key tau = st.threshold();
    gr.threshold = static_cast<double>(magnitude_from_bits<T>(tau));
    gr.threshold_bits = static_cast<std::uint64_t>(tau);
    index_t ties_left = opt.semantics == mask_semantics::exact ? st.ties_needed() : std::numeric_limits<index_t>::max();
    for (const auto& c : cands) {
      bool keep = c.key > tau;
      if (c.key == tau && ties_left > 0) {
        keep = true;
        --ties_left;
        ++gr.ties_kept;
      }
      if (keep) {
        res.masks[c.tensor].word_data()[c.bit >> 6] |= std::uint64_t{1} << (c.bit & 63);
      }
    }
  }
  std::vector<index_t> kept(tensors.size());
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    kept[t] = res.masks[t].count();
    rep.groups[static_cast<std::size_t>(groups.group_of[t])].kept += kept[t];
  }
  detail::finish_calibration_report(rep, names, rows, cols, groups, kept);
  return res;
}

}  // namespace lori

#endif  // LORI_MASK_CALIBRATE_HPP
