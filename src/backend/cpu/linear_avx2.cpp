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
#include "backend/cpu/transpose_avx2.h"
#include "backend/cpu/weight_kind.h"

namespace m2::detail {

namespace {

constexpr int kChunk = 32;  // columns decoded per step


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

// Columns [k0, k0 + 32) of row r, unscaled where the format has block scales: out[0..3] (8 columns
// each) times chunk_scale_f32(...) is the weight. FP4 codes give 2× their value (the ½ is in the scale).
template <Kind K>
inline void decode_raw(const WeightView& w, int64_t r, int64_t k0, __m256 out[4]) {
  const uint8_t* row = w.data + r * w.row_bytes;
  if constexpr (K == Kind::Bf16) {
    const uint8_t* p = row + 2 * k0;
    for (int j = 0; j < 4; ++j) {
      __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * j)));
      out[j] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
  } else if constexpr (K == Kind::F16) {
    const uint8_t* p = row + 2 * k0;
    for (int j = 0; j < 4; ++j) out[j] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * j)));
  } else if constexpr (K == Kind::F32) {
    const float* p = reinterpret_cast<const float*>(row) + k0;
    for (int j = 0; j < 4; ++j) out[j] = _mm256_loadu_ps(p + 8 * j);
  } else if constexpr (K == Kind::E4m3 || K == Kind::E5m2) {
    const uint8_t* p = row + k0;
    for (int h = 0; h < 2; ++h) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * h));
      __m256i v;
      if constexpr (K == Kind::E4m3) {
        // Sign-extended to int16, shifted by 7: exponent+mantissa land as an F16 × 2^-8 (the scale
        // carries the 256) and the sign in bit 15; bit 14 (a copy of the sign) is cleared.
        v = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7), _mm256_set1_epi16(int16_t(0xBFFF)));
      } else {
        v = _mm256_slli_epi16(_mm256_cvtepu8_epi16(b), 8);
      }
      out[2 * h] = _mm256_cvtph_ps(_mm256_castsi256_si128(v));
      out[2 * h + 1] = _mm256_cvtph_ps(_mm256_extracti128_si256(v, 1));
    }
  } else {
    __m128i a, b;
    fp4_unpack32(row + k0 / 2, a, b);
    out[0] = i8x8_to_ps(a);
    out[1] = i8x8_to_ps(_mm_srli_si128(a, 8));
    out[2] = i8x8_to_ps(b);
    out[3] = i8x8_to_ps(_mm_srli_si128(b, 8));
  }
}

// Columns [k0, k0 + 32) of row r as fp32 weights.
template <Kind K>
inline void decode(const WeightView& w, int64_t r, int64_t k0, __m256 out[4]) {
  decode_raw<K>(w, r, k0, out);
  if constexpr (kScaled<K>) {
    if constexpr (K == Kind::Nvfp4) {
      const __m256 s0 = _mm256_set1_ps(chunk_scale_f32<K>(w, r, k0, 0)), s1 = _mm256_set1_ps(chunk_scale_f32<K>(w, r, k0, 1));
      out[0] = _mm256_mul_ps(out[0], s0);
      out[1] = _mm256_mul_ps(out[1], s0);
      out[2] = _mm256_mul_ps(out[2], s1);
      out[3] = _mm256_mul_ps(out[3], s1);
    } else {
      const __m256 s = _mm256_set1_ps(chunk_scale_f32<K>(w, r, k0, 0));
      for (int j = 0; j < 4; ++j) out[j] = _mm256_mul_ps(out[j], s);
    }
  }
}


inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// R rows × T tokens per pass: R independent weight streams (the memory system serves several
// streams per core faster than one) and R·T accumulator chains. Scaled formats multiply each
// scale block's partial sum by its scale once instead of every weight.
template <Kind K, int T, int R>
inline void gemv_pass(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t r, int64_t Ks) {
  const int64_t Kc = w.cols;
  __m256 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
  // The next passes' rows follow in memory: prefetch them at the offset being read, one line per row
  // per 64 bytes of row (short rows end before the hardware prefetcher has ramped up). Into L2 (T1),
  // as every gemv here: into L1 (T0) the 1-token gemv from memory ran 5-36% slower, by format
  // (forced AVX2 on an AVX-512 host, 4 rounds, 2026-12-06, docs/BENCHMARKS.md).
  constexpr int64_t elem_bits = kElementBits<K>;
  const int64_t chunk_bytes = kChunk * elem_bits / 8, ahead = 2 * R * w.row_bytes;
  if constexpr (K == Kind::Nvfp4 || K == Kind::Mxfp4) prefetch_scales_ahead<R>(w, r);
  for (int64_t k = 0; k < Ks; k += kChunk) {
    if (r + 2 * R < w.rows && (k * elem_bits / 8) % 64 < chunk_bytes)
      for (int i = 0; i < R; ++i)
        _mm_prefetch(reinterpret_cast<const char*>(w.data + (r + i) * w.row_bytes + k * elem_bits / 8 + ahead), _MM_HINT_T1);
    for (int i = 0; i < R; ++i) {
      __m256 wv[4];
      decode_raw<K>(w, r + i, k, wv);
      // Partial sums of columns 0-15 and 16-31 (NVFP4's two scale blocks; one scale for the others).
      const float s0 = chunk_scale_f32<K>(w, r + i, k, 0), s1 = K == Kind::Nvfp4 ? chunk_scale_f32<K>(w, r + i, k, 1) : s0;
      for (int t = 0; t < T; ++t) {
        const float* xt = x + t * Kc + k;
        __m256 p0 = _mm256_mul_ps(wv[0], _mm256_loadu_ps(xt));
        __m256 p1 = _mm256_mul_ps(wv[2], _mm256_loadu_ps(xt + 16));
        p0 = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(xt + 8), p0);
        p1 = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(xt + 24), p1);
        if constexpr (kScaled<K>)
          acc[i][t] = _mm256_fmadd_ps(p1, _mm256_set1_ps(s1), _mm256_fmadd_ps(p0, _mm256_set1_ps(s0), acc[i][t]));
        else
          acc[i][t] = _mm256_add_ps(acc[i][t], _mm256_add_ps(p0, p1));
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      float s = hsum(acc[i][t]);
      for (int64_t k = Ks; k < Kc; ++k) s += x[t * Kc + k] * weight_element_ref(w, r + i, k);
      y[t * ldy + r + i] = s;
    }
}

// BF16 over x in XLayout::Pairs (per 32-column block: 16 even columns, then 16 odd):
// 16 weights are one 32-byte load whose 32-bit lanes hold an even column in the low half and the next
// odd column in the high half, so `<< 16` gives the even columns as fp32 and `& 0xFFFF0000` the odd
// ones. 3 instructions per 16 weights and row before the FMAs (the zero-extend path takes 6), which
// keeps the product memory-bound. Two accumulators per (row, token) while registers allow.
template <int T, int R>
inline void gemv_bf16_pass(const WeightView& w, const float* x, const float* xd, float* y, int64_t ldy, int64_t r,
                           int64_t Ks) {
  constexpr int A = T * R <= 4 ? 2 : 1;
  const int64_t Kc = w.cols;
  __m256 acc[R][T][A];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t)
      for (int a = 0; a < A; ++a) acc[i][t][a] = _mm256_setzero_ps();
  const __m256i odd = _mm256_set1_epi32(int(0xFFFF0000u));
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = w.data + (r + i) * w.row_bytes;
  const int64_t ahead = 2 * R * w.row_bytes;  // the next passes' rows, as in gemv_pass
  const bool prefetch = r + 2 * R < w.rows;
  for (int64_t k = 0; k < Ks; k += kChunk) {
    if (prefetch)
      for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(rows[i] + 2 * k + ahead), _MM_HINT_T1);
    for (int i = 0; i < R; ++i) {
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i] + 2 * k));       // columns 0-15
      const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i] + 2 * k + 32));  // 16-31
      const __m256 even_lo = _mm256_castsi256_ps(_mm256_slli_epi32(lo, 16)), odd_lo = _mm256_castsi256_ps(_mm256_and_si256(lo, odd));
      const __m256 even_hi = _mm256_castsi256_ps(_mm256_slli_epi32(hi, 16)), odd_hi = _mm256_castsi256_ps(_mm256_and_si256(hi, odd));
      for (int t = 0; t < T; ++t) {
        const float* xt = xd + t * Kc + k;  // [even 0-14, even 16-30, odd 1-15, odd 17-31]
        __m256& a0 = acc[i][t][0];
        __m256& a1 = acc[i][t][A - 1];
        a0 = _mm256_fmadd_ps(even_lo, _mm256_loadu_ps(xt), a0);
        a1 = _mm256_fmadd_ps(odd_lo, _mm256_loadu_ps(xt + 16), a1);
        a0 = _mm256_fmadd_ps(even_hi, _mm256_loadu_ps(xt + 8), a0);
        a1 = _mm256_fmadd_ps(odd_hi, _mm256_loadu_ps(xt + 24), a1);
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      float s = hsum(A == 2 ? _mm256_add_ps(acc[i][t][0], acc[i][t][A - 1]) : acc[i][t][0]);
      for (int64_t k = Ks; k < Kc; ++k) s += x[t * Kc + k] * weight_element_ref(w, r + i, k);
      y[t * ldy + r + i] = s;
    }
}

