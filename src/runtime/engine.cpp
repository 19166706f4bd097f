#include "runtime/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <random>

#include "core/error.h"
#include "core/units.h"

namespace m2 {

std::string_view finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "";
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Abort: return "abort";
    case FinishReason::Error: return "error";
  }
  return "";
}

namespace {

using Clock = std::chrono::steady_clock;

// Fills in what the options leave open (KV blocks from the memory budget, max_model_len) and checks
// that one sequence of max_model_len tokens fits the cache.
EngineOptions resolve(const ModelWeights& w, const Backend& backend, EngineOptions o) {
  const ModelConfig& c = w.config;
  if (o.max_num_seqs <= 0 || o.max_num_batched_tokens <= 0)
    fail<InvalidArgument>("max_num_seqs ({}) and max_num_batched_tokens ({}) must be positive", o.max_num_seqs,
                          o.max_num_batched_tokens);
  if (o.ngram.k < 0 || o.ngram.k > 32) fail<InvalidArgument>("--speculative-ngram {}: expected 0 .. 32", o.ngram.k);
  if (o.ngram.min_n < 1 || o.ngram.max_n < o.ngram.min_n)
    fail<InvalidArgument>("n-gram sizes {} .. {} are invalid", o.ngram.min_n, o.ngram.max_n);
  if (o.kv.block_size <= 0 || o.kv.block_size > 4096)
    fail<InvalidArgument>("KV block size {} (expected 1 .. 4096)", o.kv.block_size);
  if (o.kv.num_blocks <= 0) {
    const size_t per = KvCache::bytes_per_block(c, o.kv.dtype, o.kv.block_size);
    if (o.kv.memory_bytes == 0) {
      // Room for every sequence at the model's longest context, capped at 4 GiB.
      const int64_t len = o.max_model_len > 0 ? o.max_model_len : c.max_position_embeddings;
      const int64_t blocks = o.max_num_seqs * ((len + o.kv.block_size - 1) / o.kv.block_size);
      o.kv.num_blocks = std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t((size_t(4) << 30) / per)));
    } else {
      o.kv.num_blocks = int64_t(o.kv.memory_bytes / per);
    }
    // Refused at start, not when the pages are first touched mid-request: a budget the backend cannot
    // hold, with the size that would fit (90% of what is free).
    const size_t free = backend.free_memory(), want = size_t(o.kv.num_blocks) * per;
    if (want > free / 10 * 9)
      fail<InvalidArgument>(
          "the KV cache needs {} ({} blocks of {} tokens) but the {} backend has {} free: give it at most {} "
          "(--kv-cache-memory), or lower --max-num-seqs / --max-model-len",
          human_bytes(double(want)), o.kv.num_blocks, o.kv.block_size, backend.name(), human_bytes(double(free)),
          human_bytes(double(free / 10 * 9)));
  }
  if (o.sample_vocab < 0) fail<InvalidArgument>("sample_vocab {} is negative", o.sample_vocab);
  if (o.sample_vocab == 0 || o.sample_vocab > c.vocab_size) o.sample_vocab = c.vocab_size;
  const int64_t capacity = o.kv.num_blocks * o.kv.block_size;
  if (o.max_model_len <= 0) o.max_model_len = std::min<int64_t>(c.max_position_embeddings, capacity);
  if (o.max_model_len > c.max_position_embeddings)
    fail<InvalidArgument>("max_model_len {} exceeds the model's max_position_embeddings = {}", o.max_model_len,
                          c.max_position_embeddings);
  if (capacity < o.max_model_len)
    fail<InvalidArgument>(
        "the KV cache holds {} tokens ({} blocks of {}, {} each), fewer than max_model_len = {}: give it more memory "
        "or lower max_model_len to at most {}",
        capacity, o.kv.num_blocks, o.kv.block_size, kv_cache_dtype_name(o.kv.dtype), o.max_model_len, capacity);
  return o;
}

