// One token's Q8 activations as the FP4 × Q8 kernels read them (layout in linear.h, quantize_q8_rows).
// Shared by the AVX2 and AVX-512 kernel files (no intrinsics here).
#pragma once
#include <cstdint>

namespace m2::detail {

// The FP4 (E2M1) codes as the Q8 kernels multiply them: 2·value + 12, so that they are unsigned
// bytes (vpmaddubsw, vpdpbusd take u8 × s8); the +12 is removed with the rows' corrections.
alignas(16) inline constexpr int8_t kFp4OffsetCodes[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};

// 127 / amax of a block, or 0 where that is not finite (amax 0, or below 127 / FLT_MAX ≈ 3.7e-37,
// where x · inv would be ∞ or NaN): such a block's codes are all 0.
inline float q8_inverse_scale(float amax) {
  const float inv = 127.0f / amax;
  return inv <= 3.4028235e38f ? inv : 0.0f;
}

// Writes the Q8 rows of x [tokens, cols] (layout in linear.h, cols % 32 == 0) from
// block(xb, q, half) → scale: one 32-column block's codes (16 even columns, then 16 odd) and its
// code sums per 16-column half. Shared by the reference and the SIMD quantizers.
template <typename Block>
inline void write_q8_rows(const float* x, int64_t tokens, int64_t cols, uint8_t* out, Block&& block) {
  const int64_t nb = cols / 32;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xt = x + t * cols;
    uint8_t* row = out + t * 68 * nb;
    float* corr2 = reinterpret_cast<float*>(row);
    float* corr1 = reinterpret_cast<float*>(row + 8 * nb);
    float* scale = reinterpret_cast<float*>(row + 12 * nb);
    float* scale2 = reinterpret_cast<float*>(row + 16 * nb);
    int8_t* q = reinterpret_cast<int8_t*>(row + 24 * nb);
    int32_t* neg_corr2 = reinterpret_cast<int32_t*>(row + 56 * nb);
    int32_t* neg_corr1 = reinterpret_cast<int32_t*>(row + 64 * nb);
    for (int64_t b = 0; b < nb; ++b) {
      int32_t half[2] = {0, 0};
      const float d = block(xt + 32 * b, q + 32 * b, half);
      scale[b] = scale2[2 * b] = scale2[2 * b + 1] = d;
      corr2[2 * b] = float(12 * half[0]);
      corr2[2 * b + 1] = float(12 * half[1]);
      corr1[b] = float(12 * (half[0] + half[1]));
      neg_corr2[2 * b] = -12 * half[0];
      neg_corr2[2 * b + 1] = -12 * half[1];
      neg_corr1[b] = -12 * (half[0] + half[1]);
    }
  }
}

struct Q8Row {
  const float* corr;   // [nb][2] 12 × Σq per 16-column half
  const float* corr1;  // [nb] 12 × Σq per 32-column block
  const float* scale;  // [nb] max|x| / 127
  const float* scale2; // [nb][2] the same, each twice
  const int8_t* q;     // [nb][32] per block the 16 even columns, then the 16 odd ones
  const int32_t* neg_corr2;  // [nb][2] −corr
  const int32_t* neg_corr1;  // [nb] −corr1
};

inline Q8Row q8_row(const uint8_t* base, int64_t cols) {
  const int64_t nb = cols / 32;
  return {reinterpret_cast<const float*>(base), reinterpret_cast<const float*>(base + 8 * nb),
          reinterpret_cast<const float*>(base + 12 * nb), reinterpret_cast<const float*>(base + 16 * nb),
          reinterpret_cast<const int8_t*>(base + 24 * nb), reinterpret_cast<const int32_t*>(base + 56 * nb),
          reinterpret_cast<const int32_t*>(base + 64 * nb)};
}

}  // namespace m2::detail