// 32 E4M3 bytes → out[q] = columns 4j + q (j = 0..7) as fp32 of value × 2^-120. In a 32-bit lane of
// 4 bytes, a byte moved to bits 24-31 (it is there already for 4j+3; << 8, 16, 24 on 16-bit or 32-bit
// lanes for the others) and shifted arithmetically right by 4 lands its sign in bit 31 and its
// exponent and mantissa in bits 20-26: clearing the sign's copies in bits 27-30 leaves the fp32 of
// value × 2^-120, exact for E4M3's subnormals too (they become fp32 subnormals). 9 integer
// instructions per 32 weights and no conversion.
inline void e4m3_quads_raw(const uint8_t* p, __m256 out[4]) {
  const __m256i keep = _mm256_set1_epi32(int(0x87F00000u));  // sign + exponent/mantissa bits 20-26
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i odd = _mm256_srai_epi16(v, 4);                           // 4j+1, 4j+3 in bits 8-15, 24-31
  const __m256i even = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 4);  // 4j, 4j+2
  out[0] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(even, 16), keep));
  out[1] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(odd, 16), keep));
  out[2] = _mm256_castsi256_ps(_mm256_and_si256(even, keep));
  out[3] = _mm256_castsi256_ps(_mm256_and_si256(odd, keep));
}

