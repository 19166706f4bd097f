// Calibration by layer streaming: every calibration token goes through layer 0, then layer 1, …, so
// each layer's weights are read once and only one layer (plus the activations) is resident. Records,
// per layer, what the quantized formats need: each linear's input amax (→ input_scale /
// input_global_scale) and per-channel energy (→ activation-weighted scale search), the K/V amax
// (→ k_scale / v_scale), and how many tokens each expert saw. Experts that saw too few are rescued
// by an all-expert pass over the layer's stored MoE inputs (or the run stops naming them).
#pragma once
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "model/weights.h"
#include "quant/gptq_layer.h"

namespace m2 {

class Tokenizer;
class ChatFormat;

// A linear's input statistics: amax, and Σ x² per input column (÷ count = energy).
struct InputStats {
  float amax = 0;
  int64_t count = 0;               // rows (tokens) seen
  std::vector<double> sumsq;       // [in features]
  void add(const float* x, int64_t rows, int64_t cols);
  std::vector<float> energy() const;  // mean x² per column (empty when nothing was seen)
};

struct LayerStats {
  InputStats attn_in, attn_out, moe_in;  // q/k/v, o_proj, router and (all-expert) experts
  float k_amax = 0, v_amax = 0;           // the K (after norm and RoPE) and V that enter the cache
  std::vector<InputStats> expert_in;      // [E] gate/up inputs: the tokens routed to each expert
  std::vector<InputStats> expert_mid;     // [E] down-projection inputs
  std::vector<int64_t> expert_tokens;     // [E] tokens routed to each expert
  std::vector<int> rescued;               // experts whose statistics come from the all-expert pass
};

struct CalibrationOptions {
  bool all_experts = false;   // every token through every expert (ModelOpt moe_calib_experts_ratio 1.0)
  int min_expert_tokens = 8;  // fewer → rescued (or an error when rescue is off)
  bool rescue = true;
  int chunk = 256;            // tokens per forward step
  size_t memory_limit = 0;    // bytes for activations; 0 = unbounded
  bool keep_attention_inputs = false;  // also keep the attention input and output (GPTQ of attention)
  bool rerun_quantized = false;        // keep each layer's input to run it again quantized (QuantizedLayerFn)
};

// A calibrated layer's activations and, per expert, the token rows routed to it and their routing
// weights (GPTQ).
using ActivationsFn = std::function<void(int layer, const LayerStats& stats, const LayerActivations& acts, const RoutedRows& routed)>;

// After on_activations: given layer l's weights as the model runs them, a caller that quantized the
// layer puts the quantized modules' views in their place and returns true. The layer then runs again
// on the same inputs with those weights, so that the next layer is calibrated on the quantized
// model's activations (GPTQ's sequential order). The views must stay valid until the next call.
using QuantizedLayerFn = std::function<bool(int layer, BackendLayer& weights)>;

// Calibration text → token sequences. Each file is FILE or FILE:WEIGHT: .txt (cut into seq_len
// chunks), .jsonl (one {"messages": [...]} rendered with the chat template, or {"text": ...} per
// line), .json (an array of token-id arrays). Samples are taken round-robin in proportion to the
// weights (1 when not given), each at most seq_len tokens, until every file has given each of its
// sequences once or `samples` are taken: a file that runs out first is taken again from its first
// sequence, so that its share holds (prose:1 and code:1 give as many code sequences as prose ones
// when the code file is the shorter).
std::vector<std::vector<int32_t>> load_calibration(const std::vector<std::string>& files, int samples, int seq_len,
                                                   const Tokenizer* tokenizer, const ChatFormat* chat, int32_t vocab);

class Calibrator {
 public:
  Calibrator(const ModelWeights& weights, CpuBackend& backend, const CalibrationOptions& options);
  ~Calibrator();

  // Runs layers [first, num_layers) over `samples`; `hidden` holds the hidden states before layer
  // `first` (empty when first == 0: the embedding is computed). After each layer,
  // `on_activations` (when set) sees what the layer's linears saw, then `on_layer(l, stats, hidden)`
  // lets the caller checkpoint (resume). With options.rerun_quantized, `quantized_layer` may replace
  // the layer by its quantized self before `hidden` moves on. Throws naming cold experts when rescue
  // is off.
  void run(const std::vector<std::vector<int32_t>>& samples, int first, std::vector<float>& hidden,
           const std::function<void(int layer, const LayerStats& stats, const std::vector<float>& hidden)>& on_layer,
           const ActivationsFn& on_activations = {}, const QuantizedLayerFn& quantized_layer = {});
  // Bytes of activations a run over `tokens` tokens keeps (for --memory-limit).
  size_t activation_bytes(int64_t tokens) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Binary state of one calibrated layer (resume); read_layer_stats returns false when absent/corrupt.
void write_layer_stats(const std::filesystem::path& file, const LayerStats& s);
bool read_layer_stats(const std::filesystem::path& file, LayerStats& s);

}  // namespace m2
