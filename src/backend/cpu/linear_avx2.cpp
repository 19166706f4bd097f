// AVX2 + FMA + F16C kernels for every weight format.
//   gemv  (1-4 tokens): each weight row is decoded 32 columns at a time straight into registers and
//                       multiplied with every token: one pass over the packed weight, memory-bound.
//   gemm  (5+ tokens):  a 16-row × 256-column weight tile is decoded once into L1 (transposed), then a
//                       6-token × 16-row register-blocked micro-kernel runs over all tokens.
// note: only POD fields of WeightView are touched here, so no std::string code is emitted with AVX2.
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <cstring>

#include "backend/cpu/gemm_driver.h"
#include "backend/cpu/linear.h"

namespace m2::detail {

namespace {

constexpr int kChunk = 32;  // columns decoded per step

inline float e8m0_value(uint8_t e) {
  uint32_t b = e == 0 ? 0x00400000u : uint32_t(e) << 23;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// FP4 E2M1 codes → 2×value as int8, through pshufb.
inline __m128i fp4_lut() { return _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12); }

// 16 packed bytes (32 codes, low nibble = even column) → 32 int8 of 2×value, in column order.
inline void fp4_unpack32(const uint8_t* p, __m128i& lo16, __m128i& hi16) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(b, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
  const __m128i lut = fp4_lut();
  lo16 = _mm_shuffle_epi8(lut, _mm_unpacklo_epi8(lo, hi));  // columns 0..15
  hi16 = _mm_shuffle_epi8(lut, _mm_unpackhi_epi8(lo, hi));  // columns 16..31
}

inline __m256 i8x8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

// Decodes columns [k0, k0 + 32) of row r into out[0..3] (8 columns each). k0 % 32 == 0.
struct Decoder {
  const WeightView& w;

  inline void decode(int64_t r, int64_t k0, __m256 out[4]) const {
    const uint8_t* row = w.data + r * w.row_bytes;
    switch (w.format) {
      case WeightFormat::Dense:
        if (w.dtype == DType::BF16) {
          const uint8_t* p = row + 2 * k0;
          for (int j = 0; j < 4; ++j) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * j)));
            out[j] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
          }
        } else if (w.dtype == DType::F16) {
          const uint8_t* p = row + 2 * k0;
          for (int j = 0; j < 4; ++j) out[j] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * j)));
        } else {
          const float* p = reinterpret_cast<const float*>(row) + k0;
          for (int j = 0; j < 4; ++j) out[j] = _mm256_loadu_ps(p + 8 * j);
        }
        return;
      case WeightFormat::Fp8Block: {
        float s;
        std::memcpy(&s, w.scales + 4 * ((r / w.block_rows) * w.scale_stride + k0 / w.block_cols), 4);
        const uint8_t* p = row + k0;
        if (w.dtype == DType::F8_E5M2) {
          const __m256 sv = _mm256_set1_ps(s);
          for (int j = 0; j < 4; ++j) {
            __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * j)));
            out[j] = _mm256_mul_ps(_mm256_cvtph_ps(_mm_slli_epi16(b, 8)), sv);
          }
        } else {
          // E4M3 → F16 bits: sign to bit 15, exponent+mantissa shifted by 7; then × 2^(15-7).
          const __m256 sv = _mm256_set1_ps(s * 256.0f);
          const __m128i sign = _mm_set1_epi16(0x80), body = _mm_set1_epi16(0x7F);
          for (int j = 0; j < 4; ++j) {
            __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * j)));
            __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, sign), 8), _mm_slli_epi16(_mm_and_si128(b, body), 7));
            out[j] = _mm256_mul_ps(_mm256_cvtph_ps(h), sv);
          }
        }
        return;
      }
      case WeightFormat::Nvfp4: {
        __m128i a, b;
        fp4_unpack32(row + k0 / 2, a, b);
        const uint8_t* sc = w.scales + r * w.scale_stride + k0 / 16;
        const float g = 0.5f * w.global_scale;
        const __m256 s0 = _mm256_set1_ps(kE4M3ToF32[sc[0]] * g), s1 = _mm256_set1_ps(kE4M3ToF32[sc[1]] * g);
        out[0] = _mm256_mul_ps(i8x8_to_ps(a), s0);
        out[1] = _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(a, 8)), s0);
        out[2] = _mm256_mul_ps(i8x8_to_ps(b), s1);
        out[3] = _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(b, 8)), s1);
        return;
      }
      case WeightFormat::Mxfp4: {
        __m128i a, b;
        fp4_unpack32(row + k0 / 2, a, b);
        const __m256 s = _mm256_set1_ps(0.5f * e8m0_value(w.scales[r * w.scale_stride + k0 / 32]));
        out[0] = _mm256_mul_ps(i8x8_to_ps(a), s);
        out[1] = _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(a, 8)), s);
        out[2] = _mm256_mul_ps(i8x8_to_ps(b), s);
        out[3] = _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(b, 8)), s);
        return;
      }
    }
    __builtin_unreachable();
  }
};

