// lori/cuda/calibrate.cuh - LoRI-S mask calibration on the GPU, bit-identical to lori::calibrate_mask.
//
// The same selection as the CPU path (lori/mask/calibrate.hpp: groups, k = floor((1 - s) N), tau =
// k-th largest |B| with excluded positions ranked as 0, `reference` or `exact` ties), over device
// tensors, in a few stream-ordered launches, with caller-provided scratch (CUB style):
//
//   lori::cuda::calibration_plan<float> plan(tensors, options);   // host: groups, tiles, sizes
//   device_buffer<std::byte> ws(plan.workspace_bytes());
//   plan.run(ws.data(), ws.size(), stream);                      // enqueue only, no host sync
//   lori::calibration_report rep = plan.report(ws.data(), stream); // syncs; throws on NaN/Inf
//
// Kernels (T = float: 3 digit passes of 11/11/9 bits; double: 6):
//   1. histogram of the top digit of every element (one block per tile of rows of one tensor,
//      shared-memory histogram flushed with global atomics; NaN/Inf detection; excluded counted);
//   2. select: one block per group narrows its radix_select_state (lori/mask/radix_select.hpp) from
//      the summed histogram and clears it for the next pass;
//   3. split: the second and last full read. One thread per mask word writes the bits certainly kept
//      (top digit above the selected bucket) and appends the bucket's entries to a candidate list
//      (block scan + one atomic per block), histogramming their next digit;
//   4. the remaining digits (and, for exact semantics, a radix selection of the flat positions of the
//      ties: the first `ties_needed` in flat order are kept) run on the candidates only;
//   5. fix: candidates that are kept get their bit (atomicOr); count: kept entries per tensor.
// When the selected buckets hold more entries than the candidate capacity (degenerate data such as
// mostly-equal values), the kernels see it on the device and fall back to passes over the full data
// and a final full mask-writing pass: the same result, slower. Every mask word is written (no
// memset needed by the caller).
//
// Histograms are summable: this is the step a multi-GPU calibration all-reduces (see docs/mask.md).
#ifndef LORI_CUDA_CALIBRATE_CUH
#define LORI_CUDA_CALIBRATE_CUH

#include "lori/config.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/mask/bitmask.hpp"
#include "lori/mask/calibrate.hpp"
#include "lori/mask/grouping.hpp"
#include "lori/mask/radix_select.hpp"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace lori::cuda {

/// One device tensor to calibrate: values (device memory, row-major, any leading dimension), an
/// optional exclusion mask (device words; words == nullptr means none) and the output mask (device
/// words, rows x cols, words_per_row = ceil(cols / 64), fully written by run()).
template <class T>
struct device_calibration_tensor {
  std::string name;
  row_major_view<const T> values;
  bitmask_view exclude;
  mutable_bitmask_view mask;
};

