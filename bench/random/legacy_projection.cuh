// bench/random/legacy_projection.cuh - DIAGNOSTIC ONLY (session-3 checkpoints): the previous GPU
// projection kernels (one block per 1024-unit chunk, gaussian slow path deferred to a block-wide queue
// behind two block barriers), kept verbatim so that the new persistent kernel of lori/cuda/projection.cuh
// can be compared with them in the same benchmark run. Not part of the library.
#pragma once
#include "lori/cuda/device_buffer.cuh"
#include "lori/cuda/projection.cuh"

#include <vector>

namespace lori_legacy {
using namespace lori;
using namespace lori::cuda;
using namespace lori::cuda::detail;
constexpr int projection_threads = 256;
constexpr int projection_units_per_thread = 4;
constexpr index_t projection_units_per_block = index_t{projection_threads} * projection_units_per_thread;

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
    e.out[i * e.ld + j] = lori::cuda::detail::from_float<T>(x);
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


// The old launcher: block prefix sums instead of unit prefix sums, one block per chunk.
template <class T>
struct legacy_plan {
  lori::cuda::device_buffer<unsigned char> ws;
  index_t count = 0, blocks = 0;
  bool has_gaussian = false;
};

template <class T>
legacy_plan<T> legacy_prepare(const projection_task<T>* tasks, index_t count) {
  legacy_plan<T> plan;
  const auto n = static_cast<std::size_t>(count);
  std::vector<projection_entry_storage<T>> entries(n);
  std::vector<index_t> starts(n + 1);
  index_t blocks = 0;
  for (std::size_t t = 0; t < n; ++t) {
    entries[t].e = make_entry(tasks[t]);
    starts[t] = blocks;
    const index_t units = tasks[t].rows * static_cast<index_t>(entries[t].e.upr);
    blocks += (units + projection_units_per_block - 1) / projection_units_per_block;
    plan.has_gaussian = plan.has_gaussian || tasks[t].params.kind == distribution::gaussian;
  }
  starts[n] = blocks;
  const std::size_t entry_bytes = round_up16(n * sizeof(projection_entry_storage<T>));
  plan.ws = lori::cuda::device_buffer<unsigned char>(static_cast<index_t>(entry_bytes + (n + 1) * sizeof(index_t)));
  LORI_CUDA_CHECK(cudaMemcpy(plan.ws.data(), entries.data(), n * sizeof(projection_entry_storage<T>), cudaMemcpyHostToDevice));
  LORI_CUDA_CHECK(cudaMemcpy(plan.ws.data() + entry_bytes, starts.data(), (n + 1) * sizeof(index_t), cudaMemcpyHostToDevice));
  plan.count = count;
  plan.blocks = blocks;
  return plan;
}

template <class T>
void legacy_generate(const legacy_plan<T>& plan) {
  const auto n = static_cast<std::size_t>(plan.count);
  const auto* entries = reinterpret_cast<const projection_entry_storage<T>*>(plan.ws.data());
  const auto* starts = reinterpret_cast<const index_t*>(plan.ws.data() + round_up16(n * sizeof(projection_entry_storage<T>)));
  if (plan.has_gaussian) {
    projection_batch_kernel<T, true><<<static_cast<unsigned>(plan.blocks), projection_threads>>>(entries, starts, plan.count);
  } else {
    projection_batch_kernel<T, false><<<static_cast<unsigned>(plan.blocks), projection_threads>>>(entries, starts, plan.count);
  }
  LORI_CUDA_CHECK_LAUNCH();
}
}  // namespace lori_legacy
