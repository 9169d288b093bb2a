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
// Kernels, all stream-ordered, no per-tensor or per-group launches (float with <= 4 groups: 5
// launches; more groups: a select launch after each histogram, 8; exact semantics 1-2 more per tie
// digit), each after the first a programmatic dependent launch (its blocks start while the previous
// kernel drains):
//   1. init: group states, histograms and counters reset (the workspace needs no initialisation);
//   2. pass 0, the first full read: histogram of the top 13 key bits (8192 bins; excluded entries
//      count as key 0), NaN/Inf detection (smallest flat position), excluded counts. Persistent
//      blocks over contiguous ranges of a (tensor, row range) tile table, shared-memory histograms
//      flushed per group; each group's radix_select_state (lori/mask/radix_select.hpp) is narrowed
//      to the bucket holding the k-th largest key (~1% of normal-like data) by the block that
//      completes the group's histogram (a per-group element counter; <= 4 groups) or by a select
//      launch (one block per group);
//   3. split, the second and last full read (the same ranges backwards: the data pass 0 read last,
//      still in L2, is read first): every mask word is written with the entries certainly kept (top
//      digit above the bucket); the bucket's entries are staged in shared memory and appended to a
//      candidate list in batches (one block barrier per 8192 entries, one global atomic per batch),
//      their next 11-bit digit goes to the group's histogram, selected as after pass 0;
//   4. the last digit (7 bits for float) histogrammed on the candidates only; its last block selects
//      (<= 4 groups; else a select launch);
//   5. exact semantics only, and only for groups that need fewer ties than they hold: a radix
//      selection of the ties' flat positions on the candidates (bits = log2 of the total mask bits);
//   6. finish: the kept candidates get their bits (atomicOr); kept counts per tensor.
// When the selected buckets hold more entries than the candidate capacity (degenerate data such as
// mostly-equal values), the kernels see it on the device and run steps 4-6 over the full data
// instead (shared-memory histograms, a full mask-writing pass): the same result, slower. Every mask
// word is written (no memset needed by the caller).
// Predicted-window mode (the plan's `predict`): a sample kernel brackets each large group's bucket
// by a window of first-digit buckets; pass 0 also does the split's work for that window, and a group
// whose bucket falls in it needs no split (docs/mask.md): one full read instead of two.
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
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
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

inline constexpr int calib_block = 256;          // candidate, full-data and finishing kernels
inline constexpr int calib_pass0_block = 256;    // pass 0 (full-data histogram)
inline constexpr int calib_split_block = 256;    // the split pass
inline constexpr int calib_pass0_unroll = 8;     // float4 loads in flight per thread in pass 0 (a whole tile)
inline constexpr int calib_select_block = 256;   // one block per group, 32 bins per thread
inline constexpr int calib_first_bits = 13;      // width of the first value digit on the GPU
inline constexpr int calib_max_bins = 1 << calib_first_bits;
inline constexpr int calib_split_unroll = 4;     // float4 loads in flight per thread in the split pass (half a tile)
inline constexpr index_t calib_tile_elems = 16384;       // tiles of the full-data passes after the split (overflow mode)
inline constexpr index_t calib_pass0_tile_elems = 8192;   // pass 0 and the split: one unrolled sweep of a block
inline constexpr index_t calib_fuse_groups = 4;  // up to this many groups, calib_hist's last block runs the selects
inline constexpr int calib_cand_batch = 4;        // candidates per thread in flight in calib_hist and calib_finish
inline constexpr int calib_sample_block = 1024;   // predicted-window mode: one block per group samples it
inline constexpr index_t calib_sample_count = 16384;           // samples per predicted group
inline constexpr index_t calib_predict_min = index_t{1} << 18;  // smaller groups are not predicted
// Candidates staged in shared memory per split block (32 KB for float, 24 KB for double).
template <class Key>
inline constexpr unsigned int calib_stage_entries = sizeof(Key) == 4 ? 2048u : 1024u;
// ... and per pass-0 block in predicted-window mode (next to its 32 KB histogram: < 48 KB in all).
template <class Key>
inline constexpr unsigned int calib_pass0_stage_entries = sizeof(Key) == 4 ? 640u : 384u;
// Pass 0, the split and calib_hist run calib_select_group in their own blocks.
static_assert(calib_pass0_block == calib_select_block && calib_split_block == calib_select_block && calib_block == calib_select_block,
              "the fused selections need blocks of calib_select_block threads");
static_assert(calib_pass0_tile_elems % (4 * calib_split_unroll * calib_split_block) == 0, "calib_split: whole sweeps per tile");

// Value digits on the GPU: a first digit of calib_first_bits bits (8192 bins: the selected bucket
// holds ~1% of normal-like data, 4x fewer candidates than an 11-bit digit), then digits of
// radix_digit_bits bits (float: 13 + 11 + 7 bits; double: 13 + 4 x 11 + 6). Same number of passes as
// the CPU plan (radix_passes<T>), so radix_select_state::finished() holds for both. Tie keys (flat
// positions) use the standard plan of lori/mask/radix_select.hpp.
LORI_HOST_DEVICE constexpr int calib_vshift(int kbits, int pass) noexcept {
  const int lo = kbits - calib_first_bits - radix_digit_bits * pass;
  return lo > 0 ? lo : 0;
}
LORI_HOST_DEVICE constexpr int calib_vhigh(int kbits, int pass) noexcept { return pass == 0 ? kbits : calib_vshift(kbits, pass - 1); }
static_assert(calib_vshift(31, 1) > 0 && calib_vshift(31, 2) == 0 && radix_passes<float> == 3, "float: 3 value passes");
static_assert(calib_vshift(63, 4) > 0 && calib_vshift(63, 5) == 0 && radix_passes<double> == 6, "double: 6 value passes");

// Digit `pass` of a Mode 0 (value) or Mode 1 (tie position) key: lowest bit, first bit above it.
template <int Mode>
LORI_HOST_DEVICE constexpr int calib_shift(int kbits, int pass) noexcept {
  return Mode == 0 ? calib_vshift(kbits, pass) : radix_shift(kbits, pass);
}
template <int Mode>
LORI_HOST_DEVICE constexpr int calib_high(int kbits, int pass) noexcept {
  return Mode == 0 ? calib_vhigh(kbits, pass) : kbits - radix_digit_bits * pass;
}
// Key bits above digit `pass` (those fixed by the earlier passes).
template <int Mode>
LORI_HOST_DEVICE constexpr std::uint64_t calib_prefix_mask(int kbits, int pass) noexcept {
  return ~((std::uint64_t{1} << calib_high<Mode>(kbits, pass)) - 1);
}
template <int Mode>
LORI_HOST_DEVICE constexpr std::uint64_t calib_digit_mask(int kbits, int pass) noexcept {
  return (std::uint64_t{1} << (calib_high<Mode>(kbits, pass) - calib_shift<Mode>(kbits, pass))) - 1;
}

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
                        // read with coalesced float4 loads (calib_pass0, calib_split_fast)
};

struct calib_tile {
  index_t tensor;
  index_t row_begin, row_end;
};

// A group's tensors in order (predicted-window mode: the sample kernel maps a position within the
// group to its tensor by binary search over `begin`).
struct calib_group_tensor {
  index_t tensor;
  index_t begin;  // elements of the group in the tensors before
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
  unsigned long long size;                    // elements in the group (set by the plan)
  unsigned long long done0, done1;            // elements histogrammed so far by pass 0 / the split
  unsigned long long samples;                 // predicted-window mode: samples of the group (0: no prediction)
  unsigned long long gt_begin, gt_count;      // the group's entries in the group-tensor table
  unsigned int lo, hi;                        // predicted window of first-digit bins (calib_sample)
  unsigned int predicted;                     // 1: pass 0 also writes the words above the window and keeps its entries
  unsigned int resolved;                      // 1: predicted and the selected bucket is in the window (no split needed)
};

struct calib_globals {
  unsigned long long bad_position;  // smallest flat position of a NaN/Inf (~0 when none)
  unsigned long long cand_needed;   // sum of the selected buckets' sizes after pass 0
  unsigned long long cand_count;    // candidates written
  unsigned long long ties_live;     // groups whose tie selection is still running
  unsigned long long hist_done;     // blocks of the running calib_hist done (reset by its last block)
  unsigned long long split_groups;  // groups the split must process (not resolved by pass 0)
  unsigned long long cand_needed_unres;  // cand_needed of those groups
  unsigned long long overflow0;     // predicted-window mode: pass 0's candidates exceeded the capacity (nothing resolved)
  unsigned long long c0;            // predicted-window mode: candidates written by pass 0 (0 after an overflow)
  unsigned long long pass0_done;    // predicted-window mode: pass 0 blocks done (the last sets c0)
};

template <class T>
struct calib_params {
  using Key = magnitude_key_t<T>;
  const calib_tensor_desc<T>* tensors;
  const calib_tile* tiles;
  calib_group_state<Key>* groups;
  unsigned long long* hist;  // groups x calib_max_bins
  calib_globals* globals;
  calib_candidate<Key>* cands;
  unsigned long long* kept;  // per tensor
  index_t capacity;
  index_t num_tiles;
  const calib_tile* tiles0;  // pass 0's and the split's tiles (contiguous ranges per persistent block)
  index_t num_tiles0;
  index_t num_groups;
  std::uint64_t pos_max;  // (1 << pos_bits) - 1: tie key of flat bit position q is pos_max - q
  int pos_bits;
  int exact;
  int fuse_select;  // few groups: the block completing a group's histogram selects it (pass 0, split,
                    // and calib_hist's last block); else a calib_select launch after each histogram
  int predict;      // predicted-window mode (calib_sample ran; pass 0 writes the words of predicted groups)
  index_t num_tensors;
  const calib_group_tensor* gtab;
  const calib_group_state<Key>* groups_init;  // the plan's initial group states (calib_init copies them)
  unsigned long long* kept1;  // per tensor: bits set by pass 0's window words (counted when the group is resolved)
  double window_frac;         // a group is predicted when its window holds at most this fraction of its samples
};

