#include "quant/quantizer.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/statvfs.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <unistd.h>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/linear.h"
#include "core/error.h"
#include "core/units.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "quant/calibration.h"
#include "quant/export_config.h"
#include "quant/gptq_layer.h"
#include "quant/layouts.h"
#include "text/chat.h"
#include "text/tokenizer.h"

namespace m2 {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

const std::vector<std::string>& quantize_recipes() {
  static const std::vector<std::string> r = {"nvfp4-experts-only", "nvfp4-ct", "mxfp4-experts"};
  return r;
}

namespace {

struct Recipe {
  StoredLayout layout;
  bool attention;  // q/k/v/o quantized too
  std::vector<std::string> base_exclusions;  // as the format writes them
};

Recipe recipe_of(const std::string& name) {
  if (name == "nvfp4-experts-only")
    return {StoredLayout::Nvfp4ModelOpt, false, {"lm_head", "model.embed_tokens", "*self_attn*", "*block_sparse_moe.gate"}};
  if (name == "nvfp4-ct") return {StoredLayout::Nvfp4Ct, true, {"lm_head", "re:.*block_sparse_moe.gate$"}};
  if (name == "mxfp4-experts")
    return {StoredLayout::Mxfp4Ct, false, {"lm_head", "re:.*self_attn.*", "re:.*block_sparse_moe.gate$"}};
  fail<InvalidArgument>("--recipe '{}' is unknown: expected one of {}", name, fmt::join(quantize_recipes(), ", "));
}

// A module-name pattern: "re:REGEX" (full match) or a glob with * and ?.
bool pattern_matches(const std::string& pattern, const std::string& module) {
  if (pattern.rfind("re:", 0) == 0) {
    try {
      return std::regex_match(module, std::regex(pattern.substr(3)));
    } catch (const std::regex_error& e) {
      fail<InvalidArgument>("--ignore '{}': not a valid regular expression: {}", pattern, e.what());
    }
  }
  std::string re;
  for (char ch : pattern) re += ch == '*' ? ".*" : ch == '?' ? "." : std::string(std::strchr(".^$|()[]{}+\\", ch) ? "\\" : "") + ch;
  return std::regex_match(module, std::regex(re));
}

enum class Role { Q, K, V, O, W1, W2, W3, Other };

// One linear module of the model and what happens to it.
struct Module {
  std::string name;           // "model.layers.3.block_sparse_moe.experts.7.w1"
  int layer = -1, expert = -1;
  Role role = Role::Other;
  const WeightView* w = nullptr;
  bool quantize = false;
  std::string group;          // modules sharing a per-tensor scale (q/k/v; w1/w3 of an expert)
};

using OutTensor = OwnedTensor;  // one tensor of the output

// A unit of output work: copy one input tensor (or dequantize an unquantized FP8 module to BF16), or
// quantize one module.
struct Job {
  std::string copy;     // input tensor to copy
  int module = -1;      // or: module to write (quantized, or dense from FP8)
  size_t bytes = 0;     // output bytes
};

struct Shard {
  std::vector<Job> jobs;
  size_t bytes = 0;
};

// Crash injection for the resume tests: M2_TEST_KILL_AT=<point> kills this process (SIGKILL) there.
void kill_point(const std::string& point) {
  const char* at = std::getenv("M2_TEST_KILL_AT");
  if (at && point == at) {
    fmt::print(stderr, "m2 quantize: M2_TEST_KILL_AT={}: killing myself\n", at);
    std::raise(SIGKILL);
  }
}

class Progress {
 public:
  Progress(bool on, std::string what, int64_t total) : on_(on), what_(std::move(what)), total_(total), t0_(Clock::now()) {}
  void update(int64_t done, const std::string& detail) {
    if (!on_) return;
    const double s = std::chrono::duration<double>(Clock::now() - t0_).count();
    const double eta = done > 0 ? s / double(done) * double(total_ - done) : 0;
    const int w = 30, fill = total_ ? int(w * done / total_) : w;
    fmt::print(stderr, "\r{} [{}{}] {}/{} {:<28} {:.0f}s, ETA {:.0f}s   ", what_, std::string(size_t(fill), '#'),
               std::string(size_t(w - fill), '.'), done, total_, detail, s, eta);
    if (done == total_) fmt::print(stderr, "\n");
  }

 private:
  bool on_;
  std::string what_;
  int64_t total_;
  Clock::time_point t0_;
};

void write_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) fail<IoError>("{}: cannot write", tmp.string());
    f << text;
    if (!f) fail<IoError>("{}: write failed (disk full?)", tmp.string());
  }
  fs::rename(tmp, path);
}

std::vector<uint8_t> f32_bytes(float v) {
  std::vector<uint8_t> b(4);
  std::memcpy(b.data(), &v, 4);
  return b;
}

class Quantizer {
 public:
  explicit Quantizer(const QuantizeOptions& o) : o_(o), recipe_(recipe_of(o.recipe)), backend_(o.threads) {}

  void run();

 private:
  void plan_modules();
  void plan_shards();
  ojson options_json() const;
  void prepare_samples();
  void calibrate();
  void gptq_layer_pass(int l, const LayerActivations& acts, const RoutedRows& routed);
  bool gptq_quantized_layer(int l, BackendLayer& weights) const;
  const SafetensorsFile& gptq_file(int layer);
  std::vector<OutTensor> produce(const Job& job);
  void quantize_module(const Module& m, std::vector<OutTensor>& out, double* rel_err);
  double group_global_scale(const Module& m);
  const InputStats* input_stats(const Module& m) const;
  void write_shard(size_t i);
  void finish();

