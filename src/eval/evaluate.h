// m2 eval's text metrics: a model's perplexity on token ids, and against a reference model KL
// divergence, top-1 agreement and Δp, both models run side by side window by window (or layer by
// layer with `streaming`, for models larger than memory); logits are scored chunk by chunk and
// never kept.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "backend/backend.h"
#include "eval/metrics.h"
#include "model/weights.h"

namespace m2 {

// The windows perplexity is measured on: window k is ids[k·ctx, k·ctx + ctx + 1) (the last one
// shorter, at least 2 tokens); each scores its tokens after the first, given only its own earlier
// tokens. Every token but the first is scored exactly once (the windowing of
// models/tiny-m2-demo/reference-nll.safetensors).
std::vector<std::vector<int32_t>> eval_windows(const std::vector<int32_t>& ids, int64_t ctx);

struct EvalOptions {
  int64_t ctx = 1024;
  bool streaming = false;  // layer by layer over all windows, each layer's pages released after it
  int64_t chunk = 128;     // rows per step (and of logits held at once)
  std::function<void(int64_t done, int64_t total, const char* what)> progress;
  Backend* ref_backend = nullptr;  // runs the reference model (null: the same backend as the model)
};

// `ref` may be null: perplexity only. The two models must share the vocabulary.
EvalSummary evaluate(const ModelWeights& model, const ModelWeights* ref, Backend& backend, const std::vector<int32_t>& ids,
                     const EvalOptions& options);

}  // namespace m2
