// AArch64 NEON kernels (DGX Spark / Grace and other ARMv8 machines), 1-4 tokens (decode):
//   gemv_rows     every format, fp32 activations: 32 columns at a time decoded into registers
//                 (BF16 by a 16-bit shift, F16 / FP8 through vcvt from F16 bit patterns, FP4 codes
//                 through a 16-entry table lookup, vqtbl1q, to 2 × value as int8), 4 rows per pass
//                 with their own accumulators; block scales applied to partial sums.
//   rows_q8_neon  FP4 with Q8 activations (linear.h): the same table lookup gives signed int8 codes,
//                 and SDOT (ARMv8.2 dotprod, checked at run time) multiplies them with the int8
//                 activations, 16 products per instruction; no offset needed (signed × signed).
//   gemm_tiles    5+ tokens (prefill), every format: an 8-row × 256-column weight tile is decoded once
//                 (the same decode, 4 rows at a time, transposed in registers) into tile[k][8], then
//                 an 8-token × 8-row micro-kernel (16 accumulators, FMA by scalar) runs over all tokens.
// BF16 weights × bf16 activations (BFDOT, Activations::Q8Bf16) are in linear_bf16_neon.cpp.
// Correctness is tested under qemu-aarch64 in CI (scripts/test_arm64.sh); speed was not measured:
// no ARM machine was available.
#include "backend/cpu/linear.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#include "backend/cpu/gemm_driver.h"
#include "backend/cpu/q8_rows.h"
#include "backend/cpu/weight_kind.h"

