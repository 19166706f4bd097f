// BF16 weights × bf16-rounded activations with AVX512_BF16 (vdpbf16ps), every token count: the
// Activations::Q8Bf16 product of BF16 weights (llama.cpp also runs BF16 weights on bf16
// activations). One vdpbf16ps multiplies 32 bf16 pairs and adds each pair's sum into 16 fp32 lanes:
// twice an FMA's multiply-adds, with no conversion of the weights (the fp32 path shifts every
// weight into an fp32 before its FMA). The products of two bf16 are exact in fp32; what differs from
// the exact path is x rounded to bf16 (to nearest even: |x − x̃| ≤ 2^-8 |x|) and the summation order.
//   - Weights are read as stored (row-major, 32 columns per 64-byte load), x as bf16 rows (row-major,
//     made once per product by bf16_rows_avx512): no packing, no transposes.
//   - R rows × G tokens of accumulators (R = 8, G ≤ 2 at 1-2 tokens; R = 4, G ≤ 6 beyond): per 32
//     columns R + G loads for R·G vdpbf16ps. Past G tokens the same R rows run again from L1, token
//     blocks of ~512 KiB of x at a time (they stay in L2).
//   - A token's result does not depend on R, G or how many tokens share the call: each accumulator
//     sums its chunks in column order (the last partial chunk masked), then one fixed reduction tree.
//   - FP8 block weights (E4M3 / E5M2; cols and block_cols multiples of 64; needs VBMI): 64 codes are
//     one load; two vpermi2b look the high and the low byte of each code's bf16 up in 128-entry
//     tables (the bf16 of an FP8 value is exact), a vpternlogd puts the sign back, and two byte
//     unpacks make the words: columns [0-7 16-23 32-39 48-55] and [8-15 24-31 40-47 56-63], the
//     order the bf16 rows of x are then written in (Bf16Layout::Fp8Interleaved64). Each block of
//     block_cols columns sums into its own accumulators, which are added into the totals times the
//     block's scale (twice the registers: 2 rows × up to 6 tokens). At 3+ tokens a block of rows is
//     converted once into an L1 buffer and every token group runs on it; converted per token group
//     where they were used, the conversions held the product to a third of the vdpbf16ps peak (at
//     16 tokens no faster than the fp32 tiles). At 1-2 tokens the rows are converted where they are
//     used (4 rows), with the same order of additions, so the bits do not depend on the path.
// note: only POD fields of WeightView are touched here, so no std::string code is emitted with AVX-512.
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vbmi,avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/fp8_lut_avx512.h"
#include "backend/cpu/gemm_driver.h"
#include "backend/cpu/linear.h"
#include "core/dtype.h"
#include "core/error.h"

