// AVX-512 gemv (1-4 tokens) for BF16 and the packed formats. Like the AVX2 gemv, each pass takes R
// rows × T tokens (R weight streams, R·T accumulator chains) and prefetches the rows of the passes
// after it: the expert rows are short (1.5-3 KB), and without it the products ran at a fifth of the
// read limit on a host whose hardware prefetcher does not ramp up within a row.
//   BF16: one 64-byte load is 32 weights; `<< 16` gives the even columns as fp32 and `& 0xFFFF0000`
//         the odd ones, over x in XLayout::Pairs.
//   FP4:  the 16 packed bytes of 32 columns are widened to 16 int32 lanes; vpermps reads the low 4
//         bits of each index lane, so the lane itself indexes the 16-entry value table by its low
//         nibble (even column) and, shifted right by 4, by its high nibble (odd column), over x in
//         XLayout::Pairs. Lanes 0-7 hold columns 0-15 (NVFP4 block 0), lanes 8-15 columns 16-31.
//   E4M3: 64 bytes → four registers of fp32 bit patterns of value × 2^-120 by shifts and a mask (the
//         AVX2 kernel's decode at twice the width, see e4m3_quads_raw there), over x in
//         XLayout::E4m3Quads64; each scale block's sum is scaled once. A subnormal code becomes an
//         fp32 subnormal, which costs its FMA an assist on Intel cores (linear_fp8_avx512.cpp says
//         why this decode is kept; E5M2 runs that file's table decode).
// note: only POD fields of WeightView are touched here, so no std::string code is emitted with AVX-512.
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/fp8_gemv_avx512.h"
#include "backend/cpu/gemm_driver.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/weight_kind.h"

namespace m2::detail {

namespace {

// Columns [Ks, K) (past the SIMD columns) by the reference decoder, then y.
template <int R, int T>
inline void finish_rows(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t r, int64_t Ks,
                        __m512 acc[R][T]) {
  const int64_t K = w.cols;
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      float s = _mm512_reduce_add_ps(acc[i][t]);
      for (int64_t k = Ks; k < K; ++k) s += x[t * K + k] * weight_element_ref(w, r + i, k);
      y[t * ldy + r + i] = s;
    }
}

template <int T, int R>
inline void gemv_bf16_pass(const WeightView& w, const float* x, const float* xd, float* y, int64_t ldy, int64_t r) {
  constexpr int A = T * R <= 8 ? 2 : 1;  // chains per (row, token): two while registers allow
  const int64_t K = w.cols, Ks = K / 32 * 32;
  const RowStreams<R> s(w, r);
  const __m512i odd = _mm512_set1_epi32(int(0xFFFF0000u));
  __m512 acc[R][T][A];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t)
      for (int a = 0; a < A; ++a) acc[i][t][a] = _mm512_setzero_ps();
  for (int64_t k = 0; k < Ks; k += 32) {
    s.prefetch_at(2 * k);
    __m512 xe[T], xo[T];  // loaded once for the R rows
    for (int t = 0; t < T; ++t) {
      xe[t] = _mm512_loadu_ps(xd + t * K + k);
      xo[t] = _mm512_loadu_ps(xd + t * K + k + 16);
    }
    for (int i = 0; i < R; ++i) {
      const __m512i v = _mm512_loadu_si512(s.rows[i] + 2 * k);
      const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      const __m512 oddv = _mm512_castsi512_ps(_mm512_and_si512(v, odd));
      for (int t = 0; t < T; ++t) {
        acc[i][t][0] = _mm512_fmadd_ps(even, xe[t], acc[i][t][0]);
        acc[i][t][A - 1] = _mm512_fmadd_ps(oddv, xo[t], acc[i][t][A - 1]);
      }
    }
  }
  __m512 sum[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) sum[i][t] = A == 2 ? _mm512_add_ps(acc[i][t][0], acc[i][t][A - 1]) : acc[i][t][0];
  finish_rows<R, T>(w, x, y, ldy, r, Ks, sum);
}

inline __m512 e8m0_scale(uint8_t e) { return _mm512_set1_ps(e8m0_to_f32(e)); }

