// The engine requests of one API request (n choices, or several prompts) and the events they send
// back: the engine thread's sinks copy each step's output into a queue; the HTTP thread that owns
// the Generation waits on it, parses and streams. Destroying a Generation (or abort()) cancels
// whatever has not finished, which frees its KV blocks at once.
#pragma once
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/async_engine.h"
#include "server/metrics.h"

namespace m2 {

struct ChoiceEvent {
  int choice = 0;
  std::vector<int32_t> tokens;             // new tokens
  std::string text;                        // new text (stop strings cut, held back while undecided)
  std::vector<TokenLogprobs> logprobs;     // of the new tokens, when asked for
  bool finished = false;
  FinishReason finish = FinishReason::None;
  std::string stop_reason;
  std::string error;                       // the engine refused or failed the request
  int64_t prompt_tokens = 0, cached_tokens = 0, generated = 0;
  int64_t spec_drafted = 0, spec_accepted = 0;
  std::vector<float> margins;              // on the finishing event, with --debug-decision-margins
};

class Generation {
 public:
  // Submits every request (validation errors throw before anything runs). `log_tag` names the API
  // request in the one log line each engine request writes when it finishes.
  Generation(AsyncEngine& engine, Metrics& metrics, std::vector<Request> requests, std::string log_tag, bool log);
  ~Generation();
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  int choices() const { return int(ids_.size()); }
  // The next event of any choice, waiting until `deadline`; false on timeout.
  bool next(ChoiceEvent& e, std::chrono::steady_clock::time_point deadline);
  bool all_finished() const;
  void abort();

 private:
  struct Shared {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<ChoiceEvent> events;
    int finished = 0;
  };
  AsyncEngine& engine_;
  std::shared_ptr<Shared> shared_;
  std::vector<uint64_t> ids_;
  int delivered_finished_ = 0;
};

}  // namespace m2
