#include "bench/serving_bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include "bench/http_client.h"
#include "core/error.h"

namespace m2 {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

HttpOptions http_options(const BenchTarget& t) {
  HttpOptions o;
  o.api_key = t.api_key;
  o.timeout = t.timeout;
  return o;
}

json get_json(const BenchTarget& t, const std::string& path, const std::string& body = {}) {
  const std::string url = t.root + path;
  HttpResult r = http_request(url, body, http_options(t));
  if (r.status != 200) fail<IoError>("{}: HTTP {}: {}", url, r.status, r.body.substr(0, 300));
  try {
    return json::parse(r.body);
  } catch (const json::exception&) {
    fail<IoError>("{}: the response is not JSON: {}", url, r.body.substr(0, 200));
  }
}

}  // namespace

json RequestRecord::to_json() const {
  json j = {{"test", test},           {"run", run},       {"prompt_tokens", prompt_tokens},
            {"output_tokens", output_tokens}, {"usage_reported", usage_reported}, {"events", events},
            {"start_s", start},       {"ttfr_ms", ttfr * 1e3}, {"ttft_ms", ttft * 1e3},
            {"last_ms", last * 1e3},  {"e2e_ms", e2e * 1e3}};
  json g = json::array();
  for (double x : gaps) g.push_back(x * 1e3);
  j["itl_ms"] = g;
  if (!error.empty()) j["error"] = error;
  return j;
}

Stats Stats::of(std::vector<double> v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
  double ss = 0;
  for (double x : v) ss += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(ss / double(v.size() - 1)) : 0.0;
  auto pct = [&](double q) { return v[std::min(v.size() - 1, size_t(std::ceil(q * double(v.size()))) - (q > 0 ? 1 : 0))]; };
  s.p50 = pct(0.5);
  s.p90 = pct(0.9);
  s.p99 = pct(0.99);
  return s;
}

ServingBench::ServingBench(BenchTarget t) : target_(std::move(t)) {
  while (!target_.root.empty() && target_.root.back() == '/') target_.root.pop_back();
  if (target_.root.size() >= 3 && target_.root.compare(target_.root.size() - 3, 3, "/v1") == 0)
    target_.root.resize(target_.root.size() - 3);
  const json models = get_json(target_, "/v1/models");
  if (!models.contains("data") || !models["data"].is_array() || models["data"].empty())
    fail<IoError>("{}/v1/models lists no model", target_.root);
  std::vector<std::string> names;
  for (const auto& m : models["data"])
    if (m.contains("id") && m["id"].is_string()) names.push_back(m["id"]);
  if (target_.model.empty()) target_.model = names.at(0);
  else if (std::find(names.begin(), names.end(), target_.model) == names.end())
    fail<InvalidArgument>("--model '{}' is not served at {} (it serves: {})", target_.model, target_.root,
                          fmt::join(names, ", "));
}

double ServingBench::latency(const std::string& mode, int n) {
  if (mode == "none") return 0;
  std::vector<double> t;
  for (int i = 0; i < n; ++i) {
    if (mode == "api") {
      const auto t0 = Clock::now();
      get_json(target_, "/v1/models");
      t.push_back(since(t0));
    } else if (mode == "generation") {
      RequestRecord r = completion(prompt(1, 7919 + uint64_t(i)), 1);
      if (!r.error.empty()) fail<IoError>("latency request failed: {}", r.error);
      t.push_back(r.ttfr);
    } else {
      fail<InvalidArgument>("--latency-mode '{}': expected api, generation or none", mode);
    }
  }
  return Stats::of(t).p50;
}

void ServingBench::load_corpus(const std::string& text) {
  const json r = get_json(target_, "/tokenize", json{{"prompt", text}, {"content", text}, {"add_special_tokens", false},
                                                     {"model", target_.model}}.dump());
  if (!r.contains("tokens") || !r["tokens"].is_array() || r["tokens"].empty())
    fail<IoError>("{}/tokenize returned no tokens", target_.root);
  corpus_.clear();
  for (const auto& t : r["tokens"]) corpus_.push_back(t.get<int32_t>());
}

std::vector<int32_t> ServingBench::prompt(int64_t n, uint64_t seed) const {
  if (corpus_.empty()) fail<InvalidArgument>("no corpus loaded");
  std::vector<int32_t> p(static_cast<size_t>(n));
  const size_t start = size_t((seed * 0x9E3779B97F4A7C15ull) >> 20) % corpus_.size();
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = corpus_[(start + size_t(i)) % corpus_.size()];
  return p;
}

