// The AVX-512 gemv of FP8 block weights by table decode (CPUs with VBMI), 1-16 tokens; the runtime
// runs E5M2 weights through it (E4M3 takes the shift decode of linear_avx512.cpp, see below). Each 64
// codes of a row become their exact bf16 by table lookup (fp8_lut_avx512.h: 2 vpermi2b, a
// vpternlogd, 2 byte unpacks), then fp32 by `<< 16` and `& 0xFFFF0000` (as the BF16 gemv), over x in
// XLayout::Fp8Bf16Pairs64; the pass itself, scale blocks and all, is the shift decode's
// (fp8_gemv_avx512.h). For E5M2, which has no shift decode, it ran 1.5-1.7× the AVX2 gemv and tiles
// it replaces (docs/BENCHMARKS.md).
//   Why E4M3 does not use it: the shift decode makes every E4M3 subnormal code (exponent field 0) an
// fp32 subnormal, and on Intel cores each FMA that reads one takes a microcode assist (in L2, 1
// code in 1000 subnormal: 12.9 against 23.5 GB/s; 300 per million: 18.9); this decode does not
// depend on the codes. But its lookups and unpacks all issue on one port, and on weights with few
// subnormals (the synthetic model: 30 per million) the whole-model FP8 decode ran 81-84% of the
// read limit through it against 85-89% through the shift decode, so the shift decode stays E4M3's.
//   R rows × T tokens per pass (R = 4 at 1-2 tokens, 2 at 3-4: accumulators and scale-block sums of
// 4 × 4 would not fit the 32 registers beside the tables), past 4 tokens in groups of 4 over row
// stripes (weight_kind.h), so that the later groups read the stripe from L2.
// note: only POD fields of WeightView are touched here, so no std::string code is emitted with AVX-512.
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/fp8_gemv_avx512.h"
#include "backend/cpu/fp8_lut_avx512.h"
#include "backend/cpu/gemm_driver.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/weight_kind.h"

namespace m2::detail {

namespace {

// xd: [T][K] in Fp8Bf16Pairs64; the table's bf16 words split into fp32 as the BF16 gemv does.
template <int T, int R>
inline void gemv_fp8_pass(const WeightView& w, const Fp8Lut& l, const float* xd, float* y, int64_t ldy, int64_t r) {
  const __m512i odd = _mm512_set1_epi32(int(0xFFFF0000u));
  const Fp8Lut lut = l;  // by value into the lambda, so that the tables stay in registers
  fp8_block_gemv_pass<T, R>(w, xd, y, ldy, r, 1.0f, [lut, odd](const uint8_t* p, __m512 c[4]) {
    __m512i a, b;
    fp8_to_bf16(lut, p, a, b);
    c[0] = _mm512_castsi512_ps(_mm512_slli_epi32(a, 16));
    c[1] = _mm512_castsi512_ps(_mm512_and_si512(a, odd));
    c[2] = _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
    c[3] = _mm512_castsi512_ps(_mm512_and_si512(b, odd));
  });
}

template <int T>
void gemv_fp8_rows(const WeightView& w, const Fp8Lut& l, const float* xd, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  constexpr int R = T <= 2 ? 4 : 2;
  for_row_blocks<R>(r0, r1, [&](int64_t r, auto n) { gemv_fp8_pass<T, decltype(n)::value>(w, l, xd, y, ldy, r); });
}

}  // namespace

void rows_fp8_lut_avx512(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  const Fp8Lut l = fp8_lut(w.dtype == DType::F8_E5M2);
  const int64_t K = w.cols;
  for_row_stripes(w, r0, r1, [&](int64_t s0, int64_t s1) {
    for (int64_t t0 = 0; t0 < job.tokens; t0 += 4)
      dispatch_rows<4>(int(std::min<int64_t>(4, job.tokens - t0)), [&](auto t) {
        gemv_fp8_rows<decltype(t)::value>(w, l, job.xd + t0 * K, job.y + t0 * job.ldy, job.ldy, s0, s1);
      });
  });
}

}  // namespace m2::detail
#else
#include "backend/cpu/linear.h"
#include "core/error.h"
namespace m2::detail {
void rows_fp8_lut_avx512(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the AVX-512 VBMI FP8 path is not compiled for this architecture", job.w->name);
}
}  // namespace m2::detail
#endif
