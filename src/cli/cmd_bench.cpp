// m2 bench URL: the serving benchmark (llama-benchy's pp/tg table, concurrency sweeps, workload
// replay) against any OpenAI-compatible endpoint. Markdown to stdout, progress to stderr, every
// request in --json, SVG plots in --plots.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "bench/serving_bench.h"
#include "cli/commands.h"
#include "core/svg.h"
#include "core/error.h"

namespace m2::cli {

namespace {

struct BenchFlags {
  BenchTarget target;
  int timeout_s = 600;
  BenchyOptions benchy;
  SweepOptions sweep;
  std::string workload, text, json_out, plots;
  int overhead = 0;
  CLI::Option *pp = nullptr, *tg = nullptr, *depth = nullptr, *conc = nullptr, *rate = nullptr;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail<IoError>("{}: cannot read", path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The samples of a Prometheus scrape: "name{labels}" → value.
std::map<std::string, double> parse_metrics(const std::string& text) {
  std::map<std::string, double> m;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    try {
      m[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
    } catch (const std::exception&) {
    }
  }
  return m;
}

// Counter deltas between two scrapes (samples named *_total).
std::string metric_deltas(const std::map<std::string, double>& a, const std::map<std::string, double>& b) {
  std::string out;
  for (const auto& [k, v] : b)
    if (k.find("_total") != std::string::npos && a.count(k) && v != a.at(k)) out += fmt::format("  {} +{:g}\n", k, v - a.at(k));
  return out;
}

// The server's own end-to-end time of the requests between two scrapes (m2 serve's
// m2:e2e_request_latency_seconds: from the request entering the engine queue to its last output),
// summed; nullopt when the server does not export it.
std::optional<std::pair<double, double>> server_e2e(const std::map<std::string, double>& a, const std::map<std::string, double>& b) {
  auto find = [](const std::map<std::string, double>& m, const std::string& prefix) -> std::optional<double> {
    for (const auto& [k, v] : m)
      if (k.rfind(prefix, 0) == 0) return v;
    return std::nullopt;
  };
  auto s0 = find(a, "m2:e2e_request_latency_seconds_sum"), s1 = find(b, "m2:e2e_request_latency_seconds_sum");
  auto c0 = find(a, "m2:e2e_request_latency_seconds_count"), c1 = find(b, "m2:e2e_request_latency_seconds_count");
  if (!s0 || !s1 || !c0 || !c1) return std::nullopt;
  return std::make_pair(*s1 - *s0, *c1 - *c0);
}

int bench(BenchFlags& f) {
  f.target.timeout = std::chrono::seconds(f.timeout_s);
  const bool tty = isatty(2);
  auto progress = [tty](int done, int total, const std::string& what) {
    const int w = 30, fill = total ? w * done / total : w;
    if (tty)
      fmt::print(stderr, "\r[{}{}] {}/{} {:<24}", std::string(size_t(fill), '#'), std::string(size_t(w - fill), '.'), done, total, what);
    else
      fmt::print(stderr, "{}/{} {}\n", done, total, what);
    if (tty && done == total) fmt::print(stderr, "\n");
  };
  ServingBench b(f.target);
  const bool sweep = f.conc->count() > 0 || f.rate->count() > 0;
  const bool workload = !f.workload.empty();
  const bool benchy = (!sweep && !workload && f.overhead == 0) || f.pp->count() || f.tg->count() || f.depth->count();
  if (f.text.empty()) f.text = M2_DEFAULT_CORPUS;
  if (benchy || sweep) b.load_corpus(read_file(f.text));
  const double api = b.latency("api");
  const std::time_t now = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  fmt::print("m2 bench {} (model {}), {}\nAPI latency: {:.2f} ms (GET /v1/models, median of 5)\n\n", f.target.root, b.model(),
             date, api * 1e3);
  const std::string before = b.metrics_text();
  nlohmann::json out = {{"meta", {{"url", f.target.root}, {"model", b.model()}, {"date", date}, {"api_latency_ms", api * 1e3},
                                  {"corpus", f.text}, {"corpus_tokens", b.corpus_tokens()}}}};
  std::vector<RequestRecord> records;
  std::vector<BenchyRow> brows;
  std::vector<SweepRow> srows;
  if (benchy) {
    const double lat = f.benchy.latency_mode == "api" ? api : b.latency(f.benchy.latency_mode);
    brows = run_benchy(b, f.benchy, lat, &records, progress);
    fmt::print("{}\nlatency mode: {} ({:.2f} ms){}\n\n", benchy_table(b.model(), brows), f.benchy.latency_mode, lat * 1e3,
               f.benchy.allow_prefix_cache ? "; prefix cache used for the context" : "; prefix caching defeated (distinct prompts)");
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : brows)
      rows.push_back({{"test", r.test}, {"tps_mean", r.tps.mean}, {"tps_sd", r.tps.sd}, {"ttfr_ms", r.ttfr_ms.mean},
                      {"est_ppt_ms", r.est_ppt_ms.mean}, {"e2e_ttft_ms", r.e2e_ttft_ms.mean}});
    out["benchy"] = rows;
  }
  if (sweep) {
    srows = run_sweep(b, f.sweep, &records, progress);
    fmt::print("prompt {} tokens, {} generated per request{}\n{}\n", f.sweep.prompt_len, f.sweep.gen_len,
               f.sweep.request_rate > 0 ? fmt::format(", Poisson arrivals at {:g} req/s", f.sweep.request_rate) : "",
               sweep_table(srows, f.sweep.request_rate > 0 ? "arrivals" : "concurrency"));
  }
  if (workload) {
    const int c = f.sweep.concurrency.empty() ? 1 : f.sweep.concurrency[0];
    SweepRow w = run_workload(b, f.workload, c, &records, progress);
    fmt::print("workload {} ({} requests)\n{}\n", f.workload, w.requests, sweep_table({w}, "concurrency"));
    srows.push_back(w);
  }
  nlohmann::json srj = nlohmann::json::array();
  for (const auto& r : srows)
    srj.push_back({{"concurrency", r.concurrency}, {"requests", r.requests}, {"errors", r.errors}, {"duration_s", r.duration_s},
                   {"output_tokens", r.total_output_tokens}, {"output_tps", r.output_tps}, {"client_tps_mean", r.client_tps.mean},
                   {"ttft_ms_p50", r.ttft_ms.p50}, {"ttft_ms_p90", r.ttft_ms.p90}, {"ttft_ms_p99", r.ttft_ms.p99},
                   {"itl_ms_p50", r.itl_ms.p50}, {"itl_ms_p90", r.itl_ms.p90}, {"itl_ms_p99", r.itl_ms.p99},
                   {"e2e_ms_p50", r.e2e_ms.p50}, {"e2e_ms_p90", r.e2e_ms.p90}, {"e2e_ms_p99", r.e2e_ms.p99}});
  if (!srj.empty()) out["sweep"] = srj;
  const std::string after = b.metrics_text();
  if (!before.empty()) {
    out["metrics_before"] = before;
    out["metrics_after"] = after;
    const auto ma = parse_metrics(before), mb = parse_metrics(after);
    const std::string d = metric_deltas(ma, mb);
    if (!d.empty()) fmt::print("server counters during the run (/metrics):\n{}", d);
  }
  if (f.overhead > 0) {
    // What a request costs beyond the engine: N streamed one-token chat requests, timed by the client,
    // against the server's own end-to-end time of exactly those requests (m2 serve's
    // m2:e2e_request_latency_seconds, from the engine queue to the last output).
    const auto m0 = parse_metrics(b.metrics_text());
    double client = 0;
    for (int i = 0; i < f.overhead; ++i) {
      RequestRecord r = b.chat({{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 1}, {"temperature", 0}});
      if (!r.error.empty()) fail<IoError>("overhead request: {}", r.error);
      client += r.e2e;
    }
    const auto server = server_e2e(m0, parse_metrics(b.metrics_text()));
    if (!server || int64_t(server->second) != f.overhead) {
      fmt::print("API overhead: the server does not export m2:e2e_request_latency_seconds; client e2e {:.3f} ms per request\n",
                 client / f.overhead * 1e3);
    } else {
      const double overhead = (client - server->first) / f.overhead;
      fmt::print("API overhead: {:.3f} ms per request = client e2e {:.3f} ms − server e2e {:.3f} ms (mean of {} streamed "
                 "one-token chat requests: HTTP, JSON, chat template, tokenization, SSE)\n",
                 overhead * 1e3, client / f.overhead * 1e3, server->first / f.overhead * 1e3, f.overhead);
      out["meta"]["api_overhead_ms"] = overhead * 1e3;
    }
  }
  nlohmann::json reqs = nlohmann::json::array();
  for (const auto& r : records) reqs.push_back(r.to_json());
  out["requests"] = reqs;
  if (!f.json_out.empty()) std::ofstream(f.json_out) << out.dump(2) << "\n";
  if (!f.plots.empty()) {
    std::filesystem::create_directories(f.plots);
    std::vector<std::pair<double, double>> tp, ttft;
    for (const auto& r : srows)
      if (r.concurrency > 0) tp.push_back({double(r.concurrency), r.output_tps});
    for (const auto& r : brows)
      if (r.is_pp && r.test.rfind("pp", 0) == 0 && r.test.find('@') == std::string::npos)
        ttft.push_back({std::stod(r.test.substr(2)), r.e2e_ttft_ms.mean});
    if (!tp.empty())
      std::ofstream(std::filesystem::path(f.plots) / "throughput_vs_concurrency.svg")
          << svg::line_chart("Output throughput vs concurrency", "concurrent clients", "output tok/s", tp, true);
    if (!ttft.empty())
      std::ofstream(std::filesystem::path(f.plots) / "ttft_vs_prompt.svg")
          << svg::line_chart("Time to first token vs prompt length", "prompt tokens", "TTFT (ms)", ttft, true);
  }
  // The tables show what worked; stderr and the exit code say what failed.
  int failed = 0;
  const RequestRecord* first = nullptr;
  for (const auto& r : records)
    if (!r.error.empty()) {
      ++failed;
      if (!first) first = &r;
    }
  if (failed) {
    fmt::print(stderr, "error: {} of {} requests failed; the first ({} #{}): {}\n", failed, records.size(), first->test,
               first->run, first->error);
    return 1;
  }
  return 0;
}

}  // namespace

Runner add_bench(CLI::App& app) {
  auto f = std::make_shared<BenchFlags>();
  app.add_option("url", f->target.root, "Endpoint, e.g. http://127.0.0.1:8000 (or .../v1)")->required();
  app.add_option("--model", f->target.model, "Model name (default: the first of /v1/models)");
  app.add_option("--api-key", f->target.api_key, "Sent as Authorization: Bearer");
  app.add_option("--timeout", f->timeout_s, "Seconds before a request is given up")->capture_default_str();
  f->pp = app.add_option("--pp", f->benchy.pp, "Prompt lengths (table mode)")->delimiter(',');
  f->tg = app.add_option("--tg", f->benchy.tg, "Generation lengths (table mode)")->delimiter(',');
  f->depth = app.add_option("--depth", f->benchy.depth, "Context depths (table mode)")->delimiter(',');
  app.add_option("--runs", f->benchy.runs, "Runs per table cell")->capture_default_str();
  app.add_flag("--allow-prefix-cache", f->benchy.allow_prefix_cache,
               "Load the depth context first and measure the prompt over the cached context");
  app.add_option("--latency-mode", f->benchy.latency_mode, "api | generation | none: what est_ppt subtracts")
      ->capture_default_str();
  f->conc = app.add_option("--concurrency", f->sweep.concurrency, "Concurrent clients (sweep mode)")->delimiter(',');
  app.add_option("--requests", f->sweep.requests, "Requests per concurrency level (default 4 × concurrency, at least 8)");
  f->rate = app.add_option("--request-rate", f->sweep.request_rate, "Poisson arrivals per second instead of closed-loop clients");
  app.add_option("--prompt-len", f->sweep.prompt_len, "Prompt tokens per request (sweep)")->capture_default_str();
  app.add_option("--gen-len", f->sweep.gen_len, "Generated tokens per request (sweep)")->capture_default_str();
  app.add_option("--workload", f->workload, "Replay chat requests from a JSONL file (one request body per line)");
  app.add_option("--overhead", f->overhead, "Measure the API's own cost over N one-token chat requests (m2 serve)");
  app.add_option("--text", f->text, "Text the prompts are cut from (default: the demo model's prose)");
  app.add_option("--json", f->json_out, "Write every run and request, and the summaries, as JSON");
  app.add_option("--plots", f->plots, "Write SVG plots into this directory");
  return [f] { return bench(*f); };
}

}  // namespace m2::cli
