// The engine: requests in, tokens and text out. Each step() schedules a batch (continuous batching,
// chunked prefill, prefix caching, preemption by recompute), runs the model over the paged KV cache,
// samples (or verifies n-gram drafts), applies stop conditions and reports what each request got.
// Single-threaded: one thread owns the engine and the model (AsyncEngine runs it on its own thread).
#pragma once
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/model.h"
#include "runtime/kv_cache.h"
#include "runtime/sampling.h"
#include "runtime/scheduler.h"
#include "runtime/sequence.h"

namespace m2 {

struct EngineOptions {
  int64_t max_num_seqs = 64;
  int64_t max_num_batched_tokens = 512;
  int64_t max_model_len = 0;           // 0: min(max_position_embeddings, what the KV cache holds)
  int64_t max_prompt_logit_rows = 0;   // rows per step for prompt-logit requests (0 = as decode needs)
  KvCacheOptions kv;
  NgramOptions ngram;                  // ngram.k > 0 turns speculation on
  std::vector<int32_t> eos_token_ids;  // end-of-sequence ids (generation_config / config.json)
  TextDecoderFactory text_decoder;     // without one, requests produce ids only (stop strings need it)
  // Ids sampling may choose: [0, sample_vocab). 0 = the model's vocab_size. Checkpoints pad
  // lm_head past the tokenizer (MiniMax-M2: 200064 rows); set this to the tokenizer's size so that
  // every generated id has text.
  int64_t sample_vocab = 0;
  std::string checkpoint;              // named in notices
  bool record_decision_margins = false;  // keep each token's decision margin (Sequence::margins), for checks
  // Distributed jobs (src/dist, docs/DESIGN.md "Parallelism"): this process's shard, the collectives
  // of the ranks holding the others, and a hook called with every batch before the model runs it
  // (rank 0's engine sends it to the other ranks, which run it through their shards in run_batch).
  ShardSpec shard;
  Collectives* collectives = nullptr;
  std::function<void(const ForwardBatch&)> before_forward;
};

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_total = 0, kv_blocks_used = 0, kv_blocks_cached = 0;
  int64_t prompt_tokens = 0;           // prompt tokens of finished + running requests, counted at admission
  int64_t computed_prompt_tokens = 0;  // prompt tokens actually run through the model (prefill, recompute)
  int64_t generation_tokens = 0;
  int64_t prefix_query_tokens = 0, prefix_hit_tokens = 0;
  int64_t preemptions = 0;
  int64_t spec_drafted = 0, spec_accepted = 0;
  int64_t steps = 0;
  int64_t finished[5] = {0, 0, 0, 0, 0};  // by FinishReason
};

class Engine {
 public:
  Engine(const ModelWeights& weights, Backend& backend, const EngineOptions& options);
  ~Engine();

  // Checks a request against the engine's limits without queueing it (thread-safe: reads only
  // configuration). Throws InvalidArgument naming what and why.
  void validate(const Request& r) const;
  // Queues a request; returns its id.
  uint64_t add_request(Request r);
  // Ends a request now: its blocks are freed at once; the next step reports it finished with
  // `reason` (Abort, or Error when the engine failed). Unknown or finished ids are ignored.
  void abort(uint64_t id, FinishReason reason = FinishReason::Abort);
  // Ids of every request not yet reported finished.
  std::vector<uint64_t> active_ids() const;
  // Runs one step. The outputs (one per request that produced tokens or finished) are valid until
  // the next call.
  const std::vector<StepOutput>& step();
  bool has_work() const;
  // Runs a batch another rank's engine scheduled through this process's shard (the other ranks of a
  // distributed job: their KV cache mirrors rank 0's block for block). No requests, no sampling.
  void run_batch(const ForwardBatch& batch);

  const Sequence* find(uint64_t id) const;
  EngineStats stats() const;
  const ModelConfig& config() const { return model_.config(); }
  const EngineOptions& options() const { return opt_; }
  int64_t max_model_len() const { return opt_.max_model_len; }
  const KvCache& kv_cache() const { return kv_; }
  Model& model() { return model_; }
  const Model& model() const { return model_; }
  const std::vector<std::string>& notices() const { return notices_; }

 private:
  void process(const ScheduledSeq& s, const float* logits);
  // Appends a generated token; returns false once the sequence has finished.
  bool append(Sequence& seq, int32_t token, const float* logits_row);
  void finish(Sequence& seq, FinishReason reason);
  void release_text(Sequence& seq, StepOutput& out);
  bool is_stop_token(const Sequence& seq, int32_t token) const;
  void record_margin(Sequence& seq, double margin);

  EngineOptions opt_;
  Model model_;
  KvCache kv_;
  Scheduler scheduler_;
  Sampler sampler_;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> seqs_;
  std::vector<uint64_t> finished_ids_;    // reported this step, destroyed at the next
  std::vector<uint64_t> aborted_;         // aborted since the last step, reported at the next
  std::vector<StepOutput> outputs_;
  std::vector<int64_t> output_index_;     // per scheduled seq: its entry in outputs_ (or -1)
  // The step's batch, staged on the host.
  std::vector<int32_t> tokens_, positions_;
  std::vector<int64_t> slots_;
  std::vector<SequenceStep> steps_;
  std::vector<float> logits_;             // [max logit rows, vocab]
  std::vector<int32_t> masked_;           // stop ids masked before min_tokens
  uint64_t next_id_ = 1;
  int64_t next_arrival_ = 0;
  EngineStats counters_;
  std::vector<std::string> notices_;
};

}  // namespace m2
