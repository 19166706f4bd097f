// The op interface the model is written against, and what a backend owns: memory (allocation,
// upload, download, copies, synchronisation), the model's weights in its kernel layout, and every
// op of the forward pass. One implementation per device (cpu/ today; a CUDA backend implements the
// same class over device memory). Activations are fp32, row-major; every TensorView an op receives
// lives in the backend's memory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/weights.h"
#include "quant/weight.h"

namespace m2 {

// Which slice of the model this process holds (docs/DESIGN.md, "Parallelism"). Tensor parallel
// splits attention heads (q heads; kv heads too, replicated when tp_size exceeds them) and, without
// expert parallelism, every expert's intermediate columns; with expert parallelism (ep_size ==
// tp_size, the same ranks) each rank holds whole experts [expert_begin, expert_end). Pipeline
// parallel gives each stage the layers [layer_begin, layer_end). A default ShardSpec is the whole
// model in one process.
struct ShardSpec {
  int tp_rank = 0, tp_size = 1;
  int ep_rank = 0, ep_size = 1;
  int pp_rank = 0, pp_size = 1;
  int layer_begin = 0, layer_end = -1;  // -1: to the last layer
  // Pipeline micro-batches per step (0: pp_size), for steps of at least pp_microbatch_min_tokens
  // tokens and as many sequences: stages overlap on compute-bound steps. A memory-bound decode step
  // would read each stage's weights once per micro-batch, so small steps run whole.
  int pp_microbatches = 0;
  int64_t pp_microbatch_min_tokens = 64;
  bool whole() const { return tp_size == 1 && ep_size == 1 && pp_size == 1; }
  // Throws InvalidArgument naming the value when the spec cannot slice this model: a size that does
  // not divide the heads, experts or intermediate columns, ranks outside their sizes, an empty or
  // out-of-range layer range. Block cuts are checked where the weights are sliced (slice_rows/cols).
  void validate(const ModelConfig& config) const;
};

// The dimensions one shard computes with (equal to the model's when the shard is whole).
struct ShardDims {
  int heads = 0, kv_heads = 0;       // local q heads; local kv heads (1 when replicated)
  int kv_head_begin = 0;             // first global kv head held
  int kv_replicas = 1;               // ranks holding each kv head (tp_size / kv_heads when that exceeds 1)
  int64_t q_dim = 0, kv_dim = 0;     // heads × head_dim, kv_heads × head_dim
  int64_t intermediate = 0;          // expert columns held per expert
  int64_t expert_begin = 0, expert_end = 0;  // experts held: [begin, end)
  int layer_begin = 0, layer_end = 0;        // layers held: [begin, end)
  int64_t vocab_begin = 0, vocab_end = 0;    // lm_head rows held (vocab-parallel under tensor parallelism)
  int64_t local_experts() const { return expert_end - expert_begin; }
  int local_layers() const { return layer_end - layer_begin; }
};
ShardDims shard_dims(const ModelConfig& config, const ShardSpec& shard);

// One projection of every expert of a layer: expert e's matrix [rows, cols] is the row-wise
// concatenation of views[e * parts + 0 .. parts) (the CPU keeps gate and up as the two stored
// tensors, parts = 2; a device backend may store one fused [E, 2I, H] tensor, parts = 1).
struct ExpertStack {
  int64_t experts = 0, rows = 0, cols = 0;
  int parts = 1;
  std::vector<WeightView> views;  // [experts * parts]
  const WeightView& part(int64_t e, int p) const { return views[size_t(e * parts + p)]; }
  size_t bytes_per_expert() const;
};

struct BackendLayer {
  TensorView input_norm, post_norm;  // F32 [hidden]
  TensorView q_norm;                 // F32 [heads * head_dim]: one RMSNorm over the whole projection
  TensorView k_norm;                 // F32 [kv_heads * head_dim]
  TensorView router_bias;            // F32 [experts] (selection only; zeros when unused)
  WeightView q, k, v;                // [q_dim, hidden], [kv_dim, hidden], [kv_dim, hidden]
  WeightView o;                      // [hidden, q_dim]
  WeightView gate;                   // router [experts, hidden], computed in fp32
  ExpertStack gate_up;               // [experts, 2 * intermediate, hidden]: rows [0, I) gate (w1), [I, 2I) up (w3)
  ExpertStack down;                  // [experts, hidden, intermediate] (w2)
  float k_scale = 0, v_scale = 0;    // FP8 KV scales from the checkpoint (0 = absent)
};

// The model's weights as a backend runs them, still in their stored formats (never expanded to fp32).
struct BackendWeights {
  ShardSpec shard;
  ShardDims dims;                    // what this shard holds
  // layers[i] is layer dims.layer_begin + i; of the layers outside the shard nothing is held.
  WeightView embed;                  // [vocab, hidden]
  WeightView lm_head;                // [vocab, hidden]
  TensorView final_norm;             // F32 [hidden]
  std::vector<BackendLayer> layers;
  std::vector<Buffer> storage;       // what the backend allocated to hold them
};

// The paged KV cache of one model: per layer, K and V blocks [num_blocks, block_size, kv_dim] in
// `dtype` (F32, BF16 or F8_E4M3). Token slot s lives at block s / block_size, row s % block_size.
// FP8 stores sat_e4m3(x / scale) and reads e4m3 × scale, per layer and per K/V.
struct PagedKvLayer {
  TensorView k, v;  // [num_blocks, block_size, kv_dim]
  float k_scale = 1.0f, v_scale = 1.0f;
};
struct PagedKv {
  DType dtype = DType::F32;
  int block_size = 16;
  int64_t num_blocks = 0;
  int64_t kv_dim = 0;
  std::vector<PagedKvLayer> layers;
};

// One sequence of a batch as the attention kernels read it (an I32 [num_seqs, 4] tensor): its new
// tokens are rows [query_start, query_start + query_len) of q; it has context_len tokens in the cache
// including those (so query i sees positions [0, context_len - query_len + i]); its block table is
// block_tables[block_table_start ..].
struct AttentionSeq {
  int32_t query_start, query_len, context_len, block_table_start;
};
struct AttentionBatch {
  TensorView seqs;          // I32 [num_seqs, 4] of AttentionSeq
  TensorView block_tables;  // I32 [total blocks]
  int64_t max_context = 0;  // the longest context_len (host-side, for sizing)
};

class Backend : public Allocator {
 public:
  virtual const char* name() const = 0;

