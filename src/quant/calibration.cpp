#include "quant/calibration.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "model/layer_stream.h"
#include "model/model.h"
#include "text/chat.h"
#include "text/tokenizer.h"

namespace m2 {

namespace fs = std::filesystem;

void InputStats::add(const float* x, int64_t rows, int64_t cols) {
  if (sumsq.empty()) sumsq.assign(size_t(cols), 0.0);
  if (int64_t(sumsq.size()) != cols) fail<Error>("calibration: {} columns after {}", cols, sumsq.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float v = x[r * cols + c];
      if (!std::isfinite(v)) fail<ModelError>("calibration: a non-finite activation ({}) at column {}", v, c);
      amax = std::max(amax, std::fabs(v));
      sumsq[size_t(c)] += double(v) * double(v);
    }
  count += rows;
}

std::vector<float> InputStats::energy() const {
  std::vector<float> e;
  if (count == 0) return e;
  for (double s : sumsq) e.push_back(float(s / double(count)));
  return e;
}

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  if (!in) fail<IoError>("--calib {}: cannot read", p.string());
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// One calibration file's sequences (each at most seq_len tokens).
std::vector<std::vector<int32_t>> file_sequences(const fs::path& path, int seq_len, const Tokenizer* tok, const ChatFormat* chat,
                                                 int32_t vocab) {
  std::vector<std::vector<int32_t>> out;
  if (!fs::is_regular_file(path)) fail<IoError>("--calib {}: cannot read (no such file)", path.string());
  const std::string ext = path.extension().string();
  auto check_ids = [&](const std::vector<int32_t>& ids, size_t where) {
    for (int32_t t : ids)
      if (t < 0 || t >= vocab)
        fail<InvalidArgument>("--calib {}: sample {} has token {}, outside the vocabulary [0, {})", path.string(), where, t, vocab);
  };
  if (ext == ".json") {
    nlohmann::json j = read_json_file(path);
    if (!j.is_array()) fail<FormatError>("--calib {}: expected an array of token-id arrays", path.string());
    for (size_t i = 0; i < j.size(); ++i) {
      if (!j[i].is_array()) fail<FormatError>("--calib {}: element {} is not an array of token ids", path.string(), i);
      std::vector<int32_t> ids;
      for (const auto& v : j[i]) {
        if (!v.is_number_integer()) fail<FormatError>("--calib {}: element {} holds a non-integer", path.string(), i);
        ids.push_back(v.get<int32_t>());
      }
      check_ids(ids, i);
      if (int(ids.size()) > seq_len) ids.resize(size_t(seq_len));
      if (!ids.empty()) out.push_back(std::move(ids));
    }
    return out;
  }
  if (!tok) fail<InvalidArgument>("--calib {}: text needs the model's tokenizer.json", path.string());
  if (ext == ".jsonl") {
    std::istringstream in(read_text(path));
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::ordered_json j;
      try {
        j = nlohmann::ordered_json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        fail<FormatError>("--calib {} line {}: malformed JSON: {}", path.string(), n, e.what());
      }
      std::vector<int32_t> ids;
      if (j.is_object() && j.contains("messages")) {
        if (!chat) fail<InvalidArgument>("--calib {} line {}: chat records need the model's chat template", path.string(), n);
        ids = tok->encode(chat->render(j["messages"], j.value("tools", nlohmann::ordered_json()), false), false);
      } else if (j.is_object() && j.contains("text") && j["text"].is_string()) {
        ids = tok->encode(j["text"].get<std::string>(), true);
      } else {
        fail<FormatError>("--calib {} line {}: expected {{\"messages\": [...]}} or {{\"text\": \"...\"}}", path.string(), n);
      }
      if (int(ids.size()) > seq_len) ids.resize(size_t(seq_len));
      if (!ids.empty()) out.push_back(std::move(ids));
    }
    return out;
  }
  const auto ids = tok->encode(read_text(path), true);
  for (size_t at = 0; at < ids.size(); at += size_t(seq_len))
    out.emplace_back(ids.begin() + long(at), ids.begin() + long(std::min(ids.size(), at + size_t(seq_len))));
  return out;
}

}  // namespace