// Programmatic dependent launch (sm_90): every kernel after the first waits here for the kernel
// before it (its completion and memory) before touching anything that kernel writes, and lets the
// next kernel's blocks start early (they wait in calib_wait_prior). No-ops without the launch
// attribute (or below sm_90).
__device__ __forceinline__ void calib_wait_prior() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void calib_allow_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Reads *p from L2 (not L1): for state another block of the same grid may have written.
template <class S>
__device__ __forceinline__ S calib_ldcg(const S* p) {
  static_assert(sizeof(S) % 8 == 0 && alignof(S) >= 8, "calib_ldcg: whole 8-byte words");
  unsigned long long w[sizeof(S) / 8];
  const auto* q = reinterpret_cast<const unsigned long long*>(p);
#pragma unroll
  for (std::size_t i = 0; i < sizeof(S) / 8; ++i) w[i] = __ldcg(q + i);
  S s;
  memcpy(&s, w, sizeof(S));
  return s;
}

// Whether pass 0 resolved group gs (predicted-window mode; never after a candidate overflow there).
template <class Key>
__device__ __forceinline__ bool calib_resolved(const calib_globals* g, const calib_group_state<Key>* gs) {
  return __ldcg(&gs->resolved) != 0 && __ldcg(&g->overflow0) == 0;
}

// Candidates of the list before this index were written by pass 0 (predicted-window mode); those of
// groups not resolved are stale (their group's bucket is outside the window) and are skipped.
__device__ __forceinline__ index_t calib_c0(const calib_globals* g) {
  return __ldcg(&g->overflow0) != 0 ? 0 : static_cast<index_t>(__ldcg(&g->c0));
}

// Compact mode: the candidates pass 0 wrote plus the buckets of the groups the split processes fit.
__device__ __forceinline__ bool calib_compact(const calib_globals* g, index_t capacity) {
  const bool ov = __ldcg(&g->overflow0) != 0;
  const auto need = static_cast<index_t>(ov ? __ldcg(&g->cand_needed) : __ldcg(&g->cand_needed_unres));
  return calib_c0(g) + need <= capacity;
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

// Asks L2 for tile t of tiles0 (called by every thread of a block while its loads of the current
// tile are in flight, so the next tile's loads hit L2): packed tiles only (a contiguous span of at
// most 32 KB: one 128-byte line per thread). t < 0: nothing.
__device__ __forceinline__ void calib_prefetch_span(const void* ptr, index_t bytes) {
  const auto* base = static_cast<const char*>(ptr);
  for (index_t off = static_cast<index_t>(threadIdx.x) * 128; off < bytes; off += static_cast<index_t>(blockDim.x) * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off));
}
template <class T>
__device__ __forceinline__ void calib_prefetch_tile(const calib_params<T>& p, index_t t) {
  if (t < 0) return;
  const calib_tile tile = p.tiles0[t];
  const calib_tensor_desc<T>& td = p.tensors[tile.tensor];
  if (td.ld != td.cols) return;
  calib_prefetch_span(td.data + tile.row_begin * td.cols, (tile.row_end - tile.row_begin) * td.cols * static_cast<index_t>(sizeof(T)));
}

// Adds a block's shared histogram (bins counters) into a group's global one, then clears it.
// Callers synchronise before (all increments done) and after (before new increments).
__device__ __forceinline__ void calib_flush(unsigned int* sh, int bins, unsigned long long* gh) {
  for (int b = threadIdx.x; b < bins; b += blockDim.x) {
    const unsigned int c = sh[b];
    if (c != 0) {
      atomicAdd(gh + b, static_cast<unsigned long long>(c));
      sh[b] = 0;
    }
  }
}

// Sums v over the warp into lane 0's return value (all 32 lanes must call).
__device__ __forceinline__ unsigned int calib_warp_sum(unsigned int v) {
  for (int o = 16; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Resets the run's state: group states from their initial copies, histograms, globals and kept
// counts to zero (bad_position to ~0). The workspace needs no initialisation by the caller.
template <class Key>
__global__ void __launch_bounds__(calib_block) calib_init(calib_group_state<Key>* groups, const calib_group_state<Key>* init,
                                                          index_t num_groups, unsigned long long* zero, index_t zero_words,
                                                          index_t bad_word) {
  calib_wait_prior();
  calib_allow_next();
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  const index_t i0 = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  for (index_t i = i0; i < zero_words; i += stride) zero[i] = i == bad_word ? ~0ull : 0ull;
  for (index_t i = i0; i < num_groups; i += stride) groups[i] = init[i];
}

// Narrows a group's state to bin `bin` of digit `pass`, which holds cnt keys, with acc keys in the
// bins above it (one thread). After pass 0, a predicted group whose bucket lies in its window
// [lo, hi] is resolved: pass 0 has written its words and candidates, the split skips it.
template <class Key, int Mode>
__device__ __forceinline__ void calib_select_apply(calib_group_state<Key>* gs, calib_globals* globals, const radix_select_state<Key>& vst,
                                                   const radix_select_state<std::uint64_t>& tst, int bin, index_t acc, index_t cnt,
                                                   unsigned long long excluded, int pass, int exact) {
  if (Mode == 0) {
    radix_select_state<Key> st = vst;
    st.greater += acc;
    st.remaining -= acc;
    st.prefix |= static_cast<Key>(static_cast<Key>(bin) << calib_shift<0>(st.key_bits, st.pass));
    ++st.pass;
    if (pass == 0) {
      const bool resolved = __ldcg(&gs->predicted) != 0 && static_cast<unsigned int>(bin) >= __ldcg(&gs->lo) &&
                            static_cast<unsigned int>(bin) <= __ldcg(&gs->hi);
      atomicAdd(&globals->cand_needed, static_cast<unsigned long long>(cnt));
      if (resolved)
        gs->resolved = 1u;
      else
        atomicAdd(&globals->cand_needed_unres, static_cast<unsigned long long>(cnt));
    }
    gs->value = st;
    if (st.finished() && exact) {
      // cnt keys equal tau; excluded entries are among them iff tau == 0 (they rank below all).
      const index_t nonexcluded_ties = cnt - (st.prefix == 0 ? static_cast<index_t>(excluded) : 0);
      if (st.remaining < nonexcluded_ties) {
        radix_select_state<std::uint64_t> t = tst;  // key_bits set by the plan, k = 0
        t.k = st.remaining;
        t.remaining = st.remaining;
        t.greater = 0;
        t.prefix = 0;
        t.pass = 0;
        gs->tie = t;
        atomicAdd(&globals->ties_live, 1ull);
      }
      // else: tie state stays finished with prefix 0: every non-excluded tie is kept.
    }
  } else {
    radix_select_state<std::uint64_t> st = tst;
    st.greater += acc;
    st.remaining -= acc;
    st.prefix |= static_cast<std::uint64_t>(bin) << calib_shift<1>(st.key_bits, st.pass);
    ++st.pass;
    gs->tie = st;
    if (st.finished()) atomicAdd(&globals->ties_live, ~0ull);  // - 1
  }
}

// Narrows one group's state with its histogram, then clears the histogram (the first radix_bins
// counters: later passes have at most radix_digit_bits-bit digits). Called by every thread of a
// block of calib_select_block threads (block-uniform arguments); reads the histogram and the state
// from L2, so the block may be the last of a grid whose other blocks built the histogram (after a
// threadfence / counter handshake). Thread i sums 32 consecutive bins (independent loads), a block
// scan finds the thread whose bins hold the rank, and warp 0 (one lane per bin, a warp scan from the
// top bin down) finds the bin: two dependent rounds of loads, not 32.
// Mode 0 narrows the value selection (adding the excluded entries to bin 0 for passes >= 1 when the
// prefix is 0), Mode 1 the tie selection. After the last value pass of an exact-semantics run it
// starts the tie selection (k = ties needed), unless every non-excluded tie is needed (then all are
// kept and no tie pass runs for the group).
template <class Key, int Mode>
__device__ __noinline__ void calib_select_group(calib_group_state<Key>* gs, unsigned long long* h, calib_globals* globals, int pass, int exact) {
  constexpr int per = calib_max_bins / calib_select_block;  // 32 bins per thread
  static_assert(per == 32, "calib_select_group: one lane of warp 0 per bin of the selected thread");
  using scan_t = cub::BlockScan<unsigned long long, calib_select_block>;
  __shared__ typename scan_t::TempStorage tmp;
  __shared__ int sel_thread;
  __shared__ unsigned long long sel_above;
  __syncthreads();  // tmp and sel_* may still be read by a previous call of this block
  const int rt = calib_select_block - 1 - static_cast<int>(threadIdx.x);  // thread 0 owns the top bins
  // Every thread reads the state before the barriers below; only one thread writes it afterwards.
  const radix_select_state<Key> vst = calib_ldcg(&gs->value);
  const radix_select_state<std::uint64_t> tst = calib_ldcg(&gs->tie);
  const int kbits = Mode == 0 ? vst.key_bits : tst.key_bits;
  const int bins = 1 << (calib_high<Mode>(kbits, pass) - calib_shift<Mode>(kbits, pass));
  const bool live = Mode == 0 ? (!vst.finished() && vst.pass == pass) : (!tst.finished() && tst.pass == pass);
  const unsigned long long excluded = __ldcg(&gs->excluded);
  // Count of bin idx (< bins); excluded entries join bin 0 in value passes >= 1 when the prefix is 0.
  const bool add_excluded = Mode == 0 && pass > 0 && vst.prefix == 0;
  const auto count = [h, excluded, add_excluded](int idx) -> unsigned long long {
    return __ldcg(h + idx) + (add_excluded && idx == 0 ? excluded : 0ull);
  };
  unsigned long long sum = 0;
#pragma unroll
  for (int b = 0; b < per; ++b)
    if (rt * per + b < bins) sum += count(rt * per + b);
  unsigned long long above = 0;
  scan_t(tmp).ExclusiveSum(sum, above);
  const index_t remaining = Mode == 0 ? vst.remaining : tst.remaining;
  const bool mine = live && static_cast<index_t>(above) < remaining && static_cast<index_t>(above + sum) >= remaining;
  if (mine) {  // at most one thread
    sel_thread = static_cast<int>(threadIdx.x);
    sel_above = above;
  }
  if (__syncthreads_or(mine) && threadIdx.x < 32) {
    const int lane = static_cast<int>(threadIdx.x);
    const int bin = (calib_select_block - 1 - sel_thread) * per + (per - 1 - lane);  // lane 0: the top bin
    const unsigned long long c = bin < bins ? count(bin) : 0ull;
    unsigned long long incl = c;  // keys in the selected thread's bins from the top one down to this one
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned long long v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const unsigned long long a = sel_above;
    // The first lane reaching the rank (there is one: a + all 32 >= remaining > a) holds a count > 0.
    const unsigned int hit = __ballot_sync(0xffffffffu, static_cast<index_t>(a + incl) >= remaining);
    if (lane == __ffs(static_cast<int>(hit)) - 1)
      calib_select_apply<Key, Mode>(gs, globals, vst, tst, bin, static_cast<index_t>(a + incl - c), static_cast<index_t>(c), excluded,
                                    pass, exact);
  }
  __syncthreads();  // warp 0 has read the selected thread's bins (and written the state)
  // Each thread clears its own bins: bins >= radix_bins serve pass 0 only (zeroed by calib_init),
  // the others are reused by the next pass.
  for (int b = 0; b < per; ++b) {
    const int idx = rt * per + b;
    if (idx < bins && idx < radix_bins) h[idx] = 0;
  }
  if (Mode == 0 && pass == 0 && threadIdx.x == 0 && __ldcg(&gs->resolved) == 0) atomicAdd(&globals->split_groups, 1ull);
}

// One block per group: calib_select_group. Mode 1 returns at once when no tie selection runs (no
// tie histogram was built, nothing to clear; only a block whose group is live decrements
// ties_live, so 0 means none is live).
template <class Key, int Mode>
__global__ void __launch_bounds__(calib_select_block) calib_select(calib_group_state<Key>* groups, unsigned long long* hist,
                                                                   calib_globals* globals, int pass, int exact) {
  calib_wait_prior();
  calib_allow_next();
  if (Mode == 1 && __ldcg(&globals->ties_live) == 0) return;
  calib_select_group<Key, Mode>(groups + blockIdx.x, hist + blockIdx.x * static_cast<index_t>(calib_max_bins), globals, pass, exact);
}

// Called by every thread of a block (block-uniform arguments; blockDim.x == calib_select_block)
// once its shared histogram `sh` (bins counters) holds digit `pass` (0 or 1) of `acc` elements of
// group g (of which the thread saw `excl` excluded ones): adds it to the group's global histogram
// (clearing sh), then adds acc to the group's count of elements done. The block whose addition
// completes the count (every element of the group histogrammed, by all blocks) narrows the group's
// selection: no separate select launch. Waits for the previous kernel first (pass 0 histograms its
// first tiles while calib_init still runs).
template <class T>
__device__ void calib_group_done(const calib_params<T>& p, unsigned int* sh, int bins, index_t g, index_t acc, int pass,
                                 unsigned long long excl) {
  using Key = magnitude_key_t<T>;
  __shared__ int last;
  calib_wait_prior();
  calib_group_state<Key>* gs = p.groups + g;
  if (excl != 0) atomicAdd(&gs->excluded, excl);
  __syncthreads();  // every shared increment done
  calib_flush(sh, bins, p.hist + g * calib_max_bins);
  if (!p.fuse_select) {  // many groups: a calib_select launch selects them all at once, in parallel
    __syncthreads();     // sh cleared before new increments
    return;
  }
  __threadfence();  // this thread's histogram (and excluded) atomics are visible before the block's count below
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long* done = pass == 0 ? &gs->done0 : &gs->done1;
    const unsigned long long before = atomicAdd(done, static_cast<unsigned long long>(acc));
    last = before + static_cast<unsigned long long>(acc) == __ldcg(&gs->size) ? 1 : 0;
  }
  __syncthreads();
  if (last) {
    __threadfence();  // every other block's histogram atomics (fenced before its count) are visible
    calib_select_group<Key, 0>(gs, p.hist + g * calib_max_bins, p.globals, pass, p.exact);
  }
}

// The bits of mask word w of row r: def = the entries above chi (certainly kept), cand = those in
// [clo, chi] (candidates), excluded entries in neither.
template <class T>
__device__ __forceinline__ void calib_word_bits(const calib_tensor_desc<T>& td, index_t r, index_t w, magnitude_key_t<T> clo,
                                                magnitude_key_t<T> chi, std::uint64_t& def, std::uint64_t& cand) {
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
        const Key k[4] = {magnitude_bits(v.x), magnitude_bits(v.y), magnitude_bits(v.z), magnitude_bits(v.w)};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          def |= static_cast<std::uint64_t>(k[i] > chi) << (b + i);
          cand |= static_cast<std::uint64_t>(k[i] >= clo && k[i] <= chi) << (b + i);
        }
      }
    }
  }
  for (; b < n; ++b) {
    const Key key = magnitude_bits(p[b]);
    def |= static_cast<std::uint64_t>(key > chi) << b;
    cand |= static_cast<std::uint64_t>(key >= clo && key <= chi) << b;
  }
  if (td.excl != nullptr) {
    const std::uint64_t e = td.excl[r * td.wpr + w];
    def &= ~e;
    cand &= ~e;
  }
}