  QuantizeOptions o_;
  Recipe recipe_;
  CpuBackend backend_;
  std::unique_ptr<ModelWeights> in_;
  std::vector<Module> modules_;
  std::map<std::string, int> module_of_weight_;  // input "<module>.weight" → module
  std::set<std::string> skip_;                  // input tensors not copied (scales of requantized modules, MTP)
  std::vector<std::string> exclusions_;         // as written in the configs
  std::vector<Shard> shards_;
  fs::path partial_;
  std::vector<std::vector<int32_t>> samples_;  // calibration token sequences
  std::vector<LayerStats> stats_;               // per layer, when calibrated
  std::map<std::string, double> group_ws2_;     // shared per-tensor scales
  std::mutex group_mutex_;
  std::vector<std::string> notices_;
  std::map<int, std::unique_ptr<SafetensorsFile>> gptq_files_;  // GPTQ results by layer
  std::mutex gptq_mutex_;
  // The last GPTQ pass's jobs, their modules and results (--gptq-sequential runs the layer with them).
  std::vector<GptqJob> gptq_jobs_;
  std::vector<size_t> gptq_modules_;
  std::vector<GptqModuleResult> gptq_results_;
  std::vector<double> module_error_;            // [modules] relative weight error (NaN: not computed in this run)
  double seconds_calibration_ = 0, seconds_quantization_ = 0;
  int64_t calib_tokens_ = 0;
  int calib_samples_ = 0;
};

void Quantizer::plan_modules() {
  const ModelConfig& c = in_->config;
  auto add = [&](const std::string& name, int layer, int expert, Role role, const WeightView& w, bool target) {
    Module m{name, layer, expert, role, &w, target, name};
    if (role == Role::Q || role == Role::K || role == Role::V) m.group = fmt::format("model.layers.{}.self_attn.qkv", layer);
    if (role == Role::W1 || role == Role::W3) m.group = fmt::format("model.layers.{}.block_sparse_moe.experts.{}.w13", layer, expert);
    if (m.quantize) {
      if (std::find(o_.keep_layers.begin(), o_.keep_layers.end(), layer) != o_.keep_layers.end()) m.quantize = false;
      for (const auto& p : o_.ignore)
        if (pattern_matches(p, name)) m.quantize = false;
    }
    if (w.format != WeightFormat::Dense && w.format != WeightFormat::Fp8Block)
      fail<InvalidArgument>("{}: module '{}' is already {}: quantize from a BF16/F16/F32 or block-FP8 checkpoint",
                            o_.in_dir.string(), name, weight_format_name(w.format));
    module_of_weight_[name + ".weight"] = int(modules_.size());
    if (w.format == WeightFormat::Fp8Block) skip_.insert(name + ".weight_scale_inv");
    modules_.push_back(std::move(m));
  };
  add("lm_head", -1, -1, Role::Other, in_->lm_head, false);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = in_->layers[size_t(l)];
    const std::string p = fmt::format("model.layers.{}.", l);
    const Role attn[] = {Role::Q, Role::K, Role::V, Role::O};
    const WeightView* aw[] = {&L.q, &L.k, &L.v, &L.o};
    const char* an[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    for (int i = 0; i < 4; ++i) add(p + "self_attn." + an[i], l, -1, attn[i], *aw[i], recipe_.attention);
    add(p + "block_sparse_moe.gate", l, -1, Role::Other, L.gate, false);
    for (int e = 0; e < c.num_experts; ++e) {
      const std::string ep = fmt::format("{}block_sparse_moe.experts.{}.", p, e);
      add(ep + "w1", l, e, Role::W1, L.w1[size_t(e)], true);
      add(ep + "w2", l, e, Role::W2, L.w2[size_t(e)], true);
      add(ep + "w3", l, e, Role::W3, L.w3[size_t(e)], true);
    }
  }
  if (in_->lm_head.data == in_->embed.data) module_of_weight_.erase("lm_head.weight");  // tied: nothing of its own
  if (o_.gptq_act_order && !o_.gptq) fail<InvalidArgument>("--gptq-act-order orders GPTQ's columns: add --gptq");
  if (o_.gptq_refine < 0 || o_.gptq_refine > 100) fail<InvalidArgument>("--gptq-refine {}: give 0-100 sweeps", o_.gptq_refine);
  if (o_.gptq_refine > 0 && !o_.gptq) fail<InvalidArgument>("--gptq-refine refines GPTQ's codes: add --gptq");
  if (o_.gptq_route_weighted && !o_.gptq) fail<InvalidArgument>("--gptq-route-weighted weighs GPTQ's Hessians: add --gptq");
  if (o_.gptq_sequential && !o_.gptq)
    fail<InvalidArgument>("--gptq-sequential calibrates each layer on GPTQ's quantized layers before it: add --gptq");
  // The exclusion list the configs carry: the recipe's, plus kept layers and --ignore patterns.
  exclusions_ = recipe_.base_exclusions;
  const bool ct = recipe_.layout != StoredLayout::Nvfp4ModelOpt;
  for (int l : o_.keep_layers) {
    if (l < 0 || l >= c.num_layers) fail<InvalidArgument>("--keep-layers {}: the model has layers 0 .. {}", l, c.num_layers - 1);
    exclusions_.push_back(ct ? fmt::format("re:model\\.layers\\.{}\\..*", l) : fmt::format("model.layers.{}.*", l));
  }
  for (const auto& p : o_.ignore) exclusions_.push_back(p);
  // Inputs the output does not carry: MTP layers (ignored by every engine), with a notice.
  int mtp = 0;
  for (const auto& [name, t] : in_->checkpoint->tensors()) {
    int layer = -1;
    if (std::sscanf(name.c_str(), "model.layers.%d.", &layer) == 1 && layer >= c.num_layers) skip_.insert(name), ++mtp;
  }
  if (mtp) notices_.push_back(fmt::format("dropped {} tensors of MTP layers (model.layers.{}+)", mtp, c.num_layers));
}

size_t module_bytes(const Module& m, StoredLayout target) {
  const int64_t r = m.w->rows, c = m.w->cols;
  if (!m.quantize) return size_t(r * c) * (m.w->format == WeightFormat::Fp8Block ? 2 : dtype_size(m.w->dtype));
  const LayoutSpec& s = layout_spec(target);
  size_t n = size_t(r * c / 2) + size_t(r * (c / s.group));
  if (!s.global_scale.empty()) n += 4;
  if (!s.input_scale.empty()) n += 4;
  return n;
}

