// lori/cuda/projection.cuh - random projections A = f(seed, stream, shape, distribution) on the GPU.
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
// Gaussian tasks (ziggurat, lori/detail/random_ziggurat.hpp: gaussian and gaussian_v2, the same code
// instantiated per format) read the layer tables from shared memory;
// the slow-path elements (1.5%; gaussian_v2: 0.23%) are deferred to per-warp lists in shared memory (ballot + popc
// appends), which the whole block finishes together every 8 windows, one entry per thread (see
// projection_piece_gaussian, gaussian_block_drain). Tasks with aligned rows of a
// multiple of 1024 floats (2048 bf16) take the row path (projection_piece_gaussian_rows: block-uniform
// row windows). Launches without a gaussian task use a kernel variant without that code.
#ifndef LORI_CUDA_PROJECTION_CUH
#define LORI_CUDA_PROJECTION_CUH

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

namespace lori::cuda {

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
  unsigned gaussian_formats = 0;  ///< bit 0: some task is gaussian, bit 1: some is gaussian_v2 (selects the kernel variant)
  index_t units = 0;              ///< 16-byte units of all tasks
  /// Some task is gaussian or gaussian_v2.
  bool has_gaussian() const noexcept { return gaussian_formats != 0u; }
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
namespace detail_proj {

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

/// The layer table of the block's gaussian path, for the format Z and the sigma of the block's current
/// task: {k_L, bits(Z::scaled(W_L, sigma))}, Z::layers entries. (Eight interleaved copies, against bank
/// conflicts of the random look-ups, measured slower at checkpoint 2: 88.1 against 85.3 us, H200.)
/// The gaussian kernel variant's dynamic shared memory: 16 KB for the tables (zig2048: this table;
/// zig256: this table, 2 KB, and the unscaled one, 4 KB), then the slow-path lists (gaussian_pool;
/// gaussian_smem_bytes in all).
LORI_DEVICE LORI_FORCEINLINE uint2* gaussian_table() {
  extern __shared__ __align__(32) unsigned char projection_smem[];
  return reinterpret_cast<uint2*>(projection_smem);
}
constexpr std::size_t gaussian_tables_bytes = sizeof(uint2) * lori::detail::zig2048::layers;
static_assert((sizeof(uint2) + sizeof(lori::detail::zig_layer)) * lori::detail::zig256::layers <= gaussian_tables_bytes, "zig256 tables");

/// zig256's unscaled layer table (4 KB) in the block's shared memory, after the scaled one.
LORI_DEVICE LORI_FORCEINLINE lori::detail::zig_layer* gaussian_layers_smem() {
  extern __shared__ __align__(32) unsigned char projection_smem[];
  return reinterpret_cast<lori::detail::zig_layer*>(projection_smem + sizeof(uint2) * lori::detail::zig256::layers);
}

/// The unscaled layer table of format Z for the slow path: zig256's copy in shared memory (no
/// global-load latency); zig2048's (32 KB, read by 0.23% of the elements) from global memory.
template <class Z>
LORI_DEVICE LORI_FORCEINLINE const lori::detail::zig_layer* gaussian_layers() {
  if constexpr (std::is_same_v<Z, lori::detail::zig256>) {
    return gaussian_layers_smem();
  } else {
    return Z::table();
  }
}

/// Which table the block's shared memory holds: format (its layer count; 0: none yet) and sigma.
struct gaussian_table_state {
  int layers;
  float sigma;
};

/// A configuration of the gaussian kernel variant: KFloat units per thread and window of the row path
/// for 16-byte units of 4 values (float, double; bf16/fp16 units, 8 values, take 1), MinBlocks blocks
/// per SM (the register cap), DrainBlocks: Philox blocks per lane between two block drains of the
/// slow-path lists (gaussian_drain_period), Split: block drains in two rounds
/// (gaussian_block_drain_split) instead of one, Buffers: 1, or 2 pools of lists used in turn (a
/// drain inside a piece then needs no barrier after it: the warps append to the other pool while the
/// last of them finish the drain; 64-entry lists). gaussian_cfg_lib<T> is the library's (1 unit and 4
/// blocks: session 4; the drains: session 5, below); launch_projection_batch_cfg runs others
/// (benchmarks of alternatives in the same process).
template <int KFloat, int MinBlocks, int DrainBlocks = 8, int Split = 0, int Buffers = 1>
struct gaussian_cfg {
  static_assert(Buffers == 1 || Buffers == 2, "gaussian_cfg: 1 or 2 pools");
  static constexpr int k_float = KFloat;
  static constexpr int min_blocks = MinBlocks;
  static constexpr int drain_blocks = DrainBlocks;
  static constexpr int split = Split;
  static constexpr int buffers = Buffers;
};

/// Configuration C for a gaussian piece of format Z (lori::detail::zig256, zig2048): what the gaussian
/// path's functions receive as C (projection_piece_dispatch instantiates the formats of its kernel variant).
template <class C, class Z>
struct gaussian_cfg_z : C {
  using zig = Z;
};
/// The library's configuration for element type T (H100, Llama set; see docs/random.md): float and
/// double with two-round drains every 8 windows and two pools (session 6: 78.8 us; one pool 83.2 in the
/// same run, every 16 / 4 windows 91.4 / 89.3); bf16 and fp16 one round every 8 windows, one pool
/// (session 5: 75.2 us; every 4 79.6, two rounds every 4 78.4; session 6: two pools of 64-entry lists
/// 118, every 16 windows 77.7 against 76.6).
template <class T>
struct gaussian_cfg_lib_of {
  using type = gaussian_cfg<1, 4, 8, 1, 2>;
};
template <>
struct gaussian_cfg_lib_of<bfloat16> {
  using type = gaussian_cfg<1, 4, 16>;
};
template <>
struct gaussian_cfg_lib_of<half> {
  using type = gaussian_cfg<1, 4, 16>;
};
template <class T>
using gaussian_cfg_lib = typename gaussian_cfg_lib_of<T>::type;

/// Thread units per window of the row path: C::k_float for float/double, 1 for bf16/fp16 (the library:
/// 1, i.e. one Philox block per thread and window for float/double, two for bf16/fp16).
template <class T, class C>
constexpr int gaussian_row_units = projection_traits<T>::unit == 4 ? C::k_float : 1;

/// Philox blocks per lane in a window of the row path (a step of the general path has U / 4 <= that).
template <class T, class C>
constexpr unsigned gaussian_lane_blocks = static_cast<unsigned>(gaussian_row_units<T, C> * projection_traits<T>::unit / 4);

/// Windows (steps) between two block drains (gaussian_block_drain): C::drain_blocks Philox blocks per
/// lane, i.e. ~8 x 32 x 8 x 5.9% ~ 120 entries per block drain in the library.
template <class T, class C>
constexpr unsigned gaussian_drain_period =
    C::drain_blocks / static_cast<int>(gaussian_lane_blocks<T, C>) > 0 ? static_cast<unsigned>(C::drain_blocks) / gaussian_lane_blocks<T, C> : 1u;

/// Deferred slow-path work: an entry is one Philox block (4 consecutive elements of a row) with at
/// least one element that failed the fast test: its four words and meta = {row i, q, -, -} (its
/// elements are j = 4q .. 4q + 3; q < 2^29 as cols < 2^31 on the GPU). Its pending elements are
/// recomputed from the words (slow_pending). An entry left for round 2 of a split drain
/// (gaussian_block_drain_split) carries meta = {i, q, pos, pending} and its words after round 1.
struct alignas(32) gaussian_slow_entry {
  uint4 words;
  uint4 meta;
};

/// Entries per warp list: 128, or 64 with two pools. A window (step) appends at most 32 x
/// gaussian_lane_blocks <= 64 entries; a warp whose list holds more than capacity - that after a
/// window finishes its list alone (gaussian_warp_drain), so appends never overflow; the library's lists
/// hold ~15 (float, 64 entries) or ~30 (bf16, 128) entries between block drains (Poisson), so that
/// practically never happens there.
template <class C>
constexpr unsigned gaussian_list_capacity = C::buffers == 2 ? 64u : 128u;

/// The block's slow-path pool in shared memory (after the tables): one list per warp (appends need no
/// atomics: the warp's count is a warp-uniform register) and the counts published for a block drain.
template <unsigned Cap>
struct gaussian_pool {
  gaussian_slow_entry list[projection_warps][Cap];
  unsigned counts[projection_warps];
  unsigned nhard;  ///< gaussian_block_drain_split: entries left for round 2
  std::uint16_t hard[projection_warps * Cap];  ///< their positions: warp << 8 | slot
};
template <class C>
using gaussian_pool_of = gaussian_pool<gaussian_list_capacity<C>>;

/// Pool b (< C::buffers) of the block.
template <class C>
LORI_DEVICE LORI_FORCEINLINE gaussian_pool_of<C>& gaussian_slow_pool(unsigned b) {
  extern __shared__ __align__(32) unsigned char projection_smem[];
  return reinterpret_cast<gaussian_pool_of<C>*>(projection_smem + gaussian_tables_bytes)[b];
}

/// Dynamic shared memory of the gaussian kernel variant: the layer tables (16 KB) and the pool(s)
/// (one of 34 KB, or two of 17 KB): 50 KB per block, 4 blocks per SM.
template <class C>
constexpr std::size_t gaussian_smem_bytes = gaussian_tables_bytes + static_cast<std::size_t>(C::buffers) * sizeof(gaussian_pool_of<C>);

/// Word t of a uint4 (t warp-divergent: selects, no local memory).
LORI_DEVICE LORI_FORCEINLINE std::uint32_t word_of(const uint4& w, int t) { return t == 0 ? w.x : (t == 1 ? w.y : (t == 2 ? w.z : w.w)); }

/// Bit t set when word t of an entry's block fails the fast test of format Z and element 4·q + t lies
/// inside the row (always, with WholeBlocks).
template <class Z, bool WholeBlocks>
LORI_DEVICE LORI_FORCEINLINE unsigned slow_pending(const uint4& w, const uint2* table, std::uint32_t q, index_t cols64) {
  const std::uint32_t j0 = q * 4u;  // < 2^31, and j0 + 3 < 2^32
  const auto cols = static_cast<std::uint32_t>(cols64);  // < 2^31
  unsigned pending = 0;
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const std::uint32_t y = word_of(w, t);
    if (Z::fast_bits(y) >= table[Z::layer(y)].x && (WholeBlocks || j0 + static_cast<std::uint32_t>(t) < cols)) pending |= 1u << t;
  }
  return pending;
}

/// Appends the Philox block b = block q of row i to the warp's list when `slow` (some element failed
/// the fast test; false in lanes outside the piece): one ballot, the lane's slot by popc. count is the
/// warp's (uniform) list length.
LORI_DEVICE LORI_FORCEINLINE void gaussian_append(gaussian_slow_entry* list, unsigned& count, bool slow, const philox_block& b, std::uint32_t i,
                                                  std::uint32_t q, unsigned lt) {
  const unsigned ballot = __ballot_sync(0xffffffffu, slow);
  if (slow) {
    gaussian_slow_entry& s = list[count + static_cast<unsigned>(__popc(ballot & lt))];
    s.words = make_uint4(b.v[0], b.v[1], b.v[2], b.v[3]);
    *reinterpret_cast<uint2*>(&s.meta) = make_uint2(i, q);
  }
  count += static_cast<unsigned>(__popc(ballot));
}

/// The fast path of one Philox block b (block q of row i) of a gaussian piece of format Z, shared by the
/// general and the row path: its four values into v[0..3] from the block's scaled table (a placeholder
/// where the fast test fails), and the block appended to the warp's list (gaussian_append) when an
/// element failed and the lane is active (warp-collective).
template <class Z>
LORI_DEVICE LORI_FORCEINLINE void gaussian_block_fast(const uint2* table, const philox_block& b, float* v, bool active, gaussian_slow_entry* list,
                                                      unsigned& count, std::uint32_t i, std::uint32_t q, unsigned lt) {
  bool slow = false;
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const std::uint32_t w = b.v[t];
    const uint2 z = table[Z::layer(w)];
    v[t] = Z::value(w, bits_float(z.y));
    slow = slow || Z::fast_bits(w) >= z.x;
  }
  gaussian_append(list, count, slow && active, b, i, q, lt);
}

