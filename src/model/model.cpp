#include "model/model.h"

#include <cmath>

#include "core/error.h"

namespace m2 {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Model::Model(const ModelWeights& weights, Backend& backend, const ModelLimits& limits, int kv_block_size,
             const ShardSpec& shard, Collectives* collectives)
    : cfg_(weights.config), be_(backend), limits_(limits), block_size_(kv_block_size), comm_(collectives) {
  const auto& c = cfg_;
  if (block_size_ <= 0) fail<InvalidArgument>("KV block size must be positive, found {}", block_size_);
  if (limits_.max_tokens <= 0 || limits_.max_seqs <= 0 || limits_.max_logit_rows <= 0 || limits_.max_context <= 0)
    fail<InvalidArgument>("model limits must be positive: max_tokens {}, max_seqs {}, max_logit_rows {}, max_context {}",
                          limits_.max_tokens, limits_.max_seqs, limits_.max_logit_rows, limits_.max_context);
  if (limits_.max_context > c.max_position_embeddings)
    fail<InvalidArgument>("max context {} exceeds the model's max_position_embeddings = {}", limits_.max_context,
                          c.max_position_embeddings);
  if (limits_.max_block_entries <= 0)
    limits_.max_block_entries = limits_.max_seqs * ceil_div(limits_.max_context, block_size_);
  if (!shard.whole() && !comm_)
    fail<InvalidArgument>("a model shard (tensor {}, pipeline {}, expert {}) needs the collectives of its ranks",
                          shard.tp_size, shard.pp_size, shard.ep_size);
  w_ = be_.prepare(weights, shard);

  const int half = c.rotary_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i)
    inv_freq[size_t(i)] = float(1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.rotary_dim)));
  inv_freq_ = Buffer(be_, inv_freq.size() * 4);
  be_.upload(inv_freq_.view(DType::F32, {half}), inv_freq.data(), inv_freq.size() * 4);

  const int64_t M = limits_.max_tokens, S = limits_.max_seqs, R = limits_.max_logit_rows;
  const int64_t H = c.hidden_size, K = c.experts_per_token, E = c.num_experts, I = c.intermediate_size;
  auto f32 = [&](int64_t n) { return Buffer(be_, size_t(n) * 4); };
  ws_.ids = f32(M);
  ws_.positions = f32(M);
  ws_.slots = Buffer(be_, size_t(M) * 8);
  ws_.seqs = f32(S * 4);
  ws_.block_tables = f32(limits_.max_block_entries);
  ws_.logit_rows = f32(R);
  ws_.h = f32(M * H);
  ws_.x = f32(M * H);
  ws_.q = f32(M * c.q_dim());
  ws_.att = f32(M * c.q_dim());
  ws_.k = f32(M * c.kv_dim());
  ws_.v = f32(M * c.kv_dim());
  ws_.proj = f32(M * H);
  ws_.cos = f32(M * half);
  ws_.sin = f32(M * half);
  ws_.router = f32(M * E);
  ws_.route_ids = f32(M * K);
  ws_.route_w = f32(M * K);
  ws_.offsets = f32(E + 1);
  ws_.local_offsets = f32(E + 1);
  ws_.sums = Buffer(be_, size_t(2 * M) * 8);
  host_.offsets.resize(size_t(E + 1));
  ws_.slot_of = f32(M * K);
  ws_.x_perm = f32(M * K * H);
  ws_.y_perm = f32(M * K * H);
  ws_.gate_up = f32(M * K * 2 * I);
  ws_.act = f32(M * K * I);
  ws_.final_rows = f32(R * H);
  if (be_.device() != Device::Cpu || w_.dims.vocab_end - w_.dims.vocab_begin < c.vocab_size)
    ws_.logits = f32(R * c.vocab_size);
  host_.ids.resize(size_t(M));
  host_.positions.resize(size_t(M));
  host_.slots.resize(size_t(M));
  host_.seqs.resize(size_t(S));
  host_.block_tables.resize(size_t(limits_.max_block_entries));
  host_.logit_rows.resize(size_t(R));
  be_.reserve(M, limits_.max_context);
}