std::string ServingBench::metrics_text() {
  try {
    HttpResult r = http_request(target_.root + "/metrics", {}, http_options(target_));
    return r.status == 200 ? r.body : std::string();
  } catch (const IoError&) {
    return {};
  }
}

RequestRecord ServingBench::stream(const std::string& path, const json& body, bool chat) {
  RequestRecord rec;
  SseReader sse;
  const auto t0 = Clock::now();
  bool first = true, first_text = true;
  std::string error_body;
  auto on_event = [&](std::string_view data) {
    const double t = since(t0);
    if (first) {
      rec.ttfr = t;
      first = false;
    }
    if (data == "[DONE]") return false;
    json j;
    try {
      j = json::parse(data);
    } catch (const json::exception&) {
      rec.error = fmt::format("unparsable event: {}", std::string(data.substr(0, 100)));
      return false;
    }
    if (j.contains("error")) {
      rec.error = j["error"].is_object() && j["error"].contains("message") ? j["error"]["message"].dump() : j["error"].dump();
      return false;
    }
    if (j.contains("usage") && j["usage"].is_object() && j["usage"].contains("completion_tokens")) {
      rec.output_tokens = j["usage"]["completion_tokens"].get<int64_t>();
      if (j["usage"].contains("prompt_tokens")) rec.prompt_tokens = j["usage"]["prompt_tokens"].get<int64_t>();
      rec.usage_reported = true;
    }
    bool text = false;
    if (j.contains("choices") && j["choices"].is_array())
      for (const auto& c : j["choices"]) {
        if (chat && c.contains("delta")) {
          const json& d = c["delta"];
          for (const char* k : {"content", "reasoning_content", "reasoning"})
            if (d.contains(k) && d[k].is_string() && !d[k].get<std::string>().empty()) text = true;
          if (d.contains("tool_calls") && d["tool_calls"].is_array() && !d["tool_calls"].empty()) text = true;
        } else if (!chat && c.contains("text") && c["text"].is_string() && !c["text"].get<std::string>().empty()) {
          text = true;
        }
      }
    if (text) {
      if (first_text) {
        rec.ttft = t;
        first_text = false;
      } else {
        rec.gaps.push_back(t - rec.last);
      }
      rec.last = t;
      ++rec.events;
    }
    return true;
  };
  try {
    const long status = http_stream(target_.root + path, body.dump(), http_options(target_),
                                    [&](std::string_view bytes) { return sse.feed(bytes, on_event); }, &error_body);
    if (status != 200) rec.error = fmt::format("HTTP {}: {}", status, error_body.substr(0, 300));
  } catch (const IoError& e) {
    rec.error = e.what();
  }
  rec.e2e = since(t0);
  if (!rec.usage_reported) rec.output_tokens = rec.events;
  if (rec.error.empty() && rec.events == 0) rec.error = "no generated text in the response";
  return rec;
}

RequestRecord ServingBench::completion(const std::vector<int32_t>& prompt, int max_tokens, double offset) {
  json body = {{"model", target_.model}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0},
               {"stream", true}, {"stream_options", {{"include_usage", true}}}, {"ignore_eos", true}};
  RequestRecord r = stream("/v1/completions", body, false);
  r.start = offset;
  if (!r.usage_reported || r.prompt_tokens == 0) r.prompt_tokens = int64_t(prompt.size());
  return r;
}

RequestRecord ServingBench::chat(json body) {
  body["model"] = target_.model;
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  return stream("/v1/chat/completions", body, true);
}

