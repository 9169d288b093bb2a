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
// Kernels, all stream-ordered, no per-tensor or per-group launches (float: 8 launches, exact
// semantics 2 more per tie digit; all after the first are programmatic dependent launches, so each
// kernel's blocks start while the previous kernel finishes):
//   1. init: group states, histograms and counters reset (the workspace needs no initialisation);
//   2. pass 0, the first full read: histogram of the top 13 key bits (8192 bins; excluded entries
//      count as key 0), NaN/Inf detection (the top bins, or the smallest flat position), excluded
//      counts. Persistent blocks over a (tensor, row range) tile table, shared-memory histograms
//      flushed per group;
//   3. select: one block per group narrows its radix_select_state (lori/mask/radix_select.hpp)
//      to the bucket holding the k-th largest key (~1% of normal-like data) and clears the counts;
//   4. split, the second and last full read (tiles ordered so that the data pass 0 read last, still
//      in L2, is read first): every mask word is written with the entries certainly kept (top
//      digit above the bucket); the bucket's entries go to a candidate list and their next 11-bit
//      digit to the group's histogram. calib_split_ballot for packed float rows of 1-16 or 32k
//      columns (a compare and a warp ballot per 32 entries build the words), calib_split for the
//      other shapes;
//   5. select, then the last digit (7 bits for float) histogrammed on the candidates only, select;
//   6. exact semantics only, and only for groups that need fewer ties than they hold: a radix
//      selection of the ties' flat positions on the candidates (bits = log2 of the total mask bits);
//   7. finish: the kept candidates get their bits (atomicOr); kept counts per tensor (or, when pass
//      0 saw NaN/Inf, the smallest flat position of one, for report()).
// With at most two groups (calib_fused_select_groups), the selects of steps 3 and 5's last digit
// run in the last block of pass 0 (bulk path) and of calib_hist; with float tensors all split by
// calib_split_ballot, the split also records its blocks' candidate segments, which calib_finish
// takes a warp each (Llama-3-8B, model granularity: 6 launches).
// When the selected buckets hold more entries than the candidate capacity (degenerate data such as
// mostly-equal values), the kernels see it on the device and run steps 5-7 over the full data
// instead (shared-memory histograms, a full mask-writing pass): the same result, slower. Every mask
// word is written (no memset needed by the caller).
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

namespace detail_calib {

inline constexpr int calib_block = 256;          // split, candidate and finishing kernels
inline constexpr int calib_pass0_block = 256;    // pass 0 (full-data histogram)
inline constexpr int calib_pass0_unroll = 8;     // float4 loads in flight per thread in pass 0 (a whole tile)
inline constexpr int calib_pass0_min_blocks = 4;  // pass-0 blocks per SM (__launch_bounds__: <= 64 registers)
inline constexpr int calib_select_block = 512;   // one block per group, 16 bins per thread (all loaded at once)
inline constexpr int calib_first_bits = 13;      // width of the first value digit on the GPU
inline constexpr int calib_max_bins = 1 << calib_first_bits;
inline constexpr int calib_split_unroll = 8;     // float4 loads in flight per thread in the split pass (half a tile)
inline constexpr index_t calib_tile_elems = 16384;       // tiles of the split and full-data passes
inline constexpr int calib_cand_unroll = 4;       // candidates per thread in flight in calib_hist / calib_finish
inline constexpr int calib_seg_unroll = 4;        // calib_finish_segments: records per lane in flight (128 per warp)
inline constexpr int calib_ballot_steps = 16;     // calib_split_ballot: 32-element chunks per warp per batch (loads in flight)
inline constexpr index_t calib_pass0_tile_elems = 8192;   // pass 0: one unrolled sweep of a block
inline constexpr index_t calib_fused_select_groups = 2;  // at most this many groups: selects in the last blocks (calib_ticket_select)

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
  int ballot;           // float, packed, cols in {1, 2, 4, 8, 16} or a multiple of 32 up to
                        // calib_tile_elems: split by calib_split_ballot (see calib_ballot_shape)
};

struct calib_tile {
  index_t tensor;
  index_t row_begin, row_end;
};

// The candidates one calib_split_ballot block wrote (calib_params::fused bit 4): records
// [begin, begin + count), all of one tensor.
struct calib_segment {
  unsigned long long begin;
  unsigned int count;
  unsigned int tensor;
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
  unsigned long long nonfinite;     // non-zero: pass 0's histogram holds NaN/Inf keys (bad_position found by calib_finish)
  unsigned long long cand_needed;   // sum of the selected buckets' sizes after pass 0
  unsigned long long cand_count;    // candidates written
  unsigned long long ties_live;     // groups whose tie selection is still running
  unsigned int tickets[8];          // calib_ticket_select: blocks done with value digit `pass`' histogram
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
  index_t num_ballot_tiles;  // split tiles [0, num_ballot_tiles) are calib_split_ballot's, the rest calib_split's
  const calib_tile* tiles0;  // pass 0's finer tiles (better balance over the persistent blocks)
  index_t num_tiles0;
  int pass0_interleave;  // calib_pass0_bulk: block b takes tiles b, b + grid, ... (else a contiguous range)
  std::uint64_t pos_max;  // (1 << pos_bits) - 1: tie key of flat bit position q is pos_max - q
  int pos_bits;
  int exact;
  index_t num_groups;
  int fused;  // value digits whose select runs in the last block of the histogramming kernel
              // (calib_ticket_select): bit 0 digit 0 (calib_pass0_bulk), bit 2 the later digits
              // (calib_hist); the plan sets them with few groups
  // Bit 4 (every split tile a calib_split_ballot tile): each split block describes its candidates
  // (segments[block]), and calib_finish takes them a warp per segment (one tensor and group per
  // warp: no per-candidate descriptor and state loads, one kept-count atomic per segment).
  calib_segment* segments;
};

// Programmatic dependent launch (sm_90; run() launches every kernel after calib_init with the
// attribute): a kernel's blocks may start while the kernel before it still runs. Every kernel lets
// the next one's blocks start early (calib_allow_next, at its start: they only take what the SMs
// have left) and waits for the kernel before it, its completion and memory (calib_wait_prior),
// before it touches anything that kernel or an earlier one wrote, and always before it ends (so a
// kernel's completion implies its predecessors'). No-ops for an ordinary launch or below sm_90.
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

