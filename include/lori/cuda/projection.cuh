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

/// Writes unit c of row i (elements unit*c .. unit*c + unit - 1, clipped at cols).
template <distribution D, class T>
LORI_DEVICE LORI_FORCEINLINE void projection_unit(const projection_entry<T>& e, index_t i, std::uint32_t c) {
  constexpr int U = projection_traits<T>::unit;
  projection_params p = e.params;
  p.kind = D;  // compile-time distribution: the switch in projection_values folds away
  const index_t j0 = static_cast<index_t>(c) * U;
  T* dst = e.out + i * e.ld + j0;
  const bool full = j0 + U <= e.cols;
  const auto row = static_cast<std::uint32_t>(i);
  if constexpr (U == 4) {
    const philox_block b = philox4x32_10_block(c, row, e.stream0, e.stream1, e.key0, e.key1);
    const float4_values v = projection_values(p, b);
    if (full && e.vec_ok) {
      if constexpr (std::is_same_v<T, float>) {
        *reinterpret_cast<float4*>(dst) = make_float4(v.v[0], v.v[1], v.v[2], v.v[3]);
      } else {
        reinterpret_cast<double2*>(dst)[0] = make_double2(v.v[0], v.v[1]);
        reinterpret_cast<double2*>(dst)[1] = make_double2(v.v[2], v.v[3]);
      }
    } else {
      for (int t = 0; t < 4; ++t)
        if (j0 + t < e.cols) dst[t] = static_cast<T>(v.v[t]);
    }
  } else {
    const philox_block b0 = philox4x32_10_block(2u * c, row, e.stream0, e.stream1, e.key0, e.key1);
    const philox_block b1 = philox4x32_10_block(2u * c + 1u, row, e.stream0, e.stream1, e.key0, e.key1);
    const float4_values v0 = projection_values(p, b0);
    const float4_values v1 = projection_values(p, b1);
    std::uint16_t h[8];
    for (int t = 0; t < 4; ++t) {
      h[t] = narrow16<T>(v0.v[t]);
      h[4 + t] = narrow16<T>(v1.v[t]);
    }
    if (full && e.vec_ok) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(pack_pair(h[0], h[1]), pack_pair(h[2], h[3]), pack_pair(h[4], h[5]), pack_pair(h[6], h[7]));
    } else {
      for (int t = 0; t < 8; ++t)
        if (j0 + t < e.cols) dst[t] = T::from_bits(h[t]);
    }
  }
}

/// Block `chunk` of matrix e: units [chunk * 1024, chunk * 1024 + 1024) in row-major unit order.
template <distribution D, class T>
LORI_DEVICE LORI_FORCEINLINE void projection_chunk(const projection_entry<T>& e, index_t chunk) {
  const index_t total = e.rows * static_cast<index_t>(e.upr);
  const index_t u0 = chunk * projection_units_per_block;
  const std::uint32_t upr = e.upr;
  index_t i = u0 / upr;  // once per thread
  const auto c0 = static_cast<std::uint32_t>(u0 - i * upr);
  // Thread t takes units u0 + t + k * 256 (coalesced across the block for each k).
  std::uint32_t rel = c0 + threadIdx.x;
  std::uint32_t c = rel % upr;
  i += rel / upr;
  index_t u = u0 + threadIdx.x;
#pragma unroll
  for (int k = 0; k < projection_units_per_thread; ++k) {
    if (u >= total) return;
    projection_unit<D>(e, i, c);
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

template <class T>
LORI_DEVICE LORI_FORCEINLINE void projection_chunk_dispatch(const projection_entry<T>& e, index_t chunk) {
  switch (e.params.kind) {
    case distribution::kaiming_uniform: projection_chunk<distribution::kaiming_uniform>(e, chunk); break;
    case distribution::gaussian: projection_chunk<distribution::gaussian>(e, chunk); break;
    case distribution::rademacher: projection_chunk<distribution::rademacher>(e, chunk); break;
    case distribution::sparse: projection_chunk<distribution::sparse>(e, chunk); break;
  }
}

template <class T>
__global__ void __launch_bounds__(projection_threads) projection_single_kernel(projection_entry<T> e) {
  projection_chunk_dispatch(e, static_cast<index_t>(blockIdx.x));
}

template <class T>
__global__ void __launch_bounds__(projection_threads)
    projection_batch_kernel(const projection_entry_storage<T>* __restrict__ entries, const index_t* __restrict__ block_start, index_t count) {
  __shared__ index_t task_s;
  const auto b = static_cast<index_t>(blockIdx.x);
  if (threadIdx.x == 0) {
    // Last task whose first block is <= b (tasks with no blocks have equal starts and are skipped).
    index_t lo = 0, hi = count - 1;
    while (lo < hi) {
      const index_t mid = (lo + hi + 1) / 2;
      if (block_start[mid] <= b)
        lo = mid;
      else
        hi = mid - 1;
    }
    task_s = lo;
  }
  __syncthreads();
  const index_t t = task_s;
  const projection_entry<T> e = entries[t].e;
  projection_chunk_dispatch(e, b - block_start[t]);
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
  const std::size_t entry_bytes = detail::round_up16(n * sizeof(detail::projection_entry_storage<T>));
  std::vector<unsigned char> host(projection_batch_workspace_bytes(count), 0);
  auto* entries = reinterpret_cast<detail::projection_entry_storage<T>*>(host.data());
  auto* starts = reinterpret_cast<index_t*>(host.data() + entry_bytes);
  index_t blocks = 0;
  for (std::size_t t = 0; t < n; ++t) {
    detail::validate_task(tasks[t]);
    entries[t].e = detail::make_entry(tasks[t]);
    starts[t] = blocks;
    const index_t units = tasks[t].rows * static_cast<index_t>(entries[t].e.upr);
    blocks += (units + detail::projection_units_per_block - 1) / detail::projection_units_per_block;
  }
  starts[n] = blocks;
  LORI_EXPECTS(blocks < (index_t{1} << 31), "prepare_projection_batch: batch too large for one launch");
  LORI_CUDA_CHECK(cudaMemcpyAsync(workspace, host.data(), host.size(), cudaMemcpyHostToDevice, stream));
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
  detail::projection_batch_kernel<T><<<static_cast<unsigned>(plan.blocks), detail::projection_threads, 0, stream>>>(entries, starts, plan.count);
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
  detail::projection_single_kernel<T><<<static_cast<unsigned>(blocks), detail::projection_threads, 0, cuda_stream>>>(e);
  LORI_CUDA_CHECK_LAUNCH();
}

}  // namespace lori::cuda

#endif  // LORI_CUDA_PROJECTION_CUH
