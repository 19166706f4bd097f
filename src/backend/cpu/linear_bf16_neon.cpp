// BF16 weights × bf16-rounded activations on AArch64 with FEAT_BF16 (BFDOT: 8 multiply-adds per
// instruction, two bf16 products summed into each fp32 lane), for Activations::Q8Bf16: the NEON
// counterpart of linear_bf16_avx512.cpp's BF16 kernel (FP8 weights keep the fp32 kernels on NEON).
// Every token count runs here, so that a token's product does not depend on its batch: each
// (row, token) pair has its own two accumulators (columns [16j, 16j + 8) and [16j + 8, 16j + 16)),
// summed in one fixed order (a0 + a1, then the lanes pairwise, then the columns past the last whole
// 16 one by one), whatever the row block or token group it ran in.
// Blocks: 8 rows × 1 token, 4 × 2, 2 × 3-4 (16 accumulators at most); past 4 tokens, the token
// groups of 4 run over each ~128 KiB row stripe in turn, whose weights are then read from L2.
// Correctness is tested under qemu-aarch64 (scripts/test_arm64.sh); speed was not measured: no ARM
// machine was available.
#include "backend/cpu/linear.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <algorithm>

#include "backend/cpu/gemm_driver.h"
#include "backend/cpu/weight_kind.h"
#include "core/dtype.h"

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+bf16")

namespace m2::detail {

namespace {

inline bfloat16x8_t load_bf16(const uint16_t* p) { return vreinterpretq_bf16_u16(vld1q_u16(p)); }

// y[t, r + i] for i < R, t < T: rows r.. of W (bf16 [rows, cols]) × tokens of xb (bf16 [T, cols]).
template <int R, int T>
void bf16_block(const LinearJob& job, const uint16_t* xb, float* y, int64_t r) {
  const WeightView& w = *job.w;
  const int64_t K = w.cols, Ks = K / 16 * 16;
  const uint16_t* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = reinterpret_cast<const uint16_t*>(w.data + (r + i) * w.row_bytes);
  float32x4_t a0[R][T], a1[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) a0[i][t] = a1[i][t] = vdupq_n_f32(0.0f);
  for (int64_t k = 0; k < Ks; k += 16) {
    bfloat16x8_t x0[T], x1[T];
    for (int t = 0; t < T; ++t) {
      x0[t] = load_bf16(xb + t * K + k);
      x1[t] = load_bf16(xb + t * K + k + 8);
    }
    for (int i = 0; i < R; ++i) {
      const bfloat16x8_t w0 = load_bf16(wr[i] + k), w1 = load_bf16(wr[i] + k + 8);
      for (int t = 0; t < T; ++t) {
        a0[i][t] = vbfdotq_f32(a0[i][t], w0, x0[t]);
        a1[i][t] = vbfdotq_f32(a1[i][t], w1, x1[t]);
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      float s = vaddvq_f32(vaddq_f32(a0[i][t], a1[i][t]));
      for (int64_t k = Ks; k < K; ++k) s += bf16_to_f32(wr[i][k]) * bf16_to_f32(xb[t * K + k]);  // exact products
      y[t * job.ldy + r + i] = s;
    }
}

template <int T>
void bf16_rows(const LinearJob& job, const uint16_t* xb, float* y, int64_t r0, int64_t r1) {
  constexpr int R = T == 1 ? 8 : T == 2 ? 4 : 2;
  for_row_blocks<R>(r0, r1, [&](int64_t r, auto n) { bf16_block<decltype(n)::value, T>(job, xb, y, r); });
}

}  // namespace

void rows_bf16_neon(const LinearJob& job, int64_t r0, int64_t r1) {
  const int64_t K = job.w->cols;
  // Past 4 tokens, row stripes of ~128 KiB (whole 8-row blocks), each run for every token group:
  // a stripe is read from memory once, then from L2.
  const int64_t stripe =
      job.tokens <= 4 ? r1 - r0 : std::max<int64_t>(8, (128 << 10) / std::max<int64_t>(1, job.w->row_bytes) / 8 * 8);
  for (int64_t s0 = r0; s0 < r1; s0 += stripe) {
    const int64_t s1 = std::min(r1, s0 + stripe);
    for (int64_t t0 = 0; t0 < job.tokens; t0 += 4) {
      const uint16_t* xb = job.xb + t0 * K;
      float* y = job.y + t0 * job.ldy;
      dispatch_rows<4>(int(std::min<int64_t>(4, job.tokens - t0)),
                       [&](auto t) { bf16_rows<decltype(t)::value>(job, xb, y, s0, s1); });
    }
  }
}

}  // namespace m2::detail

#pragma GCC pop_options
#else
#include "core/error.h"
namespace m2::detail {
void rows_bf16_neon(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the NEON BF16 path is not compiled for this architecture", job.w->name);
}
}  // namespace m2::detail
#endif