void Model::validate(const ForwardBatch& b, const PagedKv& kv) const {
  const int64_t T = int64_t(b.tokens.size());
  if (T == 0) fail<InvalidArgument>("forward: the batch has no tokens");
  if (T > limits_.max_tokens)
    fail<InvalidArgument>("forward: {} tokens exceed the model's limit of {} per step", T, limits_.max_tokens);
  if (int64_t(b.positions.size()) != T || int64_t(b.slots.size()) != T)
    fail<InvalidArgument>("forward: {} tokens but {} positions and {} slots", T, b.positions.size(), b.slots.size());
  if (int64_t(b.seqs.size()) > limits_.max_seqs)
    fail<InvalidArgument>("forward: {} sequences exceed the model's limit of {} per step", b.seqs.size(),
                          limits_.max_seqs);
  if (b.logit_rows() > limits_.max_logit_rows)
    fail<InvalidArgument>("forward: {} logit rows exceed the model's limit of {} per step", b.logit_rows(),
                          limits_.max_logit_rows);
  if (kv.block_size != block_size_ || kv.layers.empty() || kv.kv_dim != w_.dims.kv_dim)
    fail<InvalidArgument>("forward: KV cache of {} layers × {} dims in blocks of {}, expected {} dims in blocks of {}",
                          kv.layers.size(), kv.kv_dim, kv.block_size, w_.dims.kv_dim, block_size_);
  int64_t row = 0, entries = 0;
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    const SequenceStep& q = b.seqs[s];
    if (q.tokens <= 0) fail<InvalidArgument>("forward: sequence {} has no new tokens", s);
    if (q.context < q.tokens || q.context > limits_.max_context)
      fail<InvalidArgument>("forward: sequence {} has context {} for {} new tokens; the limit is {}", s, q.context,
                            q.tokens, limits_.max_context);
    const int64_t blocks = ceil_div(q.context, block_size_);
    if (int64_t(q.block_table.size()) < blocks)
      fail<InvalidArgument>("forward: sequence {} needs {} KV blocks for {} positions, its table lists {}", s, blocks,
                            q.context, q.block_table.size());
    for (int64_t i = 0; i < blocks; ++i)
      if (q.block_table[size_t(i)] < 0 || q.block_table[size_t(i)] >= kv.num_blocks)
        fail<InvalidArgument>("forward: sequence {} block-table entry {} is block {}, outside the cache's {} blocks", s,
                              i, q.block_table[size_t(i)], kv.num_blocks);
    entries += blocks;
    for (int64_t i = 0; i < q.tokens; ++i, ++row) {
      if (row >= T) fail<InvalidArgument>("forward: the sequences list more tokens than the batch's {}", T);
      const int32_t id = b.tokens[size_t(row)];
      if (id < 0 || id >= cfg_.vocab_size)
        fail<InvalidArgument>("forward: sequence {} token {} has id {}, outside the vocabulary [0, {})", s, i, id,
                              cfg_.vocab_size);
      const int64_t pos = q.context - q.tokens + i;
      const int64_t slot = int64_t(q.block_table[size_t(pos / block_size_)]) * block_size_ + pos % block_size_;
      if (b.positions[size_t(row)] != pos || b.slots[size_t(row)] != slot)
        fail<InvalidArgument>("forward: sequence {} token {} has position {} and slot {}, its block table gives {} and {}",
                              s, i, b.positions[size_t(row)], b.slots[size_t(row)], pos, slot);
    }
  }
  if (row != T) fail<InvalidArgument>("forward: the sequences list {} tokens, the batch has {}", row, T);
  if (entries > limits_.max_block_entries)
    fail<InvalidArgument>("forward: {} block-table entries exceed the model's limit of {}", entries,
                          limits_.max_block_entries);
}

