// The memory-copy bandwidth of this machine, measured with every thread of a pool: the limit that
// memory-bound kernels are reported against.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "core/thread_pool.h"

namespace m2::bench {

// Bytes copied per second (each byte read once and written once), best of `reps`.
inline double copy_bandwidth(ThreadPool& pool, size_t bytes = size_t(1) << 30, int reps = 5) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(int64_t(bytes >> 20), [&](int64_t b, int64_t e, int) {
      std::memcpy(dst.data() + (b << 20), src.data() + (b << 20), size_t(e - b) << 20);
    });
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(bytes) / s);
  }
  return best;
}

}  // namespace m2::bench
