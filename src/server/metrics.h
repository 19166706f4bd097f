// Prometheus metrics of the server, with vLLM-like names under the "m2:" prefix: request and token
// counters, engine gauges (running/waiting requests, KV blocks, prefix-cache hit rate, speculation,
// preemptions), and latency histograms (time to first token, inter-token latency, end-to-end).
// Thread-safe: updated from the engine thread, read by /metrics handlers.
#pragma once
#include <array>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace m2 {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // Prometheus text lines of `name` (buckets, sum, count); `labels` like "model_name=\"x\"".
  std::string render(const std::string& name, const std::string& help, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last = +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  explicit Metrics(std::string model_name);

  void request_started();
  void first_token(double ttft_seconds);
  void tokens(int64_t n, double seconds_since_previous);  // n tokens arrived after this gap
  void request_finished(FinishReason reason, double e2e_seconds, int64_t prompt_tokens, int64_t generation_tokens);
  void http_error(int status);

  // The exposition text, with the engine's counters and gauges from `engine`.
  std::string render(const EngineStats& engine) const;

 private:
  std::string model_;
  mutable std::mutex mutex_;
  Histogram ttft_, itl_, e2e_, prompt_len_, gen_len_;
  int64_t started_ = 0;
  std::array<int64_t, 5> finished_{};  // by FinishReason
  std::map<int, int64_t> http_errors_;
};

}  // namespace m2