std::vector<BenchyRow> run_benchy(ServingBench& b, const BenchyOptions& o, double latency,
                                  std::vector<RequestRecord>* records, const ProgressFn& progress) {
  std::vector<BenchyRow> rows;
  uint64_t seed = 1;
  b.completion(b.prompt(16, 999), 2);  // warm-up
  const int total = int(o.depth.size() * o.pp.size() * o.tg.size()) * o.runs;
  int done = 0;
  for (int d : o.depth)
    for (int pp : o.pp)
      for (int tg : o.tg) {
        const std::string at = d > 0 ? fmt::format(" @ d{}", d) : "";
        std::vector<double> pp_tps, ttfr, ppt, ttft, tg_tps, ctx_tps, ctx_ttfr, ctx_ppt, ctx_ttft;
        for (int run = 0; run < o.runs; ++run) {
          std::vector<int32_t> prompt;
          int64_t processed = 0;
          if (o.allow_prefix_cache && d > 0) {
            // Load the context, then run the prompt over the cached context.
            auto ctx = b.prompt(d, seed++);
            RequestRecord c = b.completion(ctx, 1);
            c.test = "ctx_pp" + at;
            c.run = run;
            if (!c.error.empty()) fail<IoError>("ctx_pp{}: {}", at, c.error);
            const double est = c.ttfr - latency;
            ctx_tps.push_back(double(d) / est);
            ctx_ttfr.push_back(c.ttfr * 1e3);
            ctx_ppt.push_back(est * 1e3);
            ctx_ttft.push_back(c.ttft * 1e3);
            if (records) records->push_back(c);
            prompt = ctx;
            auto tail = b.prompt(pp, seed++);
            prompt.insert(prompt.end(), tail.begin(), tail.end());
            processed = pp;
          } else {
            prompt = b.prompt(int64_t(d) + pp, seed++);
            processed = int64_t(d) + pp;
          }
          RequestRecord r = b.completion(prompt, tg);
          r.test = fmt::format("pp{} tg{}{}", pp, tg, at);
          r.run = run;
          if (!r.error.empty()) fail<IoError>("{}: {}", r.test, r.error);
          if (r.output_tokens != tg)
            fail<IoError>("{}: the server generated {} tokens, {} were asked for (does it honour ignore_eos?)", r.test,
                          r.output_tokens, tg);
          const double est = r.ttfr - latency;
          pp_tps.push_back(double(processed) / est);
          ttfr.push_back(r.ttfr * 1e3);
          ppt.push_back(est * 1e3);
          ttft.push_back(r.ttft * 1e3);
          if (tg > 1 && r.last > r.ttft) tg_tps.push_back(double(r.output_tokens - 1) / (r.last - r.ttft));
          if (records) records->push_back(r);
          if (progress) progress(++done, total, r.test);
        }
        if (!ctx_tps.empty())
          rows.push_back({"ctx_pp" + at, Stats::of(ctx_tps), Stats::of(ctx_ttfr), Stats::of(ctx_ppt), Stats::of(ctx_ttft), true});
        rows.push_back({fmt::format("pp{}{}", pp, at), Stats::of(pp_tps), Stats::of(ttfr), Stats::of(ppt), Stats::of(ttft), true});
        rows.push_back({fmt::format("tg{}{}", tg, at), Stats::of(tg_tps), {}, {}, {}, false});
      }
  return rows;
}

namespace {

// Runs `n` requests: closed loop with `concurrency` clients, or Poisson arrivals at `rate`/s.
std::vector<RequestRecord> drive(int n, int concurrency, double rate, const std::function<RequestRecord(int, double)>& one,
                                 const ProgressFn& progress, const std::string& label, double* duration) {
  std::vector<RequestRecord> out(static_cast<size_t>(n));
  std::atomic<int> next{0}, done{0};
  std::mutex mu;
  const auto t0 = Clock::now();
  auto finish = [&](int i, RequestRecord r) {
    out[size_t(i)] = std::move(r);
    const int k = ++done;
    if (progress) {
      std::lock_guard lock(mu);
      progress(k, n, label);
    }
  };
  std::vector<std::thread> threads;
  if (rate > 0) {
    std::mt19937_64 rng(12345);
    std::exponential_distribution<double> gap(rate);
    double at = 0;
    for (int i = 0; i < n; ++i) {
      at += gap(rng);
      std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(at)));
      threads.emplace_back([&, i] { finish(i, one(i, since(t0))); });
    }
  } else {
    for (int c = 0; c < concurrency; ++c)
      threads.emplace_back([&] {
        for (int i; (i = next++) < n;) finish(i, one(i, since(t0)));
      });
  }
  for (auto& t : threads) t.join();
  *duration = since(t0);
  return out;
}

SweepRow summarize(int concurrency, const std::vector<RequestRecord>& recs, double duration) {
  SweepRow row;
  row.concurrency = concurrency;
  row.requests = int(recs.size());
  row.duration_s = duration;
  std::vector<double> ttft, itl, e2e, client;
  for (const auto& r : recs) {
    if (!r.error.empty()) {
      ++row.errors;
      continue;
    }
    row.total_output_tokens += double(r.output_tokens);
    ttft.push_back(r.ttft * 1e3);
    e2e.push_back(r.e2e);
    for (double g : r.gaps) itl.push_back(g * 1e3);
    if (r.output_tokens > 1 && r.last > r.ttft) client.push_back(double(r.output_tokens - 1) / (r.last - r.ttft));
  }
  row.output_tps = row.total_output_tokens / duration;
  row.ttft_ms = Stats::of(ttft);
  row.itl_ms = Stats::of(itl);
  row.e2e_ms = Stats::of(e2e);
  for (double* v : {&row.e2e_ms.mean, &row.e2e_ms.sd, &row.e2e_ms.p50, &row.e2e_ms.p90, &row.e2e_ms.p99}) *v *= 1e3;
  row.client_tps = Stats::of(client);
  return row;
}

}  // namespace