template <int T, int R, bool Nv>
inline void gemv_fp4_pass(const WeightView& w, const float* x, const float* xd, float* y, int64_t ldy, int64_t r) {
  const int64_t K = w.cols, Ks = K / 32 * 32;
  const RowStreams<R> s(w, r);
  prefetch_scales_ahead<R>(w, r);
  const __m512 lut = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f, -2.0f,
                                    -3.0f, -4.0f, -6.0f);
  const uint8_t* sc[R];
  for (int i = 0; i < R; ++i) sc[i] = w.scales + (r + i) * w.scale_stride;
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < Ks; k += 32) {
    if (k % 128 == 0) s.prefetch_at(k / 2);
    __m512 xe[T], xo[T];  // loaded once for the R rows
    for (int t = 0; t < T; ++t) {
      xe[t] = _mm512_loadu_ps(xd + t * K + k);
      xo[t] = _mm512_loadu_ps(xd + t * K + k + 16);
    }
    for (int i = 0; i < R; ++i) {
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s.rows[i] + k / 2)));
      const __m512 we = _mm512_permutexvar_ps(b, lut);  // index bits 0-3: the low nibble
      const __m512 wo = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut);
      __m512 scale;
      if constexpr (Nv)
        scale = _mm512_insertf32x8(_mm512_set1_ps(kE4M3ToF32[sc[i][k / 16]]), _mm256_set1_ps(kE4M3ToF32[sc[i][k / 16 + 1]]), 1);
      else
        scale = e8m0_scale(sc[i][k / 32]);
      for (int t = 0; t < T; ++t) {
        const __m512 p = _mm512_fmadd_ps(wo, xo[t], _mm512_mul_ps(we, xe[t]));
        acc[i][t] = _mm512_fmadd_ps(p, scale, acc[i][t]);
      }
    }
  }
  if constexpr (Nv)
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) acc[i][t] = _mm512_mul_ps(acc[i][t], _mm512_set1_ps(w.global_scale));
  finish_rows<R, T>(w, x, y, ldy, r, Ks, acc);
}

// 64 E4M3 bytes (lane j: bytes 4j .. 4j + 3) → out[q] lane j = byte 4j + q as the fp32 of value × 2^-120.
inline void e4m3_quads_raw(__m512i v, __m512 out[4]) {
  const __m512i keep = _mm512_set1_epi32(int(0x87F00000u));  // sign + exponent/mantissa bits 20-26
  const __m512i odd = _mm512_srai_epi16(v, 4);                           // 4j+1, 4j+3 in bits 8-15, 24-31
  const __m512i even = _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 4);  // 4j, 4j+2
  out[0] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(even, 16), keep));
  out[1] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(odd, 16), keep));
  out[2] = _mm512_castsi512_ps(_mm512_and_si512(even, keep));
  out[3] = _mm512_castsi512_ps(_mm512_and_si512(odd, keep));
}

// 64 E4M3 bytes at p → out[q] lane j = column 4j + q (j = 0..15) as the fp32 of value × 2^-120.
inline void e4m3_quads64_raw(const uint8_t* p, __m512 out[4]) { e4m3_quads_raw(_mm512_loadu_si512(p), out); }

template <int T, int R>
inline void gemv_e4m3_pass(const WeightView& w, const float* xq, float* y, int64_t ldy, int64_t r) {
  fp8_block_gemv_pass<T, R>(w, xq, y, ldy, r, 0x1p120f / kE4m3XScale, e4m3_quads64_raw);
}

template <int T>
void gemv_rows(const WeightView& w, const float* x, const float* xd, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  for_row_blocks<4>(r0, r1, [&](int64_t r, auto n) {
    constexpr int R = decltype(n)::value;
    switch (w.format) {
      case WeightFormat::Dense: return gemv_bf16_pass<T, R>(w, x, xd, y, ldy, r);
      case WeightFormat::Nvfp4: return gemv_fp4_pass<T, R, true>(w, x, xd, y, ldy, r);
      case WeightFormat::Mxfp4: return gemv_fp4_pass<T, R, false>(w, x, xd, y, ldy, r);
      case WeightFormat::Fp8Block: return gemv_e4m3_pass<T, R>(w, xd, y, ldy, r);
    }
  });
}

constexpr int kTileRows = int(kAvx512TileRows), kTileCols = 256, kMr = 12;