namespace detail {

inline constexpr int calib_block = 256;
inline constexpr index_t calib_tile_elems = 16384;
inline constexpr index_t position_bits = 63;
inline constexpr std::uint64_t position_mask = (std::uint64_t{1} << position_bits) - 1;

template <class T>
struct calib_tensor_desc {
  const T* data;
  index_t rows, cols, ld;
  const std::uint64_t* excl;  // may be null
  std::uint64_t* out;
  index_t wpr;
  index_t group;
  index_t elem_offset;  // sum of rows * cols of the tensors before (NaN reports)
  index_t bit_offset;   // sum of rows * wpr * 64 of the tensors before (tie order: flat order)
  int fast;             // float, packed, 16-byte aligned, cols in {4, 8, 16, 32} or a multiple of 64:
                        // the split pass reads it with coalesced float4 loads (calib_split_fast)
};

struct calib_tile {
  index_t tensor;
  index_t row_begin, row_end;
};

template <class Key>
struct calib_candidate {
  Key key;
  std::uint32_t tensor;
  std::uint64_t bit;  // bit position in the tensor's mask storage ((i * wpr + j / 64) * 64 + j % 64)
};

template <class Key>
struct calib_group_state {
  radix_select_state<Key> value;              // selection of tau
  radix_select_state<std::uint64_t> tie;      // exact: selection among the ties' positions
  unsigned long long excluded;                // excluded entries in the group
  unsigned long long ties_kept;
};

struct calib_globals {
  unsigned long long bad_position;  // smallest flat position of a NaN/Inf (~0 when none)
  unsigned long long cand_needed;   // sum of the selected buckets' sizes after pass 0
  unsigned long long cand_count;    // candidates written
};

template <class T>
struct calib_params {
  using Key = magnitude_key_t<T>;
  const calib_tensor_desc<T>* tensors;
  const calib_tile* tiles;
  calib_group_state<Key>* groups;
  unsigned long long* hist;  // groups x radix_bins
  calib_globals* globals;
  calib_candidate<Key>* cands;
  unsigned long long* kept;  // per tensor
  index_t capacity;
  index_t num_groups;
  int exact;
};

template <class Key>
__device__ __forceinline__ bool calib_compact(const calib_globals* g, index_t capacity) {
  return static_cast<index_t>(g->cand_needed) <= capacity;
}

// Element e (< rows_in_tile * cols) of a tile: row and column.
__device__ __forceinline__ void calib_rc(index_t e, index_t cols, index_t r0, index_t& r, index_t& c) {
  if (cols < (index_t{1} << 31) && e < (index_t{1} << 31)) {
    const auto ue = static_cast<std::uint32_t>(e), uc = static_cast<std::uint32_t>(cols);
    r = r0 + ue / uc;
    c = ue % uc;
  } else {
    r = r0 + e / cols;
    c = e % cols;
  }
}

__device__ __forceinline__ bool calib_excluded(const std::uint64_t* ex, index_t wpr, index_t r, index_t c) {
  return ex != nullptr && ((ex[r * wpr + (c >> 6)] >> (c & 63)) & 1u);
}

// Flushes a block's shared histogram into the group's global one; clears nothing.
__device__ __forceinline__ void calib_flush(const unsigned int* sh, unsigned long long* gh) {
  for (int b = threadIdx.x; b < radix_bins; b += blockDim.x)
    if (sh[b] != 0) atomicAdd(gh + b, static_cast<unsigned long long>(sh[b]));
}

// Mode 0: value digits (pass 0 counts excluded as key 0 and checks finiteness; later passes skip
// excluded entries, whose count the select kernel adds to bin 0 when the prefix is 0).
// Mode 1: digits of the tie keys (position_mask - flat bit position) of the non-excluded entries
// whose key equals tau.
// Runs over full tiles; in compact mode (candidates available) only pass 0 uses it.
template <class T, int Mode>
__global__ void __launch_bounds__(calib_block) calib_hist_tiles(calib_params<T> p, int pass, int first) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  if (!first && calib_compact<Key>(p.globals, p.capacity)) return;
  const calib_tile tile = p.tiles[blockIdx.x];
  const calib_tensor_desc<T> td = p.tensors[tile.tensor];
  calib_group_state<Key>* gs = p.groups + td.group;
  const radix_select_state<Key> vs = gs->value;
  const radix_select_state<std::uint64_t> ts = gs->tie;
  if (Mode == 0 ? vs.finished() && pass > 0 : ts.finished()) return;  // uniform over the block
  __shared__ unsigned int sh[radix_bins];
  __shared__ unsigned int sh_excl;
  for (int b = threadIdx.x; b < radix_bins; b += blockDim.x) sh[b] = 0;
  if (threadIdx.x == 0) sh_excl = 0;
  __syncthreads();
  const int kbits = Mode == 0 ? bits : static_cast<int>(position_bits);
  const int shift = radix_shift(kbits, pass);
  const std::uint64_t dmask = (std::uint64_t{1} << radix_width(kbits, pass)) - 1;
  const std::uint64_t pm = radix_prefix_mask<std::uint64_t>(kbits, pass);
  const index_t ne = (tile.row_end - tile.row_begin) * td.cols;
  const bool flat = td.excl == nullptr && td.ld == td.cols;
  const T* base = td.data + tile.row_begin * td.ld;
  unsigned int excl_here = 0;
  if constexpr (Mode == 0 && sizeof(T) == 4) {
    if (pass == 0 && flat && td.fast) {  // packed, 16-byte aligned, cols % 4 == 0: float4 loads
      const auto* base4 = reinterpret_cast<const float4*>(base);
      for (index_t v = threadIdx.x; v < ne / 4; v += blockDim.x) {
        const float4 x4 = base4[v];
        const float xs[4] = {x4.x, x4.y, x4.z, x4.w};
        for (int b = 0; b < 4; ++b) {
          const Key key = magnitude_bits(xs[b]);
          if (key >= magnitude_key<T>::infinity) {
            index_t r = 0, c = 0;
            calib_rc(4 * v + b, td.cols, tile.row_begin, r, c);
            atomicMin(&p.globals->bad_position, static_cast<unsigned long long>(td.elem_offset + r * td.cols + c));
          }
          atomicAdd(&sh[key >> shift], 1u);
        }
      }
      __syncthreads();
      calib_flush(sh, p.hist + td.group * radix_bins);
      return;
    }
  }
  for (index_t e = threadIdx.x; e < ne; e += blockDim.x) {
    index_t r = 0, c = 0;
    T x;
    if (flat && Mode == 0 && pass == 0) {
      x = base[e];
    } else {
      calib_rc(e, td.cols, tile.row_begin, r, c);
      x = td.data[r * td.ld + c];
    }
    Key key = magnitude_bits(x);
    if (Mode == 0) {
      if (pass == 0) {
        if (key >= magnitude_key<T>::infinity) {
          if (flat) calib_rc(e, td.cols, tile.row_begin, r, c);
          atomicMin(&p.globals->bad_position, static_cast<unsigned long long>(td.elem_offset + r * td.cols + c));
        }
        if (!flat && calib_excluded(td.excl, td.wpr, r, c)) {
          key = 0;
          ++excl_here;
        }
        atomicAdd(&sh[static_cast<std::uint64_t>(key) >> shift], 1u);
      } else {
        if (calib_excluded(td.excl, td.wpr, r, c)) continue;
        if ((static_cast<std::uint64_t>(key) & pm) == static_cast<std::uint64_t>(vs.prefix))
          atomicAdd(&sh[(static_cast<std::uint64_t>(key) >> shift) & dmask], 1u);
      }
    } else {
      if (key != vs.prefix || calib_excluded(td.excl, td.wpr, r, c)) continue;
      const std::uint64_t pos = static_cast<std::uint64_t>(td.bit_offset + (r * td.wpr + (c >> 6)) * 64 + (c & 63));
      const std::uint64_t tk = position_mask - pos;
      if ((tk & pm) == ts.prefix) atomicAdd(&sh[(tk >> shift) & dmask], 1u);
    }
  }
  if (Mode == 0 && pass == 0 && excl_here != 0) atomicAdd(&sh_excl, excl_here);
  __syncthreads();
  calib_flush(sh, p.hist + td.group * radix_bins);
  if (Mode == 0 && pass == 0 && threadIdx.x == 0 && sh_excl != 0)
    atomicAdd(&gs->excluded, static_cast<unsigned long long>(sh_excl));
}