std::vector<SweepRow> run_sweep(ServingBench& b, const SweepOptions& o, std::vector<RequestRecord>* records,
                                const ProgressFn& progress) {
  std::vector<SweepRow> rows;
  b.completion(b.prompt(16, 999), 2);  // warm-up
  uint64_t base = 1000;
  for (int c : o.concurrency) {
    const int n = o.requests > 0 ? o.requests : std::max(8, 4 * c);
    const std::string label = o.request_rate > 0 ? fmt::format("{:g} req/s", o.request_rate) : fmt::format("c{}", c);
    double duration = 0;
    auto recs = drive(n, c, o.request_rate, [&, base](int i, double at) {
      RequestRecord r = b.completion(b.prompt(o.prompt_len, base + uint64_t(i)), o.gen_len, at);
      r.test = label;
      r.run = i;
      return r;
    }, progress, label, &duration);
    base += uint64_t(n);
    rows.push_back(summarize(o.request_rate > 0 ? 0 : c, recs, duration));
    if (records) records->insert(records->end(), recs.begin(), recs.end());
  }
  return rows;
}

SweepRow run_workload(ServingBench& b, const std::string& file, int concurrency, std::vector<RequestRecord>* records,
                      const ProgressFn& progress) {
  std::ifstream in(file);
  if (!in) fail<IoError>("--workload {}: cannot read", file);
  std::vector<json> bodies;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      bodies.push_back(json::parse(line));
    } catch (const json::exception& e) {
      fail<FormatError>("--workload {} line {}: malformed JSON: {}", file, n, e.what());
    }
    if (!bodies.back().is_object() || !bodies.back().contains("messages"))
      fail<FormatError>("--workload {} line {}: expected a chat completion request with 'messages'", file, n);
  }
  if (bodies.empty()) fail<FormatError>("--workload {}: no requests", file);
  double duration = 0;
  auto recs = drive(int(bodies.size()), concurrency, 0, [&](int i, double at) {
    RequestRecord r = b.chat(bodies[size_t(i)]);
    r.start = at;
    r.test = "workload";
    r.run = i;
    return r;
  }, progress, "workload", &duration);
  if (records) records->insert(records->end(), recs.begin(), recs.end());
  return summarize(concurrency, recs, duration);
}

std::string benchy_table(const std::string& model, const std::vector<BenchyRow>& rows) {
  auto cell = [](const Stats& s) { return s.n ? fmt::format("{:.2f} ± {:.2f}", s.mean, s.sd) : std::string(); };
  std::string out = "| model | test | t/s | ttfr (ms) | est_ppt (ms) | e2e_ttft (ms) |\n|:---|---:|---:|---:|---:|---:|\n";
  for (const auto& r : rows)
    out += fmt::format("| {} | {} | {} | {} | {} | {} |\n", model, r.test, cell(r.tps), cell(r.ttfr_ms), cell(r.est_ppt_ms),
                       cell(r.e2e_ttft_ms));
  return out;
}

std::string sweep_table(const std::vector<SweepRow>& rows, const std::string& title) {
  std::string out = fmt::format(
      "| {} | requests | output tok/s | per-client tok/s | TTFT p50 / p90 / p99 (ms) | ITL p50 / p90 / p99 (ms) | e2e p50 / p90 "
      "/ p99 (s) | errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
      title);
  for (const auto& r : rows)
    out += fmt::format("| {} | {} | {:.1f} | {:.1f} | {:.0f} / {:.0f} / {:.0f} | {:.1f} / {:.1f} / {:.1f} | {:.2f} / {:.2f} / {:.2f} | {} |\n",
                       r.concurrency ? std::to_string(r.concurrency) : std::string("poisson"), r.requests, r.output_tps,
                       r.client_tps.mean, r.ttft_ms.p50, r.ttft_ms.p90, r.ttft_ms.p99, r.itl_ms.p50, r.itl_ms.p90,
                       r.itl_ms.p99, r.e2e_ms.p50 / 1e3, r.e2e_ms.p90 / 1e3, r.e2e_ms.p99 / 1e3, r.errors);
  return out;
}

}  // namespace m2
