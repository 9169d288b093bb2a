// Private: the static partitioning every lori CPU kernel uses for threads.
//
// Work is cut into a FIXED sequence of blocks whose boundaries depend only on the problem size (never
// on the thread count); threads take contiguous runs of whole blocks. Every output element is computed
// by exactly one block with the same arithmetic in the same order, so results are bitwise identical
// for any thread count. Threads are std::thread, started per call and joined before returning (no
// pool, no global state); the calling thread does the first share. Exceptions thrown by a worker are
// re-thrown on the calling thread after all workers have joined.
#ifndef LORI_DETAIL_OPS_PARALLEL_HPP
#define LORI_DETAIL_OPS_PARALLEL_HPP

#include "lori/config.hpp"
#include "lori/detail/internal_header_check.hpp"
#include "lori/error.hpp"

#include <algorithm>
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

/// Calls f(block_begin, block_end) over [0, nblocks) split into `threads` contiguous runs.
template <class F>
void ops_parallel_blocks(index_t nblocks, int threads, F&& f) {
  if (nblocks <= 0) return;
  const index_t t = std::max<index_t>(1, std::min<index_t>(threads, nblocks));
  if (t == 1) {
    f(index_t{0}, nblocks);
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(t));
  std::vector<std::thread> workers;
  workers.reserve(static_cast<std::size_t>(t - 1));
  auto run = [&](index_t w) {
    const index_t b = nblocks * w / t, e = nblocks * (w + 1) / t;
    try {
      if (b < e) f(b, e);
    } catch (...) {
      errors[static_cast<std::size_t>(w)] = std::current_exception();
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
