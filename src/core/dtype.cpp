#include "core/dtype.h"

#include <array>
#include <cmath>
#include <limits>

namespace m2 {

namespace {
struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;
};
constexpr std::array<DTypeInfo, 11> kDTypes = {{
    {DType::BF16, "BF16", 2},
    {DType::F16, "F16", 2},
    {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},
    {DType::I64, "I64", 8},
    {DType::I32, "I32", 4},
    {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},
    {DType::BOOL, "BOOL", 1},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::F8_E5M2, "F8_E5M2", 1},
}};

std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (int v = 0; v < 256; ++v) {
    int sign = v >> 7, exp = (v >> 3) & 0xF, man = v & 7;
    float mag;
    if (exp == 0xF && man == 7) {
      mag = std::numeric_limits<float>::quiet_NaN();
    } else if (exp == 0) {
      mag = std::ldexp(float(man) / 8.0f, -6);
    } else {
      mag = std::ldexp(1.0f + float(man) / 8.0f, exp - 7);
    }
    t[size_t(v)] = sign ? -mag : mag;
  }
  return t;
}
}  // namespace

alignas(64) const std::array<float, 256> kE4M3ToF32 = make_e4m3_table();

std::string_view dtype_name(DType t) { return kDTypes[size_t(t)].name; }
size_t dtype_size(DType t) { return kDTypes[size_t(t)].size; }
std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return d.type;
  return std::nullopt;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  if (exp == 0) {
    float mag = std::ldexp(float(man), -24);
    return sign ? -mag : mag;
  }
  if (exp == 31) return f32_from_bits(sign | 0x7f800000u | (man << 13));
  return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t f32_to_f16(float f) {
  uint32_t b = bits_from_f32(f);
  uint16_t sign = uint16_t((b >> 16) & 0x8000);
  float a = std::fabs(f);
  if (std::isnan(f)) return uint16_t(sign | 0x7e00);
  if (a >= 65520.0f) return uint16_t(sign | 0x7c00);
  if (a < 6.103515625e-05f) {  // subnormal: multiples of 2^-24
    return uint16_t(sign | uint16_t(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t ab = bits_from_f32(a);
  uint32_t exp = (ab >> 23) - 112, man = ab & 0x7fffff;
  uint32_t h = (exp << 10) | (man >> 13);
  uint32_t rest = man & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return uint16_t(sign | h);
}


uint8_t f32_to_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= 448.0f) return uint8_t(sign | 0x7e);
  if (a < std::ldexp(1.0f, -6)) {  // subnormal grid: multiples of 2^-9
    int q = int(std::nearbyint(a * 512.0f));
    return uint8_t(sign | q);  // q == 8 is exactly the smallest normal
  }
  int e;
  float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  int exp = e - 1;              // a = (2m) * 2^exp, 2m in [1, 2)
  int q = int(std::nearbyint((2.0f * m - 1.0f) * 8.0f));
  if (q == 8) {
    q = 0;
    ++exp;
  }
  int code = ((exp + 7) << 3) | q;
  if (code > 0x7e) code = 0x7e;
  return uint8_t(sign | code);
}

uint8_t f32_to_e2m1(float f) {
  float a = std::fabs(f);
  uint8_t code;
  // Thresholds of round-to-nearest with ties to the even code (spec §3.1).
  if (a <= 0.25f) code = 0;
  else if (a < 0.75f) code = 1;
  else if (a <= 1.25f) code = 2;
  else if (a < 1.75f) code = 3;
  else if (a <= 2.5f) code = 4;
  else if (a < 3.5f) code = 5;
  else if (a <= 5.0f) code = 6;
  else code = 7;
  if (std::signbit(f) && code != 0) code |= 8;
  return code;
}

}  // namespace m2