void Quantizer::plan_shards() {
  // Output order: embedding, final norm and lm_head, then layer after layer (name order within).
  std::vector<std::string> names;
  for (const auto& [name, t] : in_->checkpoint->tensors())
    if (!skip_.count(name)) names.push_back(name);
  auto key = [](const std::string& n) {
    int l = -1;
    std::sscanf(n.c_str(), "model.layers.%d.", &l);
    return std::make_pair(l, n);
  };
  std::stable_sort(names.begin(), names.end(), [&](const auto& a, const auto& b) { return key(a) < key(b); });
  std::vector<Job> jobs;
  for (const auto& n : names) {
    auto it = module_of_weight_.find(n);
    if (it != module_of_weight_.end()) {
      const Module& m = modules_[size_t(it->second)];
      jobs.push_back({"", it->second, module_bytes(m, recipe_.layout)});
    } else {
      jobs.push_back({n, -1, in_->checkpoint->get(n).nbytes});
    }
  }
  if (o_.kv_cache_fp8)
    for (int l = 0; l < in_->config.num_layers; ++l) jobs.push_back({fmt::format("@kv{}", l), -1, 8});
  std::stable_sort(jobs.begin(), jobs.end(), [&](const Job& a, const Job& b) {
    auto layer = [&](const Job& j) {
      if (j.module >= 0) return modules_[size_t(j.module)].layer;
      if (j.copy.rfind("@kv", 0) == 0) return std::stoi(j.copy.substr(3));
      int l = -1;
      std::sscanf(j.copy.c_str(), "model.layers.%d.", &l);
      return l;
    };
    return layer(a) < layer(b);
  });
  shards_.clear();
  for (const auto& j : jobs) {
    if (shards_.empty() || (shards_.back().bytes + j.bytes > o_.max_shard_size && !shards_.back().jobs.empty())) shards_.emplace_back();
    shards_.back().jobs.push_back(j);
    shards_.back().bytes += j.bytes;
  }
}

ojson Quantizer::options_json() const {
  ojson j;
  j["recipe"] = o_.recipe;
  j["input"] = fs::absolute(o_.in_dir).lexically_normal().string();
  j["calib"] = o_.calib;
  j["calib_samples"] = o_.calib_samples;
  j["calib_seq_len"] = o_.calib_seq_len;
  j["calib_all_experts"] = o_.calib_all_experts;
  j["min_expert_tokens"] = o_.min_expert_tokens;
  j["rescue_cold_experts"] = o_.rescue_cold_experts;
  j["kv_cache_fp8"] = o_.kv_cache_fp8;
  j["keep_layers"] = o_.keep_layers;
  j["ignore"] = o_.ignore;
  j["scale_search"] = o_.scale_search == ScaleSearch::Max ? "max" : o_.activation_weighted ? "mse-weighted" : "mse";
  j["mx_rule"] = o_.mx_rule == MxRule::Ocp ? "ocp" : "ct";
  j["max_shard_size"] = o_.max_shard_size;
  j["gptq"] = o_.gptq;
  if (o_.gptq) j["gptq_damp"] = o_.gptq_damp;
  if (o_.gptq && o_.gptq_act_order) j["gptq_act_order"] = true;
  if (o_.gptq && o_.gptq_sequential) j["gptq_sequential"] = true;
  if (o_.gptq && o_.gptq_refine) j["gptq_refine"] = o_.gptq_refine;
  if (o_.gptq && o_.gptq_route_weighted) j["gptq_route_weighted"] = true;
  return j;
}

// Checks what calibration needs and loads the samples: before anything is written, so that bad
// calibration input leaves nothing behind. A resumed run reads the samples it was started with.
void Quantizer::prepare_samples() {
  if (o_.calib.empty()) {
    if (recipe_.layout != StoredLayout::Mxfp4Ct)
      fail<InvalidArgument>("--recipe {}: NVFP4 checkpoints carry calibrated input scales (W4A4 engines need them): give --calib FILE",
                            o_.recipe);
    if (o_.kv_cache_fp8) fail<InvalidArgument>("--kv-cache fp8: the K/V scales are calibrated: give --calib FILE");
    if (o_.gptq) fail<InvalidArgument>("--gptq works from the calibration inputs' Hessian: give --calib FILE");
    return;  // MXFP4 (with MSE search: unweighted)
  }
  const fs::path samples_file = partial_ / "calibration" / "samples.json";
  if (fs::exists(samples_file)) {
    for (const auto& s : read_json_file(samples_file)) samples_.push_back(s.get<std::vector<int32_t>>());
    return;
  }
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<ChatFormat> chat;
  if (fs::exists(o_.in_dir / "tokenizer.json")) tok = std::make_unique<Tokenizer>(Tokenizer::load(o_.in_dir));
  try {
    chat = std::make_unique<ChatFormat>(ChatFormat::load(o_.in_dir));
  } catch (const ModelError&) {
  }
  samples_ = load_calibration(o_.calib, o_.calib_samples, o_.calib_seq_len, tok.get(), chat.get(), in_->config.vocab_size);
}