void Model::stage_metadata(const ForwardBatch& b) {
  const int64_t T = int64_t(b.tokens.size()), S = int64_t(b.seqs.size());
  std::copy(b.tokens.begin(), b.tokens.end(), host_.ids.begin());
  std::copy(b.positions.begin(), b.positions.end(), host_.positions.begin());
  std::copy(b.slots.begin(), b.slots.end(), host_.slots.begin());
  int64_t row = 0, entries = 0, out = 0;
  attn_.max_context = 0;
  for (int64_t s = 0; s < S; ++s) {
    const SequenceStep& q = b.seqs[size_t(s)];
    const int64_t blocks = ceil_div(q.context, block_size_);
    host_.seqs[size_t(s)] = {int32_t(row), int32_t(q.tokens), int32_t(q.context), int32_t(entries)};
    std::copy_n(q.block_table.begin(), blocks, host_.block_tables.begin() + entries);
    if (q.logits == LogitsFor::All)
      for (int64_t i = 0; i < q.tokens; ++i) host_.logit_rows[size_t(out++)] = int32_t(row + i);
    else if (q.logits == LogitsFor::Last)
      host_.logit_rows[size_t(out++)] = int32_t(row + q.tokens - 1);
    attn_.max_context = std::max(attn_.max_context, q.context);
    row += q.tokens;
    entries += blocks;
  }
  be_.upload(ws_.ids.view(DType::I32, {T}), host_.ids.data(), size_t(T) * 4);
  be_.upload(ws_.positions.view(DType::I32, {T}), host_.positions.data(), size_t(T) * 4);
  be_.upload(ws_.slots.view(DType::I64, {T}), host_.slots.data(), size_t(T) * 8);
  attn_.seqs = ws_.seqs.view(DType::I32, {S, 4});
  be_.upload(attn_.seqs, host_.seqs.data(), size_t(S) * sizeof(AttentionSeq));
  attn_.block_tables = ws_.block_tables.view(DType::I32, {entries});
  be_.upload(attn_.block_tables, host_.block_tables.data(), size_t(entries) * 4);
  if (out > 0) be_.upload(ws_.logit_rows.view(DType::I32, {out}), host_.logit_rows.data(), size_t(out) * 4);
}

void Model::stage(const ForwardBatch& b, const PagedKv& kv) {
  validate(b, kv);
  stage_validated(b);
}

void Model::stage_validated(const ForwardBatch& b) {
  stage_metadata(b);
  staged_tokens_ = int64_t(b.tokens.size());
  staged_rows_ = b.logit_rows();
  const int half = cfg_.rotary_dim / 2;
  const int64_t M = staged_tokens_;
  be_.rope_table(ws_.positions.view(DType::I32, {M}), inv_freq_.view(DType::F32, {half}),
                 ws_.cos.view(DType::F32, {M, half}), ws_.sin.view(DType::F32, {M, half}));
}

void Model::embed(const TensorView& h) {
  expect_tensor(h, DType::F32, {staged_tokens_, cfg_.hidden_size}, "model hidden state");
  be_.embed(w_.embed, ws_.ids.view(DType::I32, {staged_tokens_}), h);
  if (hidden_hook) hidden_hook(0, h);
}

void Model::layer(int l, const PagedKv& kv, int kv_layer, const TensorView& h) {
  if (l < w_.dims.layer_begin || l >= w_.dims.layer_end)
    fail<InvalidArgument>("layer {} of a {}-layer model whose shard holds layers [{}, {})", l, cfg_.num_layers,
                          w_.dims.layer_begin, w_.dims.layer_end);
  if (kv_layer < 0 || kv_layer >= int(kv.layers.size()))
    fail<InvalidArgument>("KV layer {} of a cache with {} layers", kv_layer, kv.layers.size());
  expect_tensor(h, DType::F32, {staged_tokens_, cfg_.hidden_size}, "model hidden state");
  attention_block(l, h, kv, kv_layer);
  moe_block(l, h);
  if (hidden_hook) hidden_hook(l + 1, h);
}

BackendLayer Model::swap_layer(int l, BackendLayer layer) {
  if (l < w_.dims.layer_begin || l >= w_.dims.layer_end)
    fail<InvalidArgument>("swap_layer: layer {} is outside this shard's layers [{}, {})", l, w_.dims.layer_begin, w_.dims.layer_end);
  std::swap(w_.layers[size_t(l - w_.dims.layer_begin)], layer);
  return layer;
}

