// bench/random/projection_main.cuh - GENERATED for the benchmark only: main's lori/cuda/projection.cuh before
// session 4 (git show fd824ba:include/lori/cuda/projection.cuh), moved to namespace lori::cuda_main, so that
// BM_gpu_generate_llama3_8b_r32_main measures the previous kernel in the same process. Not a library header.
//
// Generates exactly the matrices of lori/random/projection.hpp (same bits as the CPU, element for
// element; see lori/random/distributions.hpp for the word layout and formulas) into caller-provided
// device memory, stream-ordered, without allocating:
//
//   generate_projection(out, seed, stream, spec, cuda_stream)       one matrix (one kernel launch)
//   projection_batch_workspace_bytes(count)                          workspace for a batch
//   prepare_projection_batch(tasks, count, ws, ws_bytes, s) -> plan  upload a batch description once
//   generate_projection_batch(plan, s)                               all matrices in ONE launch
//   generate_projection_batch(tasks, count, ws, ws_bytes, s)         prepare + generate
//
// Element types: float, double (exact widening of the float values), lori::bfloat16 and lori::half
// (float values rounded to nearest even with lori::float_to_bf16_bits / float_to_half_bits).
// Orthonormalised rows (projection_spec::orthonormal_rows) are CPU-only and rejected here.
//
// Kernel: each thread produces units of 16 bytes (4 floats from one Philox call; 8 bf16/fp16 from two;
// 4 doubles as two 16-byte stores) written with vector stores when the row start is 16-byte aligned
// (pointer aligned and ld a multiple of the unit), element stores otherwise and at row ends.
// One launch of at most one wave of resident blocks: the units of all tasks (concatenated, row-major)
// are split into equal contiguous ranges, one per block; a block walks its range task by task, its
// thread x taking units x, x + 256, ... of each piece (block-uniform control flow: the task's Philox
// key schedule, precomputed on the host, stays in uniform registers).
// Gaussian tasks (ziggurat, lori/detail/random_ziggurat.hpp) read the layer table from shared memory;
// the ~1.5% slow-path elements are deferred to a per-warp queue (ballot + popc appends), which the
// whole warp works off 32 entries at a time whenever 32 wait: no block barrier (see
// projection_piece_gaussian). Launches without a gaussian task use a kernel variant without that code.
#ifndef LORI_BENCH_PROJECTION_MAIN_CUH
#define LORI_BENCH_PROJECTION_MAIN_CUH

#include "lori/config.hpp"
#include "lori/core/float16.hpp"
#include "lori/core/matrix_view.hpp"
#include "lori/error.hpp"
#include "lori/random/distributions.hpp"
#include "lori/random/philox.hpp"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace lori::cuda_main {

/// One matrix of a batch: out (device memory) is rows x cols, row-major with leading dimension ld
/// (ld >= cols), filled with the projection (seed, stream, params). Build with make_projection_task.
template <class T>
struct projection_task {
  T* out = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t ld = 0;
  std::uint64_t seed = 0;
  std::uint64_t stream = 0;
  projection_params params{};
};

/// A validated task for out = A (rows x cols, leading dimension ld; ld < 0 means cols) of the projection
/// (seed, stream, spec). Throws lori::error on an invalid spec (see make_projection_params), a spec with
/// orthonormal_rows (CPU only), negative shapes, ld < cols, cols >= 2^31 (GPU limit) or a null out
/// for a non-empty matrix.
template <class T>
projection_task<T> make_projection_task(T* out, index_t rows, index_t cols, std::uint64_t seed, std::uint64_t stream,
                                        const projection_spec& spec, index_t ld = -1);

/// Bytes of device workspace that a batch of `count` tasks needs (a copy of the task list and a prefix
/// sum of unit counts). O(1).
inline std::size_t projection_batch_workspace_bytes(index_t count);

/// A batch uploaded by prepare_projection_batch: valid while its workspace is, reusable for any number
/// of generate_projection_batch calls (each regenerates the same matrices).
template <class T>
struct projection_batch_plan {
  const void* workspace = nullptr;
  index_t count = 0;
  index_t blocks = 0;  ///< thread blocks of the one launch (at most one wave of resident blocks)
  bool has_gaussian = false;  ///< some task is gaussian (selects the kernel variant)
  index_t units = 0;          ///< 16-byte units of all tasks (last: keeps the earlier members' order)
};

/// Validates `count` host-side tasks and copies the batch description into `workspace` (device memory of
/// at least projection_batch_workspace_bytes(count) bytes, 16-byte aligned) on `stream`. The copy is
/// from pageable memory, so this call synchronises `stream` first (do it once, e.g. at model load).
/// The output ranges of different tasks must not overlap. The launch grid (one wave of co-resident
/// blocks) is sized for the current device: use the plan on that device. Throws lori::error on invalid
/// tasks, a null or too small workspace, or a failing CUDA call.
template <class T>
projection_batch_plan<T> prepare_projection_batch(const projection_task<T>* tasks, index_t count, void* workspace,
                                                  std::size_t workspace_bytes, cudaStream_t stream = nullptr);

/// Generates every matrix of the prepared batch with one kernel launch on `stream` (asynchronous).
template <class T>
void generate_projection_batch(const projection_batch_plan<T>& plan, cudaStream_t stream = nullptr);

