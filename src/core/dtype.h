// Storage dtypes and their scalar conversions to and from float.
#pragma once
#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace m2 {

// Element types that may appear in a safetensors file (names as safetensors spells them).
enum class DType : uint8_t { BF16, F16, F32, F64, I64, I32, U8, I8, BOOL, F8_E4M3, F8_E5M2 };

std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
size_t dtype_size(DType t);  // bytes per element

inline float f32_from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline uint32_t bits_from_f32(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

inline float bf16_to_f32(uint16_t v) { return f32_from_bits(uint32_t(v) << 16); }
// Round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t b = bits_from_f32(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40);
  b += 0x7fffu + ((b >> 16) & 1u);
  return uint16_t(b >> 16);
}

float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float f);

// OCP FP8 E4M3FN: bias 7, max 448, no infinities, 0x7f/0xff are NaN.
extern const std::array<float, 256> kE4M3ToF32;  // every E4M3FN byte as float
inline float e4m3_to_f32(uint8_t v) { return kE4M3ToF32[v]; }
uint8_t f32_to_e4m3(float f);  // round to nearest even, saturating at ±448
// OCP FP8 E5M2: the top byte of an IEEE half.
inline float e5m2_to_f32(uint8_t v) { return f16_to_f32(uint16_t(uint16_t(v) << 8)); }

// FP4 E2M1 code (s e1 e0 m) → value: 0, .5, 1, 1.5, 2, 3, 4, 6 and negatives.
inline constexpr float kE2M1Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                          -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
inline float e2m1_to_f32(uint8_t code) { return kE2M1Values[code & 0xF]; }
// Round to nearest E2M1 value, ties to the even code, saturating at ±6.
uint8_t f32_to_e2m1(float f);

// E8M0 shared exponent: 2^(e-127); 0xff is NaN. Bit construction (inline: the kernels call it per
// 32-column block, where a library ldexp cost more than the block's arithmetic).
inline float e8m0_to_f32(uint8_t e) {
  return f32_from_bits(e == 0 ? 0x00400000u : e == 0xff ? 0x7fc00000u : uint32_t(e) << 23);
}

}  // namespace m2
