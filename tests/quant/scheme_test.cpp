#include <gtest/gtest.h>

#include "core/error.h"
#include "io/config.h"
#include "quant/scheme.h"
#include "test_util.h"

namespace m2 {
namespace {

using nlohmann::json;

QuantScheme scheme_of(const std::string& fixture) {
  auto dir = test::kFixtures / fixture;
  return QuantScheme::detect(dir, read_json_file(dir / "config.json"));
}

TEST(QuantScheme, DetectsEachFixtureFormat) {
  const std::string q = "model.layers.0.self_attn.q_proj", w1 = "model.layers.1.block_sparse_moe.experts.3.w1",
                    gate = "model.layers.0.block_sparse_moe.gate";
  auto bf16 = scheme_of("tiny-bf16");
  EXPECT_EQ(bf16.layout_for(w1), StoredLayout::Dense);
  auto fp8 = scheme_of("tiny-fp8");
  EXPECT_EQ(fp8.layout_for(q), StoredLayout::Fp8Block);
  EXPECT_EQ(fp8.layout_for(w1), StoredLayout::Fp8Block);
  EXPECT_EQ(fp8.layout_for(gate), StoredLayout::Dense);
  EXPECT_EQ(fp8.layout_for("lm_head"), StoredLayout::Dense);
  EXPECT_EQ(fp8.fp8_block(), (std::pair<int, int>{128, 128}));
  auto mo = scheme_of("tiny-nvfp4-modelopt");
  EXPECT_EQ(mo.layout_for(w1), StoredLayout::Nvfp4ModelOpt);
  EXPECT_EQ(mo.layout_for(q), StoredLayout::Dense);
  EXPECT_EQ(mo.exclusion_reason(q), "excluded by '*self_attn*'");
  EXPECT_EQ(mo.layout_for(gate), StoredLayout::Dense);
  EXPECT_TRUE(mo.kv_cache_fp8());
  auto ct = scheme_of("tiny-nvfp4-ct");
  EXPECT_EQ(ct.layout_for(q), StoredLayout::Nvfp4Ct);
  EXPECT_EQ(ct.layout_for(w1), StoredLayout::Nvfp4Ct);
  EXPECT_EQ(ct.layout_for(gate), StoredLayout::Dense);
  EXPECT_EQ(ct.layout_for("lm_head"), StoredLayout::Dense);
  auto mx = scheme_of("tiny-mxfp4-ct");
  EXPECT_EQ(mx.layout_for(w1), StoredLayout::Mxfp4Ct);
  EXPECT_EQ(mx.layout_for(q), StoredLayout::Dense);
  EXPECT_EQ(mx.layout_for(gate), StoredLayout::Dense);
}

TEST(QuantScheme, ModelOptGlobsAndParentPrefixes) {
  test::TempDir dir;
  json cfg = {{"quantization_config",
               {{"quant_method", "modelopt"},
                {"quant_algo", "NVFP4"},
                {"ignore", {"lm_head", "model.layers.1", "*experts.1?.w2", "model.layers.0.self_attn.?_proj"}}}}};
  auto s = QuantScheme::detect(dir.path, cfg);
  EXPECT_EQ(s.layout_for("model.layers.1.block_sparse_moe.experts.0.w1"), StoredLayout::Dense);  // parent module
  EXPECT_EQ(s.layout_for("model.layers.10.block_sparse_moe.experts.0.w1"), StoredLayout::Nvfp4ModelOpt);
  EXPECT_EQ(s.layout_for("model.layers.2.block_sparse_moe.experts.12.w2"), StoredLayout::Dense);
  EXPECT_EQ(s.layout_for("model.layers.2.block_sparse_moe.experts.2.w2"), StoredLayout::Nvfp4ModelOpt);
  EXPECT_EQ(s.layout_for("model.layers.0.self_attn.k_proj"), StoredLayout::Dense);
  EXPECT_EQ(s.layout_for("model.layers.0.self_attn.o_proj"), StoredLayout::Dense);
}

TEST(QuantScheme, CompressedTensorsRegexAndExactNames) {
  test::TempDir dir;
  json group = {{"targets", {"Linear"}}, {"format", "nvfp4-pack-quantized"}, {"weights", {{"group_size", 16}}}};
  json cfg = {{"quantization_config",
               {{"quant_method", "compressed-tensors"},
                {"config_groups", {{"group_0", group}}},
                {"ignore", {"lm_head", "re:.*block_sparse_moe.gate$", "model.layers.3.self_attn.o_proj"}}}}};
  auto s = QuantScheme::detect(dir.path, cfg);
  EXPECT_EQ(s.layout_for("model.layers.0.block_sparse_moe.gate"), StoredLayout::Dense);
  EXPECT_EQ(s.layout_for("model.layers.3.self_attn.o_proj"), StoredLayout::Dense);
  EXPECT_EQ(s.layout_for("model.layers.13.self_attn.o_proj"), StoredLayout::Nvfp4Ct);
  EXPECT_EQ(s.layout_for("model.layers.0.block_sparse_moe.experts.0.w1"), StoredLayout::Nvfp4Ct);
}

TEST(QuantScheme, UnknownMethodsAreRejectedByName) {
  test::TempDir dir;
  auto err = [&](const json& qc) {
    try {
      QuantScheme::detect(dir.path, json{{"quantization_config", qc}});
    } catch (const ModelError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err({{"quant_method", "gptq"}}).find("quant_method = 'gptq' is not supported"), std::string::npos);
  EXPECT_NE(err({{"quant_method", "modelopt"}, {"quant_algo", 5}}).find("unexpected quantization config structure"),
            std::string::npos);
  EXPECT_NE(err({{"quant_method", "modelopt"}, {"quant_algo", "W4A8_AWQ"}}).find("'W4A8_AWQ'"), std::string::npos);
  EXPECT_NE(err({{"quant_method", "compressed-tensors"},
                 {"config_groups", {{"g", {{"targets", {"Linear"}}, {"format", "pack-quantized"}}}}}})
                .find("format 'pack-quantized' is not supported"),
            std::string::npos);
  EXPECT_NE(err({{"quant_method", "fp8"}, {"weight_block_size", {128}}}).find("weight_block_size"), std::string::npos);
  EXPECT_NE(err({{"quant_method", "compressed-tensors"},
                 {"config_groups", {{"g", {{"targets", {"re:("}}, {"format", "nvfp4-pack-quantized"},
                                           {"weights", {{"group_size", 16}}}}}}}})
                .find("not a valid regular expression"),
            std::string::npos);
}

}  // namespace
}  // namespace m2
