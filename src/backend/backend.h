// The op interface the model is written against. One implementation per device (cpu/ today; the
// CUDA backend implements the same ops over device pointers). Shapes are row-major, fp32 activations.
#pragma once
#include <cstdint>

#include "quant/weight.h"

namespace m2 {

// Where one sequence's new tokens sit in a batch, and where its KV cache is.
struct AttentionSequence {
  int64_t token_begin = 0;  // first row of this sequence in the batch's q/out
  int64_t tokens = 0;       // new tokens
  int64_t past = 0;         // tokens already in the cache before these (their positions start here)
  const float* k_cache = nullptr;  // [past + tokens, kv_dim] including the new tokens
  const float* v_cache = nullptr;  // [past + tokens, kv_dim]
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Sizes scratch space for batches of up to `tokens` rows attending over up to `context` positions,
  // so that later calls within those bounds do not allocate.
  virtual void reserve(int64_t tokens, int64_t context) = 0;

  // y[t, :] = x[t, :] · Wᵀ. x: [tokens, w.cols], y: [tokens, w.rows].
  virtual void linear(const WeightView& w, const float* x, float* y, int64_t tokens) = 0;
  // out[i, :] = table[ids[i], :]. out: [n, table.cols].
  virtual void embed(const WeightView& table, const int32_t* ids, int64_t n, float* out) = 0;
  // y = weight ⊙ x · rsqrt(mean(x²) + eps) per row. x, y: [rows, dim] (may alias).
  virtual void rmsnorm(const float* x, const float* weight, float* y, int64_t rows, int64_t dim, float eps) = 0;
  // NeoX RoPE on the first rotary_dim dims of each head, in place. x: [tokens, heads * head_dim];
  // cos/sin: [tokens, rotary_dim / 2].
  virtual void rope(float* x, int64_t tokens, int heads, int head_dim, int rotary_dim, const float* cos,
                    const float* sin) = 0;
  // Causal GQA attention. q: [T, heads * head_dim]; out: [T, heads * head_dim]; scale = 1/sqrt(head_dim).
  virtual void attention(const float* q, float* out, const AttentionSequence* seqs, int64_t num_seqs, int heads,
                         int kv_heads, int head_dim) = 0;
  // Router: sigmoid(logits) in fp32; top-k by sigmoid + bias; weights = unbiased scores renormalised.
  // logits: [tokens, experts]; ids, weights: [tokens, k].
  virtual void route(const float* logits, const float* bias, int64_t tokens, int experts, int k, int32_t* ids,
                     float* weights) = 0;
  // out = silu(gate) ⊙ up. gate, up, out: [n].
  virtual void silu_mul(const float* gate, const float* up, float* out, int64_t n) = 0;
};

}  // namespace m2