std::vector<std::vector<int32_t>> load_calibration(const std::vector<std::string>& files, int samples, int seq_len,
                                                   const Tokenizer* tok, const ChatFormat* chat, int32_t vocab) {
  if (samples <= 0 || seq_len <= 1) fail<InvalidArgument>("--calib-samples {} / --calib-seq-len {} must be positive", samples, seq_len);
  std::vector<std::vector<std::vector<int32_t>>> per_file;
  std::vector<double> weight;
  for (const auto& spec : files) {
    std::string path = spec;
    double w = 1;
    if (const size_t colon = spec.rfind(':'); colon != std::string::npos && colon + 1 < spec.size() &&
                                               spec.find_first_not_of("0123456789.", colon + 1) == std::string::npos) {
      path = spec.substr(0, colon);
      w = std::stod(spec.substr(colon + 1));
    }
    if (!(w > 0)) fail<InvalidArgument>("--calib {}: the weight must be positive", spec);
    per_file.push_back(file_sequences(path, seq_len, tok, chat, vocab));
    if (per_file.back().empty()) fail<InvalidArgument>("--calib {}: no samples", path);
    weight.push_back(w);
  }
  // Round-robin in proportion to the weights: the file furthest behind its share goes next. A file
  // whose sequences run out is taken again from its first, so that it keeps its share, until every
  // file has given each of its sequences once (or `samples` are taken).
  std::vector<std::vector<int32_t>> out;
  std::vector<size_t> taken(per_file.size(), 0);
  double total = 0;
  for (double w : weight) total += w;
  auto all_used = [&] {
    for (size_t f = 0; f < per_file.size(); ++f)
      if (taken[f] < per_file[f].size()) return false;
    return true;
  };
  while (int(out.size()) < samples && !all_used()) {
    size_t best = 0;
    double deficit = -1e300;
    for (size_t f = 0; f < per_file.size(); ++f) {
      const double d = weight[f] / total * double(out.size() + 1) - double(taken[f]);
      if (d > deficit) deficit = d, best = f;
    }
    out.push_back(per_file[best][taken[best] % per_file[best].size()]);
    ++taken[best];
  }
  return out;
}

struct Calibrator::Impl {
  const ModelWeights& w;
  CpuBackend& be;
  CalibrationOptions o;
};

Calibrator::Calibrator(const ModelWeights& w, CpuBackend& be, const CalibrationOptions& o)
    : impl_(std::make_unique<Impl>(Impl{w, be, o})) {}
Calibrator::~Calibrator() = default;

size_t Calibrator::activation_bytes(int64_t tokens) const {
  const ModelConfig& c = impl_->w.config;
  // hidden states + stored MoE inputs (+ attention input and output, kept for GPTQ; + the layer's
  // input, kept to run it again quantized)
  return size_t(tokens) * 4 *
         ((impl_->o.rerun_quantized ? 3 : 2) * size_t(c.hidden_size) +
          (impl_->o.keep_attention_inputs ? size_t(c.hidden_size + c.q_dim()) : 0));
}

