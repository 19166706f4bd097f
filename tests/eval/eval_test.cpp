// m2 eval: perplexity against the demo model's float64 reference, KLD and top-1 against itself and
// by hand, streaming equal to in-memory, per-expert errors against a direct computation, and plots.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "eval/evaluate.h"
#include "eval/expert_error.h"
#include "io/config.h"
#include "quant/weight.h"
#include "test_util.h"

namespace m2 {
namespace {

namespace fs = std::filesystem;

std::vector<int32_t> demo_ids(const std::string& text) {
  SafetensorsFile ref(test::kDemo / "reference-nll.safetensors");
  return test::as_ids(ref.tensors().at(text + ".input_ids"));
}

double reference_ppl(const std::string& text) {
  SafetensorsFile ref(test::kDemo / "reference-nll.safetensors");
  const auto nll = test::as_floats(ref.tensors().at(text + ".nll"));
  double s = 0;
  for (float x : nll) s += x;
  return std::exp(s / double(nll.size()));
}

TEST(Eval, WindowsScoreEveryTokenButTheFirstOnce) {
  std::vector<int32_t> ids(2050);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
  const auto w = eval_windows(ids, 1024);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].size(), 1025u);
  EXPECT_EQ(w[1].front(), 1024);
  EXPECT_EQ(w[1].size(), 1025u);
  EXPECT_EQ(w[2].front(), 2048);
  EXPECT_EQ(w[2].size(), 2u);
  size_t scored = 0;
  for (const auto& x : w) scored += x.size() - 1;
  EXPECT_EQ(scored, ids.size() - 1);
  EXPECT_TRUE(eval_windows({5}, 16).empty());
  EXPECT_THROW(eval_windows(ids, 0), InvalidArgument);
}

// KL(r‖q), Δp and top-1 on a three-token vocabulary, by hand.
TEST(Eval, ScoresOneTokenByHand) {
  const float q[3] = {0.0f, std::log(2.0f), std::log(3.0f)};  // q = (1/6, 2/6, 3/6)
  const float r[3] = {std::log(3.0f), std::log(2.0f), 0.0f};  // r = (3/6, 2/6, 1/6)
  const TokenScore s = score_token(q, r, 3, 1);
  const double kld = 0.5 * std::log(3.0) + (1.0 / 6) * std::log(1.0 / 3);  // Σ r log(r/q)
  EXPECT_NEAR(s.kld, kld, 1e-7);
  EXPECT_NEAR(s.nll, -std::log(2.0 / 6), 1e-7);
  EXPECT_NEAR(s.ref_nll, -std::log(2.0 / 6), 1e-7);
  EXPECT_NEAR(s.dp, 0.0, 1e-7);
  EXPECT_FALSE(s.top1);
  const TokenScore same = score_token(q, q, 3, 2);
  EXPECT_EQ(same.kld, 0.0);
  EXPECT_TRUE(same.top1);
  EXPECT_THROW(score_token(q, r, 3, 3), InvalidArgument);
  const float bad[3] = {NAN, 0, 0};
  EXPECT_THROW(score_token(bad, r, 3, 0), ModelError);
}

TEST(Eval, PercentilesInterpolate) {
  std::vector<double> v = {4, 1, 3, 2, 5};
  EXPECT_DOUBLE_EQ(percentile(v, 50), 3);
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 5);
  EXPECT_DOUBLE_EQ(percentile(v, 25), 2);
  EXPECT_DOUBLE_EQ(percentile(v, 90), 4.6);
}

