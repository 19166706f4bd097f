#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/dtype.h"
#include "test_util.h"

namespace m2 {
namespace {

// Nearest representable value by exhaustive search, ties to the even code: the definition of RNE.
template <typename Decode>
uint8_t nearest_code(float x, int ncodes, Decode decode) {
  int best = -1;
  double best_d = INFINITY;
  for (int c = 0; c < ncodes; ++c) {
    double v = decode(uint8_t(c));
    if (std::isnan(v) || std::signbit(v) != std::signbit(x)) continue;
    double d = std::fabs(v - double(x));
    if (d < best_d || (d == best_d && (c & 1) == 0 && (best & 1) == 1)) {
      best_d = d;
      best = c;
    }
  }
  return uint8_t(best);
}

TEST(DType, NamesRoundTrip) {
  for (auto t : {DType::BF16, DType::F16, DType::F32, DType::F64, DType::I64, DType::I32, DType::U8, DType::F8_E4M3,
                 DType::F8_E5M2})
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  EXPECT_FALSE(dtype_from_name("F4").has_value());
  EXPECT_EQ(dtype_size(DType::F8_E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
}

TEST(DType, E4M3DecodeKnownValues) {
  EXPECT_EQ(e4m3_to_f32(0x00), 0.0f);
  EXPECT_EQ(e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0xfe), -448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0xff)));
}

TEST(DType, E4M3EncodeEveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    float v = e4m3_to_f32(uint8_t(c));
    uint8_t back = f32_to_e4m3(v);
    EXPECT_EQ(e4m3_to_f32(back), v) << "code " << c;
  }
}

TEST(DType, E4M3EncodeIsRoundToNearestEvenOnRandomInputs) {
  std::mt19937_64 rng(test::fresh_seed());
  std::uniform_real_distribution<float> logmag(-12.0f, 9.5f);
  for (int i = 0; i < 20000; ++i) {
    float x = std::exp2(logmag(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
    float clamped = std::max(-448.0f, std::min(448.0f, x));
    uint8_t got = f32_to_e4m3(x);
    uint8_t want = nearest_code(clamped, 256, e4m3_to_f32);
    EXPECT_EQ(e4m3_to_f32(got), e4m3_to_f32(want)) << "x = " << x;
  }
  EXPECT_EQ(e4m3_to_f32(f32_to_e4m3(1e6f)), 448.0f);  // saturates
}

TEST(DType, E2M1PublishedTieCases) {
  // From the fixtures' self-check (quant-fixtures-info-shared.json "e2m1_ties").
  const float in[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 7.0f, -0.25f, -5.0f};
  const float want[] = {0.0f, 1.0f, 1.0f, 2.0f, 2.0f, 4.0f, 4.0f, 6.0f, 0.0f, -4.0f};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(e2m1_to_f32(f32_to_e2m1(in[i])), want[i]) << in[i];
}

TEST(DType, E2M1EncodeIsNearestOnRandomInputs) {
  std::mt19937_64 rng(test::fresh_seed());
  std::uniform_real_distribution<float> u(-7.0f, 7.0f);
  for (int i = 0; i < 20000; ++i) {
    float x = u(rng);
    float got = e2m1_to_f32(f32_to_e2m1(x));
    float best = INFINITY;
    for (float v : kE2M1Values) best = std::min(best, std::fabs(v - std::max(-6.0f, std::min(6.0f, x))));
    EXPECT_FLOAT_EQ(std::fabs(got - std::max(-6.0f, std::min(6.0f, x))), best) << x;
  }
}

TEST(DType, Bf16AndF16) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);  // tie → even (down)
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3f82);  // tie → even (up)
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if (((h >> 10) & 0x1f) == 0x1f) continue;  // inf / nan
    float f = f16_to_f32(uint16_t(h));
    EXPECT_EQ(f16_to_f32(f32_to_f16(f)), f) << h;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(e5m2_to_f32(0x3c), 1.0f);
}

TEST(DType, E8M0) {
  EXPECT_EQ(e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(e8m0_to_f32(130), 8.0f);
  EXPECT_EQ(e8m0_to_f32(120), 1.0f / 128);
  EXPECT_TRUE(std::isnan(e8m0_to_f32(255)));
  // Every other code, subnormal 2^-127 (code 0) included, is exactly 2^(e-127).
  for (int e = 0; e < 255; ++e) EXPECT_EQ(e8m0_to_f32(uint8_t(e)), std::ldexp(1.0f, e - 127)) << e;
}

}  // namespace
}  // namespace m2
