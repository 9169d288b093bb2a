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
// Blocks of 256 threads take 1024 consecutive units of one matrix (row-major order), so one launch
// covers any mix of shapes with no idle blocks beyond one partial block per matrix.
// Gaussian blocks (ziggurat, lori/detail/random_ziggurat.hpp) read the layer table from shared memory
// and defer the ~1.5% slow-path elements: they are compacted into a per-block queue and finished by all
// threads after a barrier (see projection_chunk_gaussian). Launches without a gaussian task use a
// kernel variant without that code (fewer registers, full occupancy).
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
/// sum of block counts). O(1).
inline std::size_t projection_batch_workspace_bytes(index_t count);

/// A batch uploaded by prepare_projection_batch: valid while its workspace is, reusable for any number
/// of generate_projection_batch calls (each regenerates the same matrices).
template <class T>
struct projection_batch_plan {
  const void* workspace = nullptr;
  index_t count = 0;
  index_t blocks = 0;  ///< thread blocks of the one launch
  bool has_gaussian = false;  ///< some task is gaussian (selects the kernel variant)
};

/// Validates `count` host-side tasks and copies the batch description into `workspace` (device memory of
/// at least projection_batch_workspace_bytes(count) bytes, 16-byte aligned) on `stream`. The copy is
/// from pageable memory, so this call synchronises `stream` first (do it once, e.g. at model load).
/// The output ranges of different tasks must not overlap. Throws lori::error on invalid tasks, a null
/// or too small workspace.
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
constexpr int projection_units_per_thread = 4;
constexpr index_t projection_units_per_block = index_t{projection_threads} * projection_units_per_thread;

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