// Sums v over the warp (every lane gets the sum; all 32 lanes must call).
__device__ __forceinline__ unsigned int calib_warp_sum(unsigned int v) {
  for (int o = 16; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ unsigned long long calib_warp_sum64(unsigned long long v) {
  for (int o = 16; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Suffix sums over the lanes of a full warp: lane l gets v's sum over lanes l to 31.
__device__ __forceinline__ unsigned long long calib_warp_suffix_sum64(unsigned long long v, int lane) {
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long t = __shfl_down_sync(0xffffffffu, v, o);
    if (lane + o < 32) v += t;
  }
  return v;
}

// Resets the run's state: group states from their initial copies, histograms, globals and kept
// counts to zero (bad_position to ~0). The workspace needs no initialisation by the caller.
template <class Key>
__global__ void __launch_bounds__(calib_block) calib_init(calib_group_state<Key>* groups, const calib_group_state<Key>* init,
                                                          index_t num_groups, unsigned long long* zero, index_t zero_words,
                                                          index_t bad_word) {
  calib_allow_next();  // pass 0 histograms its first tiles in shared memory meanwhile
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  const index_t i0 = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  for (index_t i = i0; i < zero_words; i += stride) zero[i] = i == bad_word ? ~0ull : 0ull;
  for (index_t i = i0; i < num_groups; i += stride) groups[i] = init[i];
}

// Narrows a group's state to `bin` (cnt keys, `acc` keys in the bins above it): the one lane of
// calib_select that holds the rank sought.
template <class Key, int Mode>
__device__ __forceinline__ void calib_select_narrow(calib_group_state<Key>* gs, calib_globals* globals, int bin, index_t acc,
                                                    index_t cnt, unsigned long long excluded, int pass, int exact) {
  const radix_select_state<Key> vst = gs->value;
  const radix_select_state<std::uint64_t> tst = gs->tie;
  if (Mode == 0) {
    radix_select_state<Key> st = vst;
    st.greater += acc;
    st.remaining -= acc;
    st.prefix |= static_cast<Key>(static_cast<Key>(bin) << calib_shift<0>(st.key_bits, st.pass));
    ++st.pass;
    if (pass == 0) atomicAdd(&globals->cand_needed, static_cast<unsigned long long>(cnt));
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

// Value digit 0's first bin of the NaN/Inf keys (+Inf's key and above): MK is the magnitude_key of
// the float type whose keys the bins count.
template <class MK>
constexpr int calib_inf_bin_of = static_cast<int>(MK::infinity >> calib_vshift(MK::bits, 0));
template <class Key>
constexpr int calib_inf_bin = calib_inf_bin_of<magnitude_key<std::conditional_t<sizeof(Key) == 4, float, double>>>;

// What a select step (calib_select_group, calib_select_group_staged) reads of its group's state
// for digit `pass` of the Mode 0 (value) or Mode 1 (tie) selection.
struct calib_group_read {
  int bins;                     // the digit's bins
  bool live;                    // the selection is not finished and at digit `pass`
  bool add_excluded;            // the excluded entries join bin 0 (value passes >= 1, prefix 0)
  index_t remaining;            // rank still to find
  unsigned long long excluded;  // excluded entries in the group (read with ld.global.cg)
};
template <class Key, int Mode>
__device__ __forceinline__ calib_group_read calib_read_group(calib_group_state<Key>* gs, int pass) {
  const radix_select_state<Key> vst = gs->value;
  const radix_select_state<std::uint64_t> tst = gs->tie;
  const int kbits = Mode == 0 ? vst.key_bits : tst.key_bits;
  calib_group_read r;
  r.live = Mode == 0 ? (!vst.finished() && vst.pass == pass) : (!tst.finished() && tst.pass == pass);
  r.remaining = Mode == 0 ? vst.remaining : tst.remaining;
  r.add_excluded = Mode == 0 && pass > 0 && vst.prefix == 0;
  r.bins = 1 << (calib_high<Mode>(kbits, pass) - calib_shift<Mode>(kbits, pass));
  r.excluded = __ldcg(&gs->excluded);
  return r;
}

// Shared-memory address of p (for the cp.async, mbarrier and bulk-copy PTX).
__device__ __forceinline__ unsigned calib_smem(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

// calib_select_group for 17 to 32 rows of 32 bins per warp (see there; pass 0's 8192 bins in a
// 256-thread block): the counters are staged in shared memory (stage[bin], MaxBins counters,
// 16-byte aligned; at least 2 bins), each lane keeps only its sum; in the warp holding the rank,
// lane j sums row j (rotated reads: no bank conflicts), a suffix scan over the lanes finds the
// row, suffix sums over its lanes the bin.
template <class Key, int Mode, int Threads, int MaxBins>
__device__ __forceinline__ void calib_select_group_staged(calib_group_state<Key>* gs, unsigned long long* h, calib_globals* globals,
                                                          int pass, int exact, unsigned long long* sh_total, unsigned long long* stage) {
  constexpr int warps = Threads / 32;
  constexpr int rows = MaxBins / Threads;
  static_assert(rows > 16 && rows <= 32, "calib_select_group_staged: 17 to 32 rows per warp");
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31u);
  const auto [bins, live, add_excluded, remaining, excluded] = calib_read_group<Key, Mode>(gs, pass);
  const int base = (warps - 1 - warp) * rows * 32;
  // stage <- the digit's counters by asynchronous copies from L2 (16 bytes each, all in flight at
  // once, no registers), zeros above them; the excluded entries join bin 0 (see calib_select_group).
  for (int i = static_cast<int>(threadIdx.x); 2 * i < MaxBins; i += Threads) {
    if (2 * i < bins) {
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(calib_smem(stage + 2 * i)), "l"(h + 2 * i) : "memory");
    } else {
      stage[2 * i] = 0;
      stage[2 * i + 1] = 0;
    }
  }
  asm volatile("cp.async.wait_all;" ::: "memory");
  __syncthreads();
  if (threadIdx.x == 0 && add_excluded) stage[0] += excluded;
  __syncthreads();
  unsigned long long sum = 0;
  bool bad = false;
#pragma unroll 8
  for (int k = 0; k < rows; ++k) {
    const int idx = base + 32 * k + lane;
    const unsigned long long c = stage[idx];
    sum += c;
    if (Mode == 0 && pass == 0) bad |= idx >= calib_inf_bin<Key> && c != 0;  // NaN/Inf entries (see calib_select_group)
  }
  if (bad) globals->nonfinite = 1;
  const unsigned long long wsum = calib_warp_sum64(sum);
  if (lane == 0) sh_total[warp] = wsum;
  __syncthreads();  // sh_total complete
  unsigned long long above = 0;
  for (int w = 0; w < warp; ++w) above += sh_total[w];
  if (live && static_cast<index_t>(above) < remaining && static_cast<index_t>(above + wsum) >= remaining) {  // warp-uniform
    unsigned long long rsum = 0;  // lane j < rows: row j's total
    if (lane < rows)
      for (int i = 0; i < 32; ++i) rsum += stage[base + 32 * lane + ((i + lane) & 31)];
    const unsigned long long suffix = calib_warp_suffix_sum64(rsum, lane);  // rows j and above
    // Rows from the top: the rank is in the highest row j whose suffix reaches it (lane 0's suffix,
    // the warp's total, does).
    const unsigned int ok = __ballot_sync(0xffffffffu, static_cast<index_t>(above + suffix) >= remaining);
    const int row = 31 - __clz(static_cast<int>(ok));
    const unsigned long long row_above = above + __shfl_sync(0xffffffffu, suffix, row) - __shfl_sync(0xffffffffu, rsum, row);
    const unsigned long long rc = stage[base + 32 * row + lane];
    const unsigned long long lsuf = calib_warp_suffix_sum64(rc, lane);  // keys in this row's bins from this lane's up
    const auto before = static_cast<index_t>(row_above + lsuf - rc), cnt = static_cast<index_t>(rc);
    if (ok != 0 && before < remaining && before + cnt >= remaining)
      calib_select_narrow<Key, Mode>(gs, globals, base + 32 * row + lane, before, cnt, excluded, pass, exact);
  }
#pragma unroll 8
  for (int k = 0; k < rows; ++k) {
    const int idx = base + 32 * k + lane;
    if (idx < bins && idx < radix_bins) h[idx] = 0;
  }
}

// The select step of one group, run by a whole block of Threads threads (every thread must call it;
// it synchronises the block): narrows the group's state with its histogram, then clears the
// histogram (the first radix_bins counters: later passes have at most radix_digit_bits-bit digits).
// MaxBins (>= the digit's bins) sizes the per-thread registers: MaxBins / Threads counters each.
// Mode 0 narrows the value selection (adding the excluded entries to bin 0 for passes >= 1 when the
// prefix is 0), Mode 1 the tie selection. After the last value pass of an exact-semantics run it
// starts the tie selection (k = ties needed), unless every non-excluded tie is needed (then all are
// kept and no tie pass runs for the group). The counters are read with ld.global.cg (from L2): the
// fused callers (calib_ticket_select) read histograms other blocks of their own kernel built.
// sh_total: Threads / 32 counters of shared memory, not used by the block around the call. At most
// 16 rows of 32 bins per warp (calib_select_group_staged for more).
template <class Key, int Mode, int Threads, int MaxBins>
__device__ __forceinline__ void calib_select_group(calib_group_state<Key>* gs, unsigned long long* h, calib_globals* globals,
                                                   int pass, int exact, unsigned long long* sh_total) {
  constexpr int warps = Threads / 32;
  constexpr int rows = MaxBins / Threads;  // rows of 32 bins per warp
  static_assert(MaxBins % Threads == 0 && rows >= 1 && rows <= 16 && MaxBins <= calib_max_bins, "calib_select_group: bin layout");
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31u);
  // Every thread reads the state before the barrier; only the one lane that finds the rank reads
  // it again and writes it afterwards, so no thread can see a half-updated state.
  const auto [bins, live, add_excluded, remaining, excluded] = calib_read_group<Key, Mode>(gs, pass);
  // Warp w owns bins [base, base + 32 rows), warp 0 the top ones; lane l holds column l: bins
  // base + 32 k + l (coalesced loads, all in flight at once).
  const int base = (warps - 1 - warp) * rows * 32;
  unsigned long long c[rows], sum = 0;
#pragma unroll
  for (int k = 0; k < rows; ++k) {
    const int idx = base + 32 * k + lane;
    c[k] = idx < bins ? __ldcg(h + idx) + (add_excluded && idx == 0 ? excluded : 0ull) : 0ull;
    sum += c[k];
  }
  if (Mode == 0 && pass == 0) {
    // The top bins, from +Inf's key up, hold the NaN/Inf entries pass 0 saw.
    bool bad = false;
#pragma unroll
    for (int k = 0; k < rows; ++k) bad |= base + 32 * k + lane >= calib_inf_bin<Key> && c[k] != 0;
    if (bad) globals->nonfinite = 1;
  }
  const unsigned long long wsum = calib_warp_sum64(sum);
  if (lane == 0) sh_total[warp] = wsum;
  __syncthreads();
  unsigned long long above = 0;  // keys in the bins of the warps above this one
  for (int w = 0; w < warp; ++w) above += sh_total[w];
  if (live && static_cast<index_t>(above) < remaining && static_cast<index_t>(above + wsum) >= remaining) {  // warp-uniform
    // Rows from the top: the row holding the rank, then the lane (suffix sums over the lanes).
    int row = -1;
    unsigned long long row_above = above, rc = 0;
#pragma unroll
    for (int k = rows - 1; k >= 0; --k) {
      const unsigned long long rs = calib_warp_sum64(c[k]);
      if (row < 0) {
        if (static_cast<index_t>(row_above + rs) >= remaining) {
          row = k;
          rc = c[k];
        } else {
          row_above += rs;
        }
      }
    }
    const unsigned long long suffix = calib_warp_suffix_sum64(rc, lane);  // keys in this row's bins from this lane's up
    const auto before = static_cast<index_t>(row_above + suffix - rc), cnt = static_cast<index_t>(rc);
    if (row >= 0 && before < remaining && before + cnt >= remaining)
      calib_select_narrow<Key, Mode>(gs, globals, base + 32 * row + lane, before, cnt, excluded, pass, exact);
  }
  // Each lane clears the bins it read (bins >= radix_bins serve pass 0 only, zeroed by
  // calib_init; the others are reused by the next pass).
#pragma unroll
  for (int k = 0; k < rows; ++k) {
    const int idx = base + 32 * k + lane;
    if (idx < bins && idx < radix_bins) h[idx] = 0;
  }
}

// One block per group: calib_select_group (see there) for the group of the block.
template <class Key, int Mode>
__global__ void __launch_bounds__(calib_select_block, 2) calib_select(calib_group_state<Key>* groups, unsigned long long* hist,
                                                                      calib_globals* globals, int pass, int exact) {
  __shared__ unsigned long long sh_total[calib_select_block / 32];
  calib_wait_prior();
  calib_allow_next();
  // No tie selection running: no tie histogram was built (calib_hist returned), nothing to clear.
  // (Only a block whose group is live decrements ties_live, so 0 means none is live.)
  if (Mode == 1 && globals->ties_live == 0) return;
  calib_select_group<Key, Mode, calib_select_block, calib_max_bins>(groups + blockIdx.x, hist + blockIdx.x * static_cast<index_t>(calib_max_bins),
                                                                   globals, pass, exact, sh_total);
}

// The end of a kernel whose blocks built the histograms of value digit `pass` (Mode 0) with global
// atomics, when the plan fuses that digit's select into it (calib_params::fused, few groups): every
// block takes a ticket after its histogram updates; the block that takes the last one (all others
// are then done) runs calib_select_group for every group, one after the other, so no select kernel
// (launch, ramp, completion) follows. Every thread of every block must call it, at the end of the
// kernel (the block's shared memory is free). ticket: calib_globals::tickets[pass] (zeroed by
// calib_init; one use per run). stage: MaxBins counters of shared memory when MaxBins > 16 x 256.
template <class T, int MaxBins>
__device__ __forceinline__ void calib_ticket_select(const calib_params<T>& p, int pass, unsigned long long* stage = nullptr) {
  using Key = magnitude_key_t<T>;
  __shared__ unsigned long long sh_total[calib_block / 32];
  __shared__ unsigned int sh_last;
  // The block's histogram atomics are ordered before its ticket by the barrier and thread 0's
  // fence; the last block's thread 0 fences after its ticket, and the barrier orders the block's
  // loads (from L2) after it (the pattern of cooperative groups' grid synchronisation: one fence
  // per block, not per thread: a fence waits for the thread's outstanding stores).
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const bool last = atomicAdd(&p.globals->tickets[pass], 1u) == gridDim.x - 1;
    if (last) __threadfence();
    sh_last = last ? 1u : 0u;
  }
  __syncthreads();
  if (sh_last == 0) return;  // block-uniform
  for (index_t g = 0; g < p.num_groups; ++g) {
    if constexpr (MaxBins / calib_block > 16)  // pass 0's 8192 bins: counters staged in shared memory
      calib_select_group_staged<Key, 0, calib_block, MaxBins>(p.groups + g, p.hist + g * calib_max_bins, p.globals, pass, p.exact, sh_total,
                                                              stage);
    else
      calib_select_group<Key, 0, calib_block, MaxBins>(p.groups + g, p.hist + g * calib_max_bins, p.globals, pass, p.exact, sh_total);
    __syncthreads();  // sh_total is reused by the next group
  }
}

// Pass 0, the first full read: histogram of the first value digit of every element (excluded
// entries count as key 0), per group; excluded counts; NaN/Inf detection: the float4 path has no
// per-element check (NaN/Inf keys land in the histogram's top bins, which calib_select inspects;
// calib_finish then finds the smallest flat position), the other path records the smallest flat
// position itself (excluded entries get key 0 in the histogram, so it must look at each value).
// Persistent blocks take contiguous ranges of tiles (so a block flushes its shared histogram only
// when the group changes); the plan orders the split's tiles so that it reads first what pass 0
// read last (still in L2).
template <class T>
__global__ void __launch_bounds__(calib_pass0_block, calib_pass0_min_blocks) calib_pass0(calib_params<T> p) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  constexpr int shift = calib_vshift(bits, 0);
  constexpr int bins = 1 << (bits - shift);
  static_assert(bins == calib_max_bins, "calib_pass0: first digit width");
  __shared__ unsigned int sh[bins];
  calib_allow_next();  // the data, tiles and descriptors are not calib_init's: read before waiting
  for (int b = threadIdx.x; b < bins; b += blockDim.x) sh[b] = 0;
  __syncthreads();
  index_t cur = -1, acc = 0;  // uniform over the block
  const index_t t_end = (static_cast<index_t>(blockIdx.x) + 1) * p.num_tiles0 / gridDim.x;
  for (index_t t = static_cast<index_t>(blockIdx.x) * p.num_tiles0 / gridDim.x; t < t_end; ++t) {
    const calib_tile tile = p.tiles0[t];
    const calib_tensor_desc<T> td = p.tensors[tile.tensor];
    const index_t ne = (tile.row_end - tile.row_begin) * td.cols;  // < 2^31 (plan checks)
    if (cur >= 0 && (td.group != cur || acc + ne > (index_t{1} << 31))) {
      __syncthreads();
      calib_wait_prior();  // calib_init has zeroed the histograms
      calib_flush(sh, bins, p.hist + cur * calib_max_bins);
      __syncthreads();
      acc = 0;
    }
    cur = td.group;
    acc += ne;
    bool done = false;
    if constexpr (sizeof(T) == 4) {
      if (td.fast && td.excl == nullptr) {  // packed rows, cols % 4 == 0, 16-byte aligned
        const auto* base4 = reinterpret_cast<const float4*>(td.data + tile.row_begin * td.cols);
        const auto n4 = static_cast<std::uint32_t>(ne / 4);  // 32-bit offsets within the tile
        constexpr int U = calib_pass0_unroll;
        for (std::uint32_t v0 = threadIdx.x; v0 < n4; v0 += U * blockDim.x) {
          float4 x[U];
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const std::uint32_t v = v0 + u * blockDim.x;
            x[u] = v < n4 ? __ldg(base4 + v) : make_float4(0.f, 0.f, 0.f, 0.f);
          }
          if (v0 == threadIdx.x && t + 1 < t_end) {
            // While this tile's loads are in flight: the block's next tile is requested into L2
            // (one 128-byte line per thread), so its loads need not wait for DRAM. A hint only.
            const calib_tile nt = p.tiles0[t + 1];
            const calib_tensor_desc<T>* nd = p.tensors + nt.tensor;
            if (nd->fast) {  // packed rows
              const auto* nb = reinterpret_cast<const char*>(nd->data + nt.row_begin * nd->cols);
              const index_t nbytes = (nt.row_end - nt.row_begin) * nd->cols * static_cast<index_t>(sizeof(T));
              for (index_t off = threadIdx.x * index_t{128}; off < nbytes; off += blockDim.x * index_t{128})
                asm volatile("prefetch.global.L2 [%0];" ::"l"(nb + off));
            }
          }
#pragma unroll
          for (int u = 0; u < U; ++u) {
            if (v0 + u * blockDim.x >= n4) break;
            const float xs[4] = {x[u].x, x[u].y, x[u].z, x[u].w};
#pragma unroll
            for (int b = 0; b < 4; ++b) atomicAdd(&sh[magnitude_bits(xs[b]) >> shift], 1u);
          }
        }
        done = true;
      }
    }
    if (!done) {
      calib_wait_prior();  // calib_init has reset bad_position and the excluded counts
      const index_t first = td.elem_offset + tile.row_begin * td.cols;  // flat position of the tile's element 0
      unsigned int excl_here = 0;
      for (index_t e = threadIdx.x; e < ne; e += blockDim.x) {
        index_t r = 0, c = 0;
        calib_rc(e, td.cols, tile.row_begin, r, c);
        Key key = magnitude_bits(td.data[r * td.ld + c]);
        if (key >= magnitude_key<T>::infinity) atomicMin(&p.globals->bad_position, static_cast<unsigned long long>(first + e));
        if (calib_excluded(td.excl, td.wpr, r, c)) {
          key = 0;
          ++excl_here;
        }
        atomicAdd(&sh[key >> shift], 1u);
      }
      if (excl_here != 0) atomicAdd(&p.groups[td.group].excluded, static_cast<unsigned long long>(excl_here));
    }
  }
  __syncthreads();
  calib_wait_prior();
  if (cur >= 0) calib_flush(sh, bins, p.hist + cur * calib_max_bins);
}


