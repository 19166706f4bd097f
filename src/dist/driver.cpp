#include "dist/driver.h"

#include <fmt/format.h>
#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include "core/error.h"

namespace m2 {

namespace {

// What shapes the model's workspace and the KV cache: the same on every rank.
struct EngineShape {
  int64_t max_num_seqs, max_num_batched_tokens, max_model_len, max_prompt_logit_rows, ngram_k;
  int64_t kv_dtype, kv_block_size, kv_num_blocks, kv_memory_bytes, kv_prefix_caching;
};

void broadcast(EngineShape& s) {
  if (MPI_Bcast(&s, int(sizeof(s) / 8), MPI_INT64_T, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
    fail<Error>("MPI_Bcast of the engine options failed");
}

}  // namespace

DistributedRun::DistributedRun(const ParallelOptions& options, const std::string& model_dir) : job_(nullptr, nullptr) {
  const ModelConfig config = load_model_config(model_dir);
  shard_ = shard_for_rank(config, options, job_.rank(), job_.size());
  collectives_ = std::make_unique<MpiCollectives>(shard_, job_.rank());
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  fmt::print(stderr, "m2: {} (pid {} on {})\n", describe_shard(config, shard_, job_.rank()), getpid(), host);
}

DistributedRun::~DistributedRun() {
  if (root() && !finished_) {
    try {
      finish();
    } catch (...) {
    }
  }
}

void DistributedRun::fail_job(const char* what) const {
  fmt::print(stderr, "error (rank {} of {}): {}\n", job_.rank(), job_.size(), what);
  std::fflush(stderr);
  job_.abort(1);
}

void DistributedRun::configure_root(EngineOptions& o) {
  EngineShape s{o.max_num_seqs, o.max_num_batched_tokens, o.max_model_len, o.max_prompt_logit_rows, o.ngram.k,
                int64_t(o.kv.dtype), o.kv.block_size, o.kv.num_blocks, int64_t(o.kv.memory_bytes),
                o.kv.enable_prefix_caching ? 1 : 0};
  broadcast(s);
  o.shard = shard_;
  o.collectives = collectives_.get();
  o.before_forward = [this](const ForwardBatch& b) {
    if (!channel_) fail<Error>("distributed run: the engine ran a step before attach()");
    channel_->send(b);
  };
}

void DistributedRun::attach(const Engine& engine) {
  channel_ = std::make_unique<StepChannel>(engine.model().limits());
}

void DistributedRun::finish() {
  if (finished_ || !root()) return;
  finished_ = true;
  StepChannel::send_stop();
}

int DistributedRun::follow(const ModelWeights& weights, Backend& backend) {
  EngineShape s{};
  broadcast(s);
  EngineOptions o;
  o.max_num_seqs = s.max_num_seqs;
  o.max_num_batched_tokens = s.max_num_batched_tokens;
  o.max_model_len = s.max_model_len;
  o.max_prompt_logit_rows = s.max_prompt_logit_rows;
  o.ngram.k = int(s.ngram_k);
  o.kv.dtype = DType(s.kv_dtype);
  o.kv.block_size = int(s.kv_block_size);
  o.kv.num_blocks = s.kv_num_blocks;
  o.kv.memory_bytes = size_t(s.kv_memory_bytes);
  o.kv.enable_prefix_caching = s.kv_prefix_caching != 0;
  o.shard = shard_;
  o.collectives = collectives_.get();
  Engine engine(weights, backend, o);
  StepChannel channel(engine.model().limits());
  // SIGTERM / SIGINT (mpirun forwards them to every rank) end the job through rank 0, which drains
  // its requests and then sends the stop: a rank that left now would strand rank 0's collectives.
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  ForwardBatch batch;
  while (channel.receive(batch)) engine.run_batch(batch);
  return 0;
}

}  // namespace m2
