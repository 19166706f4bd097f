// The cache and batching must not change results: decode == prefill, batch == alone, path == path.
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/model_fixture.h"

namespace m2 {
namespace {

constexpr double kTolerance = 1e-5;  // same math, different summation order

std::vector<int32_t> random_ids(std::mt19937_64& rng, int n, int vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& t : ids) t = int32_t(rng() % uint64_t(vocab));
  return ids;
}

class Consistency : public ::testing::TestWithParam<std::string> {};

TEST_P(Consistency, TokenByTokenDecodeEqualsPrefill) {
  std::mt19937_64 rng(test::fresh_seed());
  test::Loaded m(test::kFixtures / GetParam());
  const int64_t V = m.weights.config.vocab_size;
  auto ids = random_ids(rng, 23, int(V));
  auto full = m.prefill(ids);
  // Prefill a prefix of 9, then decode one token at a time.
  KvCache cache(m.weights.config, 23);
  std::vector<float> logits(size_t(9 * V));
  SequenceInput in{&cache, {ids.data(), 9}};
  m.model->forward({&in, 1}, LogitsFor::AllTokens, logits.data());
  EXPECT_LE(test::rel_err(logits.data(), full.data(), size_t(9 * V)), kTolerance);
  for (int t = 9; t < 23; ++t) {
    SequenceInput step{&cache, {ids.data() + t, 1}};
    m.model->forward({&step, 1}, LogitsFor::LastToken, logits.data());
    EXPECT_LE(test::rel_err(logits.data(), full.data() + t * V, size_t(V)), kTolerance) << "position " << t;
  }
  EXPECT_EQ(cache.length(), 23);
}

TEST_P(Consistency, BatchOfDifferentLengthsEqualsEachAlone) {
  std::mt19937_64 rng(test::fresh_seed());
  test::Loaded m(test::kFixtures / GetParam());
  const auto& cfg = m.weights.config;
  const int64_t V = cfg.vocab_size;
  const std::vector<int> lengths = {1, 17, 5, 30};
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<float>> alone;
  for (int n : lengths) {
    prompts.push_back(random_ids(rng, n, int(V)));
    alone.push_back(m.prefill(prompts.back()));
  }
  // Step 1: all prompts as one prefill batch (all-token logits).
  std::vector<KvCache> caches;
  for (int n : lengths) caches.emplace_back(cfg, n + 2);
  std::vector<SequenceInput> batch;
  for (size_t s = 0; s < prompts.size(); ++s) batch.push_back({&caches[s], prompts[s]});
  std::vector<float> logits(size_t(53 * V));
  m.model->forward(batch, LogitsFor::AllTokens, logits.data());
  size_t row = 0;
  for (size_t s = 0; s < prompts.size(); ++s) {
    EXPECT_LE(test::rel_err(logits.data() + row * V, alone[s].data(), alone[s].size()), kTolerance) << "sequence " << s;
    row += prompts[s].size();
  }
  // Step 2: one decode token for every sequence in one batch, against each sequence extended alone.
  std::vector<int32_t> next = random_ids(rng, 4, int(V));
  batch.clear();
  for (size_t s = 0; s < prompts.size(); ++s) batch.push_back({&caches[s], {&next[s], 1}});
  m.model->forward(batch, LogitsFor::LastToken, logits.data());
  for (size_t s = 0; s < prompts.size(); ++s) {
    auto extended = prompts[s];
    extended.push_back(next[s]);
    auto want = m.prefill(extended);
    EXPECT_LE(test::rel_err(logits.data() + s * V, want.data() + (extended.size() - 1) * V, size_t(V)), kTolerance)
        << "sequence " << s;
  }
}

TEST_P(Consistency, GenericAndSimdPathsAgree) {
  std::mt19937_64 rng(test::fresh_seed());
  test::Loaded simd(test::kFixtures / GetParam(), LinearPath::Auto);
  test::Loaded generic(test::kFixtures / GetParam(), LinearPath::Generic);
  auto ids = random_ids(rng, 12, simd.weights.config.vocab_size);
  auto a = simd.prefill(ids), b = generic.prefill(ids);
  EXPECT_LE(test::rel_err(a.data(), b.data(), a.size()), kTolerance);
}

TEST(Model, RejectsBadInputsWithoutTouchingTheCache) {
  test::Loaded m(test::kFixtures / "tiny-bf16");
  KvCache cache(m.weights.config, 4);
  std::vector<float> logits(size_t(8 * m.weights.config.vocab_size));
  std::vector<int32_t> bad = {3, 320};
  SequenceInput in{&cache, bad};
  EXPECT_THROW(m.model->forward({&in, 1}, LogitsFor::AllTokens, logits.data()), InvalidArgument);
  std::vector<int32_t> too_long = {1, 2, 3, 4, 5};
  in = {&cache, too_long};
  EXPECT_THROW(m.model->forward({&in, 1}, LogitsFor::AllTokens, logits.data()), InvalidArgument);
  in = {&cache, {}};
  EXPECT_THROW(m.model->forward({&in, 1}, LogitsFor::AllTokens, logits.data()), InvalidArgument);
  EXPECT_EQ(cache.length(), 0);
  std::vector<int32_t> ok = {3, 4};
  in = {&cache, ok};
  m.model->forward({&in, 1}, LogitsFor::AllTokens, logits.data());
  EXPECT_EQ(cache.length(), 2);
}

INSTANTIATE_TEST_SUITE_P(Formats, Consistency,
                         ::testing::Values("small-bf16", "small-fp8", "small-nvfp4-modelopt", "small-nvfp4-ct",
                                           "small-mxfp4-ct"),
                         test::ParamName());

}  // namespace
}  // namespace m2
