// AVX-512 gemv (1-4 tokens) for the packed formats, where decode cost, not memory, was the limit.
// FP4: the 16 packed bytes of 32 columns are widened to 16 int32 lanes; the low nibbles (even
// columns) and high nibbles (odd columns) index a 16-entry float table with vpermps, and are
// multiplied with the even and odd columns of x, which are de-interleaved once per call. Lanes 0-7
// hold columns 0-15 (NVFP4 block 0), lanes 8-15 columns 16-31 (block 1).
// FP8: 16 E4M3 bytes → F16 bit pattern → vcvtph2ps.
// note: only POD fields of WeightView are touched here, so no std::string code is emitted with AVX-512.
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive inside avx512fintrin.h
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/gemm_driver.h"
#include "backend/cpu/linear.h"

namespace m2::detail {

namespace {

inline float e8m0_value(uint8_t e) {
  uint32_t b = e == 0 ? 0x00400000u : uint32_t(e) << 23;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

template <int T, bool Nv>
void gemv_fp4_rows(const WeightView& w, const float* x, const float* xd, float* y, int64_t ldy, int64_t r0,
                   int64_t r1) {
  const int64_t K = w.cols, Ks = K / 32 * 32;
  const __m512 lut = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f, -2.0f,
                                    -3.0f, -4.0f, -6.0f);
  const __m512i nib = _mm512_set1_epi32(0x0F);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    const uint8_t* sc = w.scales + r * w.scale_stride;
    // Two accumulator sets (even and odd chunks) so consecutive FMAs do not wait on each other.
    __m512 acc[2][T];
    for (int t = 0; t < T; ++t) acc[0][t] = acc[1][t] = _mm512_setzero_ps();
    auto chunk = [&](int64_t k, __m512* a) {
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2)));
      const __m512 we = _mm512_permutexvar_ps(_mm512_and_si512(b, nib), lut);
      const __m512 wo = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut);
      __m512 s;
      if constexpr (Nv) {
        s = _mm512_insertf32x8(_mm512_set1_ps(kE4M3ToF32[sc[k / 16]]), _mm256_set1_ps(kE4M3ToF32[sc[k / 16 + 1]]), 1);
      } else {
        s = _mm512_set1_ps(e8m0_value(sc[k / 32]));
      }
      for (int t = 0; t < T; ++t) {
        __m512 p = _mm512_mul_ps(we, _mm512_loadu_ps(xd + t * K + k));
        p = _mm512_fmadd_ps(wo, _mm512_loadu_ps(xd + t * K + k + 16), p);
        a[t] = _mm512_fmadd_ps(p, s, a[t]);
      }
    };
    int64_t k = 0;
    for (; k + 64 <= Ks; k += 64) {
      chunk(k, acc[0]);
      chunk(k + 32, acc[1]);
    }
    if (k < Ks) chunk(k, acc[0]);
    for (int t = 0; t < T; ++t) acc[0][t] = _mm512_add_ps(acc[0][t], acc[1][t]);
    const float g = Nv ? w.global_scale : 1.0f;
    for (int t = 0; t < T; ++t) {
      float s = _mm512_reduce_add_ps(acc[0][t]) * g;
      for (int64_t k = Ks; k < K; ++k) s += x[t * K + k] * weight_element_ref(w, r, k);
      y[t * ldy + r] = s;
    }
  }
}

template <int T>
void gemv_fp8_rows(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t K = w.cols, Ks = K / 32 * 32;
  const __m256i sign = _mm256_set1_epi16(0x80), body = _mm256_set1_epi16(0x7F);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    const float* srow = reinterpret_cast<const float*>(w.scales) + (r / w.block_rows) * w.scale_stride;
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < Ks; k += 32) {
      const __m512 s = _mm512_set1_ps(srow[k / w.block_cols] * 256.0f);
      for (int half = 0; half < 2; ++half) {
        __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16 * half)));
        __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(b, sign), 8),
                                    _mm256_slli_epi16(_mm256_and_si256(b, body), 7));
        const __m512 wv = _mm512_mul_ps(_mm512_cvtph_ps(h), s);
        for (int t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * K + k + 16 * half), acc[t]);
      }
    }
    for (int t = 0; t < T; ++t) {
      float s = _mm512_reduce_add_ps(acc[t]);
      for (int64_t k = Ks; k < K; ++k) s += x[t * K + k] * weight_element_ref(w, r, k);
      y[t * ldy + r] = s;
    }
  }
}

