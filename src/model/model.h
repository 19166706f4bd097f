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
  // Workspace for up to cap_tokens_ = M rows; K = experts_per_token.
  int64_t cap_tokens_ = 0;
  std::vector<float> h_;         // [M, hidden] residual stream
  std::vector<float> x_;         // [M, hidden] normed input of a block
  std::vector<float> q_;         // [M, heads * head_dim]
  std::vector<float> k_, v_;     // [M, kv_heads * head_dim]
  std::vector<float> att_;       // [M, heads * head_dim] attention output
  std::vector<float> proj_;      // [M, hidden] o_proj output
  std::vector<float> router_;    // [M, experts] router logits (fp32)
  std::vector<float> cos_, sin_; // [M, rotary_dim / 2] RoPE tables of each row's position
  std::vector<float> route_w_;   // [M, K] renormalised expert weights
  std::vector<float> final_;     // [logit rows, hidden] final-norm output
  std::vector<int32_t> ids_;           // [M] token ids
  std::vector<int32_t> route_ids_;     // [M, K] selected experts
  std::vector<int32_t> expert_count_;  // [experts] routed rows per expert
  std::vector<int32_t> expert_offset_; // [experts + 1] first slot of each expert
  std::vector<int32_t> expert_rows_;   // [M * K] token row of each slot (grouped by expert)
  std::vector<float> expert_w_;        // [M * K] routing weight of each slot
  std::vector<float> xe_, de_;         // [M * K, hidden] expert inputs / outputs, grouped by expert
  std::vector<float> ge_, ue_;         // [M * K, intermediate] gate / up projections
  std::vector<AttentionSequence> seqs_;
  std::vector<int64_t> logits_rows_;
};

}  // namespace m2