ModelLimits limits_for(const EngineOptions& o) {
  ModelLimits l;
  l.max_tokens = o.max_num_batched_tokens;
  l.max_seqs = o.max_num_seqs;
  l.max_logit_rows = std::max<int64_t>(o.max_num_seqs * (1 + o.ngram.k), o.max_prompt_logit_rows);
  l.max_context = o.max_model_len;
  return l;
}

}  // namespace

Engine::Engine(const ModelWeights& weights, Backend& backend, const EngineOptions& options)
    : opt_(resolve(weights, backend, options)),
      model_(weights, backend, limits_for(opt_), opt_.kv.block_size, opt_.shard, opt_.collectives),
      kv_(backend, weights.config, model_.weights(), opt_.kv, opt_.checkpoint),
      scheduler_(kv_.blocks(), SchedulerOptions{opt_.max_num_seqs, opt_.max_num_batched_tokens,
                                                model_.limits().max_logit_rows, opt_.max_model_len, opt_.ngram}),
      sampler_(opt_.sample_vocab) {
  notices_ = kv_.notices();
  const ModelLimits& l = model_.limits();
  tokens_.resize(size_t(l.max_tokens));
  positions_.resize(size_t(l.max_tokens));
  slots_.resize(size_t(l.max_tokens));
  steps_.resize(size_t(l.max_seqs));
  logits_.resize(size_t(l.max_logit_rows) * size_t(config().vocab_size));
  output_index_.reserve(size_t(l.max_seqs));
  outputs_.reserve(size_t(l.max_seqs) * 2);
  finished_ids_.reserve(size_t(l.max_seqs) * 2);
  masked_.reserve(opt_.eos_token_ids.size() + 16);
  for (int32_t id : opt_.eos_token_ids)
    if (id < 0 || id >= config().vocab_size)
      fail<InvalidArgument>("end-of-sequence id {} is outside the vocabulary [0, {})", id, config().vocab_size);
}

Engine::~Engine() = default;

void Engine::run_batch(const ForwardBatch& batch) {
  model_.forward(batch, kv_.view(), logits_.data());
  ++counters_.steps;
}

void Engine::validate(const Request& r) const {
  const int64_t V = config().vocab_size, P = int64_t(r.prompt.size());
  if (P == 0) fail<InvalidArgument>("the prompt is empty");
  for (size_t i = 0; i < r.prompt.size(); ++i)
    if (r.prompt[i] < 0 || r.prompt[i] >= V)
      fail<InvalidArgument>("prompt token {} at position {} is outside the vocabulary [0, {})", r.prompt[i], i, V);
  r.params.validate(V);
  if (P + r.params.max_tokens > opt_.max_model_len)
    fail<InvalidArgument>("this model's maximum context length is {} tokens; the request has {} prompt tokens and asks "
                          "for {} more",
                          opt_.max_model_len, P, r.params.max_tokens);
  for (int32_t t : r.forced_output)
    if (t < 0 || t >= opt_.sample_vocab)
      fail<InvalidArgument>("forced output token {} is outside the vocabulary [0, {})", t, opt_.sample_vocab);
  if (!r.params.stop.empty() && !opt_.text_decoder)
    fail<InvalidArgument>("stop strings need a tokenizer: this engine produces token ids only");
  if (r.params.stop.size() > 64) fail<InvalidArgument>("stop: {} strings (at most 64)", r.params.stop.size());
  for (const auto& s : r.params.stop)
    if (s.size() > 1024) fail<InvalidArgument>("stop: a stop string of {} bytes (at most 1024)", s.size());
}

