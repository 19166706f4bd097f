// The layout of a distributed job, checked without launching one: which rank holds what, and the
// mis-sharded configurations refused before any weight is loaded, naming the value.
#include <gtest/gtest.h>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "dist/layout.h"
#include "model/model.h"
#include "test_util.h"

namespace m2::test {
namespace {

ModelConfig m2_like() {
  ModelConfig c;
  c.num_layers = 62;
  c.num_heads = 48;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.hidden_size = 3072;
  c.intermediate_size = 1536;
  c.num_experts = 256;
  return c;
}

ParallelOptions opts(int tp, int pp, bool ep = false, std::vector<int> layers = {}) {
  ParallelOptions o;
  o.tensor_parallel = tp;
  o.pipeline_parallel = pp;
  o.expert_parallel = ep;
  o.pipeline_layers = std::move(layers);
  return o;
}

std::string refusal(const ModelConfig& c, const ParallelOptions& o, int world) {
  try {
    shard_for_rank(c, o, 0, world);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

TEST(Layout, RanksAreStagesTimesTensorRanks) {
  const ModelConfig c = m2_like();
  const ParallelOptions o = opts(2, 2, false, {20, 42});
  const ShardSpec s3 = shard_for_rank(c, o, 3, 4);
  EXPECT_EQ(s3.tp_rank, 1);
  EXPECT_EQ(s3.pp_rank, 1);
  EXPECT_EQ(s3.layer_begin, 20);
  EXPECT_EQ(s3.layer_end, 62);
  const ShardDims d = shard_dims(c, s3);
  EXPECT_EQ(d.heads, 24);
  EXPECT_EQ(d.kv_heads, 4);
  EXPECT_EQ(d.kv_head_begin, 4);
  EXPECT_EQ(d.intermediate, 768);
  EXPECT_EQ(d.local_experts(), 256);
  const ShardSpec s0 = shard_for_rank(c, o, 0, 4);
  EXPECT_EQ(s0.layer_begin, 0);
  EXPECT_EQ(s0.layer_end, 20);
  // Even split by default, the remainder to the first stages.
  const ShardSpec even = shard_for_rank(c, opts(1, 4), 1, 4);
  EXPECT_EQ(even.layer_begin, 16);
  EXPECT_EQ(even.layer_end, 32);
}

TEST(Layout, KvHeadsAreReplicatedBeyondTheirCount) {
  const ModelConfig c = m2_like();
  for (int r = 0; r < 16; ++r) {
    const ShardDims d = shard_dims(c, shard_for_rank(c, opts(16, 1), r, 16));
    EXPECT_EQ(d.heads, 3);
    EXPECT_EQ(d.kv_heads, 1);
    EXPECT_EQ(d.kv_replicas, 2);
    // The rank's q heads [3r, 3r + 3) all read kv head (3r) / 6.
    EXPECT_EQ(d.kv_head_begin, 3 * r / 6);
    EXPECT_EQ(d.kv_head_begin, (3 * r + 2) / 6);
  }
}

TEST(Layout, ExpertParallelGivesWholeExperts) {
  const ModelConfig c = m2_like();
  const ShardDims d = shard_dims(c, shard_for_rank(c, opts(4, 1, true), 2, 4));
  EXPECT_EQ(d.expert_begin, 128);
  EXPECT_EQ(d.expert_end, 192);
  EXPECT_EQ(d.intermediate, 1536);
  EXPECT_EQ(d.heads, 12);
}

TEST(Layout, LmHeadIsSplitByVocabularyRowsOn128RowBoundaries) {
  ModelConfig c = m2_like();
  c.vocab_size = 200064;
  for (int r = 0; r < 2; ++r) {
    const ShardDims d = shard_dims(c, shard_for_rank(c, opts(2, 1), r, 2));
    EXPECT_EQ(d.vocab_begin, r == 0 ? 0 : 100096);  // 100032 rounded up to a multiple of 128
    EXPECT_EQ(d.vocab_end, r == 0 ? 100096 : 200064);
  }
  // 320 rows over 4 ranks would leave a rank none on 128-row boundaries: replicated.
  c.vocab_size = 320;
  const ShardDims d = shard_dims(c, shard_for_rank(c, opts(4, 1), 2, 4));
  EXPECT_EQ(d.vocab_begin, 0);
  EXPECT_EQ(d.vocab_end, 320);
}

TEST(Layout, MisShardedConfigurationsAreRefusedNamingTheValue) {
  const ModelConfig c = m2_like();
  EXPECT_NE(refusal(c, opts(2, 1), 3).find("has 3 processes but --tensor-parallel-size 2"), std::string::npos);
  EXPECT_NE(refusal(c, opts(5, 1), 5).find("--tensor-parallel-size 5 does not divide the model's 48 attention heads"),
            std::string::npos);
  EXPECT_NE(refusal(c, opts(12, 1), 12).find("12 neither divides the model's 8 KV heads"), std::string::npos);
  EXPECT_NE(refusal(c, opts(1, 2, false, {20, 40}), 2).find("sum to 60 layers; the model has 62"), std::string::npos);
  EXPECT_NE(refusal(c, opts(1, 2, false, {62}), 2).find("lists 1 stages but --pipeline-parallel-size is 2"),
            std::string::npos);
  ModelConfig odd = c;
  odd.num_experts = 6;
  EXPECT_NE(refusal(odd, opts(4, 1, true), 4).find("expert-parallel size 4 does not divide the model's 6 experts"),
            std::string::npos);
  odd = c;
  odd.intermediate_size = 1000;
  EXPECT_NE(refusal(odd, opts(16, 1), 16).find("does not divide the experts' intermediate size 1000"),
            std::string::npos);
  EXPECT_NE(refusal(c, opts(1, 63), 63).find("--pipeline-parallel-size 63 exceeds the model's 62 layers"),
            std::string::npos);
}

TEST(Layout, PipelineLayersParse) {
  EXPECT_EQ(parse_pipeline_layers("20,42"), (std::vector<int>{20, 42}));
  for (const char* bad : {"", "20,", "a,3", "0,62", "-1", "20;42"})
    EXPECT_THROW(parse_pipeline_layers(bad), InvalidArgument) << bad;
}

// Pure TP8 of the 1536-wide experts in block FP8 cuts the 128-column blocks of w2 (192 columns
// per rank): the split is refused naming the tensor and the block.
TEST(Layout, SplitsThatCutScaleBlocksAreRefusedNamingTheTensor) {
  std::vector<uint8_t> bytes(size_t(3072) * 1536), scales(size_t(24) * 12 * 4);
  WeightView w2;
  w2.name = "model.layers.0.block_sparse_moe.experts.0.w2";
  w2.format = WeightFormat::Fp8Block;
  w2.dtype = DType::F8_E4M3;
  w2.rows = 3072;
  w2.cols = 1536;
  w2.data = bytes.data();
  w2.row_bytes = 1536;
  w2.scales = scales.data();
  w2.scale_stride = 12;
  w2.block_rows = w2.block_cols = 128;
  try {
    slice_cols(w2, 192, 192);
    FAIL() << "a 192-column split of 128-column blocks was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("experts.0.w2: a split at columns [192, 384) cuts its 128-column"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(slice_cols(w2, 768, 768).cols, 768);  // TP 2: 6 blocks each
}

TEST(Layout, AShardWithoutCollectivesIsRefused) {
  ShardSpec s;
  s.tp_size = 2;
  CpuBackend backend(1);
  const ModelWeights w = ModelWeights::load(kDemo);
  try {
    Model m(w, backend, ModelLimits{}, 16, s, nullptr);
    FAIL() << "accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("needs the collectives of its ranks"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace m2::test
