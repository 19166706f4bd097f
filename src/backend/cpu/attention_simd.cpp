// The attention's inner products at AVX2 and AVX-512 width (attention.cpp picks one per call from
// cpu_features): one cached K row against the q heads of its GQA group, and one V row added into
// their outputs, each row loaded once for the group. Sums run in 8 (AVX2) or 16 (AVX-512) lanes,
// so their rounding differs from the portable loop's by reordering only. Target attributes per
// function (GCC and clang both honour them), dispatch at run time.
#include "backend/cpu/attention_simd.h"

#if defined(__x86_64__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positives inside avx512fintrin.h
#include <immintrin.h>

namespace m2::detail {

__attribute__((target("avx512f,avx2,fma"))) void attn_dots_avx512(const float* q, const float* k, int group, int d, float* out) {
  const int dv = d / 16 * 16;
  __m512 kr[kAttnSimdMaxDim / 16];
  for (int i = 0; i < dv / 16; ++i) kr[i] = _mm512_loadu_ps(k + 16 * i);
  for (int h = 0; h < group; ++h) {
    const float* qh = q + int64_t(h) * d;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 2 <= dv / 16; i += 2) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * i), kr[i], a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * i + 16), kr[i + 1], a1);
    }
    if (i < dv / 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * i), kr[i], a0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    for (int j = dv; j < d; ++j) s += qh[j] * k[j];
    out[h] = s;
  }
}

__attribute__((target("avx512f,avx2,fma"))) void attn_axpys_avx512(const float* p, const float* v, float* o, int group, int d) {
  const int dv = d / 16 * 16;
  __m512 vr[kAttnSimdMaxDim / 16];
  for (int i = 0; i < dv / 16; ++i) vr[i] = _mm512_loadu_ps(v + 16 * i);
  for (int h = 0; h < group; ++h) {
    float* oh = o + int64_t(h) * d;
    const __m512 ph = _mm512_set1_ps(p[h]);
    for (int i = 0; i < dv / 16; ++i) _mm512_storeu_ps(oh + 16 * i, _mm512_fmadd_ps(ph, vr[i], _mm512_loadu_ps(oh + 16 * i)));
    for (int j = dv; j < d; ++j) oh[j] += p[h] * v[j];
  }
}
__attribute__((target("avx2,fma"))) void attn_dots_avx2(const float* q, const float* k, int group, int d, float* out) {
  const int dv = d / 8 * 8;
  for (int h = 0; h < group; ++h) {
    const float* qh = q + int64_t(h) * d;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= dv; i += 16) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i), _mm256_loadu_ps(k + i), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i + 8), _mm256_loadu_ps(k + i + 8), a1);
    }
    if (i < dv) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i), _mm256_loadu_ps(k + i), a0);
    const __m256 a = _mm256_add_ps(a0, a1);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    float s = _mm_cvtss_f32(s4);
    for (int j = dv; j < d; ++j) s += qh[j] * k[j];
    out[h] = s;
  }
}

__attribute__((target("avx2,fma"))) void attn_axpys_avx2(const float* p, const float* v, float* o, int group, int d) {
  const int dv = d / 8 * 8;
  for (int h = 0; h < group; ++h) {
    float* oh = o + int64_t(h) * d;
    const __m256 ph = _mm256_set1_ps(p[h]);
    for (int i = 0; i < dv; i += 8) _mm256_storeu_ps(oh + i, _mm256_fmadd_ps(ph, _mm256_loadu_ps(v + i), _mm256_loadu_ps(oh + i)));
    for (int j = dv; j < d; ++j) oh[j] += p[h] * v[j];
  }
}
}  // namespace m2::detail
#endif
