#include "read_bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positive inside _mm512_reduce_add_ps
#endif

namespace m2::bench {

namespace {

volatile float g_sink;  // keeps the sums alive

}  // namespace

#if defined(__x86_64__)
__attribute__((target("avx2"))) float read_sum_avx2(const float* p, size_t n) {
  // Four streams (the quarters of the slice) × two accumulators each.
  const size_t q = n / 4 / 16 * 16;
  __m256 a[8];
  for (auto& v : a) v = _mm256_setzero_ps();
  for (size_t i = 0; i < q; i += 16)
    for (int s = 0; s < 4; ++s) {
      a[2 * s] = _mm256_add_ps(a[2 * s], _mm256_load_ps(p + s * q + i));
      a[2 * s + 1] = _mm256_add_ps(a[2 * s + 1], _mm256_load_ps(p + s * q + i + 8));
    }
  for (int i = 1; i < 8; ++i) a[0] = _mm256_add_ps(a[0], a[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, a[0]);
  float s = 0;
  for (float v : out) s += v;
  return s;
}
#endif

namespace {

#if defined(__x86_64__)

// AVX-512 hosts: four streams of 64-byte loads, each prefetched 4 KiB ahead (measured on a Xeon with
// AVX-512: ~5% above the AVX2 kernel; the limit is the better of the two).
__attribute__((target("avx512f"))) float sum_avx512(const float* p, size_t n) {
  const size_t q = n / 4 / 16 * 16;
  __m512 a[4];
  for (auto& v : a) v = _mm512_setzero_ps();
  for (size_t i = 0; i < q; i += 16)
    for (int s = 0; s < 4; ++s) {
      _mm_prefetch(reinterpret_cast<const char*>(p + s * q + i + 1024), _MM_HINT_T0);
      a[s] = _mm512_add_ps(a[s], _mm512_load_ps(p + s * q + i));
    }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
}
#endif

float sum_generic(const float* p, size_t n) {
  const size_t q = n / 4 / 8 * 8;
  float a[32] = {};
  for (size_t i = 0; i < q; i += 8)
    for (int s = 0; s < 4; ++s)
      for (int j = 0; j < 8; ++j) a[s * 8 + j] += p[s * q + i + j];
  float s = 0;
  for (float v : a) s += v;
  return s;
}

}  // namespace

ReadBuffer::ReadBuffer(size_t bytes) : n_(bytes / 4), buf_(static_cast<float*>(std::aligned_alloc(64, bytes / 4 * 4))) {
  for (size_t i = 0; i < n_; ++i) buf_[i] = float(i & 1023);
}

ReadBuffer::~ReadBuffer() { std::free(buf_); }

double ReadBuffer::measure(ThreadPool& pool, int reps) const {
  const int threads = pool.size();
  const size_t per = n_ / size_t(threads) / 64 * 64;  // floats per thread, 256-byte aligned
  const bool avx2 = cpu_features().avx2_fma_f16c, avx512 = cpu_features().avx512;
  double best = 0;
  for (int r = 0; r < (avx512 ? 2 * reps : reps); ++r) {
    const bool wide = avx512 && r % 2 == 1;  // AVX-512 hosts alternate the two kernels
    auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(threads, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        const float* p = buf_ + size_t(t) * per;
#if defined(__x86_64__)
        g_sink = wide ? sum_avx512(p, per) : avx2 ? read_sum_avx2(p, per) : sum_generic(p, per);
#else
        (void)avx2, (void)wide;
        g_sink = sum_generic(p, per);
#endif
      }
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(per * size_t(threads) * 4) / s);
  }
  return best;
}

double read_bandwidth(ThreadPool& pool, size_t bytes, int reps) { return ReadBuffer(bytes).measure(pool, reps); }

}  // namespace m2::bench
