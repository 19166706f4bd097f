// The read bandwidth of this machine: the limit memory-bound decode is reported against. Each thread
// of the pool sums its share of a 1 GiB buffer as four interleaved streams with eight independent
// vector accumulators (AVX2 where the CPU has it), so neither the add latency nor a single stream's
// prefetching limits it; AVX-512 hosts also run a 64-byte-load kernel with software prefetch, and the
// better of the two counts. Bytes read per second, best of `reps` (of each kernel).
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/thread_pool.h"

namespace m2::bench {
double read_bandwidth(ThreadPool& pool, size_t bytes = size_t(1) << 30, int reps = 5);

#if defined(__x86_64__)
// The AVX2 read kernel on one thread's slice: four streams (its quarters) × two accumulators.
float read_sum_avx2(const float* p, size_t n);
#endif

// The same kernels over a buffer filled once, for benchmarks that measure the limit many times
// beside the work they compare with it (the VM's bandwidth moves within a second).
class ReadBuffer {
 public:
  explicit ReadBuffer(size_t bytes);
  ~ReadBuffer();
  ReadBuffer(const ReadBuffer&) = delete;
  ReadBuffer& operator=(const ReadBuffer&) = delete;
  double measure(ThreadPool& pool, int reps) const;  // bytes read per second, best of `reps`

 private:
  size_t n_;   // floats
  float* buf_;  // [n_]
};

// The q-quantile (0 ≤ q ≤ 1, nearest rank) of measurements taken in turn with a limit; v not empty.
inline double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[size_t(q * double(v.size() - 1) + 0.5)];
}
}