// acc[m][32] += x[m tokens, kc] · tile[kc][32]; stored into y on the first K chunk, added after.
// Step k < n_prefetch prefetches prefetch[k] into L2 (gemm_tile_loop: the next chunk's weights).
template <int M>
__attribute__((noinline)) void micro_kernel(const float* x, int64_t ldx, const float* tile, int64_t kc, float* y,
                                            int64_t ldy, int rows, bool first, const uint8_t* const* prefetch,
                                            int64_t n_prefetch) {
  __m512 acc[M][2];
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  // One pointer per token row, advanced together: GCC 12 otherwise kept the M row offsets on the
  // stack and reloaded one per broadcast (18 loads per 16 FMAs).
  const float* xr[M];
  for (int m = 0; m < M; ++m) xr[m] = x + m * ldx;
  for (int64_t k = 0; k < kc; ++k) {
    if (k < n_prefetch) _mm_prefetch(reinterpret_cast<const char*>(prefetch[k]), _MM_HINT_T1);
    const __m512 w0 = _mm512_load_ps(tile + k * kTileRows), w1 = _mm512_load_ps(tile + k * kTileRows + 16);
    for (int m = 0; m < M; ++m) {
      const __m512 xb = _mm512_set1_ps(xr[m][k]);
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

// Four registers whose lane i holds row i's bytes [4d, 4d + 4) of p + i·stride, d = 0..3: the 16
// bytes (32 FP4 columns) of 16 rows, transposed by dwords. Inputs: z[a] has rows 4a..4a+3, one per
// 128-bit lane; two-source dword permutes gather dwords d and d+1 of rows 0-7 (and 8-15), then
// 256-bit halves are joined.
inline void fp4_rows16_dwords(const uint8_t* p, int64_t stride, __m512i out[4]) {
  __m512i z[4];
  for (int a = 0; a < 4; ++a) {
    const uint8_t* q = p + 4 * a * stride;
    z[a] = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    z[a] = _mm512_inserti32x4(z[a], _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + stride)), 1);
    z[a] = _mm512_inserti32x4(z[a], _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 2 * stride)), 2);
    z[a] = _mm512_inserti32x4(z[a], _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 3 * stride)), 3);
  }
  const __m512i d01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
  const __m512i d23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
  const __m512i lo01 = _mm512_permutex2var_epi32(z[0], d01, z[1]), lo23 = _mm512_permutex2var_epi32(z[0], d23, z[1]);
  const __m512i hi01 = _mm512_permutex2var_epi32(z[2], d01, z[3]), hi23 = _mm512_permutex2var_epi32(z[2], d23, z[3]);
  out[0] = _mm512_shuffle_i64x2(lo01, hi01, 0x44);
  out[1] = _mm512_shuffle_i64x2(lo01, hi01, 0xEE);
  out[2] = _mm512_shuffle_i64x2(lo23, hi23, 0x44);
  out[3] = _mm512_shuffle_i64x2(lo23, hi23, 0xEE);
}

// FP4 rows [r0, r0 + 32) × columns [k0, k0 + kc) into tile[k][32], bit for bit what decode_tile_avx2
// writes, at a quarter of its instructions: per 16 rows and 32 columns, the dword transpose above,
// then column 8d + c is vpermps of register d shifted right by 4c (vpermps reads the index's low 4
// bits: the code) over the 2×value table, times the 16 rows' chunk scales. No 8×8 transposes through
// memory, which made the AVX2 decode half the cost of a 16-token expert product.
template <Kind K>
void decode_fp4_tile(const WeightView& w, int64_t r0, int64_t k0, int64_t kc, float* tile) {
  const __m512 lut = _mm512_setr_ps(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
  const int64_t Ks = simd_cols(w);
  int64_t ksimd = 0;
  while (ksimd + 32 <= kc && k0 + ksimd + 32 <= Ks) ksimd += 32;
  // The bytes decoded next: this tile's next chunk, or the next tile's first one. The loads of 32
  // short row pieces missed the cache (the hardware prefetcher does not follow them) and took half
  // the decode's time in a 512-token MoE prefill.
  const int64_t next_r = k0 + kc < w.cols ? r0 : r0 + kTileRows, next_byte = k0 + kc < w.cols ? (k0 + kc) / 2 : 0;
  if (next_r + kTileRows <= w.rows)
    for (int i = 0; i < kTileRows; ++i)
      for (int64_t b = 0; b < kc / 2; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w.data + (next_r + i) * w.row_bytes + next_byte + b), _MM_HINT_T0);
  for (int h = 0; h < 2; ++h) {
    const int64_t rh = r0 + 16 * h;
    for (int64_t k = 0; k < ksimd; k += 32) {
      alignas(64) float scale[2][16];  // the rows' chunk scales: columns 0-15, 16-31
      for (int i = 0; i < 16; ++i) {
        scale[0][i] = chunk_scale_f32<K>(w, rh + i, k0 + k, 0);
        scale[1][i] = K == Kind::Nvfp4 ? chunk_scale_f32<K>(w, rh + i, k0 + k, 1) : scale[0][i];
      }
      __m512i d[4];
      fp4_rows16_dwords(w.data + rh * w.row_bytes + (k0 + k) / 2, w.row_bytes, d);
      for (int q = 0; q < 4; ++q) {
        const __m512 s = _mm512_load_ps(scale[q / 2]);
        float* out = tile + (k + 8 * q) * kTileRows + 16 * h;
        for (int c = 0; c < 8; ++c) {
          const __m512 v = _mm512_permutexvar_ps(_mm512_srli_epi32(d[q], 4 * c), lut);
          _mm512_store_ps(out + c * kTileRows, _mm512_mul_ps(v, s));
        }
      }
    }
    for (int i = 0; i < 16; ++i)
      for (int64_t k = ksimd; k < kc; ++k) tile[k * kTileRows + 16 * h + i] = weight_element_ref(w, rh + i, k0 + k);
  }
}

