// config.json of a MiniMaxM2ForCausalLM checkpoint, validated.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace m2 {

struct ModelConfig {
  int vocab_size = 0;
  int hidden_size = 0;          // d_model
  int num_layers = 0;
  int num_heads = 0;            // query heads
  int num_kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;           // partial NeoX RoPE on the first rotary_dim dims of each head
  double rope_theta = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  int intermediate_size = 0;    // per-expert FFN width
  int num_experts = 0;
  int experts_per_token = 0;
  bool use_routing_bias = true;
  bool tie_word_embeddings = false;
  int bos_token_id = -1;
  int eos_token_id = -1;
  int num_mtp_modules = 0;      // declared MTP heads; their weights, if any, are ignored
  std::vector<std::string> notices;  // things the loader ignored, for `m2 inspect` and logs

  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
};

// Parses and validates; `where` names the file in error messages.
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& where);
ModelConfig load_model_config(const std::filesystem::path& model_dir);

// Reads a JSON file, raising FormatError with the file name and parser message on bad syntax.
nlohmann::json read_json_file(const std::filesystem::path& path);

}  // namespace m2