// Candidate staging in shared memory: the staged candidates (written to the global list in large
// batches, one global atomic per batch) and the per-warp candidate totals of a round (two rows,
// alternating: one barrier per round suffices).
template <class Key, unsigned int S>
struct calib_stage_shared {
  calib_candidate<Key> stage[S];
  unsigned int wtot[2][calib_split_block / 32];
  unsigned long long base;
};

// A block's staging bookkeeping: block-uniform registers (identical in every thread).
struct calib_stager {
  unsigned int used = 0;    // entries staged
  unsigned int parity = 0;  // wtot row of the next round
};

// Reserves n slots of the global candidate list (thread 0; the caller broadcasts through sm.base):
// the first slot, and how many of the n fit in the capacity. Slots beyond the capacity are not
// written; the overflow is recorded (it cannot happen in the split: compact mode guarantees room).
template <class T>
__device__ __forceinline__ unsigned long long calib_reserve_global(const calib_params<T>& p, unsigned int n) {
  const unsigned long long base = atomicAdd(&p.globals->cand_count, static_cast<unsigned long long>(n));
  if (base + n > static_cast<unsigned long long>(p.capacity)) atomicExch(&p.globals->overflow0, 1ull);
  return base;
}
template <class T>
__device__ __forceinline__ unsigned int calib_room(const calib_params<T>& p, unsigned long long base, unsigned int n) {
  const auto cap = static_cast<unsigned long long>(p.capacity);
  return base >= cap ? 0u : static_cast<unsigned int>(cap - base < n ? cap - base : n);
}

// Copies the staged candidates to the global list. Every thread calls it (block-uniform).
template <class T, unsigned int S>
__device__ __forceinline__ void calib_stage_flush(const calib_params<T>& p, calib_stage_shared<magnitude_key_t<T>, S>& sm, calib_stager& st) {
  if (st.used == 0) return;
  __syncthreads();  // every staged entry written
  if (threadIdx.x == 0) sm.base = calib_reserve_global(p, st.used);
  __syncthreads();
  const unsigned long long base = sm.base;
  const unsigned int room = calib_room(p, base, st.used);
  for (unsigned int i = threadIdx.x; i < room; i += blockDim.x) p.cands[base + i] = sm.stage[i];
  __syncthreads();  // the staging area is free again; sm.base read by every thread
  st.used = 0;
}

// One round of candidate slots: every thread of the block calls it (block-uniform) with its count
// cnt; the thread then writes its candidates to dst[slot], dst[slot + 1], ... while below `limit`
// (the staging area, or, for a round of more candidates than the staging holds, the global list
// directly). One block barrier per round (the warp totals); the staging is flushed first when the
// round does not fit.
template <class T, unsigned int S>
__device__ __forceinline__ calib_candidate<magnitude_key_t<T>>* calib_stage_reserve(const calib_params<T>& p,
                                                                                    calib_stage_shared<magnitude_key_t<T>, S>& sm,
                                                                                    calib_stager& st, unsigned int cnt,
                                                                                    unsigned int& slot, unsigned int& limit) {
  constexpr int warps = calib_split_block / 32;
  const int lane = static_cast<int>(threadIdx.x & 31u), warp = static_cast<int>(threadIdx.x >> 5);
  unsigned int incl = cnt;  // inclusive scan over the warp
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned int v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) sm.wtot[st.parity][warp] = incl;
  // A warp writes this row again two rounds later, after the next round's barrier, which every
  // thread reaches only after reading the row below.
  __syncthreads();
  unsigned int before = 0, total = 0;
#pragma unroll
  for (int w = 0; w < warps; ++w) {
    const unsigned int v = sm.wtot[st.parity][w];
    before += w < warp ? v : 0u;
    total += v;
  }
  st.parity ^= 1u;
  slot = before + incl - cnt;
  limit = S;
  if (total == 0) return sm.stage;
  if (st.used + total > S) calib_stage_flush(p, sm, st);
  if (total > S) {
    if (threadIdx.x == 0) sm.base = calib_reserve_global(p, total);
    __syncthreads();  // sm.base is written again only after a later barrier
    const unsigned long long base = sm.base;
    limit = calib_room(p, base, total);
    return p.cands + base;
  }
  slot += st.used;
  st.used += total;
  return sm.stage;
}

