#include <gtest/gtest.h>

#include <fstream>

#include "core/error.h"
#include "io/config.h"
#include "test_util.h"

namespace m2 {
namespace {

using nlohmann::json;

json official() { return read_json_file(test::kFixtures / "small-bf16" / "config.json"); }

std::string error_of(const json& j) {
  try {
    parse_model_config(j, "config.json");
  } catch (const ModelError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Config, OfficialFields) {
  ModelConfig c = parse_model_config(official(), "config.json");
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rotary_dim, 16);
  EXPECT_EQ(c.rope_theta, 5e6);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.experts_per_token, 2);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_TRUE(c.use_routing_bias);
}

TEST(Config, TransformersV5RopeParameters) {
  json j = official();
  j.erase("rotary_dim");
  j.erase("rope_theta");
  j.erase("partial_rotary_factor");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}, {"partial_rotary_factor", 0.25}};
  ModelConfig c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.rotary_dim, 8);
  EXPECT_EQ(c.rope_theta, 1e6);
}

TEST(Config, UnsupportedValuesNameFieldAndValue) {
  struct Case {
    const char* field;
    json value;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"scoring_func", "softmax", "'scoring_func' = 'softmax'"},
      {"hidden_act", "gelu", "'hidden_act' = 'gelu'"},
      {"qk_norm_type", "per_head", "'qk_norm_type' = 'per_head'"},
      {"use_qk_norm", false, "'use_qk_norm' = false"},
      {"shared_intermediate_size", 512, "'shared_intermediate_size' = 512"},
      {"attn_type_list", json::array({1, 0}), "'attn_type_list[1]' = 0"},
      {"model_type", "llama", "model_type 'llama'"},
      {"hidden_size", "big", "'hidden_size' must be an integer"},
      {"num_experts_per_tok", 99, "'num_experts_per_tok' = 99 is out of range (must be in [1, 8])"},
      {"rotary_dim", 33, "'rotary_dim' = 33 is out of range (must be in [1, 32])"},
      {"rope_scaling", json{{"rope_type", "yarn"}}, "'rope_scaling'"},
      {"sliding_window", 4096, "'sliding_window'"},
  };
  for (const auto& c : cases) {
    json j = official();
    j[c.field] = c.value;
    if (std::string(c.field) == "model_type") j.erase("architectures");
    std::string msg = error_of(j);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.field << " → " << msg;
  }
  json j = official();
  j.erase("vocab_size");
  EXPECT_NE(error_of(j).find("missing required field 'vocab_size'"), std::string::npos);
}

TEST(Config, MtpModulesAreIgnoredWithANotice) {
  json j = official();
  j["num_mtp_modules"] = 3;
  j["use_mtp"] = true;
  ModelConfig c = parse_model_config(j, "config.json");
  ASSERT_EQ(c.notices.size(), 1u);
  EXPECT_NE(c.notices[0].find("MTP"), std::string::npos);
}

TEST(Config, MalformedJsonFileNamesTheFile) {
  test::TempDir dir;
  std::ofstream(dir.path / "config.json") << "{\"vocab_size\": 3,";
  try {
    load_model_config(dir.path);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("config.json: malformed JSON"), std::string::npos) << e.what();
  }
}

// Every integer field is range-checked before it is narrowed or multiplied: a huge value (one that
// narrows to 0 in int and used to divide by zero) or a negative one is an error naming the field.
TEST(Config, HugeAndNegativeIntegersAreRefusedByName) {
  for (const char* field : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                            "head_dim", "intermediate_size", "num_local_experts", "num_experts_per_tok",
                            "max_position_embeddings", "rotary_dim", "num_mtp_modules"}) {
    for (const json& v : {json(int64_t(1) << 40), json(uint64_t(1) << 63), json(int64_t(-3)), json(int64_t(1) << 32)}) {
      json j = official();
      j[field] = v;
      const std::string msg = error_of(j);
      EXPECT_NE(msg.find(std::string("'") + field + "' = " + v.dump() + " is out of range"), std::string::npos)
          << field << " = " << v.dump() << " → " << msg;
    }
  }
  for (const char* field : {"bos_token_id", "eos_token_id"}) {
    json j = official();
    j[field] = int64_t(1) << 33;
    EXPECT_NE(error_of(j).find("outside the vocabulary"), std::string::npos) << field;
  }
  json j = official();
  j["partial_rotary_factor"] = 1e300;
  j.erase("rotary_dim");
  j.erase("rope_parameters");
  EXPECT_NE(error_of(j).find("partial_rotary_factor"), std::string::npos) << error_of(j);
}

}  // namespace
}  // namespace m2