/// Slow block 1 (words s4..s7) of an element, needed only after four slow words (48 of 5003 round-2
/// passes in the Llama set): not inlined, so that the compiler does not compute it alongside slow block
/// 0 in every pass (45 instructions each time, session 8).
LORI_DEVICE __noinline__ inline philox_block gaussian_slow_block1(std::uint32_t c0, std::uint32_t c1, std::uint32_t stream0, std::uint32_t stream1,
                                                                 std::uint32_t key0, std::uint32_t key1) {
  return philox4x32_10_block(c0, c1, stream0, stream1, key0, key1);
}

/// Finishes the pending elements (bits of `pending`) of Philox block q of row i (words wd) by one
/// thread: the whole slow path (lori::detail::gaussian_slow_attempt until it finishes: wedge or tail
/// tests, further candidates, the bounded loop's fallback; slow blocks 0 and 1 from the precomputed
/// key schedule, block 1 only when needed), then the value is stored over the placeholder. The lowest
/// pending element starts with `pos` slow words consumed (its word the current candidate), the others
/// fresh.
template <class T, class C>
LORI_DEVICE LORI_FORCEINLINE void gaussian_finish_pending(const projection_entry<T>& e, const uint4& wd, std::uint32_t i, std::uint32_t q,
                                                          unsigned pending, int pos) {
  while (pending != 0u) {
    const int t = __ffs(static_cast<int>(pending)) - 1;
    // Slow blocks 0 and 1 of (i, 4q + t): lori::detail::zig_slow_block, with the precomputed key schedule.
    const std::uint32_t c0 = 0x80000000u | q, c1 = (static_cast<std::uint32_t>(t) << 30) | i;
    const philox_block b0 = lori::detail::philox4x32_10_scheduled(c0, c1, e.stream0, e.stream1, e.rk);
    philox_block b1{};
    bool have_b1 = false;
    auto word = [&](int k) -> std::uint32_t {
      if (k < 4) return lori::detail::block_word(b0, k);
      if (!have_b1) {
        b1 = gaussian_slow_block1(c0 | 0x40000000u, c1, e.stream0, e.stream1, e.key0, e.key1);
        have_b1 = true;
      }
      return lori::detail::block_word(b1, k - 4);
    };
    lori::detail::zig_slow_state st{word_of(wd, t), pos};
    float x = 0.0f;
    while (!lori::detail::gaussian_slow_attempt<typename C::zig>(st, e.params.scale, word, x, gaussian_layers<typename C::zig>())) {
    }
    e.out[static_cast<index_t>(i) * e.ld + static_cast<index_t>(q * 4u + static_cast<std::uint32_t>(t))] = from_float<T>(x);
    pending &= pending - 1u;
    pos = 0;  // the next pending element starts fresh
  }
}

/// gaussian_finish_pending for every pending element of entry s.
template <class T, class C, bool WholeBlocks>
LORI_DEVICE LORI_FORCEINLINE void gaussian_finish_entry(const projection_entry<T>& e, const uint2* table, const gaussian_slow_entry& s) {
  gaussian_finish_pending<T, C>(e, s.words, s.meta.x, s.meta.y, slow_pending<typename C::zig, WholeBlocks>(s.words, table, s.meta.y, e.cols), 0);
}

/// w with word t replaced by x.
LORI_DEVICE LORI_FORCEINLINE void set_word(uint4& w, int t, std::uint32_t x) {
  w.x = t == 0 ? x : w.x;
  w.y = t == 1 ? x : w.y;
  w.z = t == 2 ? x : w.z;
  w.w = t == 3 ? x : w.w;
}

