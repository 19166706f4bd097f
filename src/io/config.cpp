#include "io/config.h"

#include <cmath>
#include <fstream>

#include "core/error.h"

namespace m2 {

namespace fs = std::filesystem;
using nlohmann::json;

json read_json_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) fail<IoError>("{}: cannot read", path.string());
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail<FormatError>("{}: malformed JSON: {}", path.string(), e.what());
  }
}

namespace {

class Reader {
 public:
  Reader(const json& j, const std::string& where) : j_(j), where_(where) {}

  const json* find(const char* key) const {
    auto it = j_.find(key);
    return (it == j_.end() || it->is_null()) ? nullptr : &*it;
  }
  // Every integer is range-checked before it is narrowed or multiplied: the bounds keep every product
  // of config values the model forms (vocab × hidden, experts × 2·intermediate × hidden, ...) far
  // inside int64.
  int64_t integer(const char* key, std::optional<int64_t> def, int64_t min, int64_t max) const {
    const json* v = find(key);
    if (!v) {
      if (def) return *def;
      fail<ModelError>("{}: missing required field '{}'", where_, key);
    }
    if (!v->is_number_integer())
      fail<ModelError>("{}: field '{}' must be an integer, found {}", where_, key, v->dump());
    int64_t x = v->get<int64_t>();
    if (x < min || x > max)
      fail<ModelError>("{}: field '{}' = {} is out of range (must be in [{}, {}])", where_, key, v->dump(), min, max);
    return x;
  }
  double number(const char* key, std::optional<double> def = std::nullopt) const {
    const json* v = find(key);
    if (!v) {
      if (def) return *def;
      fail<ModelError>("{}: missing required field '{}'", where_, key);
    }
    if (!v->is_number()) fail<ModelError>("{}: field '{}' must be a number, found {}", where_, key, v->dump());
    const double x = v->get<double>();
    if (!std::isfinite(x)) fail<ModelError>("{}: field '{}' = {} must be finite", where_, key, v->dump());
    return x;
  }
  bool boolean(const char* key, bool def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_boolean()) fail<ModelError>("{}: field '{}' must be true or false, found {}", where_, key, v->dump());
    return v->get<bool>();
  }
  std::string string(const char* key, const std::string& def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_string()) fail<ModelError>("{}: field '{}' must be a string, found {}", where_, key, v->dump());
    return v->get<std::string>();
  }
  // Token ids may be an int or a list (the first is used for BOS; all are stop ids for EOS).
  int token_id(const char* key, int64_t vocab) const {
    const json* v = find(key);
    if (!v) return -1;
    const json* id = v->is_array() && !v->empty() ? &(*v)[0] : v;
    if (!id->is_number_integer()) fail<ModelError>("{}: field '{}' must be a token id, found {}", where_, key, v->dump());
    if (id->is_number_unsigned() ? id->get<uint64_t>() >= uint64_t(vocab) : (id->get<int64_t>() < 0 || id->get<int64_t>() >= vocab))
      fail<ModelError>("{}: field '{}' = {} is outside the vocabulary [0, {})", where_, key, id->dump(), vocab);
    return int(id->get<int64_t>());
  }

 private:
  const json& j_;
  const std::string& where_;
};

}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& where) {
  if (!j.is_object()) fail<ModelError>("{}: expected a JSON object", where);
  Reader r(j, where);
  std::string model_type = r.string("model_type", "");
  bool arch_ok = false;
  if (const json* a = r.find("architectures"); a && a->is_array())
    for (const auto& x : *a) arch_ok |= x.is_string() && x.get<std::string>() == "MiniMaxM2ForCausalLM";
  if (model_type != "minimax_m2" && !arch_ok)
    fail<ModelError>("{}: model_type '{}' is not supported: expected 'minimax_m2' (MiniMaxM2ForCausalLM)", where,
                     model_type);

  ModelConfig c;
  // Bounds: well above any MiniMax-M2-family model (vocab 200064, hidden 3072, 62 layers, 48 heads,
  // 256 experts, 196608 positions), low enough that no product of them overflows.
  c.vocab_size = int(r.integer("vocab_size", std::nullopt, 1, int64_t(1) << 24));
  c.hidden_size = int(r.integer("hidden_size", std::nullopt, 1, 1 << 16));
  c.num_layers = int(r.integer("num_hidden_layers", std::nullopt, 1, 1024));
  c.num_heads = int(r.integer("num_attention_heads", std::nullopt, 1, 1024));
  c.num_kv_heads = int(r.integer("num_key_value_heads", c.num_heads, 1, c.num_heads));
  c.head_dim = int(r.integer("head_dim", std::max(1, c.hidden_size / c.num_heads), 1, 4096));
  c.intermediate_size = int(r.integer("intermediate_size", std::nullopt, 1, 1 << 20));
  c.num_experts = int(r.integer("num_local_experts", std::nullopt, 1, 4096));
  c.experts_per_token = int(r.integer("num_experts_per_tok", std::nullopt, 1, c.num_experts));
  c.max_position_embeddings = int(r.integer("max_position_embeddings", 196608, 1, int64_t(1) << 24));
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.use_routing_bias = r.boolean("use_routing_bias", true);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.bos_token_id = r.token_id("bos_token_id", c.vocab_size);
  c.eos_token_id = r.token_id("eos_token_id", c.vocab_size);
  c.num_mtp_modules = int(r.integer("num_mtp_modules", 0, 0, 64));

  if (c.num_heads % c.num_kv_heads != 0)
    fail<ModelError>("{}: num_attention_heads = {} is not a multiple of num_key_value_heads = {}", where, c.num_heads,
                     c.num_kv_heads);
  if (!(c.rms_norm_eps > 0)) fail<ModelError>("{}: field 'rms_norm_eps' = {} must be positive", where, c.rms_norm_eps);

  // RoPE: official fields (rope_theta, rotary_dim) or the transformers-v5 rope_parameters form.
  const json* rp = r.find("rope_parameters");
  if (rp && !rp->is_object()) fail<ModelError>("{}: field 'rope_parameters' must be an object", where);
  if (const json* rs = r.find("rope_scaling"); rs && !(rs->is_object() && rs->value("rope_type", rs->value("type", "default")) == "default"))
    fail<ModelError>("{}: field 'rope_scaling' = {} is not supported (MiniMax-M2 uses plain RoPE)", where, rs->dump());
  if (rp) {
    Reader rr(*rp, where);
    std::string type = rr.string("rope_type", "default");
    if (type != "default")
      fail<ModelError>("{}: field 'rope_parameters.rope_type' = '{}' is not supported: expected 'default'", where, type);
  }
  c.rope_theta = r.find("rope_theta") ? r.number("rope_theta") : rp ? Reader(*rp, where).number("rope_theta") : 5e6;
  if (!(c.rope_theta > 1)) fail<ModelError>("{}: rope_theta = {} must be > 1", where, c.rope_theta);
  if (r.find("rotary_dim")) {
    c.rotary_dim = int(r.integer("rotary_dim", std::nullopt, 1, c.head_dim));
  } else {
    double f = rp && rp->contains("partial_rotary_factor") ? Reader(*rp, where).number("partial_rotary_factor")
                                                          : r.number("partial_rotary_factor", 1.0);
    if (!(f > 0 && f <= 1)) fail<ModelError>("{}: partial_rotary_factor = {} must be in (0, 1]", where, f);
    c.rotary_dim = int(std::lround(f * c.head_dim));
  }
  if (c.rotary_dim <= 0 || c.rotary_dim > c.head_dim || c.rotary_dim % 2)
    fail<ModelError>("{}: rotary_dim = {} must be even and in (0, head_dim = {}]", where, c.rotary_dim, c.head_dim);

  // Values m2 does not implement are rejected, naming the field.
  if (auto act = r.string("hidden_act", "silu"); act != "silu")
    fail<ModelError>("{}: field 'hidden_act' = '{}' is not supported: expected 'silu'", where, act);
  if (auto s = r.string("scoring_func", "sigmoid"); s != "sigmoid")
    fail<ModelError>("{}: field 'scoring_func' = '{}' is not supported: expected 'sigmoid'", where, s);
  if (!r.boolean("use_qk_norm", true))
    fail<ModelError>("{}: field 'use_qk_norm' = false is not supported: MiniMax-M2 norms q and k", where);
  if (auto t = r.string("qk_norm_type", "per_layer"); t != "per_layer")
    fail<ModelError>("{}: field 'qk_norm_type' = '{}' is not supported: expected 'per_layer'", where, t);
  if (int64_t s = r.integer("shared_intermediate_size", 0, 0, INT64_MAX); s != 0)
    fail<ModelError>("{}: field 'shared_intermediate_size' = {} is not supported: expected 0 (no shared expert)", where, s);
  if (const json* a = r.find("attn_type_list")) {
    if (!a->is_array()) fail<ModelError>("{}: field 'attn_type_list' must be an array", where);
    for (size_t i = 0; i < a->size(); ++i)
      if (!(*a)[i].is_number_integer() || (*a)[i].get<int64_t>() != 1)
        fail<ModelError>("{}: field 'attn_type_list[{}]' = {} is not supported: only full attention (1)", where, i,
                         (*a)[i].dump());
  }
  if (const json* sw = r.find("sliding_window"))
    fail<ModelError>("{}: field 'sliding_window' = {} is not supported: MiniMax-M2 attends to the full context", where,
                     sw->dump());
  if (c.tie_word_embeddings) c.notices.push_back("tie_word_embeddings: lm_head shares model.embed_tokens.weight");
  if (c.num_mtp_modules > 0 && r.boolean("use_mtp", true))
    c.notices.push_back(fmt::format("num_mtp_modules = {}: MTP layers are ignored (model.layers.{}+ skipped)",
                                    c.num_mtp_modules, c.num_layers));
  return c;
}

ModelConfig load_model_config(const fs::path& model_dir) {
  fs::path p = model_dir / "config.json";
  return parse_model_config(read_json_file(p), p.string());
}

}  // namespace m2
