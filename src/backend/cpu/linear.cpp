#include "backend/cpu/linear.h"

#include <vector>

#include "backend/cpu/cpu_features.h"
#include "core/error.h"

namespace m2 {

namespace {

void linear_generic(const WeightView& w, const float* x, float* y, int64_t tokens, ThreadPool& pool) {
  const int64_t K = w.cols, N = w.rows;
  pool.parallel_for(N, [&](int64_t r0, int64_t r1, int) {
    thread_local std::vector<float> row;
    if (int64_t(row.size()) < K) row.resize(size_t(K));
    for (int64_t r = r0; r < r1; ++r) {
      dequant_row_ref(w, r, row.data());
      for (int64_t t = 0; t < tokens; ++t) {
        const float* xt = x + t * K;
        float acc = 0.0f;
        for (int64_t c = 0; c < K; ++c) acc += xt[c] * row[size_t(c)];
        y[t * N + r] = acc;
      }
    }
  }, 4);
}

}  // namespace

void linear(const WeightView& w, const float* x, float* y, int64_t tokens, ThreadPool& pool, LinearPath path) {
  const CpuFeatures& cpu = cpu_features();
  if (path == LinearPath::Auto)
    path = cpu.avx512 ? LinearPath::Avx512 : cpu.avx2_fma_f16c ? LinearPath::Avx2 : LinearPath::Generic;
  if (path == LinearPath::Avx512) {
    if (!cpu.avx512) fail<InvalidArgument>("linear {}: AVX-512 path requested on a CPU without AVX-512", w.name);
    if (detail::gemv_avx512_supports(w, tokens)) return detail::gemv_avx512(w, x, y, tokens, pool);
    if (tokens > 4) return detail::gemm_avx512(w, x, y, tokens, pool);
    path = LinearPath::Avx2;
  }
  if (path == LinearPath::Avx2) {
    if (!cpu_features().avx2_fma_f16c) fail<InvalidArgument>("linear {}: AVX2 path requested on a CPU without AVX2/FMA/F16C", w.name);
    detail::linear_avx2(w, x, y, tokens, pool);
  } else {
    linear_generic(w, x, y, tokens, pool);
  }
}

void dequant_rows(const WeightView& w, int64_t r0, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (cpu_features().avx2_fma_f16c) detail::dequant_row_avx2(w, r0 + i, out + i * w.cols);
    else dequant_row_ref(w, r0 + i, out + i * w.cols);
  }
}

}  // namespace m2