// Columns that the 32-wide SIMD decode covers; block-FP8 also needs whole chunks inside a scale block.
int64_t simd_cols(const WeightView& w) {
  if (w.format == WeightFormat::Fp8Block && w.block_cols % kChunk != 0) return 0;
  return w.cols / kChunk * kChunk;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int T>
void gemv_rows(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const Decoder dec{w};
  const int64_t K = w.cols, Ks = simd_cols(w);
  for (int64_t r = r0; r < r1; ++r) {
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < Ks; k += kChunk) {
      __m256 wv[4];
      dec.decode(r, k, wv);
      for (int t = 0; t < T; ++t)
        for (int j = 0; j < 4; ++j) acc[t] = _mm256_fmadd_ps(wv[j], _mm256_loadu_ps(x + t * K + k + 8 * j), acc[t]);
    }
    for (int t = 0; t < T; ++t) {
      float s = hsum(acc[t]);
      for (int64_t k = Ks; k < K; ++k) s += x[t * K + k] * weight_element_ref(w, r, k);
      y[t * ldy + r] = s;
    }
  }
}

constexpr int kTileRows = int(kAvx2TileRows), kTileCols = 256, kMr = 6;

// In-register 8×8 transpose of r[0..7] (rows) into columns.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3 and 4-7
    __m256 a = t[4 * h], b = t[4 * h + 1], cc = t[4 * h + 2], d = t[4 * h + 3];
    u[4 * h] = _mm256_shuffle_ps(a, cc, _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * h + 1] = _mm256_shuffle_ps(a, cc, _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * h + 2] = _mm256_shuffle_ps(b, d, _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * h + 3] = _mm256_shuffle_ps(b, d, _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

}  // namespace

// Decodes W[r0 .. r0+tile_rows) × [k0 .. k0+kc) into tile[k][tile_rows] (rows past N are zero).
// Groups of 8 rows are decoded 32 columns at a time and transposed in registers.
void decode_tile_avx2(const WeightView& w, int64_t r0, int tile_rows, int64_t k0, int64_t kc, float* tile) {
  const Decoder dec{w};
  const int64_t Ks = simd_cols(w);
  // Columns [0, ksimd) go through SIMD decode + transpose; the rest element by element.
  int64_t ksimd = 0;
  while (ksimd + kChunk <= kc && k0 + ksimd + kChunk <= Ks) ksimd += kChunk;
  alignas(32) float rows8[8][kChunk];
  for (int i0 = 0; i0 < tile_rows; i0 += 8) {
    for (int64_t k = 0; k < ksimd; k += kChunk) {
      for (int i = 0; i < 8; ++i) {
        const int64_t r = r0 + i0 + i;
        if (r >= w.rows) {
          for (int j = 0; j < 4; ++j) _mm256_store_ps(rows8[i] + 8 * j, _mm256_setzero_ps());
          continue;
        }
        __m256 wv[4];
        dec.decode(r, k0 + k, wv);
        for (int j = 0; j < 4; ++j) _mm256_store_ps(rows8[i] + 8 * j, wv[j]);
      }
      for (int j = 0; j < 4; ++j) {
        __m256 v[8];
        for (int i = 0; i < 8; ++i) v[i] = _mm256_load_ps(rows8[i] + 8 * j);
        transpose8(v);
        for (int cidx = 0; cidx < 8; ++cidx) _mm256_storeu_ps(tile + (k + 8 * j + cidx) * tile_rows + i0, v[cidx]);
      }
    }
    for (int i = 0; i < 8; ++i) {
      const int64_t r = r0 + i0 + i;
      for (int64_t k = ksimd; k < kc; ++k) tile[k * tile_rows + i0 + i] = r < w.rows ? weight_element_ref(w, r, k0 + k) : 0.0f;
    }
  }
}

