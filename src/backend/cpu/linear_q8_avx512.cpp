// AVX-512 VNNI + VBMI gemv (1-4 tokens) for FP4 weights with int8 activations (Activations::Q8):
// the AVX2 kernel's arithmetic (linear_q8_avx2.cpp: codes as 2·value + 12 unsigned bytes, the
// offset removed with the activations' precomputed 12·Σq) at twice the width, with fewer steps:
//   - 64 packed bytes (4 chunks A-D of 32 columns) are one load. vpermb indexes a 64-byte table with
//     the low 6 bits of each byte, so with the 16-entry code table repeated 4 times the bytes index
//     it by their low nibble as they are (the even columns [Ae Be Ce De], one 16-byte lane per
//     chunk) and, shifted right by 4 in 16-bit lanes, by their high nibble (the odd columns): 3
//     instructions per 128 weights, no mask.
//   - the activations of the 4 chunks ([Ae Ao Be Bo | Ce Co De Do] in the Q8 layout) are regrouped
//     to [Ae Be Ce De] and [Ao Bo Co Do] by two 128-bit lane shuffles per token, shared by the R rows.
//   - vpdpbusd multiplies u8 codes by s8 activations and sums 4 products into each int32 lane (no
//     int16 intermediate, no saturation). Each dot starts from the activations' −12·Σq of its 16
//     columns (one zero-extending load per token, shared by the rows), so the codes' offset leaves
//     the integers exactly. Then one conversion and one FMA per 4 chunks, by the weight scales of
//     the 4 chunks (one vpshufb places the 4-8 scale bytes in their lanes, weight_scales4) times the
//     activation scales (per token, shared by the rows). Those made per (row, token) beside the dots
//     (scale_lanes4, which the offset correction also went through) streamed 37-41 GB/s in cache;
//     this streams 43-50, and from memory the same 23-29 GB/s (docs/BENCHMARKS.md).
// note: only POD fields of WeightView are touched here, so no std::string code is emitted with AVX-512.
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/gemm_driver.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/q8_rows.h"
#include "backend/cpu/weight_kind.h"

