// m2 quantize IN_DIR OUT_DIR --recipe NAME [--calib FILE…]: BF16/F16/F32 or block-FP8 → NVFP4
// (ModelOpt or compressed-tensors) or MXFP4 (compressed-tensors). The flags map onto QuantizeOptions.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/units.h"
#include "quant/quantizer.h"

namespace m2::cli {

namespace {

struct QuantizeFlags {
  QuantizeOptions o;
  std::string keep_layers, scale_search = "max", mx_rule = "ct", kv_cache, max_shard = "5GB", memory_limit;
  bool no_rescue = false, quiet = false;
};

std::vector<int> parse_layers(const std::string& text) {
  std::vector<int> out;
  size_t at = 0;
  while (at < text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, comma - at);
    size_t used = 0;
    int v = -1;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 0)
      fail<InvalidArgument>("--keep-layers '{}': expected layer numbers separated by commas, e.g. 0,61", text);
    out.push_back(v);
    at = comma + 1;
  }
  return out;
}

int quantize_main(QuantizeFlags& f) {
  QuantizeOptions& o = f.o;
  if (!f.keep_layers.empty()) o.keep_layers = parse_layers(f.keep_layers);
  if (f.scale_search == "max") o.scale_search = ScaleSearch::Max;
  else if (f.scale_search == "mse") o.scale_search = ScaleSearch::Mse;
  else if (f.scale_search == "mse-weighted") o.scale_search = ScaleSearch::Mse, o.activation_weighted = true;
  else fail<InvalidArgument>("--scale-search '{}': expected max, mse or mse-weighted", f.scale_search);
  if (o.activation_weighted && o.calib.empty())
    fail<InvalidArgument>("--scale-search mse-weighted weighs errors by the calibration activations: give --calib FILE");
  if (f.mx_rule == "ct") o.mx_rule = MxRule::CompressedTensors;
  else if (f.mx_rule == "ocp") o.mx_rule = MxRule::Ocp;
  else fail<InvalidArgument>("--mx-rule '{}': expected ct or ocp", f.mx_rule);
  if (f.kv_cache == "fp8") o.kv_cache_fp8 = true;
  else if (!f.kv_cache.empty() && f.kv_cache != "none") fail<InvalidArgument>("--kv-cache '{}': expected fp8 or none", f.kv_cache);
  o.max_shard_size = parse_size(f.max_shard, "--max-shard-size");
  if (o.max_shard_size < (size_t(1) << 20)) fail<InvalidArgument>("--max-shard-size {}: at least 1MiB", f.max_shard);
  if (!f.memory_limit.empty()) o.memory_limit = parse_size(f.memory_limit, "--memory-limit");
  o.rescue_cold_experts = !f.no_rescue;
  o.progress = !f.quiet;
  quantize(o);
  return 0;
}

}  // namespace

Runner add_quantize(CLI::App& app) {
  auto f = std::make_shared<QuantizeFlags>();
  QuantizeOptions& o = f->o;
  app.add_option("in_dir", o.in_dir, "BF16/F16/F32 or block-FP8 checkpoint directory")->required();
  app.add_option("out_dir", o.out_dir, "Output directory (must not exist)")->required();
  app.add_option("--recipe", o.recipe,
                 "nvfp4-experts-only (ModelOpt; experts NVFP4, the rest BF16) | nvfp4-ct (compressed-tensors; all but "
                 "router and lm_head) | mxfp4-experts (compressed-tensors MXFP4 experts, calibration-free)")
      ->required();
  app.add_option("--calib", o.calib,
                 "Calibration data: FILE or FILE:WEIGHT, .txt (plain text), .jsonl ({\"messages\": …} rendered with the "
                 "chat template, or {\"text\": …}), .json (array of token-id arrays); repeatable. Files are mixed in "
                 "proportion to their weights (default 1); a file that runs out first is reused from its start, until "
                 "every file has given all its sequences (or --calib-samples are taken)");
  app.add_option("--calib-samples", o.calib_samples, "Calibration sequences")->capture_default_str();
  app.add_option("--calib-seq-len", o.calib_seq_len, "Tokens per calibration sequence")->capture_default_str();
  app.add_flag("--calib-all-experts", o.calib_all_experts,
               "Every calibration token through every expert for the statistics (the layer output keeps the real top-k)");
  app.add_option("--min-expert-tokens", o.min_expert_tokens, "Experts that saw fewer tokens are rescued (or the run stops)")
      ->capture_default_str();
  app.add_flag("--no-rescue", f->no_rescue, "Stop, naming the cold experts, instead of an all-expert pass over their layer");
  app.add_option("--kv-cache", f->kv_cache, "fp8: write calibrated per-layer k_scale / v_scale");
  app.add_option("--keep-layers", f->keep_layers, "Whole blocks left unquantized, e.g. 0,61");
  app.add_option("--ignore", o.ignore, "More modules left unquantized: a glob (*, ?) or re:REGEX; repeatable");
  app.add_option("--scale-search", f->scale_search,
                 "max (the published rules) | mse (block and per-tensor scales chosen to minimise the reconstruction "
                 "error) | mse-weighted (the error weighted by the calibration activations' per-channel energy)")
      ->capture_default_str();
  app.add_flag("--gptq", o.gptq,
               "GPTQ: quantize column by column, spreading each rounding error by the inverse Hessian of the "
               "calibration inputs (minimises the output error rather than the weight error)");
  app.add_option("--gptq-damp", o.gptq_damp, "GPTQ: relative damping of the Hessian")->capture_default_str();
  app.add_flag("--gptq-act-order", o.gptq_act_order,
               "GPTQ: quantize columns by decreasing input energy (diag of the Hessian) instead of in stored order");
  app.add_option("--gptq-refine", o.gptq_refine,
                 "GPTQ: coordinate-descent sweeps over the codes afterwards (each code set to the one that minimises "
                 "the output error with the others fixed; 0 = none)")
      ->capture_default_str();
  app.add_flag("--gptq-route-weighted", o.gptq_route_weighted,
               "GPTQ: weigh each token in an expert's Hessians by the square of its routing weight (the error of the "
               "layer's output rather than of the expert's)");
  app.add_flag("--gptq-sequential", o.gptq_sequential,
               "GPTQ: calibrate each layer on the outputs of the layers before it as quantized (GPTQ's reference order) "
               "instead of the original model's");
  app.add_option("--mx-rule", f->mx_rule, "MXFP4 exponent rule: ct (compressed-tensors / vLLM) | ocp (OCP MX v1.0)")
      ->capture_default_str();
  app.add_option("--max-shard-size", f->max_shard, "Largest output shard")->capture_default_str();
  app.add_option("--memory-limit", f->memory_limit, "Largest calibration activation memory (e.g. 8GiB); more is refused");
  app.add_flag("--resume", o.resume, "Continue an interrupted run from OUT_DIR.m2-partial");
  app.add_option("--threads,-t", o.threads, "Threads (0 = all cores)")->capture_default_str();
  app.add_flag("--quiet,-q", f->quiet, "No progress bars");
  return [f] { return quantize_main(*f); };
}

}  // namespace m2::cli