/// Stores the U values of unit c (elements j0 .. j0 + U - 1 of a row, clipped at cols) at dst:
/// one 16-byte vector store (two for double) when the unit is whole and the row start aligned.
template <class T, int U>
LORI_DEVICE LORI_FORCEINLINE void store_unit(const projection_entry<T>& e, T* dst, index_t j0, const float (&v)[U]) {
  const bool full = j0 + U <= e.cols;
  if constexpr (U == 4) {
    if (full && e.vec_ok) {
      if constexpr (std::is_same_v<T, float>) {
        *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
        reinterpret_cast<double2*>(dst)[0] = make_double2(v[0], v[1]);
        reinterpret_cast<double2*>(dst)[1] = make_double2(v[2], v[3]);
      }
    } else {
      for (int t = 0; t < 4; ++t)
        if (j0 + t < e.cols) dst[t] = static_cast<T>(v[t]);
    }
  } else {
    std::uint16_t h[8];
    for (int t = 0; t < 8; ++t) h[t] = narrow16<T>(v[t]);
    if (full && e.vec_ok) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(pack_pair(h[0], h[1]), pack_pair(h[2], h[3]), pack_pair(h[4], h[5]), pack_pair(h[6], h[7]));
    } else {
      for (int t = 0; t < 8; ++t)
        if (j0 + t < e.cols) dst[t] = T::from_bits(h[t]);
    }
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

/// Writes unit c of row i (elements unit*c .. unit*c + unit - 1, clipped at cols); not for gaussians.
template <distribution D, class T>
LORI_DEVICE LORI_FORCEINLINE void projection_unit(const projection_entry<T>& e, index_t i, std::uint32_t c) {
  constexpr int U = projection_traits<T>::unit;
  projection_params p = e.params;
  p.kind = D;  // compile-time distribution: the switch in projection_values_simple folds away
  const index_t j0 = static_cast<index_t>(c) * U;
  T* dst = e.out + i * e.ld + j0;
  const auto row = static_cast<std::uint32_t>(i);
  float v[U];
  for (int h = 0; h < U / 4; ++h) {
    const philox_block b = philox4x32_10_block(static_cast<std::uint32_t>(U / 4) * c + static_cast<std::uint32_t>(h), row, e.stream0, e.stream1,
                                               e.key0, e.key1);
    const float4_values x = projection_values_simple(p, b);
    for (int t = 0; t < 4; ++t) v[4 * h + t] = x.v[t];
  }
  store_unit<T, U>(e, dst, j0, v);
}

/// Block `chunk` of matrix e: units [chunk * 1024, chunk * 1024 + 1024) in row-major unit order.
/// Thread t takes units u0 + t + k * 256 (coalesced across the block for each k); f(i, c, k) is called
/// for each of them that exists.
template <class T, class F>
LORI_DEVICE LORI_FORCEINLINE void for_each_unit(const projection_entry<T>& e, index_t chunk, F&& f) {
  const index_t total = e.rows * static_cast<index_t>(e.upr);
  const index_t u0 = chunk * projection_units_per_block;
  const std::uint32_t upr = e.upr;
  index_t i = u0 / upr;  // once per thread
  const auto c0 = static_cast<std::uint32_t>(u0 - i * upr);
  std::uint32_t rel = c0 + threadIdx.x;
  std::uint32_t c = rel % upr;
  i += rel / upr;
  index_t u = u0 + threadIdx.x;
#pragma unroll
  for (int k = 0; k < projection_units_per_thread; ++k) {
    if (u < total) f(i, c, k);
    u += projection_threads;
    c += projection_threads;
    if (upr >= static_cast<std::uint32_t>(projection_threads)) {
      if (c >= upr) {
        c -= upr;
        ++i;
      }
    } else {
      i += c / upr;
      c %= upr;
    }
  }
}

template <distribution D, class T>
LORI_DEVICE LORI_FORCEINLINE void projection_chunk(const projection_entry<T>& e, index_t chunk) {
  for_each_unit(e, chunk, [&](index_t i, std::uint32_t c, int) { projection_unit<D>(e, i, c); });
}

/// Gaussian chunk (see lori/detail/random_ziggurat.hpp for the element formula).
/// Phase 1: every thread computes the ziggurat fast path of its units from a shared-memory copy of the
/// layer table (pre-scaled by sigma) and stores them; the ~1.5% elements that fail the fast test get a
/// placeholder and a bit in the thread's mask (bit k*U + t: element t of the thread's k-th unit).
/// Compaction: a block-wide exclusive scan of the mask popcounts gives each thread its slots in a
/// shared queue of 16-bit element positions. Phase 2, after a block barrier (which also orders the
/// global stores of phase 1 before the ones below): queued elements are spread over all threads; each
/// recomputes its main word, runs detail::gaussian_slow and overwrites the placeholder. So the slow
/// path costs ~2 warp-passes per block of 4096 elements instead of a divergent pass in nearly every
/// warp. The queue holds every element of the chunk: it cannot overflow. Must be called by all
/// threads of the block (barriers).
/// `layer` = lori::detail::zig_layers()[threadIdx.x], loaded by the kernel before it knows its task
/// (so that the load's latency overlaps the task search).
template <class T>
LORI_DEVICE LORI_FORCEINLINE void projection_chunk_gaussian(const projection_entry<T>& e, index_t chunk, const lori::detail::zig_layer& layer) {
  constexpr int U = projection_traits<T>::unit;
  constexpr int queue_capacity = static_cast<int>(projection_units_per_block) * U;
  constexpr int warps = projection_threads / 32;
  static_assert(queue_capacity <= 65536, "queue entries are 16-bit");
  static_assert(projection_units_per_thread * U <= 32, "one 32-bit slow mask per thread");
  static_assert(projection_threads == lori::detail::zig_layers_count, "one table entry per thread");
  __shared__ uint2 table_s[lori::detail::zig_layers_count];  // {k_L, bits(Ws_L)}
  __shared__ std::uint16_t queue_s[queue_capacity];
  __shared__ unsigned warp_total_s[warps];
  const float sigma = e.params.scale;
  table_s[threadIdx.x] = make_uint2(layer.k, float_bits(lori::detail::rnd_mul(layer.w, sigma)));
  __syncthreads();
  std::uint32_t mask = 0;
  for_each_unit(e, chunk, [&](index_t i, std::uint32_t c, int k) {
    const index_t j0 = static_cast<index_t>(c) * U;
    const auto row = static_cast<std::uint32_t>(i);
    float v[U];
    for (int h = 0; h < U / 4; ++h) {
      const philox_block b = philox4x32_10_block(static_cast<std::uint32_t>(U / 4) * c + static_cast<std::uint32_t>(h), row, e.stream0, e.stream1,
                                                 e.key0, e.key1);
      for (int t = 0; t < 4; ++t) {
        const std::uint32_t w = b.v[t];
        const uint2 z = table_s[w & 0xffu];
        v[4 * h + t] = lori::detail::zig_value(w, bits_float(z.y));
        if (lori::detail::zig_mbits(w) >= z.x) mask |= 1u << (k * U + 4 * h + t);
      }
    }
    store_unit<T, U>(e, e.out + i * e.ld + j0, j0, v);
  });
  // Block-wide exclusive scan of popc(mask): warp scan by shuffles, then the warp totals.
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const unsigned count = static_cast<unsigned>(__popc(mask));
  unsigned incl = count;
#pragma unroll
  for (unsigned o = 1; o < 32; o <<= 1) {
    const unsigned y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31u) warp_total_s[warp] = incl;
  __syncthreads();
  unsigned offset = incl - count, total = 0;
#pragma unroll
  for (unsigned w = 0; w < static_cast<unsigned>(warps); ++w) {
    const unsigned t = warp_total_s[w];
    offset += w < warp ? t : 0u;
    total += t;
  }
  while (mask != 0u) {
    const int bit = __ffs(static_cast<int>(mask)) - 1;
    mask &= mask - 1u;
    const int ku = (bit / U) * projection_threads + static_cast<int>(threadIdx.x);
    queue_s[offset++] = static_cast<std::uint16_t>(ku * U + bit % U);
  }
  __syncthreads();
  const index_t u0 = chunk * projection_units_per_block;
  counter_rng gk;
  gk.key0 = e.key0;
  gk.key1 = e.key1;
  gk.stream0 = e.stream0;
  gk.stream1 = e.stream1;
  if (threadIdx.x >= total) return;
  // Unit u0 + x is (row i0 + (c0 + x) / upr, column (c0 + x) % upr): 32-bit arithmetic per element
  // (c0 + x < upr + 1024 < 2^32 since cols < 2^31).
  const index_t i0 = u0 / e.upr;
  const auto c0 = static_cast<std::uint32_t>(u0 - i0 * e.upr);
  for (unsigned q = threadIdx.x; q < total; q += projection_threads) {
    const unsigned rel = queue_s[q];
    const std::uint32_t cc = c0 + rel / U;
    const index_t i = i0 + cc / e.upr;
    const index_t j = static_cast<index_t>(cc % e.upr) * U + rel % U;
    if (j >= e.cols) continue;  // beyond the row end of a partial unit: never stored
    const auto row = static_cast<std::uint32_t>(i);
    const philox_block b = philox4x32_10_block(static_cast<std::uint32_t>(j >> 2), row, e.stream0, e.stream1, e.key0, e.key1);
    const std::uint32_t w = lori::detail::block_word(b, static_cast<int>(j & 3));
    const float x = lori::detail::gaussian_slow(w, sigma, gk, row, static_cast<std::uint64_t>(j));
    e.out[i * e.ld + j] = from_float<T>(x);
  }
}

/// WithGaussian: the kernel contains the gaussian path (shared memory, barriers, more registers); the
/// host launches the variant without it when no task of the launch is gaussian.
template <bool WithGaussian, class T>
LORI_DEVICE LORI_FORCEINLINE void projection_chunk_dispatch(const projection_entry<T>& e, index_t chunk, const lori::detail::zig_layer& layer) {
  switch (e.params.kind) {
    case distribution::kaiming_uniform: projection_chunk<distribution::kaiming_uniform>(e, chunk); break;
    case distribution::gaussian:
      if constexpr (WithGaussian) projection_chunk_gaussian(e, chunk, layer);
      break;
    case distribution::rademacher: projection_chunk<distribution::rademacher>(e, chunk); break;
    case distribution::sparse: projection_chunk<distribution::sparse>(e, chunk); break;
  }
}

// Minimum blocks per SM: 8 (all 2048 threads) without the gaussian path; 6 with it (caps registers at 40).
template <bool WithGaussian>
constexpr int projection_min_blocks = WithGaussian ? 6 : 8;

template <class T, bool WithGaussian>
__global__ void __launch_bounds__(projection_threads, projection_min_blocks<WithGaussian>) projection_single_kernel(projection_entry<T> e) {
  lori::detail::zig_layer layer{};
  if constexpr (WithGaussian) layer = lori::detail::zig_layers()[threadIdx.x];
  projection_chunk_dispatch<WithGaussian>(e, static_cast<index_t>(blockIdx.x), layer);
}

template <class T, bool WithGaussian>
__global__ void __launch_bounds__(projection_threads, projection_min_blocks<WithGaussian>)
    projection_batch_kernel(const projection_entry_storage<T>* __restrict__ entries, const index_t* __restrict__ block_start, index_t count) {
  __shared__ index_t task_s;
  // The gaussian's table entry, loaded first: its latency overlaps the search below.
  lori::detail::zig_layer layer{};
  if constexpr (WithGaussian) layer = lori::detail::zig_layers()[threadIdx.x];
  const auto b = static_cast<index_t>(blockIdx.x);
  if (threadIdx.x < 32) {
    // Last task whose first block is <= b (tasks with no blocks have equal starts and are skipped):
    // a 32-ary search by warp 0 (2 dependent loads for 224 tasks instead of 8). Invariant:
    // block_start[lo] <= b (block_start[0] = 0) and the answer is < hi; the starts are non-decreasing,
    // so the probes that pass form a prefix and the last one narrows the range 32-fold.
    const auto lane = static_cast<index_t>(threadIdx.x);
    index_t lo = 0, hi = count;
    while (hi - lo > 1) {
      const index_t step = (hi - lo + 31) / 32;
      const index_t p = lo + lane * step;
      const bool ok = p < hi && block_start[p] <= b;
      const unsigned passed = __ballot_sync(0xffffffffu, ok);  // bit 0 (p = lo) is always set
      const auto last = static_cast<index_t>(31 - __clz(static_cast<int>(passed)));
      const index_t end = lo + (last + 1) * step;
      lo += last * step;
      hi = end < hi ? end : hi;
    }
    if (threadIdx.x == 0) task_s = lo;
  }
  __syncthreads();
  const index_t t = task_s;
  const projection_entry<T> e = entries[t].e;
  projection_chunk_dispatch<WithGaussian>(e, b - block_start[t], layer);
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
  index_t blocks = 0;
  for (std::size_t t = 0; t < n; ++t) {
    detail::validate_task(tasks[t]);
    entries[t].e = detail::make_entry(tasks[t]);
    starts[t] = blocks;
    const index_t units = tasks[t].rows * static_cast<index_t>(entries[t].e.upr);
    blocks += (units + detail::projection_units_per_block - 1) / detail::projection_units_per_block;
    plan.has_gaussian = plan.has_gaussian || tasks[t].params.kind == distribution::gaussian;
  }
  starts[n] = blocks;
  LORI_EXPECTS(blocks < (index_t{1} << 31), "prepare_projection_batch: batch too large for one launch");
  auto* base = static_cast<unsigned char*>(workspace);
  const std::size_t entry_bytes = detail::round_up16(n * sizeof(detail::projection_entry_storage<T>));
  LORI_CUDA_CHECK(cudaMemcpyAsync(base, entries.data(), n * sizeof(detail::projection_entry_storage<T>), cudaMemcpyHostToDevice, stream));
  LORI_CUDA_CHECK(cudaMemcpyAsync(base + entry_bytes, starts.data(), (n + 1) * sizeof(index_t), cudaMemcpyHostToDevice, stream));
  plan.workspace = workspace;
  plan.blocks = blocks;
  return plan;
}

template <class T>
void generate_projection_batch(const projection_batch_plan<T>& plan, cudaStream_t stream) {
  LORI_EXPECTS(plan.count >= 0 && plan.blocks >= 0, "generate_projection_batch: invalid plan");
  if (plan.blocks == 0) return;
  LORI_EXPECTS(plan.workspace != nullptr, "generate_projection_batch: plan has no workspace");
  const auto n = static_cast<std::size_t>(plan.count);
  const auto* base = static_cast<const unsigned char*>(plan.workspace);
  const auto* entries = reinterpret_cast<const detail::projection_entry_storage<T>*>(base);
  const auto* starts = reinterpret_cast<const index_t*>(base + detail::round_up16(n * sizeof(detail::projection_entry_storage<T>)));
  if (plan.has_gaussian) {
    detail::projection_batch_kernel<T, true><<<static_cast<unsigned>(plan.blocks), detail::projection_threads, 0, stream>>>(entries, starts, plan.count);
  } else {
    detail::projection_batch_kernel<T, false><<<static_cast<unsigned>(plan.blocks), detail::projection_threads, 0, stream>>>(entries, starts, plan.count);
  }
  LORI_CUDA_CHECK_LAUNCH();
}

template <class T>
void generate_projection_batch(const projection_task<T>* tasks, index_t count, void* workspace, std::size_t workspace_bytes,
                               cudaStream_t stream) {
  generate_projection_batch(prepare_projection_batch(tasks, count, workspace, workspace_bytes, stream), stream);
}

template <class T>
void generate_projection(row_major_view<T> out, std::uint64_t seed, std::uint64_t stream, const projection_spec& spec,
                         cudaStream_t cuda_stream) {
  const projection_task<T> t = make_projection_task(out.data(), out.rows(), out.cols(), seed, stream, spec, out.ld());
  const detail::projection_entry<T> e = detail::make_entry(t);
  const index_t units = t.rows * static_cast<index_t>(e.upr);
  const index_t blocks = (units + detail::projection_units_per_block - 1) / detail::projection_units_per_block;
  if (blocks == 0) return;
  LORI_EXPECTS(blocks < (index_t{1} << 31), "generate_projection (cuda): matrix too large for one launch");
  if (t.params.kind == distribution::gaussian) {
    detail::projection_single_kernel<T, true><<<static_cast<unsigned>(blocks), detail::projection_threads, 0, cuda_stream>>>(e);
  } else {
    detail::projection_single_kernel<T, false><<<static_cast<unsigned>(blocks), detail::projection_threads, 0, cuda_stream>>>(e);
  }
  LORI_CUDA_CHECK_LAUNCH();
}

}  // namespace lori::cuda

#endif  // LORI_CUDA_PROJECTION_CUH