namespace m2::detail {

namespace {

constexpr int kMaxChunks = 128;  // 4096 columns per pass; wider rows run in column stripes

// Scale products (weight scale × activation scale × ½) of chunks [c0, c0 + n) of row r, token x, one
// per int32 lane of the dot products: out[4j .. 4j + 4) for chunk j. The lanes of a chunk hold
// columns 0-7, 8-15, 16-23, 24-31 (even and odd summed), so NVFP4 (two 16-column blocks) is
// [s0 s0 s1 s1] and MXFP4 [s s s s]. Returns Σ scale × (12 · Σq) over the scale blocks: what the
// codes' +12 offset added to the dots. Scalar: for the 1-3 chunks past the groups of 4.
template <bool Nv>
inline float scale_lanes(const WeightView& w, int64_t r, const Q8Row& x, int64_t c0, int64_t n, float* out) {
  const uint8_t* sc = w.scales + r * w.scale_stride;
  float corr = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t c = c0 + j;
    if constexpr (Nv) {
      const float xs = x.scale[c] * 0.5f * w.global_scale;
      const float s0 = kE4M3ToF32[sc[2 * c]] * xs, s1 = kE4M3ToF32[sc[2 * c + 1]] * xs;
      out[4 * j] = out[4 * j + 1] = s0;
      out[4 * j + 2] = out[4 * j + 3] = s1;
      corr += s0 * x.corr[2 * c] + s1 * x.corr[2 * c + 1];
    } else {
      const float s = 0.5f * e8m0_to_f32(sc[c]) * x.scale[c];
      out[4 * j] = out[4 * j + 1] = out[4 * j + 2] = out[4 * j + 3] = s;
      corr += s * x.corr1[c];
    }
  }
  return corr;
}

// The weight scales of the 4 chunks [c, c + 4) of a row as one register, in the lanes of the dots:
// NVFP4 [s0 s0 s1 s1] per chunk (× 2^-8, made up by activation_factor), MXFP4
// [s s s s]. One vpshufb places each scale byte in its lanes. NVFP4: the E4M3 byte in the high
// byte of an F16 lane, shifted right arithmetically by 1 (sign-extended, exponent and mantissa in
// place), bit 14 cleared. MXFP4: the E8M0 byte in the top byte of an F32 lane, shifted right by 1
// (e << 23), where e = 0 is 2^-127 (0x00400000), which max() supplies.
template <bool Nv>
inline __m512 weight_scales4(const uint8_t* sc, int64_t c) {
  if constexpr (Nv) {
    int64_t e8;
    std::memcpy(&e8, sc + 2 * c, 8);
    const __m256i idx = _mm256_setr_epi8(-128, 0, -128, 0, -128, 1, -128, 1, -128, 2, -128, 2, -128, 3, -128, 3,  //
                                         -128, 4, -128, 4, -128, 5, -128, 5, -128, 6, -128, 6, -128, 7, -128, 7);
    const __m256i hi = _mm256_shuffle_epi8(_mm256_set1_epi64x(e8), idx);
    const __m256i h = _mm256_and_si256(_mm256_srai_epi16(hi, 1), _mm256_set1_epi16(int16_t(0xBFFF)));
    return _mm512_cvtph_ps(h);
  } else {
    int32_t e4;
    std::memcpy(&e4, sc + c, 4);
    const __m512i idx = _mm512_setr_epi32(0x00808080, 0x00808080, 0x00808080, 0x00808080, 0x01808080, 0x01808080,
                                          0x01808080, 0x01808080, 0x02808080, 0x02808080, 0x02808080, 0x02808080,
                                          0x03808080, 0x03808080, 0x03808080, 0x03808080);
    const __m512i top = _mm512_shuffle_epi8(_mm512_set1_epi32(e4), idx);
    return _mm512_castsi512_ps(_mm512_max_epu32(_mm512_srli_epi32(top, 1), _mm512_set1_epi32(0x00400000)));
  }
}

// What the activations' side multiplies weight_scales4 by: NVFP4 the global scale × ½ × 2^8, MXFP4 ½.
template <bool Nv>
inline float activation_factor(const WeightView& w) {
  return Nv ? 128.0f * w.global_scale : 0.5f;
}

// R rows × T tokens over chunks [c0, c0 + n): the integer dots 4 chunks per step, each started from
// the activations' −12·Σq per 16 columns (in the first lane of its half: the codes' +12 offset
// leaves the integers exactly), then × (weight scales × activation scales); the last n % 4 chunks
// one at a time at 256 bits (even codes in the low lane, odd in the high one, as the Q8 layout has
// them), their offsets removed in corr.
template <bool Nv, int T, int R>
inline void gemv_q8_pass(const WeightView& w, const Q8Row* xr, int64_t r, int64_t c0, int64_t n, __m512 acc_io[R][T],
                         float corr[R][T]) {
  // Local accumulators: the caller's array may alias the weight bytes (uint8_t).
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = acc_io[i][t];
  const __m128i lut16 = _mm_load_si128(reinterpret_cast<const __m128i*>(kFp4OffsetCodes));
  const __m512i lut = _mm512_broadcast_i32x4(lut16);
  const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512 factor = _mm512_set1_ps(activation_factor<Nv>(w));
  const uint8_t* rows[R];
  const uint8_t* sc[R];
  for (int i = 0; i < R; ++i) {
    rows[i] = w.data + (r + i) * w.row_bytes + 16 * c0;
    sc[i] = w.scales + (r + i) * w.scale_stride;
  }
  // The next passes' rows follow in memory: one prefetch per row and 64 bytes, 2R rows ahead (the
  // expert rows are too short for the hardware prefetcher to ramp up, see linear_q8_avx2.cpp), into
  // L2: into L1 (T0) the product streamed ~10% slower (measured on a Xeon with AVX-512: the lines
  // wait there beside the scale products and displace them). Their scales likewise, once per pass.
  const int64_t ahead = 2 * R * w.row_bytes;
  if (c0 == 0) prefetch_scales_ahead<R>(w, r);
  int64_t g = 0;
  for (; 4 * g + 4 <= n; ++g) {
    for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(rows[i] + ahead + 64 * g), _MM_HINT_T1);
    const int64_t c = c0 + 4 * g;
    __m512i xe[T], xo[T], start[T];
    __m512 xs[T];
    for (int t = 0; t < T; ++t) {
      const int8_t* q = xr[t].q + 32 * c;
      const __m512i a = _mm512_loadu_si512(q), b = _mm512_loadu_si512(q + 64);  // [Ae Ao Be Bo], [Ce Co De Do]
      xe[t] = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(2, 0, 2, 0));
      xo[t] = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 1, 3, 1));
      // [−corr(c, 0), 0, −corr(c, 1), 0] per chunk: each half's offset in its first lane.
      start[t] = _mm512_cvtepu32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[t].neg_corr2 + 2 * c)));
      xs[t] = _mm512_mul_ps(_mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(xr[t].scale2 + 2 * c))), factor);
    }
    for (int i = 0; i < R; ++i) {
      const __m512i bytes = _mm512_loadu_si512(rows[i] + 64 * g);
      const __m512i ce = _mm512_permutexvar_epi8(bytes, lut);
      const __m512i co = _mm512_permutexvar_epi8(_mm512_srli_epi16(bytes, 4), lut);
      const __m512 ws = weight_scales4<Nv>(sc[i], c);
      for (int t = 0; t < T; ++t) {
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(start[t], ce, xe[t]), co, xo[t]);
        acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws, xs[t]), acc[i][t]);
      }
    }
  }
  if (4 * g < n) {
    const int64_t c4 = 4 * g;
    alignas(64) float sp[R][T][16];
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) corr[i][t] += scale_lanes<Nv>(w, r + i, xr[t], c0 + c4, n - c4, sp[i][t]);
    const __m256i lut256 = _mm256_broadcastsi128_si256(lut16), nib = _mm256_set1_epi8(0x0F);
    const __m256i shift = _mm256_setr_epi64x(0, 0, 4, 4);
    __m256 tail[R][T];
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) tail[i][t] = _mm256_setzero_ps();
    for (int64_t c = 4 * g; c < n; ++c)
      for (int i = 0; i < R; ++i) {
        const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i] + 16 * c)));
        const __m256i wq = _mm256_shuffle_epi8(lut256, _mm256_and_si256(_mm256_srlv_epi64(both, shift), nib));
        for (int t = 0; t < T; ++t) {
          const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[t].q + 32 * (c0 + c)));
          const __m256 dot = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), wq, xq));
          tail[i][t] = _mm256_fmadd_ps(dot, _mm256_broadcast_ps(reinterpret_cast<const __m128*>(sp[i][t] + 4 * (c - c4))), tail[i][t]);
        }
      }
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) acc[i][t] = _mm512_add_ps(acc[i][t], _mm512_zextps256_ps512(tail[i][t]));
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc_io[i][t] = acc[i][t];
}