/// Round 1 of a two-round drain for Philox block q of row i (words wd, pending != 0): its lowest
/// pending element, if in a wedge (layer != 0; 98% of the slow elements), gets its first slow-path
/// attempt with the words s0, s1 of slow block 0 only (lori::detail::gaussian_slow_attempt from
/// pos 0: the wedge test with s0, then s1 as the next candidate and its fast test; same operations,
/// with the block's tables); finished (99.3%), its value is stored and its word zeroed (a zero word
/// passes the fast test in both formats: layer 0, U = 0 < K_0). Returns the elements still pending; pos = the slow
/// words consumed by the lowest of them (2 after a rejected wedge candidate, whose successor s1
/// replaces its word; 0 for a tail element or a fresh one).
template <class T, class C>
LORI_DEVICE LORI_FORCEINLINE unsigned gaussian_first_attempt(const projection_entry<T>& e, const uint2* table, uint4& wd, std::uint32_t i,
                                                             std::uint32_t q, unsigned pending, unsigned& pos) {
  using Z = typename C::zig;
  const int t = __ffs(static_cast<int>(pending)) - 1;
  const std::uint32_t y = word_of(wd, t);
  pos = 0u;
  if (Z::layer(y) == 0u) return pending;  // a tail element: round 2
  // Slow block 0 of (i, 4q + t): lori::detail::zig_slow_block, with the precomputed key schedule.
  const philox_block b0 =
      lori::detail::philox4x32_10_scheduled(0x80000000u | q, (static_cast<std::uint32_t>(t) << 30) | i, e.stream0, e.stream1, e.rk);
  const lori::detail::zig_layer z = gaussian_layers<Z>()[Z::layer(y)];
  const float xu = Z::abscissa(y, z.w);
  const float ee = lori::detail::exp_neg(lori::detail::rnd_mul(lori::detail::rnd_mul(xu, xu), -0.5f));
  float v = 0.0f;
  if (lori::detail::rnd_fma(uniform_float(b0.v[0]), z.d, z.f) < ee) {
    v = Z::value(y, bits_float(table[Z::layer(y)].y));
  } else {
    const std::uint32_t c1 = b0.v[1];
    const uint2 z2 = table[Z::layer(c1)];
    if (Z::fast_bits(c1) >= z2.x) {
      set_word(wd, t, c1);  // the rejected candidate's successor, which failed the fast test
      pos = 2u;             // s0, s1 consumed
      return pending;
    }
    v = Z::value(c1, bits_float(z2.y));
  }
  e.out[static_cast<index_t>(i) * e.ld + static_cast<index_t>(q * 4u + static_cast<std::uint32_t>(t))] = from_float<T>(v);
  set_word(wd, t, 0u);
  return pending & (pending - 1u);
}

/// The warp finishes its own list (an overflow guard: a list with more than capacity - 32 x
/// gaussian_lane_blocks entries after a window). The first __syncwarp orders the appends and the
/// placeholder stores of all lanes before the reads and the fix-ups, the second the reads before
/// later appends.
template <class T, class C, bool WholeBlocks>
LORI_DEVICE LORI_FORCEINLINE void gaussian_warp_drain(const projection_entry<T>& e, const uint2* table, gaussian_slow_entry* list, unsigned& count,
                                                      unsigned lane) {
  __syncwarp();
  for (unsigned r = lane; r < count; r += 32u) gaussian_finish_entry<T, C, WholeBlocks>(e, table, list[r]);
  __syncwarp();
  count = 0u;
}

/// The concatenated lists of a pool: pre[w] = the first entry of warp w's list (exclusive prefix sums of
/// the published counts, in registers); returns the total.
template <class C>
LORI_DEVICE LORI_FORCEINLINE unsigned gaussian_list_starts(const gaussian_pool_of<C>& pool, unsigned (&pre)[projection_warps]) {
  unsigned total = 0u;
#pragma unroll
  for (int w = 0; w < projection_warps; ++w) {
    pre[w] = total;
    total += pool.counts[w];
  }
  return total;
}

/// Entry r (< the total) of the concatenated lists: list w and slot k, from the starts in registers (they
/// are non-decreasing, so the lists whose start is <= r form a prefix and the last of them holds r;
/// empty lists before it share its start) instead of a loop of up to 8 dependent shared loads.
LORI_DEVICE LORI_FORCEINLINE void gaussian_locate(const unsigned (&pre)[projection_warps], unsigned r, unsigned& w, unsigned& k) {
  unsigned lw = 0u, base = 0u;
#pragma unroll
  for (int j = 1; j < projection_warps; ++j) {
    const bool in = r >= pre[j];
    lw = in ? static_cast<unsigned>(j) : lw;  // (a select; counting the lists took two instructions)
    base = in ? pre[j] : base;
  }
  w = lw;
  k = r - base;
}

/// The first thread of the calling warp, as a value the compiler knows to be warp-uniform (a shuffle
/// from lane 0): a loop bound on threadIdx.x itself makes the loop divergent for the compiler, which
/// then drops the uniform registers (the task's key schedule) and spills.
LORI_DEVICE LORI_FORCEINLINE unsigned warp_first_thread() { return __shfl_sync(0xffffffffu, threadIdx.x & ~31u, 0); }

/// The end of a block drain: with `trailing` a barrier (the reads before later appends to this pool
/// and, at the end of a piece, before the table is rescaled); otherwise (two pools, inside a piece) no
/// wait for other warps, only a __syncwarp, which keeps ptxas from scheduling the next window into
/// the drain (632 bytes of spills without it).
LORI_DEVICE LORI_FORCEINLINE void gaussian_drain_end(bool trailing) {
  if (trailing) {
    __syncthreads();
  } else {
    __syncwarp();
  }
}

/// The block finishes the lists of all its warps (block-uniform call): each warp publishes its count,
/// then thread x takes entries x, x + 256, ... of the concatenated lists, so the ~1.5% slow elements
/// of the last windows are spread evenly over the block (no warp waits for its own unlucky lanes) and
/// run one per thread, with thousands in flight per SM. The first barrier orders the appends and the
/// placeholder stores of every warp before the reads and fix-ups, the second (`trailing`) the reads
/// before later appends to this pool (and, at the end of a piece, before the table is rescaled).
template <class T, class C, bool WholeBlocks>
LORI_DEVICE LORI_FORCEINLINE void gaussian_block_drain(const projection_entry<T>& e, const uint2* table, unsigned& count, gaussian_pool_of<C>& pool,
                                                       bool trailing) {
  const unsigned x = threadIdx.x;
  if ((x & 31u) == 0u) pool.counts[x >> 5] = count;
  __syncthreads();
  unsigned pre[projection_warps];
  const unsigned total = gaussian_list_starts<C>(pool, pre);
  for (unsigned r = x; r < total; r += projection_threads) {
    unsigned w = 0u, k = 0u;
    gaussian_locate(pre, r, w, k);
    gaussian_finish_entry<T, C, WholeBlocks>(e, table, pool.list[w][k]);
  }
  gaussian_drain_end(trailing);
  count = 0u;
}