void Calibrator::run(const std::vector<std::vector<int32_t>>& samples, int first, std::vector<float>& hidden,
                     const std::function<void(int, const LayerStats&, const std::vector<float>&)>& on_layer,
                     const ActivationsFn& on_activations, const QuantizedLayerFn& quantized_layer) {
  Impl& m = *impl_;
  const ModelConfig& c = m.w.config;
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts;
  int64_t tokens = 0, longest = 0;
  for (const auto& s : samples) tokens += int64_t(s.size()), longest = std::max<int64_t>(longest, int64_t(s.size()));
  if (tokens == 0) fail<InvalidArgument>("calibration: no samples");
  if (m.o.memory_limit && activation_bytes(tokens) > m.o.memory_limit)
    fail<InvalidArgument>("calibration: {} tokens need {:.1f} MB of activations, over --memory-limit {:.1f} MB: use fewer samples "
                          "(at most {} tokens fit)",
                          tokens, activation_bytes(tokens) / 1e6, m.o.memory_limit / 1e6,
                          m.o.memory_limit / activation_bytes(1));
  LayerStream stream(m.w, m.be, longest, m.o.chunk);
  stream.set_sequences(samples);
  if (first == 0) {
    stream.embed();
  } else if (int64_t(hidden.size()) != tokens * H) {
    fail<Error>("calibration: resumed hidden states hold {} values, expected {}", hidden.size(), tokens * H);
  } else {
    stream.hidden() = std::move(hidden);
  }
  std::vector<float> moe_in(static_cast<size_t>(tokens * H));  // every token's MoE input, for all-expert passes
  const bool keep_attn = on_activations && m.o.keep_attention_inputs;
  std::vector<float> attn_in(keep_attn ? size_t(tokens * H) : 0), attn_out(keep_attn ? size_t(tokens * c.q_dim()) : 0);
  std::vector<std::vector<int32_t>> routed(static_cast<size_t>(E));  // [E] token rows routed to each expert
  std::vector<std::vector<float>> routed_w(static_cast<size_t>(E));  // [E] their routing weights (aligned with routed)
  const int64_t chunk = m.o.chunk;
  std::vector<float> gate(static_cast<size_t>(chunk * I)), up(gate.size()), act(gate.size());
  const bool rerun = m.o.rerun_quantized && quantized_layer;
  std::vector<float> layer_in;  // [tokens, hidden] the layer's input, when it may run again quantized
  for (int l = first; l < c.num_layers; ++l) {
    if (rerun) layer_in = stream.hidden();
    LayerStats st;
    st.expert_in.resize(size_t(E));
    st.expert_mid.resize(size_t(E));
    st.expert_tokens.assign(size_t(E), 0);
    for (auto& r : routed) r.clear();
    for (auto& r : routed_w) r.clear();
    stream.model().routing_hook = [&](int, const TensorView& ids, const TensorView& wts) {  // I32 / F32 [n, top-k]
      const int32_t* id = ids.ptr<int32_t>();
      const float* wt = wts.ptr<float>();
      for (int64_t i = 0; i < ids.dim(0); ++i)
        for (int64_t k = 0; k < ids.dim(1); ++k) {
          const size_t e = size_t(id[i * ids.dim(1) + k]);
          routed[e].push_back(int32_t(stream.row() + i));
          routed_w[e].push_back(wt[i * ids.dim(1) + k]);
        }
    };
    stream.model().activation_hook = [&](int, Model::Site site, const TensorView& x, const TensorView& offsets) {
      const int64_t n = x.dim(0), cols = x.dim(1);
      const float* p = x.ptr<float>();
      switch (site) {
        case Model::Site::AttnIn:
          st.attn_in.add(p, n, cols);
          if (keep_attn) std::memcpy(attn_in.data() + stream.row() * cols, p, size_t(n * cols) * 4);
          break;
        case Model::Site::AttnOut:
          st.attn_out.add(p, n, cols);
          if (keep_attn) std::memcpy(attn_out.data() + stream.row() * cols, p, size_t(n * cols) * 4);
          break;
        case Model::Site::MoeIn:
          st.moe_in.add(p, n, cols);
          std::memcpy(moe_in.data() + stream.row() * H, p, size_t(n * cols) * 4);
          break;
        case Model::Site::Key:
        case Model::Site::Value: {
          float& a = site == Model::Site::Key ? st.k_amax : st.v_amax;
          for (int64_t i = 0; i < n * cols; ++i) a = std::max(a, std::fabs(p[i]));
          break;
        }
        case Model::Site::ExpertIn:
        case Model::Site::ExpertMid: {
          const int32_t* off = offsets.ptr<int32_t>();
          auto& v = site == Model::Site::ExpertIn ? st.expert_in : st.expert_mid;
          for (int64_t e = 0; e < E; ++e) {
            const int64_t k = off[e + 1] - off[e];
            if (k == 0) continue;
            v[size_t(e)].add(p + int64_t(off[e]) * cols, k, cols);
            if (site == Model::Site::ExpertIn) st.expert_tokens[size_t(e)] += k;
          }
          break;
        }
      }
    };
    stream.layer(l, /*release=*/false);  // the all-expert pass below still reads the experts
    stream.model().activation_hook = nullptr;
    stream.model().routing_hook = nullptr;

    // All-expert statistics: every stored MoE input through each expert (all of them, or the cold ones).
    std::vector<int> pass;
    for (int64_t e = 0; e < E; ++e)
      if (m.o.all_experts || st.expert_tokens[size_t(e)] < m.o.min_expert_tokens) pass.push_back(int(e));
    if (!pass.empty() && !m.o.all_experts && !m.o.rescue) {
      std::vector<std::string> names;
      for (int e : pass) names.push_back(fmt::format("{} ({} tokens)", e, st.expert_tokens[size_t(e)]));
      fail<ModelError>("calibration: layer {}: experts {} saw fewer than --min-expert-tokens {} tokens; add calibration data, "
                       "or allow the all-expert rescue pass",
                       l, fmt::join(names, ", "), m.o.min_expert_tokens);
    }
    const BackendLayer& bl = stream.model().weights().layers[size_t(l)];
    for (int e : pass) {
      InputStats in, mid;
      for (int64_t at = 0; at < tokens; at += chunk) {
        const int64_t n = std::min<int64_t>(chunk, tokens - at);
        const TensorView x(moe_in.data() + at * H, DType::F32, {n, H});  // [n, hidden]
        in.add(moe_in.data() + at * H, n, H);
        m.be.linear(bl.gate_up.part(e, 0), x, TensorView(gate.data(), DType::F32, {n, I}));
        m.be.linear(bl.gate_up.part(e, 1), x, TensorView(up.data(), DType::F32, {n, I}));
        for (int64_t i = 0; i < n * I; ++i) act[size_t(i)] = gate[size_t(i)] / (1.0f + std::exp(-gate[size_t(i)])) * up[size_t(i)];
        mid.add(act.data(), n, I);
      }
      st.expert_in[size_t(e)] = std::move(in);
      st.expert_mid[size_t(e)] = std::move(mid);
      if (!m.o.all_experts) st.rescued.push_back(e);
    }
    if (on_activations) {
      // Experts that saw too few tokens (or all of them, with all_experts) see every token.
      std::vector<std::vector<int32_t>> rows = routed;
      std::vector<std::vector<float>> weights = routed_w;
      for (int64_t e = 0; e < E; ++e)
        if (m.o.all_experts || st.expert_tokens[size_t(e)] < m.o.min_expert_tokens) {
          rows[size_t(e)].clear();
          weights[size_t(e)].clear();
        }
      on_activations(l, st, LayerActivations{tokens, attn_in, attn_out, moe_in}, RoutedRows{rows, weights});
    }
    if (rerun) {
      BackendLayer quantized = stream.model().weights().layers[size_t(l)];
      if (quantized_layer(l, quantized)) {
        stream.hidden() = layer_in;
        const BackendLayer original = stream.model().swap_layer(l, std::move(quantized));
        stream.layer(l, /*release=*/false);
        stream.model().swap_layer(l, original);
      }
    }
    m.w.checkpoint->release(fmt::format("model.layers.{}.", l));  // one layer resident at a time
    on_layer(l, st, stream.hidden());
  }
  hidden = std::move(stream.hidden());
}

