#include "cli/parallel_flags.h"

#include <cstdlib>

#include "core/error.h"

namespace m2::cli {

void add_parallel_flags(CLI::App& app, ParallelFlags& f) {
  app.add_option("--tensor-parallel-size,--tp", f.options.tensor_parallel,
                 "Ranks splitting attention heads and expert columns (launch with mpirun -np TP×PP)")
      ->capture_default_str();
  app.add_option("--pipeline-parallel-size,--pp", f.options.pipeline_parallel, "Pipeline stages (layer ranges)")
      ->capture_default_str();
  app.add_option("--pipeline-layers", f.pipeline_layers,
                 "Layers per pipeline stage, e.g. 20,42 (default: as even as possible)");
  app.add_option("--pipeline-microbatches", f.options.pipeline_microbatches,
                 "Micro-batches per step of 64+ tokens so that stages overlap (0: the pipeline size; 1: off)")
      ->capture_default_str();
  app.add_flag("--enable-expert-parallel", f.options.expert_parallel,
               "Whole experts over the tensor-parallel ranks (attention stays tensor-parallel)");
}

std::unique_ptr<DistributedRun> start_distributed(ParallelFlags& f, const std::string& model_dir) {
  if (!f.pipeline_layers.empty()) f.options.pipeline_layers = parse_pipeline_layers(f.pipeline_layers);
  if (!f.options.distributed() && !MpiJob::launched_by_mpirun()) {
    if (f.options.tensor_parallel < 1 || f.options.pipeline_parallel < 1)
      fail<InvalidArgument>("--tensor-parallel-size {} and --pipeline-parallel-size {} must be positive",
                            f.options.tensor_parallel, f.options.pipeline_parallel);
    return nullptr;
  }
  if (f.options.distributed() && !MpiJob::launched_by_mpirun())
    fail<InvalidArgument>("--tensor-parallel-size {} × --pipeline-parallel-size {} needs {} processes: launch m2 with "
                          "mpirun -np {} (add --host a,b or --hostfile FILE for several machines)",
                          f.options.tensor_parallel, f.options.pipeline_parallel, f.options.world_size(),
                          f.options.world_size());
  return std::make_unique<DistributedRun>(f.options, model_dir);
}

}  // namespace m2::cli