namespace m2::detail {

namespace {

// Lanes 0, 4, 8, 12 of the result: the sums of a, b, c, d. Every input goes through the same tree
// ((l + l⁺⁸) + (l⁺⁴ + l⁺¹²)) + ((l⁺² …) …) whatever the other three hold.
inline __m512 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));  // [a 8 | b 8]
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));  // [c 8 | d 8]
  const __m512 abcd = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));  // [a4 b4 c4 d4]
  const __m512 s2 = _mm512_add_ps(abcd, _mm512_permute_ps(abcd, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm512_add_ps(s2, _mm512_permute_ps(s2, _MM_SHUFFLE(2, 3, 0, 1)));
}

// y[t · ldy + i] = the lane sum of sums[i][t], through reduce4's fixed tree.
template <int R, int G>
inline void store_sums(const __m512 (&sums)[R][G], float* y, int64_t ldy) {
  alignas(64) float s[16];
  const __m512 zero = _mm512_setzero_ps();
  for (int t = 0; t < G; ++t)
    for (int i = 0; i < R; i += 4) {
      _mm512_store_ps(s, reduce4(sums[i][t], i + 1 < R ? sums[i + 1][t] : zero, i + 2 < R ? sums[i + 2][t] : zero,
                                 i + 3 < R ? sums[i + 3][t] : zero));
      for (int j = 0; j < 4 && i + j < R; ++j) y[t * ldy + i + j] = s[4 * j];
    }
}

// y[t · ldy + i] = Σ_c W[row i, c] · x̃[t, c] for i < R, t < G. The next R rows (the next block,
// from memory) are prefetched into L2 one line per row and chunk, by every token group over these
// rows in turn: group `phase` of `period` takes the chunks ≡ phase (mod period), so the weight stream
// runs beside all of them, not only the first (period 0: no prefetch, rows past the last block).
// Expert rows are too short for the hardware prefetcher to ramp up.
template <int R, int G>
inline void bf16_block(const uint16_t* w, int64_t ldw, const uint16_t* xb, int64_t K, float* y, int64_t ldy,
                       int phase, int period) {
  __m512 acc[R][G];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < G; ++t) acc[i][t] = _mm512_setzero_ps();
  const int64_t ahead = R * ldw;
  int wait = phase;  // chunks until this group's next prefetch
  int64_t c = 0;
  for (; c + 32 <= K; c += 32) {
    __m512i wv[R];
    for (int i = 0; i < R; ++i) wv[i] = _mm512_loadu_si512(w + i * ldw + c);
    if (period > 0 && wait-- == 0) {
      for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(w + i * ldw + ahead + c), _MM_HINT_T1);
      wait = period - 1;
    }
    for (int t = 0; t < G; ++t) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + t * K + c);
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)wv[i], xv);
    }
  }
  if (c < K) {  // the last 1-31 columns: masked loads read zeros past the row
    const __mmask32 m = __mmask32((uint64_t(1) << (K - c)) - 1);
    __m512i wv[R];
    for (int i = 0; i < R; ++i) wv[i] = _mm512_maskz_loadu_epi16(m, w + i * ldw + c);
    for (int t = 0; t < G; ++t) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, xb + t * K + c);
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)wv[i], xv);
    }
  }
  store_sums<R, G>(acc, y, ldy);
}

// Rows [r0, r0 + R) × tokens [t0, t1), in balanced groups of at most Gmax.
template <int R, int Gmax>
inline void bf16_rows_tokens(const uint16_t* w, int64_t ldw, const uint16_t* xb, int64_t K, float* y, int64_t ldy,
                             int64_t tokens, bool stream) {
  // `stream`: the next R rows are weights of this range (prefetched over all groups).
  const int groups = int((tokens + Gmax - 1) / Gmax);
  balanced_blocks<Gmax>(tokens, [&](int64_t g, int64_t t, auto gn) {
    bf16_block<R, decltype(gn)::value>(w, ldw, xb + t * K, K, y + t * ldy, ldy, int(g), stream ? groups : 0);
  });
}

template <int R, int Gmax>
void bf16_rows(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  const int64_t K = w.cols, ldw = w.row_bytes / 2;
  const auto* wd = reinterpret_cast<const uint16_t*>(w.data);
  // Tokens in blocks whose bf16 rows take ~512 KiB (L2 holds them while the row blocks pass).
  const int64_t block = std::max<int64_t>(Gmax, (int64_t(512) << 10) / (2 * K) / Gmax * Gmax);
  for (int64_t t0 = 0; t0 < job.tokens; t0 += block) {
    const int64_t n = std::min(block, job.tokens - t0);
    const uint16_t* xb = job.xb + t0 * K;
    float* y = job.y + t0 * job.ldy;
    int64_t r = r0;
    for (; r + R <= r1; r += R) bf16_rows_tokens<R, Gmax>(wd + r * ldw, ldw, xb, K, y + r, job.ldy, n, r + 2 * R <= r1);
    for (; r < r1; ++r) bf16_rows_tokens<1, Gmax>(wd + r * ldw, ldw, xb, K, y + r, job.ldy, n, false);
  }
}


// tot[i][t] += acc[i][t] × (row i's scale of block column cb; sc[i]: its floats per block column).
template <int R, int G>
inline void add_scaled(const __m512 (&acc)[R][G], const uint8_t* const* sc, int64_t cb, __m512 (&tot)[R][G]) {
  for (int i = 0; i < R; ++i) {
    float s;
    std::memcpy(&s, sc[i] + 4 * cb, 4);
    const __m512 sv = _mm512_set1_ps(s);
    for (int t = 0; t < G; ++t) tot[i][t] = _mm512_fmadd_ps(acc[i][t], sv, tot[i][t]);
  }
}