void Model::logits(const TensorView& h, float* logits) {
  const int64_t R = staged_rows_, H = cfg_.hidden_size;
  if (R == 0) return;
  expect_tensor(h, DType::F32, {staged_tokens_, H}, "model hidden state");
  // Final norm on the rows whose logits are wanted, then lm_head.
  const TensorView fin = ws_.final_rows.view(DType::F32, {R, H});  // [R, H]
  be_.gather_rows(h, ws_.logit_rows.view(DType::I32, {R}), fin);
  be_.rmsnorm(fin, w_.final_norm, fin, float(cfg_.rms_norm_eps));
  if (hidden_hook) hidden_hook(cfg_.num_layers + 1, fin);
  const ShardDims& d = w_.dims;
  if (d.vocab_end - d.vocab_begin < cfg_.vocab_size) {
    // Vocab-parallel lm_head: this rank's rows of the vocabulary, gathered on the group's rank 0.
    const TensorView part = ws_.logits.view(DType::F32, {R, d.vocab_end - d.vocab_begin});  // [R, this rank's vocab]
    be_.linear(w_.lm_head, fin, part);
    comm_->tp_gather_vocab(part, d.vocab_begin, logits, cfg_.vocab_size);
  } else if (be_.device() == Device::Cpu) {
    be_.linear(w_.lm_head, fin, TensorView(logits, DType::F32, {R, cfg_.vocab_size}));
  } else {
    const TensorView out = ws_.logits.view(DType::F32, {R, cfg_.vocab_size});
    be_.linear(w_.lm_head, fin, out);
    be_.download(logits, out, out.nbytes());
  }
}

void Model::forward(const ForwardBatch& b, const PagedKv& kv, float* logits_out) {
  const ShardDims& d = w_.dims;
  if (int(kv.layers.size()) != d.local_layers())
    fail<InvalidArgument>("forward: a KV cache of {} layers for a model (shard) of {} layers", kv.layers.size(),
                          d.local_layers());
  validate(b, kv);
  const int parts = microbatches(b);
  const int64_t T = int64_t(b.tokens.size()), S = int64_t(b.seqs.size()), V = cfg_.vocab_size;
  // Pipeline micro-batches: consecutive sequences with about T / parts tokens each, run one after
  // another, so that stage s + 1 works on part p while stage s works on part p + 1. Every rank
  // derives the same split from the same batch.
  int64_t row = 0, logit_row = 0, seq = 0;
  for (int p = 0; p < parts; ++p) {
    const int64_t left = parts - p, target = (T - row + left - 1) / left;
    int64_t end = seq, tokens = 0;
    while (end < S && (end == seq || (tokens < target && S - end > left - 1))) tokens += b.seqs[size_t(end++)].tokens;
    if (p + 1 == parts)
      while (end < S) tokens += b.seqs[size_t(end++)].tokens;
    const ForwardBatch part{b.tokens.subspan(size_t(row), size_t(tokens)), b.positions.subspan(size_t(row), size_t(tokens)),
                            b.slots.subspan(size_t(row), size_t(tokens)), b.seqs.subspan(size_t(seq), size_t(end - seq))};
    run_part(part, kv, row, logits_out + logit_row * V);
    row += tokens;
    logit_row += part.logit_rows();
    seq = end;
  }
  if (comm_) comm_->logits_to_root(logits_out, size_t(b.logit_rows() * V));
}

int Model::microbatches(const ForwardBatch& b) const {
  const ShardSpec& s = w_.shard;
  if (s.pp_size == 1 || int64_t(b.tokens.size()) < s.pp_microbatch_min_tokens) return 1;
  const int n = s.pp_microbatches > 0 ? s.pp_microbatches : s.pp_size;
  return int(std::min<int64_t>(n, int64_t(b.seqs.size())));
}

void Model::run_part(const ForwardBatch& b, const PagedKv& kv, int64_t row0, float* logits_out) {
  const ShardDims& d = w_.dims;
  stage_validated(b);  // a part of the batch forward() validated
  const TensorView h = ws_.h.view(DType::F32, {limits_.max_tokens, cfg_.hidden_size})
                           .slice(row0, staged_tokens_);  // [part tokens, H] its rows of the residual stream
  if (first_stage()) embed(h);
  else comm_->recv_from_previous_stage(h);
  for (int l = d.layer_begin; l < d.layer_end; ++l) layer(l, kv, l - d.layer_begin, h);
  if (!last_stage()) comm_->send_to_next_stage(h);
  else logits(h, logits_out);
}

