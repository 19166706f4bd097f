// Whole-model CPU benchmark: batch-1 decode (tokens/s, weight bytes per token, GB/s against the
// memory-copy bandwidth measured in the same run), prefill of a long prompt (tokens/s, GFLOP/s),
// and peak resident memory.
//   bench_model MODEL_DIR [--prompt 512] [--decode 32] [--threads 0]
#include <fmt/format.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_features.h"
#include "fma_peak.h"
#include "memory_bandwidth.h"
#include "model/model.h"

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"m2 whole-model CPU benchmark"};
  std::string dir;
  int prompt = 512, decode = 32, threads = 0;
  app.add_option("model_dir", dir)->required();
  app.add_option("--prompt", prompt, "prefill length")->capture_default_str();
  app.add_option("--decode", decode, "decoded tokens")->capture_default_str();
  app.add_option("--threads", threads, "threads (0 = all)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  CpuBackend backend(threads);
  const double copy_bw = bench::copy_bandwidth(backend.pool());
  const double fma_peak = bench::fma_peak_flops(backend.pool());
  ModelWeights w = ModelWeights::load(dir);
  const ModelConfig& c = w.config;
  auto t0 = Clock::now();
  size_t touched = prefault(w);
  const double prefault_s = seconds_since(t0);
  Model model(w, backend);
  KvCache cache(c, prompt + decode + 1);
  std::mt19937 rng(1);
  std::vector<int32_t> ids(static_cast<size_t>(prompt));
  for (auto& t : ids) t = int32_t(rng() % uint32_t(c.vocab_size));
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));

  // Prefill: last-token logits only, as a server does.
  t0 = Clock::now();
  SequenceInput in{&cache, ids};
  model.forward({&in, 1}, LogitsFor::LastToken, logits.data());
  const double prefill_s = seconds_since(t0);
  const double attn_macs = double(c.num_layers) * c.num_heads * c.head_dim * 2.0 * (double(prompt) * (prompt + 1) / 2);
  const double prefill_flops = 2.0 * (macs_per_token(c) * prompt + attn_macs + double(c.vocab_size) * c.hidden_size);

  // Decode: one token at a time, greedy.
  int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  SequenceInput step{&cache, {&next, 1}};
  model.forward({&step, 1}, LogitsFor::LastToken, logits.data());  // warm-up
  t0 = Clock::now();
  for (int i = 0; i < decode; ++i) {
    next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    model.forward({&step, 1}, LogitsFor::LastToken, logits.data());
  }
  const double decode_s = seconds_since(t0);
  const double bytes_per_token = double(w.active_weight_bytes_per_token());
  const double tok_s = decode / decode_s;
  struct rusage ru{};
  getrusage(RUSAGE_SELF, &ru);

  fmt::print("model            {} ({})\n", dir, w.scheme.description());
  fmt::print("cpu              {} threads, kernels {}\n", backend.pool().size(), cpu_features().describe());
  fmt::print("weights          {:.3f} GB on disk, prefaulted in {:.2f} s\n", touched / 1e9, prefault_s);
  fmt::print("memcpy           {:.2f} GB/s (bytes copied per second, all threads)\n", copy_bw / 1e9);
  fmt::print("decode           {:.2f} tok/s, {:.1f} MB of weights per token, {:.2f} GB/s = {:.1f}% of memcpy\n", tok_s,
             bytes_per_token / 1e6, bytes_per_token * tok_s / 1e9, 100.0 * bytes_per_token * tok_s / copy_bw);
  fmt::print("fma peak         {:.1f} GFLOP/s (fp32 FMA at the widest vector width, all threads)\n", fma_peak / 1e9);
  fmt::print("prefill          {} tokens in {:.2f} s: {:.1f} tok/s, {:.1f} GFLOP/s = {:.1f}% of fma peak\n", prompt,
             prefill_s, prompt / prefill_s, prefill_flops / prefill_s / 1e9, 100.0 * prefill_flops / prefill_s / fma_peak);
  fmt::print("peak RSS         {:.1f} MB (weights mmap'd {:.1f} MB, KV cache {:.1f} MB)\n", ru.ru_maxrss / 1024.0,
             w.weight_bytes() / 1e6, cache.bytes() / 1e6);
  return 0;
}
