#include "runtime/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace m2 {

Scheduler::Scheduler(BlockPool& pool, const SchedulerOptions& o) : pool_(pool), opt_(o) {
  if (o.max_num_seqs <= 0 || o.max_num_batched_tokens <= 0 || o.max_logit_rows <= 0)
    fail<InvalidArgument>("scheduler: max_num_seqs {}, max_num_batched_tokens {} and max_logit_rows {} must be positive",
                          o.max_num_seqs, o.max_num_batched_tokens, o.max_logit_rows);
  running_.reserve(size_t(o.max_num_seqs));
  batch_.reserve(size_t(o.max_num_seqs));
}

void Scheduler::add(Sequence* seq) {
  seq->status = SeqStatus::Waiting;
  waiting_.push_back(seq);
}

void Scheduler::release(Sequence* seq) {
  // Last block first, so that a sequence's tail is evicted before its (more shareable) head.
  for (auto it = seq->blocks.rbegin(); it != seq->blocks.rend(); ++it) pool_.release({&*it, 1});
  seq->blocks.clear();
  seq->num_computed = 0;
  seq->num_registered = 0;
  seq->last_hash = BlockPool::kRootHash;
}

void Scheduler::remove(Sequence* seq) {
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) running_.erase(it);
  if (auto it = std::find(waiting_.begin(), waiting_.end(), seq); it != waiting_.end()) waiting_.erase(it);
  release(seq);
  seq->status = SeqStatus::Finished;
}

void Scheduler::preempt(Sequence* seq) {
  release(seq);
  seq->status = SeqStatus::Waiting;
  ++seq->preemptions;
  ++stats_.preemptions;
  waiting_.push_front(seq);
}

bool Scheduler::grow(Sequence* seq, int64_t positions) {
  const int64_t bs = pool_.block_size();
  const int64_t need = (positions + bs - 1) / bs - int64_t(seq->blocks.size());
  return need <= 0 || pool_.allocate(need, seq->blocks);
}

void Scheduler::admit_prefix(Sequence* seq) {
  if (!pool_.prefix_caching() || seq->want_prompt_logits || !seq->blocks.empty()) return;
  const int64_t bs = pool_.block_size();
  // Never the whole sequence: its last token must be computed to produce logits.
  const int64_t max_blocks = (seq->num_tokens() - 1) / bs;
  uint64_t parent = BlockPool::kRootHash;
  for (int64_t b = 0; b < max_blocks; ++b) {
    const std::span<const int32_t> toks(seq->tokens.data() + b * bs, size_t(bs));
    const uint64_t h = BlockPool::hash_block(parent, toks);
    const int32_t blk = pool_.lookup(h, parent, toks);
    if (blk < 0) break;
    seq->blocks.push_back(blk);
    parent = h;
  }
  seq->num_registered = int64_t(seq->blocks.size());
  seq->num_computed = seq->num_registered * bs;
  seq->last_hash = parent;
}

std::span<const ScheduledSeq> Scheduler::schedule() {
  batch_.clear();
  int64_t budget = opt_.max_num_batched_tokens, rows = opt_.max_logit_rows;
  bool preempted = false;
  // How many tokens of `s` to feed, and which logits it needs, within the remaining budget.
  auto plan = [&](Sequence* s, int64_t& n, LogitsFor& logits) {
    n = std::min(s->num_tokens() - s->num_computed, budget);
    logits = s->num_computed + n == s->num_tokens() ? LogitsFor::Last : LogitsFor::None;
    if (s->want_prompt_logits && s->num_computed < s->prompt_len) {
      n = std::min(n, rows);
      logits = LogitsFor::All;
    }
  };
  auto rows_for = [](LogitsFor l, int64_t n, int drafts) -> int64_t {
    return l == LogitsFor::All ? n + drafts : l == LogitsFor::Last ? 1 + drafts : 0;
  };

  for (size_t i = 0; i < running_.size();) {
    Sequence* s = running_[i];
    int64_t n;
    LogitsFor logits;
    plan(s, n, logits);
    if (n <= 0) break;
    int drafts = 0;
    if (opt_.ngram.k > 0 && logits == LogitsFor::Last && s->num_tokens() - s->num_computed == 1 && s->forced.empty()) {
      const int64_t room = std::min({budget - n, rows - 1, int64_t(s->params.max_tokens) - s->num_generated() - 1,
                                     opt_.max_model_len - s->num_tokens() - 1});
      if (room > 0) drafts = propose_ngram(s->tokens, opt_.ngram, int(room), s->drafts.data());
      if (drafts > 0) logits = LogitsFor::All;  // the last token and every draft: 1 + drafts rows
    }
    if (rows_for(logits, n, drafts) > rows) break;
    bool dropped = false;
    while (!grow(s, s->num_computed + n + drafts)) {
      Sequence* victim = running_.back();
      running_.pop_back();
      preempt(victim);
      preempted = true;
      if (victim == s) {
        dropped = true;
        break;
      }
    }
    if (dropped) break;
    batch_.push_back({s, n, drafts, logits});
    budget -= n + drafts;
    rows -= rows_for(logits, n, drafts);
    ++i;
  }

  while (!preempted && !waiting_.empty() && int64_t(running_.size()) < opt_.max_num_seqs && budget > 0 && rows > 0) {
    Sequence* s = waiting_.front();
    admit_prefix(s);
    int64_t n;
    LogitsFor logits;
    plan(s, n, logits);
    if (n <= 0 || rows_for(logits, n, 0) > rows || !grow(s, s->num_computed + n)) {
      release(s);  // gives back any prefix-cache hits; it stays first in line
      break;
    }
    waiting_.pop_front();
    running_.push_back(s);
    s->status = SeqStatus::Running;
    if (pool_.prefix_caching() && !s->want_prompt_logits) {
      stats_.prefix_query_tokens += s->num_tokens();
      stats_.prefix_hit_tokens += s->num_computed;
    }
    if (!s->admitted_once) s->cached_tokens = s->num_computed;
    s->admitted_once = true;
    batch_.push_back({s, n, 0, logits});
    budget -= n;
    rows -= rows_for(logits, n, 0);
  }
  return batch_;
}

void Scheduler::computed(Sequence* seq, int64_t num_computed) {
  seq->num_computed = num_computed;
  if (!pool_.prefix_caching() || seq->want_prompt_logits) return;
  const int64_t bs = pool_.block_size();
  while ((seq->num_registered + 1) * bs <= num_computed) {
    const int64_t b = seq->num_registered;
    const std::span<const int32_t> toks(seq->tokens.data() + b * bs, size_t(bs));
    const uint64_t h = BlockPool::hash_block(seq->last_hash, toks);
    pool_.register_full(seq->blocks[size_t(b)], h, seq->last_hash, toks);
    seq->last_hash = h;
    ++seq->num_registered;
  }
}

}  // namespace m2
