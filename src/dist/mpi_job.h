// The MPI side of a distributed job (OpenMPI from Debian): process bootstrap, the collectives a
// sharded model calls (MpiCollectives), and the channel over which world rank 0, which runs the
// engine (scheduler, sampler, server), hands every step's batch to the other ranks (StepChannel).
// See docs/DESIGN.md, "Parallelism".
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "model/collectives.h"
#include "model/forward_batch.h"
#include "model/model.h"

namespace m2 {

// MPI_Init_thread / MPI_Finalize (when this object initialised MPI: a test that initialised it in
// main keeps it across several jobs). Everything below needs it alive.
class MpiJob {
 public:
  MpiJob(int* argc, char*** argv);
  ~MpiJob();
  MpiJob(const MpiJob&) = delete;
  MpiJob& operator=(const MpiJob&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }
  // Ends every process of the job (after an error on one rank: the others may be waiting on it).
  [[noreturn]] void abort(int code) const;
  // True when this process was started by mpirun/mpiexec (OpenMPI's environment).
  static bool launched_by_mpirun();

 private:
  int rank_ = 0, size_ = 1;
  bool owner_ = false;
};

// Collective time and volume, for benchmarks and the end-of-run summary.
struct CollectiveStats {
  int64_t all_reduces = 0, all_reduce_bytes = 0;
  int64_t gathers = 0, gather_bytes = 0;  // vocab-parallel logits
  double gather_seconds = 0;
  int64_t stage_messages = 0, stage_bytes = 0;
  double all_reduce_seconds = 0, stage_seconds = 0;
};

class MpiCollectives final : public Collectives {
 public:
  // Splits the world into this shard's tensor-parallel group (the ranks of its pipeline stage).
  MpiCollectives(const ShardSpec& shard, int world_rank);
  ~MpiCollectives() override;
  void tp_all_reduce(const TensorView& x) override;
  void tp_gather_vocab(const TensorView& part, int64_t vocab_begin, float* logits, int64_t vocab) override;
  void recv_from_previous_stage(const TensorView& h) override;
  void send_to_next_stage(const TensorView& h) override;
  void logits_to_root(float* logits, size_t count) override;
  const CollectiveStats& stats() const { return stats_; }

 private:
  ShardSpec shard_;
  int world_rank_;
  void* tp_comm_;  // MPI_Comm (kept opaque so that this header does not need mpi.h)
  std::vector<float> gathered_;      // tensor-parallel rank 0: the ranks' logit slices, rank after rank
  std::vector<int64_t> slices_;      // [ranks, 2]: vocab_begin, columns
  std::vector<int> counts_, displs_;
  CollectiveStats stats_;
};

// Rank 0 → every rank: the batches of a job's steps (a collective broadcast per step).
class StepChannel {
 public:
  explicit StepChannel(const ModelLimits& limits);
  // World rank 0: every other rank runs `batch` next.
  void send(const ForwardBatch& batch);
  // World rank 0: the job is over; the other ranks' receive() returns false.
  static void send_stop();
  // Other ranks: the next batch (valid until the next call), or false once rank 0 has stopped.
  bool receive(ForwardBatch& batch);

 private:
  ModelLimits limits_;
  std::vector<uint8_t> payload_;
  std::vector<SequenceStep> steps_;
};

}  // namespace m2