// Split (and pass 0's window work) on a tile of a `fast` tensor (see calib_tensor_desc): thread v
// reads float4 v of a sweep (elements 4v..4v+3, coalesced), calib_split_unroll float4 in flight per
// thread (4096 elements per sweep: two sweeps per 8192-element tile; the first asks L2 for the
// second and for the next tile) before any use; entries above chi are certainly kept, entries in
// [clo, chi] are candidates. The W = min(cols, 64) elements of a mask word are held by L = W / 4
// consecutive lanes (a power of two dividing 32), whose bits are OR-reduced with shuffles; the
// first lane of each group writes the word. One staging round per sweep (each thread's candidate
// count), then the candidates are emitted warp by warp: one ballot per entry position, a
// warp-uniform branch where it is non-zero. Pass0: also the first-digit histogram h0 of every
// element and the first NaN/Inf (`first` = flat position of the tile's element 0); otherwise the
// candidates' next digit goes to chist.
template <class T, bool Pass0, unsigned int S>
__device__ __forceinline__ void calib_tile_fast(const calib_params<T>& p, const calib_tile& tile, const calib_tensor_desc<T>& td,
                                                magnitude_key_t<T> clo, magnitude_key_t<T> chi, bool live, bool compact,
                                                calib_stage_shared<magnitude_key_t<T>, S>& sm, calib_stager& st, unsigned int* chist,
                                                unsigned int* h0, index_t first, unsigned long long& bad, unsigned long long& kept,
                                                index_t t_next) {
  static_assert(sizeof(T) == 4, "calib_tile_fast: float tensors");
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  constexpr int U = calib_split_unroll;
  constexpr unsigned int B = calib_split_block;
  constexpr int shift0 = calib_vshift(bits, 0), shift1 = calib_vshift(bits, 1);
  constexpr auto dmask = static_cast<Key>(calib_digit_mask<0>(bits, 1));
  // The descriptor's fields in registers (td may live in global memory: the mask stores below would
  // otherwise force reloads), 32-bit indices within the tile (< 2^31 elements, plan checks).
  const index_t word0 = tile.row_begin * td.wpr;
  std::uint64_t* const out = td.out + word0;
  const std::uint64_t* const excl = td.excl != nullptr ? td.excl + word0 : nullptr;
  const auto cols = static_cast<unsigned int>(td.cols);
  const auto tensor = static_cast<std::uint32_t>(tile.tensor);
  const unsigned int W = cols < 64 ? cols : 64;
  const unsigned int L = W / 4;
  const int lshift = __ffs(static_cast<int>(L)) - 1;  // L is a power of two
  const auto n4 = static_cast<unsigned int>((tile.row_end - tile.row_begin) * td.cols / 4);
  const auto* base4 = reinterpret_cast<const uint4*>(td.data + tile.row_begin * td.cols);
  const unsigned int lane = threadIdx.x & 31u;
  const unsigned int lt = (1u << lane) - 1u;  // lanes below this one
  // Entry b of float4 v is a candidate when v is in the tile (and the group live), its key lies in
  // [clo, chi] (key - clo <= span, unsigned) and it is not excluded (e4: the float4's 4 exclusion
  // bits). The same predicate counts the thread's candidates and, later, emits them.
  const Key span = chi - clo;
  for (unsigned int v0 = 0; v0 < n4; v0 += U * B) {
    Key k[U][4];  // magnitude keys (bit patterns with the sign cleared) of float4 v0 + u B + thread
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const unsigned int v = v0 + u * B + threadIdx.x;
      const uint4 q = (v < n4 && live) ? __ldg(base4 + v) : make_uint4(0u, 0u, 0u, 0u);
      k[u][0] = q.x & 0x7fffffffu;
      k[u][1] = q.y & 0x7fffffffu;
      k[u][2] = q.z & 0x7fffffffu;
      k[u][3] = q.w & 0x7fffffffu;
    }
    if (v0 == 0) {  // the rest of this tile (later sweeps) and the next tile into L2
      if (n4 > U * B) calib_prefetch_span(base4 + U * B, static_cast<index_t>(n4 - U * B) * 16);
      calib_prefetch_tile(p, t_next);
    }
    // The thread's candidate count (the staging round needs the counts first).
    unsigned int cnt = 0;
    Key kmax = 0;  // Pass0: NaN/Inf (keys >= infinity) located below only when present
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const unsigned int v = v0 + u * B + threadIdx.x;
      const bool in = v < n4 && live;
      const unsigned int e4 = (excl != nullptr && in) ? static_cast<unsigned int>((excl[v >> lshift] >> ((4 * v) & (W - 1))) & 0xfu) : 0u;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        cnt += (in && k[u][b] - clo <= span && ((e4 >> b) & 1u) == 0) ? 1u : 0u;
        if constexpr (Pass0) {
          if (in) {
            kmax = max(kmax, k[u][b]);
            atomicAdd(&h0[k[u][b] >> shift0], 1u);
          }
        }
      }
    }
    if constexpr (Pass0) {
      if (kmax >= magnitude_key<T>::infinity) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const unsigned int v = v0 + u * B + threadIdx.x;
#pragma unroll
          for (int b = 0; b < 4; ++b)
            if (v < n4 && k[u][b] >= magnitude_key<T>::infinity) bad = min(bad, static_cast<unsigned long long>(first + 4 * index_t{v} + b));
        }
      }
    }
    unsigned int slot = 0, limit = 0;
    calib_candidate<Key>* dst = compact ? calib_stage_reserve(p, sm, st, cnt, slot, limit) : nullptr;
    if (compact) {  // block-uniform: the mask words of the entries certainly kept
      // The W bits of a word are spread over L lanes: OR-reduce them (independent shuffle chains
      // for 4 float4 at a time), then the first lane of each group stores the word.
#pragma unroll
      for (int h = 0; h < U; h += 4) {
        std::uint64_t w[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int u = h + j;
          const unsigned int v = v0 + u * B + threadIdx.x;
          const unsigned int bitpos = (4 * v) & (W - 1);
          unsigned int def4 = 0;
          if (v < n4 && live) {
#pragma unroll
            for (int b = 0; b < 4; ++b) def4 |= static_cast<unsigned int>(k[u][b] > chi) << b;
            if (excl != nullptr) def4 &= ~static_cast<unsigned int>((excl[v >> lshift] >> bitpos) & 0xfu);
          }
          w[j] = static_cast<std::uint64_t>(def4) << bitpos;
        }
        if (W <= 32) {  // warp-uniform: 32-bit words
          unsigned int w32[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) w32[j] = static_cast<unsigned int>(w[j]);
          for (unsigned int o = L / 2; o >= 1; o >>= 1) {
#pragma unroll
            for (int j = 0; j < 4; ++j) w32[j] |= __shfl_xor_sync(0xffffffffu, w32[j], static_cast<int>(o));
          }
#pragma unroll
          for (int j = 0; j < 4; ++j) w[j] = w32[j];
        } else {
          for (unsigned int o = L / 2; o >= 1; o >>= 1) {
#pragma unroll
            for (int j = 0; j < 4; ++j) w[j] |= __shfl_xor_sync(0xffffffffu, w[j], static_cast<int>(o));
          }
        }
        if ((lane & (L - 1)) == 0) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const unsigned int v = v0 + (h + j) * B + threadIdx.x;
            if (v < n4) {
              out[v >> lshift] = w[j];
              kept += static_cast<unsigned int>(__popcll(w[j]));
            }
          }
        }
      }
    }
    // Candidates, warp by warp: a ballot per entry position (u, b) (warp-uniform branches); the
    // warp's slots start at its lane 0's (the staging round counted the same predicate).
    if (!__any_sync(0xffffffffu, cnt != 0)) continue;
    unsigned int wslot = __shfl_sync(0xffffffffu, slot, 0);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const unsigned int v = v0 + u * B + threadIdx.x;
      const bool in = v < n4 && live;
      const unsigned int e4 = (excl != nullptr && in) ? static_cast<unsigned int>((excl[v >> lshift] >> ((4 * v) & (W - 1))) & 0xfu) : 0u;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const bool c = in && k[u][b] - clo <= span && ((e4 >> b) & 1u) == 0;
        const unsigned int m = __ballot_sync(0xffffffffu, c);
        if (m == 0) continue;  // warp-uniform
        if (c) {
          if (chist != nullptr) atomicAdd(&chist[(k[u][b] >> shift1) & dmask], 1u);
          const unsigned int sl = wslot + __popc(m & lt);
          if (dst != nullptr && sl < limit)
            dst[sl] = calib_candidate<Key>{k[u][b], tensor, static_cast<std::uint64_t>(word0 + (v >> lshift)) * 64 + ((4 * v) & (W - 1)) + b};
        }
        wslot += __popc(m);
      }
    }
  }
}

// The same on a tile of any other tensor: one thread per mask word (rounds of blockDim.x words).
template <class T, unsigned int S>
__device__ __forceinline__ void calib_tile_words(const calib_params<T>& p, const calib_tile& tile, const calib_tensor_desc<T>& td,
                                                 magnitude_key_t<T> clo, magnitude_key_t<T> chi, bool live, bool compact,
                                                 calib_stage_shared<magnitude_key_t<T>, S>& sm, calib_stager& st, unsigned int* chist,
                                                 unsigned long long& kept) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  constexpr int shift1 = calib_vshift(bits, 1);
  constexpr auto dmask = static_cast<Key>(calib_digit_mask<0>(bits, 1));
  const index_t nw = (tile.row_end - tile.row_begin) * td.wpr;
  for (index_t q0 = 0; q0 < nw; q0 += blockDim.x) {
    const index_t q = q0 + threadIdx.x;
    std::uint64_t def = 0, cand = 0;
    index_t r = 0, w = 0;
    if (q < nw) {
      r = tile.row_begin + q / td.wpr;
      w = q % td.wpr;
      if (live) calib_word_bits<T>(td, r, w, clo, chi, def, cand);
      if (compact) {
        td.out[r * td.wpr + w] = def;
        kept += static_cast<unsigned long long>(__popcll(def));
      }
    }
    unsigned int slot = 0, limit = 0;
    calib_candidate<Key>* dst = compact ? calib_stage_reserve(p, sm, st, static_cast<unsigned int>(__popcll(cand)), slot, limit) : nullptr;
    std::uint64_t cb = cand;
    while (cb != 0) {
      const int b = __ffsll(static_cast<long long>(cb)) - 1;
      cb &= cb - 1;
      const Key key = magnitude_bits(td.data[r * td.ld + w * 64 + b]);
      if (chist != nullptr) atomicAdd(&chist[(key >> shift1) & dmask], 1u);
      if (dst != nullptr && slot < limit)
        dst[slot] = calib_candidate<Key>{key, static_cast<std::uint32_t>(tile.tensor), static_cast<std::uint64_t>((r * td.wpr + w) * 64 + b)};
      ++slot;
    }
  }
}

// Adds a warp's kept count to a tensor's (all 32 lanes call).
__device__ __forceinline__ void calib_add_kept(unsigned long long* dst, unsigned long long kept) {
  for (int o = 16; o >= 1; o >>= 1) kept += __shfl_xor_sync(0xffffffffu, kept, o);
  if ((threadIdx.x & 31u) == 0 && kept != 0) atomicAdd(dst, kept);
}