namespace {

void put(std::ofstream& f, const void* p, size_t n) { f.write(static_cast<const char*>(p), std::streamsize(n)); }
template <typename T>
void put(std::ofstream& f, T v) { put(f, &v, sizeof v); }
void put(std::ofstream& f, const InputStats& s) {
  put(f, s.amax);
  put(f, s.count);
  put(f, uint64_t(s.sumsq.size()));
  put(f, s.sumsq.data(), s.sumsq.size() * 8);
}
template <typename T>
bool get(std::ifstream& f, T& v) { return bool(f.read(reinterpret_cast<char*>(&v), sizeof v)); }
bool get(std::ifstream& f, InputStats& s) {
  uint64_t n = 0;
  if (!get(f, s.amax) || !get(f, s.count) || !get(f, n) || n > (uint64_t(1) << 24)) return false;
  s.sumsq.resize(size_t(n));
  return bool(f.read(reinterpret_cast<char*>(s.sumsq.data()), std::streamsize(n * 8)));
}

constexpr uint64_t kMagic = 0x6d32'6361'6c69'6231ull;  // "m2calib1"

}  // namespace

void write_layer_stats(const fs::path& file, const LayerStats& s) {
  const fs::path tmp = file.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail<IoError>("{}: cannot write", tmp.string());
    put(f, kMagic);
    put(f, s.attn_in);
    put(f, s.attn_out);
    put(f, s.moe_in);
    put(f, s.k_amax);
    put(f, s.v_amax);
    put(f, uint64_t(s.expert_in.size()));
    for (size_t e = 0; e < s.expert_in.size(); ++e) {
      put(f, s.expert_in[e]);
      put(f, s.expert_mid[e]);
      put(f, s.expert_tokens[e]);
    }
    put(f, uint64_t(s.rescued.size()));
    for (int e : s.rescued) put(f, int32_t(e));
    put(f, kMagic);
    if (!f) fail<IoError>("{}: write failed", tmp.string());
  }
  fs::rename(tmp, file);
}

bool read_layer_stats(const fs::path& file, LayerStats& s) {
  std::ifstream f(file, std::ios::binary);
  uint64_t magic = 0, n = 0;
  if (!f || !get(f, magic) || magic != kMagic) return false;
  if (!get(f, s.attn_in) || !get(f, s.attn_out) || !get(f, s.moe_in) || !get(f, s.k_amax) || !get(f, s.v_amax) || !get(f, n) ||
      n > 100000)
    return false;
  s.expert_in.resize(size_t(n));
  s.expert_mid.resize(size_t(n));
  s.expert_tokens.resize(size_t(n));
  for (size_t e = 0; e < n; ++e)
    if (!get(f, s.expert_in[e]) || !get(f, s.expert_mid[e]) || !get(f, s.expert_tokens[e])) return false;
  if (!get(f, n) || n > 100000) return false;
  s.rescued.resize(size_t(n));
  for (auto& e : s.rescued) {
    int32_t v;
    if (!get(f, v)) return false;
    e = v;
  }
  return get(f, magic) && magic == kMagic;
}

}  // namespace m2