/// gaussian_block_drain in two rounds, so that the common case runs without the divergent rare code.
/// Round 1, every entry (thread x: entries x, x + 256, ...): gaussian_first_attempt for its lowest
/// pending element; an entry with work left (another pending element, a tail element, a rejected
/// candidate: ~6% of the entries) is written back with its state (meta.z = pos, meta.w = the pending
/// bits) and its position pushed to the hard list (one shared atomic per warp). Round 2: thread x
/// takes hard entries x, x + 256, ... and finishes them (gaussian_finish_pending). Three barriers:
/// before round 1 (appends, placeholder stores), before round 2 (round 1's write-backs and pushes),
/// after (`trailing`: reads before later appends to this pool).
template <class T, class C, bool WholeBlocks>
LORI_DEVICE LORI_FORCEINLINE void gaussian_block_drain_split(const projection_entry<T>& e, const uint2* table, unsigned& count,
                                                             gaussian_pool_of<C>& pool, bool trailing) {
  const unsigned x = threadIdx.x, lane = x & 31u;
  if (lane == 0u) pool.counts[x >> 5] = count;
  if (x == 0u) pool.nhard = 0u;
  __syncthreads();
  unsigned pre[projection_warps];
  const unsigned total = gaussian_list_starts<C>(pool, pre);
  const unsigned lt = lanemask_lt();
  // A warp-uniform trip count (full-warp ballots); a warp without entries skips round 1 (about half the
  // warps of a library drain).
  const unsigned first = warp_first_thread();
  for (unsigned r0 = 0u; r0 + first < total; r0 += projection_threads) {
    const unsigned r = r0 + x;
    bool hard = false;
    unsigned w = 0u, k = 0u;
    if (r < total) {
      gaussian_locate(pre, r, w, k);
      gaussian_slow_entry& s = pool.list[w][k];
      uint4 wd = s.words;
      const std::uint32_t i = s.meta.x, q = s.meta.y;
      unsigned pending = slow_pending<typename C::zig, WholeBlocks>(wd, table, q, e.cols);
      if (pending != 0u) {
        unsigned pos = 0u;
        pending = gaussian_first_attempt<T, C>(e, table, wd, i, q, pending, pos);
        hard = pending != 0u;
        if (hard) {
          s.words = wd;
          s.meta.z = pos;
          s.meta.w = pending;  // (round 2 need not recompute it from the words)
        }
      }
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, hard);
    if (ballot != 0u) {
      unsigned base = 0u;
      if (lane == 0u) base = atomicAdd(&pool.nhard, static_cast<unsigned>(__popc(ballot)));
      base = __shfl_sync(0xffffffffu, base, 0);
      if (hard) pool.hard[base + static_cast<unsigned>(__popc(ballot & lt))] = static_cast<std::uint16_t>(w << 8 | k);
    }
  }
  __syncthreads();
  const unsigned nhard = pool.nhard;
  for (unsigned h = x; h < nhard; h += projection_threads) {
    const unsigned at = pool.hard[h];
    const gaussian_slow_entry& s = pool.list[at >> 8][at & 0xffu];
    gaussian_finish_pending<T, C>(e, s.words, s.meta.x, s.meta.y, s.meta.w, static_cast<int>(s.meta.z));
  }
  gaussian_drain_end(trailing);
  count = 0u;
}

/// The warps' slow-path lists in a gaussian piece: the pool in use (par < C::buffers; pieces start
/// with pool 0), the warp's list in it, its length (warp-uniform) and the windows left until the next
/// block drain (counting down to 0 tests against a constant: counting up against `period` reloaded
/// the kernel parameter in every window).
struct gaussian_lists {
  unsigned par;
  gaussian_slow_entry* list;
  unsigned count;
  unsigned until;
};

template <class C>
LORI_DEVICE LORI_FORCEINLINE gaussian_lists gaussian_lists_start(unsigned period) {
  return gaussian_lists{0u, gaussian_slow_pool<C>(0u).list[threadIdx.x >> 5], 0u, period};
}

/// The block drain of configuration C (gaussian_block_drain or, with C::split, gaussian_block_drain_split)
/// of the pool in use. Inside a piece with two pools (end = false) without a barrier after it: the
/// warps switch to the other pool, whose last drain's reads ended before this drain's first barrier.
/// At the end of a piece (end = true) with the barrier, so the next piece starts with pool 0 and may
/// rescale the table.
template <class T, class C, bool WholeBlocks>
LORI_DEVICE LORI_FORCEINLINE void gaussian_drain_all(const projection_entry<T>& e, const uint2* table, gaussian_lists& ls, bool end) {
  const bool trailing = C::buffers == 1 || end;
  if constexpr (C::split != 0) {
    gaussian_block_drain_split<T, C, WholeBlocks>(e, table, ls.count, gaussian_slow_pool<C>(ls.par), trailing);
  } else {
    gaussian_block_drain<T, C, WholeBlocks>(e, table, ls.count, gaussian_slow_pool<C>(ls.par), trailing);
  }
  if constexpr (C::buffers == 2) {
    ls.par ^= 1u;
    ls.list = gaussian_slow_pool<C>(ls.par).list[threadIdx.x >> 5];
  }
}

/// A warp whose list holds more than this after a window drains it alone before the next window
/// (which may append 32 x gaussian_lane_blocks entries).
template <class T, class C>
constexpr unsigned gaussian_list_limit = gaussian_list_capacity<C> - 32u * gaussian_lane_blocks<T, C>;

/// A warp whose list could overflow in the next window drains its own (warp-uniform call).
template <class T, class C, bool WholeBlocks>
LORI_DEVICE LORI_FORCEINLINE void gaussian_guard_list(const projection_entry<T>& e, const uint2* table, gaussian_lists& ls, unsigned lane) {
  if (ls.count > gaussian_list_limit<T, C>) gaussian_warp_drain<T, C, WholeBlocks>(e, table, ls.list, ls.count, lane);
}

/// After the window that brought ls.until down (block-uniform call): the block drains all lists when
/// the drain is due (ls.until == 0, then `period` windows until the next), otherwise gaussian_guard_list.
template <class T, class C, bool WholeBlocks>
LORI_DEVICE LORI_FORCEINLINE void gaussian_drain_if_due(const projection_entry<T>& e, const uint2* table, gaussian_lists& ls, unsigned period,
                                                        unsigned lane) {
  if (ls.until == 0u) {
    gaussian_drain_all<T, C, WholeBlocks>(e, table, ls, false);
    ls.until = period;
  } else {
    gaussian_guard_list<T, C, WholeBlocks>(e, table, ls, lane);
  }
}

/// After a window (step) of a gaussian piece and its stores (block-uniform call): every `period`
/// windows the block drains all lists; otherwise a warp whose list could overflow in the next window
/// drains its own.
template <class T, class C, bool WholeBlocks>
LORI_DEVICE LORI_FORCEINLINE void gaussian_after_window(const projection_entry<T>& e, const uint2* table, gaussian_lists& ls, unsigned period,
                                                        unsigned lane) {
  --ls.until;
  gaussian_drain_if_due<T, C, WholeBlocks>(e, table, ls, period, lane);
}

/// The end of a gaussian piece (block-uniform call): the last block drain, or, if the last window
/// drained without a barrier after it (two pools), that barrier.
template <class T, class C, bool WholeBlocks>
LORI_DEVICE LORI_FORCEINLINE void gaussian_piece_end(const projection_entry<T>& e, const uint2* table, gaussian_lists& ls, unsigned period) {
  if (ls.until != period) {
    gaussian_drain_all<T, C, WholeBlocks>(e, table, ls, true);
  } else if constexpr (C::buffers == 2) {
    __syncthreads();
  }
}

/// Units [r0, r1) of gaussian matrix e by the block (thread x: units r0 + x, r0 + x + 256, ...); see
/// lori/detail/random_ziggurat.hpp for the element formula. Every element takes the fast path from the
/// block's table (a placeholder where the fast test fails); each Philox block with a failing element
/// is appended to the warp's list (gaussian_append), and every `period` steps (and at the end of the
/// piece) the whole block finishes all lists (gaussian_block_drain). Warps wait for each other only at
/// those drains and when the table is rescaled for a new sigma (block-uniform: pieces are
/// block-uniform). C: a gaussian_cfg_z (C::zig: the format).
/// table: what the block's table holds (updated here).
template <class T, class C>
LORI_DEVICE LORI_FORCEINLINE void projection_piece_gaussian_rows(const projection_entry<T>& e, index_t r0, index_t r1, unsigned lt,
                                                                 unsigned period, const uint2* table);
template <class T, class C>
LORI_DEVICE LORI_FORCEINLINE bool gaussian_row_path(const projection_entry<T>& e);

