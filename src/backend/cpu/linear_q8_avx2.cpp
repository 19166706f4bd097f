// AVX2 gemv (1-4 tokens) for FP4 weights with int8 activations (Activations::Q8).
// E2M1 codes are exact small integers once doubled (0, ±1, ±2, ±3, ±4, ±6, ±8, ±12), so a 32-column
// chunk is: 16 packed bytes → nibbles → one pshufb to (2·value + 12) as unsigned bytes → vpmaddubsw
// with the activations' int8 (layout in linear.h: de-interleaved per block, so no unpacking) →
// vpmaddwd → int32 lane sums, from which the +12 offset is removed with the row's precomputed
// correction. Chunks are taken in pairs (see gemv_q8_pass): one int→float conversion and one FMA
// with (weight scale × activation scale) per pair.
// note: only POD fields of WeightView are touched here, so no std::string code is emitted with AVX2.
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/gemm_driver.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/q8_rows.h"
#include "backend/cpu/weight_kind.h"

namespace m2::detail {

namespace {

// Codes of 32 columns → (2·value + 12) as bytes: low lane even columns, high lane odd columns.
// The 16 packed bytes are broadcast to both lanes and the high lane shifted by a nibble.
inline __m256i fp4_offset_codes(const uint8_t* p, __m256i lut, __m256i nib, __m256i shift) {
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srlv_epi64(both, shift), nib));
}

constexpr int kMaxChunks = 256;  // 8192 columns per pass; wider rows run in column stripes

// Scale products (weight scale × activation scale) of chunks [c0, c0 + n) of row r, token x, one per
// scale block: MXFP4 out[j] for chunk j, NVFP4 out[2j], out[2j + 1] for its two 16-column halves.
// A last chunk without a pair (n odd) has its products written twice (see pair_scales).
// Returns Σ scale × (12 · Σq) over the scale blocks: what the weights' +12 offset added to the dots.
template <bool Nv>
inline float scale_products(const WeightView& w, int64_t r, const Q8Row& x, int64_t c0, int64_t n, float* out) {
  const uint8_t* sc = w.scales + r * w.scale_stride;
  int64_t j = 0;
  __m256 corr = _mm256_setzero_ps();
  float corr_tail = 0.0f;
  if constexpr (Nv) {
    const __m256 g = _mm256_set1_ps(128.0f * w.global_scale);  // ½ × 2^8 (the F16 trick's offset)
    for (; j + 4 <= n; j += 4) {
      // E4M3 → F16 bits (× 2^-8): sign-extend, shift exponent+mantissa into place, clear bit 14.
      const __m128i b = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + 2 * (c0 + j))));
      const __m128i h = _mm_and_si128(_mm_slli_epi16(b, 7), _mm_set1_epi16(int16_t(0xBFFF)));
      const __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(h), g), _mm256_loadu_ps(x.scale2 + 2 * (c0 + j)));
      corr = _mm256_fmadd_ps(v, _mm256_loadu_ps(x.corr + 2 * (c0 + j)), corr);
      _mm256_store_ps(out + 2 * j, v);
    }
    for (; j < n; ++j) {
      const int64_t c = c0 + j;
      const float xs = x.scale[c] * 0.5f * w.global_scale;
      out[2 * j] = kE4M3ToF32[sc[2 * c]] * xs;
      out[2 * j + 1] = kE4M3ToF32[sc[2 * c + 1]] * xs;
      corr_tail += out[2 * j] * x.corr[2 * c] + out[2 * j + 1] * x.corr[2 * c + 1];
    }
    if (n % 2) out[2 * n] = out[2 * n - 2], out[2 * n + 1] = out[2 * n - 1];
  } else {
    for (; j + 8 <= n; j += 8) {
      // E8M0 → float bits: e << 23; e = 0 is 2^-127 (0x00400000), which max() supplies.
      const __m256i e = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + c0 + j)));
      const __m256i bits = _mm256_max_epi32(_mm256_slli_epi32(e, 23), _mm256_set1_epi32(0x00400000));
      const __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_loadu_ps(x.scale + c0 + j)),
                                     _mm256_set1_ps(0.5f));
      _mm256_store_ps(out + j, v);
      corr = _mm256_fmadd_ps(v, _mm256_loadu_ps(x.corr1 + c0 + j), corr);
    }
    for (; j < n; ++j) {
      out[j] = 0.5f * e8m0_to_f32(sc[c0 + j]) * x.scale[c0 + j];
      corr_tail += out[j] * x.corr1[c0 + j];
    }
    if (n % 2) out[n] = out[n - 1];
  }
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(corr), _mm256_extractf128_ps(corr, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
  return _mm_cvtss_f32(s4) + corr_tail;
}

