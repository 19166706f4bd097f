#include "dist/layout.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <numeric>

#include "core/error.h"
#include "core/units.h"

namespace m2 {

std::vector<int> parse_pipeline_layers(const std::string& text) {
  std::vector<int> out;
  for (const ListedInteger& n : parse_integer_list(text)) {
    if (!n.value || *n.value <= 0 || *n.value > 100000)
      fail<InvalidArgument>("--pipeline-layers '{}': '{}' (entry {}) is not a positive layer count", text, n.text,
                            out.size());
    out.push_back(int(*n.value));
  }
  return out;
}

ShardSpec shard_for_rank(const ModelConfig& c, const ParallelOptions& o, int rank, int world_size) {
  if (o.tensor_parallel < 1 || o.pipeline_parallel < 1)
    fail<InvalidArgument>("--tensor-parallel-size {} and --pipeline-parallel-size {} must be positive",
                          o.tensor_parallel, o.pipeline_parallel);
  if (world_size != o.world_size())
    fail<InvalidArgument>(
        "the job has {} processes but --tensor-parallel-size {} × --pipeline-parallel-size {} = {}: launch it as "
        "mpirun -np {} m2 ...",
        world_size, o.tensor_parallel, o.pipeline_parallel, o.world_size(), o.world_size());
  if (rank < 0 || rank >= world_size) fail<InvalidArgument>("rank {} of a {}-process job", rank, world_size);
  if (o.pipeline_parallel > c.num_layers)
    fail<InvalidArgument>("--pipeline-parallel-size {} exceeds the model's {} layers", o.pipeline_parallel,
                          c.num_layers);
  std::vector<int> layers = o.pipeline_layers;
  if (layers.empty()) {
    for (int s = 0; s < o.pipeline_parallel; ++s)
      layers.push_back(c.num_layers / o.pipeline_parallel + (s < c.num_layers % o.pipeline_parallel ? 1 : 0));
  } else if (int(layers.size()) != o.pipeline_parallel) {
    fail<InvalidArgument>("--pipeline-layers lists {} stages but --pipeline-parallel-size is {}", layers.size(),
                          o.pipeline_parallel);
  } else if (const int sum = std::accumulate(layers.begin(), layers.end(), 0); sum != c.num_layers) {
    fail<InvalidArgument>("--pipeline-layers {} sum to {} layers; the model has {}",
                          fmt::format("{}", fmt::join(layers, ",")), sum, c.num_layers);
  }
  ShardSpec s;
  s.tp_size = o.tensor_parallel;
  s.tp_rank = rank % o.tensor_parallel;
  s.pp_size = o.pipeline_parallel;
  s.pp_rank = rank / o.tensor_parallel;
  if (o.expert_parallel && o.tensor_parallel > 1) {
    s.ep_size = s.tp_size;
    s.ep_rank = s.tp_rank;
  }
  if (o.pipeline_microbatches < 0 || o.pipeline_microbatches > 64)
    fail<InvalidArgument>("--pipeline-microbatches {}: expected 0 (the pipeline size) .. 64", o.pipeline_microbatches);
  s.pp_microbatches = o.pipeline_microbatches;
  s.pp_microbatch_min_tokens = o.microbatch_min_tokens;
  s.layer_begin = std::accumulate(layers.begin(), layers.begin() + s.pp_rank, 0);
  s.layer_end = s.layer_begin + layers[size_t(s.pp_rank)];
  s.validate(c);
  return s;
}

std::string describe_shard(const ModelConfig& c, const ShardSpec& s, int rank) {
  const ShardDims d = shard_dims(c, s);
  const int h0 = s.tp_rank * d.heads;
  return fmt::format("rank {}: tensor rank {}/{}, stage {}/{}: layers [{}, {}), q heads {}..{}, kv heads {}..{}{}, "
                     "experts {}..{}{}",
                     rank, s.tp_rank, s.tp_size, s.pp_rank, s.pp_size, d.layer_begin, d.layer_end, h0,
                     h0 + d.heads - 1, d.kv_head_begin, d.kv_head_begin + d.kv_heads - 1,
                     d.kv_replicas > 1 ? fmt::format(" (replicated ×{})", d.kv_replicas) : "", d.expert_begin,
                     d.expert_end - 1,
                     d.intermediate < c.intermediate_size
                         ? fmt::format(" (columns {}..{} of {})", s.tp_rank * d.intermediate,
                                       (s.tp_rank + 1) * d.intermediate - 1, c.intermediate_size)
                         : " (whole)");
}

}  // namespace m2
