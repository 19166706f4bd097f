// Corrupted checkpoints: every failure is a typed error naming the file/tensor/field, never a crash.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include "core/error.h"
#include "model/weights.h"
#include "model/editable_checkpoint.h"
#include "test_util.h"

namespace m2 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::EditableCheckpoint;

void expect_contains(const std::string& msg, std::initializer_list<const char*> parts) {
  for (const char* p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

TEST(BadCheckpoint, MissingTensor) {
  EditableCheckpoint c("tiny-nvfp4-modelopt");
  c.tensors.erase("model.layers.1.block_sparse_moe.experts.3.w2.weight_scale");
  expect_contains(c.load_error(), {"missing tensor 'model.layers.1.block_sparse_moe.experts.3.w2.weight_scale'",
                                   "F8_E4M3", "[64, 2]"});
}

TEST(BadCheckpoint, WrongShape) {
  EditableCheckpoint c("tiny-bf16");
  c.replace("model.layers.0.self_attn.k_proj.weight", DType::BF16, {16, 64});
  expect_contains(c.load_error(), {"'model.layers.0.self_attn.k_proj.weight'", "expects BF16|F16|F32 [32, 64]",
                                   "found BF16 [16, 64]"});
}

TEST(BadCheckpoint, WrongDtype) {
  EditableCheckpoint c("tiny-mxfp4-ct");
  c.replace("model.layers.0.block_sparse_moe.experts.0.w1.weight_scale", DType::F8_E4M3, {32, 2});
  expect_contains(c.load_error(), {"weight_scale'", "expects U8 [32, 2]", "found F8_E4M3 [32, 2]"});
  EditableCheckpoint d("tiny-bf16");
  d.replace("model.norm.weight", DType::I32, {64});
  expect_contains(d.load_error(), {"'model.norm.weight'", "found I32 [64]"});
}

TEST(BadCheckpoint, DeclaredFormatDiffersFromStoredTensors) {
  EditableCheckpoint c("tiny-nvfp4-modelopt");
  // Attention is stored BF16; a config that no longer excludes it declares NVFP4.
  c.edit_config([](json& j) { j["quantization_config"]["ignore"] = {"lm_head", "*block_sparse_moe.gate"}; });
  fs::remove(c.dir.path / "hf_quant_config.json");
  expect_contains(c.load_error(), {"model.layers.0.self_attn.q_proj", "declares nvfp4 (modelopt)", "stores dense"});
}

TEST(BadCheckpoint, NonFiniteOrNonPositiveScales) {
  EditableCheckpoint c("tiny-nvfp4-ct");
  float neg = -1.0f;
  c.storage.emplace_back(reinterpret_cast<uint8_t*>(&neg), reinterpret_cast<uint8_t*>(&neg) + 4);
  c.tensors["model.layers.0.self_attn.q_proj.weight_global_scale"] = {
      "model.layers.0.self_attn.q_proj.weight_global_scale", DType::F32, {1}, c.storage.back()};
  expect_contains(c.load_error(), {"weight_global_scale", "positive"});
}

TEST(BadCheckpoint, TruncatedAndGarbageFiles) {
  EditableCheckpoint c("tiny-fp8");
  c.load_error();  // writes a valid copy
  const fs::path p = c.dir.path / "model.safetensors";
  for (double frac : {0.0, 0.001, 0.5, 0.999}) {
    fs::copy_file(test::kFixtures / "tiny-fp8" / "model.safetensors", p, fs::copy_options::overwrite_existing);
    const auto size = fs::file_size(p);
    fs::resize_file(p, uintmax_t(double(size) * frac));
    try {
      ModelWeights::load(c.dir.path);
      FAIL() << "truncated to " << frac;
    } catch (const FormatError& e) {
      expect_contains(e.what(), {"model.safetensors"});
    }
  }
  std::ofstream(p, std::ios::trunc) << "\x10\0\0\0\0\0\0\0{{{{{{{{{{{{{{{{";
  EXPECT_THROW(ModelWeights::load(c.dir.path), FormatError);
}

TEST(BadCheckpoint, ConfigProblems) {
  {
    EditableCheckpoint c("tiny-bf16");
    std::ofstream(c.dir.path / "config.json", std::ios::trunc) << "{\"vocab_size\": ";
    expect_contains(c.load_error(), {"config.json", "malformed JSON"});
  }
  {
    EditableCheckpoint c("tiny-bf16");
    c.edit_config([](json& j) { j["quantization_config"] = {{"quant_method", "awq"}}; });
    expect_contains(c.load_error(), {"quant_method = 'awq' is not supported"});
  }
  {
    EditableCheckpoint c("tiny-bf16");
    c.edit_config([](json& j) { j["num_hidden_layers"] = 3; });
    expect_contains(c.load_error(), {"missing tensor 'model.layers.2.input_layernorm.weight'"});
  }
  {
    EditableCheckpoint c("tiny-bf16");
    fs::remove(c.dir.path / "config.json");
    expect_contains(c.load_error(), {"config.json: cannot read"});
  }
}

TEST(BadCheckpoint, MtpAndUnknownTensorsAreReportedNotFatal) {
  EditableCheckpoint c("tiny-bf16");
  c.replace("model.layers.2.self_attn.q_proj.weight", DType::BF16, {64, 64});  // an MTP layer
  c.replace("model.extra.thing", DType::F32, {3});
  EXPECT_EQ(c.load_error(), "no error");
  auto m = ModelWeights::load(c.dir.path);
  std::string all;
  for (const auto& n : m.notices) all += n + "\n";
  expect_contains(all, {"ignored 1 tensors of MTP layers", "ignored 1 unrecognised tensors: model.extra.thing"});
}

}  // namespace
}  // namespace m2
