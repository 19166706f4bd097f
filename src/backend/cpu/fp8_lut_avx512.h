// FP8 (E4M3 / E5M2) codes → their exact bf16 by table lookup with AVX-512 VBMI: two vpermi2b look the
// high and the low byte of each code's bf16 up in 128-entry tables (fp8_bf16_tables), a vpternlogd
// puts the sign back, and two byte unpacks make the words. Include only from files compiled for
// AVX-512 F/BW + VBMI (linear_bf16_avx512.cpp, linear_fp8_avx512.cpp).
//   The result has no subnormal floats whatever the code: the bf16 of an FP8 value is a normal
//   number (or zero), where the shift decode of linear_avx512.cpp makes an E4M3 subnormal code an
//   fp32 subnormal, which costs the FMA that reads it a microcode assist on Intel cores.
#pragma once
#include <immintrin.h>

#include "backend/cpu/linear.h"

namespace m2::detail {
// File-local in each includer: compiled under that file's target, so the linker never hands one
// file's copy (other ISA flags) to another.
namespace {

struct Fp8Lut {
  __m512i hi0, hi1, lo0, lo1, sign;
};

inline Fp8Lut fp8_lut(bool e5m2) {
  const Fp8Bf16Tables& t = fp8_bf16_tables(e5m2);
  return {_mm512_load_si512(t.hi), _mm512_load_si512(t.hi + 64), _mm512_load_si512(t.lo),
          _mm512_load_si512(t.lo + 64), _mm512_set1_epi8(int8_t(0x80))};
}

// The 64 FP8 codes of v → their bf16 words: a holds codes [0-7 16-23 32-39 48-55], b codes
// [8-15 24-31 40-47 56-63] (word 8L + m of a is code 16L + m, of b code 16L + 8 + m).
inline void fp8_to_bf16(const Fp8Lut& l, __m512i v, __m512i& a, __m512i& b) {
  const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(l.hi0, v, l.hi1), v, l.sign, 0xF8);  // hi | (v & 0x80)
  const __m512i lo = _mm512_permutex2var_epi8(l.lo0, v, l.lo1);
  a = _mm512_unpacklo_epi8(lo, hi);
  b = _mm512_unpackhi_epi8(lo, hi);
}
inline void fp8_to_bf16(const Fp8Lut& l, const uint8_t* p, __m512i& a, __m512i& b) {
  fp8_to_bf16(l, _mm512_loadu_si512(p), a, b);
}

}  // namespace
}  // namespace m2::detail
