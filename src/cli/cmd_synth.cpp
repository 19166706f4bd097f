// m2 synth OUT_DIR: a random MiniMax-M2 checkpoint of any shape in any of the five weight formats,
// one safetensors shard per layer plus model.safetensors.index.json, for benchmarks and scale tests.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "quant/export_config.h"
#include "quant/layouts.h"

namespace m2::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct SynthOptions {
  std::string out_dir;
  std::string preset = "tiny";
  std::string format = "bf16";
  int layers = -1, vocab = -1, experts = -1, hidden = -1, intermediate = -1, top_k = -1;
  bool quantize_attention = false;
  uint64_t seed = 1;
};

struct Shape {
  int vocab, hidden, layers, heads, kv_heads, head_dim, rotary_dim, experts, top_k, intermediate;
  double theta;
};

// xorshift64*: fast, reproducible, good enough for weights.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f; }  // [-1, 1)
};

using Owned = OwnedTensor;  // owned bytes of one tensor to be written

class Writer {
 public:
  Writer(const SynthOptions& o, const Shape& s) : o_(o), s_(s) {}

  void dense(std::vector<Owned>& out, const std::string& name, int64_t rows, int64_t cols, float amp, DType dt,
             Rng& rng) {
    Owned t{name, dt, {rows, cols}, std::vector<uint8_t>(size_t(rows * cols) * dtype_size(dt))};
    for (int64_t i = 0; i < rows * cols; ++i) {
      float v = amp * rng.uniform();
      if (dt == DType::F32) std::memcpy(t.bytes.data() + 4 * i, &v, 4);
      else {
        uint16_t b = f32_to_bf16(v);
        std::memcpy(t.bytes.data() + 2 * i, &b, 2);
      }
    }
    out.push_back(std::move(t));
  }

  void vector(std::vector<Owned>& out, const std::string& name, int64_t n, float center, float amp, DType dt, Rng& rng) {
    Owned t{name, dt, {n}, std::vector<uint8_t>(size_t(n) * dtype_size(dt))};
    for (int64_t i = 0; i < n; ++i) {
      float v = center + amp * rng.uniform();
      if (dt == DType::F32) std::memcpy(t.bytes.data() + 4 * i, &v, 4);
      else {
        uint16_t b = f32_to_bf16(v);
        std::memcpy(t.bytes.data() + 2 * i, &b, 2);
      }
    }
    out.push_back(std::move(t));
  }

  static Owned scalar(const std::string& name, float v, bool as_vector) {
    Owned t{name, DType::F32, as_vector ? std::vector<int64_t>{1} : std::vector<int64_t>{}, std::vector<uint8_t>(4)};
    std::memcpy(t.bytes.data(), &v, 4);
    return t;
  }

  // A linear layer [rows, cols] with weights of standard deviation ~ 1/sqrt(cols), in `fmt`; the
  // tensor names, dtypes, shapes and scale conventions come from the layout table (quant/layouts.h).
  void linear(std::vector<Owned>& out, const std::string& m, int64_t rows, int64_t cols, const std::string& fmt, Rng& rng) {
    const float amp = std::sqrt(3.0f / float(cols));  // uniform[-amp, amp] has std 1/sqrt(cols)
    if (fmt == "bf16") return dense(out, m + ".weight", rows, cols, amp, DType::BF16, rng);
    const StoredLayout layout = layout_of(fmt);
    const LayoutSpec& L = layout_spec(layout);
    const bool fp8 = L.format == WeightFormat::Fp8Block;
    if (!fp8 && cols % L.group)
      fail<InvalidArgument>("synth: {} needs in-features divisible by {}, {} has {}", fmt, L.group, m, cols);
    Owned w{m + "." + std::string(L.weight), fp8 ? DType::F8_E4M3 : DType::U8, weight_shape(layout, rows, cols), {}};
    Owned s{m + "." + std::string(L.scale), L.scale_dtype, scale_shape(layout, rows, cols), {}};
    w.bytes.resize(size_t(w.shape[0] * w.shape[1]));
    s.bytes.resize(size_t(s.shape[0] * s.shape[1]) * dtype_size(L.scale_dtype));
    if (fp8) {
      const float scale = amp / 448.0f;
      for (size_t i = 0; i < s.bytes.size(); i += 4) std::memcpy(s.bytes.data() + i, &scale, 4);
      for (auto& b : w.bytes) b = f32_to_e4m3(448.0f * rng.uniform());
      out.push_back(std::move(w));
      out.push_back(std::move(s));
      return;
    }
    // FP4: random E2M1 codes (two per byte) with per-block scales of ~ amp/2.9 (codes drawn
    // uniformly have std ≈ 2.9, so the weights have std ≈ 1/sqrt(cols)).
    for (size_t i = 0; i < w.bytes.size(); i += 8) {
      uint64_t r = rng.next();
      std::memcpy(w.bytes.data() + i, &r, std::min<size_t>(8, w.bytes.size() - i));
    }
    const float block = amp / 2.9f;
    const float global = block / 256.0f;  // keeps the E4M3 block scales near 256 (well inside its range)
    for (auto& b : s.bytes) {
      const float jitter = 0.75f + 0.25f * rng.uniform();
      b = L.format == WeightFormat::Nvfp4 ? f32_to_e4m3(block * jitter / global)
                                          : uint8_t(127 + int(std::lround(std::log2(block * jitter))));
    }
    out.push_back(std::move(w));
    out.push_back(std::move(s));
    if (!L.global_scale.empty())
      out.push_back(scalar(m + "." + std::string(L.global_scale), stored_scale(L, global), L.global_is_vector));
    if (!L.input_scale.empty())
      out.push_back(scalar(m + "." + std::string(L.input_scale), stored_scale(L, 8.0f / (6 * 448)), L.global_is_vector));
  }

