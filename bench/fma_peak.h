// The fp32 FMA peak of this machine (AVX-512 FMA where the CPU has it, else AVX2, on every thread of
// the pool): the compute limit that prefill GFLOP/s is reported against.
#pragma once
#include "core/thread_pool.h"

namespace m2::bench {
double fma_peak_flops(ThreadPool& pool);  // flop/s, 1 FMA = 2 flops
// The same for vdpbf16ps (AVX512_BF16; 0 without it): the roof of the bf16-activation products
// (--activations q8-bf16), which do 32 multiply-adds per instruction where an fp32 FMA does 16.
double bf16_dot_peak_flops(ThreadPool& pool);  // flop/s, 1 multiply-add = 2 flops
}