// Same as calib_hist_tiles for passes >= 2 over the candidate list (compact mode only).
template <class T, int Mode>
__global__ void __launch_bounds__(calib_block) calib_hist_cands(calib_params<T> p, int pass) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  if (!calib_compact<Key>(p.globals, p.capacity)) return;
  const index_t n = static_cast<index_t>(p.globals->cand_count);
  const int kbits = Mode == 0 ? bits : static_cast<int>(position_bits);
  const int shift = radix_shift(kbits, pass);
  const std::uint64_t dmask = (std::uint64_t{1} << radix_width(kbits, pass)) - 1;
  const std::uint64_t pm = radix_prefix_mask<std::uint64_t>(kbits, pass);
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const calib_candidate<Key> c = p.cands[i];
    const calib_tensor_desc<T>& td = p.tensors[c.tensor];
    const calib_group_state<Key>* gs = p.groups + td.group;
    if (Mode == 0) {
      if (gs->value.finished() || gs->value.pass != pass) continue;
      if ((static_cast<std::uint64_t>(c.key) & pm) == static_cast<std::uint64_t>(gs->value.prefix))
        atomicAdd(p.hist + td.group * radix_bins + ((static_cast<std::uint64_t>(c.key) >> shift) & dmask), 1ull);
    } else {
      if (gs->tie.finished() || gs->tie.pass != pass || c.key != gs->value.prefix) continue;
      const std::uint64_t tk = position_mask - (static_cast<std::uint64_t>(td.bit_offset) + c.bit);
      if ((tk & pm) == gs->tie.prefix) atomicAdd(p.hist + td.group * radix_bins + ((tk >> shift) & dmask), 1ull);
    }
  }
}

// One block per group: narrows the group's state with its histogram, then clears the histogram.
// Mode 0 narrows the value selection (adding the excluded entries to bin 0 for passes >= 1 when the
// prefix is 0), Mode 1 the tie selection. After the last value pass of an exact-semantics run it
// starts the tie selection (k = ties needed).
template <class Key, int Mode>
__global__ void __launch_bounds__(calib_block) calib_select(calib_group_state<Key>* groups, unsigned long long* hist,
                                                            calib_globals* globals, int pass, int exact) {
  constexpr int per = radix_bins / calib_block;  // 8 bins per thread
  using scan_t = cub::BlockScan<unsigned long long, calib_block>;
  __shared__ typename scan_t::TempStorage tmp;
  calib_group_state<Key>* gs = groups + blockIdx.x;
  unsigned long long* h = hist + blockIdx.x * static_cast<index_t>(radix_bins);
  const int rt = calib_block - 1 - static_cast<int>(threadIdx.x);  // thread 0 owns the top bins
  unsigned long long c[per];
  unsigned long long sum = 0;
  // Every thread reads the state before the scan's barriers; only the one thread that finds the
  // rank writes it afterwards, so no thread can see a half-updated state.
  const radix_select_state<Key> vst = gs->value;
  const radix_select_state<std::uint64_t> tst = gs->tie;
  const bool live = Mode == 0 ? (!vst.finished() && vst.pass == pass) : (!tst.finished() && tst.pass == pass);
  for (int b = 0; b < per; ++b) {
    c[b] = h[rt * per + b];
    h[rt * per + b] = 0;
  }
  if (Mode == 0 && pass > 0 && rt == 0 && vst.prefix == 0) c[0] += gs->excluded;
  for (int b = 0; b < per; ++b) sum += c[b];
  unsigned long long above = 0;
  scan_t(tmp).ExclusiveSum(sum, above);
  __syncthreads();
  if (!live) return;  // after the collective: every thread took part in the scan
  const index_t remaining = Mode == 0 ? vst.remaining : tst.remaining;
  if (static_cast<index_t>(above) < remaining && static_cast<index_t>(above + sum) >= remaining) {
    // This thread's bins hold the rank: hand its counts, zeros elsewhere, to the shared narrowing.
    unsigned long long local[radix_bins / calib_block];
    for (int b = 0; b < per; ++b) local[b] = c[b];
    const int shift_bins = rt * per;
    // Equivalent to radix_select_advance_unchecked on the full histogram: the bins above this
    // thread's hold `above` keys.
    index_t acc = static_cast<index_t>(above);
    for (int b = per - 1; b >= 0; --b) {
      const auto cnt = static_cast<index_t>(local[b]);
      if (acc + cnt >= remaining) {
        if (Mode == 0) {
          radix_select_state<Key> st = vst;
          st.greater += acc;
          st.remaining -= acc;
          st.prefix |= static_cast<Key>(static_cast<Key>(shift_bins + b) << radix_shift(st.key_bits, st.pass));
          ++st.pass;
          if (pass == 0) atomicAdd(&globals->cand_needed, static_cast<unsigned long long>(cnt));
          gs->value = st;
          if (st.finished() && exact) {
            radix_select_state<std::uint64_t> t{};
            t.k = st.remaining;
            t.remaining = st.remaining;
            t.key_bits = static_cast<int>(position_bits);
            gs->tie = t;
          }
        } else {
          radix_select_state<std::uint64_t> st = tst;
          st.greater += acc;
          st.remaining -= acc;
          st.prefix |= static_cast<std::uint64_t>(shift_bins + b) << radix_shift(st.key_bits, st.pass);
          ++st.pass;
          gs->tie = st;
        }
        break;
      }
      acc += cnt;
    }
  }
}

