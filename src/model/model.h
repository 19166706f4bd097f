// MiniMax-M2 forward pass (spec §1.5), written once against the Backend op interface.
#pragma once
#include <functional>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace m2 {

// One sequence's new tokens in a batch; its cache receives them.
struct SequenceInput {
  KvCache* cache = nullptr;
  std::span<const int32_t> tokens;
};

enum class LogitsFor { AllTokens, LastToken };

class Model {
 public:
  Model(const ModelWeights& weights, Backend& backend);

  const ModelConfig& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }

  // Runs every sequence's new tokens as one batch (prefill and decode alike) and appends them to the
  // caches. logits: AllTokens → [Σ tokens, vocab] in batch order; LastToken → [sequences, vocab].
  // Reuses its workspace: after the first call of a given size it does not allocate.
  void forward(std::span<const SequenceInput> batch, LogitsFor which, float* logits);

  // Called after the embedding (index 0), after each layer l (index l + 1) and after the final norm
  // (index num_layers + 1) with the [tokens, hidden] hidden state. For tests and `m2 eval`.
  std::function<void(int index, const float* hidden, int64_t tokens)> hidden_hook;

 private:
  void ensure_workspace(int64_t tokens, int64_t logits_rows);
  void moe(const LayerWeights& L, int64_t M);

  const ModelWeights& w_;
  Backend& be_;
  std::vector<float> inv_freq_;  // [rotary_dim / 2], fp32 as HF computes it
  // Workspace, [capacity rows, width]:
  int64_t cap_tokens_ = 0;
  std::vector<float> h_, x_, q_, k_, v_, att_, proj_, router_, cos_, sin_, route_w_, final_;
  std::vector<int32_t> ids_, route_ids_, expert_count_, expert_offset_, expert_rows_;
  std::vector<float> xe_, ge_, ue_, de_, expert_w_;
  std::vector<AttentionSequence> seqs_;
  std::vector<int64_t> logits_rows_;
};

}  // namespace m2