/// prepare_projection_batch + generate_projection_batch.
template <class T>
void generate_projection_batch(const projection_task<T>* tasks, index_t count, void* workspace, std::size_t workspace_bytes,
                               cudaStream_t stream = nullptr);

/// Fills `out` (device memory, row-major, any leading dimension) with the projection (seed, stream, spec):
/// out(i, j) = A(i, j), bit-identical to lori::generate_projection on the CPU. One launch on
/// `cuda_stream`, asynchronous, no allocation. Throws lori::error as make_projection_task.
template <class T>
void generate_projection(row_major_view<T> out, std::uint64_t seed, std::uint64_t stream, const projection_spec& spec,
                         cudaStream_t cuda_stream = nullptr);

// =====================================================================================================
// Implementation
// =====================================================================================================
namespace detail {

template <class T>
struct projection_traits;
template <>
struct projection_traits<float> {
  static constexpr int unit = 4;  // elements per 16-byte unit
};
template <>
struct projection_traits<double> {
  static constexpr int unit = 4;  // 32 bytes: two 16-byte stores
};
template <>
struct projection_traits<bfloat16> {
  static constexpr int unit = 8;
};
template <>
struct projection_traits<half> {
  static constexpr int unit = 8;
};

constexpr int projection_threads = 256;
constexpr int projection_warps = projection_threads / 32;

/// What a kernel needs about one matrix (trivially copyable).
template <class T>
struct projection_entry {
  T* out;
  index_t rows;
  index_t cols;
  index_t ld;
  std::uint32_t upr;  ///< units per row = ceil(cols / unit)
  std::uint32_t vec_ok;
  std::uint32_t key0, key1, stream0, stream1;
  projection_params params;
  index_t row_skip;          ///< ld - upr * unit: from the end of a row's last unit to the next row
  std::uint32_t full_units;  ///< cols / unit: units without a row end inside
  lori::detail::philox_round_keys rk;  ///< key schedule of (key0, key1)
};

template <class T>
struct alignas(16) projection_entry_storage {
  projection_entry<T> e;
};

LORI_DEVICE LORI_FORCEINLINE std::uint32_t pack_pair(std::uint16_t lo, std::uint16_t hi) {
  return static_cast<std::uint32_t>(lo) | (static_cast<std::uint32_t>(hi) << 16);
}

template <class T>
LORI_DEVICE LORI_FORCEINLINE std::uint16_t narrow16(float x) {
  if constexpr (std::is_same_v<T, bfloat16>) {
    return float_to_bf16_bits(x);
  } else {
    return float_to_half_bits(x);
  }
}

/// One element value converted to T (the single-element store of the gaussian's deferred slow path).
template <class T>
LORI_DEVICE LORI_FORCEINLINE T from_float(float x) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return static_cast<T>(x);
  } else {
    return T::from_bits(narrow16<T>(x));
  }
}

/// Lane mask of the lanes below this one.
LORI_DEVICE LORI_FORCEINLINE unsigned lanemask_lt() {
  unsigned m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

/// A thread's position in a piece: unit c of row i, stored at dst. Moved on by one block step
/// (projection_threads units) at a time; 0 <= c < upr.
template <class T>
struct unit_cursor {
  std::uint32_t i;
  std::uint32_t c;
  T* dst;
};

/// Address of unit c of row i.
template <class T>
LORI_DEVICE LORI_FORCEINLINE T* unit_address(const projection_entry<T>& e, std::uint32_t i, std::uint32_t c) {
  constexpr int U = projection_traits<T>::unit;
  return e.out + (static_cast<index_t>(i) * e.ld + static_cast<index_t>(c) * U);
}

/// The cursor of unit `rel` (64-bit division only when rel >= 2^32; once per piece).
template <class T>
LORI_DEVICE LORI_FORCEINLINE unit_cursor<T> cursor_at(const projection_entry<T>& e, index_t rel) {
  unit_cursor<T> p;
  const auto r = static_cast<std::uint64_t>(rel);
  if (r < (std::uint64_t{1} << 32)) {
    const auto r32 = static_cast<std::uint32_t>(r);
    p.i = r32 / e.upr;
    p.c = r32 - p.i * e.upr;
  } else {
    const std::uint64_t q = r / e.upr;
    p.i = static_cast<std::uint32_t>(q);
    p.c = static_cast<std::uint32_t>(r - q * e.upr);
  }
  p.dst = unit_address(e, p.i, p.c);
  return p;
}

/// Moves p on by projection_threads units.
template <class T>
LORI_DEVICE LORI_FORCEINLINE void advance_step(const projection_entry<T>& e, unit_cursor<T>& p) {
  constexpr int U = projection_traits<T>::unit;
  constexpr auto step = static_cast<std::uint32_t>(projection_threads);
  p.c += step;
  if (e.upr >= step) {  // at most one row end per step
    p.dst += index_t{projection_threads} * U;
    if (p.c >= e.upr) {
      p.c -= e.upr;
      ++p.i;
      p.dst += e.row_skip;
    }
  } else {
    p.i += p.c / e.upr;
    p.c %= e.upr;
    p.dst = unit_address(e, p.i, p.c);
  }
}

/// Stores the U values of the cursor's unit (elements c*U .. c*U + U - 1 of the row, clipped at cols):
/// one 16-byte vector store (two for double) when the unit is whole (c < full_units) and the rows are
/// 16-byte aligned.
template <class T, int U>
LORI_DEVICE LORI_FORCEINLINE void store_unit_at(const projection_entry<T>& e, const unit_cursor<T>& p, const float (&v)[U]) {
  const bool vector = e.vec_ok != 0u && p.c < e.full_units;
  T* dst = p.dst;
  if constexpr (U == 4) {
    if (vector) {
      if constexpr (std::is_same_v<T, float>) {
        *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
        reinterpret_cast<double2*>(dst)[0] = make_double2(v[0], v[1]);
        reinterpret_cast<double2*>(dst)[1] = make_double2(v[2], v[3]);
      }
    } else {
      const index_t j0 = static_cast<index_t>(p.c) * U;
      for (int t = 0; t < 4; ++t)
        if (j0 + t < e.cols) dst[t] = static_cast<T>(v[t]);
    }
  } else {
    std::uint16_t h[8];
    for (int t = 0; t < 8; ++t) h[t] = narrow16<T>(v[t]);
    if (vector) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(pack_pair(h[0], h[1]), pack_pair(h[2], h[3]), pack_pair(h[4], h[5]), pack_pair(h[6], h[7]));
    } else {
      const index_t j0 = static_cast<index_t>(p.c) * U;
      for (int t = 0; t < 8; ++t)
        if (j0 + t < e.cols) dst[t] = T::from_bits(h[t]);
    }
  }
}

