// The cache and batching must not change results: decode == prefill, batch == alone, path == path.
#include <gtest/gtest.h>

#include <map>

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
  test::KvSeq seq;
  auto logits = m.step(seq, std::span<const int32_t>(ids.data(), 9), LogitsFor::All);
  EXPECT_LE(test::rel_err(logits.data(), full.data(), size_t(9 * V)), kTolerance);
  for (int t = 9; t < 23; ++t) {
    logits = m.step(seq, std::span<const int32_t>(ids.data() + t, 1), LogitsFor::Last);
    EXPECT_LE(test::rel_err(logits.data(), full.data() + t * V, size_t(V)), kTolerance) << "position " << t;
  }
  EXPECT_EQ(seq.length, 23);
}

// Chunked prefill (chunks of 1, 7 and 64 tokens, and block sizes that the chunks do not divide) gives
// the logits of one prefill.
TEST_P(Consistency, ChunkedPrefillEqualsOnePrefill) {
  std::mt19937_64 rng(test::fresh_seed());
  for (int block_size : {5, 16}) {
    test::LoadOptions o;
    o.block_size = block_size;
    o.num_blocks = 1024 / block_size;
    test::Loaded m(test::kFixtures / GetParam(), o);
    const int64_t V = m.weights.config.vocab_size;
    auto ids = random_ids(rng, 150, int(V));
    auto full = m.prefill(ids);
    for (int chunk : {1, 7, 64}) {
      test::KvSeq seq;
      std::vector<float> all;
      for (size_t at = 0; at < ids.size(); at += size_t(chunk)) {
        const size_t n = std::min(size_t(chunk), ids.size() - at);
        auto l = m.step(seq, std::span<const int32_t>(ids.data() + at, n), LogitsFor::All);
        all.insert(all.end(), l.begin(), l.end());
      }
      m.release(seq);
      ASSERT_EQ(all.size(), full.size());
      EXPECT_LE(test::rel_err(all.data(), full.data(), all.size()), kTolerance) << "chunk " << chunk << ", block " << block_size;
      EXPECT_LE(test::rel_err(all.data() + (ids.size() - 1) * V, full.data() + (ids.size() - 1) * V, size_t(V)), kTolerance)
          << "last token, chunk " << chunk;
    }
    EXPECT_EQ(m.kv->blocks().num_used(), 0);
  }
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
  std::vector<test::KvSeq> seqs(prompts.size());
  std::vector<std::pair<test::KvSeq*, std::span<const int32_t>>> batch;
  for (size_t s = 0; s < prompts.size(); ++s) batch.push_back({&seqs[s], prompts[s]});
  auto logits = m.step(batch, LogitsFor::All);
  size_t row = 0;
  for (size_t s = 0; s < prompts.size(); ++s) {
    EXPECT_LE(test::rel_err(logits.data() + row * V, alone[s].data(), alone[s].size()), kTolerance) << "sequence " << s;
    row += prompts[s].size();
  }
  // Step 2: one decode token for every sequence in one batch, against each sequence extended alone.
  std::vector<int32_t> next = random_ids(rng, 4, int(V));
  batch.clear();
  for (size_t s = 0; s < prompts.size(); ++s) batch.push_back({&seqs[s], std::span<const int32_t>(&next[s], 1)});
  logits = m.step(batch, LogitsFor::Last);
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
  test::Loaded simd(test::kFixtures / GetParam());
  test::LoadOptions generic_path;
  generic_path.path = LinearPath::Generic;
  test::Loaded generic(test::kFixtures / GetParam(), generic_path);
  auto ids = random_ids(rng, 12, simd.weights.config.vocab_size);
  auto a = simd.prefill(ids), b = generic.prefill(ids);
  EXPECT_LE(test::rel_err(a.data(), b.data(), a.size()), kTolerance);
}

