// Decides each step's batch under the token and sequence budgets: running sequences first (one
// decode token, plus n-gram drafts, or their next prefill chunk), then waiting ones in arrival order
// (prefix-cache hits first, then chunks of their prompt). When KV blocks run out, the most recently
// admitted running sequence is preempted: its blocks are freed and it is recomputed later. Nothing
// here allocates in a steady-state decode step.
#pragma once
#include <deque>
#include <span>
#include <vector>

#include "model/forward_batch.h"
#include "runtime/block_pool.h"
#include "runtime/ngram.h"
#include "runtime/sequence.h"

namespace m2 {

struct SchedulerOptions {
  int64_t max_num_seqs = 64;
  int64_t max_num_batched_tokens = 512;
  int64_t max_logit_rows = 64;  // rows of logits per step (prompt-logit requests are chunked to fit)
  int64_t max_model_len = 4096;
  NgramOptions ngram;
};

struct ScheduledSeq {
  Sequence* seq = nullptr;
  int64_t tokens = 0;  // tokens fed from seq->tokens[num_computed ..]
  int drafts = 0;      // followed by seq->drafts[0 .. drafts)
  LogitsFor logits = LogitsFor::None;
};

struct SchedulerStats {
  int64_t preemptions = 0;
  int64_t prefix_query_tokens = 0, prefix_hit_tokens = 0;  // prompt tokens looked up / found in the cache
};

class Scheduler {
 public:
  Scheduler(BlockPool& pool, const SchedulerOptions& options);

  void add(Sequence* seq);     // to the back of the waiting queue
  void remove(Sequence* seq);  // finished or aborted: out of the queues, blocks released at once
  std::span<const ScheduledSeq> schedule();

  // After a step: `seq` has `num_computed` tokens in the cache; registers its newly full blocks.
  void computed(Sequence* seq, int64_t num_computed);

  int64_t num_waiting() const { return int64_t(waiting_.size()); }
  int64_t num_running() const { return int64_t(running_.size()); }
  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  const SchedulerStats& stats() const { return stats_; }
  const SchedulerOptions& options() const { return opt_; }

 private:
  bool grow(Sequence* seq, int64_t positions);  // blocks for `positions` tokens, allocating as needed
  void preempt(Sequence* seq);
  void release(Sequence* seq);
  void admit_prefix(Sequence* seq);

  BlockPool& pool_;
  SchedulerOptions opt_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // admission order
  std::vector<ScheduledSeq> batch_;
  SchedulerStats stats_;
};

}  // namespace m2