/// Units [r0, r1) of matrix e (row-major unit order) for a non-gaussian law D, by the block: thread x
/// takes units r0 + x, r0 + x + 256, ... (each warp instruction stores 32 consecutive 16-byte units).
template <distribution D, class T>
LORI_DEVICE LORI_FORCEINLINE void projection_piece(const projection_entry<T>& e, index_t r0, index_t r1) {
  constexpr int U = projection_traits<T>::unit;
  const unsigned x = threadIdx.x;
  projection_params params = e.params;
  params.kind = D;  // compile-time distribution: the switch in projection_values_simple folds away
  unit_cursor<T> p = cursor_at(e, r0 + x);
  for (index_t left = r1 - r0; left > 0; left -= projection_threads) {
    if (left >= index_t{projection_threads} || x < static_cast<unsigned>(left)) {
      float v[U];
#pragma unroll
      for (int h = 0; h < U / 4; ++h) {
        const std::uint32_t q = static_cast<std::uint32_t>(U / 4) * p.c + static_cast<std::uint32_t>(h);
        const philox_block b = lori::detail::philox4x32_10_scheduled(q, p.i, e.stream0, e.stream1, e.rk);
        const float4_values y = projection_values_simple(params, b);
#pragma unroll
        for (int t = 0; t < 4; ++t) v[4 * h + t] = y.v[t];
      }
      store_unit_at<T, U>(e, p, v);
    }
    advance_step(e, p);
  }
}

/// The layer table of the block's gaussian path, scaled by the sigma of the block's current task:
/// {k_L, bits(rnd(W_L * sigma))}. (Eight interleaved copies, against bank conflicts of the random
/// look-ups, measured slower at checkpoint 2: 88.1 against 85.3 us, H200.)
LORI_DEVICE LORI_FORCEINLINE uint2* gaussian_table() {
  __shared__ uint2 table[lori::detail::zig_layers_count];
  return table;
}

/// Per-warp queue of slow-path work, a ring buffer worked off in FIFO order (so that an element's fix-up
/// follows its placeholder store soon, while the line is likely still in L2). An entry is one Philox
/// block (4 consecutive elements of a row) with at least one element that failed the fast test: its
/// four words and meta = {row i, counter q, pos, 0} (its elements are j = 4q .. 4q + 3). Its pending
/// elements are recomputed from the words: a finished element's word is zeroed (a zero word passes
/// the fast test: layer 0, m = 1 < k_0); the lowest pending element may be in progress, its word then
/// being its current slow-path candidate and pos its slow words consumed (detail::zig_slow_state).
template <int U>
struct gaussian_warp_queue {
  /// At most 31 entries wait between steps (passes run while >= pass_at <= 32 wait); a step appends
  /// at most 32 per Philox block of its unit: < 32 + 32 * (U / 4) entries, a power of two.
  static constexpr unsigned capacity = 64u * (U / 4);
  static constexpr unsigned mask = capacity - 1u;
  struct alignas(32) entry {
    uint4 words;
    uint4 meta;
  };
  entry e[capacity];
};

/// The warp's queue state (warp-uniform values): entries [head, head + count) modulo the capacity.
struct gaussian_queue_state {
  unsigned head;
  unsigned count;
};

/// This warp's queue (one per warp of the block).
template <int U>
LORI_DEVICE LORI_FORCEINLINE gaussian_warp_queue<U>& gaussian_queue() {
  __shared__ gaussian_warp_queue<U> q[projection_warps];
  return q[threadIdx.x >> 5];
}

/// Word t of a uint4 (t warp-divergent: selects, no local memory).
LORI_DEVICE LORI_FORCEINLINE std::uint32_t word_of(const uint4& w, int t) { return t == 0 ? w.x : (t == 1 ? w.y : (t == 2 ? w.z : w.w)); }

