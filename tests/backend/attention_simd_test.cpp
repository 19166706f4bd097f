// The attention's vector kernels (src/backend/cpu/attention_simd.cpp) against a double-precision
// loop, on every kernel this CPU can run, at head dims with and without a vector tail.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/attention_simd.h"
#include "backend/cpu/cpu_features.h"
#include "backend/random_weight.h"
#include "test_util.h"

namespace m2 {
namespace {

#if defined(__x86_64__)
struct Kernels {
  const char* name;
  void (*dots)(const float*, const float*, int, int, float*);
  void (*axpys)(const float*, const float*, float*, int, int);
};

std::vector<Kernels> available() {
  std::vector<Kernels> k;
  if (cpu_features().avx512) k.push_back({"avx512", detail::attn_dots_avx512, detail::attn_axpys_avx512});
  if (cpu_features().avx2_fma_f16c) k.push_back({"avx2", detail::attn_dots_avx2, detail::attn_axpys_avx2});
  return k;
}

// fp32 sums of d products, reordered: |error| ≤ d · 2^-23 · Σ|q k| (loose by a factor of ~d/log d).
TEST(AttentionSimd, DotsAndAxpysMatchADoubleLoop) {
  if (available().empty()) GTEST_SKIP() << "no AVX2 on this CPU: the portable loops run";
  std::mt19937_64 rng(test::fresh_seed());
  for (const Kernels& k : available())
    for (int d : {1, 7, 8, 15, 16, 40, 64, 100, 128, 200, 256})
      for (int group : {1, 3, 6, 8}) {
        auto q = test::random_floats(rng, size_t(group * d), 2.0f), kv = test::random_floats(rng, size_t(d));
        auto p = test::random_floats(rng, size_t(group)), o = test::random_floats(rng, size_t(group * d));
        std::vector<float> dots(size_t(group), NAN), o2 = o;
        k.dots(q.data(), kv.data(), group, d, dots.data());
        k.axpys(p.data(), kv.data(), o2.data(), group, d);
        for (int h = 0; h < group; ++h) {
          double want = 0, mag = 0;
          for (int i = 0; i < d; ++i) {
            want += double(q[size_t(h * d + i)]) * kv[size_t(i)];
            mag += std::fabs(double(q[size_t(h * d + i)]) * kv[size_t(i)]);
          }
          EXPECT_LE(std::fabs(dots[size_t(h)] - want), d * 0x1p-23 * mag + 1e-30) << k.name << " d " << d << " head " << h;
          for (int i = 0; i < d; ++i) {
            const double o_want = double(o[size_t(h * d + i)]) + double(p[size_t(h)]) * kv[size_t(i)];
            // One FMA (one rounding) or a multiply and an add (two): within 2 ulps of the result.
            EXPECT_NEAR(o2[size_t(h * d + i)], o_want, 2 * 0x1p-23 * (std::fabs(o_want) + std::fabs(double(p[size_t(h)]) * kv[size_t(i)])))
                << k.name << " d " << d << " head " << h << " i " << i;
          }
        }
      }
}
#endif

}  // namespace
}  // namespace m2