// E4M3 over x in XLayout::E4m3Quads (columns 4j, 4j+1, 4j+2, 4j+3 of each 32-column block, times
// 2^64), decoded by e4m3_quads_raw: the F16 route (decode_raw) took 2 vcvtph2ps per 8 weights, which
// made FP8 the slowest format per byte. x carries 2^64 so that products stay fp32-normal (a value ×
// 2^-120 times a small x would not), and each block's scale the remaining 2^56 (the scale is applied
// once per block).
template <int T, int R>
inline void gemv_e4m3_pass(const WeightView& w, const float* x, const float* xq, float* y, int64_t ldy, int64_t r,
                           int64_t Ks) {
  constexpr float kScaleRest = 0x1p120f / kE4m3XScale;
  // Chains per (row, token): two while registers allow. One token over 4 rows keeps one: x's 4
  // vectors stay in registers for the 4 rows, and the 16 FMAs of an iteration, 4 chains of 4, are
  // not what bounds it (two chains spilled and ran 7% slower, in L2, forced AVX2 on Zen 4). Two
  // tokens over 2 rows keep one too: 10.2 -> 13.6-15.8 GB/s in L2 (BM_LinearInL2/format:1/q8:0/tokens:2).
  constexpr int A = (T == 1 ? R < 4 : T * R <= 2) ? 2 : 1;
  const int64_t Kc = w.cols, bc = w.block_cols;
  const uint8_t* rows[R];
  const uint8_t* scale_rows[R];  // float scales, [cols / block_cols] per block row
  for (int i = 0; i < R; ++i) {
    rows[i] = w.data + (r + i) * w.row_bytes;
    scale_rows[i] = w.scales + 4 * ((r + i) / w.block_rows * w.scale_stride);
  }
  const int64_t ahead = 2 * R * w.row_bytes;  // the next passes' rows, as in gemv_pass
  const bool prefetch = r + 2 * R < w.rows;
  __m256 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
  for (int64_t k0 = 0; k0 < Ks; k0 += bc) {
    __m256 part[R][T][A];  // this scale block's sums
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t)
        for (int a = 0; a < A; ++a) part[i][t][a] = _mm256_setzero_ps();
    const int64_t k1 = k0 + bc < Ks ? k0 + bc : Ks;
    for (int64_t k = k0; k < k1; k += kChunk) {
      if (prefetch && k % 64 == 0)
        for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(rows[i] + k + ahead), _MM_HINT_T1);
      // One token: x loaded once for the R rows. Its own copy of the 4 FMAs: written through a shared
      // helper taking the chains by pointer, GCC kept them in memory (~20% slower in L2).
      if constexpr (T == 1) {
        const float* xt = xq + k;
        const __m256 x0 = _mm256_loadu_ps(xt), x1 = _mm256_loadu_ps(xt + 8), x2 = _mm256_loadu_ps(xt + 16),
                     x3 = _mm256_loadu_ps(xt + 24);
        for (int i = 0; i < R; ++i) {
          __m256 c[4];
          e4m3_quads_raw(rows[i] + k, c);
          __m256 &p = part[i][0][0], &q = part[i][0][A - 1];
          p = _mm256_fmadd_ps(c[0], x0, p);
          q = _mm256_fmadd_ps(c[1], x1, q);
          p = _mm256_fmadd_ps(c[2], x2, p);
          q = _mm256_fmadd_ps(c[3], x3, q);
        }
        continue;
      }
      for (int i = 0; i < R; ++i) {
        __m256 c[4];
        e4m3_quads_raw(rows[i] + k, c);
        const __m256 c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
        for (int t = 0; t < T; ++t) {
          const float* xt = xq + t * Kc + k;
          __m256 &p = part[i][t][0], &q = part[i][t][A - 1];
          p = _mm256_fmadd_ps(c0, _mm256_loadu_ps(xt), p);
          q = _mm256_fmadd_ps(c1, _mm256_loadu_ps(xt + 8), q);
          p = _mm256_fmadd_ps(c2, _mm256_loadu_ps(xt + 16), p);
          q = _mm256_fmadd_ps(c3, _mm256_loadu_ps(xt + 24), q);
        }
      }
    }
    for (int i = 0; i < R; ++i) {
      float s;
      __builtin_memcpy(&s, scale_rows[i] + 4 * (k0 / bc), 4);
      const __m256 sv = _mm256_set1_ps(s * kScaleRest);
      for (int t = 0; t < T; ++t)
        acc[i][t] = _mm256_fmadd_ps(A == 2 ? _mm256_add_ps(part[i][t][0], part[i][t][A - 1]) : part[i][t][0], sv, acc[i][t]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      float s = hsum(acc[i][t]);
      for (int64_t k = Ks; k < Kc; ++k) s += x[t * Kc + k] * weight_element_ref(w, r + i, k);
      y[t * ldy + r + i] = s;
    }
}

template <Kind K, int T>
void gemv_rows(const WeightView& w, const float* x, const float* xd, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t Ks = simd_cols(w);
  for_row_blocks<T == 1 ? 4 : 2>(r0, r1, [&](int64_t r, auto n) {
    if constexpr (K == Kind::Bf16) gemv_bf16_pass<T, decltype(n)::value>(w, x, xd, y, ldy, r, Ks);
    else if constexpr (K == Kind::E4m3) gemv_e4m3_pass<T, decltype(n)::value>(w, x, xd, y, ldy, r, Ks);
    else gemv_pass<K, T, decltype(n)::value>(w, x, y, ldy, r, Ks);
  });
}

constexpr int kTileRows = int(kAvx2TileRows), kTileCols = 256, kMr = 6;

}  // namespace

