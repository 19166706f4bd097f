// The quantization codecs against the published rules (spec §3–5), on fresh random weights.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/dtype.h"
#include "quant/codec.h"
#include "test_util.h"

namespace m2 {
namespace {

double e2m1(uint8_t c) { return double(e2m1_to_f32(c)); }

TEST(Codec, E2m1RoundsToNearestTiesToEvenAndSaturates) {
  // The published tie cases: 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4, 7→6.
  const double in[] = {0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.25, -5.0, 0.2500001, 100.0, -0.0};
  const double out[] = {0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 0.0, -4.0, 0.5, 6.0, 0.0};
  for (size_t i = 0; i < std::size(in); ++i) EXPECT_EQ(e2m1(e2m1_code(in[i])), out[i]) << in[i];
  EXPECT_EQ(e2m1_code(-0.1), 0);  // never the negative zero code
  EXPECT_EQ(e2m1_code(NAN), 0);
  // Every value: the nearest representable one.
  std::mt19937_64 rng(test::fresh_seed());
  std::uniform_real_distribution<double> d(-7, 7);
  const double grid[] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  for (int i = 0; i < 100000; ++i) {
    const double x = d(rng);
    double best = 1e9;
    for (double g : grid) best = std::min(best, std::fabs(std::fabs(std::min(std::fabs(x), 6.0)) - g));
    EXPECT_NEAR(std::fabs(e2m1(e2m1_code(x))), std::fabs(std::min(std::fabs(x), 6.0)) , best + 1e-12) << x;
  }
}

std::vector<float> random_weights(std::mt19937_64& rng, int64_t n) {
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<float> w(static_cast<size_t>(n));
  for (auto& x : w) x = d(rng);
  return w;
}

// NVFP4 by ModelOpt's rule, element by element in double: block scale e4m3(amax_b / (6 ws2)),
// codes E2M1(w / (scale ws2)), low nibble = even column.
TEST(Codec, Nvfp4FollowsModelOptsRule) {
  std::mt19937_64 rng(test::fresh_seed());
  const int64_t R = 24, C = 96;
  auto w = random_weights(rng, R * C);
  for (int64_t c = 16; c < 32; ++c) w[size_t(2 * C + c)] = 0.0f;  // an all-zero block
  double amax = 0;
  for (float x : w) amax = std::max(amax, double(std::fabs(x)));
  const double ws2 = nvfp4_global_scale(amax);
  EXPECT_EQ(ws2, amax / (6.0 * 448.0));
  std::vector<uint8_t> packed(size_t(R * C / 2)), scales(size_t(R * C / 16));
  quantize_nvfp4(w.data(), R, C, ws2, ScaleSearch::Max, nullptr, packed.data(), scales.data());
  for (int64_t r = 0; r < R; ++r)
    for (int64_t b = 0; b < C / 16; ++b) {
      double amax_b = 0;
      for (int k = 0; k < 16; ++k) amax_b = std::max(amax_b, double(std::fabs(w[size_t(r * C + b * 16 + k)])));
      const double s = amax_b == 0 ? 1.0 : amax_b / (6.0 * ws2);
      const uint8_t sc = scales[size_t(r * (C / 16) + b)];
      EXPECT_EQ(sc, f32_to_e4m3(float(s))) << r << "," << b;
      for (int k = 0; k < 16; ++k) {
        const int64_t c = b * 16 + k;
        const uint8_t byte = packed[size_t(r * C / 2 + c / 2)];
        const uint8_t code = c % 2 ? byte >> 4 : byte & 0xF;
        EXPECT_EQ(code, e2m1_code(double(w[size_t(r * C + c)]) / (double(e4m3_to_f32(sc)) * ws2))) << r << "," << c;
      }
    }
  EXPECT_EQ(e4m3_to_f32(scales[size_t(2 * (C / 16) + 1)]), 1.0f);  // zero block: scale 1
}

// MXFP4 exponents by both rules (the spec's worked examples, then random blocks), codes in double.
TEST(Codec, Mxfp4ExponentRules) {
  auto exponent_of = [](float amax, MxRule rule) {
    std::vector<float> w(32, 0.0f);
    w[7] = amax;
    std::vector<uint8_t> packed(16), e(1);
    quantize_mxfp4(w.data(), 1, 32, rule, ScaleSearch::Max, nullptr, packed.data(), e.data());
    return int(e[0]) - 127;
  };
  EXPECT_EQ(exponent_of(7.0f, MxRule::Ocp), 0);
  EXPECT_EQ(exponent_of(7.0f, MxRule::CompressedTensors), 1);
  EXPECT_EQ(exponent_of(6.5f, MxRule::Ocp), 0);
  EXPECT_EQ(exponent_of(6.5f, MxRule::CompressedTensors), 0);
  EXPECT_EQ(exponent_of(0.0f, MxRule::CompressedTensors), -127);  // clamped, not NaN
  std::mt19937_64 rng(test::fresh_seed());
  auto w = random_weights(rng, 8 * 64);
  std::vector<uint8_t> packed(8 * 32), e(8 * 2);
  quantize_mxfp4(w.data(), 8, 64, MxRule::Ocp, ScaleSearch::Max, nullptr, packed.data(), e.data());
  for (int64_t b = 0; b < 16; ++b) {
    double amax = 0;
    for (int k = 0; k < 32; ++k) amax = std::max(amax, double(std::fabs(w[size_t(b * 32 + k)])));
    EXPECT_EQ(int(e[size_t(b)]) - 127, int(std::floor(std::log2(amax))) - 2) << b;
    for (int k = 0; k < 32; ++k) {
      const int64_t i = b * 32 + k;
      const uint8_t code = i % 2 ? packed[size_t(i / 2)] >> 4 : packed[size_t(i / 2)] & 0xF;
      EXPECT_EQ(code, e2m1_code(double(w[size_t(i)]) / std::ldexp(1.0, int(e[size_t(b)]) - 127)));
    }
  }
}

// MSE search never reconstructs worse than max, block by block, with or without column weights,
// and lowers the total error.
TEST(Codec, MseSearchIsNeverWorseThanMax) {
  std::mt19937_64 rng(test::fresh_seed());
  const int64_t R = 64, C = 128;
  auto w = random_weights(rng, R * C);
  std::vector<float> cw(static_cast<size_t>(C));
  std::uniform_real_distribution<float> u(0.1f, 4.0f);
  for (auto& x : cw) x = u(rng);
  for (const float* weights : {static_cast<const float*>(nullptr), static_cast<const float*>(cw.data())}) {
    double amax = 0;
    for (float x : w) amax = std::max(amax, double(std::fabs(x)));
    const double ws2 = nvfp4_global_scale(amax);
    std::vector<uint8_t> p0(size_t(R * C / 2)), s0(size_t(R * C / 16)), p1(p0.size()), s1(s0.size());
    quantize_nvfp4(w.data(), R, C, ws2, ScaleSearch::Max, weights, p0.data(), s0.data());
    quantize_nvfp4(w.data(), R, C, ws2, ScaleSearch::Mse, weights, p1.data(), s1.data());
    double e0 = 0, e1 = 0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t b = 0; b < C / 16; ++b) {
        uint8_t c0[16], c1[16];
        for (int k = 0; k < 16; ++k) {
          const int64_t c = b * 16 + k;
          c0[k] = c % 2 ? p0[size_t(r * C / 2 + c / 2)] >> 4 : p0[size_t(r * C / 2 + c / 2)] & 0xF;
          c1[k] = c % 2 ? p1[size_t(r * C / 2 + c / 2)] >> 4 : p1[size_t(r * C / 2 + c / 2)] & 0xF;
        }
        const float* cwb = weights ? weights + b * 16 : nullptr;
        const double a = block_error(w.data() + r * C + b * 16, c0, 16, double(e4m3_to_f32(s0[size_t(r * (C / 16) + b)])) * ws2, cwb);
        const double m = block_error(w.data() + r * C + b * 16, c1, 16, double(e4m3_to_f32(s1[size_t(r * (C / 16) + b)])) * ws2, cwb);
        EXPECT_LE(m, a * (1 + 1e-12)) << r << "," << b;
        e0 += a, e1 += m;
      }
    EXPECT_LT(e1, e0 * 0.95);
    const Nvfp4Tensor t{w.data(), R, C, weights};
    const double g = search_nvfp4_global_scale({&t, 1}, amax);
    EXPECT_GT(g, 0.0);
    EXPECT_LE(g, ws2);
    EXPECT_LE(nvfp4_error(t, g), nvfp4_error(t, ws2));
  }
  std::vector<uint8_t> p0(size_t(R * C / 2)), e0(size_t(R * C / 32)), p1(p0.size()), e1(e0.size());
  quantize_mxfp4(w.data(), R, C, MxRule::Ocp, ScaleSearch::Max, nullptr, p0.data(), e0.data());
  quantize_mxfp4(w.data(), R, C, MxRule::Ocp, ScaleSearch::Mse, nullptr, p1.data(), e1.data());
  double a = 0, m = 0;
  for (int64_t i = 0; i < R * C; ++i) {
    const uint8_t c0 = i % 2 ? p0[size_t(i / 2)] >> 4 : p0[size_t(i / 2)] & 0xF, c1 = i % 2 ? p1[size_t(i / 2)] >> 4 : p1[size_t(i / 2)] & 0xF;
    a += std::pow(w[size_t(i)] - e2m1(c0) * std::ldexp(1.0, int(e0[size_t(i / 32)]) - 127), 2);
    m += std::pow(w[size_t(i)] - e2m1(c1) * std::ldexp(1.0, int(e1[size_t(i / 32)]) - 127), 2);
  }
  EXPECT_LT(m, a);
}

}  // namespace
}  // namespace m2