// Pass 0 when every pass-0 tile is a float4 tile without exclusions (calib_plan::bulk0_): the same
// histogram as calib_pass0, but the tiles stream into shared memory by bulk copies (the TMA engine,
// sm_90), two in flight per block: thread 0 issues tile t + 2's copy as soon as the block has
// histogrammed tile t, so the block's next two tiles are always on their way and no register
// holds data in flight (2 blocks of 256 threads per SM: 4 tiles, 128 KB, in flight per SM).
// Completion is tracked by one mbarrier per buffer (transaction bytes, phase parity).
template <class T>
__global__ void __launch_bounds__(calib_pass0_block, 2) calib_pass0_bulk(calib_params<T> p) {
  static_assert(sizeof(T) == 4, "calib_pass0_bulk: float only");
  static_assert(calib_pass0_block == calib_block, "calib_pass0_bulk: calib_ticket_select's block size");
  static_assert(2 * calib_pass0_tile_elems * sizeof(float) >= calib_max_bins * sizeof(unsigned long long),
                "calib_pass0_bulk: the tile buffers stage calib_ticket_select's counters");
  constexpr int shift = calib_vshift(magnitude_key<T>::bits, 0);
  constexpr int bins = calib_max_bins;
  constexpr int tile4 = static_cast<int>(calib_pass0_tile_elems / 4);  // float4 per buffer
  __shared__ unsigned int sh[bins];
  __shared__ alignas(8) unsigned long long full[2];
  extern __shared__ float4 calib_buf[];  // 2 x tile4 (dynamic shared memory)
  calib_allow_next();
  // The block's tiles: t_begin, t_begin + stride, ... below t_end (a contiguous range, or with one
  // group every grid-th tile, so that the blocks read neighbouring tiles at the same time).
  const index_t G = gridDim.x, stride = p.pass0_interleave ? G : 1;
  const index_t t_begin = p.pass0_interleave ? static_cast<index_t>(blockIdx.x) : static_cast<index_t>(blockIdx.x) * p.num_tiles0 / G;
  const index_t t_end = p.pass0_interleave ? p.num_tiles0 : (static_cast<index_t>(blockIdx.x) + 1) * p.num_tiles0 / G;
  // Thread 0: tile t's bytes into buffer `slot`, completing on full[slot].
  const auto issue = [&](index_t t, int slot) {
    const calib_tile tile = p.tiles0[t];
    const calib_tensor_desc<T>* td = p.tensors + tile.tensor;
    const auto bytes = static_cast<unsigned>((tile.row_end - tile.row_begin) * td->cols * static_cast<index_t>(sizeof(T)));
    const T* src = td->data + tile.row_begin * td->cols;
    const unsigned mb = calib_smem(&full[slot]);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(mb), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     calib_smem(calib_buf + slot * tile4)),
                 "l"(src), "r"(bytes), "r"(mb)
                 : "memory");
  };
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(calib_smem(&full[0])) : "memory");
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(calib_smem(&full[1])) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    if (t_begin < t_end) issue(t_begin, 0);
    if (t_begin + stride < t_end) issue(t_begin + stride, 1);
  }
  for (int b = threadIdx.x; b < bins; b += blockDim.x) sh[b] = 0;
  __syncthreads();
  index_t cur = -1, acc = 0;  // uniform over the block
  for (index_t t = t_begin; t < t_end; t += stride) {
    const auto i = static_cast<unsigned>((t - t_begin) / stride);
    const int slot = static_cast<int>(i & 1u);
    const calib_tile tile = p.tiles0[t];
    const index_t group = p.tensors[tile.tensor].group;
    const index_t ne = (tile.row_end - tile.row_begin) * p.tensors[tile.tensor].cols;
    if (cur >= 0 && (group != cur || acc + ne > (index_t{1} << 31))) {
      __syncthreads();
      calib_wait_prior();  // calib_init has zeroed the histograms
      calib_flush(sh, bins, p.hist + cur * calib_max_bins);
      __syncthreads();
      acc = 0;
    }
    cur = group;
    acc += ne;
    // Wait for buffer `slot`'s copy (its (i / 2)-th use: phase parity (i / 2) & 1).
    const unsigned mb = calib_smem(&full[slot]), parity = (i >> 1) & 1u;
    for (unsigned done = 0; done == 0;)
      asm volatile("{\n\t.reg .pred q;\n\tmbarrier.try_wait.parity.shared::cta.b64 q, [%1], %2;\n\tselp.u32 %0, 1, 0, q;\n\t}"
                   : "=r"(done)
                   : "r"(mb), "r"(parity)
                   : "memory");
    const float4* x4 = calib_buf + slot * tile4;
    const auto n4 = static_cast<unsigned>(ne / 4);
    for (unsigned v = threadIdx.x; v < n4; v += blockDim.x) {
      const float4 x = x4[v];
      atomicAdd(&sh[magnitude_bits(x.x) >> shift], 1u);
      atomicAdd(&sh[magnitude_bits(x.y) >> shift], 1u);
      atomicAdd(&sh[magnitude_bits(x.z) >> shift], 1u);
      atomicAdd(&sh[magnitude_bits(x.w) >> shift], 1u);
    }
    __syncthreads();  // every thread is done with buffer `slot`: refill it
    if (threadIdx.x == 0 && t + 2 * stride < t_end) issue(t + 2 * stride, slot);
  }
  __syncthreads();
  calib_wait_prior();
  if (cur >= 0) calib_flush(sh, bins, p.hist + cur * calib_max_bins);
  // (the tile buffers, idle now, stage the select's 8192 counters)
  if (p.fused & 1) calib_ticket_select<T, calib_max_bins>(p, 0, reinterpret_cast<unsigned long long*>(calib_buf));
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

