// CPU backend ops against direct double-precision formulas on random inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "test_util.h"

namespace m2 {
namespace {

TEST(Ops, RmsNormOverTheWholeRow) {
  std::mt19937_64 rng(test::fresh_seed());
  CpuBackend be(2);
  const int64_t rows = 5, dim = 96;
  auto x = test::random_floats(rng, rows * dim, 3.0f), w = test::random_floats(rng, dim);
  std::vector<float> y(x.size()), ref(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    double inv = 1.0 / std::sqrt(ss / dim + 1e-6);
    for (int64_t i = 0; i < dim; ++i) ref[r * dim + i] = float(w[i] * x[r * dim + i] * inv);
  }
  be.rmsnorm(x.data(), w.data(), y.data(), rows, dim, 1e-6f);
  EXPECT_LE(test::rel_err(y.data(), ref.data(), y.size()), 1e-6);
  be.rmsnorm(x.data(), w.data(), x.data(), rows, dim, 1e-6f);  // in place
  EXPECT_LE(test::rel_err(x.data(), ref.data(), y.size()), 1e-6);
}

TEST(Ops, PartialNeoxRope) {
  std::mt19937_64 rng(test::fresh_seed());
  CpuBackend be(2);
  const int tokens = 3, heads = 2, head_dim = 16, rot = 8, half = rot / 2;
  auto x = test::random_floats(rng, tokens * heads * head_dim);
  auto orig = x;
  std::vector<float> cos(tokens * half), sin(tokens * half);
  std::vector<double> ang(tokens * half);
  for (int t = 0; t < tokens; ++t)
    for (int i = 0; i < half; ++i) {
      ang[t * half + i] = (t + 7) * std::pow(10000.0, -2.0 * i / rot);
      cos[t * half + i] = float(std::cos(ang[t * half + i]));
      sin[t * half + i] = float(std::sin(ang[t * half + i]));
    }
  be.rope(x.data(), tokens, heads, head_dim, rot, cos.data(), sin.data());
  for (int t = 0; t < tokens; ++t)
    for (int h = 0; h < heads; ++h) {
      const float* o = orig.data() + (t * heads + h) * head_dim;
      const float* g = x.data() + (t * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {  // pairs (i, i + half): NeoX half split, not interleaved
        double a = ang[t * half + i];
        EXPECT_NEAR(g[i], o[i] * std::cos(a) - o[i + half] * std::sin(a), 1e-5);
        EXPECT_NEAR(g[i + half], o[i + half] * std::cos(a) + o[i] * std::sin(a), 1e-5);
      }
      for (int i = rot; i < head_dim; ++i) EXPECT_EQ(g[i], o[i]);  // pass-through dims
    }
}

TEST(Ops, CausalGqaAttentionOverTwoSequences) {
  std::mt19937_64 rng(test::fresh_seed());
  CpuBackend be(2);
  const int heads = 4, kv_heads = 2, hd = 8, qd = heads * hd, kvd = kv_heads * hd;
  // Sequence 0: 3 cached + 2 new; sequence 1: 0 cached + 4 new.
  const int past[2] = {3, 0}, fresh[2] = {2, 4};
  std::vector<std::vector<float>> k(2), v(2);
  for (int s = 0; s < 2; ++s) {
    k[s] = test::random_floats(rng, (past[s] + fresh[s]) * kvd);
    v[s] = test::random_floats(rng, (past[s] + fresh[s]) * kvd);
  }
  auto q = test::random_floats(rng, 6 * qd);
  std::vector<float> out(6 * qd), ref(6 * qd);
  AttentionSequence seqs[2] = {{0, 2, 3, k[0].data(), v[0].data()}, {2, 4, 0, k[1].data(), v[1].data()}};
  be.attention(q.data(), out.data(), seqs, 2, heads, kv_heads, hd);
  for (int s = 0; s < 2; ++s)
    for (int t = 0; t < fresh[s]; ++t)
      for (int h = 0; h < heads; ++h) {
        const int row = int(seqs[s].token_begin) + t, ctx = past[s] + t + 1, kh = h / (heads / kv_heads);
        std::vector<double> p(ctx);
        for (int j = 0; j < ctx; ++j) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += double(q[row * qd + h * hd + i]) * k[s][j * kvd + kh * hd + i];
          p[j] = d / std::sqrt(double(hd));
        }
        double mx = *std::max_element(p.begin(), p.end()), sum = 0;
        for (auto& e : p) sum += (e = std::exp(e - mx));
        for (int i = 0; i < hd; ++i) {
          double o = 0;
          for (int j = 0; j < ctx; ++j) o += p[j] / sum * v[s][j * kvd + kh * hd + i];
          ref[row * qd + h * hd + i] = float(o);
        }
      }
  EXPECT_LE(test::rel_err(out.data(), ref.data(), out.size()), 1e-5);
}

TEST(Ops, RouterBiasSelectsButDoesNotWeigh) {
  std::mt19937_64 rng(test::fresh_seed());
  CpuBackend be(1);
  const int tokens = 50, experts = 16, k = 4;
  auto logits = test::random_floats(rng, tokens * experts, 2.0f);
  auto bias = test::random_floats(rng, experts, 0.3f);
  std::vector<int32_t> ids(tokens * k);
  std::vector<float> w(tokens * k);
  be.route(logits.data(), bias.data(), tokens, experts, k, ids.data(), w.data());
  for (int t = 0; t < tokens; ++t) {
    std::vector<int> order(experts);
    std::iota(order.begin(), order.end(), 0);
    auto score = [&](int e) { return 1.0 / (1.0 + std::exp(-double(logits[t * experts + e]))); };
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score(a) + bias[a] > score(b) + bias[b]; });
    double sum = 0;
    for (int j = 0; j < k; ++j) sum += score(order[j]);
    for (int j = 0; j < k; ++j) {
      EXPECT_EQ(ids[t * k + j], order[j]) << "token " << t;
      EXPECT_NEAR(w[t * k + j], score(order[j]) / sum, 1e-6);
    }
  }
}

TEST(Ops, SiluMulAndEmbedding) {
  std::mt19937_64 rng(test::fresh_seed());
  CpuBackend be(1);
  auto g = test::random_floats(rng, 33, 4.0f), u = test::random_floats(rng, 33);
  std::vector<float> out(33);
  be.silu_mul(g.data(), u.data(), out.data(), 33);
  for (int i = 0; i < 33; ++i) EXPECT_NEAR(out[i], g[i] / (1 + std::exp(-double(g[i]))) * u[i], 1e-5);
  auto table = test::random_floats(rng, 10 * 8);
  WeightView t{"embed", WeightFormat::Dense, DType::F32, 10, 8, reinterpret_cast<const uint8_t*>(table.data()), 32};
  int32_t ids[3] = {9, 0, 4};
  std::vector<float> e(3 * 8);
  be.embed(t, ids, 3, e.data());
  for (int i = 0; i < 3; ++i)
    for (int c = 0; c < 8; ++c) EXPECT_EQ(e[i * 8 + c], table[ids[i] * 8 + c]);
  int32_t bad = 10;
  EXPECT_THROW(be.embed(t, &bad, 1, e.data()), InvalidArgument);
}

}  // namespace
}  // namespace m2
