#include "model/model.h"

#include <cmath>

#include "core/error.h"

namespace m2 {

Model::Model(const ModelWeights& weights, Backend& backend) : w_(weights), be_(backend) {
  const auto& c = w_.config;
  inv_freq_.resize(size_t(c.rotary_dim / 2));
  for (int i = 0; i < c.rotary_dim / 2; ++i)
    inv_freq_[size_t(i)] = float(1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.rotary_dim)));
}

void Model::ensure_workspace(int64_t M, int64_t logits_rows) {
  const auto& c = w_.config;
  if (M > cap_tokens_) {
    cap_tokens_ = M;
    const size_t m = size_t(M);
    h_.resize(m * size_t(c.hidden_size));
    x_.resize(m * size_t(c.hidden_size));
    proj_.resize(m * size_t(c.hidden_size));
    q_.resize(m * size_t(c.q_dim()));
    att_.resize(m * size_t(c.q_dim()));
    k_.resize(m * size_t(c.kv_dim()));
    v_.resize(m * size_t(c.kv_dim()));
    router_.resize(m * size_t(c.num_experts));
    cos_.resize(m * size_t(c.rotary_dim / 2));
    sin_.resize(m * size_t(c.rotary_dim / 2));
    route_ids_.resize(m * size_t(c.experts_per_token));
    route_w_.resize(m * size_t(c.experts_per_token));
    const size_t routed = m * size_t(c.experts_per_token);
    expert_rows_.resize(routed);
    expert_w_.resize(routed);
    xe_.resize(routed * size_t(c.hidden_size));
    de_.resize(routed * size_t(c.hidden_size));
    ge_.resize(routed * size_t(c.intermediate_size));
    ue_.resize(routed * size_t(c.intermediate_size));
    expert_count_.resize(size_t(c.num_experts));
    expert_offset_.resize(size_t(c.num_experts) + 1);
  }
  if (int64_t(final_.size()) < logits_rows * c.hidden_size) final_.resize(size_t(logits_rows * c.hidden_size));
}

void Model::forward(std::span<const SequenceInput> batch, LogitsFor which, float* logits) {
  const auto& c = w_.config;
  const int64_t H = c.hidden_size, QD = c.q_dim(), KVD = c.kv_dim();
  int64_t M = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    const auto& in = batch[s];
    if (!in.cache) fail<InvalidArgument>("forward: sequence {} has no KV cache", s);
    if (in.tokens.empty()) fail<InvalidArgument>("forward: sequence {} has no new tokens", s);
    if (in.cache->length() + int64_t(in.tokens.size()) > in.cache->capacity())
      fail<InvalidArgument>("forward: sequence {} needs {} positions but its KV cache holds {}", s,
                            in.cache->length() + int64_t(in.tokens.size()), in.cache->capacity());
    for (size_t i = 0; i < in.tokens.size(); ++i)
      if (in.tokens[i] < 0 || in.tokens[i] >= c.vocab_size)
        fail<InvalidArgument>("forward: sequence {} token {} has id {}, outside the vocabulary [0, {})", s, i,
                              in.tokens[i], c.vocab_size);
    M += int64_t(in.tokens.size());
  }
  const int64_t out_rows = which == LogitsFor::AllTokens ? M : int64_t(batch.size());
  ensure_workspace(M, out_rows);
  int64_t max_capacity = 0;
  for (const auto& in : batch) max_capacity = std::max(max_capacity, in.cache->capacity());
  be_.reserve(M, max_capacity);
  if (ids_.size() < size_t(M)) ids_.resize(size_t(M));
  if (seqs_.size() < batch.size()) seqs_.resize(batch.size());
  if (logits_rows_.size() < size_t(out_rows)) logits_rows_.resize(size_t(out_rows));

  // Token ids, positions (RoPE tables), and the per-sequence attention layout.
  const int half = c.rotary_dim / 2;
  int64_t row = 0, out = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    const auto& in = batch[s];
    seqs_[s] = AttentionSequence{row, int64_t(in.tokens.size()), in.cache->length(), nullptr, nullptr};
    for (size_t i = 0; i < in.tokens.size(); ++i, ++row) {
      ids_[size_t(row)] = in.tokens[i];
      const float pos = float(in.cache->length() + int64_t(i));
      for (int j = 0; j < half; ++j) {
        const float theta = pos * inv_freq_[size_t(j)];  // fp32 angle, as HF computes it
        cos_[size_t(row * half + j)] = float(std::cos(double(theta)));
        sin_[size_t(row * half + j)] = float(std::sin(double(theta)));
      }
      if (which == LogitsFor::AllTokens || i + 1 == in.tokens.size()) logits_rows_[size_t(out++)] = row;
    }
  }

  float* h = h_.data();  // [M, H] residual stream
  be_.embed(w_.embed, ids_.data(), M, h);
  if (hidden_hook) hidden_hook(0, h, M);

  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = w_.layers[size_t(l)];
    // Attention block.
    be_.rmsnorm(h, L.input_norm.data(), x_.data(), M, H, float(c.rms_norm_eps));
    be_.linear(L.q, x_.data(), q_.data(), M);  // [M, QD]
    be_.linear(L.k, x_.data(), k_.data(), M);  // [M, KVD]
    be_.linear(L.v, x_.data(), v_.data(), M);  // [M, KVD]
    be_.rmsnorm(q_.data(), L.q_norm.data(), q_.data(), M, QD, float(c.rms_norm_eps));  // over all heads
    be_.rmsnorm(k_.data(), L.k_norm.data(), k_.data(), M, KVD, float(c.rms_norm_eps));
    be_.rope(q_.data(), M, c.num_heads, c.head_dim, c.rotary_dim, cos_.data(), sin_.data());
    be_.rope(k_.data(), M, c.num_kv_heads, c.head_dim, c.rotary_dim, cos_.data(), sin_.data());
    for (size_t s = 0; s < batch.size(); ++s) {
      KvCache& cache = *batch[s].cache;
      const int64_t past = cache.length(), n = seqs_[s].tokens, r0 = seqs_[s].token_begin;
      std::copy_n(k_.data() + r0 * KVD, n * KVD, cache.keys(l) + past * KVD);
      std::copy_n(v_.data() + r0 * KVD, n * KVD, cache.values(l) + past * KVD);
      seqs_[s].k_cache = cache.keys(l);
      seqs_[s].v_cache = cache.values(l);
    }
    be_.attention(q_.data(), att_.data(), seqs_.data(), int64_t(batch.size()), c.num_heads, c.num_kv_heads, c.head_dim);
    be_.linear(L.o, att_.data(), proj_.data(), M);  // [M, H]
    for (int64_t i = 0; i < M * H; ++i) h[i] += proj_[size_t(i)];
    // MoE block.
    be_.rmsnorm(h, L.post_norm.data(), x_.data(), M, H, float(c.rms_norm_eps));
    moe(L, M);
    if (hidden_hook) hidden_hook(l + 1, h, M);
  }
  for (auto& in : batch) in.cache->advance(int64_t(in.tokens.size()));

  // Final norm on the rows whose logits are wanted, then lm_head.
  for (int64_t i = 0; i < out_rows; ++i)
    std::copy_n(h + logits_rows_[size_t(i)] * H, H, final_.data() + i * H);
  be_.rmsnorm(final_.data(), w_.final_norm.data(), final_.data(), out_rows, H, float(c.rms_norm_eps));
  if (hidden_hook && which == LogitsFor::AllTokens) hidden_hook(c.num_layers + 1, final_.data(), out_rows);
  be_.linear(w_.lm_head, final_.data(), logits, out_rows);
}

