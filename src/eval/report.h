// m2 eval's reports: Markdown tables (the layout of published quantized-model cards) and JSON.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/expert_error.h"
#include "eval/metrics.h"

namespace m2 {

struct EvalInputs {
  std::string model, ref, input;
  int64_t ctx = 0;
  bool streaming = false;
};
// | PPL ref | PPL | ΔPPL % | KLD mean / median / p95 / p99 | top-1 | KLD > 1 | and the Δp line.
std::string eval_markdown(const EvalSummary& s, const EvalInputs& in);
// Top-level keys: ppl, ref_ppl, ppl_delta_pct, kld_mean, kld_median, kld_p90, kld_p95, kld_p99,
// kld_max, kld_gt1, top1 (a fraction), tokens, dp_*; and the inputs.
nlohmann::ordered_json eval_json(const EvalSummary& s, const EvalInputs& in);

struct ExpertInputs {
  std::string model, ref;
  std::vector<std::string> calib;
};
// Mean / std / min / max of each projection's error and the whole expert's (and the output
// error), the worst experts, and each layer's mean.
std::string experts_markdown(const ExpertErrors& e, const ExpertInputs& in);
nlohmann::ordered_json experts_json(const ExpertErrors& e, const ExpertInputs& in);

}  // namespace m2