void Model::attention_block(int l, const TensorView& h, const PagedKv& kv, int kv_layer) {
  const auto& c = cfg_;
  const ShardDims& d = w_.dims;
  const BackendLayer& L = w_.layers[size_t(l - d.layer_begin)];
  const int64_t M = h.dim(0), H = c.hidden_size, QD = d.q_dim, KVD = d.kv_dim;
  const int half = c.rotary_dim / 2;
  const float eps = float(c.rms_norm_eps);
  const TensorView x = ws_.x.view(DType::F32, {M, H});         // [M, H]
  const TensorView q = ws_.q.view(DType::F32, {M, QD});        // [M, local heads * head_dim]
  const TensorView k = ws_.k.view(DType::F32, {M, KVD});       // [M, local kv_heads * head_dim]
  const TensorView v = ws_.v.view(DType::F32, {M, KVD});       // [M, local kv_heads * head_dim]
  const TensorView att = ws_.att.view(DType::F32, {M, QD});    // [M, local heads * head_dim]
  const TensorView proj = ws_.proj.view(DType::F32, {M, H});   // [M, H]
  const TensorView cos = ws_.cos.view(DType::F32, {M, half});  // [M, rotary_dim / 2]
  const TensorView sin = ws_.sin.view(DType::F32, {M, half});  // [M, rotary_dim / 2]
  be_.rmsnorm(h, L.input_norm, x, eps);
  observe(l, Site::AttnIn, x);
  be_.linear(L.q, x, q);
  be_.linear(L.k, x, k);
  be_.linear(L.v, x, v);
  qk_norms(q, k, L);  // each over the whole projection (all heads)
  be_.rope(q, d.heads, c.head_dim, c.rotary_dim, cos, sin);
  be_.rope(k, d.kv_heads, c.head_dim, c.rotary_dim, cos, sin);
  observe(l, Site::Key, k);
  observe(l, Site::Value, v);
  be_.kv_store(kv, kv_layer, k, v, ws_.slots.view(DType::I64, {M}));
  be_.paged_attention(kv, kv_layer, q, att, attn_, d.heads, d.kv_heads, c.head_dim);
  observe(l, Site::AttnOut, att);
  be_.linear(L.o, att, proj);
  if (w_.shard.tp_size > 1) comm_->tp_all_reduce(proj);  // row-parallel o_proj: the heads' partial sums
  be_.add(h, proj);
}

void Model::qk_norms(const TensorView& q, const TensorView& k, const BackendLayer& L) {
  const float eps = float(cfg_.rms_norm_eps);
  if (w_.shard.tp_size == 1) {
    be_.rmsnorm(q, L.q_norm, q, eps);
    be_.rmsnorm(k, L.k_norm, k, eps);
    return;
  }
  // This rank holds a slice of each projection: its rows' sums of squares for q and k, added over
  // the ranks in one all-reduce, then each normalised by its whole width (a KV head replicated on
  // several ranks is counted once).
  const int64_t M = q.dim(0);
  const TensorView sums = ws_.sums.view(DType::F64, {2 * M});  // [q sums M | k sums M]
  be_.sum_squares(q, sums.slice(0, M));
  be_.sum_squares(k, sums.slice(M, M));
  comm_->tp_all_reduce(sums);
  be_.rmsnorm_with_sums(q, L.q_norm, sums.slice(0, M), double(cfg_.q_dim()), q, eps);
  be_.rmsnorm_with_sums(k, L.k_norm, sums.slice(M, M), double(cfg_.kv_dim()) * w_.dims.kv_replicas, k, eps);
}