/// w with word t replaced by x.
LORI_DEVICE LORI_FORCEINLINE void set_word(uint4& w, int t, std::uint32_t x) {
  w.x = t == 0 ? x : w.x;
  w.y = t == 1 ? x : w.y;
  w.z = t == 2 ? x : w.z;
  w.w = t == 3 ? x : w.w;
}

/// One pass over the oldest n <= 32 entries of the warp's queue: lane l < n takes entry head + l and
/// runs ONE attempt (detail::gaussian_slow_attempt) of its lowest pending element: finished, the value
/// is stored over the placeholder and the word zeroed; not finished (~0.7%), the word becomes the new
/// candidate and pos the words consumed. An entry with pending elements goes back to the queue. So a
/// pass costs one attempt per lane, not the most attempts any lane needs; every pass consumes a slow
/// word or finishes an element or drops an entry, so repeated passes terminate. The first __syncwarp
/// orders the appends and placeholder stores of all lanes before the reads and the overwrites, the
/// second keeps the reads before any later append to those slots.
template <class T, int U>
LORI_DEVICE LORI_FORCEINLINE void gaussian_queue_pass(const projection_entry<T>& e, const uint2* table, gaussian_warp_queue<U>& qu,
                                                      gaussian_queue_state& qs, unsigned n, unsigned lane, unsigned lt) {
  using queue = gaussian_warp_queue<U>;
  __syncwarp();
  uint4 w = make_uint4(0u, 0u, 0u, 0u);
  uint4 meta = make_uint4(0u, 0u, 0u, 0u);
  if (lane < n) {
    const unsigned slot = (qs.head + lane) & queue::mask;
    w = qu.e[slot].words;
    meta = qu.e[slot].meta;
  }
  __syncwarp();
  qs.head = (qs.head + n) & queue::mask;
  qs.count -= n;
  const std::uint64_t j0 = static_cast<std::uint64_t>(meta.y) * 4u;
  const auto cols = static_cast<std::uint64_t>(e.cols);
  unsigned pending = 0;
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const std::uint32_t y = word_of(w, t);
    if (lori::detail::zig_mbits(y) >= table[y & 0xffu].x && j0 + static_cast<std::uint64_t>(t) < cols) pending |= 1u << t;
  }
  if (pending != 0u) {
    const int t = __ffs(static_cast<int>(pending)) - 1;
    const std::uint32_t i = meta.x;
    const std::uint64_t j = j0 + static_cast<std::uint64_t>(t);
    // Slow blocks 0 and 1 of (i, j): lori::detail::zig_slow_block, with the precomputed key schedule.
    const std::uint32_t c0 = 0x80000000u | meta.y, c1 = (static_cast<std::uint32_t>(t) << 30) | i;
    const philox_block b0 = lori::detail::philox4x32_10_scheduled(c0, c1, e.stream0, e.stream1, e.rk);
    philox_block b1{};
    bool have_b1 = false;
    auto word = [&](int k) -> std::uint32_t {
      if (k < 4) return lori::detail::block_word(b0, k);
      if (!have_b1) {
        b1 = lori::detail::philox4x32_10_scheduled(c0 | 0x40000000u, c1, e.stream0, e.stream1, e.rk);
        have_b1 = true;
      }
      return lori::detail::block_word(b1, k - 4);
    };
    lori::detail::zig_slow_state st{word_of(w, t), static_cast<int>(meta.z)};
    float x = 0.0f;
    if (lori::detail::gaussian_slow_attempt(st, e.params.scale, word, x)) {
      e.out[static_cast<index_t>(i) * e.ld + static_cast<index_t>(j)] = from_float<T>(x);
      set_word(w, t, 0u);
      meta.z = 0u;
      pending &= pending - 1u;
    } else {
      set_word(w, t, st.w);  // still pending: st.w failed the fast test
      meta.z = static_cast<std::uint32_t>(st.pos);
    }
  }
  const bool again = pending != 0u;
  const unsigned back = __ballot_sync(0xffffffffu, again);
  if (again) {
    const unsigned slot = (qs.head + qs.count + static_cast<unsigned>(__popc(back & lt))) & queue::mask;
    qu.e[slot].words = w;
    qu.e[slot].meta = meta;
  }
  qs.count += static_cast<unsigned>(__popc(back));
}