// The demo model against HF's float64 NLLs, through the CLI as users run it (text in, JSON out), and
// against itself: KLD 0 and top-1 100%; the streaming path gives the same numbers.
TEST(Eval, DemoPerplexityAndSelfComparison) {
  test::TempDir tmp;
  const fs::path json = tmp.path / "eval.json";
  const std::string text = (test::kDemo / "eval-text" / "test-prose.txt").string();
  auto r = test::run_m2("eval --model " + test::kDemo.string() + " --ref " + test::kDemo.string() + " --text " + text +
                        " --ctx 1024 --max-tokens 8192 -q --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = read_json_file(json);
  const double want = reference_ppl("test-prose");
  EXPECT_NEAR(j["ppl"].get<double>() / want, 1.0, 0.005) << "m2 " << j["ppl"] << ", reference " << want;
  EXPECT_EQ(j["ppl"], j["ref_ppl"]);
  EXPECT_EQ(j["kld_mean"].get<double>(), 0.0);
  EXPECT_EQ(j["kld_p99"].get<double>(), 0.0);
  EXPECT_EQ(j["top1"].get<double>(), 1.0);
  EXPECT_EQ(j["tokens"].get<int64_t>(), 8191);
  for (const char* k : {"kld_median", "kld_p90", "kld_p95", "kld_max", "kld_gt1", "dp_mean", "ppl_delta_pct"}) EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_NE(r.out.find("| PPL ref | PPL | ΔPPL | KLD mean"), std::string::npos) << r.out;

  // The library, on the reference's own ids: streaming (layer by layer) equals window by window.
  const ModelWeights w = ModelWeights::load(test::kDemo);
  CpuBackend be(2);
  auto ids = demo_ids("test-code");
  ids.resize(3000);
  EvalOptions o;
  o.ctx = 512;
  const EvalSummary a = evaluate(w, &w, be, ids, o);
  o.streaming = true;
  const EvalSummary b = evaluate(w, &w, be, ids, o);
  EXPECT_EQ(a.tokens, 2999);
  EXPECT_NEAR(a.ppl, b.ppl, a.ppl * 1e-9);
  EXPECT_EQ(b.kld_mean, 0.0);
  EXPECT_EQ(b.top1, 1.0);
}

// A quantized fixture against its bf16 original: KLD > 0, top-1 < 100%, and the ids must fit.
TEST(Eval, QuantizedAgainstReference) {
  const ModelWeights q = ModelWeights::load(test::kFixtures / "small-mxfp4-ct"), r = ModelWeights::load(test::kFixtures / "small-bf16");
  CpuBackend be(2);
  std::mt19937_64 rng(test::fresh_seed());
  std::vector<int32_t> ids(600);
  for (auto& t : ids) t = int32_t(rng() % 1024);
  EvalOptions o;
  o.ctx = 256;
  const EvalSummary s = evaluate(q, &r, be, ids, o);
  EXPECT_EQ(s.tokens, 599);
  EXPECT_GT(s.kld_mean, 0.0);
  EXPECT_LE(s.kld_median, s.kld_p99);
  EXPECT_LE(s.kld_p99, s.kld_max);
  EXPECT_LT(s.top1, 1.0);
  EXPECT_GT(s.top1, 0.3);
  EXPECT_NEAR(s.ppl_delta_pct, (s.ppl / s.ref_ppl - 1) * 100, 1e-9);
  ids[10] = 5000;
  EXPECT_THROW(evaluate(q, &r, be, ids, o), InvalidArgument);
  const ModelWeights tiny = ModelWeights::load(test::kFixtures / "tiny-bf16");
  ids[10] = 1;
  EXPECT_THROW(evaluate(tiny, &r, be, ids, o), InvalidArgument);  // vocabularies differ
}

// Per-expert weight errors equal ‖Ŵ − W‖ / ‖W‖ computed here from the reference decoder.
TEST(Eval, ExpertWeightErrorsEqualADirectComputation) {
  const ModelWeights q = ModelWeights::load(test::kFixtures / "tiny-nvfp4-modelopt"), r = ModelWeights::load(test::kFixtures / "tiny-bf16");
  CpuBackend be(2);
  const ExpertErrors e = expert_weight_errors(q, r, be);
  ASSERT_EQ(e.layers, 2);
  ASSERT_EQ(e.experts, 8);
  auto norms = [](const WeightView& a, const WeightView& b) {
    std::vector<float> x(size_t(a.cols)), y(size_t(a.cols));
    double d = 0, n = 0;
    for (int64_t i = 0; i < a.rows; ++i) {
      dequant_row_ref(a, i, x.data());
      dequant_row_ref(b, i, y.data());
      for (int64_t c = 0; c < a.cols; ++c) d += std::pow(double(x[size_t(c)]) - y[size_t(c)], 2), n += double(y[size_t(c)]) * y[size_t(c)];
    }
    return std::make_pair(d, n);
  };
  for (int l = 0; l < 2; ++l)
    for (int x = 0; x < 8; ++x) {
      const auto a = norms(q.layers[size_t(l)].w1[size_t(x)], r.layers[size_t(l)].w1[size_t(x)]);
      const auto b = norms(q.layers[size_t(l)].w2[size_t(x)], r.layers[size_t(l)].w2[size_t(x)]);
      const auto c = norms(q.layers[size_t(l)].w3[size_t(x)], r.layers[size_t(l)].w3[size_t(x)]);
      EXPECT_NEAR(e.at(l, x).w1, std::sqrt(a.first / a.second), 1e-9);
      EXPECT_NEAR(e.at(l, x).w2, std::sqrt(b.first / b.second), 1e-9);
      EXPECT_NEAR(e.at(l, x).whole, std::sqrt((a.first + b.first + c.first) / (a.second + b.second + c.second)), 1e-9);
      EXPECT_GT(e.at(l, x).whole, 0.01);  // 4-bit weights are not the bf16 ones
    }
  // Against itself: zero everywhere.
  const ExpertErrors self = expert_weight_errors(r, r, be);
  for (const auto& x : self.e) EXPECT_EQ(x.whole, 0.0);
}

// The CLI: Markdown, JSON, and plots that are valid SVG with one cell per expert (checked by
// Python's XML parser), output errors with calibration tokens.
TEST(Eval, ExpertReportAndPlots) {
  test::TempDir tmp;
  std::ofstream(tmp.path / "calib.json") << "[[5, 9, 200, 17, 33, 64, 99, 12, 180, 250, 3, 7, 11, 13, 17, 19]]";
  const fs::path plots = tmp.path / "plots", json = tmp.path / "experts.json";
  auto r = test::run_m2("eval --experts " + (test::kFixtures / "tiny-nvfp4-ct").string() + " --ref " +
                        (test::kFixtures / "tiny-bf16").string() + " --calib " + (tmp.path / "calib.json").string() +
                        " --plots " + plots.string() + " --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("| relative error | mean | std | min | max |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| output |"), std::string::npos) << r.out;
  const auto j = read_json_file(json);
  EXPECT_EQ(j["per_expert"].size(), 16u);
  EXPECT_GT(j["summary"]["whole"]["mean"].get<double>(), 0.0);
  int64_t routed = 0;
  for (const auto& x : j["per_expert"]) routed += x["tokens"].get<int64_t>();
  EXPECT_EQ(routed, 2 * 16 * 2);  // layers × tokens × top-k
  for (const char* f : {"expert_weight_error_heatmap.svg", "expert_output_error_heatmap.svg", "expert_weight_error_histogram.svg"}) {
    const fs::path p = plots / f;
    ASSERT_TRUE(fs::exists(p)) << f;
    const std::string check =
        "python3 -c \"import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); "
        "assert r.tag == '{http://www.w3.org/2000/svg}svg'; "
        "print(sum(1 for e in r.iter('{http://www.w3.org/2000/svg}rect') if e.get('class') == 'cell'))\" " + p.string();
    FILE* pipe = popen(check.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    char buf[64] = {0};
    const size_t n = fread(buf, 1, sizeof buf - 1, pipe);
    ASSERT_EQ(pclose(pipe), 0) << f << " is not valid SVG";
    const int cells = std::atoi(std::string(buf, n).c_str());
    EXPECT_EQ(cells, std::string(f).find("heatmap") != std::string::npos ? 16 : 0) << f;
  }
  r = test::run_m2("eval --experts " + (test::kFixtures / "tiny-nvfp4-ct").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--experts needs --ref"), std::string::npos) << r.out;
  r = test::run_m2("eval --model " + test::kDemo.string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--text FILE or --ids FILE"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace m2
