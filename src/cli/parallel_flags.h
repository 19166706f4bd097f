// The parallelism flags of m2 run and m2 serve (vLLM's names) and the start of a distributed job.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "dist/driver.h"

namespace m2::cli {

struct ParallelFlags {
  ParallelOptions options;
  std::string pipeline_layers;
};
void add_parallel_flags(CLI::App& app, ParallelFlags& flags);

// The distributed job this process belongs to, when the flags ask for more than one rank or mpirun
// started it; null for a plain single-process run.
std::unique_ptr<DistributedRun> start_distributed(ParallelFlags& flags, const std::string& model_dir);

}  // namespace m2::cli