template <class T>
__device__ __forceinline__ void calib_word_bits(const calib_tensor_desc<T>& td, index_t r, index_t w, magnitude_key_t<T> above,
                                                magnitude_key_t<T> pm, magnitude_key_t<T> prefix, std::uint64_t& def,
                                                std::uint64_t& cand) {
  using Key = magnitude_key_t<T>;
  const index_t j0 = w * 64;
  const int n = static_cast<int>(td.cols - j0 < 64 ? td.cols - j0 : 64);
  const T* p = td.data + r * td.ld + j0;
  def = 0;
  cand = 0;
  int b = 0;
  if constexpr (sizeof(T) == 4) {
    if ((reinterpret_cast<std::uintptr_t>(p) & 15) == 0) {
      for (; b + 4 <= n; b += 4) {
        const float4 v = *reinterpret_cast<const float4*>(p + b);
        const Key k0 = magnitude_bits(v.x), k1 = magnitude_bits(v.y), k2 = magnitude_bits(v.z), k3 = magnitude_bits(v.w);
        def |= (static_cast<std::uint64_t>(k0 > above) | static_cast<std::uint64_t>(k1 > above) << 1 |
                static_cast<std::uint64_t>(k2 > above) << 2 | static_cast<std::uint64_t>(k3 > above) << 3)
               << b;
        cand |= (static_cast<std::uint64_t>((k0 & pm) == prefix) | static_cast<std::uint64_t>((k1 & pm) == prefix) << 1 |
                 static_cast<std::uint64_t>((k2 & pm) == prefix) << 2 | static_cast<std::uint64_t>((k3 & pm) == prefix) << 3)
                << b;
      }
    }
  }
  for (; b < n; ++b) {
    const Key key = magnitude_bits(p[b]);
    def |= static_cast<std::uint64_t>(key > above) << b;
    cand |= static_cast<std::uint64_t>((key & pm) == prefix) << b;
  }
  if (td.excl != nullptr) {
    const std::uint64_t e = td.excl[r * td.wpr + w];
    def &= ~e;
    cand &= ~e;
  }
}

// Pass 1 for a `fast` tensor (see calib_tensor_desc): thread v of the tile reads float4 v (elements
// 4v..4v+3, coalesced); the W = min(cols, 64) elements of a mask word are held by L = W / 4
// consecutive lanes (a power of two dividing 32), whose bits are OR-reduced with shuffles; the first
// lane of each group writes the word. Candidates and the digit-1 histogram as in calib_split.
template <class T, class Scan>
__device__ __forceinline__ void calib_split_fast(const calib_params<T>& p, const calib_tile& tile, const calib_tensor_desc<T>& td,
                                                 const radix_select_state<magnitude_key_t<T>>& vs, bool live, bool compact,
                                                 typename Scan::TempStorage& tmp, unsigned int* sh, unsigned long long& sh_base) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  const int shift0 = radix_shift(bits, 0), shift1 = radix_shift(bits, 1);
  const Key pm = radix_prefix_mask<Key>(bits, 1);
  const Key above = static_cast<Key>(vs.prefix | ((Key{1} << shift0) - 1));
  const Key dmask = static_cast<Key>((Key{1} << radix_width(bits, 1)) - 1);
  const int W = static_cast<int>(td.cols < 64 ? td.cols : 64);
  const int L = W / 4;
  const index_t n4 = (tile.row_end - tile.row_begin) * td.cols / 4;
  const auto* base4 = reinterpret_cast<const float4*>(td.data + tile.row_begin * td.cols);
  const index_t word0 = tile.row_begin * td.wpr;
  const int lane = static_cast<int>(threadIdx.x & 31u);
  for (index_t v0 = 0; v0 < n4; v0 += blockDim.x) {
    const index_t v = v0 + threadIdx.x;
    const bool in = v < n4;
    unsigned int def4 = 0, cand4 = 0;
    Key k[4] = {0, 0, 0, 0};
    const index_t word = word0 + v / L;
    const int bitpos = static_cast<int>((4 * v) & (W - 1));
    if (in && live) {
      const float4 x = base4[v];
      k[0] = magnitude_bits(x.x);
      k[1] = magnitude_bits(x.y);
      k[2] = magnitude_bits(x.z);
      k[3] = magnitude_bits(x.w);
      for (int b = 0; b < 4; ++b) {
        def4 |= static_cast<unsigned int>(k[b] > above) << b;
        cand4 |= static_cast<unsigned int>((k[b] & pm) == vs.prefix) << b;
      }
      if (td.excl != nullptr) {
        const auto e4 = static_cast<unsigned int>((td.excl[word] >> bitpos) & 0xfu);
        def4 &= ~e4;
        cand4 &= ~e4;
      }
    }
    std::uint64_t w = static_cast<std::uint64_t>(def4) << bitpos;
    for (int o = L / 2; o >= 1; o >>= 1) w |= __shfl_xor_sync(0xffffffffu, w, o);
    if (compact && in && (lane & (L - 1)) == 0) td.out[word] = w;
    const unsigned int cnt = static_cast<unsigned int>(__popc(cand4));
    unsigned int off = 0, total = 0;
    Scan(tmp).ExclusiveSum(cnt, off, total);
    if (compact && threadIdx.x == 0 && total != 0) sh_base = atomicAdd(&p.globals->cand_count, static_cast<unsigned long long>(total));
    __syncthreads();
    unsigned int slot = off;
    for (int b = 0; b < 4; ++b) {
      if (((cand4 >> b) & 1u) == 0) continue;
      atomicAdd(&sh[(k[b] >> shift1) & dmask], 1u);
      if (compact)
        p.cands[sh_base + slot] = calib_candidate<Key>{k[b], static_cast<std::uint32_t>(tile.tensor),
                                                       static_cast<std::uint64_t>(word * 64 + bitpos + b)};
      ++slot;
    }
    __syncthreads();  // sh_base and tmp are reused by the next chunk
  }
}

