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

std::string describe(const WeightView& w) {
  if (w.format == WeightFormat::Dense) return std::string(dtype_name(w.dtype));
  if (w.format == WeightFormat::Fp8Block)
    return fmt::format("{} block {}x{}", dtype_name(w.dtype), w.block_rows, w.block_cols);
  return std::string(weight_format_name(w.format));
}

struct Group {
  std::map<std::string, int> formats;  // format → module count
  size_t bytes = 0;
  int64_t params = 0;
};

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

  std::map<std::string, Group> groups;
  auto add = [&](const std::string& g, const WeightView& w) {
    auto& G = groups[g];
    G.formats[describe(w)]++;
    G.bytes += w.bytes();
    G.params += w.rows * w.cols;
  };
  add("embed_tokens", m.embed);
  add("lm_head", m.lm_head);
  for (const auto& L : m.layers) {
    for (const auto* w : {&L.q, &L.k, &L.v}) add("attention q/k/v", *w);
    add("attention o", L.o);
    add("router gate", L.gate);
    for (size_t e = 0; e < L.w1.size(); ++e) {
      add("experts w1/w3", L.w1[e]);
      add("experts w1/w3", L.w3[e]);
      add("experts w2", L.w2[e]);
    }
  }
  fmt::print("\n{:<18} {:<34} {:>14} {:>12} {:>8}\n", "tensor group", "format (modules)", "params", "bytes", "bits/w");
  int64_t params = 0;
  for (const auto& [name, G] : groups) {
    std::string f;
    for (const auto& [k, n] : G.formats) f += (f.empty() ? "" : ", ") + fmt::format("{} ({})", k, n);
    fmt::print("{:<18} {:<34} {:>14} {:>12} {:>8.2f}\n", name, f, G.params, human_bytes(double(G.bytes)),
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