  // Memory. upload/download move `bytes` between host memory and a view's memory.
  virtual void upload(const TensorView& dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const TensorView& src, size_t bytes) = 0;
  virtual void copy(const TensorView& dst, const TensorView& src) = 0;
  virtual void synchronize() = 0;
  // Bytes this backend can still allocate (the CPU: the host's available memory, within the cgroup's
  // limit): the KV cache budget is checked against it at start.
  virtual size_t free_memory() const = 0;

  // A weight in host memory made usable by this backend's ops (the CPU returns it as is; a device
  // backend copies its bytes and scales into `storage` and returns a view of the copy).
  virtual WeightView upload_weight(const WeightView& host, std::vector<Buffer>& storage) = 0;
  // Turns the loaded checkpoint into backend-owned weights for this shard, in the kernel layout and
  // still in the stored format. The CPU backend points into the checkpoint's mmap (so `w` must
  // outlive the result).
  virtual BackendWeights prepare(const ModelWeights& w, const ShardSpec& shard) = 0;
  // Sizes scratch space for batches of up to `tokens` rows attending over up to `context` positions,
  // so that later ops within those bounds do not allocate.
  virtual void reserve(int64_t tokens, int64_t context) = 0;

  // y[t, :] = x[t, :] · Wᵀ. x: F32 [M, w.cols], y: F32 [M, w.rows].
  virtual void linear(const WeightView& w, const TensorView& x, const TensorView& y) = 0;
  // out[i, :] = table[ids[i], :]. ids: I32 [M]; out: F32 [M, table.cols]. Ids outside the table throw.
  virtual void embed(const WeightView& table, const TensorView& ids, const TensorView& out) = 0;
  // y = weight ⊙ x · rsqrt(mean(x²) + eps) per row. x, y: F32 [rows, dim] (may alias); weight: F32 [dim].
  virtual void rmsnorm(const TensorView& x, const TensorView& weight, const TensorView& y, float eps) = 0;
  // RMSNorm split across ranks (a tensor-parallel QK-norm over the whole projection): sum_squares
  // writes ss[r] = Σ_i x[r, i]² (F64 [rows]); after the ranks' sums are added, rmsnorm_with_sums
  // writes y = weight ⊙ x · rsqrt(ss / count + eps). x, y: F32 [rows, dim]; weight: F32 [dim].
  virtual void sum_squares(const TensorView& x, const TensorView& ss) = 0;
  virtual void rmsnorm_with_sums(const TensorView& x, const TensorView& weight, const TensorView& ss,
                                 double count, const TensorView& y, float eps) = 0;
  // x = 0 (any dtype).
  virtual void zero(const TensorView& x) = 0;
  // h += a. h, a: F32 [M, dim].
  virtual void add(const TensorView& h, const TensorView& a) = 0;
  // out[i, :] = x[rows[i], :]. x: F32 [M, dim]; rows: I32 [R]; out: F32 [R, dim].
  virtual void gather_rows(const TensorView& x, const TensorView& rows, const TensorView& out) = 0;
  // RoPE tables of each row's position: θ = position · inv_freq (fp32), cos/sin: F32 [M, half].
  virtual void rope_table(const TensorView& positions, const TensorView& inv_freq, const TensorView& cos,
                          const TensorView& sin) = 0;
  // NeoX RoPE on the first rotary_dim dims of each head, in place. x: F32 [M, heads * head_dim].
  virtual void rope(const TensorView& x, int heads, int head_dim, int rotary_dim, const TensorView& cos,
                    const TensorView& sin) = 0;
  // Writes each row's k and v (F32 [M, kv_dim]) into its cache slot (slots: I64 [M]) of `layer`.
  virtual void kv_store(const PagedKv& kv, int layer, const TensorView& k, const TensorView& v,
                        const TensorView& slots) = 0;
  // Causal GQA attention through block tables. q, out: F32 [M, heads * head_dim]; scale 1/sqrt(head_dim);
  // softmax in fp32.
  virtual void paged_attention(const PagedKv& kv, int layer, const TensorView& q, const TensorView& out,
                               const AttentionBatch& batch, int heads, int kv_heads, int head_dim) = 0;
  // Router: sigmoid(logits) in fp32; top-k by sigmoid + bias (ties to the lower index); weights =
  // the unbiased scores of the chosen experts renormalised. logits: F32 [M, E]; bias: F32 [E];
  // ids: I32 [M, k]; weights: F32 [M, k].
  virtual void route(const TensorView& logits, const TensorView& bias, const TensorView& ids,
                     const TensorView& weights) = 0;
  // Groups the (token, choice) pairs by expert: x_perm rows [offsets[e], offsets[e + 1]) are the inputs
  // of expert e in token order; slot_of[t * k + j] is the row of x_perm holding token t's j-th choice.
  // x: F32 [M, H]; ids: I32 [M, k]; x_perm: F32 [M * k, H]; offsets: I32 [E + 1]; slot_of: I32 [M * k].
  virtual void moe_permute(const TensorView& x, const TensorView& ids, const TensorView& x_perm,
                           const TensorView& offsets, const TensorView& slot_of) = 0;
  // Every expert of a step in one call: y rows [offsets[e], offsets[e + 1]) = x rows · W_eᵀ.
  // x: F32 [S, w.cols]; offsets: I32 [w.experts + 1]; y: F32 [S, w.rows].
  virtual void grouped_linear(const ExpertStack& w, const TensorView& x, const TensorView& offsets,
                              const TensorView& y) = 0;
  // out = silu(gu[:, :I]) ⊙ gu[:, I:]. gu: F32 [S, 2I]; out: F32 [S, I].
  virtual void swiglu(const TensorView& gu, const TensorView& out) = 0;
  // h[t, :] += Σ_j weights[t, j] · y[slot_of[t * k + j], :] (j in order). y: F32 [M * k, H];
  // slot_of: I32 [M * k]; weights: F32 [M, k]; h: F32 [M, H].
  virtual void moe_unpermute(const TensorView& y, const TensorView& slot_of, const TensorView& weights,
                             const TensorView& h) = 0;
};

}  // namespace m2