// Position (within its group of n elements, flat order) of sample i of s: the middle of the i-th
// of s equal parts (calib_sample; tests construct data against it).
LORI_HOST_DEVICE inline index_t calib_sample_position(index_t i, index_t n, index_t s) {
  const double q = (static_cast<double>(i) + 0.5) * static_cast<double>(n) / static_cast<double>(s);
  const auto r = static_cast<index_t>(q);
  return r < n ? r : n - 1;
}

// Predicted-window mode, before pass 0: one block per group with samples (gs->samples > 0, i.e. a
// large group with k > 0) reads its samples (evenly spaced flat positions; excluded entries count
// as key 0), histograms their first digit and brackets the sample rank of the k-th largest key,
// r = k s / n, by r -+ (4 sqrt(r) + 8): the bins holding those two ranks are the window [lo, hi].
// The group is predicted when lo > 0 (excluded entries and zeros stay below the window) and the
// window holds at most window_frac of the samples (its candidates then fit the capacity with a
// margin). Whether the window really holds the bucket is checked exactly after pass 0.
template <class T>
__global__ void __launch_bounds__(calib_sample_block) calib_sample(calib_params<T> p) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  constexpr int shift = calib_vshift(bits, 0);
  constexpr int per = calib_max_bins / calib_sample_block;  // 8 bins per thread
  constexpr int U = 8;                                      // samples in flight per thread
  using scan_t = cub::BlockScan<unsigned int, calib_sample_block>;
  __shared__ unsigned int sh[calib_max_bins];
  __shared__ typename scan_t::TempStorage tmp;
  __shared__ unsigned int res[4];  // hi bin, lo bin, samples above bin hi, samples in bin lo and above
  // Reads only the plan's uploads (initial group states, tables, the data) until the writes at the
  // end, so it runs while calib_init still resets the state.
  calib_allow_next();
  const calib_group_state<Key>* gi = p.groups_init + blockIdx.x;
  const auto s = static_cast<index_t>(gi->samples);
  if (s == 0) {  // uniform
    calib_wait_prior();
    return;
  }
  const auto n = static_cast<index_t>(gi->size);
  const index_t k = gi->value.k;
  const calib_group_tensor* gt = p.gtab + gi->gt_begin;
  const auto gn = static_cast<index_t>(gi->gt_count);
  for (int b = threadIdx.x; b < calib_max_bins; b += blockDim.x) sh[b] = 0;
  __syncthreads();
  for (index_t i0 = threadIdx.x; i0 < s; i0 += U * static_cast<index_t>(calib_sample_block)) {
    const T* addr[U];
    bool ex[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t i = i0 + u * static_cast<index_t>(calib_sample_block);
      addr[u] = nullptr;
      ex[u] = false;
      if (i < s) {
        const index_t q = calib_sample_position(i, n, s);
        index_t a = 0, z = gn - 1;  // the last tensor of the group beginning at or before q
        while (a < z) {
          const index_t mid = (a + z + 1) / 2;
          if (gt[mid].begin <= q) a = mid;
          else z = mid - 1;
        }
        const calib_tensor_desc<T>& td = p.tensors[gt[a].tensor];
        const index_t e = q - gt[a].begin;
        const index_t r = e / td.cols, c = e % td.cols;
        addr[u] = td.data + r * td.ld + c;
        ex[u] = calib_excluded(td.excl, td.wpr, r, c);
      }
    }
    T v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = addr[u] != nullptr ? __ldg(addr[u]) : T(0);
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (addr[u] != nullptr) atomicAdd(&sh[(ex[u] ? Key{0} : magnitude_bits(v[u])) >> shift], 1u);
  }
  __syncthreads();
  // Thread t owns bins 8191 - 8t - j, j = 0..7 (thread 0 the top ones); ranks count from the top.
  unsigned int sum = 0;
#pragma unroll
  for (int j = 0; j < per; ++j) sum += sh[calib_max_bins - 1 - per * static_cast<int>(threadIdx.x) - j];
  unsigned int above = 0;
  scan_t(tmp).ExclusiveSum(sum, above);
  auto r = static_cast<index_t>(static_cast<double>(k) * static_cast<double>(s) / static_cast<double>(n) + 0.5);
  r = r < 1 ? 1 : (r > s ? s : r);
  const auto m = static_cast<index_t>(4.0 * sqrt(static_cast<double>(r))) + 8;
  const auto rhi = static_cast<unsigned int>(r - m < 1 ? 1 : r - m), rlo = static_cast<unsigned int>(r + m > s ? s : r + m);
  unsigned int acc = above;
#pragma unroll
  for (int j = 0; j < per; ++j) {
    const int bin = calib_max_bins - 1 - per * static_cast<int>(threadIdx.x) - j;
    const unsigned int c = sh[bin];
    if (acc < rhi && acc + c >= rhi) {  // exactly one (thread, bin): the ranks 1..s are all held
      res[0] = static_cast<unsigned int>(bin);
      res[2] = acc;
    }
    if (acc < rlo && acc + c >= rlo) {
      res[1] = static_cast<unsigned int>(bin);
      res[3] = acc + c;
    }
    acc += c;
  }
  __syncthreads();
  calib_wait_prior();  // calib_init has reset the group states
  if (threadIdx.x == 0) {
    calib_group_state<Key>* gs = p.groups + blockIdx.x;
    const unsigned int hi = res[0], lo = res[1];
    gs->hi = hi;
    gs->lo = lo;
    gs->predicted = lo > 0 && static_cast<double>(res[3] - res[2]) <= p.window_frac * static_cast<double>(s) ? 1u : 0u;
  }
}

// Pass 0, the first full read: histogram of the first value digit of every element (excluded
// entries count as key 0), per group; NaN/Inf detection (smallest flat position); excluded counts.
// Persistent blocks take contiguous ranges of tiles (so a block flushes its shared histogram only
// when the group changes; the split runs the same ranges backwards, so it reads first what pass 0
// read last, still in L2). The block that completes a group's histogram selects its first digit
// (calib_group_done).
// Window (predicted-window mode, after calib_sample): for a predicted group, the same read also
// does the split's work for its window of first-digit bins [lo, hi]: words with the entries above
// hi, candidates in the window (staged; an overflow of the capacity is recorded). If the selected
// bucket lies in the window the group is resolved and the split skips it. The last block to finish
// records how many candidates pass 0 wrote (c0; 0 and the list emptied after an overflow).
template <class T, bool Window>
__global__ void __launch_bounds__(calib_pass0_block, 3) calib_pass0(calib_params<T> p) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  constexpr int shift = calib_vshift(bits, 0);
  constexpr int bins = 1 << (bits - shift);
  static_assert(bins == calib_max_bins, "calib_pass0: first digit width");
  __shared__ unsigned int sh[bins];
  __shared__ calib_stage_shared<Key, Window ? calib_pass0_stage_entries<Key> : 1u> sm;
  __shared__ int last;
  // Without Window, no calib_wait_prior here: the tiles are histogrammed in shared memory while
  // calib_init still runs; calib_group_done waits before the first global update (NaN/Inf and
  // excluded counts are kept per thread until then). Window reads calib_sample's windows first.
  if (Window) calib_wait_prior();
  calib_allow_next();
  for (int b = threadIdx.x; b < bins; b += blockDim.x) sh[b] = 0;
  __syncthreads();
  unsigned long long bad = ~0ull, excl = 0;  // per thread: first NaN/Inf position, excluded entries of group cur
  unsigned long long kept1 = 0;              // Window: bits set in the current tensor's words
  calib_stager st;
  index_t cur = -1, acc = 0, cur_tensor = -1;  // uniform over the block
  const index_t t_end = (static_cast<index_t>(blockIdx.x) + 1) * p.num_tiles0 / gridDim.x;
  for (index_t t = static_cast<index_t>(blockIdx.x) * p.num_tiles0 / gridDim.x; t < t_end; ++t) {
    const calib_tile tile = p.tiles0[t];
    const calib_tensor_desc<T> td = p.tensors[tile.tensor];
    const index_t ne = (tile.row_end - tile.row_begin) * td.cols;  // < 2^31 (plan checks)
    if (cur >= 0 && (td.group != cur || acc + ne > (index_t{1} << 31))) {
      calib_group_done(p, sh, bins, cur, acc, 0, excl);
      acc = 0;
      excl = 0;
    }
    cur = td.group;
    acc += ne;
    const index_t first = td.elem_offset + tile.row_begin * td.cols;  // flat position of the tile's element 0
    bool done = false;
    if constexpr (Window) {
      if (tile.tensor != cur_tensor) {
        if (cur_tensor >= 0) calib_add_kept(p.kept1 + cur_tensor, kept1);
        kept1 = 0;
        cur_tensor = tile.tensor;
      }
      const calib_group_state<Key>* gs = p.groups + td.group;
      if (gs->predicted != 0) {  // uniform
        const auto clo = static_cast<Key>(static_cast<Key>(gs->lo) << shift);
        const auto chi = static_cast<Key>((static_cast<Key>(gs->hi) << shift) | ((Key{1} << shift) - 1));
        if constexpr (sizeof(T) == 4) {
          if (td.fast && td.excl == nullptr) {
            calib_tile_fast<T, true>(p, tile, td, clo, chi, true, true, sm, st, nullptr, sh, first, bad, kept1, t + 1 < t_end ? t + 1 : -1);
            done = true;
          }
        }
        if (!done) calib_tile_words<T>(p, tile, td, clo, chi, true, true, sm, st, nullptr, kept1);  // the histogram below
      }
    }
    if constexpr (sizeof(T) == 4) {
      if (!done && td.fast && td.excl == nullptr) {  // packed rows, cols % 4 == 0, 16-byte aligned
        const auto* base4 = reinterpret_cast<const uint4*>(td.data + tile.row_begin * td.cols);
        const auto n4 = static_cast<unsigned int>(ne / 4);  // 32-bit indices within the tile (< 2^31 elements)
        constexpr int U = calib_pass0_unroll;
        for (unsigned int v0 = threadIdx.x; v0 < n4; v0 += U * calib_pass0_block) {
          Key k[U][4];
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const unsigned int v = v0 + u * calib_pass0_block;
            const uint4 q = v < n4 ? __ldg(base4 + v) : make_uint4(0u, 0u, 0u, 0u);
            k[u][0] = q.x & 0x7fffffffu;  // magnitude keys of float bit patterns
            k[u][1] = q.y & 0x7fffffffu;
            k[u][2] = q.z & 0x7fffffffu;
            k[u][3] = q.w & 0x7fffffffu;
          }
          if (v0 == threadIdx.x) calib_prefetch_tile(p, t + 1 < t_end ? t + 1 : -1);
          Key kmax = 0;  // NaN/Inf (keys >= infinity) located below only when present
#pragma unroll
          for (int u = 0; u < U; ++u) {
            if (v0 + u * calib_pass0_block >= n4) break;
#pragma unroll
            for (int b = 0; b < 4; ++b) {
              kmax = max(kmax, k[u][b]);
              atomicAdd(&sh[k[u][b] >> shift], 1u);
            }
          }
          if (kmax >= magnitude_key<T>::infinity) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
              const unsigned int v = v0 + u * calib_pass0_block;
#pragma unroll
              for (int b = 0; b < 4; ++b)
                if (v < n4 && k[u][b] >= magnitude_key<T>::infinity) bad = min(bad, static_cast<unsigned long long>(first + 4 * index_t{v} + b));
            }
          }
        }
        done = true;
      }
    }
    if (!done) {
      for (index_t e = threadIdx.x; e < ne; e += blockDim.x) {
        index_t r = 0, c = 0;
        calib_rc(e, td.cols, tile.row_begin, r, c);
        Key key = magnitude_bits(td.data[r * td.ld + c]);
        if (key >= magnitude_key<T>::infinity) bad = min(bad, static_cast<unsigned long long>(first + e));
        if (calib_excluded(td.excl, td.wpr, r, c)) {
          key = 0;
          ++excl;
        }
        atomicAdd(&sh[key >> shift], 1u);
      }
    }
  }
  if (Window && cur_tensor >= 0) calib_add_kept(p.kept1 + cur_tensor, kept1);
  if (cur >= 0) calib_group_done(p, sh, bins, cur, acc, 0, excl);
  calib_wait_prior();  // (already done by calib_group_done; every block waits before it ends)
  if (bad != ~0ull) atomicMin(&p.globals->bad_position, bad);
  if constexpr (Window) {
    calib_stage_flush(p, sm, st);
    __threadfence();  // this block's candidates (and overflow flag) before its count
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&p.globals->pass0_done, 1ull) + 1 == gridDim.x ? 1 : 0;
    __syncthreads();
    if (last && threadIdx.x == 0) {
      __threadfence();
      const bool ov = __ldcg(&p.globals->overflow0) != 0;
      p.globals->c0 = ov ? 0ull : __ldcg(&p.globals->cand_count);
      if (ov) p.globals->cand_count = 0;  // the split starts the list again (every group unresolved)
    }
  }
}

