// GPTQ against round-to-nearest: identical when the inputs are uncorrelated (H ∝ I), and a lower
// output error ‖X(Ŵ − W)ᵀ‖ when they are correlated, for NVFP4 and MXFP4; the Gram matrix against
// a direct sum.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/codec.h"
#include "quant/gptq.h"
#include "quant/gptq_layer.h"
#include "test_util.h"

namespace m2 {
namespace {

std::vector<float> normal(std::mt19937_64& rng, int64_t n, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// Dequantized weights from packed codes and scales.
std::vector<float> dequant(const std::vector<uint8_t>& packed, const std::vector<uint8_t>& scales, int64_t rows, int64_t cols,
                           const GptqTarget& t) {
  const int g = t.format == GptqTarget::Format::Nvfp4 ? 16 : 32;
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t b = packed[size_t(r * cols / 2 + c / 2)], code = c % 2 ? b >> 4 : b & 0xF;
      const uint8_t s = scales[size_t(r * (cols / g) + c / g)];
      const double m = t.format == GptqTarget::Format::Nvfp4 ? double(e4m3_to_f32(s)) * t.ws2 : std::ldexp(1.0, int(s) - 127);
      out[size_t(r * cols + c)] = float(double(e2m1_to_f32(code)) * m);
    }
  return out;
}

// ‖X (A − B)ᵀ‖²: the output error on inputs x [n, cols].
double output_error(const std::vector<float>& x, int64_t n, const std::vector<float>& a, const std::vector<float>& b, int64_t rows,
                    int64_t cols) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double y = 0;
      for (int64_t c = 0; c < cols; ++c) y += double(x[size_t(i * cols + c)]) * (double(a[size_t(r * cols + c)]) - b[size_t(r * cols + c)]);
      total += y * y;
    }
  return total;
}

TEST(Gptq, GramMatrixIsTheSumOfOuterProducts) {
  std::mt19937_64 rng(test::fresh_seed());
  const int64_t n = 300, cols = 24;
  auto x = normal(rng, n * cols, 1.0f);
  std::vector<int32_t> rows = {0, 7, 299, 7, 150};
  std::vector<double> h;
  accumulate_gram(x.data(), n, cols, rows, h);
  accumulate_gram(x.data(), n, cols, {}, h);  // accumulates
  for (int64_t a = 0; a < cols; ++a)
    for (int64_t b = 0; b < cols; ++b) {
      double want = 0;
      for (int32_t r : rows) want += double(x[size_t(r * cols + a)]) * x[size_t(r * cols + b)];
      for (int64_t r = 0; r < n; ++r) want += double(x[size_t(r * cols + a)]) * x[size_t(r * cols + b)];
      EXPECT_NEAR(h[size_t(a * cols + b)], want, 1e-9 * std::max(1.0, std::fabs(want))) << a << "," << b;
    }
  EXPECT_THROW(accumulate_gram(x.data(), n, cols, {300}, h), InvalidArgument);
}

class GptqFormats : public ::testing::TestWithParam<GptqTarget::Format> {};

// The target of `format` for weights w, with NVFP4's global scale from their amax.
GptqTarget target_for(GptqTarget::Format format, const std::vector<float>& w) {
  GptqTarget t;
  t.format = format;
  double amax = 0;
  for (float v : w) amax = std::max(amax, double(std::fabs(v)));
  t.ws2 = nvfp4_global_scale(amax);
  return t;
}

// With a diagonal H (uncorrelated inputs, energies `diag`) there is no error to spread: GPTQ's codes
// and scales, written back in stored order, are round-to-nearest's.
void expect_round_to_nearest(GptqTarget::Format f, const std::vector<double>& diag, bool act_order, std::mt19937_64& rng) {
  const int64_t rows = 16, cols = int64_t(diag.size());
  auto w = normal(rng, rows * cols, 0.05f);
  const GptqTarget t = target_for(f, w);
  const int g = t.format == GptqTarget::Format::Nvfp4 ? 16 : 32;
  std::vector<double> h(static_cast<size_t>(cols * cols), 0.0);
  for (int64_t i = 0; i < cols; ++i) h[size_t(i * cols + i)] = diag[size_t(i)];
  std::vector<uint8_t> p(size_t(rows * cols / 2)), s(size_t(rows * cols / g)), p2(p.size()), s2(s.size());
  GptqOptions o;
  o.act_order = act_order;
  o.refine_sweeps = 3;  // with a diagonal H every code is already the best for its coordinate
  const GptqResult res = gptq_quantize(w.data(), rows, cols, h, t, p.data(), s.data(), o);
  EXPECT_EQ(res.refined, 0);
  if (t.format == GptqTarget::Format::Nvfp4) quantize_nvfp4(w.data(), rows, cols, t.ws2, ScaleSearch::Max, nullptr, p2.data(), s2.data());
  else quantize_mxfp4(w.data(), rows, cols, t.rule, ScaleSearch::Max, nullptr, p2.data(), s2.data());
  EXPECT_EQ(p, p2) << "act order " << act_order;
  EXPECT_EQ(s, s2) << "act order " << act_order;
}

