// A request as the engine tracks it while it waits, runs and finishes, and what each step reports.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/block_pool.h"
#include "runtime/sampling.h"

namespace m2 {

enum class FinishReason : uint8_t { None, Stop, Length, Abort, Error };
std::string_view finish_reason_name(FinishReason r);  // "", "stop", "length", "abort", "error"

// Turns generated ids into text as they come (the text layer's incremental detokenizer behind an
// interface, so that the runtime does not depend on the tokenizer).
class TextDecoder {
 public:
  virtual ~TextDecoder() = default;
  virtual void push(int32_t id, std::string& out) = 0;  // appends the text `id` completes
  virtual void flush(std::string& out) = 0;             // appends whatever is held back
};
using TextDecoderFactory = std::function<std::unique_ptr<TextDecoder>(bool skip_special_tokens)>;

struct Request {
  uint64_t id = 0;  // 0: the engine assigns one
  std::vector<int32_t> prompt;
  SamplingParams params;
  bool prompt_logits = false;  // keep the logits of every prompt position ([prompt, vocab]); no prefix-cache reuse
  // Tokens emitted instead of sampled, in order; the request finishes (stop) once they are all out.
  // For driving output paths end to end with a model too small to choose them (m2 serve
  // --scripted-output). Stop conditions still apply.
  std::vector<int32_t> forced_output;
};

struct TokenLogprobs {
  float logprob = 0;
  std::vector<TopLogprob> top;  // the most likely tokens at this position, descending
};

enum class SeqStatus : uint8_t { Waiting, Running, Finished };

using SteadyTime = std::chrono::steady_clock::time_point;

struct Sequence {
  uint64_t id = 0;
  int64_t arrival = 0;                 // admission order (FCFS; the latest is preempted first)
  std::vector<int32_t> tokens;         // prompt, then generated tokens
  int64_t prompt_len = 0;
  SamplingParams params;
  Rng rng;
  SeqStatus status = SeqStatus::Waiting;

  // KV cache.
  std::vector<int32_t> blocks;         // block table
  int64_t num_computed = 0;            // leading tokens whose K/V are in the cache
  int64_t num_registered = 0;          // leading blocks registered in the prefix cache
  uint64_t last_hash = BlockPool::kRootHash;
  int64_t cached_tokens = 0;           // prompt tokens reused from the prefix cache at first admission
  bool admitted_once = false;
  int64_t preemptions = 0;

  // Speculation: this step's drafts, and counters.
  std::vector<int32_t> drafts;
  int64_t spec_drafted = 0, spec_accepted = 0;

  // Output.
  std::vector<TokenLogprobs> logprobs;  // per generated token, when params.logprobs ≥ 0
  // Per generated token, how far its choice was from flipping (greedy: logit gap to the runner-up;
  // sampled: probability distance to the nearest boundary), when EngineOptions asks for them.
  std::vector<float> margins;
  std::unique_ptr<TextDecoder> decoder;
  std::string text;                     // generated text so far (stop string cut off)
  size_t released = 0;                  // text already reported
  FinishReason finish = FinishReason::None;
  std::string stop_reason;              // the stop string, or the stop token id, that ended it
  bool want_prompt_logits = false;
  std::vector<int32_t> forced;          // Request::forced_output
  std::vector<float> prompt_logits;     // [prompt_len, vocab] when asked for
  SteadyTime arrival_time{}, first_token_time{}, finish_time{};

  int64_t num_tokens() const { return int64_t(tokens.size()); }
  int64_t num_generated() const { return num_tokens() - prompt_len; }
  std::span<const int32_t> generated() const { return {tokens.data() + prompt_len, size_t(num_generated())}; }
};

// What one step produced for one request; valid until the next step.
struct StepOutput {
  const Sequence* seq = nullptr;
  int64_t first_new = 0;  // index into seq->generated() of the first new token
  int64_t num_new = 0;
  std::string text;       // newly released text (held back while a stop string may still match)
  bool finished = false;

  uint64_t id() const { return seq->id; }
  std::span<const int32_t> new_tokens() const { return seq->generated().subspan(size_t(first_new), size_t(num_new)); }
};

}  // namespace m2