// r[i] lane j → r[j] lane i (16 × 16 dwords): dword and qword unpacks within 128-bit lanes, then a
// 4 × 4 transpose of the 128-bit lanes; 64 shuffles.
inline void transpose16x16_epi32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // Then u[4g + c], 128-bit lane L: dword 4L + c of rows 4g .. 4g + 3.
  __m512i u[16];
  for (int i = 0; i < 16; i += 4) {
    u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i a01 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), a23 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    const __m512i b01 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), b23 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(a01, b01, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(a01, b01, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(a23, b23, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(a23, b23, 0xDD);
  }
}

// BF16 rows [r0, r0 + 32) × columns [k0, k0 + kc) into tile[k][32], bit for bit what
// decode_tile_avx2 writes: per 16 rows and 32 columns (64 bytes a row) a 16 × 16 dword transpose, so
// that lane i of register d holds row i's columns 2d (low half) and 2d + 1 (high half); `<< 16` and
// `& 0xFFFF0000` make them fp32.
void decode_bf16_tile(const WeightView& w, int64_t r0, int64_t k0, int64_t kc, float* tile) {
  const int64_t Ks = simd_cols(w);
  int64_t ksimd = 0;
  while (ksimd + 32 <= kc && k0 + ksimd + 32 <= Ks) ksimd += 32;
  const __m512i odd = _mm512_set1_epi32(int(0xFFFF0000u));
  for (int h = 0; h < 2; ++h) {
    const int64_t rh = r0 + 16 * h;
    for (int64_t k = 0; k < ksimd; k += 32) {
      __m512i d[16];
      for (int i = 0; i < 16; ++i) d[i] = _mm512_loadu_si512(w.data + (rh + i) * w.row_bytes + 2 * (k0 + k));
      transpose16x16_epi32(d);
      float* out = tile + k * kTileRows + 16 * h;
      for (int c = 0; c < 16; ++c) {
        _mm512_store_ps(out + 2 * c * kTileRows, _mm512_castsi512_ps(_mm512_slli_epi32(d[c], 16)));
        _mm512_store_ps(out + (2 * c + 1) * kTileRows, _mm512_castsi512_ps(_mm512_and_si512(d[c], odd)));
      }
    }
    for (int i = 0; i < 16; ++i)
      for (int64_t k = ksimd; k < kc; ++k) tile[k * kTileRows + 16 * h + i] = weight_element_ref(w, rh + i, k0 + k);
  }
}

// E4M3 rows [r0, r0 + 32) × columns [k0, k0 + kc) into tile[k][32] (block_cols % 64 == 0), bit for
// bit what decode_tile_avx2 writes: per 16 rows and 64 columns a 16 × 16 dword transpose (lane i of
// register c: row i's columns 4c .. 4c + 3), e4m3_quads_raw's shifts and mask, then × 2^112 (exact)
// × the row's block scale × 256, the AVX2 decode's (value × 2^-8) × (scale × 256).
void decode_e4m3_tile(const WeightView& w, int64_t r0, int64_t k0, int64_t kc, float* tile) {
  const int64_t Ks = simd_cols(w);
  int64_t ksimd = 0;
  while (ksimd + 64 <= kc && k0 + ksimd + 64 <= Ks) ksimd += 64;
  const __m512 rescale = _mm512_set1_ps(0x1p112f);
  for (int h = 0; h < 2; ++h) {
    const int64_t rh = r0 + 16 * h;
    for (int64_t k = 0; k < ksimd; k += 64) {
      alignas(64) float scale[16];
      for (int i = 0; i < 16; ++i) scale[i] = chunk_scale_f32<Kind::E4m3>(w, rh + i, k0 + k, 0);
      const __m512 sv = _mm512_load_ps(scale);
      __m512i d[16];
      for (int i = 0; i < 16; ++i) d[i] = _mm512_loadu_si512(w.data + (rh + i) * w.row_bytes + k0 + k);
      transpose16x16_epi32(d);
      float* out = tile + k * kTileRows + 16 * h;
      for (int c = 0; c < 16; ++c) {
        __m512 v[4];
        e4m3_quads_raw(d[c], v);
        for (int q = 0; q < 4; ++q)
          _mm512_store_ps(out + (4 * c + q) * kTileRows, _mm512_mul_ps(_mm512_mul_ps(v[q], rescale), sv));
      }
    }
    for (int i = 0; i < 16; ++i)
      for (int64_t k = ksimd; k < kc; ++k) tile[k * kTileRows + 16 * h + i] = weight_element_ref(w, rh + i, k0 + k);
  }
}

void gemm_tiles(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t tokens, int64_t tile0,
                int64_t tile1) {
  alignas(64) float tile[kTileCols * kTileRows];
  const int64_t K = w.cols, N = ldy;
  const Kind kind = kind_of(w);
  gemm_tile_loop<kTileRows, kTileCols, kMr>(
      w, x, y, ldy, tokens, tile0, tile1, tile,
      [&](int64_t r0, int64_t k0, int64_t kc, float* t) {
        // Whole 32-row FP4, BF16 and E4M3 tiles at AVX-512 width; the last partial tile and the other
        // formats (F16, F32, E5M2, E4M3 in blocks of other than 64k columns) by AVX2.
        if (r0 + kTileRows > w.rows) return decode_tile_avx2(w, r0, kTileRows, k0, kc, t);
        if (kind == Kind::Mxfp4) return decode_fp4_tile<Kind::Mxfp4>(w, r0, k0, kc, t);
        if (kind == Kind::Nvfp4) return decode_fp4_tile<Kind::Nvfp4>(w, r0, k0, kc, t);
        if (kind == Kind::Bf16) return decode_bf16_tile(w, r0, k0, kc, t);
        if (kind == Kind::E4m3 && w.block_cols % 64 == 0) return decode_e4m3_tile(w, r0, k0, kc, t);
        decode_tile_avx2(w, r0, kTileRows, k0, kc, t);
      },
      [&](auto m, const float* xt, const float* t, int64_t kc, float* yt, int rows, bool first,
          const uint8_t* const* prefetch, int64_t n_prefetch) {
        micro_kernel<decltype(m)::value>(xt, K, t, kc, yt, N, rows, first, prefetch, n_prefetch);
      });
}

}  // namespace