// Decodes W[r0 .. r0+tile_rows) × [k0 .. k0+kc) into tile[k][tile_rows] (rows past N are zero).
namespace {
// Groups of 8 rows are decoded 32 columns at a time and transposed in registers.
template <Kind K>
void decode_tile(const WeightView& w, int64_t r0, int tile_rows, int64_t k0, int64_t kc, float* tile) {
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
        decode<K>(w, r, k0 + k, wv);
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

}  // namespace

void decode_tile_avx2(const WeightView& w, int64_t r0, int tile_rows, int64_t k0, int64_t kc, float* tile) {
  with_kind(w, [&](auto k) { decode_tile<decltype(k)::value>(w, r0, tile_rows, k0, kc, tile); });
}

namespace {

// acc[m][16] += x[m rows, kc] · tile[kc][16]; then y rows get acc (store on first chunk, add after).
// Step k < n_prefetch prefetches prefetch[k] into L2 (gemm_tile_loop: the next chunk's weights).
template <int M>
void micro_kernel(const float* x, int64_t ldx, const float* tile, int64_t kc, float* y, int64_t ldy, int rows,
                  bool first, const uint8_t* const* prefetch, int64_t n_prefetch) {
  // The accumulators must stay in registers: GCC 12 kept a stack copy of them up to date on every k
  // step (12 stores per 12 FMAs, a third of the FMA peak) while the partial-tile epilogue read them
  // through memory. Full tiles are therefore written straight from the registers.
  __m256 acc[M][2];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    if (k < n_prefetch) _mm_prefetch(reinterpret_cast<const char*>(prefetch[k]), _MM_HINT_T1);
    const __m256 w0 = _mm256_load_ps(tile + k * kTileRows), w1 = _mm256_load_ps(tile + k * kTileRows + 8);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m256 xb = _mm256_broadcast_ss(x + m * ldx + k);
      acc[m][0] = _mm256_fmadd_ps(xb, w0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(xb, w1, acc[m][1]);
    }
  }
  if (rows == kTileRows) {
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      float* yr = y + m * ldy;
      if (!first) {
        acc[m][0] = _mm256_add_ps(acc[m][0], _mm256_loadu_ps(yr));
        acc[m][1] = _mm256_add_ps(acc[m][1], _mm256_loadu_ps(yr + 8));
      }
      _mm256_storeu_ps(yr, acc[m][0]);
      _mm256_storeu_ps(yr + 8, acc[m][1]);
    }
    return;
  }
  alignas(32) float out[M][kTileRows];
  for (int m = 0; m < M; ++m) {
    _mm256_store_ps(out[m], acc[m][0]);
    _mm256_store_ps(out[m] + 8, acc[m][1]);
  }
  for (int m = 0; m < M; ++m) {
    float* yr = y + m * ldy;
    if (first)
      for (int i = 0; i < rows; ++i) yr[i] = out[m][i];
    else
      for (int i = 0; i < rows; ++i) yr[i] += out[m][i];
  }
}

void gemm_tiles(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t tokens, int64_t tile0,
                int64_t tile1) {
  alignas(64) float tile[kTileCols * kTileRows];
  const int64_t K = w.cols, N = ldy;
  gemm_tile_loop<kTileRows, kTileCols, kMr>(
      w, x, y, ldy, tokens, tile0, tile1, tile,
      [&](int64_t r0, int64_t k0, int64_t kc, float* t) { decode_tile_avx2(w, r0, kTileRows, k0, kc, t); },
      [&](auto m, const float* xt, const float* t, int64_t kc, float* yt, int rows, bool first,
          const uint8_t* const* prefetch, int64_t n_prefetch) {
        micro_kernel<decltype(m)::value>(xt, K, t, kc, yt, N, rows, first, prefetch, n_prefetch);
      });
}

}  // namespace

void rows_avx2(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  if (job.tokens <= 4) {
    with_kind(w, [&](auto k) {
      constexpr Kind K = decltype(k)::value;
      dispatch_rows<4>(int(job.tokens), [&](auto t) {
        gemv_rows<K, decltype(t)::value>(w, job.x, job.xd, job.y, job.ldy, r0, r1);
      });
    });
    return;
  }
  // 5+ tokens: the 16-row tiles covering [r0, r1); r0 is tile-aligned and r1 is too unless it is w.rows.
  gemm_tiles(w, job.x, job.y, job.ldy, job.tokens, r0 / kTileRows, (r1 + kTileRows - 1) / kTileRows);
}

void dequant_row_avx2(const WeightView& w, int64_t r, float* out) {
  const int64_t Ks = simd_cols(w);
  with_kind(w, [&](auto kind) {
    for (int64_t k = 0; k < Ks; k += kChunk) {
      __m256 wv[4];
      decode<decltype(kind)::value>(w, r, k, wv);
      for (int j = 0; j < 4; ++j) _mm256_storeu_ps(out + k + 8 * j, wv[j]);
    }
  });
  for (int64_t k = Ks; k < w.cols; ++k) out[k] = weight_element_ref(w, r, k);
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