template <class T, class C>
LORI_DEVICE LORI_FORCEINLINE void projection_piece_gaussian(const projection_entry<T>& e, index_t r0, index_t r1, unsigned lt,
                                                            unsigned period, bool rows, gaussian_table_state& held) {
  using Z = typename C::zig;
  constexpr int U = projection_traits<T>::unit;
  const unsigned x = threadIdx.x, lane = x & 31u;
  uint2* table = gaussian_table();
  const float sigma = e.params.scale;
  if (sigma != held.sigma || held.layers != Z::layers) {
    if (held.layers != 0) __syncthreads();  // every warp is done with the previous table (lists are empty between pieces)
    for (unsigned l = x; l < static_cast<unsigned>(Z::layers); l += projection_threads) {
      const lori::detail::zig_layer z = Z::table()[l];
      table[l] = make_uint2(z.k, float_bits(Z::scaled(z.w, sigma)));
      if constexpr (std::is_same_v<Z, lori::detail::zig256>) gaussian_layers_smem()[l] = z;
    }
    __syncthreads();
    held = gaussian_table_state{Z::layers, sigma};
  }
  if (rows && gaussian_row_path<T, C>(e)) {
    projection_piece_gaussian_rows<T, C>(e, r0, r1, lt, period, table);
    return;
  }
  gaussian_lists ls = gaussian_lists_start<C>(period);
  unit_cursor<T> p = cursor_at(e, r0 + x);
  // A block-uniform loop and body (every warp runs every step; lanes beyond the piece are inactive).
  // (Two units per thread and step measured slower in session 3: 93.8 against 85.3 us, H200.)
  for (index_t left = r1 - r0; left > 0; left -= projection_threads) {
    // x < left, with the 64-bit part uniform (left >= 256 in every step but the last).
    const bool active = left >= index_t{projection_threads} || x < static_cast<unsigned>(left);
    float v[U];
#pragma unroll
    for (int h = 0; h < U / 4; ++h) {
      const std::uint32_t q = static_cast<std::uint32_t>(U / 4) * p.c + static_cast<std::uint32_t>(h);
      const philox_block b = lori::detail::philox4x32_10_scheduled(q, p.i, e.stream0, e.stream1, e.rk);
      gaussian_block_fast<Z>(table, b, v + 4 * h, active, ls.list, ls.count, p.i, q, lt);
    }
    if (active) store_unit_at<T, U>(e, p, v);
    gaussian_after_window<T, C, false>(e, table, ls, period, lane);
    advance_step(e, p);
  }
  gaussian_piece_end<T, C, false>(e, table, ls, period);
}

/// Philox4x32-10 of counter {q, i, stream0, stream1} (lori::detail::philox4x32_10_scheduled) with the
/// first rounds' row- and task-constant parts precomputed (gaussian_row_keys): round 0's product of
/// stream0 and round 1's product of the round-0 c0 (which depends only on i) are block-uniform, so
/// the per-unit work is 18 wide multiplies and 19 XORs.
struct gaussian_task_keys {
  std::uint32_t lo_s0;  ///< lo(m1 * stream0): c1 after round 0
  std::uint32_t t0;     ///< stream1 ^ k1[0]
  std::uint32_t t1;     ///< lo(m1 * stream0) ^ k0[1]
  std::uint32_t h0;     ///< hi(m1 * stream0) ^ k0[0]
};
struct gaussian_row_keys {
  std::uint32_t r1;  ///< hi(m0 * c0) ^ k1[1], c0 = h0 ^ i (c0 after round 0)
  std::uint32_t r2;  ///< lo(m0 * c0) ^ k1[2] (c3 after round 1, XORed into c2 of round 2)
};

template <class T>
LORI_HOST_DEVICE LORI_FORCEINLINE gaussian_task_keys make_gaussian_task_keys(const projection_entry<T>& e) {
  constexpr std::uint32_t m1 = 0xCD9E8D57u;
  const std::uint64_t p1 = static_cast<std::uint64_t>(m1) * e.stream0;
  const auto hi = static_cast<std::uint32_t>(p1 >> 32), lo = static_cast<std::uint32_t>(p1);
  return gaussian_task_keys{lo, e.stream1 ^ e.rk.k1[0], lo ^ e.rk.k0[1], hi ^ e.rk.k0[0]};
}

template <class T>
LORI_HOST_DEVICE LORI_FORCEINLINE gaussian_row_keys make_gaussian_row_keys(const projection_entry<T>& e, const gaussian_task_keys& tk, std::uint32_t i) {
  constexpr std::uint32_t m0 = 0xD2511F53u;
  const std::uint64_t p0 = static_cast<std::uint64_t>(m0) * (tk.h0 ^ i);
  return gaussian_row_keys{static_cast<std::uint32_t>(p0 >> 32) ^ e.rk.k1[1], static_cast<std::uint32_t>(p0) ^ e.rk.k1[2]};
}

/// = philox4x32_10_scheduled(q, i, e.stream0, e.stream1, e.rk) for the row keys of i.
template <class T>
LORI_HOST_DEVICE LORI_FORCEINLINE philox_block philox_row(std::uint32_t q, const projection_entry<T>& e, const gaussian_task_keys& tk,
                                                     const gaussian_row_keys& rw) {
  constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
  // Round 0: c0 = hi(m1 s0) ^ i ^ k0[0] (row-uniform), c1 = lo(m1 s0), c2 = hi(m0 q) ^ s1 ^ k1[0], c3 = lo(m0 q).
  std::uint64_t p = static_cast<std::uint64_t>(m0) * q;
  std::uint32_t c2 = static_cast<std::uint32_t>(p >> 32) ^ tk.t0;
  std::uint32_t c3 = static_cast<std::uint32_t>(p);
  // Round 1: p0 = m0 c0 is row-uniform (in rw), p1 = m1 c2.
  p = static_cast<std::uint64_t>(m1) * c2;
  std::uint32_t c0 = static_cast<std::uint32_t>(p >> 32) ^ tk.t1;
  std::uint32_t c1 = static_cast<std::uint32_t>(p);
  c2 = c3 ^ rw.r1;
  // Round 2: c3 (= lo(m0 c0) of round 1) is folded into rw.r2.
  {
    const std::uint64_t p0 = static_cast<std::uint64_t>(m0) * c0;
    const std::uint64_t p1 = static_cast<std::uint64_t>(m1) * c2;
    c0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1 ^ e.rk.k0[2];
    c1 = static_cast<std::uint32_t>(p1);
    c2 = static_cast<std::uint32_t>(p0 >> 32) ^ rw.r2;
    c3 = static_cast<std::uint32_t>(p0);
  }
  return lori::detail::philox_rounds<3>(c0, c1, c2, c3, e.rk);  // rounds 3 .. 9
}


/// pack_pair(narrow16<T>(lo), narrow16<T>(hi)) with one hardware conversion (cvt.rn.bf16x2.f32 /
/// cvt.rn.f16x2.f32: round to nearest even, like float_to_bf16_bits / float_to_half_bits, subnormals
/// and overflow to infinity included). For finite inputs only (the NaN encodings may differ): the row
/// path takes 16-bit tasks only for sigma in gaussian_row_sigma_min .. max, where no fast-path value
/// is NaN (nor a float subnormal).
template <class T>
LORI_DEVICE LORI_FORCEINLINE std::uint32_t cvt_pair_rn(float lo, float hi) {
  std::uint32_t d;
  if constexpr (std::is_same_v<T, bfloat16>) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  }
  return d;
}

/// Sigma range of the row path for bf16/fp16 (cvt_pair_rn): the fast path's multiplier stays finite
/// (zig256: W_L sigma, W_L <= 3.93; zig2048: 8 W_L sigma, W_L <= 4.45 and sigma <= 1e36), so no
/// fast-path value is NaN, and fast-path values are 0 or >= 2^-23 W_L sigma (zig256, W_L >= 0.2) or
/// >= 2^-20 W_L sigma (zig2048, W_L >= 0.107), both > 2^-126.
constexpr float gaussian_row_sigma_min = 1e-28f;
constexpr float gaussian_row_sigma_max = 1e37f;

/// Units per window of the row path: 256 * K.
template <class T, class C>
constexpr index_t gaussian_row_window = index_t{projection_threads} * gaussian_row_units<T, C>;

/// Whether gaussian task e takes the row path: rows made of whole steps (upr a multiple of the step's
/// 256 * K units), whole 16-byte units (cols % unit == 0), 16-byte aligned rows and, for bf16/fp16, sigma
/// in [gaussian_row_sigma_min, gaussian_row_sigma_max] (cvt_pair_rn). Block-uniform.
template <class T, class C>
LORI_DEVICE LORI_FORCEINLINE bool gaussian_row_path(const projection_entry<T>& e) {
  constexpr auto step = static_cast<std::uint32_t>(projection_threads * gaussian_row_units<T, C>);
  const bool sigma_ok = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                        (e.params.scale >= gaussian_row_sigma_min && e.params.scale <= gaussian_row_sigma_max);
  return e.vec_ok != 0u && e.full_units == e.upr && e.upr % step == 0u && sigma_ok;
}