template <int T>
void dispatch_rows(const WeightView& w, const float* x, const float* xd, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (w.format == WeightFormat::Nvfp4) gemv_fp4_rows<T, true>(w, x, xd, y, ldy, r0, r1);
  else if (w.format == WeightFormat::Mxfp4) gemv_fp4_rows<T, false>(w, x, xd, y, ldy, r0, r1);
  else gemv_fp8_rows<T>(w, x, y, ldy, r0, r1);
}

constexpr int kTileRows = int(kAvx512TileRows), kTileCols = 256, kMr = 8;

// acc[m][32] += x[m tokens, kc] · tile[kc][32]; stored into y on the first K chunk, added after.
template <int M>
void micro_kernel(const float* x, int64_t ldx, const float* tile, int64_t kc, float* y, int64_t ldy, int rows,
                  bool first) {
  __m512 acc[M][2];
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_load_ps(tile + k * kTileRows), w1 = _mm512_load_ps(tile + k * kTileRows + 16);
    for (int m = 0; m < M; ++m) {
      const __m512 xb = _mm512_set1_ps(x[m * ldx + k]);
      acc[m][0] = _mm512_fmadd_ps(xb, w0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(xb, w1, acc[m][1]);
    }
  }
  const __mmask16 lo = rows >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rows) - 1);
  const __mmask16 hi = rows >= 32 ? __mmask16(0xFFFF) : rows <= 16 ? __mmask16(0) : __mmask16((1u << (rows - 16)) - 1);
  for (int m = 0; m < M; ++m) {
    float* yr = y + m * ldy;
    if (!first) {
      acc[m][0] = _mm512_add_ps(acc[m][0], _mm512_maskz_loadu_ps(lo, yr));
      acc[m][1] = _mm512_add_ps(acc[m][1], _mm512_maskz_loadu_ps(hi, yr + 16));
    }
    _mm512_mask_storeu_ps(yr, lo, acc[m][0]);
    _mm512_mask_storeu_ps(yr + 16, hi, acc[m][1]);
  }
}

void gemm_tiles(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t tokens, int64_t tile0,
                int64_t tile1) {
  alignas(64) float tile[kTileCols * kTileRows];
  const int64_t K = w.cols, N = ldy;
  gemm_tile_loop<kTileRows, kTileCols, kMr>(
      w, x, y, ldy, tokens, tile0, tile1, tile,
      [&](int64_t r0, int64_t k0, int64_t kc, float* t) { decode_tile_avx2(w, r0, kTileRows, k0, kc, t); },
      [&](auto m, const float* xt, const float* t, int64_t kc, float* yt, int rows, bool first) {
        micro_kernel<decltype(m)::value>(xt, K, t, kc, yt, N, rows, first);
      });
}

}  // namespace

bool gemv_avx512_supports(const WeightView& w, int64_t tokens) {
  if (tokens < 1 || tokens > 4) return false;
  if (w.format == WeightFormat::Nvfp4 || w.format == WeightFormat::Mxfp4) return true;
  return w.format == WeightFormat::Fp8Block && w.dtype == DType::F8_E4M3 && w.block_cols % 32 == 0;
}

void rows_avx512(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  if (gemv_avx512_supports(w, job.tokens)) {
    switch (job.tokens) {
      case 1: return dispatch_rows<1>(w, job.x, job.xd, job.y, job.ldy, r0, r1);
      case 2: return dispatch_rows<2>(w, job.x, job.xd, job.y, job.ldy, r0, r1);
      case 3: return dispatch_rows<3>(w, job.x, job.xd, job.y, job.ldy, r0, r1);
      default: return dispatch_rows<4>(w, job.x, job.xd, job.y, job.ldy, r0, r1);
    }
  }
  if (job.tokens <= 4) return rows_avx2(job, r0, r1);
  // 5+ tokens: the 32-row tiles covering [r0, r1); r0 is tile-aligned and r1 is too unless it is w.rows.
  gemm_tiles(w, job.x, job.y, job.ldy, job.tokens, r0 / kTileRows, (r1 + kTileRows - 1) / kTileRows);
}

}  // namespace m2::detail
#else
#include "backend/cpu/linear.h"
#include "core/error.h"
namespace m2::detail {
bool gemv_avx512_supports(const WeightView&, int64_t) { return false; }
void rows_avx512(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the AVX-512 path is not compiled for this architecture", job.w->name);
}
}  // namespace m2::detail
#endif
