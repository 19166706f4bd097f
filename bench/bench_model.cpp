// Whole-model CPU benchmark through the engine (as `m2 run` and `m2 serve` drive it):
//   - prefill of a long prompt (tokens/s, GFLOP/s against the fp32 FMA peak measured in the same run);
//   - batch-1 decode (tokens/s, weight bytes per token, GB/s against the read bandwidth of a
//     multi-stream read kernel and against memcpy, both measured in the same run);
//   - batched decode at several batch sizes: tokens/s and the share of the read limit (measured just
//     before and just after each batch size's steps, the better counts) taken by the bytes each step
//     actually reads (the union of the experts the step routed to, attention,
//     router, lm_head, the batch's embedding rows and its KV cache);
//   - peak resident memory;
//   - with --ngram-text FILE: n-gram speculation on a copy-heavy prompt (FILE's first tokens, then its
//     start again), greedy at batch 1: tokens/s without and with drafts, acceptance.
//   - with --rounds N: N rounds of prefill and decode, each beside its own FMA peak and read limits
//     (the read kernel just before and just after the decode, the better counts), a row per round and
//     the medians;
//   - with --segments N: batch-1 decode in N segments of --segment-tokens tokens, each right after
//     its own read-limit probe (as many bytes as a token's weights, at least 256 MiB): the share of
//     the limit per segment, its median and 10th / 90th percentiles, and the medians of the
//     segments whose probe read at least / less than the median limit, with those halves' median
//     limits (this VM's bandwidth moves between two levels within seconds, faster than a round of
//     --rounds lasts);
//   bench_model MODEL_DIR [--prompt 512] [--decode 32] [--rounds 1] [--threads 0] [--batches 1,8,32,64]
//               [--segments 0 --segment-tokens 8] [--ngram-text FILE --ngram-k 4 --ngram-tokens 256]
#include <fmt/format.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_features.h"
#include "core/error.h"
#include "core/units.h"
#include "fma_peak.h"
#include "memory_bandwidth.h"
#include "read_bandwidth.h"
#include "runtime/engine.h"
#include "text/tokenizer.h"

using namespace m2;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Touches every page of every weight once so that timing sees the steady state of a server (page
// tables populated), not first-touch faults. Returns the bytes touched.
size_t prefault(const ModelWeights& w) {
  volatile uint8_t sink = 0;
  size_t n = 0;
  for (const auto& [name, t] : w.checkpoint->tensors()) {
    for (size_t i = 0; i < t.nbytes; i += 4096) sink = sink + t.data[i];
    n += t.nbytes;
  }
  return n;
}

// Multiply-adds per token of one forward step: projections, router, top-k experts (no lm_head).
double macs_per_token(const ModelConfig& c) {
  const double H = c.hidden_size, I = c.intermediate_size;
  return c.num_layers * (H * (c.q_dim() + 2.0 * c.kv_dim()) + double(c.q_dim()) * H + H * c.num_experts +
                         c.experts_per_token * 3.0 * H * I);
}

std::vector<int32_t> random_prompt(std::mt19937& rng, int n, int vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& t : ids) t = int32_t(rng() % uint32_t(vocab));
  return ids;
}

// One round of the prefill and batch-1 decode figures, with the limits measured beside them.
struct Round {
  double fma_peak = 0, bf16_peak = 0, prefill_s = 0;  // the peaks just before the prefill
  double read_bw = 0, tok_s = 0;                      // the better read limit of just before and just after the decode
};

Request greedy_request(std::vector<int32_t> prompt, int max_tokens) {
  Request r;
  r.prompt = std::move(prompt);
  r.params.temperature = 0;
  r.params.ignore_eos = true;
  r.params.max_tokens = max_tokens;
  return r;
}