namespace {

// acc[m][16] += x[m rows, kc] · tile[kc][16]; then y rows get acc (store on first chunk, add after).
template <int M>
void micro_kernel(const float* x, int64_t ldx, const float* tile, int64_t kc, float* y, int64_t ldy, int rows,
                  bool first) {
  __m256 acc[M][2];
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_load_ps(tile + k * kTileRows), w1 = _mm256_load_ps(tile + k * kTileRows + 8);
    for (int m = 0; m < M; ++m) {
      const __m256 xb = _mm256_broadcast_ss(x + m * ldx + k);
      acc[m][0] = _mm256_fmadd_ps(xb, w0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(xb, w1, acc[m][1]);
    }
  }
  alignas(32) float out[kTileRows];
  for (int m = 0; m < M; ++m) {
    _mm256_store_ps(out, acc[m][0]);
    _mm256_store_ps(out + 8, acc[m][1]);
    float* yr = y + m * ldy;
    if (first)
      for (int i = 0; i < rows; ++i) yr[i] = out[i];
    else
      for (int i = 0; i < rows; ++i) yr[i] += out[i];
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

void rows_avx2(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  switch (job.tokens) {
    case 1: return gemv_rows<1>(w, job.x, job.y, job.ldy, r0, r1);
    case 2: return gemv_rows<2>(w, job.x, job.y, job.ldy, r0, r1);
    case 3: return gemv_rows<3>(w, job.x, job.y, job.ldy, r0, r1);
    case 4: return gemv_rows<4>(w, job.x, job.y, job.ldy, r0, r1);
    default: break;
  }
  // 5+ tokens: the 16-row tiles covering [r0, r1); r0 is tile-aligned and r1 is too unless it is w.rows.
  gemm_tiles(w, job.x, job.y, job.ldy, job.tokens, r0 / kTileRows, (r1 + kTileRows - 1) / kTileRows);
}

void dequant_row_avx2(const WeightView& w, int64_t r, float* out) {
  const Decoder dec{w};
  const int64_t Ks = simd_cols(w);
  int64_t k = 0;
  for (; k < Ks; k += kChunk) {
    __m256 wv[4];
    dec.decode(r, k, wv);
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(out + k + 8 * j, wv[j]);
  }
  for (; k < w.cols; ++k) out[k] = weight_element_ref(w, r, k);
}

}  // namespace m2::detail
#else
#include "backend/cpu/linear.h"
#include "core/error.h"
namespace m2::detail {
void rows_avx2(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the AVX2 path is not compiled for this architecture", job.w->name);
}
void decode_tile_avx2(const WeightView& w, int64_t, int, int64_t, int64_t, float*) {
  fail("linear {}: the AVX2 path is not compiled for this architecture", w.name);
}
void dequant_row_avx2(const WeightView& w, int64_t r, float* out) { dequant_row_ref(w, r, out); }
}  // namespace m2::detail
#endif
