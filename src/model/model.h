// MiniMax-M2 forward pass (spec §1.5), written once against the Backend op interface. The model
// holds the backend's weights and a workspace sized once from its limits; the KV cache it reads and
// writes is paged and owned by the runtime.
#pragma once
#include <functional>
#include <vector>

#include "backend/backend.h"
#include "model/collectives.h"
#include "model/forward_batch.h"
#include "model/weights.h"

namespace m2 {

// The largest step the model is asked to run: its workspace is sized for these once.
struct ModelLimits {
  int64_t max_tokens = 512;        // new tokens of one step (all sequences)
  int64_t max_seqs = 64;           // sequences of one step
  int64_t max_logit_rows = 64;     // rows of logits one step returns
  int64_t max_context = 4096;      // positions one sequence may hold (≤ max_position_embeddings)
  int64_t max_block_entries = 0;   // block-table entries of one step; 0 = max_seqs × blocks of max_context
};

class Model {
 public:
  // A shard other than the whole model needs `collectives` (the ranks holding the other shards),
  // which must outlive the model.
  Model(const ModelWeights& weights, Backend& backend, const ModelLimits& limits, int kv_block_size,
        const ShardSpec& shard = {}, Collectives* collectives = nullptr);

  const ModelConfig& config() const { return cfg_; }
  const ModelLimits& limits() const { return limits_; }
  Backend& backend() { return be_; }
  const BackendWeights& weights() const { return w_; }
  const ShardDims& dims() const { return w_.dims; }
  bool first_stage() const { return w_.dims.layer_begin == 0; }
  bool last_stage() const { return w_.dims.layer_end == cfg_.num_layers; }
  int kv_block_size() const { return block_size_; }

  // Runs one step: the K/V of every new token is written to its slot of `kv`, and the logits of the
  // rows the batch asks for are written to `logits` (host memory, [batch.logit_rows(), vocab], in
  // batch order). A shard runs its layers (kv holds those) and every rank of the job must run the
  // same batch; the logits arrive on world rank 0 (other ranks' buffers are scratch). Checks the batch against the limits and the cache (InvalidArgument naming the
  // sequence and value) before touching anything. Does not allocate.
  void forward(const ForwardBatch& batch, const PagedKv& kv, float* logits);

  // Layer-at-a-time execution (calibration, streaming evaluation): stage a batch, then run the
  // embedding, each layer and the logits on hidden states the caller keeps between calls (h: F32
  // [batch tokens, hidden] in the backend's memory). `kv` may hold fewer layers than the model:
  // layer(l, kv, kv_layer, h) reads and writes kv.layers[kv_layer]. forward() is exactly these
  // (with the pipeline's hand-overs between stages). l must be one of the shard's layers.
  void stage(const ForwardBatch& batch, const PagedKv& kv);
  void embed(const TensorView& h);
  void layer(int l, const PagedKv& kv, int kv_layer, const TensorView& h);
  void logits(const TensorView& h, float* logits);
  // Puts `layer` in place of layer l's weights and returns the ones it held (calibration runs a layer
  // again with its quantized weights). The views must stay valid while they are in place.
  BackendLayer swap_layer(int l, BackendLayer layer);

  // Where activations can be observed (calibration): the input of q/k/v, of o_proj, of the MoE block
  // (router and every expert), of each expert's gate/up (grouped by expert: offsets I32 [E + 1]) and
  // down projections, and the K and V that go into the cache.
  enum class Site { AttnIn, AttnOut, MoeIn, ExpertIn, ExpertMid, Key, Value };
  std::function<void(int layer, Site site, const TensorView& x, const TensorView& expert_offsets)> activation_hook;

  // Called after the embedding (index 0), after each layer l (index l + 1), and after the final norm
  // (index num_layers + 1, the logit rows only) with the hidden state (backend memory, F32 [rows,
  // hidden]). For tests and `m2 eval`.
  std::function<void(int index, const TensorView& hidden)> hidden_hook;
  // Called after each layer's routing with the chosen experts (backend memory, I32 [rows, k]) and their
  // weights (F32 [rows, k]): for benchmarks (bytes actually read) and per-expert statistics.
  std::function<void(int layer, const TensorView& expert_ids, const TensorView& expert_weights)> routing_hook;