/// The row path of projection_piece_gaussian for tasks with gaussian_row_path(e): the piece is walked
/// in aligned windows of S = 256 * K units of one row (upr is a multiple of S, so a window never
/// crosses a row end), thread x taking units x + 256 k (k < K) of each window; the first and last
/// windows of the piece mask the lanes outside [r0, r1) (a separate copy of the window code, so whole
/// windows test nothing). The window's row i (and its address) is block-uniform and the thread's unit
/// cu is carried from window to window, so a unit costs its Philox block (with the row-constant first
/// rounds precomputed, philox_row), the fast paths, the ballot and one vector store; the slow path is
/// the general path's (gaussian_append, gaussian_after_window). The whole windows run in stretches
/// that end at a row end or a block drain, so a window checks neither.
template <class T, class C>
LORI_DEVICE LORI_FORCEINLINE void projection_piece_gaussian_rows(const projection_entry<T>& e, index_t r0, index_t r1, unsigned lt,
                                                                 unsigned period, const uint2* table) {
  constexpr int U = projection_traits<T>::unit;
  constexpr int K = gaussian_row_units<T, C>;
  constexpr auto S = static_cast<std::uint32_t>(projection_threads * K);
  const unsigned x = threadIdx.x, lane = x & 31u;
  gaussian_lists ls = gaussian_lists_start<C>(period);
  // The window holding r0 (block-uniform): row i, first unit c (a multiple of S). In whole windows
  // (w0 and upr are multiples of S; units < 2^40, so w0 / S < 2^32): 32-bit arithmetic only (a
  // 64-bit division, a subroutine call, makes the compiler drop the uniformity of everything after).
  const index_t w0 = r0 - (r0 % S);
  const auto wq = static_cast<std::uint32_t>(w0 / S), uq = e.upr / S;
  std::uint32_t i = wq / uq;
  std::uint32_t c = (wq - i * uq) * S;
  T* rowp = e.out + static_cast<index_t>(i) * e.ld;  // row i
  std::uint32_t cu = c + x;  // the thread's unit (k = 0) of the window (c: its first unit, until the whole windows)
  const gaussian_task_keys tk = make_gaussian_task_keys(e);
  gaussian_row_keys rw = make_gaussian_row_keys(e, tk, i);
  // Windows left (the current one included; < 2^32 as units < 2^40) and the end of the last one.
  auto n = static_cast<std::uint32_t>((r1 - w0 + S - 1) / S);
  const auto hi_last = static_cast<std::uint32_t>(r1 - w0 - static_cast<index_t>(n - 1u) * S);  // 1..S
  auto lo = static_cast<std::uint32_t>(r0 - w0);  // first active unit of the window (first window only)
  // One window; Masked: lanes outside [lo, hi) of the window do nothing.
  auto store = [&](T* dst, const float(&v)[U]) {
    if constexpr (std::is_same_v<T, float>) {
      *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    } else if constexpr (std::is_same_v<T, double>) {
      reinterpret_cast<double2*>(dst)[0] = make_double2(v[0], v[1]);
      reinterpret_cast<double2*>(dst)[1] = make_double2(v[2], v[3]);
    } else {
      *reinterpret_cast<uint4*>(dst) =
          make_uint4(cvt_pair_rn<T>(v[0], v[1]), cvt_pair_rn<T>(v[2], v[3]), cvt_pair_rn<T>(v[4], v[5]), cvt_pair_rn<T>(v[6], v[7]));
    }
  };
  auto window = [&](auto masked, std::uint32_t hi) {
    constexpr bool Masked = decltype(masked)::value;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const unsigned xk = x + static_cast<unsigned>(k * projection_threads);
      const bool active = !Masked || (xk >= lo && xk < hi);
      const std::uint32_t cuk = cu + static_cast<unsigned>(k * projection_threads);  // unit of the row
      float v[U];
#pragma unroll
      for (int h = 0; h < U / 4; ++h) {
        const std::uint32_t q = static_cast<std::uint32_t>(U / 4) * cuk + static_cast<std::uint32_t>(h);
        const philox_block b = philox_row(q, e, tk, rw);
        gaussian_block_fast<typename C::zig>(table, b, v + 4 * h, active, ls.list, ls.count, i, q, lt);
      }
      if (active) store(rowp + static_cast<index_t>(cuk) * U, v);
    }
  };
  auto next_row = [&] {
    c = 0u;
    cu = x;
    ++i;
    rowp += e.ld;
    rw = make_gaussian_row_keys(e, tk, i);
  };
  auto next_window = [&] {
    c += S;
    cu += S;
    if (c == e.upr) next_row();  // (uniform)
  };
  auto after = [&] { gaussian_after_window<T, C, true>(e, table, ls, period, lane); };
  // A masked first window (the piece starts inside it, or it is the only one and ends early), then
  // the whole windows, then a masked last window (the piece ends inside it).
  if (lo != 0u || (n == 1u && hi_last != S)) {
    window(std::true_type{}, n == 1u ? hi_last : S);
    after();
    if (--n != 0u) next_window();
    lo = 0u;
  }
  const bool last_masked = n != 0u && hi_last != S;
  // The whole windows in runs that end at the next block drain, row end or last whole window: inside a
  // run a window costs its unit(s), the list check and one counter (the row check and the row's
  // address in every window cost 5 instructions more per window in session 8; an event every 3.8
  // windows in the Llama set costs ~16).
  const std::uint32_t wpr = e.upr / S;   // windows per row
  std::uint32_t row_left = wpr - c / S;  // windows left in row i (the current one included)
  for (std::uint32_t whole = last_masked ? n - 1u : n; whole != 0u;) {
    std::uint32_t run = whole < ls.until ? whole : ls.until;  // block-uniform, >= 1
    run = run < row_left ? run : row_left;
    whole -= run;
    ls.until -= run;
    row_left -= run;
    for (;;) {
      window(std::false_type{}, S);
      cu += S;
      if (--run == 0u) break;
      gaussian_guard_list<T, C, true>(e, table, ls, lane);
    }
    if (row_left == 0u) {
      next_row();
      row_left = wpr;
    }
    gaussian_drain_if_due<T, C, true>(e, table, ls, period, lane);  // (ls.until already counts the run)
  }
  if (last_masked) {
    window(std::true_type{}, hi_last);
    after();
  }
  gaussian_piece_end<T, C, true>(e, table, ls, period);
}