// Split pass (second and last full read): persistent blocks, the same contiguous tile ranges as
// pass 0 (same grid) run backwards, so the data pass 0 read last (still in L2) is read first.
// Compact mode: writes every mask word with the bits certainly kept (first digit above the selected
// bucket; their popcount goes to the tensor's kept count) and appends the bucket's entries to the
// candidate list (staged in shared memory); both modes: histogram of digit 1 of the bucket's
// entries (shared memory, flushed when the group changes; the block completing a group selects its
// digit 1, calib_group_done). Groups resolved by pass 0 (predicted-window mode) are skipped; when
// every group is, the kernel returns at once.
template <class T>
__global__ void __launch_bounds__(calib_split_block, 3) calib_split(calib_params<T> p) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  constexpr int shift0 = calib_vshift(bits, 0);
  static_assert(calib_vhigh(bits, 1) - calib_vshift(bits, 1) <= radix_digit_bits, "calib_split: digit 1 fits radix_bins");
  __shared__ calib_stage_shared<Key, calib_stage_entries<Key>> sm;
  __shared__ unsigned int hist[radix_bins];
  calib_wait_prior();
  calib_allow_next();
  if (__ldcg(&p.globals->split_groups) == 0 && __ldcg(&p.globals->overflow0) == 0) return;  // every group resolved
  for (int b = threadIdx.x; b < radix_bins; b += blockDim.x) hist[b] = 0;
  __syncthreads();
  const bool compact = calib_compact(p.globals, p.capacity);
  calib_stager st;
  index_t cur_tensor = -1, cur_group = -1, acc = 0;  // uniform over the block
  const calib_tensor_desc<T>* td = nullptr;  // fields read where used (few registers across tiles)
  Key prefix = 0;
  bool live = false, skip = false;
  unsigned long long kept = 0, unused = 0;
  const index_t t_begin = static_cast<index_t>(blockIdx.x) * p.num_tiles0 / gridDim.x;
  const index_t t_end = (static_cast<index_t>(blockIdx.x) + 1) * p.num_tiles0 / gridDim.x;
  for (index_t t = t_end - 1; t >= t_begin; --t) {
    const calib_tile tile = p.tiles0[t];
    if (tile.tensor != cur_tensor) {
      if (cur_tensor >= 0) calib_add_kept(p.kept + cur_tensor, kept);
      kept = 0;
      cur_tensor = tile.tensor;
      td = p.tensors + tile.tensor;
      const calib_group_state<Key>* gs = p.groups + td->group;
      const radix_select_state<Key> vs = gs->value;  // selected by pass 0
      prefix = vs.prefix;
      live = vs.k > 0 && vs.pass == 1;  // k > 0 (more than one pass: always, for float/double)
      skip = calib_resolved(p.globals, gs);
    }
    if (skip) continue;  // uniform: the group's words and candidates are pass 0's
    const index_t ne = (tile.row_end - tile.row_begin) * td->cols;  // < 2^31 (plan checks)
    const index_t group = td->group;
    if (cur_group >= 0 && (group != cur_group || acc + ne > (index_t{1} << 31))) {
      calib_group_done(p, hist, radix_bins, cur_group, acc, 1, 0);
      acc = 0;
    }
    cur_group = group;
    acc += ne;
    const auto chi = static_cast<Key>(prefix | ((Key{1} << shift0) - 1));  // the selected bucket: [prefix, chi]
    bool done = false;
    if constexpr (sizeof(T) == 4) {
      if (td->fast) {  // uniform over the block
        calib_tile_fast<T, false>(p, tile, *td, prefix, chi, live, compact, sm, st, hist, nullptr, 0, unused, kept, t > t_begin ? t - 1 : -1);
        done = true;
      }
    }
    if (!done) calib_tile_words<T>(p, tile, *td, prefix, chi, live, compact, sm, st, hist, kept);
  }
  if (cur_tensor >= 0) calib_add_kept(p.kept + cur_tensor, kept);
  if (cur_group >= 0) calib_group_done(p, hist, radix_bins, cur_group, acc, 1, 0);
  if (compact) calib_stage_flush(p, sm, st);
}