  static StoredLayout layout_of(const std::string& fmt) {
    if (fmt == "fp8") return StoredLayout::Fp8Block;
    if (fmt == "nvfp4-modelopt") return StoredLayout::Nvfp4ModelOpt;
    if (fmt == "nvfp4-ct") return StoredLayout::Nvfp4Ct;
    return StoredLayout::Mxfp4Ct;
  }

  json config() const {
    json c = {{"architectures", {"MiniMaxM2ForCausalLM"}},
              {"model_type", "minimax_m2"},
              {"attn_type_list", std::vector<int>(size_t(s_.layers), 1)},
              {"head_dim", s_.head_dim},
              {"hidden_act", "silu"},
              {"hidden_size", s_.hidden},
              {"intermediate_size", s_.intermediate},
              {"max_position_embeddings", 196608},
              {"num_attention_heads", s_.heads},
              {"num_experts_per_tok", s_.top_k},
              {"num_hidden_layers", s_.layers},
              {"num_key_value_heads", s_.kv_heads},
              {"num_local_experts", s_.experts},
              {"num_mtp_modules", 0},
              {"qk_norm_type", "per_layer"},
              {"rms_norm_eps", 1e-6},
              {"rope_theta", s_.theta},
              {"rotary_dim", s_.rotary_dim},
              {"scoring_func", "sigmoid"},
              {"shared_intermediate_size", 0},
              {"tie_word_embeddings", false},
              {"use_qk_norm", true},
              {"use_routing_bias", true},
              {"vocab_size", s_.vocab},
              {"bos_token_id", 1},
              {"eos_token_id", 2},
              {"torch_dtype", "bfloat16"}};
    const std::string& f = o_.format;
    if (f == "fp8") c["quantization_config"] = fp8_block_quant_config();
    if (f == "nvfp4-modelopt") c["quantization_config"] = modelopt_nvfp4_quant_config(modelopt_exclusions(), false, "m2-synth");
    if (f == "nvfp4-ct") c["quantization_config"] = ct_nvfp4_quant_config(ct_ignore());
    if (f == "mxfp4-ct") c["quantization_config"] = ct_mxfp4_quant_config({"Linear"}, ct_ignore());
    return c;
  }

  std::string hf_quant_config() const { return modelopt_nvfp4_hf_quant_config(modelopt_exclusions(), false, "m2-synth").dump(2); }

 private:
  std::vector<std::string> modelopt_exclusions() const {
    std::vector<std::string> ex = {"lm_head", "*block_sparse_moe.gate"};
    if (!o_.quantize_attention) ex.push_back("*self_attn*");
    return ex;
  }
  std::vector<std::string> ct_ignore() const {
    std::vector<std::string> ig = {"lm_head", "re:.*block_sparse_moe.gate$"};
    if (!o_.quantize_attention) ig.push_back("re:.*self_attn.*");
    return ig;
  }

  const SynthOptions& o_;
  const Shape& s_;
};

void write_shard(const fs::path& path, const std::vector<Owned>& tensors, json& weight_map) {
  std::vector<TensorToWrite> view;
  for (const auto& t : tensors) {
    view.push_back(t.to_write());
    weight_map[t.name] = path.filename().string();
  }
  write_safetensors(path, view, {{"format", "pt"}});
}