TEST_P(GptqFormats, UncorrelatedInputsGiveRoundToNearest) {
  std::mt19937_64 rng(test::fresh_seed());
  expect_round_to_nearest(GetParam(), std::vector<double>(256, 3.0), false, rng);
}

// Act order permutes the columns, here by distinct, shuffled energies.
TEST_P(GptqFormats, ActOrderWithUncorrelatedInputsGivesRoundToNearest) {
  std::mt19937_64 rng(test::fresh_seed());
  std::vector<double> energy(256);
  std::iota(energy.begin(), energy.end(), 1.0);
  std::shuffle(energy.begin(), energy.end(), rng);
  expect_round_to_nearest(GetParam(), energy, true, rng);
}

TEST_P(GptqFormats, CorrelatedInputsLowerTheOutputError) {
  std::mt19937_64 rng(test::fresh_seed());
  const int64_t rows = 48, cols = 256, n = 1024;
  auto w = normal(rng, rows * cols, 0.05f);
  // Inputs with strongly correlated channels and uneven energy, as real activations are.
  auto z = normal(rng, n * 16, 1.0f);
  auto mix = normal(rng, 16 * cols, 1.0f);
  auto noise = normal(rng, n * cols, 0.3f);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      double v = noise[size_t(i * cols + c)];
      for (int k = 0; k < 16; ++k) v += double(z[size_t(i * 16 + k)]) * mix[size_t(k * cols + c)];
      x[size_t(i * cols + c)] = float(v * (1.0 + 3.0 * (c % 7 == 0)));
    }
  const GptqTarget t = target_for(GetParam(), w);
  const int g = t.format == GptqTarget::Format::Nvfp4 ? 16 : 32;
  std::vector<double> h;
  accumulate_gram(x.data(), n, cols, {}, h);
  std::vector<uint8_t> p(size_t(rows * cols / 2)), s(size_t(rows * cols / g)), p2(p.size()), s2(s.size());
  std::vector<double> h_act = h, h_refine = h;
  const GptqResult res = gptq_quantize(w.data(), rows, cols, h, t, p.data(), s.data());
  if (t.format == GptqTarget::Format::Nvfp4) quantize_nvfp4(w.data(), rows, cols, t.ws2, ScaleSearch::Max, nullptr, p2.data(), s2.data());
  else quantize_mxfp4(w.data(), rows, cols, t.rule, ScaleSearch::Max, nullptr, p2.data(), s2.data());
  const double e_gptq = output_error(x, n, w, dequant(p, s, rows, cols, t), rows, cols);
  const double e_rtn = output_error(x, n, w, dequant(p2, s2, rows, cols, t), rows, cols);
  std::printf("output error: round-to-nearest %.4g, GPTQ %.4g (%.0f%% lower); proxy %.4g → %.4g\n", e_rtn, e_gptq,
              100 * (1 - e_gptq / e_rtn), res.proxy_before, res.proxy_after);
  EXPECT_LT(e_gptq, 0.8 * e_rtn);
  EXPECT_LT(res.proxy_after, res.proxy_before);
  EXPECT_NEAR(res.proxy_before / e_rtn, 1.0, 1e-6);  // the proxy is the output error on these inputs
  // Act order: also below round-to-nearest, and its proxy is its output error too.
  std::vector<uint8_t> p3(p.size()), s3(s.size());
  GptqOptions o;
  o.act_order = true;
  const GptqResult act = gptq_quantize(w.data(), rows, cols, h_act, t, p3.data(), s3.data(), o);
  const double e_act = output_error(x, n, w, dequant(p3, s3, rows, cols, t), rows, cols);
  std::printf("act order: output error %.4g (%.0f%% below round-to-nearest)\n", e_act, 100 * (1 - e_act / e_rtn));
  EXPECT_LT(e_act, 0.8 * e_rtn);
  EXPECT_NEAR(act.proxy_after / e_act, 1.0, 1e-6);
  // Coordinate descent afterwards: the same scales, some codes moved, a lower output error (the
  // proxy, still equal to it, cannot rise in any step).
  std::vector<uint8_t> p4(p.size()), s4(s.size());
  GptqOptions r;
  r.refine_sweeps = 10;
  const GptqResult ref = gptq_quantize(w.data(), rows, cols, h_refine, t, p4.data(), s4.data(), r);
  const double e_ref = output_error(x, n, w, dequant(p4, s4, rows, cols, t), rows, cols);
  std::printf("refined: %lld codes changed, output error %.4g (%.1f%% below GPTQ)\n", static_cast<long long>(ref.refined), e_ref,
              100 * (1 - e_ref / e_gptq));
  EXPECT_EQ(s4, s);
  EXPECT_GT(ref.refined, 0);
  EXPECT_LT(e_ref, e_gptq);
  EXPECT_NEAR(ref.proxy_after / e_ref, 1.0, 1e-6);
}

