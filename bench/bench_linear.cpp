// One linear layer per weight format at the real MiniMax-M2 widths, against the read limit, memcpy and
// the fp32 FMA peak.
//   decode (1 token): bytes of weight streamed per second (counter "bytes_per_second")
//   prefill (512 tokens): GFLOP/s (counter "flops")
// Each weight set is larger than the last-level cache so decode streams from memory.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <tuple>
#include <fmt/format.h>

#include "backend/cpu/linear.h"
#include "backend/random_weight.h"
#include "fma_peak.h"
#include "memory_bandwidth.h"
#include "read_bandwidth.h"

using namespace m2;

namespace {

ThreadPool& pool() {
  static ThreadPool p(0);
  return p;
}

struct Format {
  const char* name;
  WeightFormat format;
  DType dtype;
};
const Format kFormats[] = {{"bf16", WeightFormat::Dense, DType::BF16},
                           {"fp8", WeightFormat::Fp8Block, DType::F8_E4M3},
                           {"nvfp4", WeightFormat::Nvfp4, DType::U8},
                           {"mxfp4", WeightFormat::Mxfp4, DType::U8},
                           {"fp8-e5m2", WeightFormat::Fp8Block, DType::F8_E5M2}};

// `copies` expert w1 matrices [1536, 3072] of the format; cycled so the working set exceeds caches.
// Their elements start `offset` bytes past a cache line: 0 as m2's own files store them
// (write_safetensors), others as other writers may.
std::vector<test::OwnedWeight>& weights(int f, int copies, int64_t offset = 0) {
  static std::map<std::tuple<int, int, int64_t>, std::vector<test::OwnedWeight>> cache;
  auto& v = cache[{f, copies, offset}];
  if (v.empty()) {
    std::mt19937_64 rng(7);
    for (int i = 0; i < copies; ++i)
      v.push_back(test::random_weight(kFormats[f].format, kFormats[f].dtype, 1536, 3072, rng, 128, offset));
  }
  return v;
}

// The decode limit: a multi-stream read kernel over 1 GiB with all threads (bench/read_bandwidth.cpp).
void BM_ReadBandwidth(benchmark::State& state) {
  double bw = 0;
  for (auto _ : state) bw = bench::read_bandwidth(pool(), size_t(1) << 30, 3);
  state.counters["bytes_per_second"] = bw;
}

// The read limit against the size of the buffer read: 64 MiB to 4 GiB, sizes taken in turn for 6
// rounds (best of 2 per size and round), median per size in GB/s. On the Zen 4 VM of
// docs/BENCHMARKS.md the rate falls with the footprint (fast state: 61.5 GB/s at 64 MiB, 44.6 at 1
// GiB, 32.5 at 4 GiB; huge pages in the guest change nothing), so a limit is only fair to a decode
// that reads a similar number of bytes per token (bench_model's --segments sizes its probe so).
void BM_ReadLimitBySize(benchmark::State& state) {
  const size_t mib[] = {64, 256, 512, 1024, 4096};
  constexpr int N = sizeof(mib) / sizeof(mib[0]);
  std::vector<std::unique_ptr<bench::ReadBuffer>> buffers;
  for (size_t m : mib) buffers.push_back(std::make_unique<bench::ReadBuffer>(m << 20));
  std::vector<double> rate[N];
  for (auto _ : state)
    for (int round = 0; round < 6; ++round)
      for (int i = 0; i < N; ++i) rate[i].push_back(buffers[size_t(i)]->measure(pool(), 2));
  for (int i = 0; i < N; ++i) state.counters[fmt::format("GBps_{:04}MiB", mib[i])] = bench::quantile(rate[i], 0.5) / 1e9;
}

// The prefill limit: fp32 FMA at the widest vector width, all threads (bench/fma_peak.cpp).
void BM_FmaPeak(benchmark::State& state) {
  double peak = 0;
  for (auto _ : state) peak = bench::fma_peak_flops(pool());
  state.counters["flops"] = peak;
}

// The bf16-activation products' roof: vdpbf16ps, all threads (0 without AVX512_BF16).
void BM_Bf16DotPeak(benchmark::State& state) {
  double peak = 0;
  for (auto _ : state) peak = bench::bf16_dot_peak_flops(pool());
  state.counters["flops"] = peak;
}

void BM_Memcpy(benchmark::State& state) {
  double bw = 0;
  for (auto _ : state) bw = bench::copy_bandwidth(pool(), size_t(1) << 30, 3);
  state.counters["bytes_per_second"] = bw;
}

// range(1): number of distinct weights cycled; 96 streams from memory, 1 stays in cache (decode cost).
// range(3): tokens (1; 8 as a batched decode step of 8 sequences puts through a shared weight; 12 and
// 16 for BF16 / FP8, from memory as a large MoE prefill's experts are).
void BM_LinearDecode(benchmark::State& state) {
  const int f = int(state.range(0));
  const Activations act = state.range(2) ? Activations::Q8Bf16 : Activations::F32;  // q8 for FP4 weights
  auto& ws = weights(f, int(state.range(1)));
  std::mt19937_64 rng(1);
  const int64_t T = state.range(3);
  auto x = test::random_floats(rng, size_t(T * 3072));
  std::vector<float> y(size_t(T * 1536));
  size_t i = 0, bytes = 0;
  for (auto _ : state) {
    const auto& w = ws[i++ % ws.size()].view;
    linear(w, x.data(), y.data(), T, pool(), LinearPath::Auto, act);
    bytes += w.bytes();
  }
  state.SetLabel(std::string(kFormats[f].name) + " " + std::string(activations_name(act)));
  state.counters["bytes_per_second"] = benchmark::Counter(double(bytes), benchmark::Counter::kIsRate);
}

// The 1-token gemv from memory and the read limit, measured in turn many times: each iteration reads a
// 256 MiB buffer with the read kernels, then runs the gemv once over each of the 96 weights (~0.25-1
// GB), and keeps the ratio of the two rates. This VM's bandwidth moves between ~34 and ~57 GB/s
// within seconds, so a limit measured once before a 1 s benchmark says little about the benchmark's
// own moments; the median of these paired ratios does. Counters: median, 10th and 90th percentile
// of the ratio, and the median rates. range(2): the weights' offset past a cache line in bytes.
void BM_LinearDecodeBesideRead(benchmark::State& state) {
  const int f = int(state.range(0));
  const Activations act = state.range(1) ? Activations::Q8Bf16 : Activations::F32;  // q8 for FP4 weights
  auto& ws = weights(f, 96, state.range(2));
  static const bench::ReadBuffer buffer(size_t(256) << 20);
  std::mt19937_64 rng(1);
  auto x = test::random_floats(rng, 3072);
  std::vector<float> y(1536);
  std::vector<double> ratio, gemv, limit;
  for (auto _ : state) {
    limit.push_back(buffer.measure(pool(), 1));
    const auto t0 = std::chrono::steady_clock::now();
    size_t bytes = 0;
    for (const auto& w : ws) {
      linear(w.view, x.data(), y.data(), 1, pool(), LinearPath::Auto, act);
      bytes += w.view.bytes();
    }
    gemv.push_back(double(bytes) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    ratio.push_back(gemv.back() / limit.back());
  }
  using bench::quantile;
  state.SetLabel(std::string(kFormats[f].name) + " " + std::string(activations_name(act)));
  state.counters["ratio_median"] = quantile(ratio, 0.5);
  state.counters["ratio_p10"] = quantile(ratio, 0.1);
  state.counters["ratio_p90"] = quantile(ratio, 0.9);
  state.counters["gemv_GBps"] = quantile(gemv, 0.5) / 1e9;
  state.counters["limit_GBps"] = quantile(limit, 0.5) / 1e9;
}

// range(1) tokens: 512 (a dense prefill) or 16 (an expert's share of a 512-token MoE prefill);
// range(2): q8-bf16 activations (FP4 weights, as q8: the gemv to 4 tokens, the VNNI gemm or the fp32 tiles on
// the rounded x past that; BF16 and FP8 weights: bf16 rows of x through vdpbf16ps, on CPUs with
// AVX512_BF16).
void BM_LinearPrefill(benchmark::State& state) {
  const int f = int(state.range(0));
  const int64_t T = state.range(1);
  const Activations act = state.range(2) ? Activations::Q8Bf16 : Activations::F32;  // q8 for FP4 weights
  auto& ws = weights(f, 1);
  if (act != Activations::F32 && !linear_rounds_q8(resolve_linear_path(LinearPath::Auto), act, ws[0].view) &&
      !linear_wants_bf16(resolve_linear_path(LinearPath::Auto), act, ws[0].view)) {
    state.SkipWithError("q8-bf16 activations apply to FP4 weights (and BF16 / FP8 weights with AVX512_BF16) only");
    return;
  }
  std::mt19937_64 rng(1);
  auto x = test::random_floats(rng, size_t(T * 3072));
  std::vector<float> y(size_t(T * 1536));
  for (auto _ : state) linear(ws[0].view, x.data(), y.data(), T, pool(), LinearPath::Auto, act);
  state.SetLabel(std::string(kFormats[f].name) + " " + std::string(activations_name(act)));
  state.counters["flops"] =
      benchmark::Counter(2.0 * double(T) * 1536 * 3072 * double(state.iterations()), benchmark::Counter::kIsRate);
}

// The kernel's compute ceiling: one thread, 1-8 tokens (the gemv's; 8 is a batched decode step of 8
// sequences, two groups of 4 where the gemv takes it), a weight of ~384 KB that stays
// in L2 (the rows of an expert w1 matrix that fill it). Against the per-thread read limit
// (BM_ReadBandwidth / threads) it says whether a decode that misses its limit waits on memory or on
// instructions. range(3): E4M3 subnormal codes per million (FP8 only; 0 elsewhere).
void BM_LinearInL2(benchmark::State& state) {
  static ThreadPool one(1);
  const int f = int(state.range(0));
  const Activations act = state.range(1) ? Activations::Q8Bf16 : Activations::F32;  // q8 for FP4 weights
  const int64_t row_bytes = kFormats[f].format == WeightFormat::Dense ? 2 * 3072 : kFormats[f].format == WeightFormat::Fp8Block ? 3072 : 3072 / 2;
  const int64_t rows = (384 << 10) / row_bytes / 32 * 32;
  std::mt19937_64 rng(7);
  auto w = test::random_weight(kFormats[f].format, kFormats[f].dtype, rows, 3072, rng);
  if (state.range(3) > 0) {  // subnormal codes (E4M3 exponent field 0), this many per million
    std::uniform_int_distribution<int> per_million(0, 999'999);
    for (auto& b : w.data)
      if (per_million(rng) < state.range(3)) b = uint8_t((b & 0x80) | (1 + rng() % 7));
  }
  const int64_t tokens = state.range(2);
  auto x = test::random_floats(rng, size_t(tokens) * 3072);
  std::vector<float> y(static_cast<size_t>(tokens * rows), 0.0f);
  size_t bytes = 0;
  for (auto _ : state) {
    linear(w.view, x.data(), y.data(), tokens, one, LinearPath::Auto, act);
    bytes += w.view.bytes();
  }
  state.SetLabel(std::string(kFormats[f].name) + " " + std::string(activations_name(act)));
  state.counters["bytes_per_second"] = benchmark::Counter(double(bytes), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_LinearInL2)
    ->ArgsProduct({{0, 1, 2, 3}, {0, 1}, {1, 2, 4, 8}, {0}})
    ->ArgsProduct({{4}, {0}, {1, 2, 4, 8}, {0}})
    ->ArgsProduct({{1}, {0, 1}, {1, 4}, {300, 1000}})  // E4M3 with subnormal codes (see linear_fp8_avx512.cpp)
    ->ArgNames({"format", "q8", "tokens", "subnormal_ppm"})
    ->UseRealTime()
    ->MinTime(0.5);
BENCHMARK(BM_ReadBandwidth)->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();
BENCHMARK(BM_ReadLimitBySize)->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();
BENCHMARK(BM_Memcpy)->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();
BENCHMARK(BM_FmaPeak)->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();
BENCHMARK(BM_Bf16DotPeak)->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();
BENCHMARK(BM_LinearDecode)
    ->ArgsProduct({{0, 1, 2, 3}, {96, 1}, {0, 1}, {1}})
    ->ArgsProduct({{0, 1, 2, 3}, {96, 1}, {0, 1}, {8}})
    ->ArgsProduct({{0, 1}, {96, 1}, {0}, {2, 4, 6, 12, 16}})  // BF16 / FP8: the gemv, AMX, where the gemv hands over
    ->ArgsProduct({{0, 1}, {96, 1}, {1}, {12, 16}})  // BF16 / FP8 × bf16 rows (AVX512_BF16)
    ->ArgNames({"format", "weights", "q8", "tokens"})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MinTime(1.0);
BENCHMARK(BM_LinearDecodeBesideRead)
    ->ArgsProduct({{0, 1, 2, 3}, {0, 1}, {0}})
    ->ArgsProduct({{4}, {0}, {0}})
    ->ArgsProduct({{0, 1, 2, 3}, {0}, {8, 40}})  // off the line, as in other writers' files
    ->ArgNames({"format", "q8", "offset"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(30);
BENCHMARK(BM_LinearPrefill)
    ->ArgsProduct({{0, 1, 2, 3}, {512, 16}, {0}})
    ->ArgsProduct({{0, 1, 2, 3}, {512, 16, 8}, {1}})
    ->ArgNames({"format", "tokens", "q8"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_MAIN();
