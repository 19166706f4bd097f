// Tokenizer throughput on one core: encode of English prose (MB/s of input text), decode (MB/s of
// output text). "cold" encodes with an empty word cache (first sight of the text), "warm" repeats.
//   bench_tokenizer [--benchmark_filter=...]   (run from the repository root)
#include <benchmark/benchmark.h>

#include <fstream>
#include <sstream>

#include "text/tokenizer.h"

using namespace m2;

namespace {

std::string read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

const std::string& prose() {
  static const std::string t = read("models/tiny-m2-demo/eval-text/test-prose.txt");
  return t;
}

std::string path_of(int which) {
  return which == 0 ? "models/tiny-m2-demo/tokenizer.json" : "tests/data/tokenizers/gptoss-tokenizer.json";
}

void BM_EncodeCold(benchmark::State& state) {
  const std::string& text = prose();
  Tokenizer tok = Tokenizer::load(path_of(int(state.range(0))));
  for (auto _ : state) {
    state.PauseTiming();
    tok.clear_cache();
    state.ResumeTiming();
    benchmark::DoNotOptimize(tok.encode(text));
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(text.size()));
  state.SetLabel(state.range(0) ? "gpt-oss o200k" : "tiny-demo 8k");
}

void BM_EncodeWarm(benchmark::State& state) {
  const std::string& text = prose();
  Tokenizer tok = Tokenizer::load(path_of(int(state.range(0))));
  tok.encode(text);
  for (auto _ : state) benchmark::DoNotOptimize(tok.encode(text));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(text.size()));
  state.SetLabel(state.range(0) ? "gpt-oss o200k" : "tiny-demo 8k");
}

void BM_Decode(benchmark::State& state) {
  const std::string& text = prose();
  Tokenizer tok = Tokenizer::load(path_of(int(state.range(0))));
  auto ids = tok.encode(text);
  for (auto _ : state) benchmark::DoNotOptimize(tok.decode(ids));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(text.size()));
  state.SetLabel(state.range(0) ? "gpt-oss o200k" : "tiny-demo 8k");
}

}  // namespace

BENCHMARK(BM_EncodeCold)->DenseRange(0, 1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeWarm)->DenseRange(0, 1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Decode)->DenseRange(0, 1)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
