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
// note: only POD fields of WeightView are touched here, so no std::string code is emitted with AVX-512.
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "backend/cpu/gemm_driver.h"
#include "backend/cpu/linear.h"

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
  alignas(64) float s[16];
  const __m512 zero = _mm512_setzero_ps();
  for (int t = 0; t < G; ++t)
    for (int i = 0; i < R; i += 4) {
      _mm512_store_ps(s, reduce4(acc[i][t], i + 1 < R ? acc[i + 1][t] : zero, i + 2 < R ? acc[i + 2][t] : zero,
                                 i + 3 < R ? acc[i + 3][t] : zero));
      for (int j = 0; j < 4 && i + j < R; ++j) y[t * ldy + i + j] = s[4 * j];
    }
}

// Rows [r0, r0 + R) × tokens [t0, t1), in balanced groups of at most Gmax.
template <int R, int Gmax>
inline void bf16_rows_tokens(const uint16_t* w, int64_t ldw, const uint16_t* xb, int64_t K, float* y, int64_t ldy,
                             int64_t tokens, bool stream) {
  // `stream`: the next R rows are weights of this range (prefetched over all groups).
  const int64_t groups = (tokens + Gmax - 1) / Gmax, base = tokens / groups, extra = tokens % groups;
  for (int64_t g = 0, t = 0; g < groups; ++g) {
    const int n = int(base + (g < extra));
    dispatch_rows<Gmax>(n, [&](auto gn) {
      bf16_block<R, decltype(gn)::value>(w, ldw, xb + t * K, K, y + t * ldy, ldy, int(g), stream ? int(groups) : 0);
    });
    t += n;
  }
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

}  // namespace

void bf16_rows_avx512(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
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
void bf16_rows_avx512(const float*, int64_t, uint16_t*) {
  fail("bf16_rows: the AVX512_BF16 path is not compiled for this architecture");
}
}  // namespace m2::detail
#endif