// Histogram of digit `pass` (>= 2 for values, >= 0 for tie positions): Mode 0 of the value keys
// matching the group's prefix, Mode 1 of the tie keys (pos_max - flat bit position) of the
// non-excluded entries equal to tau whose higher tie digits match. Compact mode: over the candidate
// list, global atomics (few entries match); overflow mode: over the full data, tiles grid-strided,
// shared-memory histograms (excluded entries skipped: the select adds their count to bin 0).
// With p.fuse_select (few groups), the last block to finish selects digit `pass` of every group
// (no separate calib_select launch).
template <class T, int Mode>
__global__ void __launch_bounds__(calib_block) calib_hist(calib_params<T> p, int pass) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  static_assert(calib_block == calib_select_block, "calib_hist: the last block runs calib_select_group");
  __shared__ unsigned int sh[radix_bins];
  __shared__ int last;
  calib_wait_prior();
  calib_allow_next();
  if (Mode == 1 && __ldcg(&p.globals->ties_live) == 0) return;  // every block returns: no tie selection runs
  const int kbits = Mode == 0 ? bits : p.pos_bits;
  const int shift = calib_shift<Mode>(kbits, pass);
  const std::uint64_t dmask = calib_digit_mask<Mode>(kbits, pass);
  const std::uint64_t pm = calib_prefix_mask<Mode>(kbits, pass);
  if (calib_compact(p.globals, p.capacity)) {
    const index_t n = static_cast<index_t>(__ldcg(&p.globals->cand_count));
    const index_t c0 = calib_c0(p.globals);
    const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
    // calib_cand_batch candidates per thread at once: their loads (candidate, tensor, group state)
    // are independent, the atomics come after all of them.
    constexpr int U = calib_cand_batch;
    for (index_t i0 = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i0 < n; i0 += U * stride) {
      calib_candidate<Key> c[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (i0 + u * stride < n) c[u] = p.cands[i0 + u * stride];
      unsigned long long* bin[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const index_t i = i0 + u * stride;
        bin[u] = nullptr;
        if (i >= n) continue;
        const calib_tensor_desc<T>& td = p.tensors[c[u].tensor];
        const calib_group_state<Key>* gs = p.groups + td.group;
        if (i < c0 && !calib_resolved(p.globals, gs)) continue;  // stale: pass 0's window missed the group's bucket
        unsigned long long* h = p.hist + td.group * calib_max_bins;
        if (Mode == 0) {
          if (gs->value.finished() || gs->value.pass != pass) continue;
          if (pass == 1 && !calib_resolved(p.globals, gs)) continue;  // (predicted-window mode) the split histogrammed it
          if ((static_cast<std::uint64_t>(c[u].key) & pm) == static_cast<std::uint64_t>(gs->value.prefix))
            bin[u] = h + ((static_cast<std::uint64_t>(c[u].key) >> shift) & dmask);
        } else {
          if (gs->tie.finished() || gs->tie.pass != pass || c[u].key != gs->value.prefix) continue;
          const std::uint64_t tk = p.pos_max - (static_cast<std::uint64_t>(td.bit_offset) + c[u].bit);
          if ((tk & pm) == gs->tie.prefix) bin[u] = h + ((tk >> shift) & dmask);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (bin[u] != nullptr) atomicAdd(bin[u], 1ull);
    }
  } else {
    for (int b = threadIdx.x; b < radix_bins; b += blockDim.x) sh[b] = 0;
    __syncthreads();
    for (index_t t = blockIdx.x; t < p.num_tiles; t += gridDim.x) {
      const calib_tile tile = p.tiles[t];
      const calib_tensor_desc<T> td = p.tensors[tile.tensor];
      const calib_group_state<Key>* gs = p.groups + td.group;
      const radix_select_state<Key> vs = gs->value;
      const radix_select_state<std::uint64_t> ts = gs->tie;
      if (Mode == 0 ? (vs.finished() || vs.pass != pass) : (ts.finished() || ts.pass != pass)) continue;  // uniform
      if (Mode == 0 && pass == 1 && !calib_resolved(p.globals, gs)) continue;  // (predicted-window mode) the split did it
      const index_t ne = (tile.row_end - tile.row_begin) * td.cols;
      for (index_t e = threadIdx.x; e < ne; e += blockDim.x) {
        index_t r = 0, c = 0;
        calib_rc(e, td.cols, tile.row_begin, r, c);
        const Key key = magnitude_bits(td.data[r * td.ld + c]);
        if (Mode == 0) {
          if ((static_cast<std::uint64_t>(key) & pm) != static_cast<std::uint64_t>(vs.prefix) || calib_excluded(td.excl, td.wpr, r, c)) continue;
          atomicAdd(&sh[(static_cast<std::uint64_t>(key) >> shift) & dmask], 1u);
        } else {
          if (key != vs.prefix || calib_excluded(td.excl, td.wpr, r, c)) continue;
          const std::uint64_t pos = static_cast<std::uint64_t>(td.bit_offset + (r * td.wpr + (c >> 6)) * 64 + (c & 63));
          const std::uint64_t tk = p.pos_max - pos;
          if ((tk & pm) == ts.prefix) atomicAdd(&sh[(tk >> shift) & dmask], 1u);
        }
      }
      __syncthreads();
      calib_flush(sh, radix_bins, p.hist + td.group * calib_max_bins);
      __syncthreads();
    }
  }
  if (!p.fuse_select) return;  // uniform
  __threadfence();              // this thread's histogram atomics are visible before the block's count
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&p.globals->hist_done, 1ull) + 1 == gridDim.x ? 1 : 0;
  __syncthreads();
  if (!last) return;
  __threadfence();  // every block's histogram atomics (fenced before its count) are visible
  for (index_t g = 0; g < p.num_groups; ++g)
    calib_select_group<Key, Mode>(p.groups + g, p.hist + g * calib_max_bins, p.globals, pass, p.exact);
  if (threadIdx.x == 0) p.globals->hist_done = 0;  // for the next calib_hist launch (every block has counted)
}

template <class T>
__device__ __forceinline__ bool calib_keep_tie(const calib_params<T>& p, const calib_group_state<magnitude_key_t<T>>* gs,
                                               std::uint64_t pos) {
  return !p.exact || (p.pos_max - pos) >= gs->tie.prefix;
}

// Last kernel. Compact mode: sets the bits of the kept candidates (atomicOr) and adds them to the
// kept counts. Overflow mode: writes every mask word from tau (and the tie cut) over the full data
// and counts the kept entries. Both count the ties kept.
template <class T>
__global__ void __launch_bounds__(calib_block) calib_finish(calib_params<T> p) {
  using Key = magnitude_key_t<T>;
  const int lane = static_cast<int>(threadIdx.x & 31u);
  calib_wait_prior();  // (the last kernel: no calib_allow_next, a later launch waits for it as usual)
  if (calib_compact(p.globals, p.capacity)) {
    const index_t n = static_cast<index_t>(__ldcg(&p.globals->cand_count));
    const index_t c0 = calib_c0(p.globals);
    const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
    if (p.predict) {  // the bits pass 0 set in the words of resolved groups
      for (index_t t = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; t < p.num_tensors; t += stride)
        if (calib_resolved(p.globals, p.groups + p.tensors[t].group)) atomicAdd(p.kept + t, __ldcg(p.kept1 + t));
    }
    // Warp-uniform loop: every lane runs every iteration (the shuffles below need the full warp);
    // calib_cand_batch candidates per thread at once: independent loads first, then the atomics.
    constexpr int U = calib_cand_batch;
    for (index_t i00 = blockIdx.x * static_cast<index_t>(blockDim.x) + (threadIdx.x & ~31u); i00 < n; i00 += U * stride) {
      calib_candidate<Key> c[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (i00 + u * stride + lane < n) c[u] = p.cands[i00 + u * stride + lane];
      bool keeps[U], ties[U];
      unsigned long long* word[U];
      calib_group_state<Key>* gsu[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const index_t i = i00 + u * stride + lane;
        keeps[u] = ties[u] = false;
        word[u] = nullptr;
        gsu[u] = nullptr;
        if (i >= n) continue;
        const calib_tensor_desc<T>& td = p.tensors[c[u].tensor];
        calib_group_state<Key>* gs = p.groups + td.group;
        const Key tau = gs->value.prefix;
        const bool stale = i < c0 && !calib_resolved(p.globals, gs);  // pass 0's window missed the group's bucket
        ties[u] = !stale && c[u].key == tau && calib_keep_tie(p, gs, static_cast<std::uint64_t>(td.bit_offset) + c[u].bit);
        keeps[u] = (!stale && c[u].key > tau) || ties[u];
        word[u] = reinterpret_cast<unsigned long long*>(td.out + (c[u].bit >> 6));
        gsu[u] = gs;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (ties[u]) atomicAdd(&gsu[u]->ties_kept, 1ull);
        if (keeps[u]) atomicOr(word[u], 1ull << (c[u].bit & 63));
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {  // kept counts, warp-aggregated when the warp's entries share a tensor
        const index_t i = i00 + u * stride + lane;
        const bool keep = keeps[u];
        const std::uint32_t tensor = i < n ? c[u].tensor : 0xffffffffu;
        const unsigned int km = __ballot_sync(0xffffffffu, keep);
        const std::uint32_t t0 = __shfl_sync(0xffffffffu, tensor, 0);
        if (__all_sync(0xffffffffu, i >= n || tensor == t0)) {
          if (lane == 0 && km != 0) atomicAdd(p.kept + t0, static_cast<unsigned long long>(__popc(km)));
        } else if (keep) {
          atomicAdd(p.kept + tensor, 1ull);
        }
      }
    }
    return;
  }
  __shared__ unsigned int sh_kept;
  for (index_t t = blockIdx.x; t < p.num_tiles; t += gridDim.x) {
    const calib_tile tile = p.tiles[t];
    const calib_tensor_desc<T> td = p.tensors[tile.tensor];
    calib_group_state<Key>* gs = p.groups + td.group;
    const bool live = gs->value.k > 0;
    const Key tau = gs->value.prefix;
    if (threadIdx.x == 0) sh_kept = 0;
    __syncthreads();
    unsigned int kept = 0;
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
      kept += static_cast<unsigned int>(__popcll(word | ties));
      if (ties != 0) atomicAdd(&gs->ties_kept, static_cast<unsigned long long>(__popcll(ties)));
    }
    const unsigned int ws = calib_warp_sum(kept);
    if (lane == 0 && ws != 0) atomicAdd(&sh_kept, ws);
    __syncthreads();
    if (threadIdx.x == 0 && sh_kept != 0) atomicAdd(p.kept + tile.tensor, static_cast<unsigned long long>(sh_kept));
    __syncthreads();  // sh_kept is reset by the next tile
  }
}

inline std::size_t calib_align(std::size_t x) { return (x + 255) & ~std::size_t{255}; }

// Launches kernel<<<grid, block, 0, stream>>>(args...) as a programmatic dependent launch (its
// blocks may start before the previous kernel in the stream ends; the kernel calls
// calib_wait_prior before touching what that kernel writes). Where the launch attribute is not
// supported, an ordinary launch (calib_wait_prior is then a no-op).
template <class... Params, class... Args>
void calib_launch(void (*kernel)(Params...), unsigned grid, int block, cudaStream_t stream, const Args&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(static_cast<unsigned>(block));
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, args...);
  if (e == cudaErrorNotSupported || e == cudaErrorInvalidValue) {
    (void)cudaGetLastError();
    cfg.numAttrs = 0;
    e = cudaLaunchKernelEx(&cfg, kernel, args...);
  }
  LORI_CUDA_CHECK(e);
}

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
  /// predict: predicted-window mode (docs/mask.md): groups of at least 2^18 elements are sampled
  /// first (16384 samples each) and pass 0 also writes their words and candidates for a window of
  /// first-digit buckets around the sampled threshold, so a group whose bucket falls in its window
  /// is calibrated in one full read; the others take the two reads as usual. Same result.
  calibration_plan(std::vector<device_calibration_tensor<T>> tensors, const calibration_options& opt,
                   index_t candidate_capacity = -1, bool predict = false)
      : tensors_(std::move(tensors)), opt_(opt), predict_(predict) {
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
    std::vector<detail::calib_tile> tiles0;
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
      const index_t rows_per_tile0 = std::max<index_t>(1, detail::calib_pass0_tile_elems / d.cols);
      for (index_t r0 = 0; r0 < d.rows; r0 += rows_per_tile0)
        tiles0.push_back({static_cast<index_t>(t), r0, std::min(d.rows, r0 + rows_per_tile0)});
    }
    LORI_EXPECTS(bit <= (index_t{1} << 62), "calibration_plan: too many elements");
    pos_bits_ = 1;  // tie keys: flat bit positions 0 .. bit - 1 need pos_bits_ bits
    while (pos_bits_ < 62 && (index_t{1} << pos_bits_) < bit) ++pos_bits_;
    LORI_EXPECTS(tiles0.size() < (std::size_t{1} << 31), "calibration_plan: too many tiles");
    nt_ = static_cast<index_t>(tiles_.size());
    nt0_ = static_cast<index_t>(tiles0.size());
    total_ = elem;
    group_init_.resize(static_cast<std::size_t>(groups_.count()));
    group_size_.assign(static_cast<std::size_t>(groups_.count()), 0);
    for (const auto& d : descs_) group_size_[static_cast<std::size_t>(d.group)] += d.rows * d.cols;
    for (std::size_t g = 0; g < group_init_.size(); ++g) {
      auto& gs = group_init_[g];
      gs = {};
      const index_t k = calibration_keep_count(group_size_[g], opt_.sparsity);
      gs.value = radix_select_begin<key_type>(k, group_size_[g], magnitude_key<T>::bits);
      gs.tie.key_bits = pos_bits_;  // k = 0 (finished: every tie kept) until started
      gs.size = static_cast<unsigned long long>(group_size_[g]);
      gs.samples = predict_ && k > 0 && group_size_[g] >= detail::calib_predict_min ? detail::calib_sample_count : 0;
    }
    // The group-tensor table (predicted-window mode): each group's non-empty tensors in order.
    for (std::size_t g = 0; g < group_init_.size(); ++g) {
      group_init_[g].gt_begin = gtab_.size();
      index_t begin = 0;
      for (std::size_t t = 0; t < descs_.size(); ++t) {
        if (descs_[t].group != static_cast<index_t>(g) || descs_[t].rows * descs_[t].cols == 0) continue;
        gtab_.push_back({static_cast<index_t>(t), begin});
        begin += descs_[t].rows * descs_[t].cols;
      }
      group_init_[g].gt_count = gtab_.size() - group_init_[g].gt_begin;
    }
    capacity_ = candidate_capacity >= 0 ? candidate_capacity : std::max<index_t>(65536, total_ / 16);
    capacity_ = std::min(capacity_, total_);
    // A group is predicted when its window's candidates take at most 3/4 of its share of the capacity.
    window_frac_ = total_ > 0 ? 0.75 * static_cast<double>(capacity_) / static_cast<double>(total_) : 0.0;
    // Workspace layout.
    using G = detail::calib_group_state<key_type>;
    off_tensors_ = 0;
    off_tiles_ = off_tensors_ + detail::calib_align(descs_.size() * sizeof(detail::calib_tensor_desc<T>));
    off_gtab_ = off_tiles_ + detail::calib_align(static_cast<std::size_t>(nt_ + nt0_) * sizeof(detail::calib_tile));
    off_init_ = off_gtab_ + detail::calib_align(gtab_.size() * sizeof(detail::calib_group_tensor));
    off_groups_ = off_init_ + detail::calib_align(group_init_.size() * sizeof(G));
    off_hist_ = off_groups_ + detail::calib_align(group_init_.size() * sizeof(G));
    off_globals_ = off_hist_ + detail::calib_align(group_init_.size() * detail::calib_max_bins * sizeof(unsigned long long));
    off_kept_ = off_globals_ + detail::calib_align(sizeof(detail::calib_globals));
    off_kept1_ = off_kept_ + detail::calib_align(descs_.size() * sizeof(unsigned long long));
    off_cands_ = off_kept1_ + detail::calib_align(descs_.size() * sizeof(unsigned long long));
    bytes_ = off_cands_ + detail::calib_align(static_cast<std::size_t>(capacity_) * sizeof(detail::calib_candidate<key_type>));
    ws_zero_begin_ = off_hist_;  // histograms, globals and kept counts (kept1 too) start at zero
    ws_zero_end_ = off_cands_;
    // Grids: pass 0 and the split run the same persistent blocks (the split reads pass 0's ranges
    // backwards: what pass 0 read last is still in L2), the candidate/finishing kernels a few per SM.
    int dev = 0, sms = 0, per_sm0 = 0, per_sm1 = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm0, predict_ ? detail::calib_pass0<T, true> : detail::calib_pass0<T, false>,
                                                      detail::calib_pass0_block, 0) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm1, detail::calib_split<T>, detail::calib_split_block, 0) != cudaSuccess) {
      (void)cudaGetLastError();  // no device here: run() will report it
      sms = 132;
      per_sm0 = per_sm1 = 3;
    }
    sms = std::max(sms, 1);
    const int per_sm = std::max(1, std::min(per_sm0, per_sm1));
    grid_pass0_ = static_cast<unsigned>(std::max<index_t>(1, std::min<index_t>(nt0_, static_cast<index_t>(sms) * per_sm)));
    grid_small_ = static_cast<unsigned>(std::max<index_t>(1, std::min<index_t>(std::max<index_t>(nt_, capacity_ / detail::calib_block + 1),
                                                                             static_cast<index_t>(sms) * 4)));
    tiles_.insert(tiles_.end(), tiles0.begin(), tiles0.end());  // one upload: full-data tiles, then pass 0's and the split's
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
      if (!gtab_.empty())
        LORI_CUDA_CHECK(cudaMemcpyAsync(ws + off_gtab_, gtab_.data(), gtab_.size() * sizeof(gtab_[0]), cudaMemcpyHostToDevice, stream));
      LORI_CUDA_CHECK(cudaMemcpyAsync(ws + off_init_, group_init_.data(), group_init_.size() * sizeof(group_init_[0]),
                                      cudaMemcpyHostToDevice, stream));
    }
    if (nt_ == 0) return;  // no elements: every mask is empty, report() answers from the plan
    const auto ng = static_cast<unsigned>(groups_.count());
    constexpr int B = detail::calib_block;
    constexpr int passes = radix_passes<T>;
    using Key = key_type;
    using G = detail::calib_group_state<key_type>;
    const int exact = opt_.semantics == mask_semantics::exact ? 1 : 0;
    // 1. reset the state; 2. pass 0 (first full read); 3. select digit 0; 4. split (second full
    // read); 5. select digit 1; 6. remaining digits on the candidates; 7. exact: tie positions;
    // 8. finish (candidate bits, or the full-data write in overflow mode).
    // 1. reset the state; 2. pass 0 (first full read) and the selection of digit 0; 3. the split
    // (second full read) and the selection of digit 1; 4. the remaining digits on the candidates
    // (or the full data in overflow mode); 5. exact: tie positions; 6. finish (candidate bits, or
    // the full-data write in overflow mode). Every launch after the first is a programmatic
    // dependent launch (its blocks start while the previous kernel drains, and wait for it).
    detail::calib_init<Key><<<grid_small_, B, 0, stream>>>(
        reinterpret_cast<G*>(ws + off_groups_), reinterpret_cast<const G*>(ws + off_init_), groups_.count(),
        reinterpret_cast<unsigned long long*>(ws + ws_zero_begin_), static_cast<index_t>((ws_zero_end_ - ws_zero_begin_) / 8),
        static_cast<index_t>((off_globals_ + offsetof(detail::calib_globals, bad_position) - ws_zero_begin_) / 8));
    LORI_CUDA_CHECK_LAUNCH();
    const bool fuse = p.fuse_select != 0;
    if (predict_) {
      detail::calib_launch(detail::calib_sample<T>, ng, detail::calib_sample_block, stream, p);
      detail::calib_launch(detail::calib_pass0<T, true>, grid_pass0_, detail::calib_pass0_block, stream, p);
    } else {
      detail::calib_launch(detail::calib_pass0<T, false>, grid_pass0_, detail::calib_pass0_block, stream, p);
    }
    if (!fuse) detail::calib_launch(detail::calib_select<Key, 0>, ng, detail::calib_select_block, stream, p.groups, p.hist, p.globals, 0, exact);
    detail::calib_launch(detail::calib_split<T>, grid_pass0_, detail::calib_split_block, stream, p);
    // (predicted-window mode: digit 1 is selected after calib_hist pass 1, which adds the resolved
    // groups' histograms to those the split built)
    if (!fuse && !predict_)
      detail::calib_launch(detail::calib_select<Key, 0>, ng, detail::calib_select_block, stream, p.groups, p.hist, p.globals, 1, exact);
    // Predicted-window mode: digit 1 of the groups pass 0 resolved (the split did the others').
    for (int pass = predict_ ? 1 : 2; pass < passes; ++pass) {
      detail::calib_launch(detail::calib_hist<T, 0>, grid_small_, B, stream, p, pass);
      if (!fuse)
        detail::calib_launch(detail::calib_select<Key, 0>, ng, detail::calib_select_block, stream, p.groups, p.hist, p.globals, pass, exact);
    }
    if (exact) {
      for (int pass = 0; pass < radix_pass_count(pos_bits_); ++pass) {
        detail::calib_launch(detail::calib_hist<T, 1>, grid_small_, B, stream, p, pass);
        if (!fuse)
          detail::calib_launch(detail::calib_select<Key, 1>, ng, detail::calib_select_block, stream, p.groups, p.hist, p.globals, pass, exact);
      }
    }
    detail::calib_launch(detail::calib_finish<T>, grid_small_, B, stream, p);
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
    if (nt_ == 0) {  // run() launched nothing
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
    p.num_tiles = nt_;
    p.tiles0 = p.tiles + nt_;
    p.num_tiles0 = nt0_;
    p.num_groups = groups_.count();
    p.pos_bits = pos_bits_;
    p.pos_max = (std::uint64_t{1} << pos_bits_) - 1;
    p.exact = opt_.semantics == mask_semantics::exact ? 1 : 0;
    p.fuse_select = groups_.count() <= detail::calib_fuse_groups ? 1 : 0;
    p.predict = predict_ ? 1 : 0;
    p.num_tensors = static_cast<index_t>(descs_.size());
    p.gtab = reinterpret_cast<const detail::calib_group_tensor*>(ws + off_gtab_);
    p.groups_init = reinterpret_cast<const detail::calib_group_state<key_type>*>(ws + off_init_);
    p.kept1 = reinterpret_cast<unsigned long long*>(ws + off_kept1_);
    p.window_frac = window_frac_;
    return p;
  }

  std::vector<device_calibration_tensor<T>> tensors_;
  calibration_options opt_;
  mask_groups groups_;
  std::vector<detail::calib_tensor_desc<T>> descs_;
  std::vector<detail::calib_tile> tiles_;  // nt_ tiles of calib_tile_elems, then nt0_ of calib_pass0_tile_elems
  index_t nt_ = 0, nt0_ = 0;
  std::vector<detail::calib_group_state<key_type>> group_init_;
  std::vector<index_t> group_size_;
  index_t total_ = 0;
  index_t capacity_ = 0;
  int pos_bits_ = 1;
  unsigned grid_pass0_ = 1, grid_small_ = 1;
  std::size_t off_tensors_ = 0, off_tiles_ = 0, off_gtab_ = 0, off_init_ = 0, off_groups_ = 0, off_hist_ = 0, off_globals_ = 0, off_kept_ = 0,
              off_kept1_ = 0, off_cands_ = 0;
  bool predict_ = false;
  std::vector<detail::calib_group_tensor> gtab_;
  double window_frac_ = 0;
  std::size_t bytes_ = 0, ws_zero_begin_ = 0, ws_zero_end_ = 0;
};

}  // namespace lori::cuda

#endif  // LORI_CUDA_CALIBRATE_CUH
