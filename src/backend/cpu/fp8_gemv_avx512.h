// The AVX-512 gemv pass of FP8 block weights, shared by the shift decode (linear_avx512.cpp, E4M3)
// and the table decode (linear_fp8_avx512.cpp, E5M2): R rows × T tokens, 64 columns a step. The
// decode turns a row's 64 codes at p into four fp32 vectors c[0..3], which meet x's 64 columns as
// laid out for that decode (xd: [T][K]); each scale block's sums are added into the totals times the
// block's scale × `scale_factor` (what the decode's values carry besides, a power of 2). Include only
// from files compiled for AVX-512 F.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/weight_kind.h"
#include "quant/weight.h"

namespace m2::detail {
// File-local in each includer: compiled under that file's target, so the linker never hands one
// file's copy (other ISA flags) to another.
namespace {

// y[t · ldy + r + i] = Σ_c W[r + i, c] · x[t, c] for i < R, t < T (K and block_cols multiples of 64).
template <int T, int R, typename Decode>
inline void fp8_block_gemv_pass(const WeightView& w, const float* xd, float* y, int64_t ldy, int64_t r,
                                float scale_factor, Decode&& decode) {
  constexpr int A = T * R <= 4 ? 2 : 1;  // sums per (row, token) and scale block: two while registers allow
  const int64_t K = w.cols, bc = w.block_cols;
  const RowStreams<R> s(w, r);
  const uint8_t* scale_rows[R];  // float scales, [cols / block_cols] per block row
  for (int i = 0; i < R; ++i) scale_rows[i] = w.scales + 4 * ((r + i) / w.block_rows * w.scale_stride);
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
  for (int64_t k0 = 0; k0 < K; k0 += bc) {
    __m512 part[R][T][A];  // this scale block's sums
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t)
        for (int a = 0; a < A; ++a) part[i][t][a] = _mm512_setzero_ps();
    const int64_t k1 = std::min(k0 + bc, K);
    for (int64_t k = k0; k < k1; k += 64) {
      s.prefetch_at(k);
      for (int i = 0; i < R; ++i) {
        __m512 c[4];
        decode(s.rows[i] + k, c);
        for (int t = 0; t < T; ++t) {
          const float* xt = xd + t * K + k;
          __m512 &p = part[i][t][0], &q = part[i][t][A - 1];
          p = _mm512_fmadd_ps(c[0], _mm512_loadu_ps(xt), p);
          q = _mm512_fmadd_ps(c[1], _mm512_loadu_ps(xt + 16), q);
          p = _mm512_fmadd_ps(c[2], _mm512_loadu_ps(xt + 32), p);
          q = _mm512_fmadd_ps(c[3], _mm512_loadu_ps(xt + 48), q);
        }
      }
    }
    for (int i = 0; i < R; ++i) {
      float sv;
      std::memcpy(&sv, scale_rows[i] + 4 * (k0 / bc), 4);
      const __m512 scale = _mm512_set1_ps(sv * scale_factor);
      for (int t = 0; t < T; ++t)
        acc[i][t] = _mm512_fmadd_ps(A == 2 ? _mm512_add_ps(part[i][t][0], part[i][t][A - 1]) : part[i][t][0], scale,
                                    acc[i][t]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) y[t * ldy + r + i] = _mm512_reduce_add_ps(acc[i][t]);
}

}  // namespace
}  // namespace m2::detail