// Pass 1 (second full read), one thread per mask word. Compact mode: writes every word with the bits
// certainly kept and appends the candidates; both modes: histogram of digit 1 of the candidates.
template <class T>
__global__ void __launch_bounds__(calib_block) calib_split(calib_params<T> p) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  using scan_t = cub::BlockScan<unsigned int, calib_block>;
  __shared__ typename scan_t::TempStorage tmp;
  __shared__ unsigned int sh[radix_bins];
  __shared__ unsigned long long sh_base;
  const calib_tile tile = p.tiles[blockIdx.x];
  const calib_tensor_desc<T> td = p.tensors[tile.tensor];
  const radix_select_state<Key> vs = p.groups[td.group].value;
  const bool compact = calib_compact<Key>(p.globals, p.capacity);
  const bool live = vs.k > 0 && vs.pass == 1;  // k > 0 and more than one pass (always, for float/double)
  for (int b = threadIdx.x; b < radix_bins; b += blockDim.x) sh[b] = 0;
  __syncthreads();
  if constexpr (sizeof(T) == 4) {
    if (td.fast) {  // uniform over the block
      calib_split_fast<T, scan_t>(p, tile, td, vs, live, compact, tmp, sh, sh_base);
      calib_flush(sh, p.hist + td.group * radix_bins);
      return;
    }
  }
  const int shift0 = radix_shift(bits, 0), shift1 = radix_shift(bits, 1);
  const Key pm = radix_prefix_mask<Key>(bits, 1);
  const Key above = static_cast<Key>(vs.prefix | ((Key{1} << shift0) - 1));
  const Key dmask = static_cast<Key>((Key{1} << radix_width(bits, 1)) - 1);
  const index_t nw = (tile.row_end - tile.row_begin) * td.wpr;
  for (index_t q0 = 0; q0 < nw; q0 += blockDim.x) {
    const index_t q = q0 + threadIdx.x;
    std::uint64_t def = 0, cand = 0;
    index_t r = 0, w = 0;
    if (q < nw) {
      r = tile.row_begin + q / td.wpr;
      w = q % td.wpr;
      if (live) calib_word_bits<T>(td, r, w, above, pm, vs.prefix, def, cand);
      if (compact) td.out[r * td.wpr + w] = def;
    }
    const auto cnt = static_cast<unsigned int>(__popcll(cand));
    unsigned int off = 0, total = 0;
    scan_t(tmp).ExclusiveSum(cnt, off, total);
    if (compact && threadIdx.x == 0 && total != 0) sh_base = atomicAdd(&p.globals->cand_count, static_cast<unsigned long long>(total));
    __syncthreads();
    std::uint64_t cb = cand;
    unsigned int slot = off;
    while (cb != 0) {
      const int b = __ffsll(static_cast<long long>(cb)) - 1;
      cb &= cb - 1;
      const index_t j = w * 64 + b;
      const Key key = magnitude_bits(td.data[r * td.ld + j]);
      atomicAdd(&sh[(key >> shift1) & dmask], 1u);
      if (compact) p.cands[sh_base + slot] = calib_candidate<Key>{key, static_cast<std::uint32_t>(tile.tensor),
                                                                   static_cast<std::uint64_t>((r * td.wpr + w) * 64 + b)};
      ++slot;
    }
    __syncthreads();  // sh_base and tmp are reused by the next chunk
  }
  calib_flush(sh, p.hist + td.group * radix_bins);
}

template <class T>
__device__ __forceinline__ bool calib_keep_tie(const calib_params<T>& p, const calib_group_state<magnitude_key_t<T>>* gs,
                                               std::uint64_t pos) {
  return !p.exact || (position_mask - pos) >= gs->tie.prefix;
}

// Compact mode: sets the bits of the kept candidates.
template <class T>
__global__ void __launch_bounds__(calib_block) calib_fix(calib_params<T> p) {
  using Key = magnitude_key_t<T>;
  if (!calib_compact<Key>(p.globals, p.capacity)) return;
  const index_t n = static_cast<index_t>(p.globals->cand_count);
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const calib_candidate<Key> c = p.cands[i];
    const calib_tensor_desc<T>& td = p.tensors[c.tensor];
    calib_group_state<Key>* gs = p.groups + td.group;
    const Key tau = gs->value.prefix;
    bool keep = c.key > tau;
    if (c.key == tau && calib_keep_tie(p, gs, static_cast<std::uint64_t>(td.bit_offset) + c.bit)) {
      keep = true;
      atomicAdd(&gs->ties_kept, 1ull);
    }
    if (keep) atomicOr(reinterpret_cast<unsigned long long*>(td.out + (c.bit >> 6)), 1ull << (c.bit & 63));
  }
}

// Overflow mode: writes every mask word from tau (and the tie cut) over the full data.
template <class T>
__global__ void __launch_bounds__(calib_block) calib_write(calib_params<T> p) {
  using Key = magnitude_key_t<T>;
  if (calib_compact<Key>(p.globals, p.capacity)) return;
  const calib_tile tile = p.tiles[blockIdx.x];
  const calib_tensor_desc<T> td = p.tensors[tile.tensor];
  calib_group_state<Key>* gs = p.groups + td.group;
  const bool live = gs->value.k > 0;
  const Key tau = gs->value.prefix;
  const index_t nw = (tile.row_end - tile.row_begin) * td.wpr;
  for (index_t q = threadIdx.x; q < nw; q += blockDim.x) {
    const index_t r = tile.row_begin + q / td.wpr, w = q % td.wpr;
    std::uint64_t word = 0, ties = 0;
    if (live) {
      const index_t j0 = w * 64;
      const int n = static_cast<int>(td.cols - j0 < 64 ? td.cols - j0 : 64);
      const std::uint64_t ex = td.excl != nullptr ? td.excl[r * td.wpr + w] : 0;
      for (int b = 0; b < n; ++b) {
        if ((ex >> b) & 1u) continue;
        const Key key = magnitude_bits(td.data[r * td.ld + j0 + b]);
        if (key > tau) word |= std::uint64_t{1} << b;
        else if (key == tau && calib_keep_tie(p, gs, static_cast<std::uint64_t>(td.bit_offset + (r * td.wpr + w) * 64 + b)))
          ties |= std::uint64_t{1} << b;
      }
    }
    td.out[r * td.wpr + w] = word | ties;
    if (ties != 0) atomicAdd(&gs->ties_kept, static_cast<unsigned long long>(__popcll(ties)));
  }
}

