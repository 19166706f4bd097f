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
