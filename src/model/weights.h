// Binds a checkpoint directory's tensors to the MiniMax-M2 structure, in their stored formats.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/config.h"
#include "io/safetensors.h"
#include "quant/scheme.h"
#include "quant/weight.h"

namespace m2 {

struct LayerWeights {
  std::vector<float> input_norm;  // [hidden]
  std::vector<float> post_norm;   // [hidden]
  std::vector<float> q_norm;      // [heads * head_dim]: one RMSNorm over the whole projection
  std::vector<float> k_norm;      // [kv_heads * head_dim]
  WeightView q, k, v;             // [heads*head_dim, hidden], [kv_dim, hidden], [kv_dim, hidden]
  WeightView o;                   // [hidden, heads*head_dim]
  WeightView gate;                // router [experts, hidden], computed in fp32
  std::vector<float> router_bias; // [experts] e_score_correction_bias (selection only); zeros if unused
  std::vector<WeightView> w1, w3; // per expert [intermediate, hidden] (gate_proj, up_proj)
  std::vector<WeightView> w2;     // per expert [hidden, intermediate] (down_proj)
  float k_scale = 0, v_scale = 0; // FP8 KV-cache scales when the checkpoint ships them (0 = absent)
};

struct ModelWeights {
  ModelConfig config;
  QuantScheme scheme;
  std::unique_ptr<Checkpoint> checkpoint;  // owns the mappings every WeightView points into
  WeightView embed;                        // [vocab, hidden]
  std::vector<float> final_norm;           // [hidden]
  WeightView lm_head;                      // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<std::string> notices;        // ignored tensors and config fields

  static ModelWeights load(const std::filesystem::path& dir);
  size_t weight_bytes() const;              // bytes of every bound weight, as stored
  size_t active_weight_bytes_per_token() const;  // bytes one decode step reads (top-k experts)
};

// A weight's stored format in words: "BF16", "F8_E4M3 block 128x128", "nvfp4", "mxfp4".
std::string describe_format(const WeightView& w);

// The checkpoint by tensor group (embed_tokens, lm_head, attention q/k/v, attention o, router gate,
// experts w1/w3, experts w2): formats with their module counts, parameters and bytes.
struct TensorGroupSummary {
  std::string name;
  std::map<std::string, int> formats;  // format → modules
  size_t bytes = 0;
  int64_t params = 0;
  std::string formats_text() const;    // "nvfp4 (512)" or "BF16 (3), F8_E4M3 block 128x128 (1)"
};
std::vector<TensorGroupSummary> summarize_groups(const ModelWeights& w);

// Reads a 1-D float tensor (BF16/F16/F32) of the given length into fp32.
std::vector<float> read_vector(const Checkpoint& ckpt, const std::string& name, int64_t length,
                               std::vector<std::string>* used);

}  // namespace m2
