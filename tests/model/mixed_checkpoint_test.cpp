// Mixed checkpoints: some modules excluded from quantization and stored dense. Each test replaces
// quantized modules by their exact dequantisation (F32, exact for FP4 × scales) and excludes them in
// the config; the logits must still match the fixture's reference.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "model/editable_checkpoint.h"
#include "model/model_fixture.h"

namespace m2 {
namespace {

// Replaces module `m` (bound from the original fixture) by a dense F32 `m.weight`.
void dequantize_module(test::EditableCheckpoint& c, const ModelWeights& original, const WeightView& w) {
  for (const char* s : {".weight", ".weight_packed", ".weight_scale", ".weight_scale_2", ".weight_global_scale",
                        ".input_scale", ".input_global_scale"})
    c.tensors.erase(w.name + s);
  std::vector<uint8_t> bytes(size_t(w.rows * w.cols * 4));
  for (int64_t r = 0; r < w.rows; ++r) dequant_row_ref(w, r, reinterpret_cast<float*>(bytes.data()) + r * w.cols);
  c.add(w.name + ".weight", DType::F32, {w.rows, w.cols}, std::move(bytes));
}

double max_logit_error(const std::filesystem::path& dir, const std::filesystem::path& ref_dir) {
  test::Loaded m(dir);
  SafetensorsFile ref(ref_dir / "reference.safetensors");
  auto ids = test::as_ids(ref.tensors().at("ref.seq2.input_ids"));
  auto want = test::as_floats(ref.tensors().at("ref.seq2.logits"));
  auto got = m.prefill(ids);
  return test::rel_err(got.data(), want.data(), got.size());
}

TEST(MixedCheckpoint, ModelOptWithOneLayersExpertsExcluded) {
  const auto src = test::kFixtures / "tiny-nvfp4-modelopt";
  auto original = ModelWeights::load(src);
  test::EditableCheckpoint c("tiny-nvfp4-modelopt");
  const auto& L = original.layers[1];
  for (size_t e = 0; e < L.w1.size(); ++e)
    for (const auto* w : {&L.w1[e], &L.w2[e], &L.w3[e]}) dequantize_module(c, original, *w);
  const std::string pattern = "model.layers.1.block_sparse_moe.experts*";
  c.edit_config([&](test::json& j) { j["quantization_config"]["ignore"].push_back(pattern); });
  c.edit_json("hf_quant_config.json", [&](test::json& j) { j["quantization"]["exclude_modules"].push_back(pattern); });
  c.write();
  auto m = ModelWeights::load(c.dir.path);
  EXPECT_EQ(m.layers[0].w1[0].format, WeightFormat::Nvfp4);
  EXPECT_EQ(m.layers[1].w1[0].format, WeightFormat::Dense);
  EXPECT_EQ(m.scheme.exclusion_reason("model.layers.1.block_sparse_moe.experts.5.w2"), "excluded by '" + pattern + "'");
  EXPECT_LE(max_logit_error(c.dir.path, src), 1e-3);
}

TEST(MixedCheckpoint, CompressedTensorsWithOneLayersAttentionIgnored) {
  const auto src = test::kFixtures / "tiny-nvfp4-ct";
  auto original = ModelWeights::load(src);
  test::EditableCheckpoint c("tiny-nvfp4-ct");
  const auto& L = original.layers[0];
  for (const auto* w : {&L.q, &L.k, &L.v, &L.o}) dequantize_module(c, original, *w);
  c.edit_config([&](test::json& j) { j["quantization_config"]["ignore"].push_back("re:model\\.layers\\.0\\.self_attn\\..*"); });
  c.write();
  auto m = ModelWeights::load(c.dir.path);
  EXPECT_EQ(m.layers[0].q.format, WeightFormat::Dense);
  EXPECT_EQ(m.layers[1].q.format, WeightFormat::Nvfp4);
  EXPECT_LE(max_logit_error(c.dir.path, src), 1e-3);
}

TEST(MixedCheckpoint, TwoCompressedTensorsGroups) {
  // Two config groups, attention (NVFP4) and experts (MXFP4), with the experts then ignored and
  // stored as exact F32 copies: group targets, group order and `ignore` must all be honoured for the
  // reference to hold.
  const auto src = test::kFixtures / "tiny-nvfp4-ct";
  auto original = ModelWeights::load(src);
  test::EditableCheckpoint c("tiny-nvfp4-ct");
  for (const auto& L : original.layers)
    for (size_t e = 0; e < L.w1.size(); ++e)
      for (const auto* w : {&L.w1[e], &L.w2[e], &L.w3[e]}) dequantize_module(c, original, *w);
  c.edit_config([&](test::json& j) {
    auto& qc = j["quantization_config"];
    qc["config_groups"]["group_0"]["targets"] = {"re:.*self_attn.*"};
    qc["config_groups"]["group_1"] = {{"targets", {"re:.*block_sparse_moe.experts.*"}},
                                      {"format", "mxfp4-pack-quantized"},
                                      {"weights", {{"group_size", 32}}}};
    qc["ignore"].push_back("re:.*experts.*");
  });
  c.write();
  auto m = ModelWeights::load(c.dir.path);
  EXPECT_EQ(m.layers[0].q.format, WeightFormat::Nvfp4);
  EXPECT_EQ(m.layers[0].w1[0].format, WeightFormat::Dense);
  EXPECT_LE(max_logit_error(c.dir.path, src), 1e-3);
}

}  // namespace
}  // namespace m2

namespace m2 {
namespace {

// The same BF16 fixture stored as F16 and as F32: dense weights in every float dtype load and match.
class DenseDtypes : public ::testing::TestWithParam<DType> {};

TEST_P(DenseDtypes, ConvertedCheckpointMatchesReference) {
  const auto src = test::kFixtures / "tiny-bf16";
  test::EditableCheckpoint c("tiny-bf16");
  const DType to = GetParam();
  for (auto& [name, t] : c.tensors) {
    if (t.dtype != DType::BF16) continue;
    const size_t n = t.bytes.size() / 2;
    std::vector<uint8_t> out(n * dtype_size(to));
    for (size_t i = 0; i < n; ++i) {
      uint16_t b;
      std::memcpy(&b, t.bytes.data() + 2 * i, 2);
      float f = bf16_to_f32(b);
      if (to == DType::F32) std::memcpy(out.data() + 4 * i, &f, 4);
      else {
        uint16_t h = f32_to_f16(f);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
    }
    c.storage.push_back(std::move(out));
    t = {name, to, t.shape, c.storage.back()};
  }
  c.write();
  auto m = ModelWeights::load(c.dir.path);
  EXPECT_EQ(m.layers[0].q.dtype, to);
  EXPECT_LE(max_logit_error(c.dir.path, src), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, DenseDtypes, ::testing::Values(DType::F16, DType::F32),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace m2
