// m2 inspect MODEL_DIR: what a checkpoint is, how it is stored and what it costs in memory.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>

#include "cli/commands.h"
#include "model/weights.h"

namespace m2::cli {

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return fmt::format("{:.2f} {}", b, units[u]);
}

int inspect(const std::string& dir) {
  ModelWeights m = ModelWeights::load(dir);
  const ModelConfig& c = m.config;
  fmt::print("model        {}\n", dir);
  fmt::print("architecture MiniMaxM2ForCausalLM: {} layers, hidden {}, vocab {}\n", c.num_layers, c.hidden_size,
             c.vocab_size);
  fmt::print("attention    {} q heads / {} kv heads x head_dim {}, partial NeoX RoPE on {} dims, theta {}\n",
             c.num_heads, c.num_kv_heads, c.head_dim, c.rotary_dim, c.rope_theta);
  fmt::print("moe          {} experts, top-{}, expert width {}, sigmoid routing{}\n", c.num_experts,
             c.experts_per_token, c.intermediate_size, c.use_routing_bias ? " with e_score_correction_bias" : "");
  fmt::print("quantization {}{}\n", m.scheme.description(), m.scheme.kv_cache_fp8() ? ", FP8 KV cache declared" : "");
  if (!m.scheme.exclusion_patterns().empty())
    fmt::print("excluded     {}\n", fmt::join(m.scheme.exclusion_patterns(), ", "));

  fmt::print("\n{:<18} {:<34} {:>14} {:>12} {:>8}\n", "tensor group", "format (modules)", "params", "bytes", "bits/w");
  int64_t params = 0;
  for (const auto& G : summarize_groups(m)) {
    fmt::print("{:<18} {:<34} {:>14} {:>12} {:>8.2f}\n", G.name, G.formats_text(), G.params, human_bytes(double(G.bytes)),
               8.0 * double(G.bytes) / double(G.params));
    params += G.params;
  }
  int kv_scales = 0;
  for (const auto& L : m.layers) kv_scales += (L.k_scale > 0) + (L.v_scale > 0);
  fmt::print("\nparameters   {} ({:.3f} B)\n", params, double(params) / 1e9);
  fmt::print("files        {} file(s), {} on disk\n", m.checkpoint->num_files(), human_bytes(double(m.checkpoint->bytes_on_disk())));
  fmt::print("in memory    {} of weights mmap'd as stored (never expanded); {} read per decoded token\n",
             human_bytes(double(m.weight_bytes())), human_bytes(double(m.active_weight_bytes_per_token())));
  fmt::print("kv cache     {} per token (fp32 CPU cache); {} k/v scales in the checkpoint\n",
             human_bytes(double(2 * c.num_layers * c.kv_dim() * 4)), kv_scales);
  for (const auto& n : m.notices) fmt::print("notice       {}\n", n);
  return 0;
}

}  // namespace

Runner add_inspect(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  app.add_option("model_dir", *dir, "Checkpoint directory (config.json + safetensors)")->required();
  return [dir] { return inspect(*dir); };
}

}  // namespace m2::cli
