#include "dist/mpi_job.h"

#include <mpi.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace m2 {

namespace {

using Clock = std::chrono::steady_clock;

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  fail<Error>("MPI {} failed: {}", what, std::string(text, size_t(len)));
}

MPI_Comm comm(void* c) { return static_cast<MPI_Comm>(c); }

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

MpiJob::MpiJob(int* argc, char*** argv) {
  int provided = 0, initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Query_thread(&provided);
  } else {
    owner_ = true;
    // The engine thread makes every MPI call of rank 0 (the server's HTTP threads never do): one
    // thread at a time, not necessarily the main one.
    check(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
  }
  if (provided < MPI_THREAD_SERIALIZED) {
    if (owner_) MPI_Finalize();
    fail<Error>("this MPI library provides thread level {}, m2 needs MPI_THREAD_SERIALIZED", provided);
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiJob::~MpiJob() {
  if (owner_) MPI_Finalize();
}

void MpiJob::abort(int code) const {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

bool MpiJob::launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

MpiCollectives::MpiCollectives(const ShardSpec& shard, int world_rank) : shard_(shard), world_rank_(world_rank) {
  MPI_Comm tp = MPI_COMM_NULL;
  check(MPI_Comm_split(MPI_COMM_WORLD, shard.pp_rank, shard.tp_rank, &tp), "MPI_Comm_split (tensor-parallel group)");
  tp_comm_ = tp;
}

MpiCollectives::~MpiCollectives() {
  MPI_Comm tp = comm(tp_comm_);
  if (tp != MPI_COMM_NULL) MPI_Comm_free(&tp);
}

void MpiCollectives::tp_all_reduce(const TensorView& x) {
  if (shard_.tp_size == 1) return;
  if (x.dtype != DType::F32 && x.dtype != DType::F64)
    fail<InvalidArgument>("tensor-parallel all-reduce of {}: expected F32 or F64", x.str());
  const auto t0 = Clock::now();
  check(MPI_Allreduce(MPI_IN_PLACE, x.data, int(x.numel()), x.dtype == DType::F32 ? MPI_FLOAT : MPI_DOUBLE, MPI_SUM,
                      comm(tp_comm_)),
        "MPI_Allreduce");
  stats_.all_reduce_seconds += seconds_since(t0);
  ++stats_.all_reduces;
  stats_.all_reduce_bytes += int64_t(x.nbytes());
}

void MpiCollectives::tp_gather_vocab(const TensorView& part, int64_t vocab_begin, float* logits, int64_t vocab) {
  const int64_t rows = part.dim(0), cols = part.dim(1);
  const auto t0 = Clock::now();
  MPI_Comm tp = comm(tp_comm_);
  const bool root = shard_.tp_rank == 0;
  const int64_t mine[2] = {vocab_begin, cols};
  if (root) slices_.resize(size_t(2 * shard_.tp_size));
  check(MPI_Gather(mine, 2, MPI_INT64_T, slices_.data(), 2, MPI_INT64_T, 0, tp), "MPI_Gather (vocab slices)");
  if (root) {
    counts_.assign(size_t(shard_.tp_size), 0);
    displs_.assign(size_t(shard_.tp_size), 0);
    int64_t total = 0;
    for (int r = 0; r < shard_.tp_size; ++r) {
      counts_[size_t(r)] = int(rows * slices_[size_t(2 * r + 1)]);
      displs_[size_t(r)] = int(total);
      total += rows * slices_[size_t(2 * r + 1)];
    }
    if (total != rows * vocab) fail<Error>("vocab-parallel lm_head: the ranks hold {} of {} logits", total, rows * vocab);
    if (gathered_.size() < size_t(total)) gathered_.resize(size_t(total));
  }
  check(MPI_Gatherv(part.data, int(rows * cols), MPI_FLOAT, gathered_.data(), counts_.data(), displs_.data(),
                    MPI_FLOAT, 0, tp),
        "MPI_Gatherv (logits)");
  if (root) {
    // [rank][rows, its columns] → [rows, vocab].
    for (int r = 0; r < shard_.tp_size; ++r) {
      const int64_t begin = slices_[size_t(2 * r)], n = slices_[size_t(2 * r + 1)];
      const float* src = gathered_.data() + displs_[size_t(r)];
      for (int64_t i = 0; i < rows; ++i) std::memcpy(logits + i * vocab + begin, src + i * n, size_t(n) * 4);
    }
  }
  stats_.gather_seconds += seconds_since(t0);
  ++stats_.gathers;
  stats_.gather_bytes += int64_t(part.nbytes());
}

void MpiCollectives::recv_from_previous_stage(const TensorView& h) {
  const auto t0 = Clock::now();
  check(MPI_Recv(h.data, int(h.numel()), MPI_FLOAT, world_rank_ - shard_.tp_size, 1, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE),
        "MPI_Recv (hidden state from the previous pipeline stage)");
  stats_.stage_seconds += seconds_since(t0);
  ++stats_.stage_messages;
  stats_.stage_bytes += int64_t(h.nbytes());
}

void MpiCollectives::send_to_next_stage(const TensorView& h) {
  const auto t0 = Clock::now();
  check(MPI_Send(h.data, int(h.numel()), MPI_FLOAT, world_rank_ + shard_.tp_size, 1, MPI_COMM_WORLD),
        "MPI_Send (hidden state to the next pipeline stage)");
  stats_.stage_seconds += seconds_since(t0);
  ++stats_.stage_messages;
  stats_.stage_bytes += int64_t(h.nbytes());
}

void MpiCollectives::logits_to_root(float* logits, size_t count) {
  if (shard_.pp_size == 1 || count == 0) return;  // world rank 0 is in the last (only) stage
  const int source = (shard_.pp_size - 1) * shard_.tp_size;
  const auto t0 = Clock::now();
  if (world_rank_ == source) {
    check(MPI_Send(logits, int(count), MPI_FLOAT, 0, 2, MPI_COMM_WORLD), "MPI_Send (logits to rank 0)");
  } else if (world_rank_ == 0) {
    check(MPI_Recv(logits, int(count), MPI_FLOAT, source, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
          "MPI_Recv (logits from the last stage)");
  } else {
    return;
  }
  stats_.stage_seconds += seconds_since(t0);
  ++stats_.stage_messages;
  stats_.stage_bytes += int64_t(count * 4);
}

// A step on the wire: header {command, tokens, sequences, block-table entries, payload bytes}, then
// slots (i64 [T]), sequences (i64 [S, 4]: tokens, context, logits, table entries), tokens and
// positions (i32 [T] each), block tables (i32 [entries]).
namespace {

enum : int64_t { kStep = 1, kStop = 2 };

int64_t payload_bytes(int64_t T, int64_t S, int64_t entries) { return 8 * T + 32 * S + 4 * (2 * T + entries); }

// The step header goes out as a non-blocking broadcast on every rank (blocking and non-blocking
// collectives do not match each other). Rank 0 waits for it; the other ranks poll: a blocked MPI
// call spins a core at 100%, so an idle server's followers would burn a core each. They spin for
// the first ~200 µs (back-to-back decode steps arrive within that), then sleep between polls,
// 50 µs growing to 1 ms.
void broadcast_header(int64_t (&header)[5], bool root) {
  MPI_Request request;
  check(MPI_Ibcast(header, 5, MPI_INT64_T, 0, MPI_COMM_WORLD, &request), "MPI_Ibcast (step header)");
  if (root) {
    check(MPI_Wait(&request, MPI_STATUS_IGNORE), "MPI_Wait (step header)");
    return;
  }
  const auto spin_until = Clock::now() + std::chrono::microseconds(200);
  auto nap = std::chrono::microseconds(50);
  for (;;) {
    int done = 0;
    check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test (step header)");
    if (done) return;
    if (Clock::now() < spin_until) continue;
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::microseconds(1000));
  }
}

}  // namespace

StepChannel::StepChannel(const ModelLimits& limits) : limits_(limits) {
  if (limits_.max_block_entries <= 0) fail<InvalidArgument>("step channel: limits without block-table entries");
  payload_.resize(size_t(payload_bytes(limits_.max_tokens, limits_.max_seqs, limits_.max_block_entries)));
  steps_.resize(size_t(limits_.max_seqs));
}

void StepChannel::send(const ForwardBatch& b) {
  const int64_t T = int64_t(b.tokens.size()), S = int64_t(b.seqs.size());
  int64_t entries = 0;
  for (const auto& s : b.seqs) entries += int64_t(s.block_table.size());
  const int64_t bytes = payload_bytes(T, S, entries);
  if (T > limits_.max_tokens || S > limits_.max_seqs || bytes > int64_t(payload_.size()))
    fail<InvalidArgument>("step channel: a batch of {} tokens, {} sequences and {} block-table entries exceeds the "
                          "limits", T, S, entries);
  uint8_t* p = payload_.data();
  std::memcpy(p, b.slots.data(), size_t(T) * 8), p += T * 8;
  for (const auto& s : b.seqs) {
    const int64_t q[4] = {s.tokens, s.context, int64_t(s.logits), int64_t(s.block_table.size())};
    std::memcpy(p, q, 32), p += 32;
  }
  std::memcpy(p, b.tokens.data(), size_t(T) * 4), p += T * 4;
  std::memcpy(p, b.positions.data(), size_t(T) * 4), p += T * 4;
  for (const auto& s : b.seqs) std::memcpy(p, s.block_table.data(), s.block_table.size() * 4), p += s.block_table.size() * 4;
  int64_t header[5] = {kStep, T, S, entries, bytes};
  broadcast_header(header, true);
  check(MPI_Bcast(payload_.data(), int(bytes), MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast (step)");
}

void StepChannel::send_stop() {
  int64_t header[5] = {kStop, 0, 0, 0, 0};
  broadcast_header(header, true);
}

bool StepChannel::receive(ForwardBatch& b) {
  int64_t header[5] = {0, 0, 0, 0, 0};
  broadcast_header(header, false);
  if (header[0] == kStop) return false;
  const int64_t T = header[1], S = header[2], entries = header[3], bytes = header[4];
  if (header[0] != kStep || T <= 0 || S <= 0 || T > limits_.max_tokens || S > limits_.max_seqs || entries < 0 ||
      bytes != payload_bytes(T, S, entries) || bytes > int64_t(payload_.size()))
    fail<Error>("step channel: rank 0 sent a step header {} {} {} {} {} this rank cannot hold", header[0], T, S,
                entries, bytes);
  check(MPI_Bcast(payload_.data(), int(bytes), MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast (step)");
  const uint8_t* p = payload_.data();
  const auto* slots = reinterpret_cast<const int64_t*>(p);
  const auto* seqs = reinterpret_cast<const int64_t*>(p + T * 8);
  const auto* tokens = reinterpret_cast<const int32_t*>(p + T * 8 + S * 32);
  const auto* positions = tokens + T;
  const int32_t* table = positions + T;
  int64_t used = 0;
  for (int64_t i = 0; i < S; ++i) {
    const int64_t* q = seqs + 4 * i;
    if (q[3] < 0 || used + q[3] > entries || q[2] < 0 || q[2] > 2)
      fail<Error>("step channel: sequence {} of rank 0's step is malformed", i);
    steps_[size_t(i)] = SequenceStep{q[0], q[1], {table + used, size_t(q[3])}, LogitsFor(q[2])};
    used += q[3];
  }
  b = ForwardBatch{{tokens, size_t(T)}, {positions, size_t(T)}, {slots, size_t(T)}, {steps_.data(), size_t(S)}};
  return true;
}

}  // namespace m2