void Quantizer::calibrate() {
  if (samples_.empty()) return;
  const ModelConfig& c = in_->config;
  const fs::path dir = partial_ / "calibration";
  fs::create_directories(dir);
  // The samples are kept, so that a resumed run calibrates on the same tokens.
  const fs::path samples_file = dir / "samples.json";
  if (!fs::exists(samples_file)) write_atomically(samples_file, nlohmann::json(samples_).dump());
  const auto& samples = samples_;
  calib_samples_ = int(samples.size());
  for (const auto& s : samples) calib_tokens_ += int64_t(s.size());
  stats_.assign(size_t(c.num_layers), LayerStats{});
  // Resume: the layers already calibrated, and the hidden states after the last of them.
  int first = 0;
  std::vector<float> hidden;
  for (; first < c.num_layers && read_layer_stats(dir / fmt::format("layer-{:05d}.bin", first), stats_[size_t(first)]); ++first) {
  }
  if (first > 0) {
    std::ifstream f(dir / fmt::format("hidden-{:05d}.bin", first - 1), std::ios::binary);
    hidden.resize(size_t(calib_tokens_ * c.hidden_size));
    if (!f.read(reinterpret_cast<char*>(hidden.data()), std::streamsize(hidden.size() * 4))) {
      first = 0;  // the hidden states did not survive: calibrate again from the start
      hidden.clear();
    }
  }
  if (first == c.num_layers) return;
  CalibrationOptions co;
  co.all_experts = o_.calib_all_experts;
  co.min_expert_tokens = o_.min_expert_tokens;
  co.rescue = o_.rescue_cold_experts;
  co.memory_limit = o_.memory_limit;
  co.keep_attention_inputs = o_.gptq && recipe_.attention;
  co.rerun_quantized = o_.gptq && o_.gptq_sequential;
  Calibrator cal(*in_, backend_, co);
  ActivationsFn gptq;
  if (o_.gptq)
    gptq = [&](int l, const LayerStats& st, const LayerActivations& acts, const RoutedRows& routed) {
      stats_[size_t(l)] = st;  // the per-tensor scale search may weigh by it
      gptq_layer_pass(l, acts, routed);
    };
  Progress bar(o_.progress, "calibrating", c.num_layers);
  bar.update(first, fmt::format("{} samples, {} tokens", samples.size(), calib_tokens_));
  const auto t0 = Clock::now();
  cal.run(samples, first, hidden, [&](int l, const LayerStats& st, const std::vector<float>& h) {
    stats_[size_t(l)] = st;
    // The hidden states first, then the statistics that mark the layer done.
    const fs::path hf = dir / fmt::format("hidden-{:05d}.bin", l), tmp = hf.string() + ".tmp";
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      f.write(reinterpret_cast<const char*>(h.data()), std::streamsize(h.size() * 4));
      if (!f) fail<IoError>("{}: write failed (disk full?)", tmp.string());
    }
    fs::rename(tmp, hf);
    write_layer_stats(dir / fmt::format("layer-{:05d}.bin", l), st);
    if (l > 0) fs::remove(dir / fmt::format("hidden-{:05d}.bin", l - 1));
    kill_point(fmt::format("calib-layer:{}", l));
    bar.update(l + 1, st.rescued.empty() ? std::string("layer done") : fmt::format("rescued {} cold experts", st.rescued.size()));
  }, gptq, [&](int l, BackendLayer& weights) { return gptq_quantized_layer(l, weights); });
  seconds_calibration_ = std::chrono::duration<double>(Clock::now() - t0).count();
}

// GPTQ of layer l's quantized modules on what calibration saw; the results are kept in
// calibration/gptq-layer-N.safetensors (written before the layer's statistics mark it done).
void Quantizer::gptq_layer_pass(int l, const LayerActivations& acts, const RoutedRows& routed) {
  const LayoutSpec& spec = layout_spec(recipe_.layout);
  std::vector<GptqJob> jobs;
  std::vector<size_t> index;
  for (size_t i = 0; i < modules_.size(); ++i) {
    const Module& m = modules_[i];
    if (m.layer != l || !m.quantize) continue;
    GptqJob j;
    j.name = m.name;
    j.w = m.w;
    j.expert = m.expert;
    j.target.format = spec.format == WeightFormat::Nvfp4 ? GptqTarget::Format::Nvfp4 : GptqTarget::Format::Mxfp4;
    j.target.search = o_.scale_search;
    j.target.rule = o_.mx_rule;
    if (spec.format == WeightFormat::Nvfp4) j.target.ws2 = group_global_scale(m);
    switch (m.role) {
      case Role::Q:
      case Role::K:
      case Role::V: j.input = GptqJob::Input::AttnIn; break;
      case Role::O: j.input = GptqJob::Input::AttnOut; break;
      case Role::W1:
      case Role::W3: j.input = GptqJob::Input::ExpertIn; break;
      case Role::W2:
        j.input = GptqJob::Input::ExpertMid;
        j.gate = &in_->layers[size_t(l)].w1[size_t(m.expert)];
        j.up = &in_->layers[size_t(l)].w3[size_t(m.expert)];
        break;
      default: continue;
    }
    jobs.push_back(std::move(j));
    index.push_back(i);
  }
  GptqOptions gptq_options;
  gptq_options.damp = o_.gptq_damp;
  gptq_options.act_order = o_.gptq_act_order;
  gptq_options.refine_sweeps = o_.gptq_refine;
  gptq_options.route_weighted = o_.gptq_route_weighted;
  gptq_results_.clear();  // the previous layer's (one layer's codes at a time)
  gptq_results_ = gptq_layer(jobs, acts, routed, backend_.pool(), gptq_options);
  gptq_jobs_ = std::move(jobs);
  gptq_modules_ = std::move(index);
  std::vector<TensorToWrite> tensors;
  ojson proxy = ojson::object();
  for (size_t k = 0; k < gptq_jobs_.size(); ++k) {
    const Module& m = modules_[gptq_modules_[k]];
    const auto& r = gptq_results_[k];
    tensors.push_back({m.name + ".packed", DType::U8, weight_shape(recipe_.layout, m.w->rows, m.w->cols), r.packed});
    tensors.push_back({m.name + ".scales", DType::U8, scale_shape(recipe_.layout, m.w->rows, m.w->cols), r.scales});
    proxy[m.name] = {r.stats.proxy_before, r.stats.proxy_after, r.stats.damp, r.tokens};
  }
  const fs::path file = partial_ / "calibration" / fmt::format("gptq-layer-{:05d}.safetensors", l), tmp = file.string() + ".tmp";
  write_safetensors(tmp, tensors, {{"gptq", proxy.dump()}});
  fs::rename(tmp, file);
  if (!o_.gptq_sequential) gptq_results_.clear();  // kept only to run the layer again quantized
}