uint64_t Engine::add_request(Request r) {
  validate(r);
  const uint64_t id = r.id ? r.id : next_id_++;
  if (seqs_.count(id)) fail<InvalidArgument>("request id {} is already in use", id);
  auto seq = std::make_unique<Sequence>();
  Sequence& s = *seq;
  s.id = id;
  s.arrival = next_arrival_++;
  s.prompt_len = int64_t(r.prompt.size());
  const int64_t most = s.prompt_len + r.params.max_tokens + opt_.ngram.k + 1;
  s.tokens.reserve(size_t(most));  // generated tokens never reallocate it
  s.tokens.assign(r.prompt.begin(), r.prompt.end());
  s.blocks.reserve(size_t((most + opt_.kv.block_size - 1) / opt_.kv.block_size + 1));
  s.drafts.resize(size_t(opt_.ngram.k));
  s.params = std::move(r.params);
  s.rng.seed(s.params.seed ? *s.params.seed : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}());
  if (opt_.text_decoder) s.decoder = opt_.text_decoder(s.params.skip_special_tokens);
  s.want_prompt_logits = r.prompt_logits;
  s.forced = std::move(r.forced_output);
  if (r.prompt_logits) s.prompt_logits.assign(size_t(s.prompt_len) * size_t(config().vocab_size), 0.0f);
  if (s.params.logprobs >= 0) s.logprobs.reserve(size_t(s.params.max_tokens));
  s.arrival_time = Clock::now();
  counters_.prompt_tokens += s.prompt_len;
  scheduler_.add(&s);
  seqs_.emplace(id, std::move(seq));
  return id;
}

void Engine::abort(uint64_t id, FinishReason reason) {
  auto it = seqs_.find(id);
  if (it == seqs_.end() || it->second->status == SeqStatus::Finished) return;
  finish(*it->second, reason);
  aborted_.push_back(id);
}

std::vector<uint64_t> Engine::active_ids() const {
  std::vector<uint64_t> ids;
  for (const auto& [id, s] : seqs_)
    if (s->status != SeqStatus::Finished) ids.push_back(id);
  return ids;
}

bool Engine::has_work() const { return scheduler_.has_work() || !aborted_.empty(); }

