// Private: the static partitioning every lori CPU kernel uses for threads.
//
// Work is cut into a FIXED sequence of blocks whose boundaries depend only on the problem size (never
// on the thread count). Every output element is computed by exactly one block with the same arithmetic
// in the same order, whichever thread runs it, so results are bitwise identical for any thread count
// and any schedule. Threads are std::thread, started per call and joined before returning (no pool, no
// global state); the calling thread works too. Blocks are handed out dynamically, in runs of a few
// blocks from a shared atomic counter: a thread that is slowed down (a core shared with another
// process, a vCPU descheduled by the hypervisor) simply takes fewer runs instead of holding everyone
// up at the join, which a static split does. Exceptions thrown by a worker are re-thrown on the
// calling thread after all workers have joined (the others stop taking new runs).
#ifndef LORI_DETAIL_OPS_PARALLEL_HPP
#define LORI_DETAIL_OPS_PARALLEL_HPP

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"
#include "lori/error.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>
#include <vector>

namespace lori::detail {

/// Number of threads worth starting for `work` units when each thread should get at least `min_work`.
inline int ops_useful_threads(int threads, double work, double min_work) noexcept {
  if (threads <= 1 || !(work > 0)) return 1;
  const double cap = work / std::max(min_work, 1.0);
  if (cap < 2.0) return 1;
  return cap < static_cast<double>(threads) ? static_cast<int>(cap) : threads;
}

/// Calls f(block_begin, block_end) on runs of consecutive blocks covering [0, nblocks) exactly once,
/// on up to `threads` threads. Runs are ~nblocks / (8 threads) blocks long (at least 1), so f should keep
/// its per-call setup small next to a run's work.
template <class F>
void ops_parallel_blocks(index_t nblocks, int threads, F&& f) {
  if (nblocks <= 0) return;
  const index_t t = std::max<index_t>(1, std::min<index_t>(threads, nblocks));
  if (t == 1) {
    f(index_t{0}, nblocks);
    return;
  }
  const index_t grain = std::max<index_t>(1, nblocks / (8 * t));
  std::atomic<index_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(t));
  std::vector<std::thread> workers;
  workers.reserve(static_cast<std::size_t>(t - 1));
  auto run = [&](index_t w) {
    try {
      while (!failed.load(std::memory_order_relaxed)) {
        const index_t b = next.fetch_add(grain, std::memory_order_relaxed);
        if (b >= nblocks) break;
        f(b, std::min(nblocks, b + grain));
      }
    } catch (...) {
      errors[static_cast<std::size_t>(w)] = std::current_exception();
      failed.store(true, std::memory_order_relaxed);
    }
  };
  for (index_t w = 1; w < t; ++w) workers.emplace_back(run, w);
  run(0);
  for (auto& th : workers) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

/// Number of fixed optimizer chunks (lori/ops/optim.hpp's kOptimChunk elements each) covering `size`.
inline index_t ops_num_chunks(index_t size) noexcept { return (size + 4095) / 4096; }

inline void ops_check_threads(int threads, const char* msg) { LORI_EXPECTS(threads >= 1, msg); }

}  // namespace lori::detail

#endif  // LORI_DETAIL_OPS_PARALLEL_HPP