/// Units [r0, r1) of gaussian matrix e by the block (thread x: units r0 + x, r0 + x + 256, ...); see
/// lori/detail/random_ziggurat.hpp for the element formula. Every element takes the fast path from the
/// block's table (a placeholder where the fast test fails); each Philox block with a failing element
/// is appended to the warp's queue (ballot + popc), and whenever pass_at (32; tests also use fewer)
/// entries wait, the whole warp finishes up to 32 of them at once (gaussian_queue_pass,
/// after the unit's stores); the rest is finished at the end of the piece. Warps never wait for each
/// other, except for two block barriers when the table is rescaled for a new sigma (block-uniform:
/// pieces are block-uniform).
/// table_sigma: the sigma the table holds (0: not filled yet; sigma > 0 always).
template <class T>
LORI_DEVICE LORI_FORCEINLINE void projection_piece_gaussian(const projection_entry<T>& e, index_t r0, index_t r1, unsigned lt,
                                                            unsigned pass_at, float& table_sigma) {
  constexpr int U = projection_traits<T>::unit;
  using queue = gaussian_warp_queue<U>;
  const unsigned x = threadIdx.x, lane = x & 31u;
  uint2* table = gaussian_table();
  queue& qu = gaussian_queue<U>();
  const float sigma = e.params.scale;
  static_assert(projection_threads == lori::detail::zig_layers_count, "one table entry per thread");
  if (sigma != table_sigma) {
    __syncthreads();  // every warp is done with the previous table (queues are empty between pieces)
    const lori::detail::zig_layer z = lori::detail::zig_layers()[x];
    table[x] = make_uint2(z.k, float_bits(lori::detail::rnd_mul(z.w, sigma)));
    __syncthreads();
    table_sigma = sigma;
  }
  gaussian_queue_state qs{0u, 0u};
  unit_cursor<T> p = cursor_at(e, r0 + x);
  // A block-uniform loop and body (every warp runs every step; lanes beyond the piece are inactive):
  // a warp-divergent region around the ballots below makes the compiler drop the task's keys from
  // uniform registers (then it spills and recomputes the key schedule per unit). (Two units per
  // thread and step measured slower at checkpoint 2: 93.8 against 85.3 us, H200.)
  for (index_t left = r1 - r0; left > 0; left -= projection_threads) {
    // x < left, with the 64-bit part uniform (left >= 256 in every step but the last).
    const bool active = left >= index_t{projection_threads} || x < static_cast<unsigned>(left);
    float v[U];
#pragma unroll
    for (int h = 0; h < U / 4; ++h) {
      const std::uint32_t q = static_cast<std::uint32_t>(U / 4) * p.c + static_cast<std::uint32_t>(h);
      const philox_block b = lori::detail::philox4x32_10_scheduled(q, p.i, e.stream0, e.stream1, e.rk);
      bool slow = false;
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const std::uint32_t w = b.v[t];
        const uint2 z = table[w & 0xffu];
        v[4 * h + t] = lori::detail::zig_value(w, bits_float(z.y));
        slow = slow || lori::detail::zig_mbits(w) >= z.x;
      }
      slow = slow && active;
      const unsigned ballot = __ballot_sync(0xffffffffu, slow);
      if (slow) {
        const unsigned slot = (qs.head + qs.count + static_cast<unsigned>(__popc(ballot & lt))) & queue::mask;
        qu.e[slot].words = make_uint4(b.v[0], b.v[1], b.v[2], b.v[3]);
        qu.e[slot].meta = make_uint4(p.i, q, 0u, 0u);
      }
      qs.count += static_cast<unsigned>(__popc(ballot));
    }
    if (active) store_unit_at<T, U>(e, p, v);
    while (qs.count >= pass_at) gaussian_queue_pass(e, table, qu, qs, qs.count < 32u ? qs.count : 32u, lane, lt);
    advance_step(e, p);
  }
  while (qs.count != 0u) gaussian_queue_pass(e, table, qu, qs, qs.count < 32u ? qs.count : 32u, lane, lt);
}

/// Units [r0, r1) of matrix e by the block, any law. WithGaussian: the kernel variant with the gaussian
/// path (shared memory, more registers); the host launches the variant without it when no task of the
/// launch is gaussian.
template <bool WithGaussian, class T>
LORI_DEVICE LORI_FORCEINLINE void projection_piece_dispatch(const projection_entry<T>& e, index_t r0, index_t r1, unsigned lt, unsigned pass_at,
                                                            float& table_sigma) {
  switch (e.params.kind) {
    case distribution::kaiming_uniform: projection_piece<distribution::kaiming_uniform>(e, r0, r1); break;
    case distribution::gaussian:
      if constexpr (WithGaussian) projection_piece_gaussian(e, r0, r1, lt, pass_at, table_sigma);
      break;
    case distribution::rademacher: projection_piece<distribution::rademacher>(e, r0, r1); break;
    case distribution::sparse: projection_piece<distribution::sparse>(e, r0, r1); break;
  }
}

/// The tasks of a batch launch: entries and unit prefix sums (starts[t] = first unit of task t,
/// starts[count] = all units) in the caller's workspace.
template <class T>
struct projection_batch_source {
  const projection_entry_storage<T>* entries;
  const index_t* starts;
  index_t count;
  LORI_DEVICE LORI_FORCEINLINE index_t start(index_t t) const { return starts[t]; }
  LORI_DEVICE LORI_FORCEINLINE projection_entry<T> entry(index_t t) const { return entries[t].e; }
  /// The task that holds unit u < starts[count]: the last t with starts[t] <= u (tasks without units
  /// have equal starts and are skipped). A 32-ary search by the whole warp (2 dependent loads for 224
  /// tasks): invariant starts[lo] <= u (starts[0] = 0) and the answer is < hi; the starts are
  /// non-decreasing, so the probes that pass form a prefix and the last one narrows the range 32-fold.
  LORI_DEVICE LORI_FORCEINLINE projection_batch_source<T> source() const { return *this; }
  LORI_DEVICE LORI_FORCEINLINE index_t find(index_t u, unsigned lane) const {
    index_t lo = 0, hi = count;
    while (hi - lo > 1) {
      const index_t step = (hi - lo + 31) / 32;
      const index_t p = lo + static_cast<index_t>(lane) * step;
      const bool ok = p < hi && starts[p] <= u;
      const unsigned passed = __ballot_sync(0xffffffffu, ok);  // bit 0 (p = lo) is always set
      const auto last = static_cast<index_t>(31 - __clz(static_cast<int>(passed)));
      const index_t end = lo + (last + 1) * step;
      lo += last * step;
      hi = end < hi ? end : hi;
    }
    return lo;
  }
};