// Split pass for a `fast` tensor (see calib_tensor_desc): thread v of the tile reads float4 v
// (elements 4v..4v+3, coalesced), calib_split_unroll of them in flight; the W = min(cols, 64)
// elements of a mask word are held by L = W / 4 consecutive lanes (a power of two dividing 32),
// whose bits are OR-reduced with shuffles; the first lane of each group writes the word. A whole
// tile (calib_split_unroll * 1024 elements) is loaded at once, so one block scan and one global
// atomic per tile reserve the slots of its candidates.
template <class T, class Scan>
__device__ __forceinline__ void calib_split_fast(const calib_params<T>& p, const calib_tile& tile, const calib_tensor_desc<T>& td,
                                                 const radix_select_state<magnitude_key_t<T>>& vs, bool live, bool compact,
                                                 typename Scan::TempStorage& tmp, unsigned int* sh, unsigned long long& sh_base,
                                                 unsigned int& kept) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  constexpr int U = calib_split_unroll;
  const int shift0 = calib_vshift(bits, 0), shift1 = calib_vshift(bits, 1);
  const auto pm = static_cast<Key>(calib_prefix_mask<0>(bits, 1));
  const Key above = static_cast<Key>(vs.prefix | ((Key{1} << shift0) - 1));
  const auto dmask = static_cast<Key>(calib_digit_mask<0>(bits, 1));
  const int W = static_cast<int>(td.cols < 64 ? td.cols : 64);
  const int L = W / 4;
  const index_t n4 = (tile.row_end - tile.row_begin) * td.cols / 4;
  const auto* base4 = reinterpret_cast<const float4*>(td.data + tile.row_begin * td.cols);
  const index_t word0 = tile.row_begin * td.wpr;
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const auto B = static_cast<index_t>(blockDim.x);
  for (index_t v0 = 0; v0 < n4; v0 += U * B) {
    std::uint64_t cbits = 0;  // candidate flags: bit 4u + b
    float4 x[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t v = v0 + u * B + threadIdx.x;
      x[u] = (v < n4 && live) ? __ldg(base4 + v) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t v = v0 + u * B + threadIdx.x;
      const bool in = v < n4;
      const index_t word = word0 + v / L;
      const int bitpos = static_cast<int>((4 * v) & (W - 1));
      const Key k[4] = {magnitude_bits(x[u].x), magnitude_bits(x[u].y), magnitude_bits(x[u].z), magnitude_bits(x[u].w)};
      unsigned int def4 = 0, cand4 = 0;
      if (in && live) {
#pragma unroll
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
      if (compact && in && (lane & (L - 1)) == 0) {
        td.out[word] = w;
        kept += static_cast<unsigned int>(__popcll(w));
      }
      cbits |= static_cast<std::uint64_t>(cand4) << (4 * u);
    }
    const auto cnt = static_cast<unsigned int>(__popcll(cbits));
    unsigned int off = 0, total = 0;
    Scan(tmp).ExclusiveSum(cnt, off, total);
    if (compact && threadIdx.x == 0 && total != 0) sh_base = atomicAdd(&p.globals->cand_count, static_cast<unsigned long long>(total));
    __syncthreads();
    unsigned int slot = off;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (((cbits >> (4 * u)) & 0xfu) == 0) continue;
      const Key k[4] = {magnitude_bits(x[u].x), magnitude_bits(x[u].y), magnitude_bits(x[u].z), magnitude_bits(x[u].w)};
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        if (((cbits >> (4 * u + b)) & 1u) == 0) continue;
        const Key key = k[b];
        atomicAdd(&sh[(key >> shift1) & dmask], 1u);
        if (compact) {
          const index_t v = v0 + u * B + threadIdx.x;
          const index_t word = word0 + v / L;
          const int bitpos = static_cast<int>((4 * v) & (W - 1));
          p.cands[sh_base + slot] = calib_candidate<Key>{key, static_cast<std::uint32_t>(tile.tensor),
                                                         static_cast<std::uint64_t>(word * 64 + bitpos + b)};
        }
        ++slot;
      }
    }
    __syncthreads();  // sh_base and tmp are reused by the next chunk
  }
}

