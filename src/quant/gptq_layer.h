// GPTQ over one layer during calibration: each quantized linear gets the Gram matrix of the inputs it
// saw (q/k/v the attention input; o_proj the attention output; an expert's w1/w3 the MoE inputs of
// the tokens routed to it, or of every token; its w2 the SwiGLU activations of those tokens through
// its w1/w3 as quantized, as the quantized model computes them) and is quantized by gptq_quantize. Modules sharing an input share its matrix.
#pragma once
#include <span>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "quant/gptq.h"
#include "quant/weight.h"

namespace m2 {

// What one calibrated layer saw (host memory, row-major, one row per calibration token).
struct LayerActivations {
  int64_t tokens = 0;
  std::span<const float> attn_in;   // [tokens, hidden] (empty when attention is not quantized)
  std::span<const float> attn_out;  // [tokens, heads × head_dim] (likewise)
  std::span<const float> moe_in;    // [tokens, hidden]
};

struct GptqJob {
  enum class Input { AttnIn, AttnOut, ExpertIn, ExpertMid };
  std::string name;
  const WeightView* w = nullptr;
  Input input = Input::AttnIn;
  int expert = -1;
  const WeightView* gate = nullptr;  // ExpertMid: the expert's w1 and w3 (its input is silu(x w1ᵀ) ⊙ x w3ᵀ)
  const WeightView* up = nullptr;
  GptqTarget target;                 // NVFP4: ws2 set
};

struct GptqModuleResult {
  std::vector<uint8_t> packed, scales;
  GptqResult stats;
  int64_t tokens = 0;  // rows of its input
};

// A result as a weight the backend runs (the target format; data and scales stay owned by `r`),
// in place of `original` (its name and shape).
WeightView gptq_result_view(const GptqModuleResult& r, const WeightView& original, const GptqTarget& target);

// Per expert e: rows[e] the token rows it sees (empty: every token) and weights[e] their routing
// weights (aligned with rows[e]; empty when rows[e] is).
struct RoutedRows {
  std::vector<std::vector<int32_t>> rows;
  std::vector<std::vector<float>> weights;
};

// With options.route_weighted, an expert's w1/w3 and w2 Hessians weigh each token by the square of
// its routing weight: the expert's output reaches the layer's output multiplied by that weight, so
// this is the layer output's error rather than the expert's.
std::vector<GptqModuleResult> gptq_layer(const std::vector<GptqJob>& jobs, const LayerActivations& acts, const RoutedRows& routed,
                                         ThreadPool& pool, const GptqOptions& options);

}  // namespace m2
