// m2 bench: the serving benchmark for any OpenAI-compatible endpoint (m2 serve, vLLM, SGLang,
// llama-server). Three modes:
//   - llama-benchy's table: prompt processing (pp) and token generation (tg) at context depths,
//     exact prompt lengths (real text tokenized by the server's /tokenize, sent as token ids),
//     prefix caching defeated unless asked for (then the context is loaded first and the prompt
//     runs over the cached context);
//   - a concurrency sweep: closed-loop clients, or Poisson arrivals at a request rate;
//   - a workload replay: recorded chat requests (tools, long histories) from a JSONL file.
// Every request is streamed and timed on arrival of each SSE event.
#pragma once
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace m2 {

struct BenchTarget {
  std::string root;     // http://host:port (a trailing /v1 is dropped)
  std::string model;    // empty: the first of /v1/models
  std::string api_key;
  std::chrono::milliseconds timeout{600000};
};

// One streamed request's timings (seconds from its start) and counts.
struct RequestRecord {
  std::string test;            // "pp512", "tg128 @ d4096", "c8", "workload"
  int run = 0;
  int64_t prompt_tokens = 0;   // as sent (token ids) or as the server's usage reports (chat)
  int64_t output_tokens = 0;   // the server's usage (or counted events when it sends none)
  bool usage_reported = false;
  int64_t events = 0;          // SSE events with generated text
  double start = 0;            // since the beginning of the mode (for throughput windows)
  double ttfr = 0;             // first response event of any kind
  double ttft = 0;             // first event carrying generated text
  double last = 0;             // last event carrying generated text
  double e2e = 0;
  std::vector<double> gaps;    // between events carrying text
  std::string error;
  nlohmann::json to_json() const;
};

// Progress of a mode: done of total, and what is running.
using ProgressFn = std::function<void(int done, int total, const std::string& what)>;

struct Stats {
  double mean = 0, sd = 0, p50 = 0, p90 = 0, p99 = 0;
  size_t n = 0;
  static Stats of(std::vector<double> v);
};

class ServingBench {
 public:
  // Connects (GET /v1/models) and picks the model; throws IoError with what went wrong.
  explicit ServingBench(BenchTarget target);

  const std::string& model() const { return target_.model; }
  // Median of `n` round trips: "api" = GET /v1/models; "generation" = a 1-token completion.
  double latency(const std::string& mode, int n = 5);
  // Tokenizes `text` with the server's /tokenize: the corpus prompts are cut from.
  void load_corpus(const std::string& text);
  size_t corpus_tokens() const { return corpus_.size(); }
  // `n` corpus tokens starting at a position derived from `seed` (distinct seeds: distinct prompts).
  std::vector<int32_t> prompt(int64_t n, uint64_t seed) const;

  // Streams /v1/completions for a token-id prompt, generating exactly max_tokens (ignore_eos).
  RequestRecord completion(const std::vector<int32_t>& prompt, int max_tokens, double mode_start_offset = 0);
  // Streams /v1/chat/completions with `body` (model, stream and usage options are set here).
  RequestRecord chat(nlohmann::json body);

  // GET /metrics, or empty when the server has none.
  std::string metrics_text();

 private:
  RequestRecord stream(const std::string& path, const nlohmann::json& body, bool chat);

  BenchTarget target_;
  std::vector<int32_t> corpus_;
};

// llama-benchy's table.
struct BenchyOptions {
  std::vector<int> pp = {512}, tg = {128}, depth = {0};
  int runs = 3;
  bool allow_prefix_cache = false;
  std::string latency_mode = "api";  // api | generation | none
};
struct BenchyRow {
  std::string test;                  // "pp512", "tg128", "pp512 @ d4096", "ctx_pp @ d4096"
  Stats tps, ttfr_ms, est_ppt_ms, e2e_ttft_ms;
  bool is_pp = true;
};
std::vector<BenchyRow> run_benchy(ServingBench& b, const BenchyOptions& o, double latency_s,
                                  std::vector<RequestRecord>* records, const ProgressFn& progress = {});

// The concurrency sweep.
struct SweepOptions {
  std::vector<int> concurrency = {1, 8, 32, 64};
  int requests = 0;          // per level; 0 = 4 × concurrency (at least 8)
  double request_rate = 0;   // requests/s, Poisson arrivals; 0 = closed loop
  int prompt_len = 512, gen_len = 128;
};
struct SweepRow {
  int concurrency = 0;
  int requests = 0, errors = 0;
  double duration_s = 0, output_tps = 0, total_output_tokens = 0;
  Stats ttft_ms, itl_ms, e2e_ms, client_tps;
};
std::vector<SweepRow> run_sweep(ServingBench& b, const SweepOptions& o, std::vector<RequestRecord>* records,
                                const ProgressFn& progress = {});

// The workload replay: each line of `file` is a chat completion body.
SweepRow run_workload(ServingBench& b, const std::string& file, int concurrency, std::vector<RequestRecord>* records,
                      const ProgressFn& progress = {});

// Reports.
std::string benchy_table(const std::string& model, const std::vector<BenchyRow>& rows);
std::string sweep_table(const std::vector<SweepRow>& rows, const std::string& title);

}  // namespace m2