// Rows [0, R) × tokens [0, G) of an FP8 block weight, from its rows already converted to bf16 (`wb`,
// [R][K] in the interleaved column order) and their scales (`sc[i]`: floats per block column):
// each scale block sums into its own accumulators, added into the totals times the block's scale.
template <int R, int G>
inline void fp8_block(const uint16_t* wb, const uint8_t* const* sc, int64_t bc, const uint16_t* xb, int64_t K,
                      float* y, int64_t ldy) {
  __m512 tot[R][G];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < G; ++t) tot[i][t] = _mm512_setzero_ps();
  for (int64_t c0 = 0, cb = 0; c0 < K; c0 += bc, ++cb) {  // cb: the block column (no division)
    __m512 acc[R][G];
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < G; ++t) acc[i][t] = _mm512_setzero_ps();
    for (int64_t c = c0; c < c0 + bc; c += 32) {
      __m512i wv[R];
      for (int i = 0; i < R; ++i) wv[i] = _mm512_loadu_si512(wb + i * K + c);
      for (int t = 0; t < G; ++t) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + t * K + c);
        for (int i = 0; i < R; ++i) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)wv[i], xv);
      }
    }
    add_scaled<R, G>(acc, sc, cb, tot);
  }
  store_sums<R, G>(tot, y, ldy);
}

// The same sums for 1-2 tokens without the buffer: each row's 64 columns are converted where they
// are used (a buffer's stores and loads cost more than the conversion they save at so few tokens).
// The order of the additions is fp8_block's (per block: A then B of each 64-column step, then the
// scale), so a token's bits do not depend on which of the two ran.
template <int R, int G>
inline void fp8_block_direct(const Fp8Lut& l, const uint8_t* w, int64_t ldw, const uint8_t* const* sc, int64_t bc,
                             const uint16_t* xb, int64_t K, float* y, int64_t ldy, bool prefetch) {
  __m512 tot[R][G];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < G; ++t) tot[i][t] = _mm512_setzero_ps();
  for (int64_t c0 = 0, cb = 0; c0 < K; c0 += bc, ++cb) {
    __m512 acc[R][G];
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < G; ++t) acc[i][t] = _mm512_setzero_ps();
    for (int64_t c = c0; c < c0 + bc; c += 64) {
      __m512bh xa[G], xc[G];
      for (int t = 0; t < G; ++t) {
        xa[t] = (__m512bh)_mm512_loadu_si512(xb + t * K + c);
        xc[t] = (__m512bh)_mm512_loadu_si512(xb + t * K + c + 32);
      }
      for (int i = 0; i < R; ++i) {
        if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(w + (i + R) * ldw + c), _MM_HINT_T1);
        __m512i a, b;
        fp8_to_bf16(l, w + i * ldw + c, a, b);
        for (int t = 0; t < G; ++t) {
          acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)a, xa[t]);
          acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)b, xc[t]);
        }
      }
    }
    add_scaled<R, G>(acc, sc, cb, tot);
  }
  store_sums<R, G>(tot, y, ldy);
}

