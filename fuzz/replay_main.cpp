// Drives a libFuzzer harness without libFuzzer (GCC builds, CI): runs every file of the corpus
// directory, then `iterations` inputs mutated from them (byte flips, inserts, deletions, splices,
// markup tokens), from a printed seed (M2_FUZZ_SEED replays one). The sanitizers of the build and
// the harness's own checks are what fail it. Usage: NAME_replay CORPUS_DIR [ITERATIONS].
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [ITERATIONS]\n", argv[0]);
    return 2;
  }
  std::vector<std::string> corpus;
  for (const auto& e : std::filesystem::directory_iterator(argv[1])) {
    std::ifstream in(e.path(), std::ios::binary);
    corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (corpus.empty()) {
    std::fprintf(stderr, "%s: empty corpus\n", argv[1]);
    return 2;
  }
  for (const auto& c : corpus) LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(c.data()), c.size());
  const long iterations = argc > 2 ? std::atol(argv[2]) : 2000;
  const char* env = std::getenv("M2_FUZZ_SEED");
  const uint64_t seed = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
  std::printf("%zu corpus files replayed; %ld mutations from M2_FUZZ_SEED=%llu\n", corpus.size(), iterations,
              static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  std::mt19937_64 rng(seed);
  static const char* tokens[] = {"{", "}", "[", "]", "\"", "\\u0000", "{%", "%}", "{{", "}}", "<think>", "</think>",
                                 "<minimax:tool_call>", "</minimax:tool_call>", "<invoke name=\"", "<parameter name=\"",
                                 "\xff", "\xf0\x9f", "1e999", "-1", "18446744073709551616", "null", "\n"};
  for (long it = 0; it < iterations; ++it) {
    std::string s = corpus[rng() % corpus.size()];
    const int edits = 1 + int(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const size_t at = s.empty() ? 0 : rng() % (s.size() + 1);
      switch (rng() % 5) {
        case 0: if (!s.empty()) s[at % s.size()] = char(rng()); break;
        case 1: s.insert(at, 1, char(rng())); break;
        case 2: if (!s.empty()) s.erase(at % s.size(), 1 + rng() % 16); break;
        case 3: s.insert(at, tokens[rng() % std::size(tokens)]); break;
        case 4: {
          const std::string& o = corpus[rng() % corpus.size()];
          if (!o.empty()) {
            const size_t b = rng() % o.size();
            s.insert(at, o.substr(b, 1 + rng() % 64));
          }
          break;
        }
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }
  return 0;
}