// Greedy decode of a copy-heavy prompt with and without n-gram drafts, runs alternated, best of 3.
int speculation(const std::string& dir, const std::string& text_file, int k, int tokens, int threads) {
  CpuBackend backend(threads);
  ModelWeights w = ModelWeights::load(dir);
  prefault(w);
  Tokenizer tok = Tokenizer::load(dir);
  std::ifstream in(text_file);
  std::stringstream ss;
  ss << in.rdbuf();
  auto ids = tok.encode(ss.str(), false);
  if (ids.size() < 600) fail<InvalidArgument>("{}: need at least 600 tokens of text", text_file);
  std::vector<int32_t> prompt(ids.begin(), ids.begin() + 500);  // a file, then its start again: "repeat it"
  prompt.insert(prompt.end(), ids.begin(), ids.begin() + 40);
  double best[2] = {0, 0};
  EngineStats spec_stats;
  for (int rep = 0; rep < 3; ++rep)
    for (int with : {0, 1}) {
      EngineOptions eo;
      eo.max_num_seqs = 1;
      eo.max_model_len = int64_t(prompt.size()) + tokens + k + 8;
      eo.kv.dtype = DType::F32;
      eo.kv.num_blocks = eo.max_model_len / 16 + 4;
      eo.ngram.k = with ? k : 0;
      Engine e(w, backend, eo);
      e.add_request(greedy_request(prompt, tokens));
      e.step();  // prefill
      const auto t0 = Clock::now();
      while (e.has_work()) e.step();
      best[with] = std::max(best[with], (tokens - 1) / seconds_since(t0));
      if (with) spec_stats = e.stats();
    }
  fmt::print("n-gram speculation on {} ({} prompt tokens, {} generated, greedy, batch 1, {} threads)\n", text_file,
             prompt.size(), tokens, backend.pool().size());
  fmt::print("| drafts per step | decode tok/s | drafted | accepted | acceptance | tokens per step | speed-up |\n"
             "|---|---|---|---|---|---|---|\n");
  fmt::print("| 0 | {:.1f} | - | - | - | 1.00 | 1.00x |\n", best[0]);
  fmt::print("| {} | {:.1f} | {} | {} | {:.0f}% | {:.2f} | {:.2f}x |\n", k, best[1], spec_stats.spec_drafted,
             spec_stats.spec_accepted,
             100.0 * double(spec_stats.spec_accepted) / double(std::max<int64_t>(1, spec_stats.spec_drafted)),
             double(tokens) / double(std::max<int64_t>(1, spec_stats.steps)), best[1] / best[0]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"m2 whole-model CPU benchmark"};
  std::string dir, kv_dtype = "fp32";
  int prompt = 512, decode = 32, threads = 0, batch_prompt = 32, batch_steps = 16, rounds = 1;
  std::string batches_text = "1,8,32,64";
  app.add_option("model_dir", dir)->required();
  app.add_option("--prompt", prompt, "prefill length")->capture_default_str();
  app.add_option("--decode", decode, "decoded tokens at batch 1")->capture_default_str();
  app.add_option("--rounds", rounds, "rounds of prefill and batch-1 decode, each against its own limits; medians reported")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  app.add_option("--threads", threads, "threads (0 = all)")->capture_default_str();
  std::string activations = "q8";
  app.add_option("--activations", activations, "q8 | q8-bf16 | f32 (as m2 serve)")->capture_default_str();
  app.add_option("--batches", batches_text, "batched-decode sizes, comma-separated (empty: skip)")->capture_default_str();
  app.add_option("--batch-prompt", batch_prompt, "prompt length of each batched request")->capture_default_str();
  app.add_option("--batch-steps", batch_steps, "timed decode steps per batch size")->capture_default_str();
  app.add_option("--kv-cache-dtype", kv_dtype, "fp32 | bf16 | fp8")->capture_default_str();
  int segments = 0, segment_tokens = 8;
  app.add_option("--segments", segments, "paired batch-1 decode: segments, each after its own read-limit probe (0: skip)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  app.add_option("--segment-tokens", segment_tokens, "decoded tokens per segment")->capture_default_str()->check(CLI::Range(1, 256));
  std::string ngram_text;
  int ngram_k = 4, ngram_tokens = 256;
  app.add_option("--ngram-text", ngram_text, "copy-heavy speculation run on this text (uses the model's tokenizer)");
  app.add_option("--ngram-k", ngram_k, "draft tokens per step")->capture_default_str();
  app.add_option("--ngram-tokens", ngram_tokens, "tokens generated per run")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (!ngram_text.empty()) return speculation(dir, ngram_text, ngram_k, ngram_tokens, threads);
  std::vector<int> batches;
  if (!batches_text.empty())
    for (const auto& piece : parse_integer_list(batches_text)) {
      if (!piece.value || *piece.value < 1 || *piece.value > 4096) {
        fmt::print(stderr, "error: --batches: '{}' is not a batch size (1-4096)\n", piece.text);
        return 2;
      }
      batches.push_back(int(*piece.value));
    }

  CpuBackend backend(threads, LinearPath::Auto, parse_activations(activations));
  const double copy_bw = bench::copy_bandwidth(backend.pool());
  ModelWeights w = ModelWeights::load(dir);
  const ModelConfig& c = w.config;
  auto t0 = Clock::now();
  size_t touched = prefault(w);
  const double prefault_s = seconds_since(t0);
  int max_batch = 1;
  for (int b : batches) max_batch = std::max(max_batch, b);

  EngineOptions eo;
  eo.max_num_seqs = max_batch;
  eo.max_num_batched_tokens = std::max(prompt, 512);
  eo.max_model_len = std::max({prompt + decode + 4, batch_prompt + batch_steps + 8, prompt + segments * (segment_tokens + 1) + 4});
  eo.kv.dtype = parse_kv_cache_dtype(kv_dtype);
  eo.kv.num_blocks = (eo.max_model_len / 16 + 2) * max_batch + 64;
  eo.kv.enable_prefix_caching = false;  // random prompts: nothing to share, and no hashing cost
  Engine engine(w, backend, eo);
  std::mt19937 rng(1);

  // Rounds of [FMA peak, prefill (last-token logits, as a server does), read limit, batch-1 decode,
  // read limit], each figure against the limit measured beside it: this VM's speed changes between
  // seconds, so a limit measured once at the start can be off by 1.5x for what follows.
  const double attn_macs = double(c.num_layers) * c.num_heads * c.head_dim * 2.0 * (double(prompt) * (prompt + 1) / 2);
  const double prefill_flops = 2.0 * (macs_per_token(c) * prompt + attn_macs + double(c.vocab_size) * c.hidden_size);
  const double bytes_per_token = double(w.active_weight_bytes_per_token());
  const bool bf16 = backend.activations() == Activations::Q8Bf16;
  std::vector<Round> runs;
  for (int round = 0; round < rounds; ++round) {
    Round R;
    R.fma_peak = bench::fma_peak_flops(backend.pool());
    if (bf16) R.bf16_peak = bench::bf16_dot_peak_flops(backend.pool());
    const uint64_t id = engine.add_request(greedy_request(random_prompt(rng, prompt, c.vocab_size), decode + 2));
    t0 = Clock::now();
    engine.step();
    R.prefill_s = seconds_since(t0);
    const double read_before = bench::read_bandwidth(backend.pool());
    engine.step();  // warm-up, after the read kernel's 1 GiB has left the caches cold for a small model
    t0 = Clock::now();
    for (int i = 0; i < decode; ++i) engine.step();
    const double decode_s = seconds_since(t0);
    R.read_bw = std::max(read_before, bench::read_bandwidth(backend.pool()));
    R.tok_s = decode / decode_s;
    engine.abort(id);
    while (engine.has_work()) engine.step();
    runs.push_back(R);
  }
  auto median_of = [&](auto field) {
    std::vector<double> v;
    for (const Round& R : runs) v.push_back(field(R));
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  };
  auto decode_share = [&](const Round& R) { return bytes_per_token * R.tok_s / R.read_bw; };
  auto prefill_rate = [&](const Round& R) { return prefill_flops / R.prefill_s; };
  const double read_bw = median_of([](const Round& R) { return R.read_bw; });
  const double fma_peak = median_of([](const Round& R) { return R.fma_peak; });
  const double tok_s = median_of([](const Round& R) { return R.tok_s; });
  const double prefill_s = median_of([](const Round& R) { return R.prefill_s; });

  fmt::print("model            {} ({})\n", dir, w.scheme.description());
  fmt::print("cpu              {} threads, kernels {}, {} activations\n", backend.pool().size(), cpu_features().describe(),
             activations_name(backend.activations()));
  fmt::print("weights          {:.3f} GB on disk, prefaulted in {:.2f} s\n", touched / 1e9, prefault_s);
  if (rounds > 1) {
    fmt::print("\n| round | read limit GB/s | decode tok/s | decode GB/s | % of read | fma peak GFLOP/s | prefill s | % of fma peak |\n"
               "|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < runs.size(); ++i) {
      const Round& R = runs[i];
      fmt::print("| {} | {:.2f} | {:.2f} | {:.2f} | {:.1f}% | {:.1f} | {:.3f} | {:.1f}% |\n", i + 1, R.read_bw / 1e9, R.tok_s,
                 bytes_per_token * R.tok_s / 1e9, 100.0 * decode_share(R), R.fma_peak / 1e9, R.prefill_s,
                 100.0 * prefill_rate(R) / R.fma_peak);
    }
    fmt::print("\nmedians of {} rounds; each round's shares are against the limits measured beside it\n", rounds);
  }
  fmt::print("read bandwidth   {:.2f} GB/s (multi-stream read kernel, all threads; the better of before and after decode)\n",
             read_bw / 1e9);
  fmt::print("memcpy           {:.2f} GB/s (bytes copied per second, all threads)\n", copy_bw / 1e9);
  fmt::print("decode           {:.2f} tok/s, {:.1f} MB of weights per token, {:.2f} GB/s = {:.1f}% of read, {:.1f}% of memcpy\n",
             tok_s, bytes_per_token / 1e6, bytes_per_token * tok_s / 1e9, 100.0 * median_of(decode_share),
             100.0 * bytes_per_token * tok_s / copy_bw);
  fmt::print("fma peak         {:.1f} GFLOP/s (fp32 FMA at the widest vector width, all threads; before prefill)\n",
             fma_peak / 1e9);
  fmt::print("prefill          {} tokens in {:.2f} s: {:.1f} tok/s, {:.1f} GFLOP/s = {:.1f}% of fma peak\n", prompt,
             prefill_s, prompt / prefill_s, prefill_flops / prefill_s / 1e9,
             100.0 * median_of([&](const Round& R) { return prefill_rate(R) / R.fma_peak; }));
  if (bf16)  // q8-bf16: the bf16 products' own roof (32 multiply-adds per instruction)
    fmt::print("bf16 dot peak    {:.1f} GFLOP/s (vdpbf16ps, all threads): prefill = {:.1f}% of it\n",
               median_of([](const Round& R) { return R.bf16_peak; }) / 1e9,
               100.0 * median_of([&](const Round& R) { return prefill_rate(R) / R.bf16_peak; }));

  if (segments > 0) {
    // Paired batch-1 decode: probe, one untimed step (the probe leaves a small model's weights out
    // of cache), then the timed segment; the share is the segment's rate over its probe's. The probe
    // reads as many bytes as a token's weights (at least 256 MiB, in whole 64 MiB): on the VM of
    // docs/BENCHMARKS.md the read rate falls with the footprint (BM_ReadLimitBySize), and a smaller
    // buffer would ask more of the decode than the memory system gives it.
    const size_t mib64 = size_t(64) << 20;
    const size_t probe_bytes = std::max(4 * mib64, (size_t(bytes_per_token) + mib64 - 1) / mib64 * mib64);
    const bench::ReadBuffer probe(probe_bytes);
    const uint64_t id = engine.add_request(
        greedy_request(random_prompt(rng, prompt, c.vocab_size), segments * (segment_tokens + 1) + 2));
    engine.step();  // prefill
    std::vector<std::pair<double, double>> seg;  // (limit, share)
    for (int s = 0; s < segments; ++s) {
      const double limit = probe.measure(backend.pool(), 2);
      engine.step();
      t0 = Clock::now();
      for (int i = 0; i < segment_tokens; ++i) engine.step();
      seg.emplace_back(limit, bytes_per_token * segment_tokens / seconds_since(t0) / limit);
    }
    engine.abort(id);
    while (engine.has_work()) engine.step();
    using bench::quantile;
    std::vector<double> shares, limits, high, low, high_limit, low_limit;
    for (auto [l, sh] : seg) shares.push_back(sh), limits.push_back(l);
    const double mid = quantile(limits, 0.5);
    for (auto [l, sh] : seg) {
      (l >= mid ? high : low).push_back(sh);
      (l >= mid ? high_limit : low_limit).push_back(l);
    }
    fmt::print("paired decode    {} segments of {} tokens, each after its own read-limit probe ({} MiB, all threads): "
               "limit {:.1f}-{:.1f} GB/s (median {:.1f})\n",
               segments, segment_tokens, probe_bytes >> 20, quantile(limits, 0) / 1e9, quantile(limits, 1) / 1e9, mid / 1e9);
    fmt::print("                 share of the limit: median {:.1f}% (10th-90th percentile {:.1f}-{:.1f}%)\n",
               100 * quantile(shares, 0.5), 100 * quantile(shares, 0.1), 100 * quantile(shares, 0.9));
    fmt::print("                 segments with limit >= median (their median limit {:.1f} GB/s): {:.1f}%\n",
               quantile(high_limit, 0.5) / 1e9, 100 * quantile(high, 0.5));
    if (!low.empty())
      fmt::print("                 segments with limit < median (their median limit {:.1f} GB/s): {:.1f}%\n",
                 quantile(low_limit, 0.5) / 1e9, 100 * quantile(low, 0.5));
  }

  // Batched decode: bytes actually read per step = union of routed experts + dense weights + KV.
  const auto& L0 = engine.model().weights().layers[0];
  const double expert_bytes = double(L0.gate_up.bytes_per_expert() + L0.down.bytes_per_expert());
  double dense_bytes = double(w.lm_head.bytes());
  for (const auto& L : engine.model().weights().layers)
    dense_bytes += double(L.q.bytes() + L.k.bytes() + L.v.bytes() + L.o.bytes() + L.gate.bytes());
  const double kv_bytes_per_token = double(c.num_layers) * 2.0 * c.kv_dim() * double(dtype_size(eo.kv.dtype));
  std::vector<std::vector<uint8_t>> used(size_t(c.num_layers), std::vector<uint8_t>(size_t(c.num_experts)));
  engine.model().routing_hook = [&](int layer, const TensorView& ids, const TensorView&) {
    const int32_t* p = ids.ptr<int32_t>();
    for (int64_t i = 0; i < ids.numel(); ++i) used[size_t(layer)][size_t(p[i])] = 1;
  };
  if (!batches.empty())
    fmt::print("\n| batch | decode tok/s | step ms | experts read / layer | MB read / step | GB/s | read limit GB/s | % of it |\n"
               "|---|---|---|---|---|---|---|---|\n");
  for (int B : batches) {
    std::vector<uint64_t> ids;
    for (int b = 0; b < B; ++b)
      ids.push_back(engine.add_request(greedy_request(random_prompt(rng, batch_prompt, c.vocab_size), batch_steps + 4)));
    // Until every request has its first token (all prefills done).
    for (bool all = false; !all;) {
      engine.step();
      all = true;
      for (uint64_t id : ids) all = all && engine.find(id)->num_generated() > 0;
    }
    double step_s = 0, bytes = 0, experts = 0;
    const double read_before = bench::read_bandwidth(backend.pool());  // this batch size's own limit, as the rounds'
    for (int s = 0; s < batch_steps; ++s) {
      for (auto& u : used) std::fill(u.begin(), u.end(), 0);
      int64_t context = 0;
      for (uint64_t id : ids) context += engine.find(id)->num_tokens();
      t0 = Clock::now();
      engine.step();
      step_s += seconds_since(t0);
      double n = 0;
      for (const auto& u : used)
        for (uint8_t x : u) n += x;
      experts += n / c.num_layers;
      bytes += n * expert_bytes + dense_bytes + double(B) * double(w.embed.row_bytes) + double(context) * kv_bytes_per_token;
    }
    const double limit = std::max(read_before, bench::read_bandwidth(backend.pool()));
    for (uint64_t id : ids) engine.abort(id);
    while (engine.has_work()) engine.step();
    const double per_step = step_s / batch_steps, per_bytes = bytes / batch_steps;
    fmt::print("| {} | {:.1f} | {:.2f} | {:.1f} of {} | {:.1f} | {:.2f} | {:.2f} | {:.0f}% |\n", B, B / per_step,
               per_step * 1e3, experts / batch_steps, c.num_experts, per_bytes / 1e6, per_bytes / per_step / 1e9,
               limit / 1e9, 100.0 * per_bytes / per_step / limit);
  }
  struct rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  fmt::print("\npeak RSS         {:.1f} MB (weights mmap'd {:.1f} MB, KV cache {:.1f} MB)\n", ru.ru_maxrss / 1024.0,
             w.weight_bytes() / 1e6, engine.kv_cache().bytes() / 1e6);
  return 0;
}