// --gptq-sequential: layer l's weights with its GPTQ results in place of the modules they quantized
// (gate/up rebuilt as two parts per expert, so that a fused stack works too).
bool Quantizer::gptq_quantized_layer(int l, BackendLayer& weights) const {
  if (!o_.gptq_sequential || gptq_jobs_.empty()) return false;
  const LayerWeights& L = in_->layers[size_t(l)];
  const int64_t E = in_->config.num_experts;
  std::vector<WeightView> up_down(size_t(3 * E));  // per expert: w1, w3, w2 (the input's unless quantized)
  for (int64_t e = 0; e < E; ++e) {
    up_down[size_t(3 * e)] = L.w1[size_t(e)];
    up_down[size_t(3 * e + 1)] = L.w3[size_t(e)];
    up_down[size_t(3 * e + 2)] = L.w2[size_t(e)];
  }
  for (size_t k = 0; k < gptq_jobs_.size(); ++k) {
    const Module& m = modules_[gptq_modules_[k]];
    if (m.layer != l) fail<Error>("GPTQ results of layer {} offered for layer {}", m.layer, l);
    WeightView v = gptq_result_view(gptq_results_[k], *m.w, gptq_jobs_[k].target);
    switch (m.role) {
      case Role::Q: weights.q = std::move(v); break;
      case Role::K: weights.k = std::move(v); break;
      case Role::V: weights.v = std::move(v); break;
      case Role::O: weights.o = std::move(v); break;
      case Role::W1: up_down[size_t(3 * m.expert)] = std::move(v); break;
      case Role::W3: up_down[size_t(3 * m.expert + 1)] = std::move(v); break;
      case Role::W2: up_down[size_t(3 * m.expert + 2)] = std::move(v); break;
      default: break;
    }
  }
  weights.gate_up.parts = 2;
  weights.gate_up.views.clear();
  weights.down.parts = 1;
  weights.down.views.clear();
  for (int64_t e = 0; e < E; ++e) {
    weights.gate_up.views.push_back(up_down[size_t(3 * e)]);
    weights.gate_up.views.push_back(up_down[size_t(3 * e + 1)]);
    weights.down.views.push_back(up_down[size_t(3 * e + 2)]);
  }
  return true;
}

// A module's GPTQ codes and scales from its layer's file (opened once, shared by the writer threads).
const SafetensorsFile& Quantizer::gptq_file(int layer) {
  std::lock_guard lock(gptq_mutex_);
  auto& f = gptq_files_[layer];
  if (!f) f = std::make_unique<SafetensorsFile>(partial_ / "calibration" / fmt::format("gptq-layer-{:05d}.safetensors", layer));
  return *f;
}

const InputStats* Quantizer::input_stats(const Module& m) const {
  if (stats_.empty() || m.layer < 0) return nullptr;
  const LayerStats& s = stats_[size_t(m.layer)];
  switch (m.role) {
    case Role::Q:
    case Role::K:
    case Role::V: return &s.attn_in;
    case Role::O: return &s.attn_out;
    case Role::W1:
    case Role::W3:
      if (o_.calib_all_experts || s.expert_in[size_t(m.expert)].count > 0) return &s.expert_in[size_t(m.expert)];
      return &s.moe_in;
    case Role::W2: return s.expert_mid[size_t(m.expert)].count > 0 ? &s.expert_mid[size_t(m.expert)] : nullptr;
    default: return nullptr;
  }
}

// Rows of a module as fp32 (exact for BF16/F16/F32/FP8 inputs).
std::vector<float> rows_f32(const WeightView& w) {
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  dequant_rows(w, 0, w.rows, out.data());
  return out;
}

float amax_of(const std::vector<float>& v) {
  float a = 0;
  for (float x : v) a = std::max(a, std::fabs(x));
  return a;
}

double Quantizer::group_global_scale(const Module& m) {
  {
    std::lock_guard lock(group_mutex_);
    if (auto it = group_ws2_.find(m.group); it != group_ws2_.end()) return it->second;
  }
  // ModelOpt's rule: the max amax of the modules sharing an input (q/k/v; w1/w3), / (6 × 448).
  std::vector<const Module*> members;
  for (const auto& x : modules_)
    if (x.group == m.group && x.quantize) members.push_back(&x);
  double amax = 0;
  std::vector<std::vector<float>> rows;
  for (const Module* x : members) {
    rows.push_back(rows_f32(*x->w));
    amax = std::max(amax, double(amax_of(rows.back())));
  }
  double ws2 = nvfp4_global_scale(amax);
  if (o_.scale_search == ScaleSearch::Mse) {
    // The candidate that reconstructs the whole group best (weighted by the activations when asked).
    std::vector<std::vector<float>> weights(members.size());
    std::vector<Nvfp4Tensor> tensors;
    for (size_t i = 0; i < members.size(); ++i) {
      const InputStats* st = input_stats(*members[i]);
      if (o_.activation_weighted && st) weights[i] = st->energy();
      tensors.push_back({rows[i].data(), members[i]->w->rows, members[i]->w->cols, weights[i].empty() ? nullptr : weights[i].data()});
    }
    ws2 = search_nvfp4_global_scale(tensors, amax);
  }
  std::lock_guard lock(group_mutex_);
  return group_ws2_.emplace(m.group, ws2).first->second;
}