// FP8 rows [r0, r1): each block of R rows is converted to bf16 once per token block (into an L1
// buffer; the next R rows prefetched into L2 meanwhile), then every token group runs on it, so the
// conversion is shared by all the tokens, not redone per group.
template <int R, int Gmax>
void fp8_rows(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  const int64_t K = w.cols, ldw = w.row_bytes;
  const Fp8Lut l = fp8_lut(w.dtype == DType::F8_E5M2);
  thread_local std::vector<uint16_t> buf;  // [R][K] bf16; grows once
  if (int64_t(buf.size()) < R * K) buf.resize(size_t(R * K));
  uint16_t* wb = buf.data();
  const int64_t block = std::max<int64_t>(Gmax, (int64_t(512) << 10) / (2 * K) / Gmax * Gmax);
  auto run = [&](auto rows, int64_t r, const uint16_t* xb, float* y, int64_t n, bool prefetch) {
    constexpr int RR = decltype(rows)::value;
    const uint8_t* sc[RR];
    for (int i = 0; i < RR; ++i) sc[i] = w.scales + 4 * ((r + i) / w.block_rows * w.scale_stride);
    if (n <= 2) {
      if (n == 1) return fp8_block_direct<RR, 1>(l, w.data + r * ldw, ldw, sc, w.block_cols, xb, K, y + r, job.ldy, prefetch);
      return fp8_block_direct<RR, 2>(l, w.data + r * ldw, ldw, sc, w.block_cols, xb, K, y + r, job.ldy, prefetch);
    }
    for (int i = 0; i < RR; ++i) {
      const uint8_t* src = w.data + (r + i) * ldw;
      for (int64_t c = 0; c < K; c += 64) {
        if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(src + RR * ldw + c), _MM_HINT_T1);
        __m512i a, b;
        fp8_to_bf16(l, src + c, a, b);
        _mm512_storeu_si512(wb + i * K + c, a);
        _mm512_storeu_si512(wb + i * K + c + 32, b);
      }
    }
    balanced_blocks<Gmax>(n, [&](int64_t, int64_t t, auto gn) {
      fp8_block<RR, decltype(gn)::value>(wb, sc, w.block_cols, xb + t * K, K, y + t * job.ldy + r, job.ldy);
    });
  };
  for (int64_t t0 = 0; t0 < job.tokens; t0 += block) {
    const int64_t n = std::min(block, job.tokens - t0);
    const uint16_t* xb = job.xb + t0 * K;
    float* y = job.y + t0 * job.ldy;
    int64_t r = r0;
    for (; r + R <= r1; r += R) run(std::integral_constant<int, R>{}, r, xb, y, n, r + 2 * R <= r1);
    for (; r < r1; ++r) run(std::integral_constant<int, 1>{}, r, xb, y, n, false);
  }
}

}  // namespace

void bf16_rows_avx512(const float* x, int64_t n, Bf16Layout layout, uint16_t* out) {
  int64_t i = 0;
  if (layout == Bf16Layout::Fp8Interleaved64) {  // n is a multiple of 64 here (whole rows)
    alignas(64) static constexpr int16_t kOrderA[32] = {0,  1,  2,  3,  4,  5,  6,  7,  16, 17, 18, 19, 20, 21, 22, 23,
                                                        32, 33, 34, 35, 36, 37, 38, 39, 48, 49, 50, 51, 52, 53, 54, 55};
    const __m512i ia = _mm512_load_si512(kOrderA);
    const __m512i ib = _mm512_add_epi16(ia, _mm512_set1_epi16(8));
    for (; i + 64 <= n; i += 64) {
      const __m512i n0 = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
      const __m512i n1 = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(x + i + 32));
      _mm512_storeu_si512(out + i, _mm512_permutex2var_epi16(n0, ia, n1));
      _mm512_storeu_si512(out + i + 32, _mm512_permutex2var_epi16(n0, ib, n1));
    }
    M2_CHECK(i == n, "bf16_rows: the interleaved layout takes whole 64-column blocks");
    return;
  }
  for (; i + 32 <= n; i += 32)
    _mm512_storeu_si512(out + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i)));
  if (i < n) {
    const int64_t left = n - i;
    const __mmask16 lo = __mmask16((1u << std::min<int64_t>(16, left)) - 1);
    const __mmask16 hi = __mmask16(left > 16 ? (1u << (left - 16)) - 1 : 0);
    const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, x + i + 16), _mm512_maskz_loadu_ps(lo, x + i));
    _mm512_mask_storeu_epi16(out + i, __mmask32((uint64_t(1) << left) - 1), v);
  }
}

void rows_bf16_avx512(const LinearJob& job, int64_t r0, int64_t r1) {
  if (job.w->format == WeightFormat::Fp8Block) {
    if (job.tokens <= 2) return fp8_rows<4, 2>(job, r0, r1);  // fp8_block_direct
    return fp8_rows<2, 6>(job, r0, r1);
  }
  if (job.tokens <= 2) return bf16_rows<8, 2>(job, r0, r1);
  bf16_rows<4, 6>(job, r0, r1);
}

}  // namespace m2::detail
#else
#include "backend/cpu/linear.h"
#include "core/error.h"
namespace m2::detail {
void rows_bf16_avx512(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the AVX512_BF16 path is not compiled for this architecture", job.w->name);
}
void bf16_rows_avx512(const float*, int64_t, Bf16Layout, uint16_t*) {
  fail("bf16_rows: the AVX512_BF16 path is not compiled for this architecture");
}
}  // namespace m2::detail
#endif
