// m2 quantize: a BF16/F16/F32 or block-FP8 MiniMax-M2 checkpoint → NVFP4 (ModelOpt or
// compressed-tensors layout) or MXFP4 (compressed-tensors), with layer-streaming calibration,
// sharded output written atomically, and resume after an interruption (identical bytes).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "quant/codec.h"

namespace m2 {

struct QuantizeOptions {
  std::filesystem::path in_dir, out_dir;
  // nvfp4-experts-only (ModelOpt), nvfp4-ct (everything but router and lm_head), mxfp4-experts.
  std::string recipe;
  std::vector<std::string> calib;       // FILE or FILE:WEIGHT (.txt, .jsonl, .json)
  int calib_samples = 64, calib_seq_len = 512;
  bool calib_all_experts = false;
  int min_expert_tokens = 8;
  bool rescue_cold_experts = true;
  bool kv_cache_fp8 = false;            // --kv-cache fp8: calibrated k_scale / v_scale per layer
  std::vector<int> keep_layers;         // whole blocks left unquantized
  std::vector<std::string> ignore;      // more modules left unquantized (globs, or re: patterns)
  ScaleSearch scale_search = ScaleSearch::Max;
  bool activation_weighted = false;     // Mse: errors weighted by the calibration inputs' per-column energy
  bool gptq = false;                    // GPTQ: rounding errors spread by the inputs' inverse Hessian (needs calibration)
  double gptq_damp = 0.01;              // relative damping of the Hessian
  bool gptq_act_order = false;          // GPTQ: columns by decreasing input energy
  bool gptq_sequential = false;         // GPTQ: each layer calibrated on the already-quantized layers' outputs
  int gptq_refine = 0;                  // GPTQ: coordinate-descent sweeps over the codes afterwards
  bool gptq_route_weighted = false;     // GPTQ: experts' Hessians weigh each token by its routing weight²
  MxRule mx_rule = MxRule::CompressedTensors;
  size_t max_shard_size = size_t(5) << 30;
  size_t memory_limit = 0;              // bytes for calibration activations (0 = unbounded)
  bool resume = false;
  int threads = 0;
  bool progress = true;
};

// Runs the whole pipeline; throws a typed Error naming what and where on bad input.
void quantize(const QuantizeOptions& options);

// The recipes by name, for --help and errors.
const std::vector<std::string>& quantize_recipes();

}  // namespace m2