int synth(const SynthOptions& o) {
  Shape s;
  if (o.preset == "minimax-m2") s = {200064, 3072, 62, 48, 8, 128, 64, 256, 8, 1536, 5e6};
  else if (o.preset == "tiny") s = {320, 64, 2, 4, 2, 16, 8, 8, 2, 32, 1e4};
  else fail<InvalidArgument>("synth: --preset '{}' is unknown: expected 'minimax-m2' or 'tiny'", o.preset);
  if (o.layers > 0) s.layers = o.layers;
  if (o.vocab > 0) s.vocab = o.vocab;
  if (o.experts > 0) s.experts = o.experts;
  if (o.hidden > 0) s.hidden = o.hidden;
  if (o.intermediate > 0) s.intermediate = o.intermediate;
  if (o.top_k > 0) s.top_k = o.top_k;
  if (s.top_k > s.experts) fail<InvalidArgument>("synth: top-k {} exceeds {} experts", s.top_k, s.experts);
  const std::vector<std::string> formats = {"bf16", "fp8", "nvfp4-modelopt", "nvfp4-ct", "mxfp4-ct"};
  if (std::find(formats.begin(), formats.end(), o.format) == formats.end())
    fail<InvalidArgument>("synth: --format '{}' is unknown: expected one of {}", o.format, fmt::join(formats, ", "));

  fs::create_directories(o.out_dir);
  Writer w(o, s);
  const std::string attn_fmt = (o.quantize_attention || o.format == "fp8") ? o.format : "bf16";
  json weight_map = json::object();
  const int shards = s.layers + 1;
  auto shard_name = [&](int i) { return fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards); };
  {
    Rng rng(o.seed);
    std::vector<Owned> t;
    w.dense(t, "model.embed_tokens.weight", s.vocab, s.hidden, 1.0f, DType::BF16, rng);
    w.vector(t, "model.norm.weight", s.hidden, 1.0f, 0.2f, DType::BF16, rng);
    w.dense(t, "lm_head.weight", s.vocab, s.hidden, std::sqrt(3.0f / float(s.hidden)), DType::BF16, rng);
    write_shard(fs::path(o.out_dir) / shard_name(0), t, weight_map);
  }
  const int q_dim = s.heads * s.head_dim, kv_dim = s.kv_heads * s.head_dim;
  for (int l = 0; l < s.layers; ++l) {
    Rng rng(o.seed + 1000 + uint64_t(l));
    std::vector<Owned> t;
    const std::string p = fmt::format("model.layers.{}.", l);
    w.vector(t, p + "input_layernorm.weight", s.hidden, 1.0f, 0.2f, DType::BF16, rng);
    w.vector(t, p + "post_attention_layernorm.weight", s.hidden, 1.0f, 0.2f, DType::BF16, rng);
    w.vector(t, p + "self_attn.q_norm.weight", q_dim, 1.0f, 0.2f, DType::BF16, rng);
    w.vector(t, p + "self_attn.k_norm.weight", kv_dim, 1.0f, 0.2f, DType::BF16, rng);
    w.linear(t, p + "self_attn.q_proj", q_dim, s.hidden, attn_fmt, rng);
    w.linear(t, p + "self_attn.k_proj", kv_dim, s.hidden, attn_fmt, rng);
    w.linear(t, p + "self_attn.v_proj", kv_dim, s.hidden, attn_fmt, rng);
    w.linear(t, p + "self_attn.o_proj", s.hidden, q_dim, attn_fmt, rng);
    w.dense(t, p + "block_sparse_moe.gate.weight", s.experts, s.hidden, 2.0f * std::sqrt(3.0f / float(s.hidden)),
            DType::F32, rng);
    w.vector(t, p + "block_sparse_moe.e_score_correction_bias", s.experts, 0.0f, 0.1f, DType::F32, rng);
    for (int e = 0; e < s.experts; ++e) {
      const std::string ep = fmt::format("{}block_sparse_moe.experts.{}.", p, e);
      w.linear(t, ep + "w1", s.intermediate, s.hidden, o.format, rng);
      w.linear(t, ep + "w3", s.intermediate, s.hidden, o.format, rng);
      w.linear(t, ep + "w2", s.hidden, s.intermediate, o.format, rng);
    }
    write_shard(fs::path(o.out_dir) / shard_name(l + 1), t, weight_map);
    fmt::print(stderr, "synth: layer {}/{} written\n", l + 1, s.layers);
  }
  std::ofstream(fs::path(o.out_dir) / "model.safetensors.index.json") << json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump(2);
  std::ofstream(fs::path(o.out_dir) / "config.json") << w.config().dump(2);
  if (o.format == "nvfp4-modelopt") std::ofstream(fs::path(o.out_dir) / "hf_quant_config.json") << w.hf_quant_config();
  fmt::print("wrote {} ({} layers, hidden {}, {} experts x {}, vocab {}, format {})\n", o.out_dir, s.layers, s.hidden,
             s.experts, s.intermediate, s.vocab, o.format);
  return 0;
}

}  // namespace

Runner add_synth(CLI::App& app) {
  auto o = std::make_shared<SynthOptions>();
  app.add_option("out_dir", o->out_dir, "Directory to write")->required();
  app.add_option("--preset", o->preset, "Shape preset: minimax-m2 (real widths) or tiny")->capture_default_str();
  app.add_option("--format", o->format, "bf16 | fp8 | nvfp4-modelopt | nvfp4-ct | mxfp4-ct")->capture_default_str();
  app.add_option("--layers", o->layers, "Override num_hidden_layers");
  app.add_option("--vocab", o->vocab, "Override vocab_size");
  app.add_option("--experts", o->experts, "Override num_local_experts");
  app.add_option("--top-k", o->top_k, "Override num_experts_per_tok");
  app.add_option("--hidden", o->hidden, "Override hidden_size");
  app.add_option("--intermediate", o->intermediate, "Override intermediate_size (expert width)");
  app.add_flag("--quantize-attention", o->quantize_attention, "Store q/k/v/o in the chosen format too");
  app.add_option("--seed", o->seed, "Random seed")->capture_default_str();
  return [o] { return synth(*o); };
}

}  // namespace m2::cli
