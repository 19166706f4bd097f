// AVX-512 VNNI + VBMI matrix product (5+ tokens) for FP4 weights with int8 activations
// (Activations::Q8): the prefill of an expert, which sees ~16 tokens of a 512-token prompt.
// The 1-4 token gemv (linear_q8_avx512.cpp) keeps one row per register and sums along columns; here
// a register holds 16 rows, so one weight load serves every token of a step and no horizontal sums
// are needed:
//   - pack: 32 rows × 512 columns are transposed to [scale block][lane group of 16 rows][code dword]
//     (8 × 8 dwords per 256-bit half, then one vpermt2q per dword), and vpermb turns each dword's low
//     nibbles (the even columns) and high nibbles (the odd ones) into the codes 2·value + 12, as
//     unsigned bytes: 4 of a row's columns per int32 lane, in the order the Q8 rows store them
//     (per block the 16 even columns, then the 16 odd ones), so the activations are one 4-byte
//     broadcast per token and lane group.
//   - micro-kernel: kMr tokens × 32 rows; per scale block (32 columns; NVFP4: each 16-column half)
//     the int32 sums start at −12·Σq (the codes' offset, precomputed in the Q8 rows), take 8 (4)
//     vpdpbusd, and are converted and added to fp32 with the product of the weight scales (one per
//     row lane) and the token's block scale.
// The integer sums are those of the gemv and of the fp32 tiles on the rounded x: only the fp32
// accumulation order differs between the paths.
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

constexpr int kRows = 32;         // two lane groups of 16 rows
constexpr int kChunkBlocks = 16;  // 512 columns per pack: 20 KB, beside kMr tokens' 512 bytes each in L1
constexpr int kMr = 6;            // tokens per micro-kernel step: 12 int32 + 12 fp32 accumulators

struct PackedTile {
  // codes[b][g][2d + hi]: block b, rows 16g .. 16g + 15 (one per int32 lane), code dword d of the
  // block (columns 8d .. 8d + 7), its even columns (hi = 0) or odd ones (hi = 1), as 2·value + 12.
  alignas(64) uint8_t codes[kChunkBlocks][2][8][64];
  // scales[b][h][g][lane]: ½ × the weight scale of scale block h of block b (MXFP4: h = 0 only).
  alignas(64) float scales[kChunkBlocks][2][2][16];
};

const uint8_t kZeroCodes[32] = {};  // rows past the end: codes +0 (so their sums are exactly 0), scale byte 0

inline __m512i pair_halves(const uint8_t* lo_row, const uint8_t* hi_row, __mmask32 bytes) {
  const __m256i a = _mm256_maskz_loadu_epi8(bytes, lo_row), b = _mm256_maskz_loadu_epi8(bytes, hi_row);
  return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

// z[i] = [dwords 0-7 of row i | dwords 0-7 of row i + 8] → out[d] = dword d of rows 0-15.
inline void transpose_dwords(const __m512i z[8], __m512i out[8]) {
  __m512i t[8], u[8];
  for (int j = 0; j < 2; ++j) {
    const __m512i* s = z + 4 * j;
    t[4 * j] = _mm512_unpacklo_epi32(s[0], s[1]);      // r0d0 r1d0 r0d1 r1d1 per lane
    t[4 * j + 1] = _mm512_unpackhi_epi32(s[0], s[1]);  // r0d2 r1d2 r0d3 r1d3
    t[4 * j + 2] = _mm512_unpacklo_epi32(s[2], s[3]);
    t[4 * j + 3] = _mm512_unpackhi_epi32(s[2], s[3]);
    u[4 * j] = _mm512_unpacklo_epi64(t[4 * j], t[4 * j + 2]);      // d0 (d4 in lanes 1, 3) of 4 rows
    u[4 * j + 1] = _mm512_unpackhi_epi64(t[4 * j], t[4 * j + 2]);  // d1 (d5)
    u[4 * j + 2] = _mm512_unpacklo_epi64(t[4 * j + 1], t[4 * j + 3]);
    u[4 * j + 3] = _mm512_unpackhi_epi64(t[4 * j + 1], t[4 * j + 3]);
  }
  const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), second = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  for (int d = 0; d < 4; ++d) {
    out[d] = _mm512_permutex2var_epi64(u[d], first, u[4 + d]);
    out[4 + d] = _mm512_permutex2var_epi64(u[d], second, u[4 + d]);
  }
}

// 16 rows' first bytes (≤ 32, the rest read as 0) → out[d] = bytes 4d .. 4d + 3 of every row, one row
// per int32 lane.
inline void rows_to_lanes(const uint8_t* const src[16], __mmask32 bytes, __m512i out[8]) {
  __m512i z[8];
  for (int i = 0; i < 8; ++i) z[i] = pair_halves(src[i], src[i + 8], bytes);
  transpose_dwords(z, out);
}