/// Units [r0, r1) of matrix e by the block, any law. Gauss: the kernel variant's gaussian paths (bit 0:
/// gaussian, bit 1: gaussian_v2; shared memory, more registers); the host launches the variant with the
/// formats of the launch's tasks only (0 without gaussian tasks): the register allocation of a kernel
/// with both paths spills inside bf16's window loop.
template <unsigned Gauss, class C, class T>
LORI_DEVICE LORI_FORCEINLINE void projection_piece_dispatch(const projection_entry<T>& e, index_t r0, index_t r1, unsigned lt, unsigned period,
                                                            bool rows, gaussian_table_state& table) {
  switch (e.params.kind) {
    case distribution::kaiming_uniform: projection_piece<distribution::kaiming_uniform>(e, r0, r1); break;
    case distribution::gaussian:
      if constexpr ((Gauss & 1u) != 0u) projection_piece_gaussian<T, gaussian_cfg_z<C, lori::detail::zig256>>(e, r0, r1, lt, period, rows, table);
      break;
    case distribution::gaussian_v2:
      if constexpr ((Gauss & 2u) != 0u) projection_piece_gaussian<T, gaussian_cfg_z<C, lori::detail::zig2048>>(e, r0, r1, lt, period, rows, table);
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

// Minimum blocks per SM (caps registers): 8 (all 2048 threads) without the gaussian path, C::min_blocks
// with it (the library: 4, 64 registers; 5 or 6 blocks per SM (48 / 40 registers) measured slower at
// session 4's checkpoints: 91-96 against 89 us).
template <unsigned Gauss, class C>
constexpr int projection_min_blocks = Gauss != 0u ? C::min_blocks : 8;

/// How a launch's units are split over its blocks: ceil(units / group) groups of `group` units; block B
/// takes per_block groups, one more if B < extra (no division on the device). drain_period (>= 1):
/// windows (steps) between two block drains of the gaussian slow-path lists (gaussian_drain_period in
/// the library).
struct projection_split {
  index_t units;
  index_t per_block;
  index_t extra;
  index_t group;
  unsigned drain_period;
  unsigned rows;  ///< 1: gaussian tasks with gaussian_row_path take the row path (the library); 0: never
};

/// Groups of 32 units; for the gaussian kernel variant (window = the row path's window of T, 256 units
/// in the library; 0 otherwise) groups of one window, so that block ranges start and end on window
/// boundaries of the tasks whose unit counts are multiples of the window (as all k = 2048 n are: no
/// masked windows), when every block gets at least 16 of them (the imbalance stays <= 1/16).
inline projection_split make_projection_split(index_t units, index_t blocks, index_t window, unsigned drain_period = 1, unsigned rows = 1) {
  const index_t group = window > 0 && units >= blocks * 16 * window ? window : 32;
  const index_t groups = (units + group - 1) / group;
  return projection_split{units, groups / blocks, groups % blocks, group, drain_period, rows};
}

/// The generation kernel: a grid of at most one wave of resident blocks; the launch's units (all tasks
/// concatenated, each task in row-major unit order) are split into equal contiguous ranges of whole
/// groups (make_projection_split), one per block. Each block walks its range task by task (pieces);
/// all of this is block-uniform (the task's keys and shape stay in uniform registers). Within a
/// piece, thread x takes units x, x + 256, ... (the gaussian row path: see
/// projection_piece_gaussian_rows); after the first task search (one barrier) the warps wait for each
/// other only in gaussian pieces (block drains of the slow-path lists, table rescaling).
template <class T, unsigned Gauss, class Source, class C = gaussian_cfg_lib<T>>
__global__ void __launch_bounds__(projection_threads, projection_min_blocks<Gauss, C>)
    projection_kernel(const __grid_constant__ Source param, projection_split split) {
  const auto src = param.source();
  const auto block = static_cast<index_t>(blockIdx.x);
  const index_t g0 = block * split.per_block + (block < split.extra ? block : split.extra);
  const index_t g1 = g0 + split.per_block + (block < split.extra ? 1 : 0);
  const index_t a = g0 * split.group;
  const index_t b = g1 * split.group < split.units ? g1 * split.group : split.units;
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
  gaussian_table_state table{0, 0.0f};  // the block's gaussian table: none yet
  index_t u = a;
  for (;;) {
    const index_t end_t = src.start(t + 1);
    if (end_t > u) {
      const index_t s = src.start(t);
      const index_t end = end_t < b ? end_t : b;
      projection_piece_dispatch<Gauss, C>(src.entry(t), u - s, end - s, lt, split.drain_period, split.rows != 0u, table);
      u = end;
      if (u >= b) break;
    }
    ++t;
  }
}

/// Calls f(kernel) with the gaussian kernel variant of Source and C for `formats` (bit 0: gaussian
/// tasks, bit 1: gaussian_v2 tasks; != 0): one per format for the library's configuration (the variant
/// with both paths only for batches that mix them); configurations other than the library's (tests
/// and benchmarks of alternatives) have only the variant with both paths.
template <class T, class Source, class C, class F>
void with_gaussian_variant(unsigned formats, F&& f) {
  if constexpr (std::is_same_v<C, gaussian_cfg_lib<T>>) {
    if (formats == 1u) return f(projection_kernel<T, 1u, Source, C>);
    if (formats == 2u) return f(projection_kernel<T, 2u, Source, C>);
  }
  f(projection_kernel<T, 3u, Source, C>);
}

/// The format bit of a gaussian distribution d (with_gaussian_variant), 0 for the other laws.
constexpr unsigned gaussian_format_bit(distribution d) {
  return d == distribution::gaussian ? 1u : (d == distribution::gaussian_v2 ? 2u : 0u);
}

/// Configures a kernel variant with `smem` bytes of dynamic shared memory (the gaussian variant:
/// gaussian_smem_bytes, 0 otherwise) for the largest shared-memory carve-out (on the current device).
template <class Kernel>
void configure_projection_kernel(Kernel kernel, std::size_t smem) {
  LORI_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  if (smem > 0) LORI_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
}

/// Blocks of a launch over `units` units: one wave of resident blocks at most (and about 4 units per
/// thread at least). Configures the kernel first (configure_projection_kernel; the gaussian variant
/// holds 50 KB of shared memory per block).
template <class Kernel>
index_t projection_grid(Kernel kernel, index_t units, std::size_t smem) {
  int device = 0, sms = 0, per_sm = 0;
  LORI_CUDA_CHECK(cudaGetDevice(&device));
  LORI_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  configure_projection_kernel(kernel, smem);
  LORI_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, projection_threads, smem));
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
  LORI_EXPECTS(static_cast<std::uint32_t>(p.kind) <= 4u, "projection (cuda): unknown distribution");
  LORI_EXPECTS(p.kind != distribution::gaussian_v2 || p.scale <= 1e36f, "projection (cuda): gaussian_v2 sigma must be <= 1e36 (use make_projection_params)");
  LORI_EXPECTS(p.scale > 0.0f && p.scale <= 3.4e38f, "projection (cuda): params.scale must be finite and > 0 (use make_projection_params)");
  LORI_EXPECTS(p.kind != distribution::sparse || (p.threshold >= 1 && p.threshold <= (std::uint64_t{1} << 31)),
               "projection (cuda): sparse threshold out of range (use make_projection_params)");
}

inline std::size_t round_up16(std::size_t n) { return (n + 15) / 16 * 16; }

}  // namespace detail_proj

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
  detail_proj::validate_task(t);
  return t;
}

inline std::size_t projection_batch_workspace_bytes(index_t count) {
  LORI_EXPECTS(count >= 0, "projection_batch_workspace_bytes: count must be >= 0");
  // Entries are the same size for every T (a pointer and scalars); float's layout is used for sizing.
  const auto n = static_cast<std::size_t>(count);
  return detail_proj::round_up16(n * sizeof(detail_proj::projection_entry_storage<float>)) + detail_proj::round_up16((n + 1) * sizeof(index_t));
}

template <class T>
projection_batch_plan<T> prepare_projection_batch(const projection_task<T>* tasks, index_t count, void* workspace, std::size_t workspace_bytes,
                                                  cudaStream_t stream) {
  static_assert(sizeof(detail_proj::projection_entry_storage<T>) == sizeof(detail_proj::projection_entry_storage<float>), "entry layout");
  LORI_EXPECTS(count >= 0, "prepare_projection_batch: count must be >= 0");
  LORI_EXPECTS(tasks != nullptr || count == 0, "prepare_projection_batch: null task list");
  projection_batch_plan<T> plan;
  plan.count = count;
  if (count == 0) return plan;
  LORI_EXPECTS(workspace != nullptr, "prepare_projection_batch: null workspace");
  LORI_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0, "prepare_projection_batch: workspace must be 16-byte aligned");
  LORI_EXPECTS(workspace_bytes >= projection_batch_workspace_bytes(count), "prepare_projection_batch: workspace too small");
  const auto n = static_cast<std::size_t>(count);
  std::vector<detail_proj::projection_entry_storage<T>> entries(n);
  std::vector<index_t> starts(n + 1);
  index_t units = 0;
  for (std::size_t t = 0; t < n; ++t) {
    detail_proj::validate_task(tasks[t]);
    entries[t].e = detail_proj::make_entry(tasks[t]);
    starts[t] = units;
    units += tasks[t].rows * static_cast<index_t>(entries[t].e.upr);
    LORI_EXPECTS(units < (index_t{1} << 40), "prepare_projection_batch: batch too large for one launch");
    plan.gaussian_formats |= detail_proj::gaussian_format_bit(tasks[t].params.kind);
  }
  starts[n] = units;
  auto* base = static_cast<unsigned char*>(workspace);
  const std::size_t entry_bytes = detail_proj::round_up16(n * sizeof(detail_proj::projection_entry_storage<T>));
  LORI_CUDA_CHECK(cudaMemcpyAsync(base, entries.data(), n * sizeof(detail_proj::projection_entry_storage<T>), cudaMemcpyHostToDevice, stream));
  LORI_CUDA_CHECK(cudaMemcpyAsync(base + entry_bytes, starts.data(), (n + 1) * sizeof(index_t), cudaMemcpyHostToDevice, stream));
  plan.workspace = workspace;
  plan.units = units;
  if (units > 0) {
    using C = detail_proj::gaussian_cfg_lib<T>;
    if (plan.has_gaussian()) {
      detail_proj::with_gaussian_variant<T, detail_proj::projection_batch_source<T>, C>(
          plan.gaussian_formats, [&](auto kernel) { plan.blocks = detail_proj::projection_grid(kernel, units, detail_proj::gaussian_smem_bytes<C>); });
    } else {
      plan.blocks = detail_proj::projection_grid(detail_proj::projection_kernel<T, 0u, detail_proj::projection_batch_source<T>>, units, 0);
    }
  }
  return plan;
}

