// What every API handler needs from the server: the engine, the model's text tools, limits,
// metrics, the scripted outputs (tests), and helpers shared by the OpenAI and Anthropic APIs.
#pragma once
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "runtime/async_engine.h"
#include "server/api_error.h"
#include "server/generation.h"
#include "server/json_fields.h"
#include "server/metrics.h"
#include "text/chat.h"
#include "text/tokenizer.h"

namespace m2 {

// --scripted-output: one JSON string per line, handed to API requests in arrival order.
class ScriptedOutputs {
 public:
  explicit ScriptedOutputs(const std::string& path);
  std::string next();  // throws ApiError 500 when the script is exhausted
  size_t remaining() const;

 private:
  mutable std::mutex mutex_;
  std::deque<std::string> lines_;
};

struct ApiLimits {
  int64_t max_model_len = 0;
  int max_n = 16;                                  // choices per request
  std::chrono::milliseconds request_timeout{600000};
};

struct ApiContext {
  AsyncEngine& engine;
  Metrics& metrics;
  const Tokenizer& tokenizer;
  const ChatFormat* chat = nullptr;       // null: the model has no chat template
  std::vector<std::string> model_names;   // the first is the one reported
  SamplingParams defaults;                // from generation_config.json
  ApiLimits limits;
  std::string reasoning_parser = "auto";  // auto | minimax_m2 | minimax_m2_append_think | none
  bool auto_tool_choice = false;          // --enable-auto-tool-choice
  ScriptedOutputs* scripted = nullptr;
  bool log_requests = true;
  std::atomic<uint64_t>* request_counter = nullptr;

  // The served model a request names (its `model` field); 404 for others. Absent = the default.
  void check_model(const json& body) const;
  std::string new_id(const char* prefix) const;  // "chatcmpl-1f…" (hex)
  // The text of one token as logprob entries show it.
  std::string token_text(int32_t id) const;
  ReasoningMode reasoning_mode(const std::string& rendered_prompt) const;
  // The scripted output for the next request, tokenized (null when not in scripted mode).
  std::optional<std::vector<int32_t>> scripted_tokens() const;
};

// Sampling parameters of an OpenAI-style body over the model's defaults: temperature, top_p, top_k,
// min_p, seed, stop, stop_token_ids, max_tokens / max_completion_tokens (default: what the context
// leaves), min_tokens, presence/frequency/repetition penalties, ignore_eos, skip_special_tokens,
// include_stop_str_in_output. Range checks happen in SamplingParams::validate (400 at submission).
SamplingParams parse_sampling(const json& body, const ApiContext& ctx, int64_t prompt_tokens);

// Parses a JSON body; malformed JSON or a non-object is a 400.
json parse_body(const std::string& body);

// One SSE event: "data: <json>\n\n" (or "event: <name>\ndata: ...\n\n").
std::string sse(const std::string& data, const std::string& event = {});

// Runs a generation to its end on the HTTP thread, calling on_event for every event; `keepalive` is
// written after each silent interval (SSE comments or pings keep proxies open and reveal a client
// that has gone). Returns false when the client went away (the generation is aborted) or the
// deadline passed (`timed_out` set).
bool drive(Generation& gen, httplib::DataSink* sink, std::chrono::steady_clock::time_point deadline,
           const std::function<bool(const ChoiceEvent&)>& on_event, const std::string& keepalive, bool* timed_out);

// Submits the requests of an API call (one per choice / prompt); an engine validation error is a 400.
std::shared_ptr<Generation> start_generation(ApiContext& ctx, std::vector<Request> requests, const std::string& tag);

// Writes `out` to the sink; false when the client has gone.
inline bool write(httplib::DataSink& sink, const std::string& out) { return sink.write(out.data(), out.size()); }

}  // namespace m2