/// One matrix (generate_projection): the entry and its unit range travel as a kernel parameter and are
/// read in place through pointers (the parameter is __grid_constant__), exactly like a batch of one
/// task in a workspace. (Using the parameter's fields directly made the compiler keep a local copy of
/// the entry and spill in the generation loop: 150 us instead of 85 us for the gaussian, H200.)
template <class T>
struct projection_single_source {
  projection_entry_storage<T> entry;
  index_t starts[2];
  LORI_DEVICE LORI_FORCEINLINE projection_batch_source<T> source() const { return projection_batch_source<T>{&entry, starts, 1}; }
};

// Minimum blocks per SM (caps registers): 8 (all 2048 threads) without the gaussian path, 6 with it
// (40 registers, no spills), 5 for the single-matrix launch (48 registers: at 40 its loop spilled, 114
// against 89 us batched for the same element count on the H100 at checkpoint 3; 4 instead of 6 blocks
// per SM measured the same time for the batch at checkpoint 2).
template <bool WithGaussian, bool Single>
constexpr int projection_min_blocks = WithGaussian ? (Single ? 5 : 6) : 8;

/// How a launch's units are split over its blocks: ceil(units / 32) groups of 32 units; block B takes
/// per_block groups, one more if B < extra (no division on the device). pass_at (1..32): queue length
/// at which a warp works off its gaussian slow-path queue (32 in the library).
struct projection_split {
  index_t units;
  index_t per_block;
  index_t extra;
  unsigned pass_at;
};

inline projection_split make_projection_split(index_t units, index_t blocks, unsigned pass_at = 32) {
  const index_t groups = (units + 31) / 32;
  return projection_split{units, groups / blocks, groups % blocks, pass_at};
}

/// The generation kernel: a grid of at most one wave of resident blocks; the launch's units (all tasks
/// concatenated, each task in row-major unit order) are split into equal contiguous ranges of whole
/// 32-unit groups, one per block. Each block walks its range task by task (pieces); all of this is
/// block-uniform (the task's keys and shape stay in uniform registers). Within a piece, thread x
/// takes units x, x + 256, ...; after the first task search (one barrier) the warps never wait for
/// each other.
template <class T, bool WithGaussian, class Source>
__global__ void __launch_bounds__(projection_threads, projection_min_blocks<WithGaussian, std::is_same_v<Source, projection_single_source<T>>>)
    projection_kernel(const __grid_constant__ Source param, projection_split split) {
  const auto src = param.source();
  const auto block = static_cast<index_t>(blockIdx.x);
  const index_t g0 = block * split.per_block + (block < split.extra ? block : split.extra);
  const index_t g1 = g0 + split.per_block + (block < split.extra ? 1 : 0);
  const index_t a = g0 * 32;
  const index_t b = g1 * 32 < split.units ? g1 * 32 : split.units;
  if (a >= b) return;
  // The first task, found by warp 0 and read back from shared memory (so that the compiler sees it,
  // and everything derived from it, as uniform: the task's keys and shape in uniform registers).
  __shared__ index_t first_task_s;
  if (threadIdx.x < 32) {
    const index_t found = src.find(a, threadIdx.x);
    if (threadIdx.x == 0) first_task_s = found;
  }
  __syncthreads();
  index_t t = first_task_s;
  const unsigned lt = lanemask_lt();
  float table_sigma = 0.0f;  // sigma of the block's gaussian table (0: not filled; sigma > 0 always)
  index_t u = a;
  for (;;) {
    const index_t end_t = src.start(t + 1);
    if (end_t > u) {
      const index_t s = src.start(t);
      const index_t end = end_t < b ? end_t : b;
      projection_piece_dispatch<WithGaussian>(src.entry(t), u - s, end - s, lt, split.pass_at, table_sigma);
      u = end;
      if (u >= b) break;
    }
    ++t;
  }
}

/// Blocks of a launch over `units` units: one wave of resident blocks at most (and about 4 units per
/// thread at least). The kernel is configured for the largest shared-memory carve-out first (the
/// gaussian variant holds 18-35 KB per block).
template <class Kernel>
index_t projection_grid(Kernel kernel, index_t units) {
  int device = 0, sms = 0, per_sm = 0;
  LORI_CUDA_CHECK(cudaGetDevice(&device));
  LORI_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  LORI_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  LORI_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, projection_threads, 0));
  const index_t resident = static_cast<index_t>(sms > 0 ? sms : 1) * static_cast<index_t>(per_sm > 0 ? per_sm : 1);
  const index_t wanted = (units + 4 * projection_threads - 1) / (4 * projection_threads);
  return wanted < resident ? wanted : resident;
}