// Kept entries per tensor (popcount of the finished masks).
template <class T>
__global__ void __launch_bounds__(calib_block) calib_count(calib_params<T> p) {
  using reduce_t = cub::BlockReduce<unsigned long long, calib_block>;
  __shared__ typename reduce_t::TempStorage tmp;
  const calib_tile tile = p.tiles[blockIdx.x];
  const calib_tensor_desc<T> td = p.tensors[tile.tensor];
  const index_t w0 = tile.row_begin * td.wpr, w1 = tile.row_end * td.wpr;
  unsigned long long c = 0;
  for (index_t q = w0 + threadIdx.x; q < w1; q += blockDim.x) c += static_cast<unsigned long long>(__popcll(td.out[q]));
  const unsigned long long total = reduce_t(tmp).Sum(c);
  if (threadIdx.x == 0 && total != 0) atomicAdd(p.kept + tile.tensor, total);
}

inline std::size_t calib_align(std::size_t x) { return (x + 255) & ~std::size_t{255}; }

}  // namespace detail

/// A calibration of a fixed set of device tensors: built once on the host (groups, tiles, the
/// workspace layout), run any number of times on a stream. T is float or double.
template <class T>
class calibration_plan {
 public:
  using key_type = magnitude_key_t<T>;

  /// Checks the tensors and options as lori::calibrate_mask does (empty list, sparsity, exclusion
  /// shapes, output mask shapes and null pointers, granularity vs names) and plans the run.
  /// candidate_capacity: how many entries of the selected buckets the workspace can hold (16 bytes
  /// each for float, 24 for double); -1 picks max(65536, N / 16), enough for data whose top-digit
  /// bucket at the threshold holds at most ~6% of the entries (normal-like B's hold ~3%). Larger
  /// buckets fall back, on the device, to full-data passes (same result, slower).
  calibration_plan(std::vector<device_calibration_tensor<T>> tensors, const calibration_options& opt,
                   index_t candidate_capacity = -1)
      : tensors_(std::move(tensors)), opt_(opt) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "calibration_plan: T must be float or double");
    std::vector<std::string> names;
    for (const auto& t : tensors_) {
      names.push_back(t.name);
      const index_t r = t.values.rows(), c = t.values.cols();
      LORI_EXPECTS(t.exclude.words == nullptr || (t.exclude.rows == r && t.exclude.cols == c &&
                                                  t.exclude.words_per_row == bitmask_words_per_row(c)),
                   "calibration_plan: exclusion mask shape differs from its tensor's");
      LORI_EXPECTS(t.mask.rows == r && t.mask.cols == c && t.mask.words_per_row == bitmask_words_per_row(c),
                   "calibration_plan: output mask shape differs from its tensor's");
      LORI_EXPECTS(t.mask.words != nullptr || r * c == 0, "calibration_plan: null output mask");
      LORI_EXPECTS(c < (index_t{1} << 31), "calibration_plan: more than 2^31 columns");
    }
    LORI_EXPECTS(tensors_.size() < (std::size_t{1} << 32), "calibration_plan: too many tensors");
    groups_ = lori::detail::calibration_groups(names, opt_);
    index_t elem = 0, bit = 0;
    for (std::size_t t = 0; t < tensors_.size(); ++t) {
      const auto& in = tensors_[t];
      detail::calib_tensor_desc<T> d{};
      d.data = in.values.data();
      d.rows = in.values.rows();
      d.cols = in.values.cols();
      d.ld = in.values.ld();
      d.excl = in.exclude.words;
      d.out = in.mask.words;
      d.wpr = bitmask_words_per_row(d.cols);
      d.group = groups_.group_of[t];
      d.elem_offset = elem;
      d.bit_offset = bit;
      d.fast = std::is_same_v<T, float> && d.ld == d.cols && (reinterpret_cast<std::uintptr_t>(d.data) & 15) == 0 &&
               (d.cols == 4 || d.cols == 8 || d.cols == 16 || d.cols == 32 || d.cols % 64 == 0);
      elem += d.rows * d.cols;
      bit += d.rows * d.wpr * 64;
      descs_.push_back(d);
      if (d.rows * d.cols == 0) continue;
      const index_t rows_per_tile = std::max<index_t>(1, detail::calib_tile_elems / d.cols);
      for (index_t r0 = 0; r0 < d.rows; r0 += rows_per_tile)
        tiles_.push_back({static_cast<index_t>(t), r0, std::min(d.rows, r0 + rows_per_tile)});
    }
    LORI_EXPECTS(bit <= static_cast<index_t>(detail::position_mask), "calibration_plan: too many elements");
    LORI_EXPECTS(tiles_.size() < (std::size_t{1} << 31), "calibration_plan: too many tiles");
    total_ = elem;
    group_init_.resize(static_cast<std::size_t>(groups_.count()));
    group_size_.assign(static_cast<std::size_t>(groups_.count()), 0);
    for (const auto& d : descs_) group_size_[static_cast<std::size_t>(d.group)] += d.rows * d.cols;
    for (std::size_t g = 0; g < group_init_.size(); ++g) {
      auto& gs = group_init_[g];
      gs = {};
      const index_t k = calibration_keep_count(group_size_[g], opt_.sparsity);
      gs.value = radix_select_begin<key_type>(k, group_size_[g], magnitude_key<T>::bits);
      gs.tie.key_bits = static_cast<int>(detail::position_bits);  // k = 0 (finished) until started
    }
    capacity_ = candidate_capacity >= 0 ? candidate_capacity : std::max<index_t>(65536, total_ / 16);
    capacity_ = std::min(capacity_, total_);
    // Workspace layout.
    using G = detail::calib_group_state<key_type>;
    off_tensors_ = 0;
    off_tiles_ = off_tensors_ + detail::calib_align(descs_.size() * sizeof(detail::calib_tensor_desc<T>));
    off_init_ = off_tiles_ + detail::calib_align(tiles_.size() * sizeof(detail::calib_tile));
    off_groups_ = off_init_ + detail::calib_align(group_init_.size() * sizeof(G));
    off_hist_ = off_groups_ + detail::calib_align(group_init_.size() * sizeof(G));
    off_globals_ = off_hist_ + detail::calib_align(group_init_.size() * radix_bins * sizeof(unsigned long long));
    off_kept_ = off_globals_ + detail::calib_align(sizeof(detail::calib_globals));
    off_cands_ = off_kept_ + detail::calib_align(descs_.size() * sizeof(unsigned long long));
    bytes_ = off_cands_ + detail::calib_align(static_cast<std::size_t>(capacity_) * sizeof(detail::calib_candidate<key_type>));
    ws_zero_begin_ = off_hist_;  // histograms, globals and kept counts start at zero
    ws_zero_end_ = off_cands_;
  }

  /// Bytes of device scratch run() needs (256-byte aligned regions).
  std::size_t workspace_bytes() const noexcept { return bytes_; }
  /// Candidate capacity in entries (see the constructor).
  index_t candidate_capacity() const noexcept { return capacity_; }
  /// Number of groups.
  index_t group_count() const noexcept { return groups_.count(); }

  /// Enqueues the calibration on `stream`: writes every mask word of every tensor. `workspace` is
  /// device memory of at least workspace_bytes(), 256-byte aligned (cudaMalloc memory is), untouched
  /// by the caller until report() or a stream synchronisation. Does not synchronise; NaN/Inf are
  /// reported by report(). The plan's tensor and tile descriptors (a few KB) are copied into the
  /// workspace first (cudaMemcpyAsync from pageable host memory, staged before the call returns);
  /// pass descriptors_uploaded = true to skip that when this same workspace already holds them from
  /// an earlier run() of this plan (repeated calibrations, benchmarks).
  void run(void* workspace, std::size_t bytes, cudaStream_t stream, bool descriptors_uploaded = false) const {
    LORI_EXPECTS(workspace != nullptr || bytes_ == 0, "calibration_plan::run: null workspace");
    LORI_EXPECTS(bytes >= bytes_, "calibration_plan::run: workspace smaller than workspace_bytes()");
    LORI_EXPECTS((reinterpret_cast<std::uintptr_t>(workspace) & 255) == 0, "calibration_plan::run: workspace not 256-byte aligned");
    auto* ws = static_cast<std::byte*>(workspace);
    const auto p = params(ws);
    if (!descriptors_uploaded) {
      LORI_CUDA_CHECK(cudaMemcpyAsync(ws + off_tensors_, descs_.data(), descs_.size() * sizeof(descs_[0]), cudaMemcpyHostToDevice, stream));
      if (!tiles_.empty())
        LORI_CUDA_CHECK(cudaMemcpyAsync(ws + off_tiles_, tiles_.data(), tiles_.size() * sizeof(tiles_[0]), cudaMemcpyHostToDevice, stream));
      LORI_CUDA_CHECK(cudaMemcpyAsync(ws + off_init_, group_init_.data(), group_init_.size() * sizeof(group_init_[0]),
                                      cudaMemcpyHostToDevice, stream));
    }
    LORI_CUDA_CHECK(cudaMemcpyAsync(ws + off_groups_, ws + off_init_, group_init_.size() * sizeof(group_init_[0]),
                                    cudaMemcpyDeviceToDevice, stream));
    LORI_CUDA_CHECK(cudaMemsetAsync(ws + ws_zero_begin_, 0, ws_zero_end_ - ws_zero_begin_, stream));
    LORI_CUDA_CHECK(cudaMemsetAsync(ws + off_globals_, 0xff, sizeof(unsigned long long), stream));  // bad_position = ~0
    const auto nt = static_cast<unsigned>(tiles_.size());
    const auto ng = static_cast<unsigned>(groups_.count());
    const unsigned cand_grid = 264;  // 2 blocks per SM of an H100: candidate loops are grid-stride
    constexpr int B = detail::calib_block;
    constexpr int passes = radix_passes<T>;
    using Key = key_type;
    const int exact = opt_.semantics == mask_semantics::exact ? 1 : 0;
    if (nt == 0) return;  // no elements: every mask is empty, states already final
    // Pass 0 over everything, then the split (pass 1), then the remaining passes.
    detail::calib_hist_tiles<T, 0><<<nt, B, 0, stream>>>(p, 0, 1);
    LORI_CUDA_CHECK_LAUNCH();
    detail::calib_select<Key, 0><<<ng, B, 0, stream>>>(p.groups, p.hist, p.globals, 0, exact);
    LORI_CUDA_CHECK_LAUNCH();
    detail::calib_split<T><<<nt, B, 0, stream>>>(p);
    LORI_CUDA_CHECK_LAUNCH();
    detail::calib_select<Key, 0><<<ng, B, 0, stream>>>(p.groups, p.hist, p.globals, 1, exact);
    LORI_CUDA_CHECK_LAUNCH();
    for (int pass = 2; pass < passes; ++pass) {
      detail::calib_hist_cands<T, 0><<<cand_grid, B, 0, stream>>>(p, pass);
      LORI_CUDA_CHECK_LAUNCH();
      detail::calib_hist_tiles<T, 0><<<nt, B, 0, stream>>>(p, pass, 0);
      LORI_CUDA_CHECK_LAUNCH();
      detail::calib_select<Key, 0><<<ng, B, 0, stream>>>(p.groups, p.hist, p.globals, pass, exact);
      LORI_CUDA_CHECK_LAUNCH();
    }
    if (exact) {
      for (int pass = 0; pass < radix_pass_count(static_cast<int>(detail::position_bits)); ++pass) {
        detail::calib_hist_cands<T, 1><<<cand_grid, B, 0, stream>>>(p, pass);
        LORI_CUDA_CHECK_LAUNCH();
        detail::calib_hist_tiles<T, 1><<<nt, B, 0, stream>>>(p, pass, 0);
        LORI_CUDA_CHECK_LAUNCH();
        detail::calib_select<Key, 1><<<ng, B, 0, stream>>>(p.groups, p.hist, p.globals, pass, exact);
        LORI_CUDA_CHECK_LAUNCH();
      }
    }
    detail::calib_fix<T><<<cand_grid, B, 0, stream>>>(p);
    LORI_CUDA_CHECK_LAUNCH();
    detail::calib_write<T><<<nt, B, 0, stream>>>(p);
    LORI_CUDA_CHECK_LAUNCH();
    detail::calib_count<T><<<nt, B, 0, stream>>>(p);
    LORI_CUDA_CHECK_LAUNCH();
  }

  /// Waits for `stream`, reads the outcome of the last run() from `workspace`, and returns the same
  /// report lori::calibrate_mask gives. Throws lori::error naming the tensor and index when a value
  /// was NaN or +-Inf (the masks are then unspecified).
  calibration_report report(const void* workspace, cudaStream_t stream) const {
    LORI_CUDA_CHECK(cudaStreamSynchronize(stream));
    const auto* ws = static_cast<const std::byte*>(workspace);
    std::vector<detail::calib_group_state<key_type>> gs(group_init_.size());
    std::vector<unsigned long long> kept(descs_.size());
    detail::calib_globals glob{};
    LORI_CUDA_CHECK(cudaMemcpy(gs.data(), ws + off_groups_, gs.size() * sizeof(gs[0]), cudaMemcpyDeviceToHost));
    LORI_CUDA_CHECK(cudaMemcpy(kept.data(), ws + off_kept_, kept.size() * sizeof(kept[0]), cudaMemcpyDeviceToHost));
    LORI_CUDA_CHECK(cudaMemcpy(&glob, ws + off_globals_, sizeof(glob), cudaMemcpyDeviceToHost));
    if (tiles_.empty()) {  // run() launched nothing
      glob.bad_position = ~0ull;
      gs = group_init_;
      std::fill(kept.begin(), kept.end(), 0);
    }
    if (glob.bad_position != ~0ull) {
      const auto pos = static_cast<index_t>(glob.bad_position);
      for (const auto& d : descs_) {
        if (pos >= d.elem_offset && pos < d.elem_offset + d.rows * d.cols) {
          const index_t local = pos - d.elem_offset;
          lori::detail::throw_non_finite("calibration_plan", tensors_[static_cast<std::size_t>(&d - descs_.data())].name,
                                         local / d.cols, local % d.cols, d.cols);
        }
      }
      throw lori::error("calibration_plan: non-finite value at an unknown position");
    }
    calibration_report rep;
    rep.sparsity = opt_.sparsity;
    rep.granularity = opt_.granularity;
    rep.semantics = opt_.semantics;
    rep.custom_grouping = static_cast<bool>(opt_.group_by);
    rep.groups.resize(gs.size());
    std::vector<std::string> names;
    std::vector<index_t> rows, cols, keptv;
    for (std::size_t t = 0; t < descs_.size(); ++t) {
      names.push_back(tensors_[t].name);
      rows.push_back(descs_[t].rows);
      cols.push_back(descs_[t].cols);
      keptv.push_back(static_cast<index_t>(kept[t]));
      rep.groups[static_cast<std::size_t>(descs_[t].group)].kept += static_cast<index_t>(kept[t]);
    }
    for (std::size_t g = 0; g < gs.size(); ++g) {
      auto& gr = rep.groups[g];
      gr.label = groups_.labels[g];
      gr.size = group_size_[g];
      gr.k = gs[g].value.k;
      if (gr.k == 0) {
        gr.threshold = std::numeric_limits<double>::infinity();
      } else {
        gr.threshold = static_cast<double>(magnitude_from_bits<T>(gs[g].value.prefix));
        gr.threshold_bits = static_cast<std::uint64_t>(gs[g].value.prefix);
        gr.ties_kept = static_cast<index_t>(gs[g].ties_kept);
      }
    }
    lori::detail::finish_calibration_report(rep, names, rows, cols, groups_, keptv);
    return rep;
  }

 private:
  detail::calib_params<T> params(std::byte* ws) const {
    detail::calib_params<T> p{};
    p.tensors = reinterpret_cast<const detail::calib_tensor_desc<T>*>(ws + off_tensors_);
    p.tiles = reinterpret_cast<const detail::calib_tile*>(ws + off_tiles_);
    p.groups = reinterpret_cast<detail::calib_group_state<key_type>*>(ws + off_groups_);
    p.hist = reinterpret_cast<unsigned long long*>(ws + off_hist_);
    p.globals = reinterpret_cast<detail::calib_globals*>(ws + off_globals_);
    p.cands = reinterpret_cast<detail::calib_candidate<key_type>*>(ws + off_cands_);
    p.kept = reinterpret_cast<unsigned long long*>(ws + off_kept_);
    p.capacity = capacity_;
    p.num_groups = groups_.count();
    p.exact = opt_.semantics == mask_semantics::exact ? 1 : 0;
    return p;
  }

  std::vector<device_calibration_tensor<T>> tensors_;
  calibration_options opt_;
  mask_groups groups_;
  std::vector<detail::calib_tensor_desc<T>> descs_;
  std::vector<detail::calib_tile> tiles_;
  std::vector<detail::calib_group_state<key_type>> group_init_;
  std::vector<index_t> group_size_;
  index_t total_ = 0;
  index_t capacity_ = 0;
  std::size_t off_tensors_ = 0, off_tiles_ = 0, off_init_ = 0, off_groups_ = 0, off_hist_ = 0, off_globals_ = 0, off_kept_ = 0, off_cands_ = 0;
  std::size_t bytes_ = 0, ws_zero_begin_ = 0, ws_zero_end_ = 0;
};

}  // namespace lori::cuda

#endif  // LORI_CUDA_CALIBRATE_CUH