bool gemv_avx512_supports(const WeightView& w, int64_t tokens) {
  if (tokens < 1) return false;
  switch (w.format) {
    case WeightFormat::Dense: return w.dtype == DType::BF16 && tokens <= kAvx512Bf16GemvMaxTokens;
    case WeightFormat::Nvfp4:
    case WeightFormat::Mxfp4: return tokens <= 4;
    case WeightFormat::Fp8Block:  // whole 64-column spans inside every scale block (else the AVX2 gemv);
      // in groups of 4 up to 16 tokens: from memory 1.1-1.7x the tiles at 8-16 (BENCHMARKS.md), though
      // in cache the tiles lead from 8. E5M2 only through the VBMI table decode (linear_fp8_avx512.cpp).
      return (w.dtype == DType::F8_E4M3 || (w.dtype == DType::F8_E5M2 && cpu_features().avx512_vnni_vbmi)) &&
             w.block_cols % 64 == 0 && w.cols % 64 == 0 && tokens <= kAvx512E4m3GemvMaxTokens;
  }
  return false;
}

XLayout gemv_avx512_x_layout(const WeightView& w) {
  if (w.format != WeightFormat::Fp8Block) return XLayout::Pairs;
  return w.dtype == DType::F8_E5M2 ? XLayout::Fp8Bf16Pairs64 : XLayout::E4m3Quads64;
}

void rows_avx512(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  if (gemv_avx512_supports(w, job.tokens)) {
    if (w.format == WeightFormat::Fp8Block && w.dtype == DType::F8_E5M2) return rows_fp8_lut_avx512(job, r0, r1);
    // Past 4 tokens in groups of 4 over the same row stripe, which the later groups read from L2.
    const int64_t K = w.cols;
    for_row_stripes(w, r0, r1, [&](int64_t s0, int64_t s1) {
      for (int64_t t0 = 0; t0 < job.tokens; t0 += 4)
        dispatch_rows<4>(int(std::min<int64_t>(4, job.tokens - t0)), [&](auto t) {
          gemv_rows<decltype(t)::value>(w, job.x + t0 * K, job.xd + t0 * K, job.y + t0 * job.ldy, job.ldy, s0, s1);
        });
    });
    return;
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
XLayout gemv_avx512_x_layout(const WeightView&) { return XLayout::Plain; }
void rows_avx512(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the AVX-512 path is not compiled for this architecture", job.w->name);
}
}  // namespace m2::detail
#endif
