// A process's part in a distributed job, from the command line's point of view (m2 run, m2 serve):
// start MPI, find this rank's shard (checked against config.json before any weight is loaded),
// give the engine its shard and collectives, and either drive the job (world rank 0: the engine,
// the scheduler, the server) or follow it (every other rank: run each step rank 0 broadcasts).
#pragma once
#include <memory>
#include <string>

#include "dist/layout.h"
#include "dist/mpi_job.h"
#include "runtime/engine.h"

namespace m2 {

class DistributedRun {
 public:
  // Starts MPI and places this process. Throws InvalidArgument naming the value when the layout
  // cannot shard the model in `model_dir` (read from its config.json only).
  DistributedRun(const ParallelOptions& options, const std::string& model_dir);
  ~DistributedRun();

  int rank() const { return job_.rank(); }
  int size() const { return job_.size(); }
  bool root() const { return job_.rank() == 0; }
  const ShardSpec& shard() const { return shard_; }
  const MpiCollectives& collectives() const { return *collectives_; }

  // Rank 0: the engine options it chose go to every rank (the model's limits and the KV cache must
  // agree block for block); the options get this rank's shard and collectives and a hook that
  // broadcasts every batch. Call before constructing the engine, then attach() it.
  void configure_root(EngineOptions& options);
  void attach(const Engine& engine);
  // Rank 0: the job is over (the other ranks return from follow()).
  void finish();

  // Other ranks: receive rank 0's engine options, build the engine on this rank's shard, and run
  // every step rank 0 broadcasts until it finishes. Returns the process's exit code.
  int follow(const ModelWeights& weights, Backend& backend);

  // Runs `body` (this rank's part of the job); an error ends every process of the job, naming this
  // rank (the others may be waiting for it in a collective), instead of leaving them hung.
  template <typename Body>
  int run(Body&& body) {
    try {
      return body();
    } catch (const std::exception& e) {
      fail_job(e.what());
    }
  }
  [[noreturn]] void fail_job(const char* what) const;

 private:
  MpiJob job_;
  ShardSpec shard_;
  std::unique_ptr<MpiCollectives> collectives_;
  std::unique_ptr<StepChannel> channel_;
  bool finished_ = false;
};

}  // namespace m2