void Quantizer::quantize_module(const Module& m, std::vector<OutTensor>& out, double* rel_err) {
  const WeightView& w = *m.w;
  const LayoutSpec& spec = layout_spec(recipe_.layout);
  const std::vector<float> x = rows_f32(w);
  const InputStats* st = input_stats(m);
  const std::vector<float> cw = o_.scale_search == ScaleSearch::Mse && o_.activation_weighted && st ? st->energy() : std::vector<float>();
  const float* cwp = cw.empty() ? nullptr : cw.data();
  std::vector<uint8_t> packed(size_t(w.rows * w.cols / 2)), scales(size_t(w.rows * (w.cols / spec.group)));
  double scale2 = 0;
  if (spec.format == WeightFormat::Nvfp4) scale2 = group_global_scale(m);
  if (o_.gptq && m.layer >= 0) {
    const SafetensorsFile& f = gptq_file(m.layer);
    const TensorRef& p = f.tensors().at(m.name + ".packed");
    const TensorRef& sc = f.tensors().at(m.name + ".scales");
    if (p.nbytes != packed.size() || sc.nbytes != scales.size()) fail<Error>("{}: GPTQ result of another shape", m.name);
    std::memcpy(packed.data(), p.data, p.nbytes);
    std::memcpy(scales.data(), sc.data, sc.nbytes);
  } else if (spec.format == WeightFormat::Nvfp4) {
    quantize_nvfp4(x.data(), w.rows, w.cols, scale2, o_.scale_search, cwp, packed.data(), scales.data());
  } else {
    quantize_mxfp4(x.data(), w.rows, w.cols, o_.mx_rule, o_.scale_search, cwp, packed.data(), scales.data());
  }
  // The reconstruction error, for the report.
  WeightView q;
  q.format = spec.format;
  q.dtype = DType::U8;
  q.rows = w.rows;
  q.cols = w.cols;
  q.data = packed.data();
  q.row_bytes = w.cols / 2;
  q.scales = scales.data();
  q.scale_stride = w.cols / spec.group;
  q.block_cols = spec.group;
  q.global_scale = float(scale2);
  std::vector<float> row(static_cast<size_t>(w.cols));
  double num = 0, den = 0;
  for (int64_t r = 0; r < w.rows; ++r) {
    dequant_row_ref(q, r, row.data());
    for (int64_t c = 0; c < w.cols; ++c) {
      const double d = double(row[size_t(c)]) - double(x[size_t(r * w.cols + c)]);
      num += d * d;
      den += double(x[size_t(r * w.cols + c)]) * double(x[size_t(r * w.cols + c)]);
    }
  }
  *rel_err = den > 0 ? std::sqrt(num / den) : 0.0;
  const auto ws = weight_shape(recipe_.layout, w.rows, w.cols), ss = scale_shape(recipe_.layout, w.rows, w.cols);
  out.push_back({m.name + "." + std::string(spec.weight), DType::U8, ws, std::move(packed)});
  out.push_back({m.name + "." + std::string(spec.scale), spec.scale_dtype, ss, std::move(scales)});
  const std::vector<int64_t> scalar = spec.global_is_vector ? std::vector<int64_t>{1} : std::vector<int64_t>{};
  if (!spec.global_scale.empty())
    out.push_back({m.name + "." + std::string(spec.global_scale), DType::F32, scalar,
                   f32_bytes(spec.global_is_divisor ? float(1.0 / scale2) : float(scale2))});
  if (!spec.input_scale.empty()) {
    // input_scale = amax / (6 × 448) (never 0: an unseen input falls back to the layer's MoE input).
    float amax = st ? st->amax : 0.0f;
    if (!(amax > 0) && m.layer >= 0 && !stats_.empty()) amax = stats_[size_t(m.layer)].moe_in.amax;
    if (!(amax > 0) || !std::isfinite(amax)) amax = 1.0f;
    // ModelOpt: amax / (6 × 448); compressed-tensors the divisor (6 × 448) / amax, each rounded once.
    const double v = spec.global_is_divisor ? (6.0 * 448.0) / double(amax) : double(amax) / (6.0 * 448.0);
    out.push_back({m.name + "." + std::string(spec.input_scale), DType::F32, scalar, f32_bytes(float(v))});
  }
}