// The scales of pair p's int32 lanes: lanes 0-3 hold chunk a = 2p and 4-7 chunk b = 2p + 1 (for a
// chunk alone, its even and its odd columns, so a = b). MXFP4: [a a a a b b b b]; NVFP4, whose
// 16-column blocks split each chunk's 4 lanes in halves: [a0 a0 a1 a1 b0 b0 b1 b1]. One vpermps
// with its 8 floats loaded from sp (the lanes past the pair's 2 or 4 are read and not used; sp has 8
// floats of slack): in L2, forced AVX2 on Zen 4, ~5-10% faster than two broadcasts and an insert (MXFP4)
// or a broadcast and an in-lane permute (NVFP4). A cross-lane permute per pair in scale_products
// cost more.
template <bool Nv>
inline __m256 pair_scales(const float* sp, int64_t p) {
  if constexpr (Nv)
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(sp + 4 * p), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
  else
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(sp + 2 * p), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

// R rows × T tokens over chunks [c0, c0 + n): first every scale product, then the integer dots.
// Chunks go in pairs: one 32-byte load holds both chunks' codes, its low nibbles are the even columns
// of both and its high nibbles the odd ones, so the activations are regrouped to match once per pair
// (shared by the R rows) and the two products of a pair are summed as int16 before widening
// (|sum| ≤ 2 · 2 · 24 · 127 < 2^15): per pair and row, 6 decode instructions and, per token, 6 more.
template <bool Nv, int T, int R>
inline void gemv_q8_pass(const WeightView& w, const Q8Row* xr, int64_t r, int64_t c0, int64_t n, __m256 acc_io[R][T],
                         float corr[R][T]) {
  if (c0 == 0) prefetch_scales_ahead<R>(w, r);  // read by the scale products of the pass after next
  alignas(32) float sp[R][T][kMaxChunks * 2 + 8];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) corr[i][t] += scale_products<Nv>(w, r + i, xr[t], c0, n, sp[i][t]);
  // Local accumulators: the caller's array may alias the weight bytes (uint8_t), which would make the
  // compiler store it on every step.
  __m256 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = acc_io[i][t];
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kFp4OffsetCodes)));
  const __m256i nib = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = w.data + (r + i) * w.row_bytes + 16 * c0;
  // Rows are short (1536 bytes at the expert widths): the hardware prefetcher sees R streams that end
  // after 24 lines and never ramps up. The next R rows follow in memory, so each pass prefetches them
  // one line per row every 2 pairs, at the offset it is reading.
  const int64_t ahead = 2 * R * w.row_bytes;
  int64_t p = 0;
  for (; 2 * p + 2 <= n; ++p) {
    if ((p & 1) == 0)
      for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(rows[i] + ahead + 32 * p), _MM_HINT_T1);
    __m256i xe[T], xo[T];
    for (int t = 0; t < T; ++t) {
      const int8_t* q = xr[t].q + 32 * (c0 + 2 * p);
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32));
      xe[t] = _mm256_permute2x128_si256(a, b, 0x20);  // even columns of both chunks
      xo[t] = _mm256_permute2x128_si256(a, b, 0x31);  // odd columns
    }
    for (int i = 0; i < R; ++i) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i] + 32 * p));
      const __m256i ce = _mm256_shuffle_epi8(lut, _mm256_and_si256(bytes, nib));
      const __m256i co = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nib));
      for (int t = 0; t < T; ++t) {
        const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(ce, xe[t]), _mm256_maddubs_epi16(co, xo[t]));
        const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones));
        acc[i][t] = _mm256_fmadd_ps(dot, pair_scales<Nv>(sp[i][t], p), acc[i][t]);
      }
    }
  }
  if (2 * p < n) {  // a last chunk alone: both nibbles of its 16 bytes in one register
    const __m256i shift = _mm256_setr_epi64x(0, 0, 4, 4);
    for (int i = 0; i < R; ++i) {
      const __m256i wq = fp4_offset_codes(rows[i] + 32 * p, lut, nib, shift);
      for (int t = 0; t < T; ++t) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[t].q + 32 * (c0 + 2 * p)));
        const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(wq, x), ones));
        acc[i][t] = _mm256_fmadd_ps(dot, pair_scales<Nv>(sp[i][t], p), acc[i][t]);
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc_io[i][t] = acc[i][t];
}