inline __m512i lane_byte(const __m512i dwords[8], int j) {
  return _mm512_and_si512(_mm512_srli_epi32(dwords[j / 4], 8 * (j % 4)), _mm512_set1_epi32(0xFF));
}

// E4M3 bytes (one per int32 lane) → their values × f, through F16 as the gemv's scale_lanes: the
// byte sign-extended and shifted left by 7 is the F16 bit pattern of value × 2^-8 once bit 14 is
// cleared. (NaN codes come out finite, 480, as in every fast path: see docs/DESIGN.md.)
inline __m512 e4m3_lanes(__m512i e, float f) {
  const __m256i b = _mm512_cvtepi32_epi16(e);
  const __m256i h = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(b, 8), 1), _mm256_set1_epi16(int16_t(0xBFFF)));
  return _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f * f));
}

// E8M0 bytes (one per int32 lane) → 2^(e − 127) × 0.5, e = 0 as 2^-127, as the gemv's scale_lanes.
inline __m512 e8m0_lanes_half(__m512i e) {
  const __m512i bits = _mm512_max_epi32(_mm512_slli_epi32(e, 23), _mm512_set1_epi32(0x00400000));
  return _mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(0.5f));
}

// Rows [r, r + valid) (valid ≤ 32) × blocks [b0, b0 + nbc) into p.
template <bool Nv>
void pack_tile(const WeightView& w, int64_t r, int64_t valid, int64_t b0, int nbc, PackedTile& p) {
  const __m512i lut = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kFp4OffsetCodes)));
  const int scale_bytes = Nv ? 2 * nbc : nbc;  // ≤ 32
  const __mmask32 scale_mask = scale_bytes == 32 ? ~__mmask32(0) : (__mmask32(1) << scale_bytes) - 1;
  for (int g = 0; g < 2; ++g) {
    const uint8_t* src[16];
    for (int b = 0; b < nbc; b += 2) {
      const int blocks = std::min(2, nbc - b);
      for (int i = 0; i < 16; ++i)
        src[i] = 16 * g + i < valid ? w.data + (r + 16 * g + i) * w.row_bytes + 16 * (b0 + b) : kZeroCodes;
      __m512i d[8];
      rows_to_lanes(src, blocks == 2 ? ~__mmask32(0) : __mmask32(0xFFFF), d);
      for (int k = 0; k < 4 * blocks; ++k) {
        uint8_t* out = p.codes[b + k / 4][g][2 * (k % 4)];
        _mm512_store_si512(out, _mm512_permutexvar_epi8(d[k], lut));
        _mm512_store_si512(out + 64, _mm512_permutexvar_epi8(_mm512_srli_epi16(d[k], 4), lut));
      }
    }
    for (int i = 0; i < 16; ++i)
      src[i] = 16 * g + i < valid ? w.scales + (r + 16 * g + i) * w.scale_stride + (Nv ? 2 : 1) * b0 : kZeroCodes;
    __m512i sc[8];
    rows_to_lanes(src, scale_mask, sc);
    for (int b = 0; b < nbc; ++b) {
      if constexpr (Nv) {
        for (int h = 0; h < 2; ++h) _mm512_store_ps(p.scales[b][h][g], e4m3_lanes(lane_byte(sc, 2 * b + h), 0.5f * w.global_scale));
      } else {
        _mm512_store_ps(p.scales[b][0][g], e8m0_lanes_half(lane_byte(sc, b)));
      }
    }
  }
}