// One sweep at a time: the output error never rises, and a sweep that changes nothing is a fixed point.
TEST_P(GptqFormats, RefinementNeverRaisesTheOutputError) {
  std::mt19937_64 rng(test::fresh_seed());
  const int64_t rows = 8, cols = 64, n = 256;
  const int g = GetParam() == GptqTarget::Format::Nvfp4 ? 16 : 32;
  auto w = normal(rng, rows * cols, 0.05f);
  auto x = normal(rng, n * cols, 1.0f);
  for (int64_t i = 0; i < n; ++i)  // neighbouring channels correlated
    for (int64_t c = 1; c < cols; ++c) x[size_t(i * cols + c)] += 0.8f * x[size_t(i * cols + c - 1)];
  const GptqTarget t = target_for(GetParam(), w);
  std::vector<uint8_t> p(size_t(rows * cols / 2)), s(size_t(rows * cols / g));
  if (t.format == GptqTarget::Format::Nvfp4) quantize_nvfp4(w.data(), rows, cols, t.ws2, ScaleSearch::Max, nullptr, p.data(), s.data());
  else quantize_mxfp4(w.data(), rows, cols, t.rule, ScaleSearch::Max, nullptr, p.data(), s.data());
  std::vector<uint8_t> codes(size_t(rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i) codes[size_t(i)] = i % 2 ? p[size_t(i / 2)] >> 4 : p[size_t(i / 2)] & 0xF;
  std::vector<double> mult(s.size());
  for (size_t i = 0; i < s.size(); ++i)
    mult[i] = t.format == GptqTarget::Format::Nvfp4 ? double(e4m3_to_f32(s[i])) * t.ws2 : std::ldexp(1.0, int(s[i]) - 127);
  std::vector<double> h;
  accumulate_gram(x.data(), n, cols, {}, h);
  auto error = [&] {
    std::vector<uint8_t> packed(p.size());
    for (int64_t i = 0; i < rows * cols; i += 2) packed[size_t(i / 2)] = uint8_t(codes[size_t(i)] | codes[size_t(i + 1)] << 4);
    return output_error(x, n, w, dequant(packed, s, rows, cols, t), rows, cols);
  };
  double before = error();
  int64_t total = 0;
  for (int sweep = 0; sweep < 50; ++sweep) {
    const int64_t changed = refine_codes(w.data(), rows, cols, g, h, mult, codes, 1);
    const double after = error();
    EXPECT_LE(after, before * (1 + 1e-12)) << "sweep " << sweep;
    before = after;
    total += changed;
    if (changed == 0) {
      EXPECT_EQ(refine_codes(w.data(), rows, cols, g, h, mult, codes, 1), 0);
      break;
    }
  }
  EXPECT_GT(total, 0);  // round-to-nearest is not the optimum with correlated inputs
}

// An expert's GPTQ with route weighting (gptq_layer, GptqOptions::route_weighted): equal routing
// weights of a power of two scale the Hessian exactly, so the codes are the same bytes as without;
// uneven weights make it minimise the output error the layer sees, Σ g_t² ‖(Ŵ − W) x_t‖², below
// what unweighted GPTQ reaches on that measure. The inputs of the heavily and the lightly routed
// tokens are correlated differently, so the two Hessians have different minimisers.
TEST_P(GptqFormats, RouteWeightsWeighAnExpertsHessian) {
  std::mt19937_64 rng(test::fresh_seed());
  const int64_t hidden = 128, inter = 64, n = 512;
  auto w1 = normal(rng, inter * hidden, 0.05f), w3 = normal(rng, inter * hidden, 0.05f), w2 = normal(rng, hidden * inter, 0.05f);
  auto view = [&](std::vector<float>& v, int64_t rows, int64_t cols, const char* name) {
    WeightView w;
    w.name = name;
    w.format = WeightFormat::Dense;
    w.dtype = DType::F32;
    w.rows = rows;
    w.cols = cols;
    w.row_bytes = cols * 4;
    w.data = reinterpret_cast<const uint8_t*>(v.data());
    return w;
  };
  const WeightView v1 = view(w1, inter, hidden, "w1"), v3 = view(w3, inter, hidden, "w3"), v2 = view(w2, hidden, inter, "w2");
  // Two halves of the tokens, each a mix of 8 directions of its own plus noise.
  std::vector<float> x(size_t(n * hidden));
  for (int half = 0; half < 2; ++half) {
    auto z = normal(rng, n / 2 * 8, 1.0f), mix = normal(rng, 8 * hidden, 1.0f), noise = normal(rng, n / 2 * hidden, 0.2f);
    for (int64_t i = 0; i < n / 2; ++i)
      for (int64_t c = 0; c < hidden; ++c) {
        double v = noise[size_t(i * hidden + c)];
        for (int k = 0; k < 8; ++k) v += double(z[size_t(i * 8 + k)]) * mix[size_t(k * hidden + c)];
        x[size_t((half * n / 2 + i) * hidden + c)] = float(v);
      }
  }
  std::vector<GptqJob> jobs(3);
  const WeightView* ws[3] = {&v1, &v3, &v2};
  for (int j = 0; j < 3; ++j) {
    jobs[size_t(j)].name = ws[j]->name;
    jobs[size_t(j)].w = ws[j];
    jobs[size_t(j)].expert = 0;
    jobs[size_t(j)].input = j < 2 ? GptqJob::Input::ExpertIn : GptqJob::Input::ExpertMid;
    jobs[size_t(j)].target = target_for(GetParam(), j == 0 ? w1 : j == 1 ? w3 : w2);
  }
  jobs[2].gate = &v1;
  jobs[2].up = &v3;
  const LayerActivations acts{n, {}, {}, x};
  RoutedRows routed{{std::vector<int32_t>(size_t(n))}, {std::vector<float>(size_t(n), 0.5f)}};
  std::iota(routed.rows[0].begin(), routed.rows[0].end(), 0);
  ThreadPool pool(2);
  GptqOptions plain, weighted;
  weighted.route_weighted = true;
  const auto base = gptq_layer(jobs, acts, routed, pool, plain);
  const auto same = gptq_layer(jobs, acts, routed, pool, weighted);
  for (int j = 0; j < 3; ++j) {
    EXPECT_EQ(same[size_t(j)].packed, base[size_t(j)].packed) << ws[j]->name;
    EXPECT_EQ(same[size_t(j)].scales, base[size_t(j)].scales) << ws[j]->name;
  }
  // The first half routed with weight 1, the second with 0.05.
  for (int64_t i = 0; i < n; ++i) routed.weights[0][size_t(i)] = i < n / 2 ? 1.0f : 0.05f;
  const auto uneven = gptq_layer(jobs, acts, routed, pool, weighted);
  std::vector<float> xw(x);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < hidden; ++c) xw[size_t(i * hidden + c)] *= routed.weights[0][size_t(i)];
  for (int j = 0; j < 2; ++j) {  // w1, w3: the error on the routing-weighted inputs
    const GptqTarget& t = jobs[size_t(j)].target;
    const std::vector<float>& w = j == 0 ? w1 : w3;
    const double e_plain = output_error(xw, n, w, dequant(base[size_t(j)].packed, base[size_t(j)].scales, inter, hidden, t), inter, hidden);
    const double e_weighted =
        output_error(xw, n, w, dequant(uneven[size_t(j)].packed, uneven[size_t(j)].scales, inter, hidden, t), inter, hidden);
    std::printf("%s: routing-weighted output error, plain GPTQ %.4g, route-weighted %.4g (%.0f%% lower)\n", ws[j]->name.c_str(), e_plain,
                e_weighted, 100 * (1 - e_weighted / e_plain));
    EXPECT_LT(e_weighted, 0.95 * e_plain) << ws[j]->name;
  }
  EXPECT_NE(uneven[2].packed, base[2].packed);  // w2's Hessian is weighted too
}

INSTANTIATE_TEST_SUITE_P(Formats, GptqFormats, ::testing::Values(GptqTarget::Format::Nvfp4, GptqTarget::Format::Mxfp4),
                         [](const auto& info) { return info.param == GptqTarget::Format::Nvfp4 ? "nvfp4" : "mxfp4"; });

}  // namespace
}  // namespace m2