// Routes every token, groups the (token, expert) pairs by expert, runs every expert of the step in
// one grouped call per projection, and adds the weighted outputs into the residual stream.
void Model::moe_block(int l, const TensorView& h) {
  const auto& c = cfg_;
  const ShardDims& d = w_.dims;
  const BackendLayer& L = w_.layers[size_t(l - d.layer_begin)];
  const int64_t M = h.dim(0), H = c.hidden_size, K = c.experts_per_token, E = c.num_experts;
  const int64_t S = M * K;
  const TensorView x = ws_.x.view(DType::F32, {M, H});               // [M, H]
  const TensorView router = ws_.router.view(DType::F32, {M, E});     // [M, E]
  const TensorView ids = ws_.route_ids.view(DType::I32, {M, K});     // [M, K]
  const TensorView wts = ws_.route_w.view(DType::F32, {M, K});       // [M, K]
  const TensorView offsets = ws_.offsets.view(DType::I32, {E + 1});  // [E + 1]
  const TensorView slot_of = ws_.slot_of.view(DType::I32, {S});      // [M * K]
  const TensorView x_perm = ws_.x_perm.view(DType::F32, {S, H});     // [M * K, H]
  const TensorView y_perm = ws_.y_perm.view(DType::F32, {S, H});     // [M * K, H]
  be_.rmsnorm(h, L.post_norm, x, float(c.rms_norm_eps));
  observe(l, Site::MoeIn, x);
  be_.linear(L.gate, x, router);  // fp32 router logits
  be_.route(router, L.router_bias, ids, wts);
  if (routing_hook) routing_hook(l, ids, wts);
  be_.moe_permute(x, ids, x_perm, offsets, slot_of);
  observe(l, Site::ExpertIn, x_perm, offsets);
  expert_products(l, x_perm, offsets, y_perm);
  if (w_.shard.whole() || w_.shard.tp_size == 1) {
    be_.moe_unpermute(y_perm, slot_of, wts, h);
    return;
  }
  // A shard's experts (or expert columns) give a partial sum of the block's output: summed over the
  // tensor-parallel group, then added to the residual stream, which stays identical on every rank.
  const TensorView part = ws_.proj.view(DType::F32, {M, H});  // [M, H]
  be_.zero(part);
  be_.moe_unpermute(y_perm, slot_of, wts, part);
  comm_->tp_all_reduce(part);
  be_.add(h, part);
}

void Model::expert_products(int l, const TensorView& x_perm, const TensorView& offsets, const TensorView& y_perm) {
  const ShardDims& d = w_.dims;
  const BackendLayer& L = w_.layers[size_t(l - d.layer_begin)];
  const int64_t S = x_perm.dim(0), I = d.intermediate, E = cfg_.num_experts;
  if (d.local_experts() == E) {
    const TensorView gu = ws_.gate_up.view(DType::F32, {S, 2 * I});  // [M * K, 2I]
    const TensorView act = ws_.act.view(DType::F32, {S, I});         // [M * K, I]
    be_.grouped_linear(L.gate_up, x_perm, offsets, gu);
    be_.swiglu(gu, act);
    observe(l, Site::ExpertMid, act, offsets);
    be_.grouped_linear(L.down, act, offsets, y_perm);
    return;
  }
  // Expert parallelism: this rank's experts hold rows [r0, r1) of the grouped inputs; the other rows
  // of y_perm are zero so that the combine adds nothing for them.
  be_.download(host_.offsets.data(), offsets, size_t(E + 1) * 4);
  const int64_t e0 = d.expert_begin, e1 = d.expert_end, r0 = host_.offsets[size_t(e0)], r1 = host_.offsets[size_t(e1)];
  if (r0 > 0) be_.zero(y_perm.slice(0, r0));
  if (r1 < S) be_.zero(y_perm.slice(r1, S - r1));
  if (r1 == r0) return;
  for (int64_t e = e0; e <= e1; ++e) host_.offsets[size_t(e - e0)] = host_.offsets[size_t(e)] - int32_t(r0);
  const TensorView local = ws_.local_offsets.view(DType::I32, {e1 - e0 + 1});  // [local experts + 1]
  be_.upload(local, host_.offsets.data(), local.nbytes());
  const TensorView gu = ws_.gate_up.view(DType::F32, {r1 - r0, 2 * I});  // [rows of this rank's experts, 2I]
  const TensorView act = ws_.act.view(DType::F32, {r1 - r0, I});         // [rows, I]
  be_.grouped_linear(L.gate_up, x_perm.slice(r0, r1 - r0), local, gu);
  be_.swiglu(gu, act);
  be_.grouped_linear(L.down, act, local, y_perm.slice(r0, r1 - r0));
}

}  // namespace m2
