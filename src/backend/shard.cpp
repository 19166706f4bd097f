// ShardSpec checks and the dimensions of one shard (docs/DESIGN.md, "Parallelism").
#include <algorithm>

#include "core/error.h"
#include "backend/backend.h"

namespace m2 {

void ShardSpec::validate(const ModelConfig& c) const {
  if (tp_size < 1 || pp_size < 1 || ep_size < 1)
    fail<InvalidArgument>("parallel sizes must be positive: tensor {}, pipeline {}, expert {}", tp_size, pp_size,
                          ep_size);
  if (tp_rank < 0 || tp_rank >= tp_size || pp_rank < 0 || pp_rank >= pp_size || ep_rank < 0 || ep_rank >= ep_size)
    fail<InvalidArgument>("shard ranks tensor {} / pipeline {} / expert {} are outside sizes {} / {} / {}", tp_rank,
                          pp_rank, ep_rank, tp_size, pp_size, ep_size);
  if (c.num_heads % tp_size != 0)
    fail<InvalidArgument>("--tensor-parallel-size {} does not divide the model's {} attention heads", tp_size,
                          c.num_heads);
  if (tp_size <= c.num_kv_heads ? c.num_kv_heads % tp_size != 0 : tp_size % c.num_kv_heads != 0)
    fail<InvalidArgument>(
        "--tensor-parallel-size {} neither divides the model's {} KV heads nor is a multiple of them (KV heads are "
        "split, or replicated when the size exceeds them)",
        tp_size, c.num_kv_heads);
  if (ep_size > 1) {
    if (ep_size != tp_size || ep_rank != tp_rank)
      fail<InvalidArgument>("expert parallelism runs on the tensor-parallel ranks: expert size {} rank {}, tensor size "
                            "{} rank {}", ep_size, ep_rank, tp_size, tp_rank);
    if (c.num_experts % ep_size != 0)
      fail<InvalidArgument>("expert-parallel size {} does not divide the model's {} experts", ep_size, c.num_experts);
  } else if (c.intermediate_size % tp_size != 0) {
    fail<InvalidArgument>("--tensor-parallel-size {} does not divide the experts' intermediate size {}", tp_size,
                          c.intermediate_size);
  }
  const int end = layer_end < 0 ? c.num_layers : layer_end;
  if (layer_begin < 0 || layer_begin >= end || end > c.num_layers)
    fail<InvalidArgument>("pipeline stage {} holds layers [{}, {}) of a {}-layer model", pp_rank, layer_begin, end,
                          c.num_layers);
}

ShardDims shard_dims(const ModelConfig& c, const ShardSpec& s) {
  s.validate(c);
  ShardDims d;
  d.heads = c.num_heads / s.tp_size;
  if (s.tp_size <= c.num_kv_heads) {
    d.kv_heads = c.num_kv_heads / s.tp_size;
    d.kv_head_begin = s.tp_rank * d.kv_heads;
  } else {
    d.kv_heads = 1;
    d.kv_replicas = s.tp_size / c.num_kv_heads;
    d.kv_head_begin = s.tp_rank / d.kv_replicas;
  }
  d.q_dim = int64_t(d.heads) * c.head_dim;
  d.kv_dim = int64_t(d.kv_heads) * c.head_dim;
  if (s.ep_size > 1) {
    d.intermediate = c.intermediate_size;
    d.expert_begin = int64_t(c.num_experts) / s.ep_size * s.ep_rank;
    d.expert_end = d.expert_begin + int64_t(c.num_experts) / s.ep_size;
  } else {
    d.intermediate = c.intermediate_size / s.tp_size;
    d.expert_begin = 0;
    d.expert_end = c.num_experts;
  }
  // lm_head by vocabulary rows, each rank's slice starting on a multiple of 128 (block-FP8 scale
  // rows); replicated when that would leave a rank without rows.
  d.vocab_begin = 0;
  d.vocab_end = c.vocab_size;
  if (s.tp_size > 1) {
    auto boundary = [&](int r) {
      return std::min<int64_t>(c.vocab_size, (int64_t(c.vocab_size) * r / s.tp_size + 127) / 128 * 128);
    };
    bool all_hold_rows = true;
    for (int r = 0; r < s.tp_size; ++r) all_hold_rows = all_hold_rows && boundary(r + 1) > boundary(r);
    if (all_hold_rows) {
      d.vocab_begin = boundary(s.tp_rank);
      d.vocab_end = boundary(s.tp_rank + 1);
    }
  }
  d.layer_begin = s.layer_begin;
  d.layer_end = s.layer_end < 0 ? c.num_layers : s.layer_end;
  return d;
}

}  // namespace m2