template <class T>
projection_entry<T> make_entry(const projection_task<T>& task) {
  constexpr int U = projection_traits<T>::unit;
  projection_entry<T> e{};
  e.out = task.out;
  e.rows = task.rows;
  e.cols = task.cols;
  e.ld = task.ld;
  e.upr = static_cast<std::uint32_t>((task.cols + U - 1) / U);
  e.vec_ok = (reinterpret_cast<std::uintptr_t>(task.out) % 16 == 0 && task.ld % U == 0) ? 1u : 0u;
  const counter_rng g(task.seed, task.stream);
  e.key0 = g.key0;
  e.key1 = g.key1;
  e.stream0 = g.stream0;
  e.stream1 = g.stream1;
  e.params = task.params;
  e.row_skip = task.ld - static_cast<index_t>(e.upr) * U;
  e.full_units = static_cast<std::uint32_t>(task.cols / U);
  e.rk = lori::detail::philox_key_schedule(g.key0, g.key1);
  return e;
}

template <class T>
void validate_task(const projection_task<T>& t) {
  LORI_EXPECTS(t.rows >= 0 && t.cols >= 0, "projection (cuda): rows and cols must be >= 0");
  LORI_EXPECTS(t.cols < (index_t{1} << 31) && t.rows <= (index_t{1} << 32), "projection (cuda): needs cols < 2^31 and rows <= 2^32");
  LORI_EXPECTS(t.ld >= t.cols, "projection (cuda): leading dimension smaller than cols");
  LORI_EXPECTS(t.out != nullptr || t.rows == 0 || t.cols == 0, "projection (cuda): null output for a non-empty matrix");
  const projection_params& p = t.params;
  LORI_EXPECTS(static_cast<std::uint32_t>(p.kind) <= 3u, "projection (cuda): unknown distribution");
  LORI_EXPECTS(p.scale > 0.0f && p.scale <= 3.4e38f, "projection (cuda): params.scale must be finite and > 0 (use make_projection_params)");
  LORI_EXPECTS(p.kind != distribution::sparse || (p.threshold >= 1 && p.threshold <= (std::uint64_t{1} << 31)),
               "projection (cuda): sparse threshold out of range (use make_projection_params)");
}

inline std::size_t round_up16(std::size_t n) { return (n + 15) / 16 * 16; }

}  // namespace detail

template <class T>
projection_task<T> make_projection_task(T* out, index_t rows, index_t cols, std::uint64_t seed, std::uint64_t stream,
                                        const projection_spec& spec, index_t ld) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bfloat16> || std::is_same_v<T, half>,
                "lori::cuda projections: T must be float, double, lori::bfloat16 or lori::half");
  LORI_EXPECTS(!spec.orthonormal_rows, "make_projection_task: orthonormal_rows is CPU-only (lori::generate_projection)");
  projection_task<T> t;
  t.out = out;
  t.rows = rows;
  t.cols = cols;
  t.ld = ld < 0 ? cols : ld;
  t.seed = seed;
  t.stream = stream;
  t.params = make_projection_params(spec, rows, cols);
  detail::validate_task(t);
  return t;
}

inline std::size_t projection_batch_workspace_bytes(index_t count) {
  LORI_EXPECTS(count >= 0, "projection_batch_workspace_bytes: count must be >= 0");
  // Entries are the same size for every T (a pointer and scalars); float's layout is used for sizing.
  const auto n = static_cast<std::size_t>(count);
  return detail::round_up16(n * sizeof(detail::projection_entry_storage<float>)) + detail::round_up16((n + 1) * sizeof(index_t));
}

template <class T>
projection_batch_plan<T> prepare_projection_batch(const projection_task<T>* tasks, index_t count, void* workspace, std::size_t workspace_bytes,
                                                  cudaStream_t stream) {
  static_assert(sizeof(detail::projection_entry_storage<T>) == sizeof(detail::projection_entry_storage<float>), "entry layout");
  LORI_EXPECTS(count >= 0, "prepare_projection_batch: count must be >= 0");
  LORI_EXPECTS(tasks != nullptr || count == 0, "prepare_projection_batch: null task list");
  projection_batch_plan<T> plan;
  plan.count = count;
  if (count == 0) return plan;
  LORI_EXPECTS(workspace != nullptr, "prepare_projection_batch: null workspace");
  LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0, "prepare_projection_batch: workspace must be 16-byte aligned");
  LORI_EXPECTS(workspace_bytes >= projection_batch_workspace_bytes(count), "prepare_projection_batch: workspace too small");
  const auto n = static_cast<std::size_t>(count);
  std::vector<detail::projection_entry_storage<T>> entries(n);
  std::vector<index_t> starts(n + 1);
  index_t units = 0;
  for (std::size_t t = 0; t < n; ++t) {
    detail::validate_task(tasks[t]);
    entries[t].e = detail::make_entry(tasks[t]);
    starts[t] = units;
    units += tasks[t].rows * static_cast<index_t>(entries[t].e.upr);
    LORI_EXPECTS(units < (index_t{1} << 40), "prepare_projection_batch: batch too large for one launch");
    plan.has_gaussian = plan.has_gaussian || tasks[t].params.kind == distribution::gaussian;
  }
  starts[n] = units;
  auto* base = static_cast<unsigned char*>(workspace);
  const std::size_t entry_bytes = detail::round_up16(n * sizeof(detail::projection_entry_storage<T>));
  LORI_CUDA_CHECK(cudaMemcpyAsync(base, entries.data(), n * sizeof(detail::projection_entry_storage<T>), cudaMemcpyHostToDevice, stream));
  LORI_CUDA_CHECK(cudaMemcpyAsync(base + entry_bytes, starts.data(), (n + 1) * sizeof(index_t), cudaMemcpyHostToDevice, stream));
  plan.workspace = workspace;
  plan.units = units;
  if (units > 0) {
    plan.blocks = plan.has_gaussian ? detail::projection_grid(detail::projection_kernel<T, true, detail::projection_batch_source<T>>, units)
                                    : detail::projection_grid(detail::projection_kernel<T, false, detail::projection_batch_source<T>>, units);
  }
  return plan;
}

