// m2 eval --experts: how far each expert of a quantized model is from the reference's, as relative
// weight error (‖Ŵ − W‖ / ‖W‖ per projection and over the whole expert) and, given calibration
// tokens, as relative output error on the tokens the reference routes to it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "model/weights.h"

namespace m2 {

struct ExpertError {
  double w1 = 0, w2 = 0, w3 = 0, whole = 0;  // relative Frobenius errors
  double output = -1;                        // ‖y_q − y_r‖ / ‖y_r‖ on its routed tokens (−1: not measured)
  int64_t tokens = 0;                        // tokens routed to it during the output measurement
};

struct ExpertErrors {
  int layers = 0, experts = 0;
  std::vector<ExpertError> e;  // [layers * experts]
  bool has_output = false;
  const ExpertError& at(int l, int x) const { return e[size_t(l) * size_t(experts) + size_t(x)]; }
};

struct ErrorStats {
  double mean = 0, std = 0, min = 0, max = 0;
};
ErrorStats error_stats(const std::vector<double>& v);

// Weight errors of every expert of every layer (the two models must have the same shapes).
ExpertErrors expert_weight_errors(const ModelWeights& q, const ModelWeights& ref, CpuBackend& backend);
// Output errors: `samples` run through the reference layer by layer; each expert's routed inputs go
// through both its reference and its quantized weights.
void expert_output_errors(ExpertErrors& errors, const ModelWeights& q, const ModelWeights& ref, CpuBackend& backend,
                          const std::vector<std::vector<int32_t>>& samples);

// Plots: a layer × expert heatmap (one cell per expert) of `what` ("whole" or "output"), and a
// histogram of the per-projection and whole-expert weight errors.
std::string expert_heatmap_svg(const ExpertErrors& errors, const std::string& what);
std::string expert_histogram_svg(const ExpertErrors& errors);

}  // namespace m2
