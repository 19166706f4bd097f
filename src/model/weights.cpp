#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"

namespace m2 {

namespace fs = std::filesystem;

std::vector<float> read_vector(const Checkpoint& ckpt, const std::string& name, int64_t length,
                               std::vector<std::string>* used) {
  const TensorRef& t = ckpt.get(name);
  if (t.shape != std::vector<int64_t>{length} ||
      (t.dtype != DType::BF16 && t.dtype != DType::F16 && t.dtype != DType::F32))
    fail<ModelError>("{}: tensor '{}': expected BF16|F16|F32 [{}], found {} {}", t.file, name, length,
                     dtype_name(t.dtype), t.shape_str());
  WeightView w;
  w.name = name;
  w.dtype = t.dtype;
  w.rows = 1;
  w.cols = length;
  w.data = t.data;
  w.row_bytes = length * int64_t(dtype_size(t.dtype));
  std::vector<float> out(static_cast<size_t>(length));
  dequant_row_ref(w, 0, out.data());
  for (int64_t i = 0; i < length; ++i)
    if (!std::isfinite(out[size_t(i)])) fail<ModelError>("{}: tensor '{}': element {} is not finite", t.file, name, i);
  if (used) used->push_back(name);
  return out;
}

namespace {

// Dense-only modules (embedding) bound without a quantization rule.
WeightView bind_embedding(const Checkpoint& ckpt, const std::string& name, int64_t rows, int64_t cols,
                          std::vector<std::string>* used) {
  const TensorRef& t = ckpt.get(name);
  if (t.shape != std::vector<int64_t>{rows, cols} ||
      (t.dtype != DType::BF16 && t.dtype != DType::F16 && t.dtype != DType::F32))
    fail<ModelError>("{}: tensor '{}': expected BF16|F16|F32 [{}, {}], found {} {}", t.file, name, rows, cols,
                     dtype_name(t.dtype), t.shape_str());
  WeightView w;
  w.name = name;
  w.dtype = t.dtype;
  w.rows = rows;
  w.cols = cols;
  w.data = t.data;
  w.row_bytes = cols * int64_t(dtype_size(t.dtype));
  if (used) used->push_back(name);
  return w;
}

std::optional<float> read_kv_scale(const Checkpoint& ckpt, const std::vector<std::string>& names,
                                   std::vector<std::string>* used) {
  for (const auto& n : names) {
    if (const TensorRef* t = ckpt.find(n)) {
      if (t->dtype != DType::F32 || t->numel() != 1)
        fail<ModelError>("{}: tensor '{}': expected an F32 scalar, found {} {}", t->file, n, dtype_name(t->dtype),
                         t->shape_str());
      float v;
      std::memcpy(&v, t->data, 4);
      if (!std::isfinite(v) || v <= 0) fail<ModelError>("{}: tensor '{}': expected a positive scale, found {}", t->file, n, v);
      used->push_back(n);
      return v;
    }
  }
  return std::nullopt;
}

}  // namespace

ModelWeights ModelWeights::load(const fs::path& dir) {
  ModelWeights m;
  if (!fs::is_directory(dir)) fail<IoError>("{}: not a directory", dir.string());
  const nlohmann::json cfg_json = read_json_file(dir / "config.json");
  m.config = parse_model_config(cfg_json, (dir / "config.json").string());
  m.scheme = QuantScheme::detect(dir, cfg_json);
  m.checkpoint = std::make_unique<Checkpoint>(dir);
  m.notices = m.config.notices;
  const ModelConfig& c = m.config;
  const Checkpoint& ck = *m.checkpoint;
  std::vector<std::string> used;
  const int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size, E = c.num_experts;

  m.embed = bind_embedding(ck, "model.embed_tokens.weight", V, H, &used);
  m.final_norm = read_vector(ck, "model.norm.weight", H, &used);
  if (c.tie_word_embeddings && !ck.find("lm_head.weight")) m.lm_head = m.embed;
  else m.lm_head = bind_linear(ck, m.scheme, "lm_head", V, H, &used);

  m.layers.resize(size_t(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& L = m.layers[size_t(l)];
    const std::string p = fmt::format("model.layers.{}.", l);
    L.input_norm = read_vector(ck, p + "input_layernorm.weight", H, &used);
    L.post_norm = read_vector(ck, p + "post_attention_layernorm.weight", H, &used);
    L.q_norm = read_vector(ck, p + "self_attn.q_norm.weight", c.q_dim(), &used);
    L.k_norm = read_vector(ck, p + "self_attn.k_norm.weight", c.kv_dim(), &used);
    L.q = bind_linear(ck, m.scheme, p + "self_attn.q_proj", c.q_dim(), H, &used);
    L.k = bind_linear(ck, m.scheme, p + "self_attn.k_proj", c.kv_dim(), H, &used);
    L.v = bind_linear(ck, m.scheme, p + "self_attn.v_proj", c.kv_dim(), H, &used);
    L.o = bind_linear(ck, m.scheme, p + "self_attn.o_proj", H, c.q_dim(), &used);
    L.gate = bind_linear(ck, m.scheme, p + "block_sparse_moe.gate", E, H, &used);
    if (c.use_routing_bias) L.router_bias = read_vector(ck, p + "block_sparse_moe.e_score_correction_bias", E, &used);
    else L.router_bias.assign(size_t(E), 0.0f);
    for (int64_t e = 0; e < E; ++e) {
      const std::string ep = fmt::format("{}block_sparse_moe.experts.{}.", p, e);
      L.w1.push_back(bind_linear(ck, m.scheme, ep + "w1", I, H, &used));
      L.w3.push_back(bind_linear(ck, m.scheme, ep + "w3", I, H, &used));
      L.w2.push_back(bind_linear(ck, m.scheme, ep + "w2", H, I, &used));
    }
    L.k_scale = read_kv_scale(ck, {p + "self_attn.k_proj.k_scale", p + "self_attn.k_scale"}, &used).value_or(0.0f);
    L.v_scale = read_kv_scale(ck, {p + "self_attn.v_proj.v_scale", p + "self_attn.v_scale"}, &used).value_or(0.0f);
    if (m.scheme.kv_cache_fp8() && (L.k_scale == 0 || L.v_scale == 0) && l == 0)
      m.notices.push_back("kv_cache_scheme declares FP8 but layer 0 has no k_scale/v_scale: scales default to 1.0");
  }

  // Everything the checkpoint holds must be accounted for: MTP layers are ignored with a notice,
  // anything else unknown is listed.
  std::set<std::string> used_set(used.begin(), used.end());
  std::vector<std::string> mtp, unknown;
  for (const auto& [name, t] : ck.tensors()) {
    if (used_set.count(name)) continue;
    int layer = -1;
    if (std::sscanf(name.c_str(), "model.layers.%d.", &layer) == 1 && layer >= c.num_layers) mtp.push_back(name);
    else unknown.push_back(name);
  }
  if (!mtp.empty())
    m.notices.push_back(fmt::format("ignored {} tensors of MTP layers (model.layers.{}+)", mtp.size(), c.num_layers));
  if (!unknown.empty()) {
    std::vector<std::string> head(unknown.begin(), unknown.begin() + std::min<size_t>(unknown.size(), 5));
    m.notices.push_back(fmt::format("ignored {} unrecognised tensors: {}{}", unknown.size(), fmt::join(head, ", "),
                                    unknown.size() > 5 ? ", ..." : ""));
  }
  return m;
}

size_t ModelWeights::weight_bytes() const {
  size_t n = embed.bytes() + lm_head.bytes();
  for (const auto& L : layers) {
    n += L.q.bytes() + L.k.bytes() + L.v.bytes() + L.o.bytes() + L.gate.bytes();
    for (size_t e = 0; e < L.w1.size(); ++e) n += L.w1[e].bytes() + L.w2[e].bytes() + L.w3[e].bytes();
  }
  return n;
}

size_t ModelWeights::active_weight_bytes_per_token() const {
  size_t n = size_t(embed.row_bytes) + lm_head.bytes();
  for (const auto& L : layers) {
    n += L.q.bytes() + L.k.bytes() + L.v.bytes() + L.o.bytes() + L.gate.bytes();
    if (!L.w1.empty())
      n += size_t(config.experts_per_token) * (L.w1[0].bytes() + L.w2[0].bytes() + L.w3[0].bytes());
  }
  return n;
}

}  // namespace m2

namespace m2 {

std::string describe_format(const WeightView& w) {
  if (w.format == WeightFormat::Dense) return std::string(dtype_name(w.dtype));
  if (w.format == WeightFormat::Fp8Block)
    return fmt::format("{} block {}x{}", dtype_name(w.dtype), w.block_rows, w.block_cols);
  return std::string(weight_format_name(w.format));
}

std::string TensorGroupSummary::formats_text() const {
  std::string f;
  for (const auto& [k, n] : formats) f += (f.empty() ? "" : ", ") + fmt::format("{} ({})", k, n);
  return f;
}

std::vector<TensorGroupSummary> summarize_groups(const ModelWeights& m) {
  std::map<std::string, TensorGroupSummary> groups;
  auto add = [&](const std::string& g, const WeightView& w) {
    auto& G = groups[g];
    G.name = g;
    G.formats[describe_format(w)]++;
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
  std::vector<TensorGroupSummary> out;
  for (auto& [name, g] : groups) out.push_back(std::move(g));
  return out;
}

}  // namespace m2
