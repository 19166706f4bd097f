// The fp32 FMA peak of this machine (AVX-512 FMA where the CPU has it, else AVX2, on every thread of
// the pool): the compute limit that prefill GFLOP/s is reported against.
#pragma once
#include "core/thread_pool.h"

namespace m2::bench {
double fma_peak_flops(ThreadPool& pool);  // flop/s, 1 FMA = 2 flops
}