// Routes every token, groups the (token, expert) pairs by expert, and runs each expert once over
// its tokens as a matrix-matrix product; adds the weighted outputs into the residual stream.
void Model::moe(const LayerWeights& L, int64_t M) {
  const auto& c = w_.config;
  const int64_t H = c.hidden_size, I = c.intermediate_size, K = c.experts_per_token, E = c.num_experts;
  be_.linear(L.gate, x_.data(), router_.data(), M);  // [M, E] fp32 logits
  be_.route(router_.data(), L.router_bias.data(), M, int(E), int(K), route_ids_.data(), route_w_.data());

  std::fill(expert_count_.begin(), expert_count_.end(), 0);
  for (int64_t i = 0; i < M * K; ++i) ++expert_count_[size_t(route_ids_[size_t(i)])];
  expert_offset_[0] = 0;
  for (int64_t e = 0; e < E; ++e) expert_offset_[size_t(e + 1)] = expert_offset_[size_t(e)] + expert_count_[size_t(e)];
  std::fill(expert_count_.begin(), expert_count_.end(), 0);
  for (int64_t t = 0; t < M; ++t)
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = route_ids_[size_t(t * K + j)];
      const int64_t slot = expert_offset_[size_t(e)] + expert_count_[size_t(e)]++;
      expert_rows_[size_t(slot)] = int32_t(t);
      expert_w_[size_t(slot)] = route_w_[size_t(t * K + j)];
      std::copy_n(x_.data() + t * H, H, xe_.data() + slot * H);
    }
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = expert_count_[size_t(e)], s0 = expert_offset_[size_t(e)];
    if (n == 0) continue;
    be_.linear(L.w1[size_t(e)], xe_.data() + s0 * H, ge_.data() + s0 * I, n);  // [n, I]
    be_.linear(L.w3[size_t(e)], xe_.data() + s0 * H, ue_.data() + s0 * I, n);  // [n, I]
    be_.silu_mul(ge_.data() + s0 * I, ue_.data() + s0 * I, ge_.data() + s0 * I, n * I);
    be_.linear(L.w2[size_t(e)], ge_.data() + s0 * I, de_.data() + s0 * H, n);  // [n, H]
  }
  float* h = h_.data();
  for (int64_t slot = 0; slot < M * K; ++slot) {
    const float wgt = expert_w_[size_t(slot)];
    float* hr = h + int64_t(expert_rows_[size_t(slot)]) * H;
    const float* d = de_.data() + slot * H;
    for (int64_t i = 0; i < H; ++i) hr[i] += wgt * d[i];
  }
}

}  // namespace m2