std::vector<OutTensor> Quantizer::produce(const Job& job) {
  std::vector<OutTensor> out;
  if (job.copy.rfind("@kv", 0) == 0) {  // calibrated FP8 KV scales: amax / 448, at least 1 (ModelOpt)
    const int l = std::stoi(job.copy.substr(3));
    const LayerStats& s = stats_[size_t(l)];
    const bool mo = recipe_.layout == StoredLayout::Nvfp4ModelOpt;
    const std::string p = fmt::format("model.layers.{}.self_attn.", l);
    out.push_back({p + (mo ? "k_proj.k_scale" : "k_scale"), DType::F32, {}, f32_bytes(std::max(s.k_amax / 448.0f, 1.0f))});
    out.push_back({p + (mo ? "v_proj.v_scale" : "v_scale"), DType::F32, {}, f32_bytes(std::max(s.v_amax / 448.0f, 1.0f))});
    return out;
  }
  if (job.module < 0) {
    const TensorRef& t = in_->checkpoint->get(job.copy);
    out.push_back({t.name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
    in_->checkpoint->release(t.name);
    return out;
  }
  const Module& m = modules_[size_t(job.module)];
  if (!m.quantize) {  // an unquantized module from a block-FP8 input: BF16
    const std::vector<float> x = rows_f32(*m.w);
    std::vector<uint8_t> b(x.size() * 2);
    for (size_t i = 0; i < x.size(); ++i) {
      const uint16_t v = f32_to_bf16(x[i]);
      std::memcpy(b.data() + 2 * i, &v, 2);
    }
    out.push_back({m.name + ".weight", DType::BF16, {m.w->rows, m.w->cols}, std::move(b)});
    return out;
  }
  quantize_module(m, out, &module_error_[size_t(job.module)]);
  in_->checkpoint->release(m.name + ".");  // what has been read need not stay resident
  return out;
}

std::string shard_name(size_t i, size_t n) {
  return n == 1 ? std::string("model.safetensors") : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
}

void Quantizer::write_shard(size_t i) {
  const Shard& s = shards_[i];
  const fs::path path = partial_ / shard_name(i, shards_.size());
  std::vector<std::vector<OutTensor>> results(s.jobs.size());
  backend_.pool().parallel_for(int64_t(s.jobs.size()), [&](int64_t b, int64_t e, int) {
    for (int64_t j = b; j < e; ++j) results[size_t(j)] = produce(s.jobs[size_t(j)]);
  });
  std::vector<TensorToWrite> view;
  for (const auto& r : results)
    for (const auto& t : r) view.push_back(t.to_write());
  const fs::path tmp = path.string() + ".tmp";
  write_safetensors(tmp, view, {{"format", "pt"}});
  kill_point(fmt::format("shard-written:{}", i));
  fs::rename(tmp, path);
  kill_point(fmt::format("shard:{}", i));
}

void Quantizer::finish() {
  // Configs: the input's config.json with this recipe's quantization_config.
  ojson cfg = ojson::parse(std::ifstream(o_.in_dir / "config.json"));
  cfg.erase("quantization_config");
  // The ModelOpt export format written (its field layout); m2 itself is named in the report.
  const std::string version = "0.43.0";
  if (recipe_.layout == StoredLayout::Nvfp4ModelOpt) {
    cfg["quantization_config"] = modelopt_nvfp4_quant_config(exclusions_, o_.kv_cache_fp8, version);
    write_atomically(partial_ / "hf_quant_config.json", modelopt_nvfp4_hf_quant_config(exclusions_, o_.kv_cache_fp8, version).dump(2));
  } else if (recipe_.layout == StoredLayout::Nvfp4Ct) {
    cfg["quantization_config"] = ct_nvfp4_quant_config(exclusions_);
  } else {
    cfg["quantization_config"] = ct_mxfp4_quant_config({"re:.*block_sparse_moe.experts.*"}, exclusions_);
  }
  if (o_.kv_cache_fp8 && recipe_.layout != StoredLayout::Nvfp4ModelOpt)
    cfg["quantization_config"]["kv_cache_scheme"] = {{"num_bits", 8}, {"type", "float"}, {"strategy", "tensor"},
                                                     {"dynamic", false}, {"symmetric", true}};
  write_atomically(partial_ / "config.json", cfg.dump(2));
  // The index, when sharded.
  if (shards_.size() > 1) {
    ojson map = ojson::object();
    size_t total = 0;
    for (size_t i = 0; i < shards_.size(); ++i) {
      SafetensorsFile f(partial_ / shard_name(i, shards_.size()));
      for (const auto& [name, t] : f.tensors()) map[name] = shard_name(i, shards_.size()), total += t.nbytes;
    }
    write_atomically(partial_ / "model.safetensors.index.json", ojson{{"metadata", {{"total_size", total}}}, {"weight_map", map}}.dump(2));
  }
  // Tokenizer, template, generation files: everything but the weights and the configs written above.
  for (const auto& e : fs::directory_iterator(o_.in_dir)) {
    const std::string n = e.path().filename().string();
    if (!e.is_regular_file() || e.path().extension() == ".safetensors" || n == "model.safetensors.index.json" ||
        n == "config.json" || n == "hf_quant_config.json" || n == "quantization_report.json")
      continue;
    fs::copy_file(e.path(), partial_ / n, fs::copy_options::overwrite_existing);
  }
  // The report.
  ojson rep;
  rep["producer"] = "m2 0.1.0 (m2 quantize)";
  rep["recipe"] = o_.recipe;
  rep["format"] = stored_layout_name(recipe_.layout);
  rep["options"] = options_json();
  rep["exclusions"] = exclusions_;
  int quantized = 0;
  for (const auto& m : modules_) quantized += m.quantize;
  rep["modules"] = {{"quantized", quantized}, {"unquantized", int(modules_.size()) - quantized}};
  // Summed in module order: the report is the same bytes from run to run.
  std::map<std::string, std::pair<double, int>> sums;
  for (size_t i = 0; i < modules_.size(); ++i) {
    const Module& m = modules_[i];
    if (!m.quantize) continue;
    const std::string group = m.role == Role::W1 || m.role == Role::W3 ? "experts w1/w3"
                              : m.role == Role::W2                     ? "experts w2"
                                                                       : "attention";
    sums[group].first += module_error_[i];
    sums[group].second += 1;
  }
  ojson errs = ojson::object();
  for (const auto& [g, v] : sums) errs[g] = {{"mean_relative_error", v.first / v.second}, {"modules", v.second}};
  rep["weight_error"] = errs;
  if (o_.gptq) {
    // The output error the inputs' Hessian predicts, round-to-nearest against GPTQ, by group.
    std::map<std::string, std::pair<double, int>> gain;
    std::map<std::string, int64_t> cols;
    for (const auto& m : modules_) cols[m.name] = m.w->cols;
    int raised = 0, thin = 0;
    for (int l = 0; l < in_->config.num_layers; ++l) {
      const ojson proxy = ojson::parse(gptq_file(l).metadata().at("gptq"));
      for (const auto& [name, v] : proxy.items()) {
        const std::string group = name.find(".experts.") == std::string::npos ? "attention"
                                  : name.ends_with(".w2")                      ? "experts w2"
                                                                               : "experts w1/w3";
        const double before = v[0], after = v[1];
        gain[group].first += before > 0 ? 1.0 - after / before : 0.0;
        gain[group].second += 1;
        raised += v[2].get<double>() > o_.gptq_damp;
        thin += v[3].get<int64_t>() < cols[name];
      }
    }
    ojson g = ojson::object();
    for (const auto& [k, v] : gain) g[k] = {{"mean_output_error_reduction", v.first / v.second}, {"modules", v.second}};
    rep["gptq"] = {{"damp", o_.gptq_damp}, {"act_order", o_.gptq_act_order}, {"sequential", o_.gptq_sequential}, {"refine_sweeps", o_.gptq_refine},
                   {"route_weighted", o_.gptq_route_weighted},
                   {"modules_needing_more_damping", raised}, {"modules_with_fewer_tokens_than_inputs", thin}, {"groups", g}};
    if (thin)
      notices_.push_back(fmt::format("GPTQ: {} modules saw fewer calibration tokens than they have inputs: their Hessians are "
                                     "rank-deficient and GPTQ fits the calibration text; give more calibration data",
                                     thin));
  }
  if (!stats_.empty()) {
    ojson layers = ojson::array();
    for (size_t l = 0; l < stats_.size(); ++l) {
      const LayerStats& s = stats_[l];
      int64_t cold = 0, min_tokens = INT64_MAX;
      for (int64_t t : s.expert_tokens) cold += t < o_.min_expert_tokens, min_tokens = std::min(min_tokens, t);
      layers.push_back({{"layer", l}, {"attn_in_amax", s.attn_in.amax}, {"moe_in_amax", s.moe_in.amax}, {"k_amax", s.k_amax},
                        {"v_amax", s.v_amax}, {"cold_experts", cold}, {"min_expert_tokens", min_tokens}, {"rescued", s.rescued}});
    }
    rep["calibration"] = {{"samples", calib_samples_}, {"tokens", calib_tokens_}, {"all_experts", o_.calib_all_experts}, {"layers", layers}};
  }
  rep["notices"] = notices_;
  for (const auto& n : notices_) fmt::print(stderr, "notice: {}\n", n);
  size_t bytes = 0;
  for (const auto& s : shards_) bytes += s.bytes;
  rep["bytes"] = {{"input", in_->checkpoint->bytes_on_disk()}, {"output", bytes}};
  write_atomically(partial_ / "quantization_report.json", rep.dump(2));
  // Timings and memory go to a file of their own: the report above is identical from run to run.
  struct rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  write_atomically(partial_ / "quantization_run.json",
                   ojson{{"seconds_calibration", seconds_calibration_}, {"seconds_quantization", seconds_quantization_},
                         {"peak_rss_mb", ru.ru_maxrss / 1024.0}, {"threads", backend_.pool().size()}}.dump(2));
}

void Quantizer::run() {
  if (!fs::is_directory(o_.in_dir)) fail<IoError>("{}: not a directory", o_.in_dir.string());
  partial_ = fs::path(o_.out_dir.string() + ".m2-partial");
  if (fs::exists(o_.out_dir)) fail<InvalidArgument>("{}: already exists; m2 quantize writes a new directory", o_.out_dir.string());
  in_ = std::make_unique<ModelWeights>(ModelWeights::load(o_.in_dir));
  for (const auto& n : in_->notices) fmt::print(stderr, "notice: {}\n", n);
  plan_modules();
  plan_shards();
  module_error_.assign(modules_.size(), std::nan(""));
  const ojson plan = {{"options", options_json()}, {"shards", shards_.size()}};
  // Enough disk for what remains to be written? Checked before anything is written.
  size_t need = 0;
  for (size_t i = 0; i < shards_.size(); ++i)
    if (!fs::exists(partial_ / shard_name(i, shards_.size()))) need += shards_[i].bytes;
  {
    const fs::path where = fs::exists(partial_) ? partial_ : fs::absolute(o_.out_dir).parent_path();
    struct statvfs sv{};
    if (::statvfs(where.c_str(), &sv) == 0) {
      size_t avail = size_t(sv.f_bavail) * size_t(sv.f_frsize);
      if (const char* f = std::getenv("M2_TEST_DISK_FREE")) avail = std::stoull(f);  // tests: a nearly full disk
      if (avail < need + need / 20 + (size_t(64) << 20))
        fail<IoError>("{}: {} free, the output needs {} (+5% and 64 MiB)", where.string(), human_bytes(double(avail)),
                      human_bytes(double(need)));
    }
  }
  if (fs::exists(partial_)) {
    if (!o_.resume)
      fail<InvalidArgument>("{} holds an interrupted run: add --resume to continue it, or remove it", partial_.string());
    const ojson before = ojson::parse(std::ifstream(partial_ / "plan.json"));
    if (before != plan)
      fail<InvalidArgument>("{}: the interrupted run used other options ({}); rerun them, or remove the directory",
                            partial_.string(), before["options"].dump());
    fmt::print(stderr, "m2 quantize: resuming {}\n", partial_.string());
    prepare_samples();
  } else {
    if (o_.resume) fmt::print(stderr, "m2 quantize: --resume: nothing to resume, starting\n");
    prepare_samples();  // validates the calibration input before anything is written
    fs::create_directories(partial_);
    write_atomically(partial_ / "plan.json", plan.dump(2));
  }
  fmt::print(stderr, "m2 quantize: {} → {} ({}), {} modules quantized, {} shards, {}\n", o_.in_dir.string(), o_.out_dir.string(),
             o_.recipe, std::count_if(modules_.begin(), modules_.end(), [](const Module& m) { return m.quantize; }), shards_.size(),
             human_bytes(double(need)));
  calibrate();
  const auto t0 = Clock::now();
  Progress bar(o_.progress, "quantizing ", int64_t(shards_.size()));
  for (size_t i = 0; i < shards_.size(); ++i) {
    if (!fs::exists(partial_ / shard_name(i, shards_.size()))) write_shard(i);
    bar.update(int64_t(i + 1), shard_name(i, shards_.size()));
  }
  seconds_quantization_ = std::chrono::duration<double>(Clock::now() - t0).count();
  // The weight errors of modules in shards written before an interruption, for the report.
  backend_.pool().parallel_for(int64_t(modules_.size()), [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const Module& m = modules_[size_t(i)];
      if (!m.quantize || !std::isnan(module_error_[size_t(i)])) continue;
      std::vector<OutTensor> out;
      quantize_module(m, out, &module_error_[size_t(i)]);
    }
  });
  finish();
  gptq_files_.clear();
  fs::remove_all(partial_ / "calibration");
  fs::remove(partial_ / "plan.json");
  fs::rename(partial_, o_.out_dir);
  struct rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  fmt::print(stderr, "m2 quantize: wrote {} (calibration {:.1f} s, quantization {:.1f} s, peak RSS {:.0f} MB)\n", o_.out_dir.string(),
             seconds_calibration_, seconds_quantization_, ru.ru_maxrss / 1024.0);
}

}  // namespace

void quantize(const QuantizeOptions& o) {
  Quantizer q(o);
  q.run();
}

}  // namespace m2
