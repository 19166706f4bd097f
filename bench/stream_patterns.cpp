// Which access pattern and how much work per byte let a 1-token BF16 gemv read at the read kernel's
// rate. Two threads stream 96 matrices [1536, 3072] of bf16 (900 MB) with one pattern, then run
// the read kernel (4 streams × 2 accumulators, AVX2) over a 256 MiB buffer; the ratio of the two
// rates is kept per pair, and patterns are taken in turn, so every pattern meets the VM's fast and
// slow moments alike. Prints each pattern's median ratio and its 10th / 90th percentiles.
//   build/release/bench/stream_patterns [rounds per pattern, default 20]
// The patterns (every one reads each weight byte once; thread t takes rows [768 t, 768 t + 768)):
//   read kernel on the weights  the read kernel's own loop over each thread's half of each matrix
//   adds                        4 rows at a time, each 32 bytes added to an accumulator (no x)
//   dot                         4 rows at a time, bf16 × fp32 x as m2's AVX2 gemv computes it
//                               (<< 16 / & 0xFFFF0000, 4 FMAs and 4 loads of x per 64 bytes)
//   dot, x once per 4 rows      the same, x's 4 vectors loaded once per 32 columns for the 4 rows
//   dot, prefetch 2 passes      dot + one prefetch into L2 per row and 64 bytes, 8 rows ahead
//                               (m2's gemv)
//   dot, ranges in turn         dot + prefetch over 16 ranges of 96 rows taken alternately by the
//                               threads (m2's split of a product, kLinearChunksPerThread = 8)
//   dot, quarter streams        dot over rows r, r + q, r + 2q, r + 3q (q: a quarter of the
//                               thread's rows): 4 long sequential streams, as the read kernel
//   dot, quarter streams,       the same + one prefetch into L2 per row and 64 bytes, 2 rows
//     prefetch 2 rows           ahead in each stream (tried in m2's gemv, not kept: BENCHMARKS.md)
//   dot, quarter streams,       the same over the 16 ranges of 96 rows taken alternately (m2's
//     ranges in turn            split of one [1536, 3072] product: streams of 24 rows)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "read_bandwidth.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace {

volatile float g_sink;
constexpr size_t kRowBytes = 2 * 3072, kRows = 1536, kMatrixBytes = kRowBytes * kRows, kMatrices = 96;

float read_kernel(const char* bytes, size_t n_bytes) {
  return m2::bench::read_sum_avx2(reinterpret_cast<const float*>(bytes), n_bytes / 4);
}

enum class Op { Adds, Dot, DotXOnce };

// Rows [r0, r1) of one matrix, 4 at a time: consecutive rows, or (Quarter) one from each quarter.
// Ahead: prefetch distance in bytes (0: none).
template <Op O, bool Quarter, size_t Ahead>
__attribute__((target("avx2,fma"))) float rows4(const char* m, size_t r0, size_t r1, const float* x) {
  __m256 acc[4][2];
  for (auto& a : acc) a[0] = a[1] = _mm256_setzero_ps();
  const __m256i odd = _mm256_set1_epi32(int(0xFFFF0000u));
  const size_t q = (r1 - r0) / 4;
  for (size_t j = 0; j < q; ++j) {
    const char* rows[4];
    for (int i = 0; i < 4; ++i) rows[i] = m + (Quarter ? r0 + i * q + j : r0 + 4 * j + i) * kRowBytes;
    for (size_t k = 0; k < 3072; k += 32) {
      if constexpr (Ahead > 0)
        for (int i = 0; i < 4; ++i) _mm_prefetch(rows[i] + 2 * k + Ahead, _MM_HINT_T1);
      const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
      const __m256 x2 = _mm256_loadu_ps(x + k + 16), x3 = _mm256_loadu_ps(x + k + 24);
      for (int i = 0; i < 4; ++i) {
        const __m256i lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(rows[i] + 2 * k));
        const __m256i hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(rows[i] + 2 * k + 32));
        if constexpr (O == Op::Adds) {
          acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_castsi256_ps(lo));
          acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_castsi256_ps(hi));
          continue;
        }
        const bool once = O == Op::DotXOnce;
        acc[i][0] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(lo, 16)), once ? x0 : _mm256_loadu_ps(x + k), acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(lo, odd)), once ? x2 : _mm256_loadu_ps(x + k + 16), acc[i][1]);
        acc[i][0] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(hi, 16)), once ? x1 : _mm256_loadu_ps(x + k + 8), acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(hi, odd)), once ? x3 : _mm256_loadu_ps(x + k + 24), acc[i][1]);
      }
    }
  }
  __m256 s = _mm256_setzero_ps();
  for (auto& a : acc) s = _mm256_add_ps(s, _mm256_add_ps(a[0], a[1]));
  return _mm256_cvtss_f32(s);
}