namespace m2::detail {

namespace {

constexpr int64_t kChunk = 32;

// FP4 E2M1 code → 2 × value as int8.
inline int8x16_t fp4_table() {
  static const int8_t t[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  return vld1q_s8(t);
}

inline float32x4_t i8_to_f32(int8x8_t v, bool high) {
  const int16x8_t h = vmovl_s8(v);
  return vcvtq_f32_s32(high ? vmovl_high_s16(h) : vmovl_s16(vget_low_s16(h)));
}

// Columns [k0, k0 + 32) of row r, unscaled (see chunk_scale_f32): out[0..7], 4 columns each.
template <Kind K>
inline void decode_raw(const WeightView& w, int64_t r, int64_t k0, float32x4_t out[8]) {
  const uint8_t* row = w.data + r * w.row_bytes;
  if constexpr (K == Kind::Bf16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + k0;
    for (int j = 0; j < 4; ++j) {
      const uint16x8_t v = vld1q_u16(p + 8 * j);
      out[2 * j] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16));
      out[2 * j + 1] = vreinterpretq_f32_u32(vshll_high_n_u16(v, 16));
    }
  } else if constexpr (K == Kind::F16) {
    const float16_t* p = reinterpret_cast<const float16_t*>(row) + k0;
    for (int j = 0; j < 4; ++j) {
      const float16x8_t v = vld1q_f16(p + 8 * j);
      out[2 * j] = vcvt_f32_f16(vget_low_f16(v));
      out[2 * j + 1] = vcvt_high_f32_f16(v);
    }
  } else if constexpr (K == Kind::F32) {
    const float* p = reinterpret_cast<const float*>(row) + k0;
    for (int j = 0; j < 8; ++j) out[j] = vld1q_f32(p + 4 * j);
  } else if constexpr (K == Kind::E4m3 || K == Kind::E5m2) {
    const uint8_t* p = row + k0;
    for (int h = 0; h < 2; ++h) {
      const uint8x16_t b = vld1q_u8(p + 16 * h);
      uint16x8_t lo, hi;
      if constexpr (K == Kind::E4m3) {
        // Sign-extended, shifted by 7: an F16 × 2^-8 with the sign in bit 15; bit 14 cleared.
        const uint16x8_t mask = vdupq_n_u16(0xBFFF);
        lo = vandq_u16(vreinterpretq_u16_s16(vshlq_n_s16(vmovl_s8(vget_low_s8(vreinterpretq_s8_u8(b))), 7)), mask);
        hi = vandq_u16(vreinterpretq_u16_s16(vshlq_n_s16(vmovl_high_s8(vreinterpretq_s8_u8(b)), 7)), mask);
      } else {
        lo = vshll_n_u8(vget_low_u8(b), 8);
        hi = vshll_high_n_u8(b, 8);
      }
      const float16x8_t flo = vreinterpretq_f16_u16(lo), fhi = vreinterpretq_f16_u16(hi);
      out[4 * h] = vcvt_f32_f16(vget_low_f16(flo));
      out[4 * h + 1] = vcvt_high_f32_f16(flo);
      out[4 * h + 2] = vcvt_f32_f16(vget_low_f16(fhi));
      out[4 * h + 3] = vcvt_high_f32_f16(fhi);
    }
  } else {
    const uint8x16_t b = vld1q_u8(row + k0 / 2);
    const uint8x16_t lo = vandq_u8(b, vdupq_n_u8(0x0F)), hi = vshrq_n_u8(b, 4);
    const int8x16_t t = fp4_table();
    const int8x16_t c0 = vqtbl1q_s8(t, vzip1q_u8(lo, hi)), c1 = vqtbl1q_s8(t, vzip2q_u8(lo, hi));  // columns 0-15, 16-31
    out[0] = i8_to_f32(vget_low_s8(c0), false);
    out[1] = i8_to_f32(vget_low_s8(c0), true);
    out[2] = i8_to_f32(vget_high_s8(c0), false);
    out[3] = i8_to_f32(vget_high_s8(c0), true);
    out[4] = i8_to_f32(vget_low_s8(c1), false);
    out[5] = i8_to_f32(vget_low_s8(c1), true);
    out[6] = i8_to_f32(vget_high_s8(c1), false);
    out[7] = i8_to_f32(vget_high_s8(c1), true);
  }
}

template <Kind K, int T, int R>
inline void gemv_pass(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t r, int64_t Ks) {
  const int64_t Kc = w.cols;
  float32x4_t acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = vdupq_n_f32(0.0f);
  for (int64_t k = 0; k < Ks; k += kChunk) {
    for (int i = 0; i < R; ++i) {
      float32x4_t wv[8];
      decode_raw<K>(w, r + i, k, wv);
      const float s0 = chunk_scale_f32<K>(w, r + i, k, 0);
      const float s1 = K == Kind::Nvfp4 ? chunk_scale_f32<K>(w, r + i, k, 1) : s0;
      for (int t = 0; t < T; ++t) {
        const float* xt = x + t * Kc + k;
        float32x4_t p0 = vmulq_f32(wv[0], vld1q_f32(xt)), p1 = vmulq_f32(wv[4], vld1q_f32(xt + 16));
        for (int j = 1; j < 4; ++j) {
          p0 = vfmaq_f32(p0, wv[j], vld1q_f32(xt + 4 * j));
          p1 = vfmaq_f32(p1, wv[4 + j], vld1q_f32(xt + 16 + 4 * j));
        }
        acc[i][t] = vfmaq_n_f32(vfmaq_n_f32(acc[i][t], p0, s0), p1, s1);
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      float s = vaddvq_f32(acc[i][t]);
      for (int64_t k = Ks; k < Kc; ++k) s += x[t * Kc + k] * weight_element_ref(w, r + i, k);
      y[t * ldy + r + i] = s;
    }
}

template <Kind K, int T>
void gemv_rows(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t Ks = simd_cols(w);
  for_row_blocks<T == 1 ? 4 : 2>(r0, r1, [&](int64_t r, auto n) { gemv_pass<K, T, decltype(n)::value>(w, x, y, ldy, r, Ks); });
}

constexpr int kTileRows = int(kNeonTileRows), kTileCols = 256, kMr = 8;

// 4 × 4 transpose: r[i] holds 4 columns of row i; afterwards r[c] holds column c of the 4 rows.
inline void transpose4(float32x4_t r[4]) {
  const float32x4_t t0 = vtrn1q_f32(r[0], r[1]), t1 = vtrn2q_f32(r[0], r[1]);
  const float32x4_t t2 = vtrn1q_f32(r[2], r[3]), t3 = vtrn2q_f32(r[2], r[3]);
  auto d = [](float32x4_t v) { return vreinterpretq_f64_f32(v); };
  r[0] = vreinterpretq_f32_f64(vtrn1q_f64(d(t0), d(t2)));
  r[1] = vreinterpretq_f32_f64(vtrn1q_f64(d(t1), d(t3)));
  r[2] = vreinterpretq_f32_f64(vtrn2q_f64(d(t0), d(t2)));
  r[3] = vreinterpretq_f32_f64(vtrn2q_f64(d(t1), d(t3)));
}

// W[r0 .. r0+8) × [k0 .. k0+kc) → tile[k][8] (rows past the end are zero): 4 rows × 32 columns decoded
// and scaled in registers, then stored as columns through 4 × 4 transposes.
template <Kind K>
void decode_tile(const WeightView& w, int64_t r0, int64_t k0, int64_t kc, float* tile) {
  const int64_t Ks = simd_cols(w);
  int64_t ksimd = 0;
  while (ksimd + kChunk <= kc && k0 + ksimd + kChunk <= Ks) ksimd += kChunk;
  for (int g = 0; g < kTileRows; g += 4) {
    for (int64_t k = 0; k < ksimd; k += kChunk) {
      float32x4_t v[4][8];
      for (int i = 0; i < 4; ++i) {
        const int64_t r = r0 + g + i;
        if (r >= w.rows) {
          for (int j = 0; j < 8; ++j) v[i][j] = vdupq_n_f32(0.0f);
          continue;
        }
        decode_raw<K>(w, r, k0 + k, v[i]);
        const float s0 = chunk_scale_f32<K>(w, r, k0 + k, 0);
        const float s1 = K == Kind::Nvfp4 ? chunk_scale_f32<K>(w, r, k0 + k, 1) : s0;
        if constexpr (kScaled<K>)
          for (int j = 0; j < 8; ++j) v[i][j] = vmulq_n_f32(v[i][j], j < 4 ? s0 : s1);
      }
      for (int j = 0; j < 8; ++j) {  // columns k + 4j .. k + 4j + 3
        float32x4_t c[4] = {v[0][j], v[1][j], v[2][j], v[3][j]};
        transpose4(c);
        for (int q = 0; q < 4; ++q) vst1q_f32(tile + (k + 4 * j + q) * kTileRows + g, c[q]);
      }
    }
    for (int i = 0; i < 4; ++i) {
      const int64_t r = r0 + g + i;
      for (int64_t k = ksimd; k < kc; ++k) tile[k * kTileRows + g + i] = r < w.rows ? weight_element_ref(w, r, k0 + k) : 0.0f;
    }
  }
}

// acc[m][8 rows] += x[m, kc] · tile[kc][8]; y rows get acc (stored on the first column block, added after).
template <int M>
void micro_kernel(const float* x, int64_t ldx, const float* tile, int64_t kc, float* y, int64_t ldy, int rows,
                  bool first) {
  float32x4_t acc[M][2];
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = vdupq_n_f32(0.0f);
  for (int64_t k = 0; k < kc; ++k) {
    const float32x4_t w0 = vld1q_f32(tile + k * kTileRows), w1 = vld1q_f32(tile + k * kTileRows + 4);
    for (int m = 0; m < M; ++m) {
      const float xv = x[m * ldx + k];
      acc[m][0] = vfmaq_n_f32(acc[m][0], w0, xv);
      acc[m][1] = vfmaq_n_f32(acc[m][1], w1, xv);
    }
  }
  for (int m = 0; m < M; ++m) {
    float* yr = y + m * ldy;
    if (rows == kTileRows) {
      if (!first) {
        acc[m][0] = vaddq_f32(acc[m][0], vld1q_f32(yr));
        acc[m][1] = vaddq_f32(acc[m][1], vld1q_f32(yr + 4));
      }
      vst1q_f32(yr, acc[m][0]);
      vst1q_f32(yr + 4, acc[m][1]);
      continue;
    }
    float out[kTileRows];
    vst1q_f32(out, acc[m][0]);
    vst1q_f32(out + 4, acc[m][1]);
    for (int i = 0; i < rows; ++i) yr[i] = first ? out[i] : yr[i] + out[i];
  }
}

template <Kind K>
void gemm_tiles(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t tokens, int64_t tile0,
                int64_t tile1) {
  alignas(64) float tile[kTileCols * kTileRows];
  const int64_t ldx = w.cols;
  gemm_tile_loop<kTileRows, kTileCols, kMr>(
      w, x, y, ldy, tokens, tile0, tile1, tile,
      [&](int64_t r0, int64_t k0, int64_t kc, float* t) { decode_tile<K>(w, r0, k0, kc, t); },
      // The next chunk's lines are not prefetched here: NEON speed cannot be measured on our hosts.
      [&](auto m, const float* xt, const float* t, int64_t kc, float* yt, int rows, bool first, const uint8_t* const*,
          int64_t) { micro_kernel<decltype(m)::value>(xt, ldx, t, kc, yt, ldy, rows, first); });
}

}  // namespace

void rows_neon(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  with_kind(w, [&](auto k) {
    constexpr Kind K = decltype(k)::value;
    if (job.tokens > 4)  // r0 is tile-aligned (linear_grain), r1 too unless it is w.rows
      return gemm_tiles<K>(w, job.x, job.y, job.ldy, job.tokens, r0 / kTileRows, (r1 + kTileRows - 1) / kTileRows);
    dispatch_rows<4>(int(job.tokens), [&](auto t) { gemv_rows<K, decltype(t)::value>(w, job.x, job.y, job.ldy, r0, r1); });
  });
}

// The SDOT kernel is compiled for ARMv8.2 + dotprod and only called where the CPU has it.
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
namespace {

// FP4 × Q8 rows (linear.h layout: per block the 16 even columns, then the 16 odd ones).
template <bool Nv, int T>
void gemv_q8_rows(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  const int64_t nb = w.cols / 32, rb = q8_row_bytes(w.cols);
  const int8x16_t table = fp4_table();
  const float* xs[T];
  const int8_t* xq[T];
  for (int t = 0; t < T; ++t) {
    xs[t] = reinterpret_cast<const float*>(job.xq + t * rb + 12 * nb);
    xq[t] = reinterpret_cast<const int8_t*>(job.xq + t * rb + 24 * nb);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    const uint8_t* sc = w.scales + r * w.scale_stride;
    float32x4_t acc[T];
    for (int t = 0; t < T; ++t) acc[t] = vdupq_n_f32(0.0f);
    for (int64_t c = 0; c < nb; ++c) {
      const uint8x16_t b = vld1q_u8(row + 16 * c);
      const int8x16_t even = vqtbl1q_s8(table, vandq_u8(b, vdupq_n_u8(0x0F)));
      const int8x16_t odd = vqtbl1q_s8(table, vshrq_n_u8(b, 4));
      // Lanes 0-1 hold columns 0-15 of the block, lanes 2-3 columns 16-31 (even and odd summed).
      float32x4_t ws;
      if constexpr (Nv) {
        const float g = 0.5f * w.global_scale, s0 = kE4M3ToF32[sc[2 * c]] * g, s1 = kE4M3ToF32[sc[2 * c + 1]] * g;
        const float v[4] = {s0, s0, s1, s1};
        ws = vld1q_f32(v);
      } else {
        ws = vdupq_n_f32(0.5f * e8m0_to_f32(sc[c]));
      }
      for (int t = 0; t < T; ++t) {
        int32x4_t p = vdotq_s32(vdupq_n_s32(0), even, vld1q_s8(xq[t] + 32 * c));
        p = vdotq_s32(p, odd, vld1q_s8(xq[t] + 32 * c + 16));
        acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(p), vmulq_n_f32(ws, xs[t][c]));
      }
    }
    for (int t = 0; t < T; ++t) job.y[t * job.ldy + r] = vaddvq_f32(acc[t]);
  }
}

// One 32-column block as quantize_q8_rows_reference makes it: the same max (vmaxnmq keeps the
// number beside a NaN, as std::max(amax, NaN) keeps amax), the same division and product, and
// vcvtnq's round to nearest even, as nearbyint there. Codes 16 even columns, then 16 odd (vuzp).
float quantize_q8_block_neon(const float* xb, int8_t* q, int32_t half[2]) {
  float32x4_t v[8];
  float32x4_t m = vdupq_n_f32(0.0f);
  for (int i = 0; i < 8; ++i) {
    v[i] = vld1q_f32(xb + 4 * i);
    m = vmaxnmq_f32(m, vabsq_f32(v[i]));
  }
  const float amax = vmaxvq_f32(m);
  const float inv = q8_inverse_scale(amax);
  int16x8_t h[4];
  for (int i = 0; i < 4; ++i)
    h[i] = vcombine_s16(vqmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(v[2 * i], inv))),
                        vqmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(v[2 * i + 1], inv))));
  const int8x16_t lo = vcombine_s8(vqmovn_s16(h[0]), vqmovn_s16(h[1]));  // columns 0-15
  const int8x16_t hi = vcombine_s8(vqmovn_s16(h[2]), vqmovn_s16(h[3]));  // columns 16-31
  vst1q_s8(q, vuzp1q_s8(lo, hi));
  vst1q_s8(q + 16, vuzp2q_s8(lo, hi));
  half[0] = vaddlvq_s8(lo);
  half[1] = vaddlvq_s8(hi);
  return amax / 127.0f;
}

}  // namespace

void quantize_q8_rows_neon(const float* x, int64_t tokens, int64_t cols, uint8_t* out) {
  write_q8_rows(x, tokens, cols, out, quantize_q8_block_neon);
}

void rows_q8_neon(const LinearJob& job, int64_t r0, int64_t r1) {
  const bool nv = job.w->format == WeightFormat::Nvfp4;
  dispatch_rows<4>(int(job.tokens), [&](auto t) {
    constexpr int T = decltype(t)::value;
    if (nv) gemv_q8_rows<true, T>(job, r0, r1);
    else gemv_q8_rows<false, T>(job, r0, r1);
  });
}
#pragma GCC pop_options

}  // namespace m2::detail
#else
#include "core/error.h"
namespace m2::detail {
void rows_neon(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the NEON path is not compiled for this architecture", job.w->name);
}
void quantize_q8_rows_neon(const float*, int64_t, int64_t, uint8_t*) {
  fail("quantize_q8_rows: the NEON path is not compiled for this architecture");
}
void rows_q8_neon(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the NEON path is not compiled for this architecture", job.w->name);
}
}  // namespace m2::detail
#endif
