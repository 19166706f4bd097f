// In-register transposes at AVX2 width, shared by the kernel files that include this under their
// own target pragma (AVX2 or wider).
#pragma once
#include <immintrin.h>

namespace m2::detail {
// File-local in each includer: compiled under that file's target, so the linker never hands one
// file's copy (other ISA flags) to another.
namespace {

// In-register 8×8 transpose of r[0..7] (rows) into columns.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3 and 4-7
    __m256 a = t[4 * h], b = t[4 * h + 1], cc = t[4 * h + 2], d = t[4 * h + 3];
    u[4 * h] = _mm256_shuffle_ps(a, cc, _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * h + 1] = _mm256_shuffle_ps(a, cc, _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * h + 2] = _mm256_shuffle_ps(b, d, _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * h + 3] = _mm256_shuffle_ps(b, d, _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// The same for 8 × 8 dwords.
inline void transpose8(__m256i r[8]) {
  __m256 f[8];
  for (int i = 0; i < 8; ++i) f[i] = _mm256_castsi256_ps(r[i]);
  transpose8(f);
  for (int i = 0; i < 8; ++i) r[i] = _mm256_castps_si256(f[i]);
}

}  // namespace
}  // namespace m2::detail