using RowsFn = float (*)(const char*, size_t, size_t, const float*);

struct Pattern {
  const char* name;
  RowsFn rows;       // nullptr: the read kernel on the weights
  bool ranges_in_turn;
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  char* weights = static_cast<char*>(std::aligned_alloc(4096, kMatrixBytes * kMatrices));
  for (size_t i = 0; i < kMatrixBytes * kMatrices / 4; ++i) reinterpret_cast<float*>(weights)[i] = float(i & 1023) * 1e-3f;
  const size_t read_bytes = size_t(256) << 20;
  char* buffer = static_cast<char*>(std::aligned_alloc(4096, read_bytes));
  std::memset(buffer, 1, read_bytes);
  float* x = static_cast<float*>(std::aligned_alloc(64, 3072 * 4));
  for (int i = 0; i < 3072; ++i) x[i] = 0.001f * float(i);

  constexpr size_t kAhead = 8 * kRowBytes;
  const Pattern patterns[] = {
      {"read kernel on the weights", nullptr, false},
      {"adds", rows4<Op::Adds, false, 0>, false},
      {"dot", rows4<Op::Dot, false, 0>, false},
      {"dot, x once per 4 rows", rows4<Op::DotXOnce, false, 0>, false},
      {"dot, prefetch 2 passes", rows4<Op::Dot, false, kAhead>, false},
      {"dot, ranges in turn", rows4<Op::Dot, false, kAhead>, true},
      {"dot, quarter streams", rows4<Op::Dot, true, 0>, false},
      {"dot, quarter streams, prefetch 2 rows", rows4<Op::Dot, true, 2 * kRowBytes>, false},
      {"dot, quarter streams, ranges in turn", rows4<Op::Dot, true, 2 * kRowBytes>, true},
  };
  constexpr int P = sizeof(patterns) / sizeof(patterns[0]);
  auto two_threads = [](auto f) {
    const auto t0 = std::chrono::steady_clock::now();
    std::thread other([&] { f(1); });
    f(0);
    other.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  std::vector<double> ratio[P], limit;
  for (int it = 0; it < rounds * P; ++it) {
    const double lim = double(read_bytes) / two_threads([&](int t) {
      g_sink = read_kernel(buffer + size_t(t) * read_bytes / 2, read_bytes / 2);
    });
    const Pattern& p = patterns[it % P];
    const double s = two_threads([&](int t) {
      for (size_t j = 0; j < kMatrices; ++j) {
        const char* m = weights + j * kMatrixBytes;
        if (!p.rows) {
          g_sink = read_kernel(m + size_t(t) * kMatrixBytes / 2, kMatrixBytes / 2);
        } else if (p.ranges_in_turn) {
          for (size_t c = size_t(t); c < 16; c += 2) g_sink = p.rows(m, c * 96, c * 96 + 96, x);
        } else {
          g_sink = p.rows(m, size_t(t) * kRows / 2, size_t(t + 1) * kRows / 2, x);
        }
      }
    });
    ratio[it % P].push_back(double(kMatrixBytes * kMatrices) / s / lim);
    limit.push_back(lim);
  }
  const auto at = m2::bench::quantile;
  std::printf("read limit (256 MiB, 2 threads): median %.1f GB/s, 10th-90th percentile %.1f-%.1f\n", at(limit, 0.5) / 1e9,
              at(limit, 0.1) / 1e9, at(limit, 0.9) / 1e9);
  std::printf("| pattern | rate / read limit beside it, median | 10th-90th percentile |\n|---|---|---|\n");
  for (int i = 0; i < P; ++i)
    std::printf("| %s | %.3f | %.3f-%.3f |\n", patterns[i].name, at(ratio[i], 0.5), at(ratio[i], 0.1), at(ratio[i], 0.9));
  std::free(weights);
  std::free(buffer);
  std::free(x);
}
#else
int main() {
  std::puts("stream_patterns: x86-64 (AVX2) only");
  return 0;
}
#endif