// Split pass (second and last full read), one block per tile (table order reversed). Compact mode:
// writes every mask word with the bits certainly kept (first digit above the selected bucket; their
// popcount goes to the tensor's kept count) and appends the bucket's entries to the candidate list;
// both modes: histogram of digit 1 of the bucket's entries (shared memory, flushed at the end).
template <class T>
__global__ void __launch_bounds__(calib_block, 3) calib_split(calib_params<T> p) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  using scan_t = cub::BlockScan<unsigned int, calib_block>;
  __shared__ typename scan_t::TempStorage tmp;
  __shared__ unsigned long long sh_base;
  __shared__ unsigned int sh_kept;
  __shared__ unsigned int sh[radix_bins];
  static_assert(calib_vhigh(bits, 1) - calib_vshift(bits, 1) <= radix_digit_bits, "calib_split: digit 1 fits radix_bins");
  calib_wait_prior();
  calib_allow_next();
  const calib_tile tile = p.tiles[p.num_tiles - 1 - static_cast<index_t>(blockIdx.x)];
  const calib_tensor_desc<T> td = p.tensors[tile.tensor];
  const radix_select_state<Key> vs = p.groups[td.group].value;
  const bool compact = calib_compact(p.globals, p.capacity);
  const bool live = vs.k > 0 && vs.pass == 1;  // k > 0 (more than one pass: always, for float/double)
  if (threadIdx.x == 0) sh_kept = 0;
  for (int b = threadIdx.x; b < radix_bins; b += blockDim.x) sh[b] = 0;
  __syncthreads();
  unsigned int kept = 0;
  bool done = false;
  if constexpr (sizeof(T) == 4) {
    if (td.fast) {  // uniform over the block
      calib_split_fast<T, scan_t>(p, tile, td, vs, live, compact, tmp, sh, sh_base, kept);
      done = true;
    }
  }
  if (!done) {
    const int shift0 = calib_vshift(bits, 0), shift1 = calib_vshift(bits, 1);
    const auto pm = static_cast<Key>(calib_prefix_mask<0>(bits, 1));
    const Key above = static_cast<Key>(vs.prefix | ((Key{1} << shift0) - 1));
    const auto dmask = static_cast<Key>(calib_digit_mask<0>(bits, 1));
    const index_t nw = (tile.row_end - tile.row_begin) * td.wpr;
    for (index_t q0 = 0; q0 < nw; q0 += blockDim.x) {
      const index_t q = q0 + threadIdx.x;
      std::uint64_t def = 0, cand = 0;
      index_t r = 0, w = 0;
      if (q < nw) {
        r = tile.row_begin + q / td.wpr;
        w = q % td.wpr;
        if (live) calib_word_bits<T>(td, r, w, above, pm, vs.prefix, def, cand);
        if (compact) {
          td.out[r * td.wpr + w] = def;
          kept += static_cast<unsigned int>(__popcll(def));
        }
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
  }
  const unsigned int ws = calib_warp_sum(kept);
  if ((threadIdx.x & 31u) == 0 && ws != 0) atomicAdd(&sh_kept, ws);
  __syncthreads();
  if (threadIdx.x == 0 && sh_kept != 0) atomicAdd(p.kept + tile.tensor, static_cast<unsigned long long>(sh_kept));
  calib_flush(sh, radix_bins, p.hist + td.group * calib_max_bins);
}

// Column counts calib_split_ballot handles: a 32-element chunk of a packed tensor is then one
// 32-bit half of a mask word (cols a multiple of 32) or 32 / cols whole rows (cols in {1, 2, 4, 8,
// 16}); tiles (calib_tile_elems / cols rows) start on chunk boundaries and fit 16-bit indices.
LORI_HOST_DEVICE constexpr bool calib_ballot_shape(index_t cols) noexcept {
  return cols >= 1 && cols <= calib_tile_elems && (cols % 32 == 0 || cols == 1 || cols == 2 || cols == 4 || cols == 8 || cols == 16);
}

// |x| >= t as an IEEE comparison written in PTX without .ftz, so subnormals compare exactly whatever
// the compile flags (-use_fast_math): for x, t not NaN and t >= 0 it equals magnitude_bits(x) >=
// bits(t), as the keys order like the non-negative floats; false when x or t is NaN.
__device__ __forceinline__ bool calib_abs_ge(float x, float t) {
  unsigned int r;
  asm("{\n\t.reg .pred p;\n\t.reg .f32 a;\n\tabs.f32 a, %1;\n\tsetp.ge.f32 p, a, %2;\n\tselp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(r)
      : "f"(x), "f"(t));
  return r != 0;
}

// An L2 policy that evicts first what it tags, and a read-only load with it (L1 not allocated):
// for data read once (the split's entries), so that what later kernels read (mask words,
// candidate records, histograms) stays in L2.
__device__ __forceinline__ unsigned long long calib_evict_first_policy() {
  unsigned long long pol;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}
__device__ __forceinline__ float calib_load_once(const float* p, unsigned long long pol) {
  float r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.f32 %0, [%1], %2;" : "=f"(r) : "l"(p), "l"(pol));
  return r;
}

// atomicAdd without return as a global reduction (`red.global.add.u64`): the thread does not wait.
__device__ __forceinline__ void calib_red_add(unsigned long long* p, unsigned long long v) {
  asm volatile("red.relaxed.gpu.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// An L2 policy that keeps what it tags longer, and stores with it: for what the split writes and
// the later kernels read (mask words, candidate records), so it is still in L2 when they run.
__device__ __forceinline__ unsigned long long calib_evict_last_policy() {
  unsigned long long pol;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}
__device__ __forceinline__ void calib_store_keep(std::uint32_t* p, std::uint32_t v, unsigned long long pol) {
  asm volatile("st.global.L2::cache_hint.b32 [%0], %1, %2;" ::"l"(p), "r"(v), "l"(pol) : "memory");
}
__device__ __forceinline__ void calib_store_keep(std::uint64_t* p, std::uint64_t v, unsigned long long pol) {
  asm volatile("st.global.L2::cache_hint.b64 [%0], %1, %2;" ::"l"(p), "l"(v), "l"(pol) : "memory");
}
__device__ __forceinline__ void calib_store_keep(calib_candidate<std::uint32_t>* p, const calib_candidate<std::uint32_t>& c,
                                                 unsigned long long pol) {
  static_assert(sizeof(calib_candidate<std::uint32_t>) == 16, "calib_store_keep: 16-byte record");
  asm volatile("st.global.L2::cache_hint.v4.b32 [%0], {%1, %2, %3, %4}, %5;" ::"l"(p), "r"(c.key), "r"(c.tensor),
               "r"(static_cast<std::uint32_t>(c.bit)), "r"(static_cast<std::uint32_t>(c.bit >> 32)), "l"(pol)
               : "memory");
}

// The ballot over a full warp of |x| >= hi (calib_abs_ge), and this lane's candidate flag
// (lo <= |x| < hi; IEEE compares without .ftz, false for NaN) OR-ed into bit s of cflag, in PTX: the
// warp is converged where this is called (warp-uniform control flow), so no divergence check is
// needed around the vote.
__device__ __forceinline__ std::uint32_t calib_ballot_abs_ge_cand(float x, float hi, float lo, std::uint32_t& cflag, int s) {
  std::uint32_t r, c;
  asm volatile(
      "{\n\t.reg .pred ph, pc;\n\t.reg .f32 a;\n\tabs.f32 a, %2;\n\tsetp.ge.f32 ph, a, %3;\n\tsetp.ge.f32 pc, a, %4;\n\t"
      "setp.lt.and.f32 pc, a, %3, pc;\n\tvote.sync.ballot.b32 %0, ph, 0xffffffff;\n\tselp.u32 %1, 1, 0, pc;\n\t}"
      : "=r"(r), "=r"(c)
      : "f"(x), "f"(hi), "f"(lo));
  cflag |= c << s;
  return r;
}

// The 32 bits of chunk q (elements 32q .. 32q + 31 of a tile of nrows rows starting at row r0) in a
// bit matrix laid out like the masks (words per row wpr) of a calib_ballot_shape tensor.
__device__ __forceinline__ std::uint32_t calib_chunk_bits(const std::uint64_t* words, index_t wpr, int cols, index_t r0,
                                                          std::uint32_t q, std::uint32_t nrows) {
  if (cols >= 32) {
    const auto cpr = static_cast<std::uint32_t>(cols >> 5);
    const std::uint32_t row = q / cpr, cir = q - row * cpr;
    return static_cast<std::uint32_t>(words[(r0 + row) * wpr + (cir >> 1)] >> (32 * (cir & 1u)));
  }
  const std::uint32_t per = 32u / static_cast<std::uint32_t>(cols);  // rows per chunk (wpr == 1)
  std::uint32_t bits = 0;
  for (std::uint32_t j = 0; j < per && q * per + j < nrows; ++j)
    bits |= static_cast<std::uint32_t>(words[r0 + q * per + j] & ((std::uint64_t{1} << cols) - 1)) << (j * static_cast<std::uint32_t>(cols));
  return bits;
}

// Split pass for calib_ballot_shape float tensors (packed rows, any 4-byte alignment), one block per
// tile of <= calib_tile_elems entries, table order reversed like calib_split. Warp w owns chunks
// [64 w, 64 w + 64) of the tile (32 entries each), calib_ballot_steps of them in flight (lane l
// loads entry l of each chunk: one coalesced 128-byte load per chunk). Per chunk: two IEEE
// compares with the group's bucket bounds as floats (|x| >= hi: certainly kept; |x| >= lo and not
// kept: candidate) and two ballots; the keep ballot is the chunk's mask bits in order, so no shuffle
// or per-bit work builds the words; lane i of a batch writes chunk i's bits (u32 halves of the mask
// words, whole words for narrow rows), exclusions AND-ed out. A chunk with a candidate (a warp-
// uniform branch) stages the candidates' 16-bit tile offsets in shared memory; at the end one
// global atomic reserves the block's candidate slots and each warp writes its records and adds
// their next digit to the group's histogram (global atomics: ~1% of the entries). Overflow mode
// (candidates beyond the capacity): no words, no records; the bucket's digit-1 histogram is built in
// shared memory and flushed. Out-of-tile lanes read NaN, which passes neither compare.
template <class T>
__device__ __forceinline__ void calib_split_ballot_tile(const calib_params<T>& p) {
  static_assert(sizeof(T) == 4, "calib_split_ballot: float only");
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  constexpr int S = calib_ballot_steps;
  constexpr int warps = calib_block / 32;
  constexpr int wchunks = static_cast<int>(calib_tile_elems / 32 / warps);  // chunks per warp (64)
  static_assert(calib_tile_elems <= 65536 && wchunks % S == 0, "calib_split_ballot: tile layout");
  __shared__ uint2 stage[warps][wchunks];  // per warp: (chunk, candidate bits) of its chunks with candidates
  __shared__ unsigned int sh[radix_bins];
  __shared__ unsigned int sh_cnt[warps], sh_kept[warps];
  __shared__ unsigned long long sh_base;
  calib_allow_next();
  const calib_tile tile = p.tiles[p.num_ballot_tiles - 1 - static_cast<index_t>(blockIdx.x)];
  const calib_tensor_desc<T> td = p.tensors[tile.tensor];
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31u);
  const int cols = static_cast<int>(td.cols);
  const auto nrows = static_cast<std::uint32_t>(tile.row_end - tile.row_begin);
  const std::uint32_t n = nrows * static_cast<std::uint32_t>(cols);  // <= calib_tile_elems
  const float* base = td.data + tile.row_begin * td.cols;
  const std::uint32_t q_begin = static_cast<std::uint32_t>(warp * wchunks);
  const std::uint32_t q_end = std::min<std::uint32_t>((n + 31) / 32, q_begin + wchunks);
  // The warp's whole range (64 lines of 128 bytes) is requested into L2 at once, before waiting for
  // calib_select, so the batches' loads below find it there instead of each waiting for DRAM.
  for (std::uint32_t q = q_begin + static_cast<std::uint32_t>(lane); q < q_end; q += 32)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(base + q * 32) : "memory");
  calib_wait_prior();  // calib_select has narrowed the group states
  const radix_select_state<Key> vs = p.groups[td.group].value;
  const bool compact = calib_compact(p.globals, p.capacity);
  const bool live = vs.k > 0 && vs.pass == 1;
  constexpr int shift0 = calib_vshift(bits, 0), shift1 = calib_vshift(bits, 1);
  const auto dmask = static_cast<Key>(calib_digit_mask<0>(bits, 1));
  // Bucket [lo, hi) of keys: keys >= hi certainly kept. hi is clamped to +Inf's key (the bucket
  // below +Inf ends there; a bucket at or above it exists only with non-finite data, then the masks
  // are unspecified and report() throws).
  const Key lo_key = vs.prefix;
  const Key hi_key = static_cast<Key>(std::min<std::uint64_t>(static_cast<std::uint64_t>(vs.prefix) + (std::uint64_t{1} << shift0),
                                                               magnitude_key<T>::infinity));
  const float nan = __uint_as_float(0x7fc00000u);
  const float lo = live ? __uint_as_float(lo_key) : nan, hi = live ? __uint_as_float(hi_key) : nan;
  if (!compact) {  // block-uniform
    for (int b = threadIdx.x; b < radix_bins; b += blockDim.x) sh[b] = 0;
    __syncthreads();
  }
  std::uint32_t nstaged = 0, kept = 0;  // nstaged: chunks staged by this warp (warp-uniform)
  const unsigned long long once = calib_evict_first_policy(), keep = calib_evict_last_policy();
  for (std::uint32_t q0 = q_begin; q0 < q_end; q0 += S) {
    float x[S];
    if (q0 + S <= q_end && (q0 + S) * 32 <= n) {  // warp-uniform: every chunk whole
#pragma unroll
      for (int s = 0; s < S; ++s) x[s] = calib_load_once(base + (q0 + s) * 32 + lane, once);
    } else {
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const std::uint32_t e = (q0 + s) * 32 + static_cast<std::uint32_t>(lane);
        x[s] = (q0 + s < q_end && e < n) ? calib_load_once(base + e, once) : nan;
      }
    }
    std::uint32_t kb[S], cflag = 0;  // cflag bit s: this lane's entry of chunk q0 + s is a candidate
#pragma unroll
    for (int s = 0; s < S; ++s) kb[s] = calib_ballot_abs_ge_cand(x[s], hi, lo, cflag, s);
    // The batch's chunks with a candidate (warp-uniform, one reduction), each staged as one entry
    // (exclusions and records at the end), in chunk order.
    for (std::uint32_t m = __reduce_or_sync(0xffffffffu, cflag); m != 0; m &= m - 1) {
      const int s = __ffs(static_cast<int>(m)) - 1;
      const std::uint32_t cb = __ballot_sync(0xffffffffu, (cflag >> s) & 1u);
      if (lane == 0) stage[warp][nstaged] = make_uint2(q0 + static_cast<std::uint32_t>(s), cb);
      ++nstaged;
    }
    if (!compact) continue;
    // Lane i takes kb[i] (a select tree: S - 1 selects), then writes chunk q0 + i's mask bits.
#pragma unroll
    for (int level = 1; level < S; level <<= 1) {
      const bool odd = (lane & level) != 0;
#pragma unroll
      for (int k = 0; k < S; k += 2 * level) kb[k] = odd ? kb[k + level] : kb[k];
    }
    const std::uint32_t q = q0 + static_cast<std::uint32_t>(lane);
    if (lane < S && q < q_end) {
      std::uint32_t v = kb[0];
      if (cols >= 32) {
        const auto cpr = static_cast<std::uint32_t>(cols >> 5);
        const std::uint32_t row = cpr == 1 ? q : q / cpr, cir = q - row * cpr;  // (r = 32: no division)
        const index_t w = (tile.row_begin + row) * td.wpr + (cir >> 1);
        if (td.excl != nullptr) v &= ~static_cast<std::uint32_t>(td.excl[w] >> (32 * (cir & 1u)));
        if ((cpr & 1u) != 0 && cir == cpr - 1)
          calib_store_keep(td.out + w, std::uint64_t{v}, keep);  // the row's last word: its upper half is padding (zero)
        else
          calib_store_keep(reinterpret_cast<std::uint32_t*>(td.out + w) + (cir & 1u), v, keep);
        kept += static_cast<std::uint32_t>(__popc(v));
      } else {
        const std::uint32_t per = 32u / static_cast<std::uint32_t>(cols);
        const std::uint32_t cm = (1u << cols) - 1u;
        for (std::uint32_t j = 0; j < per && q * per + j < nrows; ++j) {
          const index_t w = tile.row_begin + q * per + j;  // wpr == 1
          std::uint32_t wv = (v >> (j * static_cast<std::uint32_t>(cols))) & cm;
          if (td.excl != nullptr) wv &= ~static_cast<std::uint32_t>(td.excl[w]);
          calib_store_keep(td.out + w, std::uint64_t{wv}, keep);
          kept += static_cast<std::uint32_t>(__popc(wv));
        }
      }
    }
  }
  __syncwarp();  // lane 0's stage entries
  // Exclusions out of the staged candidate bits (lane j: entries j, j + 32), and the warp's count.
  std::uint32_t wcount = 0;  // candidates of this warp
  for (std::uint32_t j0 = 0; j0 < nstaged; j0 += 32) {
    const std::uint32_t j = j0 + static_cast<std::uint32_t>(lane);
    std::uint32_t c = 0;
    if (j < nstaged) {
      uint2 st = stage[warp][j];
      if (td.excl != nullptr) {
        st.y &= ~calib_chunk_bits(td.excl, td.wpr, cols, tile.row_begin, st.x, nrows);
        stage[warp][j].y = st.y;
      }
      c = static_cast<std::uint32_t>(__popc(st.y));
    }
    wcount += calib_warp_sum(c);
  }
  wcount = __shfl_sync(0xffffffffu, wcount, 0);
  if (!compact) {  // the candidates' next digit into the shared histogram, then into the group's
    for (std::uint32_t j = static_cast<std::uint32_t>(lane); j < nstaged; j += 32) {
      const uint2 st = stage[warp][j];
      for (std::uint32_t m = st.y; m != 0; m &= m - 1) {
        const std::uint32_t e = st.x * 32 + static_cast<std::uint32_t>(__ffs(static_cast<int>(m)) - 1);  // tile offset
        atomicAdd(&sh[(magnitude_bits(__ldg(base + e)) >> shift1) & dmask], 1u);
      }
    }
    __syncthreads();
    calib_flush(sh, radix_bins, p.hist + td.group * calib_max_bins);
    return;
  }
  const unsigned int ws = calib_warp_sum(kept);
  if (lane == 0) {
    sh_cnt[warp] = wcount;
    sh_kept[warp] = ws;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long total = 0, kept_total = 0;
    for (int w = 0; w < warps; ++w) {
      total += sh_cnt[w];
      kept_total += sh_kept[w];
    }
    if (total != 0) sh_base = atomicAdd(&p.globals->cand_count, total);
    if (kept_total != 0) atomicAdd(p.kept + tile.tensor, kept_total);
    if (p.fused & 16)
      p.segments[blockIdx.x] = calib_segment{total != 0 ? sh_base : 0ull, static_cast<unsigned int>(total), static_cast<unsigned int>(tile.tensor)};
  }
  __syncthreads();
  if (wcount == 0) return;
  unsigned long long slot = sh_base;
  for (int w = 0; w < warp; ++w) slot += sh_cnt[w];
  unsigned long long* h = p.hist + td.group * calib_max_bins;
  // Lane l expands staged chunks l, l + 32: its candidates' slots follow the warp's inclusive scan
  // of the candidate counts.
  for (std::uint32_t j0 = 0; j0 < nstaged; j0 += 32) {
    const std::uint32_t j = j0 + static_cast<std::uint32_t>(lane);
    const uint2 st = j < nstaged ? stage[warp][j] : make_uint2(0u, 0u);
    const auto c = static_cast<std::uint32_t>(__popc(st.y));
    std::uint32_t incl = c;
    for (int o = 1; o < 32; o <<= 1) {
      const std::uint32_t t = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += t;
    }
    unsigned long long at = slot + (incl - c);
    for (std::uint32_t m = st.y; m != 0; m &= m - 1) {
      const std::uint32_t e = st.x * 32 + static_cast<std::uint32_t>(__ffs(static_cast<int>(m)) - 1);  // tile offset
      const Key key = magnitude_bits(__ldg(base + e));
      const std::uint32_t row = cols == 32 ? e >> 5 : e / static_cast<std::uint32_t>(cols);
      const std::uint32_t col = e - row * static_cast<std::uint32_t>(cols);
      const index_t bit = ((tile.row_begin + row) * td.wpr + (col >> 6)) * 64 + (col & 63u);
      calib_store_keep(p.cands + at++, calib_candidate<Key>{key, static_cast<std::uint32_t>(tile.tensor), static_cast<std::uint64_t>(bit)},
                       keep);
      calib_red_add(h + ((key >> shift1) & dmask), 1ull);
    }
    slot += __shfl_sync(0xffffffffu, incl, 31);
  }
}
template <class T>
__global__ void __launch_bounds__(calib_block, 5) calib_split_ballot(calib_params<T> p) {
  calib_split_ballot_tile(p);
}