// The codes and scales of rows [r, r + valid) × blocks [b0, b0 + nbc), into L1 ahead of their pack:
// 32 short row pieces are no stream the hardware prefetcher follows.
template <bool Nv>
inline void prefetch_tile(const WeightView& w, int64_t r, int64_t valid, int64_t b0, int nbc) {
  for (int64_t i = 0; i < valid; ++i) {
    const uint8_t* codes = w.data + (r + i) * w.row_bytes + 16 * b0;
    for (int64_t b = 0; b < 16 * nbc; b += 64) _mm_prefetch(reinterpret_cast<const char*>(codes + b), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w.scales + (r + i) * w.scale_stride + (Nv ? 2 : 1) * b0), _MM_HINT_T0);
  }
}

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// acc[t][g] += the M tokens' products with the packed blocks [0, nbc) (block b0 + b of the rows).
template <bool Nv, int M>
inline void tile_tokens(const PackedTile& p, int nbc, const Q8Row* xr, int64_t b0, __m512 acc[M][2]) {
  constexpr int kHalves = Nv ? 2 : 1, kDwords = 4 / kHalves;
  for (int b = 0; b < nbc; ++b) {
    const int64_t bb = b0 + b;
    for (int h = 0; h < kHalves; ++h) {
      __m512i sum[M][2];
      for (int t = 0; t < M; ++t)
        sum[t][0] = sum[t][1] = _mm512_set1_epi32(Nv ? xr[t].neg_corr2[2 * bb + h] : xr[t].neg_corr1[bb]);
      for (int d = kDwords * h; d < kDwords * (h + 1); ++d) {
        const __m512i e0 = _mm512_load_si512(p.codes[b][0][2 * d]), o0 = _mm512_load_si512(p.codes[b][0][2 * d + 1]);
        const __m512i e1 = _mm512_load_si512(p.codes[b][1][2 * d]), o1 = _mm512_load_si512(p.codes[b][1][2 * d + 1]);
        for (int t = 0; t < M; ++t) {
          const int8_t* q = xr[t].q + 32 * bb + 4 * d;
          const __m512i xe = bcast4(q), xo = bcast4(q + 16);
          sum[t][0] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(sum[t][0], e0, xe), o0, xo);
          sum[t][1] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(sum[t][1], e1, xe), o1, xo);
        }
      }
      const __m512 s0 = _mm512_load_ps(p.scales[b][h][0]), s1 = _mm512_load_ps(p.scales[b][h][1]);
      for (int t = 0; t < M; ++t) {
        const __m512 xs = _mm512_set1_ps(xr[t].scale[bb]);
        acc[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[t][0]), _mm512_mul_ps(s0, xs), acc[t][0]);
        acc[t][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[t][1]), _mm512_mul_ps(s1, xs), acc[t][1]);
      }
    }
  }
}

template <bool Nv>
void gemm_q8(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  const int64_t nb = w.cols / 32, rb = q8_row_bytes(w.cols);
  static thread_local PackedTile tile;
  for (int64_t r = r0; r < r1; r += kRows) {
    const int64_t valid = std::min<int64_t>(kRows, r1 - r);
    const __mmask16 mask[2] = {__mmask16(valid >= 16 ? 0xFFFF : (1u << valid) - 1),
                               __mmask16(valid >= 32 ? 0xFFFF : valid <= 16 ? 0 : (1u << (valid - 16)) - 1)};
    for (int64_t b0 = 0; b0 < nb; b0 += kChunkBlocks) {
      const int nbc = int(std::min<int64_t>(kChunkBlocks, nb - b0));
      if (b0 + nbc < nb) prefetch_tile<Nv>(w, r, valid, b0 + nbc, int(std::min<int64_t>(kChunkBlocks, nb - b0 - nbc)));
      else if (r + kRows < r1) prefetch_tile<Nv>(w, r + kRows, std::min<int64_t>(kRows, r1 - r - kRows), 0, int(std::min<int64_t>(kChunkBlocks, nb)));
      pack_tile<Nv>(w, r, valid, b0, nbc, tile);
      // Steps of at most kMr tokens, as even as they go (8 tokens: 4 + 4, not 6 + 2).
      const int64_t steps = (job.tokens + kMr - 1) / kMr;
      for (int64_t step = 0, t0 = 0; step < steps; ++step) {
        const int64_t n = (job.tokens - t0) / (steps - step) + ((job.tokens - t0) % (steps - step) != 0);
        dispatch_rows<kMr>(int(n), [&](auto m) {
          constexpr int M = decltype(m)::value;
          Q8Row xr[M];
          for (int t = 0; t < M; ++t) xr[t] = q8_row(job.xq + (t0 + t) * rb, w.cols);
          __m512 acc[M][2];
          for (int t = 0; t < M; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
          tile_tokens<Nv, M>(tile, nbc, xr, b0, acc);
          for (int t = 0; t < M; ++t)
            for (int g = 0; g < 2; ++g) {
              float* y = job.y + (t0 + t) * job.ldy + r + 16 * g;
              const __m512 prev = b0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask[g], y);
              _mm512_mask_storeu_ps(y, mask[g], _mm512_add_ps(prev, acc[t][g]));
            }
        });
        t0 += n;
      }
    }
  }
}

}  // namespace

void rows_q8_gemm_avx512(const LinearJob& job, int64_t r0, int64_t r1) {
  if (job.w->format == WeightFormat::Nvfp4) gemm_q8<true>(job, r0, r1);
  else gemm_q8<false>(job, r0, r1);
}

}  // namespace m2::detail
#else
#include "backend/cpu/linear.h"
#include "core/error.h"
namespace m2::detail {
void rows_q8_gemm_avx512(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the AVX-512 int8-activation path is not compiled for this architecture", job.w->name);
}
}  // namespace m2::detail
#endif