namespace detail_proj {
/// The launch of generate_projection_batch with `blocks` blocks (1 <= blocks; the library passes
/// plan.blocks, tests force small grids so that each block walks long ranges and many tasks) and
/// windows between block drains of the gaussian slow-path lists drain_period (0: the library's,
/// gaussian_drain_period; tests force 1 (a drain after every window) and 2^30 (none before the end of a
/// piece: the warps' lists overflow into warp drains)); rows = 0: no gaussian row path; C: the gaussian
/// kernel configuration (tests of others than the library's).
template <class T, class C = gaussian_cfg_lib<T>>
void launch_projection_batch(const projection_batch_plan<T>& plan, index_t blocks, cudaStream_t stream, unsigned drain_period = 0, unsigned rows = 1) {
  LORI_EXPECTS(plan.count >= 0 && plan.blocks >= 0 && plan.units >= 0, "generate_projection_batch: invalid plan");
  if (plan.units == 0) return;
  LORI_EXPECTS(plan.workspace != nullptr, "generate_projection_batch: plan has no workspace");
  LORI_EXPECTS(blocks >= 1 && blocks < (index_t{1} << 31), "generate_projection_batch: invalid block count");
  const auto n = static_cast<std::size_t>(plan.count);
  const auto* base = static_cast<const unsigned char*>(plan.workspace);
  const projection_batch_source<T> src{reinterpret_cast<const projection_entry_storage<T>*>(base),
                                       reinterpret_cast<const index_t*>(base + round_up16(n * sizeof(projection_entry_storage<T>))), plan.count};
  const projection_split split =
      make_projection_split(plan.units, blocks, plan.has_gaussian() ? gaussian_row_window<T, C> : 0,
                            drain_period > 0 ? drain_period : gaussian_drain_period<T, C>, rows);
  if (plan.has_gaussian()) {
    with_gaussian_variant<T, projection_batch_source<T>, C>(plan.gaussian_formats, [&](auto kernel) {
      // (prepare_projection_batch configured the library's variants: more than 48 KB of shared memory)
      if constexpr (!std::is_same_v<C, gaussian_cfg_lib<T>>) configure_projection_kernel(kernel, gaussian_smem_bytes<C>);
      kernel<<<static_cast<unsigned>(blocks), projection_threads, gaussian_smem_bytes<C>, stream>>>(src, split);
    });
  } else {
    projection_kernel<T, 0u><<<static_cast<unsigned>(blocks), projection_threads, 0, stream>>>(src, split);
  }
  LORI_CUDA_CHECK_LAUNCH();
}

/// Benchmarks of other gaussian kernel configurations C (than gaussian_cfg_lib) in one process: the
/// grid of C for a gaussian plan (one wave of its resident blocks; configures its kernel), and the
/// batch launch with C on that grid.
template <class C, class T>
index_t projection_grid_cfg(const projection_batch_plan<T>& plan) {
  LORI_EXPECTS(plan.has_gaussian() && plan.units > 0 && plan.workspace != nullptr, "projection_grid_cfg: needs a gaussian plan");
  index_t grid = 0;
  with_gaussian_variant<T, projection_batch_source<T>, C>(plan.gaussian_formats,
                                                          [&](auto kernel) { grid = projection_grid(kernel, plan.units, gaussian_smem_bytes<C>); });
  return grid;
}
template <class C, class T>
void launch_projection_batch_cfg(const projection_batch_plan<T>& plan, index_t blocks, cudaStream_t stream) {
  LORI_EXPECTS(plan.has_gaussian() && plan.units > 0 && plan.workspace != nullptr && blocks >= 1, "launch_projection_batch_cfg: needs a gaussian plan");
  const auto n = static_cast<std::size_t>(plan.count);
  const auto* base = static_cast<const unsigned char*>(plan.workspace);
  const projection_batch_source<T> src{reinterpret_cast<const projection_entry_storage<T>*>(base),
                                       reinterpret_cast<const index_t*>(base + round_up16(n * sizeof(projection_entry_storage<T>))), plan.count};
  with_gaussian_variant<T, projection_batch_source<T>, C>(plan.gaussian_formats, [&](auto kernel) {  // (configured by projection_grid_cfg)
    kernel<<<static_cast<unsigned>(blocks), projection_threads, gaussian_smem_bytes<C>, stream>>>(
        src, make_projection_split(plan.units, blocks, gaussian_row_window<T, C>, gaussian_drain_period<T, C>));
  });
  LORI_CUDA_CHECK_LAUNCH();
}

/// generate_projection with `blocks` blocks (blocks <= 0: the default grid, one wave at most) and
/// drain_period (0: the library's; see launch_projection_batch).
template <class T>
void generate_projection_blocks(row_major_view<T> out, std::uint64_t seed, std::uint64_t stream, const projection_spec& spec, index_t blocks,
                                cudaStream_t cuda_stream, unsigned drain_period = 0) {
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
  if (is_gaussian(t.params.kind)) {
    auto run = [&](auto kernel) {
      constexpr std::size_t smem = gaussian_smem_bytes<gaussian_cfg_lib<T>>;
      index_t grid = blocks;
      if (blocks > 0) {
        configure_projection_kernel(kernel, smem);
      } else {
        grid = projection_grid(kernel, units, smem);
      }
      kernel<<<static_cast<unsigned>(grid), projection_threads, smem, cuda_stream>>>(
          src, make_projection_split(units, grid, gaussian_row_window<T, gaussian_cfg_lib<T>>,
                                     drain_period > 0 ? drain_period : gaussian_drain_period<T, gaussian_cfg_lib<T>>));
    };
    if (t.params.kind == distribution::gaussian) {
      run(projection_kernel<T, 1u, projection_single_source<T>>);
    } else {
      run(projection_kernel<T, 2u, projection_single_source<T>>);
    }
  } else {
    const auto kernel = projection_kernel<T, 0u, projection_single_source<T>>;
    const index_t grid = blocks > 0 ? blocks : projection_grid(kernel, units, 0);
    kernel<<<static_cast<unsigned>(grid), projection_threads, 0, cuda_stream>>>(src, make_projection_split(units, grid, 0));
  }
  LORI_CUDA_CHECK_LAUNCH();
}
}  // namespace detail_proj

template <class T>
void generate_projection_batch(const projection_batch_plan<T>& plan, cudaStream_t stream) {
  detail_proj::launch_projection_batch(plan, plan.blocks, stream);
}

template <class T>
void generate_projection_batch(const projection_task<T>* tasks, index_t count, void* workspace, std::size_t workspace_bytes,
                               cudaStream_t stream) {
  generate_projection_batch(prepare_projection_batch(tasks, count, workspace, workspace_bytes, stream), stream);
}

template <class T>
void generate_projection(row_major_view<T> out, std::uint64_t seed, std::uint64_t stream, const projection_spec& spec,
                         cudaStream_t cuda_stream) {
  detail_proj::generate_projection_blocks(out, seed, stream, spec, 0, cuda_stream);
}

}  // namespace lori::cuda

#endif  // LORI_CUDA_PROJECTION_CUH
