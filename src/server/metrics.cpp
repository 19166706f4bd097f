#include "server/metrics.h"

#include <fmt/format.h>

namespace m2 {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help, const std::string& labels) const {
  std::string out = fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{{},le=\"{}\"}} {}\n", name, labels, bounds_[i], cum);
  }
  cum += counts_.back();
  out += fmt::format("{}_bucket{{{},le=\"+Inf\"}} {}\n", name, labels, cum);
  out += fmt::format("{}_sum{{{}}} {}\n{}_count{{{}}} {}\n", name, labels, sum_, name, labels, count_);
  return out;
}

namespace {
std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
}
std::vector<double> length_buckets() { return {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000}; }
}  // namespace

Metrics::Metrics(std::string model_name)
    : model_(std::move(model_name)), ttft_(latency_buckets()), itl_(latency_buckets()), e2e_(latency_buckets()),
      prompt_len_(length_buckets()), gen_len_(length_buckets()) {}

void Metrics::request_started() {
  std::lock_guard lock(mutex_);
  ++started_;
}

void Metrics::first_token(double s) {
  std::lock_guard lock(mutex_);
  ttft_.observe(s);
}

void Metrics::tokens(int64_t n, double gap) {
  std::lock_guard lock(mutex_);
  for (int64_t i = 0; i < n; ++i) itl_.observe(gap / double(n));
}

void Metrics::request_finished(FinishReason reason, double e2e, int64_t prompt, int64_t generated) {
  std::lock_guard lock(mutex_);
  ++finished_[size_t(reason)];
  e2e_.observe(e2e);
  prompt_len_.observe(double(prompt));
  gen_len_.observe(double(generated));
}

void Metrics::http_error(int status) {
  std::lock_guard lock(mutex_);
  ++http_errors_[status];
}

std::string Metrics::render(const EngineStats& e) const {
  std::lock_guard lock(mutex_);
  const std::string L = fmt::format("model_name=\"{}\"", model_);
  std::string out;
  auto metric = [&](const char* type, const std::string& name, const char* help, double v) {
    out += fmt::format("# HELP m2:{} {}\n# TYPE m2:{} {}\nm2:{}{{{}}} {}\n", name, help, name, type, name, L, v);
  };
  metric("gauge", "num_requests_running", "Requests in the running batch.", double(e.running));
  metric("gauge", "num_requests_waiting", "Requests waiting to be scheduled.", double(e.waiting));
  metric("gauge", "kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1).",
         e.kv_blocks_total ? double(e.kv_blocks_used) / double(e.kv_blocks_total) : 0.0);
  metric("gauge", "kv_cache_blocks_used", "KV-cache blocks referenced by requests.", double(e.kv_blocks_used));
  metric("gauge", "kv_cache_blocks_free", "KV-cache blocks an allocation can take (cached ones included).",
         double(e.kv_blocks_total - e.kv_blocks_used));
  metric("gauge", "kv_cache_blocks_cached", "KV-cache blocks holding a reusable prefix.", double(e.kv_blocks_cached));
  metric("counter", "prompt_tokens_total", "Prompt tokens of admitted requests.", double(e.prompt_tokens));
  metric("counter", "generation_tokens_total", "Generated tokens.", double(e.generation_tokens));
  metric("counter", "prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", double(e.prefix_query_tokens));
  metric("counter", "prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", double(e.prefix_hit_tokens));
  metric("gauge", "prefix_cache_hit_rate", "prefix_cache_hits_total / prefix_cache_queries_total.",
         e.prefix_query_tokens ? double(e.prefix_hit_tokens) / double(e.prefix_query_tokens) : 0.0);
  metric("counter", "num_preemptions_total", "Requests preempted (recomputed later) for lack of KV blocks.",
         double(e.preemptions));
  metric("counter", "spec_decode_num_draft_tokens_total", "N-gram draft tokens proposed.", double(e.spec_drafted));
  metric("counter", "spec_decode_num_accepted_tokens_total", "N-gram draft tokens accepted.", double(e.spec_accepted));
  metric("counter", "engine_steps_total", "Engine steps run.", double(e.steps));
  metric("counter", "request_started_total", "Requests accepted by the API.", double(started_));
  out += "# HELP m2:request_success_total Finished requests by finish reason.\n# TYPE m2:request_success_total counter\n";
  for (FinishReason r : {FinishReason::Stop, FinishReason::Length, FinishReason::Abort, FinishReason::Error})
    out += fmt::format("m2:request_success_total{{{},finished_reason=\"{}\"}} {}\n", L, finish_reason_name(r),
                       finished_[size_t(r)]);
  out += "# HELP m2:http_errors_total API errors by status.\n# TYPE m2:http_errors_total counter\n";
  for (const auto& [status, n] : http_errors_)
    out += fmt::format("m2:http_errors_total{{{},status=\"{}\"}} {}\n", L, status, n);
  out += ttft_.render("m2:time_to_first_token_seconds", "Time to the first generated token.", L);
  out += itl_.render("m2:inter_token_latency_seconds", "Time between generated tokens.", L);
  out += e2e_.render("m2:e2e_request_latency_seconds", "Request latency, arrival to finish.", L);
  out += prompt_len_.render("m2:request_prompt_tokens", "Prompt tokens per request.", L);
  out += gen_len_.render("m2:request_generation_tokens", "Generated tokens per request.", L);
  return out;
}

}  // namespace m2
