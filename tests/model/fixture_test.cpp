// Every fixture checkpoint (two sizes × five weight formats) against HF transformers' float64 outputs.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "model/model_fixture.h"

namespace m2 {
namespace {

constexpr double kLogitsTolerance = 1e-3;  // ‖Δ‖/‖ref‖ per sequence, fixtures/README.md
constexpr double kHiddenTolerance = 1e-3;

class Fixture : public ::testing::TestWithParam<std::string> {};

TEST_P(Fixture, LogitsMatchReference) {
  const auto dir = test::kFixtures / GetParam();
  test::Loaded m(dir);
  SafetensorsFile ref(dir / "reference.safetensors");
  for (int s = 0; s < 3; ++s) {
    auto ids = test::as_ids(ref.tensors().at(fmt::format("ref.seq{}.input_ids", s)));
    auto want = test::as_floats(ref.tensors().at(fmt::format("ref.seq{}.logits", s)));
    auto got = m.prefill(ids);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LE(test::rel_err(got.data(), want.data(), got.size()), kLogitsTolerance) << "sequence " << s;
  }
}

// The same logits whatever the KV block size, including sizes that divide no prompt length
// (the references are 15-40 tokens long), and a block per token.
TEST_P(Fixture, LogitsMatchReferenceThroughPagedCacheAtEveryBlockSize) {
  const auto dir = test::kFixtures / GetParam();
  SafetensorsFile ref(dir / "reference.safetensors");
  for (int block_size : {1, 3, 7, 16, 64}) {
    test::LoadOptions o;
    o.block_size = block_size;
    o.num_blocks = 4096 / block_size;
    test::Loaded m(dir, o);
    for (int s = 0; s < 3; ++s) {
      auto ids = test::as_ids(ref.tensors().at(fmt::format("ref.seq{}.input_ids", s)));
      auto want = test::as_floats(ref.tensors().at(fmt::format("ref.seq{}.logits", s)));
      auto got = m.prefill(ids);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_LE(test::rel_err(got.data(), want.data(), got.size()), kLogitsTolerance)
          << "block size " << block_size << ", sequence " << s << " of " << ids.size() << " tokens";
    }
  }
}

TEST_P(Fixture, HiddenStatesMatchReferencePerLayer) {
  const auto dir = test::kFixtures / GetParam();
  test::Loaded m(dir);
  SafetensorsFile ref(dir / "reference.safetensors");
  const int L = m.weights.config.num_layers;
  std::vector<std::vector<float>> hidden(size_t(L + 2));
  m.model->hidden_hook = [&](int index, const TensorView& h) {
    hidden[size_t(index)].resize(size_t(h.numel()));
    m.backend->download(hidden[size_t(index)].data(), h, h.nbytes());
  };
  m.prefill(test::as_ids(ref.tensors().at("ref.seq2.input_ids")));
  // HF records the embedding output, then each decoder layer's output; its last entry is after the
  // final norm (transformers 5.x), which is our index L + 1.
  for (int i = 0; i <= L; ++i) {
    auto want = test::as_floats(ref.tensors().at(fmt::format("ref.seq2.hidden.{}", i)));
    const auto& got = hidden[size_t(i == L ? L + 1 : i)];
    ASSERT_EQ(got.size(), want.size()) << "hidden " << i;
    EXPECT_LE(test::rel_err(got.data(), want.data(), got.size()), kHiddenTolerance) << "hidden " << i;
  }
}

TEST_P(Fixture, GreedyContinuationMatchesWhereTheMarginAllows) {
  const auto dir = test::kFixtures / GetParam();
  test::Loaded m(dir);
  SafetensorsFile ref(dir / "reference.safetensors");
  auto prompt = test::as_ids(ref.tensors().at("ref.greedy.prompt"));
  auto want = test::as_ids(ref.tensors().at("ref.greedy.output"));
  // The smallest top-1/top-2 margin on HF's greedy path, from the fixture info files.
  const std::string name = GetParam();
  const std::string size = name.substr(0, name.find('-')), fmt_ = name.substr(name.find('-') + 1);
  auto info = read_json_file(test::kFixtures / "fixtures-info.json");
  info.update(read_json_file(test::kFixtures / "quant-fixtures-info-shared.json"));
  const std::string key = fmt_ == "bf16" ? name + ".greedy_min_margin"
                          : fmt_ == "fp8" ? "deq-" + size + ".greedy_min_margin"
                                          : "deq-" + name + ".greedy_min_margin";
  ASSERT_TRUE(info.contains(key)) << key;
  const double margin = info[key].get<double>();
  // Our worst absolute logit error on the longest reference sequence bounds how far argmax can move.
  auto ids = test::as_ids(ref.tensors().at("ref.seq2.input_ids"));
  auto logits = m.prefill(ids);
  auto ref_logits = test::as_floats(ref.tensors().at("ref.seq2.logits"));
  double max_err = 0;
  for (size_t i = 0; i < logits.size(); ++i) max_err = std::max(max_err, double(std::fabs(logits[i] - ref_logits[i])));
  ASSERT_LT(4 * max_err, margin) << "logit error too large to compare greedy paths";
  EXPECT_EQ(m.greedy(prompt, int(want.size())), want);
}

INSTANTIATE_TEST_SUITE_P(AllFormats, Fixture, ::testing::ValuesIn(test::kAllFixtures),
                         test::ParamName());

}  // namespace
}  // namespace m2
