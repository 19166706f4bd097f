// The trained demo model's perplexity on held-out text, against HF's float64 per-token NLLs.
#include <gtest/gtest.h>

#include "model/model_fixture.h"

namespace m2 {
namespace {

// Windows of 1025 tokens starting at 0, 1024, 2048, ...: the window starting at s scores tokens
// s+1 .. s+1024 given only the window's earlier tokens (models/tiny-m2-demo/README.md).
std::vector<double> windowed_nll(test::Loaded& m, const std::vector<int32_t>& ids) {
  const int64_t V = m.weights.config.vocab_size, W = 1025;
  std::vector<double> nll;
  for (size_t s = 0; s + 1 < ids.size(); s += 1024) {
    const size_t n = std::min<size_t>(size_t(W), ids.size() - s);
    std::vector<int32_t> window(ids.begin() + long(s), ids.begin() + long(s + n));
    auto logits = m.prefill(window);
    for (size_t j = 0; j + 1 < n; ++j) {
      const float* l = logits.data() + j * size_t(V);
      double mx = *std::max_element(l, l + V), sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(l[v]) - mx);
      nll.push_back(std::log(sum) + mx - double(l[window[j + 1]]));
    }
  }
  return nll;
}

TEST(DemoModel, PerplexityWithinHalfAPercentOfReference) {
  test::Loaded m(test::kDemo);
  SafetensorsFile ref(test::kDemo / "reference-nll.safetensors");
  for (const std::string text : {"test-prose", "test-code"}) {
    auto ids = test::as_ids(ref.tensors().at(text + ".input_ids"));
    auto want = test::as_floats(ref.tensors().at(text + ".nll"));
    auto got = windowed_nll(m, ids);
    ASSERT_EQ(got.size(), want.size()) << text;
    double sum_got = 0, sum_want = 0, max_diff = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      sum_got += got[i];
      sum_want += want[i];
      max_diff = std::max(max_diff, std::fabs(got[i] - double(want[i])));
    }
    const double ppl_got = std::exp(sum_got / double(got.size())), ppl_want = std::exp(sum_want / double(got.size()));
    std::printf("%s: perplexity %.4f (reference %.4f), max per-token NLL difference %.2e\n", text.c_str(), ppl_got,
                ppl_want, max_diff);
    EXPECT_LE(std::fabs(ppl_got / ppl_want - 1.0), 0.005) << text;
    EXPECT_LE(max_diff, 1e-2) << text;  // every token, not just the mean
  }
}

TEST(DemoModel, GreedyContinuationOfReference) {
  test::Loaded m(test::kDemo);
  SafetensorsFile ref(test::kDemo / "reference-nll.safetensors");
  auto prompt = test::as_ids(ref.tensors().at("greedy.prompt"));
  auto want = test::as_ids(ref.tensors().at("greedy.output"));
  EXPECT_EQ(m.greedy(prompt, int(want.size())), want);
}

}  // namespace
}  // namespace m2