template <bool Nv, int T, int R>
inline void gemv_q8_block(const WeightView& w, const Q8Row* xr, float* y, int64_t ldy, int64_t r) {
  const int64_t nb = w.cols / 32;
  __m256 acc[R][T];
  float corr[R][T] = {};
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
  for (int64_t c0 = 0; c0 < nb; c0 += kMaxChunks)
    gemv_q8_pass<Nv, T, R>(w, xr, r, c0, std::min<int64_t>(kMaxChunks, nb - c0), acc, corr);
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[i][t]), _mm256_extractf128_ps(acc[i][t], 1));
      s = _mm_add_ps(s, _mm_movehl_ps(s, s));
      s = _mm_add_ss(s, _mm_movehdup_ps(s));
      y[t * ldy + r + i] = _mm_cvtss_f32(s) - corr[i][t];
    }
}

template <bool Nv, int T>
void gemv_q8_rows(const LinearJob& job, int64_t r0, int64_t r1) {
  Q8Row xr[T];
  for (int t = 0; t < T; ++t) xr[t] = q8_row(job.xq + t * q8_row_bytes(job.w->cols), job.w->cols);
  for_row_blocks<T == 1 ? 4 : 2>(r0, r1, [&](int64_t r, auto n) {
    gemv_q8_block<Nv, T, decltype(n)::value>(*job.w, xr, job.y, job.ldy, r);
  });
}

// One 32-column block as quantize_q8_rows_reference makes it: the same max (a NaN never enters it,
// as std::max(amax, NaN) keeps amax), the same division and product, and vcvtps2dq's round to
// nearest even where the reference adds and subtracts 1.5 · 2^23 (equal for |x · inv| ≤ 127).
// Writes the 32 codes (16 even columns, then 16 odd), returns the scale; sums per 16-column half
// (write_q8_rows).
inline float quantize_q8_block_avx2(const float* xb, int8_t* q, int32_t half[2]) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v[4];
  __m256 m = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(xb + 8 * i);
    m = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), m);  // NaN lanes of the first operand give m
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const __m256 inv = _mm256_set1_ps(q8_inverse_scale(amax));
  __m256i c[4];  // columns 8i .. 8i + 7 as int32
  for (int i = 0; i < 4; ++i) c[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
  // Bytes after the two packs, by dword: [c0-3 c8-11 c16-19 c24-27 | c4-7 c12-15 c20-23 c28-31];
  // vpermd puts them in column order, vpshufb splits each lane into its even and odd columns, vpermq
  // joins the even halves and the odd halves.
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
  const __m256i cols = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  const __m256i split = _mm256_shuffle_epi8(cols, _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,  //
                                                                    0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_permute4x64_epi64(split, _MM_SHUFFLE(3, 1, 2, 0)));
  const __m256i h = _mm256_hadd_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
  const __m256i h2 = _mm256_hadd_epi32(h, h);  // lane k: [Σ half 0 part k, Σ half 1 part k, ...]
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h2), _mm256_extracti128_si256(h2, 1));
  half[0] = _mm_cvtsi128_si32(s);
  half[1] = _mm_extract_epi32(s, 1);
  return amax / 127.0f;
}

}  // namespace

void quantize_q8_rows_avx2(const float* x, int64_t tokens, int64_t cols, uint8_t* out) {
  write_q8_rows(x, tokens, cols, out, quantize_q8_block_avx2);
}

void rows_q8_avx2(const LinearJob& job, int64_t r0, int64_t r1) {
  const bool nv = job.w->format == WeightFormat::Nvfp4;
  dispatch_rows<4>(int(job.tokens), [&](auto t) {
    constexpr int T = decltype(t)::value;
    if (nv) gemv_q8_rows<true, T>(job, r0, r1);
    else gemv_q8_rows<false, T>(job, r0, r1);
  });
}

}  // namespace m2::detail
#else
#include "backend/cpu/linear.h"
#include "core/error.h"
namespace m2::detail {
void rows_q8_avx2(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the AVX2 int8-activation path is not compiled for this architecture", job.w->name);
}
void quantize_q8_rows_avx2(const float*, int64_t, int64_t, uint8_t*) {
  fail("quantize_q8_rows: the AVX2 path is not compiled for this architecture");
}
}  // namespace m2::detail
#endif