// Histogram of digit `pass` (>= 2 for values, >= 0 for tie positions): Mode 0 of the value keys
// matching the group's prefix, Mode 1 of the tie keys (pos_max - flat bit position) of the
// non-excluded entries equal to tau whose higher tie digits match. Compact mode: over the candidate
// list, global atomics (few entries match); overflow mode: over the full data, tiles grid-strided,
// shared-memory histograms (excluded entries skipped: the select kernel adds their count to bin 0).
template <class T, int Mode>
__device__ __forceinline__ void calib_hist_body(const calib_params<T>& p, int pass) {
  using Key = magnitude_key_t<T>;
  constexpr int bits = magnitude_key<T>::bits;
  if (Mode == 1 && p.globals->ties_live == 0) return;
  const int kbits = Mode == 0 ? bits : p.pos_bits;
  const int shift = calib_shift<Mode>(kbits, pass);
  const std::uint64_t dmask = calib_digit_mask<Mode>(kbits, pass);
  const std::uint64_t pm = calib_prefix_mask<Mode>(kbits, pass);
  if (calib_compact(p.globals, p.capacity)) {
    // calib_cand_unroll candidates per thread in flight: their records, then their descriptors'
    // fields, then their groups' states are loaded together (independent loads; the states and
    // descriptors are read-only here), before any histogram atomic.
    constexpr int U = calib_cand_unroll;
    const index_t n = static_cast<index_t>(p.globals->cand_count);
    const auto B = static_cast<index_t>(blockDim.x);
    const index_t stride = static_cast<index_t>(gridDim.x) * B * U;
    for (index_t i0 = blockIdx.x * B * U + threadIdx.x; i0 < n; i0 += stride) {
      calib_candidate<Key> c[U];
      index_t grp[U], boff[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (i0 + u * B < n) c[u] = p.cands[i0 + u * B];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (i0 + u * B >= n) continue;
        grp[u] = __ldg(&p.tensors[c[u].tensor].group);
        if (Mode == 1) boff[u] = __ldg(&p.tensors[c[u].tensor].bit_offset);
      }
      radix_select_state<Key> vs[U];
      radix_select_state<std::uint64_t> ts[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (i0 + u * B >= n) continue;
        vs[u] = p.groups[grp[u]].value;
        if (Mode == 1) ts[u] = p.groups[grp[u]].tie;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (i0 + u * B >= n) continue;
        if (Mode == 0) {
          if (vs[u].finished() || vs[u].pass != pass) continue;
          if ((static_cast<std::uint64_t>(c[u].key) & pm) == static_cast<std::uint64_t>(vs[u].prefix))
            atomicAdd(p.hist + grp[u] * calib_max_bins + ((static_cast<std::uint64_t>(c[u].key) >> shift) & dmask), 1ull);
        } else {
          if (ts[u].finished() || ts[u].pass != pass || c[u].key != vs[u].prefix) continue;
          const std::uint64_t tk = p.pos_max - (static_cast<std::uint64_t>(boff[u]) + c[u].bit);
          if ((tk & pm) == ts[u].prefix) atomicAdd(p.hist + grp[u] * calib_max_bins + ((tk >> shift) & dmask), 1ull);
        }
      }
    }
    return;
  }
  __shared__ unsigned int sh[radix_bins];
  for (int b = threadIdx.x; b < radix_bins; b += blockDim.x) sh[b] = 0;
  __syncthreads();
  for (index_t t = blockIdx.x; t < p.num_tiles; t += gridDim.x) {
    const calib_tile tile = p.tiles[t];
    const calib_tensor_desc<T> td = p.tensors[tile.tensor];
    const calib_group_state<Key>* gs = p.groups + td.group;
    const radix_select_state<Key> vs = gs->value;
    const radix_select_state<std::uint64_t> ts = gs->tie;
    if (Mode == 0 ? (vs.finished() || vs.pass != pass) : (ts.finished() || ts.pass != pass)) continue;  // uniform
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
template <class T, int Mode>
__global__ void __launch_bounds__(calib_block) calib_hist(calib_params<T> p, int pass) {
  calib_wait_prior();
  calib_allow_next();
  calib_hist_body<T, Mode>(p, pass);
  if (Mode == 0 && (p.fused & 4)) calib_ticket_select<T, radix_bins>(p, pass);
}

template <class T>
__device__ __forceinline__ bool calib_keep_tie(const calib_params<T>& p, const calib_group_state<magnitude_key_t<T>>* gs,
                                               std::uint64_t pos) {
  return !p.exact || (p.pos_max - pos) >= gs->tie.prefix;
}

// atomicOr on a mask word as a global reduction without return (`red.global.or.b64`; atomicOr on a
// pointer loaded from memory, a generic address, compiles to a generic ATOM that returns a
// predicate, with a shared-memory CAS fallback).
__device__ __forceinline__ void calib_red_or(std::uint64_t* p, std::uint64_t v) {
  asm volatile("red.relaxed.gpu.global.or.b64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// calib_finish in compact mode over calib_split_ballot's segments (calib_params::fused bit 4): a
// warp per segment; the segment's tensor descriptor and group state are loaded once, its records
// calib_seg_unroll x 32 at a time (all in flight), kept candidates' bits set by red.global.or;
// kept and tie counts summed over the warp, one atomic each per segment. (Checkpoint 1 measured a
// version writing each mask half-word once with a plain store instead, from the records sorted by
// position: 181 us in all against 177 us with the reductions.)
template <class T>
__device__ __forceinline__ void calib_finish_segments(const calib_params<T>& p) {
  using Key = magnitude_key_t<T>;
  constexpr int U = calib_seg_unroll;
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const index_t warps = static_cast<index_t>(gridDim.x) * (blockDim.x / 32);
  for (index_t sg = blockIdx.x * static_cast<index_t>(blockDim.x / 32) + (threadIdx.x >> 5); sg < p.num_ballot_tiles; sg += warps) {
    const calib_segment seg = p.segments[sg];
    if (seg.count == 0) continue;  // warp-uniform
    const calib_tensor_desc<T>* td = p.tensors + seg.tensor;
    const index_t grp = __ldg(&td->group);
    std::uint64_t* out = td->out;
    const auto boff = static_cast<std::uint64_t>(__ldg(&td->bit_offset));
    const Key tau = p.groups[grp].value.prefix;
    const std::uint64_t tie_prefix = p.groups[grp].tie.prefix;
    unsigned int kept = 0, ties = 0;
    for (unsigned int j0 = 0; j0 < seg.count; j0 += 32 * U) {
      calib_candidate<Key> c[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (j0 + 32 * u + lane < seg.count) c[u] = p.cands[seg.begin + j0 + 32 * u + lane];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (j0 + 32 * u + lane >= seg.count) continue;
        bool keep = c[u].key > tau;
        // exact semantics: a tie is kept when its tie key (pos_max - flat position) reaches the
        // selected tie prefix (calib_keep_tie)
        if (c[u].key == tau && (!p.exact || p.pos_max - (boff + c[u].bit) >= tie_prefix)) {
          keep = true;
          ++ties;
        }
        if (keep) {
          calib_red_or(out + (c[u].bit >> 6), std::uint64_t{1} << (c[u].bit & 63));
          ++kept;
        }
      }
    }
    kept = calib_warp_sum(kept);
    ties = calib_warp_sum(ties);
    if (lane == 0 && kept != 0) atomicAdd(p.kept + seg.tensor, static_cast<unsigned long long>(kept));
    if (lane == 0 && ties != 0) atomicAdd(&p.groups[grp].ties_kept, static_cast<unsigned long long>(ties));
  }
}

// Last kernel. Compact mode: sets the bits of the kept candidates (atomicOr) and adds them to the
// kept counts. Overflow mode: writes every mask word from tau (and the tie cut) over the full data
// and counts the kept entries. Both count the ties kept.
template <class T>
__global__ void __launch_bounds__(calib_block) calib_finish(calib_params<T> p) {
  using Key = magnitude_key_t<T>;
  const int lane = static_cast<int>(threadIdx.x & 31u);
  calib_wait_prior();
  calib_allow_next();
  if (p.globals->nonfinite != 0) {
    // NaN/Inf in the data (calib_select saw them in pass 0's histogram): the masks are unspecified
    // and report() throws; find the smallest flat position of a non-finite value to name it.
    for (index_t t = blockIdx.x; t < p.num_tiles0; t += gridDim.x) {
      const calib_tile tile = p.tiles0[t];
      const calib_tensor_desc<T> td = p.tensors[tile.tensor];
      const index_t ne = (tile.row_end - tile.row_begin) * td.cols;
      for (index_t e = threadIdx.x; e < ne; e += blockDim.x) {
        index_t r = 0, c = 0;
        calib_rc(e, td.cols, tile.row_begin, r, c);
        if (magnitude_bits(td.data[r * td.ld + c]) >= magnitude_key<T>::infinity)
          atomicMin(&p.globals->bad_position, static_cast<unsigned long long>(td.elem_offset + r * td.cols + c));
      }
    }
    return;
  }
  if constexpr (std::is_same_v<T, float>) {  // segments: calib_split_ballot's (float)
    if (calib_compact(p.globals, p.capacity) && (p.fused & 16)) {
      calib_finish_segments(p);
      return;
    }
  }
  if (calib_compact(p.globals, p.capacity)) {
    // calib_cand_unroll candidates per lane in flight (records, then descriptor fields, then group
    // states loaded together; all read-only here) before the atomics.
    constexpr int U = calib_cand_unroll;
    const index_t n = static_cast<index_t>(p.globals->cand_count);
    const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x * U;
    // Warp-uniform loop: every lane runs every iteration (the votes below need the full warp).
    for (index_t i0 = blockIdx.x * static_cast<index_t>(blockDim.x) * U + (threadIdx.x & ~31u) * U; i0 < n; i0 += stride) {
      calib_candidate<Key> c[U];
      std::uint64_t* out[U];
      index_t grp[U], boff[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (i0 + u * 32 + lane < n) c[u] = p.cands[i0 + u * 32 + lane];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (i0 + u * 32 + lane >= n) continue;
        const calib_tensor_desc<T>* td = p.tensors + c[u].tensor;
        grp[u] = __ldg(&td->group);
        out[u] = td->out;
        boff[u] = __ldg(&td->bit_offset);
      }
      Key tau[U];
      std::uint64_t tie_prefix[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (i0 + u * 32 + lane >= n) continue;
        tau[u] = p.groups[grp[u]].value.prefix;
        tie_prefix[u] = p.groups[grp[u]].tie.prefix;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const index_t i = i0 + u * 32 + lane;
        bool keep = false;
        std::uint32_t tensor = 0xffffffffu;
        if (i < n) {
          tensor = c[u].tensor;
          keep = c[u].key > tau[u];
          // exact semantics: a tie is kept when its tie key (pos_max - flat position) reaches the
          // selected tie prefix (calib_keep_tie)
          if (c[u].key == tau[u] && (!p.exact || p.pos_max - (static_cast<std::uint64_t>(boff[u]) + c[u].bit) >= tie_prefix[u])) {
            keep = true;
            atomicAdd(&p.groups[grp[u]].ties_kept, 1ull);
          }
          // (a generic atomicOr: checkpoint 1 measured red.global.or here 2 us slower)
          if (keep) atomicOr(reinterpret_cast<unsigned long long*>(out[u] + (c[u].bit >> 6)), 1ull << (c[u].bit & 63));
        }
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

// Launches kernel<<<grid, block, 0, stream>>>(args...), as a programmatic dependent launch when pdl
// (see calib_wait_prior; an ordinary launch where the attribute is refused).
template <class... Params, class... Args>
void calib_launch_smem(bool pdl, void (*kernel)(Params...), unsigned grid, int block, std::size_t smem, cudaStream_t stream,
                       const Args&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(static_cast<unsigned>(block));
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
  if (pdl && (e == cudaErrorNotSupported || e == cudaErrorInvalidValue)) {
    (void)cudaGetLastError();
    cfg.numAttrs = 0;
    e = cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
  }
  LORI_CUDA_CHECK(e);
}
template <class... Params, class... Args>
void calib_launch(bool pdl, void (*kernel)(Params...), unsigned grid, int block, cudaStream_t stream, const Args&... args) {
  calib_launch_smem(pdl, kernel, grid, block, 0, stream, args...);
}
inline constexpr std::size_t calib_pass0_bulk_smem = 2 * calib_pass0_tile_elems * sizeof(float);  // two tile buffers

}  // namespace detail_calib

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
    std::vector<detail_calib::calib_tile> tiles0;
    std::vector<index_t> first0(tensors_.size(), 0), rows0(tensors_.size(), 1);  // pass 0 tiles of each tensor
    for (std::size_t t = 0; t < tensors_.size(); ++t) {
      const auto& in = tensors_[t];
      detail_calib::calib_tensor_desc<T> d{};
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
      d.ballot = std::is_same_v<T, float> && d.ld == d.cols && detail_calib::calib_ballot_shape(d.cols);
      elem += d.rows * d.cols;
      bit += d.rows * d.wpr * 64;
      descs_.push_back(d);
      if (d.rows * d.cols == 0) continue;
      const index_t rows_per_tile = std::max<index_t>(1, detail_calib::calib_tile_elems / d.cols);
      for (index_t r0 = 0; r0 < d.rows; r0 += rows_per_tile)
        tiles_.push_back({static_cast<index_t>(t), r0, std::min(d.rows, r0 + rows_per_tile)});
      const index_t rows_per_tile0 = std::max<index_t>(1, detail_calib::calib_pass0_tile_elems / d.cols);
      first0[t] = static_cast<index_t>(tiles0.size());
      rows0[t] = rows_per_tile0;
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
    }
    capacity_ = candidate_capacity >= 0 ? candidate_capacity : std::max<index_t>(65536, total_ / 16);
    capacity_ = std::min(capacity_, total_);
    // Workspace layout.
    using G = detail_calib::calib_group_state<key_type>;
    off_tensors_ = 0;
    off_tiles_ = off_tensors_ + detail_calib::calib_align(descs_.size() * sizeof(detail_calib::calib_tensor_desc<T>));
    off_init_ = off_tiles_ + detail_calib::calib_align(static_cast<std::size_t>(nt_ + nt0_) * sizeof(detail_calib::calib_tile));
    off_groups_ = off_init_ + detail_calib::calib_align(group_init_.size() * sizeof(G));
    off_hist_ = off_groups_ + detail_calib::calib_align(group_init_.size() * sizeof(G));
    // Finish segments (calib_params::fused bit 4): float, few groups, every tensor with entries
    // split by calib_split_ballot.
    segments_ = std::is_same_v<T, float> && groups_.count() <= detail_calib::calib_fused_select_groups &&
                std::all_of(descs_.begin(), descs_.end(), [](const detail_calib::calib_tensor_desc<T>& d) { return d.ballot != 0 || d.rows * d.cols == 0; });
    off_globals_ = off_hist_ + detail_calib::calib_align(group_init_.size() * detail_calib::calib_max_bins * sizeof(unsigned long long));
    off_kept_ = off_globals_ + detail_calib::calib_align(sizeof(detail_calib::calib_globals));
    off_segments_ = off_kept_ + detail_calib::calib_align(descs_.size() * sizeof(unsigned long long));
    off_cands_ = off_segments_ + (segments_ ? detail_calib::calib_align(static_cast<std::size_t>(nt_) * sizeof(detail_calib::calib_segment)) : 0);
    bytes_ = off_cands_ + detail_calib::calib_align(static_cast<std::size_t>(capacity_) * sizeof(detail_calib::calib_candidate<key_type>));
    ws_zero_begin_ = off_hist_;  // histograms, globals and kept counts start at zero
    ws_zero_end_ = off_segments_;
    // Pass 0 by bulk copies when every pass-0 tile is a float4 tile without exclusions.
    bulk0_ = std::is_same_v<T, float> && nt0_ > 0 && std::all_of(tiles0.begin(), tiles0.end(), [&](const detail_calib::calib_tile& t) {
               const auto& d = descs_[static_cast<std::size_t>(t.tensor)];
               return d.fast != 0 && d.excl == nullptr;
             });
    // With one group no block ever flushes mid-range: the blocks take interleaved tiles (all read
    // neighbouring memory at the same time, like a copy).
    interleave0_ = bulk0_ && groups_.count() == 1;
    // Grids: pass 0 and the candidate/finishing kernels run persistent blocks, a few per SM.
    int dev = 0, sms = 0, per_sm = 0;
    bool ok = cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess;
    if constexpr (std::is_same_v<T, float>) {
      if (ok && bulk0_)
        ok = cudaFuncSetAttribute(detail_calib::calib_pass0_bulk<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(detail_calib::calib_pass0_bulk_smem)) == cudaSuccess &&
             cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, detail_calib::calib_pass0_bulk<T>, detail_calib::calib_pass0_block,
                                                           detail_calib::calib_pass0_bulk_smem) == cudaSuccess;
    }
    if (ok && !bulk0_) ok = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, detail_calib::calib_pass0<T>, detail_calib::calib_pass0_block, 0) == cudaSuccess;
    if (!ok) {
      (void)cudaGetLastError();  // no device here: run() will report it
      sms = 132;
      per_sm = bulk0_ ? 2 : 4;
    }
    sms = std::max(sms, 1);
    grid_pass0_ = static_cast<unsigned>(std::max<index_t>(1, std::min<index_t>(nt0_, static_cast<index_t>(sms) * std::max(per_sm, 1))));
    grid_small_ = static_cast<unsigned>(std::max<index_t>(1, std::min<index_t>(std::max<index_t>(nt_, capacity_ / detail_calib::calib_block + 1),
                                                                             static_cast<index_t>(sms) * 4)));
    // Split tiles: calib_split_ballot's first (ntb_ of them), then calib_split's, each part in
    // ascending order of when pass 0 read them (its blocks run their contiguous tile ranges in
    // lockstep: tile i of a range is read at step i); the split kernels run their parts backwards,
    // so they start with the data pass 0 read last, still in L2. Any order is correct.
    if (nt0_ > 0) {
      std::vector<index_t> step(static_cast<std::size_t>(nt0_));
      const auto G = static_cast<index_t>(grid_pass0_);
      if (interleave0_) {
        for (index_t i = 0; i < nt0_; ++i) step[static_cast<std::size_t>(i)] = i / G;
      } else {
        for (index_t b = 0; b < G; ++b)
          for (index_t i = b * nt0_ / G; i < (b + 1) * nt0_ / G; ++i) step[static_cast<std::size_t>(i)] = i - b * nt0_ / G;
      }
      std::stable_sort(tiles_.begin(), tiles_.end(), [&](const detail_calib::calib_tile& a, const detail_calib::calib_tile& b) {
        const auto ta = static_cast<std::size_t>(a.tensor), tb = static_cast<std::size_t>(b.tensor);
        const int ba = descs_[ta].ballot, bb = descs_[tb].ballot;
        if (ba != bb) return ba > bb;
        return step[static_cast<std::size_t>(first0[ta] + a.row_begin / rows0[ta])] <
               step[static_cast<std::size_t>(first0[tb] + b.row_begin / rows0[tb])];
      });
    }
    ntb_ = static_cast<index_t>(std::count_if(tiles_.begin(), tiles_.end(), [&](const detail_calib::calib_tile& t) {
      return descs_[static_cast<std::size_t>(t.tensor)].ballot != 0;
    }));
    tiles_.insert(tiles_.end(), tiles0.begin(), tiles0.end());  // one upload: split tiles, then pass 0's
    // Few groups: each value digit's select runs in the last block of the kernel that histograms it
    // (calib_ticket_select), where that kernel is one launch (the split: one kind of tile).
    if (groups_.count() <= detail_calib::calib_fused_select_groups) {
      fused_ = (bulk0_ ? 1 : 0) | 4 | (segments_ ? 16 : 0);
    }
  }

  /// Bytes of device scratch run() needs (256-byte aligned regions).
  std::size_t workspace_bytes() const noexcept { return bytes_; }
  /// Candidate capacity in entries (see the constructor).
  index_t candidate_capacity() const noexcept { return capacity_; }
  /// Number of groups.
  index_t group_count() const noexcept { return groups_.count(); }
  /// Whether run() launches its kernels after the first as programmatic dependent launches (sm_90:
  /// a kernel's blocks start while the one before it finishes, hiding launch gaps; default true,
  /// ordinary launches where the device refuses the attribute). false: each kernel starts after the
  /// previous one has completed (e.g. for tools that serialise kernels anyway). Same results.
  void set_dependent_launch(bool on) noexcept { pdl_ = on; }
  bool dependent_launch() const noexcept { return pdl_; }
  /// Whether run() may fold the select steps into the kernels before them (default true; used with
  /// at most calib_fused_select_groups groups: the last block of a histogramming kernel, found by an
  /// atomic ticket, selects instead of a separate launch). false: separate select launches. Same
  /// results; for measurements and tests of both paths.
  void set_fused_select(bool on) noexcept { fuse_select_ = on; }
  bool fused_select() const noexcept { return fuse_select_ && fused_ != 0; }
  /// With at most two groups of float tensors all split by ballots (1, 2, 4, 8, 16 or 32k columns):
  /// whether calib_finish goes by the split blocks' candidate segments (a warp per segment; default
  /// true) instead of by candidates. Same results; for measurements and tests of both paths.
  void set_finish_segments(bool on) noexcept { segments_on_ = on; }

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
    const auto nt = static_cast<unsigned>(nt_);
    if (nt == 0) return;  // no elements: every mask is empty, report() answers from the plan
    const auto ng = static_cast<unsigned>(groups_.count());
    constexpr int B = detail_calib::calib_block;
    constexpr int passes = radix_passes<T>;
    using Key = key_type;
    using G = detail_calib::calib_group_state<key_type>;
    const int exact = opt_.semantics == mask_semantics::exact ? 1 : 0;
    // 1. reset the state; 2. pass 0 (first full read); 3. select digit 0; 4. split (second full
    // read); 5. select digit 1; 6. remaining digits on the candidates; 7. exact: tie positions;
    // 8. finish (candidate bits, or the full-data write in overflow mode).
    detail_calib::calib_init<Key><<<grid_small_, B, 0, stream>>>(
        reinterpret_cast<G*>(ws + off_groups_), reinterpret_cast<const G*>(ws + off_init_), groups_.count(),
        reinterpret_cast<unsigned long long*>(ws + ws_zero_begin_), static_cast<index_t>((ws_zero_end_ - ws_zero_begin_) / 8),
        static_cast<index_t>((off_globals_ + offsetof(detail_calib::calib_globals, bad_position) - ws_zero_begin_) / 8));
    LORI_CUDA_CHECK_LAUNCH();
    bool pass0_done = false;
    if constexpr (std::is_same_v<T, float>) {
      if (bulk0_) {
        detail_calib::calib_launch_smem(pdl_, detail_calib::calib_pass0_bulk<T>, grid_pass0_, detail_calib::calib_pass0_block, detail_calib::calib_pass0_bulk_smem,
                                  stream, p);
        pass0_done = true;
      }
    }
    if (!pass0_done) detail_calib::calib_launch(pdl_, detail_calib::calib_pass0<T>, grid_pass0_, detail_calib::calib_pass0_block, stream, p);
    if ((p.fused & 1) == 0)
      detail_calib::calib_launch(pdl_, detail_calib::calib_select<Key, 0>, ng, detail_calib::calib_select_block, stream, p.groups, p.hist, p.globals, 0, exact);
    if constexpr (std::is_same_v<T, float>) {
      if (ntb_ > 0) {
        detail_calib::calib_launch(pdl_, detail_calib::calib_split_ballot<T>, static_cast<unsigned>(ntb_), B, stream, p);
      }
    }
    if (nt > static_cast<unsigned>(ntb_)) {
      detail_calib::calib_launch(pdl_, detail_calib::calib_split<T>, nt - static_cast<unsigned>(ntb_), B, stream, p);
    }
    detail_calib::calib_launch(pdl_, detail_calib::calib_select<Key, 0>, ng, detail_calib::calib_select_block, stream, p.groups, p.hist, p.globals, 1, exact);
    for (int pass = 2; pass < passes; ++pass) {
      detail_calib::calib_launch(pdl_, detail_calib::calib_hist<T, 0>, grid_small_, B, stream, p, pass);
      if ((p.fused & 4) == 0)
        detail_calib::calib_launch(pdl_, detail_calib::calib_select<Key, 0>, ng, detail_calib::calib_select_block, stream, p.groups, p.hist, p.globals, pass, exact);
    }
    if (exact) {
      for (int pass = 0; pass < radix_pass_count(pos_bits_); ++pass) {
        detail_calib::calib_launch(pdl_, detail_calib::calib_hist<T, 1>, grid_small_, B, stream, p, pass);
        detail_calib::calib_launch(pdl_, detail_calib::calib_select<Key, 1>, ng, detail_calib::calib_select_block, stream, p.groups, p.hist, p.globals, pass, exact);
      }
    }
    detail_calib::calib_launch(pdl_, detail_calib::calib_finish<T>, grid_small_, B, stream, p);
  }

  /// Waits for `stream`, reads the outcome of the last run() from `workspace`, and returns the same
  /// report lori::calibrate_mask gives. Throws lori::error naming the tensor and index when a value
  /// was NaN or +-Inf (the masks are then unspecified).
  calibration_report report(const void* workspace, cudaStream_t stream) const {
    LORI_CUDA_CHECK(cudaStreamSynchronize(stream));
    const auto* ws = static_cast<const std::byte*>(workspace);
    std::vector<detail_calib::calib_group_state<key_type>> gs(group_init_.size());
    std::vector<unsigned long long> kept(descs_.size());
    detail_calib::calib_globals glob{};
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
  detail_calib::calib_params<T> params(std::byte* ws) const {
    detail_calib::calib_params<T> p{};
    p.tensors = reinterpret_cast<const detail_calib::calib_tensor_desc<T>*>(ws + off_tensors_);
    p.tiles = reinterpret_cast<const detail_calib::calib_tile*>(ws + off_tiles_);
    p.groups = reinterpret_cast<detail_calib::calib_group_state<key_type>*>(ws + off_groups_);
    p.hist = reinterpret_cast<unsigned long long*>(ws + off_hist_);
    p.segments = reinterpret_cast<detail_calib::calib_segment*>(ws + off_segments_);
    p.globals = reinterpret_cast<detail_calib::calib_globals*>(ws + off_globals_);
    p.cands = reinterpret_cast<detail_calib::calib_candidate<key_type>*>(ws + off_cands_);
    p.kept = reinterpret_cast<unsigned long long*>(ws + off_kept_);
    p.capacity = capacity_;
    p.num_tiles = nt_;
    p.num_ballot_tiles = ntb_;
    p.tiles0 = p.tiles + nt_;
    p.num_tiles0 = nt0_;
    p.pass0_interleave = interleave0_ ? 1 : 0;
    p.pos_bits = pos_bits_;
    p.pos_max = (std::uint64_t{1} << pos_bits_) - 1;
    p.exact = opt_.semantics == mask_semantics::exact ? 1 : 0;
    p.num_groups = groups_.count();
    p.fused = fuse_select_ ? fused_ & ~(segments_on_ ? 0 : 16) : 0;
    return p;
  }

  std::vector<device_calibration_tensor<T>> tensors_;
  calibration_options opt_;
  mask_groups groups_;
  std::vector<detail_calib::calib_tensor_desc<T>> descs_;
  std::vector<detail_calib::calib_tile> tiles_;  // nt_ tiles of calib_tile_elems, then nt0_ of calib_pass0_tile_elems
  index_t nt_ = 0, nt0_ = 0, ntb_ = 0;  // split tiles, pass-0 tiles, split tiles of calib_split_ballot
  std::vector<detail_calib::calib_group_state<key_type>> group_init_;
  std::vector<index_t> group_size_;
  index_t total_ = 0;
  index_t capacity_ = 0;
  int pos_bits_ = 1;
  bool pdl_ = true;
  bool fuse_select_ = true;  // set_fused_select
  bool segments_on_ = true;  // set_finish_segments
  int fused_ = 0;            // calib_params::fused when fuse_select_
  bool bulk0_ = false;  // pass 0 by calib_pass0_bulk (every pass-0 tile a float4 tile without exclusions)
  bool interleave0_ = false;  // calib_pass0_bulk's blocks take interleaved tiles (bulk0_ and one group)
  unsigned grid_pass0_ = 1, grid_small_ = 1;
  std::size_t off_tensors_ = 0, off_tiles_ = 0, off_init_ = 0, off_groups_ = 0, off_hist_ = 0, off_globals_ = 0, off_kept_ = 0,
              off_segments_ = 0, off_cands_ = 0;
  bool segments_ = false;  // the workspace holds finish segments (see calib_params::fused bit 4)
  std::size_t bytes_ = 0, ws_zero_begin_ = 0, ws_zero_end_ = 0;
};

}  // namespace lori::cuda

#endif  // LORI_CUDA_CALIBRATE_CUH