namespace detail {
/// The launch of generate_projection_batch with `blocks` blocks (1 <= blocks; the library passes
/// plan.blocks, tests force small grids so that each block walks long ranges and many tasks) and
/// slow-path queue threshold pass_at (1..32; the library passes 32, tests also 1 and 5).
template <class T>
void launch_projection_batch(const projection_batch_plan<T>& plan, index_t blocks, cudaStream_t stream, unsigned pass_at = 32) {
  LORI_EXPECTS(plan.count >= 0 && plan.blocks >= 0 && plan.units >= 0, "generate_projection_batch: invalid plan");
  if (plan.units == 0) return;
  LORI_EXPECTS(plan.workspace != nullptr, "generate_projection_batch: plan has no workspace");
  LORI_EXPECTS(blocks >= 1 && blocks < (index_t{1} << 31), "generate_projection_batch: invalid block count");
  LORI_EXPECTS(pass_at >= 1 && pass_at <= 32, "generate_projection_batch: invalid queue threshold");
  const auto n = static_cast<std::size_t>(plan.count);
  const auto* base = static_cast<const unsigned char*>(plan.workspace);
  const projection_batch_source<T> src{reinterpret_cast<const projection_entry_storage<T>*>(base),
                                       reinterpret_cast<const index_t*>(base + round_up16(n * sizeof(projection_entry_storage<T>))), plan.count};
  const projection_split split = make_projection_split(plan.units, blocks, pass_at);
  if (plan.has_gaussian) {
    projection_kernel<T, true><<<static_cast<unsigned>(blocks), projection_threads, 0, stream>>>(src, split);
  } else {
    projection_kernel<T, false><<<static_cast<unsigned>(blocks), projection_threads, 0, stream>>>(src, split);
  }
  LORI_CUDA_CHECK_LAUNCH();
}

/// generate_projection with `blocks` blocks (blocks <= 0: the default grid, one wave at most).
template <class T>
void generate_projection_blocks(row_major_view<T> out, std::uint64_t seed, std::uint64_t stream, const projection_spec& spec, index_t blocks,
                                cudaStream_t cuda_stream) {
  const projection_task<T> t = make_projection_task(out.data(), out.rows(), out.cols(), seed, stream, spec, out.ld());
  const projection_entry<T> e = make_entry(t);
  const index_t units = t.rows * static_cast<index_t>(e.upr);
  if (units == 0) return;
  LORI_EXPECTS(units < (index_t{1} << 40), "generate_projection (cuda): matrix too large for one launch");
  LORI_EXPECTS(blocks < (index_t{1} << 31), "generate_projection (cuda): invalid block count");
  projection_single_source<T> src{};
  src.entry.e = e;
  src.starts[0] = 0;
  src.starts[1] = units;
  if (t.params.kind == distribution::gaussian) {
    const auto kernel = projection_kernel<T, true, projection_single_source<T>>;
    const index_t grid = blocks > 0 ? blocks : projection_grid(kernel, units);
    kernel<<<static_cast<unsigned>(grid), projection_threads, 0, cuda_stream>>>(src, make_projection_split(units, grid));
  } else {
    const auto kernel = projection_kernel<T, false, projection_single_source<T>>;
    const index_t grid = blocks > 0 ? blocks : projection_grid(kernel, units);
    kernel<<<static_cast<unsigned>(grid), projection_threads, 0, cuda_stream>>>(src, make_projection_split(units, grid));
  }
  LORI_CUDA_CHECK_LAUNCH();
}
}  // namespace detail

template <class T>
void generate_projection_batch(const projection_batch_plan<T>& plan, cudaStream_t stream) {
  detail::launch_projection_batch(plan, plan.blocks, stream);
}

template <class T>
void generate_projection_batch(const projection_task<T>* tasks, index_t count, void* workspace, std::size_t workspace_bytes,
                               cudaStream_t stream) {
  generate_projection_batch(prepare_projection_batch(tasks, count, workspace, workspace_bytes, stream), stream);
}

template <class T>
void generate_projection(row_major_view<T> out, std::uint64_t seed, std::uint64_t stream, const projection_spec& spec,
                         cudaStream_t cuda_stream) {
  detail::generate_projection_blocks(out, seed, stream, spec, 0, cuda_stream);
}

}  // namespace lori::cuda_main

#endif  // LORI_BENCH_PROJECTION_MAIN_CUH