// Layer-at-a-time execution (what calibration and streaming evaluation use) on hidden states the
// caller keeps, each layer given a one-layer view of the cache, gives forward()'s logits; the
// activation hook sees every site of every layer.
TEST_P(Consistency, LayerAtATimeEqualsForward) {
  std::mt19937_64 rng(test::fresh_seed());
  test::Loaded m(test::kFixtures / GetParam());
  const auto& c = m.weights.config;
  const int64_t V = c.vocab_size, T = 37;
  auto ids = random_ids(rng, int(T), int(V));
  auto want = m.prefill(ids);

  test::KvSeq seq;
  ASSERT_TRUE(m.kv->blocks().allocate((T + 15) / 16, seq.blocks));
  std::vector<int32_t> positions(static_cast<size_t>(T));
  std::vector<int64_t> slots(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) {
    positions[size_t(i)] = int32_t(i);
    slots[size_t(i)] = int64_t(seq.blocks[size_t(i / 16)]) * 16 + i % 16;
  }
  std::vector<SequenceStep> steps = {{T, T, seq.blocks, LogitsFor::All}};
  ForwardBatch fb{ids, positions, slots, steps};
  const PagedKv full = m.kv->view();
  std::map<std::pair<int, int>, int> seen;
  m.model->activation_hook = [&](int layer, Model::Site site, const TensorView& x, const TensorView&) {
    ++seen[{layer, int(site)}];
    EXPECT_EQ(x.dtype, DType::F32);
  };
  m.model->stage(fb, full);
  std::vector<float> h(size_t(T * c.hidden_size));  // [T, hidden]
  const TensorView hv(h.data(), DType::F32, {T, c.hidden_size});
  m.model->embed(hv);
  for (int l = 0; l < c.num_layers; ++l) {
    PagedKv one = full;
    one.layers = {full.layers[size_t(l)]};
    m.model->layer(l, one, 0, hv);
  }
  std::vector<float> got(size_t(T * V));
  m.model->logits(hv, got.data());
  m.model->activation_hook = nullptr;
  EXPECT_LE(test::rel_err(got.data(), want.data(), got.size()), kTolerance);
  for (int l = 0; l < c.num_layers; ++l)
    for (int site = 0; site <= int(Model::Site::Value); ++site) EXPECT_EQ((seen[{l, site}]), 1) << l << " " << site;
  EXPECT_THROW(m.model->layer(c.num_layers, full, 0, hv), InvalidArgument);
  PagedKv none = full;
  none.layers.clear();
  EXPECT_THROW(m.model->layer(0, none, 0, hv), InvalidArgument);
  m.release(seq);
}

TEST(Model, RejectsBadBatchesWithoutTouchingTheCache) {
  test::Loaded m(test::kFixtures / "tiny-bf16");
  const int64_t V = m.weights.config.vocab_size;
  test::KvSeq seq;
  std::vector<int32_t> bad = {3, 320};
  EXPECT_THROW(m.step(seq, bad, LogitsFor::All), InvalidArgument);
  std::vector<int32_t> ok = {3, 4};
  ASSERT_TRUE(m.kv->blocks().allocate(1, seq.blocks));
  // Hand-made batches: every inconsistency is refused before anything runs.
  std::vector<float> logits(size_t(4 * V));
  auto run = [&](std::vector<int32_t> tokens, std::vector<int32_t> positions, std::vector<int64_t> slots,
                 std::vector<SequenceStep> steps) {
    ForwardBatch fb{tokens, positions, slots, steps};
    m.model->forward(fb, m.kv->view(), logits.data());
  };
  const int64_t b0 = seq.blocks[0] * 16;
  std::vector<int32_t> far = {int32_t(m.kv->view().num_blocks)};
  EXPECT_THROW(run(ok, {0, 1}, {b0, b0 + 1}, {{2, 2, far, LogitsFor::Last}}), InvalidArgument);     // block outside the cache
  EXPECT_THROW(run(ok, {0, 1}, {b0, b0 + 2}, {{2, 2, seq.blocks, LogitsFor::Last}}), InvalidArgument);  // slot not its own
  EXPECT_THROW(run(ok, {0, 2}, {b0, b0 + 1}, {{2, 2, seq.blocks, LogitsFor::Last}}), InvalidArgument);  // position gap
  EXPECT_THROW(run(ok, {0, 1}, {b0, b0 + 1}, {{3, 3, seq.blocks, LogitsFor::Last}}), InvalidArgument);  // token count
  EXPECT_THROW(run(ok, {0, 1}, {b0, b0 + 1}, {{2, 1, seq.blocks, LogitsFor::Last}}), InvalidArgument);  // context < tokens
  EXPECT_THROW(run({}, {}, {}, {}), InvalidArgument);                                                    // empty
  std::vector<int32_t> long_ids(1101, 1);
  EXPECT_THROW(m.step(seq, long_ids, LogitsFor::Last), InvalidArgument);  // beyond the step limit
  run(ok, {0, 1}, {b0, b0 + 1}, {{2, 2, seq.blocks, LogitsFor::All}});
  auto want = m.prefill(ok);
  EXPECT_LE(test::rel_err(logits.data(), want.data(), size_t(2 * V)), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(Formats, Consistency,
                         ::testing::Values("small-bf16", "small-fp8", "small-nvfp4-modelopt", "small-nvfp4-ct",
                                           "small-mxfp4-ct"),
                         test::ParamName());

}  // namespace
}  // namespace m2
