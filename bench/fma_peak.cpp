#include "fma_peak.h"

#include <chrono>

#include "backend/cpu/cpu_features.h"

#if defined(__x86_64__)
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positives inside avx512fintrin.h
#include <immintrin.h>
#endif

namespace m2::bench {

namespace {
#if defined(__x86_64__)
// Ten independent 16-wide FMA chains (AVX-512 machines).
__attribute__((target("avx512f"))) double fma_loop_512(int64_t iterations) {
  __m512 a[10];
  for (int i = 0; i < 10; ++i) a[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < 10; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  __m512 s = a[0];
  for (int i = 1; i < 10; ++i) s = _mm512_add_ps(s, a[i]);
  return double(_mm512_reduce_add_ps(s));
}

// Ten independent vdpbf16ps chains (AVX512_BF16): 16 lanes × 2 bf16 multiply-adds per instruction.
__attribute__((target("avx512f,avx512bf16"))) double bf16_dot_loop_512(int64_t iterations) {
  __m512 a[10];
  for (int i = 0; i < 10; ++i) a[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512bh p = (__m512bh)_mm512_set1_epi16(0x3f80), q = (__m512bh)_mm512_set1_epi16(0x3400);  // 1.0, 2^-23
  for (int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < 10; ++i) a[i] = _mm512_dpbf16_ps(a[i], p, q);
  __m512 s = a[0];
  for (int i = 1; i < 10; ++i) s = _mm512_add_ps(s, a[i]);
  return double(_mm512_reduce_add_ps(s));
}
#endif

// Ten independent 8-wide FMA chains: enough to cover FMA latency × throughput on current cores.
#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
#endif
double fma_loop(int64_t iterations) {
#if defined(__x86_64__)
  __m256 a[10];
  for (int i = 0; i < 10; ++i) a[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < 10; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  float out[8];
  __m256 s = a[0];
  for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, a[i]);
  _mm256_storeu_ps(out, s);
  return double(out[0]);
#else
  float a[10][8] = {};
  for (int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < 10; ++i)
      for (int j = 0; j < 8; ++j) a[i][j] = a[i][j] * 0.999999f + 1e-7f;
  return double(a[0][0]);
#endif
}

// Runs loop(iterations) once on every thread of the pool: flop/s, given the flops of one iteration
// (ten chains of one instruction) on one thread.
template <typename Loop>
double peak_flops(ThreadPool& pool, Loop loop, double flops_per_iteration) {
  const int64_t iterations = 50'000'000;
  volatile double sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  pool.parallel_for(pool.size(), [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) sink = sink + loop(iterations);
  });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(pool.size()) * double(iterations) * flops_per_iteration / s;
}
}  // namespace

double fma_peak_flops(ThreadPool& pool) {
#if defined(__x86_64__)
  if (cpu_features().avx512) return peak_flops(pool, fma_loop_512, 10 * 16 * 2);
#endif
  return peak_flops(pool, fma_loop, 10 * 8 * 2);
}

double bf16_dot_peak_flops(ThreadPool& pool) {
#if defined(__x86_64__)
  if (cpu_features().avx512_bf16) return peak_flops(pool, bf16_dot_loop_512, 10 * 32 * 2);
#endif
  (void)pool;
  return 0;
}

}  // namespace m2::bench