 private:
  void validate(const ForwardBatch& batch, const PagedKv& kv) const;
  // Pipeline micro-batches of a step (1 without pipeline parallelism or for small steps).
  int microbatches(const ForwardBatch& batch) const;
  // One micro-batch through this shard's layers: its rows [row0, row0 + tokens) of the residual stream.
  void run_part(const ForwardBatch& batch, const PagedKv& kv, int64_t row0, float* logits);
  void stage_metadata(const ForwardBatch& batch);
  // stage() of a batch (or a part of one) already validated: once per step, not once per part.
  void stage_validated(const ForwardBatch& batch);
  void attention_block(int layer, const TensorView& h, const PagedKv& kv, int kv_layer);
  // QK-norm: RMSNorm of q and of k, each over its whole projection (with tensor parallelism the
  // ranks' sums of squares are added first).
  void qk_norms(const TensorView& q, const TensorView& k, const BackendLayer& L);
  // The grouped expert products of this shard's experts: y_perm rows of other ranks' experts are 0.
  void expert_products(int layer, const TensorView& x_perm, const TensorView& offsets, const TensorView& y_perm);
  void moe_block(int layer, const TensorView& h);
  void observe(int layer, Site site, const TensorView& x, const TensorView& offsets = {}) {
    if (activation_hook) activation_hook(layer, site, x, offsets);
  }

  const ModelConfig cfg_;
  Backend& be_;
  ModelLimits limits_;
  int block_size_;
  BackendWeights w_;
  Collectives* comm_ = nullptr;
  Buffer inv_freq_;  // F32 [rotary_dim / 2], fp32 as HF computes it

  // Host staging of the step's metadata, uploaded once per step.
  struct Staging {
    std::vector<int32_t> ids, positions;      // [T]
    std::vector<int64_t> slots;               // [T]
    std::vector<AttentionSeq> seqs;           // [S]
    std::vector<int32_t> block_tables;        // [Σ blocks]
    std::vector<int32_t> logit_rows;          // [R] row of each logit
    std::vector<int32_t> offsets;             // [E + 1] expert offsets (expert parallelism)
  } host_;
  // Device copies of the metadata and the activations, sized for the limits. M = new tokens of the
  // step, K = experts per token, E = experts, R = logit rows.
  struct Workspace {
    Buffer ids, positions, slots;   // I32 [M], I32 [M], I64 [M]
    Buffer seqs, block_tables;      // I32 [S, 4], I32 [Σ blocks]
    Buffer logit_rows;              // I32 [R]
    Buffer h;                       // F32 [M, hidden] residual stream
    Buffer x;                       // F32 [M, hidden] normed input of a block
    Buffer q, att;                  // F32 [M, heads * head_dim]
    Buffer k, v;                    // F32 [M, kv_heads * head_dim]
    Buffer proj;                    // F32 [M, hidden] o_proj output; a shard's MoE partial sum
    Buffer cos, sin;                // F32 [M, rotary_dim / 2]
    Buffer router;                  // F32 [M, E] router logits
    Buffer route_ids;               // I32 [M, K]
    Buffer route_w;                 // F32 [M, K]
    Buffer offsets;                 // I32 [E + 1] first slot of each expert
    Buffer local_offsets;           // I32 [local experts + 1] (expert parallelism)
    Buffer sums;                    // F64 [2, M] sums of squares of q and k (tensor-parallel QK-norm)
    Buffer slot_of;                 // I32 [M * K] slot of each (token, choice)
    Buffer x_perm, y_perm;          // F32 [M * K, hidden] expert inputs / outputs grouped by expert
    Buffer gate_up;                 // F32 [M * K, 2 * intermediate]
    Buffer act;                     // F32 [M * K, intermediate]
    Buffer final_rows;              // F32 [R, hidden] final-norm output of the logit rows
    Buffer logits;                  // F32 [R, vocab] (device backends, vocab-parallel shards; else the caller's)
  } ws_;
  AttentionBatch attn_;
  int64_t staged_tokens_ = 0, staged_rows_ = 0;  // of the staged batch
};

}  // namespace m2
