// How the ranks of a distributed job share the model (docs/DESIGN.md, "Parallelism"): world rank
// r is pipeline stage r / tp and tensor-parallel rank r % tp; with expert parallelism the same
// tensor-parallel ranks hold whole experts. No MPI here: the layout is checked against config.json
// before anything else is loaded, and tests check it without launching processes.
#pragma once
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/config.h"

namespace m2 {

struct ParallelOptions {
  int tensor_parallel = 1;            // --tensor-parallel-size
  int pipeline_parallel = 1;          // --pipeline-parallel-size
  bool expert_parallel = false;       // --enable-expert-parallel (experts over the tensor-parallel ranks)
  std::vector<int> pipeline_layers;   // --pipeline-layers 20,42: layers per stage (empty: as even as possible)
  int pipeline_microbatches = 0;      // --pipeline-microbatches (0: the pipeline size; 1: off)
  int64_t microbatch_min_tokens = 64; // steps with fewer tokens run whole
  int world_size() const { return tensor_parallel * pipeline_parallel; }
  bool distributed() const { return world_size() > 1; }
};

// Parses "20,42" into layer counts; InvalidArgument naming the piece that is not a positive count.
std::vector<int> parse_pipeline_layers(const std::string& text);

// The shard of world rank `rank` in a job of `world_size` processes. Refuses, naming the value, a
// world size other than tensor × pipeline, sizes that do not divide the heads / experts /
// intermediate columns, and a --pipeline-layers list whose length is not the pipeline size or
// whose sum is not the model's layer count.
ShardSpec shard_for_rank(const ModelConfig& config, const ParallelOptions& options, int rank, int world_size);

// One line per rank for the startup log: "rank 1: tp 1/2, layers [0, 62), heads 24..47, experts 128..255".
std::string describe_shard(const ModelConfig& config, const ShardSpec& shard, int rank);

}  // namespace m2