const Sequence* Engine::find(uint64_t id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

void Engine::finish(Sequence& s, FinishReason reason) {
  s.finish = reason;
  s.finish_time = Clock::now();
  scheduler_.remove(&s);  // blocks back to the pool at once
  ++counters_.finished[size_t(reason)];
}

void Engine::record_margin(Sequence& s, double margin) {
  if (opt_.record_decision_margins) s.margins.push_back(float(std::min(margin, 1e30)));
}

bool Engine::is_stop_token(const Sequence& s, int32_t t) const {
  if (s.num_generated() <= s.params.min_tokens && s.params.min_tokens > 0) return false;
  if (!s.params.ignore_eos && std::find(opt_.eos_token_ids.begin(), opt_.eos_token_ids.end(), t) != opt_.eos_token_ids.end())
    return true;
  return std::find(s.params.stop_token_ids.begin(), s.params.stop_token_ids.end(), t) != s.params.stop_token_ids.end();
}

bool Engine::append(Sequence& s, int32_t token, const float* row) {
  if (s.params.logprobs >= 0) {
    TokenLogprobs lp;
    lp.top.resize(size_t(s.params.logprobs));
    lp.logprob = Sampler::logprobs(row, opt_.sample_vocab, token, s.params.logprobs, lp.top.data());
    s.logprobs.push_back(std::move(lp));
  }
  s.tokens.push_back(token);
  if (s.num_generated() == 1) s.first_token_time = Clock::now();
  ++counters_.generation_tokens;
  if (is_stop_token(s, token)) {
    s.finish = FinishReason::Stop;
    // vLLM's stop_reason: the id of a requested stop token; none for the model's own EOS.
    if (std::find(s.params.stop_token_ids.begin(), s.params.stop_token_ids.end(), token) != s.params.stop_token_ids.end())
      s.stop_reason = std::to_string(token);
    if (s.decoder) s.decoder->flush(s.text);
    return false;
  }
  if (s.decoder) {
    const size_t before = s.text.size();
    s.decoder->push(token, s.text);
    if (s.num_generated() == s.params.max_tokens || s.num_tokens() == opt_.max_model_len) s.decoder->flush(s.text);
    // The earliest stop string that now appears, searching only where the new text could complete one.
    size_t best = std::string::npos, best_len = 0;
    for (const auto& stop : s.params.stop) {
      const size_t from = before >= stop.size() - 1 ? before - (stop.size() - 1) : 0;
      const size_t at = s.text.find(stop, from);
      if (at < best) best = at, best_len = stop.size();
    }
    if (best != std::string::npos) {
      s.stop_reason = s.text.substr(best, best_len);
      s.text.resize(best + (s.params.include_stop_str_in_output ? best_len : 0));
      s.finish = FinishReason::Stop;
      return false;
    }
  }
  if (s.num_generated() >= s.params.max_tokens || s.num_tokens() >= opt_.max_model_len) {
    s.finish = FinishReason::Length;
    return false;
  }
  return true;
}

void Engine::release_text(Sequence& s, StepOutput& out) {
  size_t to = s.text.size();
  if (s.finish == FinishReason::None) {
    // Hold back the longest tail that is still the start of some stop string.
    size_t hold = 0;
    for (const auto& stop : s.params.stop)
      for (size_t k = std::min(stop.size() - 1, s.text.size()); k > hold; --k)
        if (s.text.compare(s.text.size() - k, k, stop, 0, k) == 0) {
          hold = k;
          break;
        }
    to = std::max(s.released, s.text.size() - hold);
  }
  if (to > s.released) out.text.assign(s.text, s.released, to - s.released);
  s.released = to;
}

void Engine::process(const ScheduledSeq& sch, const float* logits) {
  Sequence& s = *sch.seq;
  const int64_t V = config().vocab_size;
  const int64_t start = s.num_computed;
  if (start < s.prompt_len) counters_.computed_prompt_tokens += std::min(sch.tokens, s.prompt_len - start);
  if (sch.logits == LogitsFor::All && s.want_prompt_logits)
    for (int64_t i = 0; i < sch.tokens && start + i < s.prompt_len; ++i)
      std::copy_n(logits + i * V, V, s.prompt_logits.data() + (start + i) * V);
  if (sch.logits == LogitsFor::None) {
    scheduler_.computed(&s, start + sch.tokens);
    return;
  }
  const float* row0 = logits + (sch.logits == LogitsFor::All ? sch.tokens - 1 : 0) * V;
  const int64_t first_new = s.num_generated();
  masked_.clear();
  auto prepare = [&](const float* row) {
    masked_.clear();
    if (s.num_generated() < s.params.min_tokens) {
      if (!s.params.ignore_eos) masked_.insert(masked_.end(), opt_.eos_token_ids.begin(), opt_.eos_token_ids.end());
      masked_.insert(masked_.end(), s.params.stop_token_ids.begin(), s.params.stop_token_ids.end());
    }
    sampler_.prepare(row, s.params, s.tokens, s.prompt_len, masked_);
  };
  bool running = s.params.max_tokens > 0;
  if (!running) s.finish = FinishReason::Length;
  int64_t accepted = 0;
  if (running && !s.forced.empty()) {
    // Scripted output: the next forced token; the script's end is the request's end.
    const int64_t g = s.num_generated();
    if (g < int64_t(s.forced.size())) {
      record_margin(s, 1e30);
      running = append(s, s.forced[size_t(g)], row0);
    }
    if (running && s.num_generated() >= int64_t(s.forced.size())) {
      s.finish = FinishReason::Stop;
      running = false;
    }
  } else if (running) {
    for (int j = 0; j < sch.drafts && running; ++j) {
      const float* row = row0 + j * V;
      prepare(row);
      bool ok = false;
      double margin = 0;
      const int32_t t = sampler_.verify(s.drafts[size_t(j)], s.rng, &ok, &margin);
      record_margin(s, margin);
      running = append(s, t, row);
      if (!ok) break;
      ++accepted;
    }
    if (running && accepted == sch.drafts) {  // every draft taken (or none proposed): the next token
      const float* row = row0 + sch.drafts * V;
      prepare(row);
      double margin = 0;
      const int32_t t = sampler_.pick(s.rng, &margin);
      record_margin(s, margin);
      running = append(s, t, row);
    }
  }
  s.spec_drafted += sch.drafts;
  s.spec_accepted += accepted;
  counters_.spec_drafted += sch.drafts;
  counters_.spec_accepted += accepted;
  scheduler_.computed(&s, start + sch.tokens + accepted);

  StepOutput out;
  out.seq = &s;
  out.first_new = first_new;
  out.num_new = s.num_generated() - first_new;
  if (s.finish != FinishReason::None) finish(s, s.finish);
  release_text(s, out);
  out.finished = s.finish != FinishReason::None;
  if (out.finished) finished_ids_.push_back(s.id);
  outputs_.push_back(std::move(out));
}

const std::vector<StepOutput>& Engine::step() {
  outputs_.clear();
  for (uint64_t id : finished_ids_) seqs_.erase(id);
  finished_ids_.clear();
  for (uint64_t id : aborted_) {
    Sequence& s = *seqs_.at(id);
    StepOutput out;
    out.seq = &s;
    out.first_new = s.num_generated();
    out.finished = true;
    outputs_.push_back(std::move(out));
    finished_ids_.push_back(id);
  }
  aborted_.clear();
  if (!scheduler_.has_work()) return outputs_;
  const std::span<const ScheduledSeq> batch = scheduler_.schedule();
  if (batch.empty()) return outputs_;
  const int64_t bs = opt_.kv.block_size;
  int64_t T = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const ScheduledSeq& b = batch[i];
    Sequence& s = *b.seq;
    const int64_t n = b.tokens + b.drafts;
    for (int64_t j = 0; j < n; ++j, ++T) {
      const int64_t pos = s.num_computed + j;
      tokens_[size_t(T)] = j < b.tokens ? s.tokens[size_t(pos)] : s.drafts[size_t(j - b.tokens)];
      positions_[size_t(T)] = int32_t(pos);
      slots_[size_t(T)] = int64_t(s.blocks[size_t(pos / bs)]) * bs + pos % bs;
    }
    steps_[i] = SequenceStep{n, s.num_computed + n, s.blocks, b.logits};
  }
  ForwardBatch fb{{tokens_.data(), size_t(T)}, {positions_.data(), size_t(T)}, {slots_.data(), size_t(T)},
                  {steps_.data(), batch.size()}};
  if (opt_.before_forward) opt_.before_forward(fb);
  model_.forward(fb, kv_.view(), logits_.data());
  ++counters_.steps;
  const int64_t V = config().vocab_size;
  int64_t row = 0;
  for (const ScheduledSeq& b : batch) {
    process(b, logits_.data() + row * V);
    row += b.logits == LogitsFor::All ? b.tokens + b.drafts : b.logits == LogitsFor::Last ? 1 + b.drafts : 0;
  }
  return outputs_;
}

EngineStats Engine::stats() const {
  EngineStats s = counters_;
  s.running = scheduler_.num_running();
  s.waiting = scheduler_.num_waiting();
  s.kv_blocks_total = kv_.blocks().num_blocks();
  s.kv_blocks_used = kv_.blocks().num_used();
  s.kv_blocks_cached = kv_.blocks().num_cached();
  s.prefix_query_tokens = scheduler_.stats().prefix_query_tokens;
  s.prefix_hit_tokens = scheduler_.stats().prefix_hit_tokens;
  s.preemptions = scheduler_.stats().preemptions;
  return s;
}

}  // namespace m2