template <bool Nv, int T, int R>
inline void gemv_q8_block(const WeightView& w, const Q8Row* xr, float* y, int64_t ldy, int64_t r) {
  const int64_t nb = w.cols / 32;
  __m512 acc[R][T];
  float corr[R][T] = {};
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
  for (int64_t c0 = 0; c0 < nb; c0 += kMaxChunks)
    gemv_q8_pass<Nv, T, R>(w, xr, r, c0, std::min<int64_t>(kMaxChunks, nb - c0), acc, corr);
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) y[t * ldy + r + i] = _mm512_reduce_add_ps(acc[i][t]) - corr[i][t];
}

template <bool Nv, int T>
void gemv_q8_rows(const LinearJob& job, int64_t r0, int64_t r1) {
  Q8Row xr[T];
  for (int t = 0; t < T; ++t) xr[t] = q8_row(job.xq + t * q8_row_bytes(job.w->cols), job.w->cols);
  for_row_blocks<4>(r0, r1, [&](int64_t r, auto n) {
    gemv_q8_block<Nv, T, decltype(n)::value>(*job.w, xr, job.y, job.ldy, r);
  });
}

}  // namespace

void rows_q8_avx512(const LinearJob& job, int64_t r0, int64_t r1) {
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
void rows_q8_avx512(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the AVX-512 int8-activation path is not compiled for this architecture", job.w->name);
}
}  // namespace m2::detail
#endif
