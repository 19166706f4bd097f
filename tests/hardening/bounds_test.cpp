// Bounds on hostile input (issue 12): each case here hung, exhausted memory or crashed before the
// bound existed. ctest runs this binary with a 60 s limit per test, so an unbounded loop fails.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "text/jinja/template.h"
#include "text/tokenizer.h"

namespace m2 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A random BPE over the alphabet "abcd" with no pre-tokenizer (the whole text is one word), and the
// plain reference merge: rescan for the lowest-ranked pair, leftmost on ties, until none is left.
struct RandomBpe {
  json tokenizer;
  std::vector<std::string> tokens;
  std::map<std::pair<int, int>, std::pair<int, int>> merges;  // (a, b) → (rank, merged)

  explicit RandomBpe(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::map<std::string, int> ids;
    for (const char* c : {"a", "b", "c", "d"}) {
      ids[c] = int(tokens.size());
      tokens.push_back(c);
    }
    json merge_list = json::array();
    while (merges.size() < 40) {
      const int a = int(rng() % tokens.size()), b = int(rng() % tokens.size());
      const std::string ab = tokens[size_t(a)] + tokens[size_t(b)];
      if (ids.count(ab) || ab.size() > 8) continue;
      ids[ab] = int(tokens.size());
      tokens.push_back(ab);
      merges[{a, b}] = {int(merges.size()), ids[ab]};
      merge_list.push_back(tokens[size_t(a)] + " " + tokens[size_t(b)]);
    }
    json vocab = json::object();
    for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
    tokenizer = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
  }

  std::vector<int32_t> reference(const std::string& word) const {
    std::vector<int32_t> s;
    for (char c : word) s.push_back(c - 'a');
    for (;;) {
      int best = INT32_MAX, merged = -1;
      size_t at = 0;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        auto it = merges.find({s[i], s[i + 1]});
        if (it != merges.end() && it->second.first < best) {
          best = it->second.first;
          merged = it->second.second;
          at = i;
        }
      }
      if (merged < 0) return s;
      s[at] = merged;
      s.erase(s.begin() + long(at) + 1);
    }
  }
};

TEST(Bounds, HeapBpeEqualsTheReferenceMerge) {
  const uint64_t seed = test::fresh_seed();
  for (int t = 0; t < 20; ++t) {
    RandomBpe bpe(seed + uint64_t(t));
    const Tokenizer tok = Tokenizer::from_json(bpe.tokenizer, "random-bpe");
    std::mt19937_64 rng(seed ^ uint64_t(t));
    for (int w = 0; w < 50; ++w) {
      std::string word(1 + rng() % 300, 'a');
      for (char& c : word) c = char('a' + rng() % 4);
      ASSERT_EQ(tok.encode(word), bpe.reference(word)) << "tokenizer " << t << ", word " << word;
    }
  }
}

// One 1 MB word without a break (a pasted blob) tokenizes and round-trips; a word past
// Tokenizer::kMaxWordBytes is encoded piece by piece (the documented fallback).
TEST(Bounds, MegabyteWordTokenizesAndLongerWordsArePieced) {
  const Tokenizer tok = Tokenizer::load(test::kDemo / "tokenizer.json");
  std::mt19937_64 rng(test::fresh_seed());
  std::string word(1'000'000, 'a');
  for (char& c : word) c = char('a' + rng() % 26);
  const auto ids = tok.encode(word);
  EXPECT_EQ(tok.decode(ids), word);
  EXPECT_LT(ids.size(), word.size());  // merged, not byte by byte
  std::string longer(Tokenizer::kMaxWordBytes + 1000, 'a');
  for (char& c : longer) c = char('a' + rng() % 26);
  auto want = tok.encode(longer.substr(0, Tokenizer::kMaxWordBytes));
  const auto rest = tok.encode(longer.substr(Tokenizer::kMaxWordBytes));
  want.insert(want.end(), rest.begin(), rest.end());
  EXPECT_EQ(tok.encode(longer), want);
}

std::string render_error(const std::string& source) {
  try {
    ChatTemplate(source, "t.jinja").render(nlohmann::ordered_json::object());
  } catch (const TemplateError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Bounds, TemplatesRunWithinABudget) {
  EXPECT_NE(render_error("a\n{% for i in range(10**12) %}x{% endfor %}").find("t.jinja line 2: range() of 1000000000000 items"),
            std::string::npos)
      << render_error("a\n{% for i in range(10**12) %}x{% endfor %}");
  EXPECT_NE(render_error("{{ 'a' * 100000000000 }}").find("line 1: '*' would build a string of 100000000000 bytes"), std::string::npos)
      << render_error("{{ 'a' * 100000000000 }}");
  const std::string doubling = "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}";
  EXPECT_NE(render_error(doubling).find("over the template limit"), std::string::npos) << render_error(doubling);
  const std::string steps = "{% for i in range(1000000) %}{% set l = range(1000000) | list %}{% endfor %}";
  EXPECT_NE(render_error(steps).find("exceeded its budget of 10000000 steps"), std::string::npos) << render_error(steps);
  const std::string output = "{% for i in range(1000000) %}{{ 'x' * 1000 }}{% endfor %}";
  EXPECT_NE(render_error(output).find("output passed the limit"), std::string::npos) << render_error(output);
  EXPECT_NE(render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("recursed more than 100 deep"), std::string::npos);
  EXPECT_NE(render_error("{{ 'ab' | replace('', 'x' * 60000000) }}").find("over the template limit"), std::string::npos);
  EXPECT_NE(render_error("{{ 'ab' | center(10**12) }}").find("over the template limit"), std::string::npos);
  EXPECT_EQ(render_error("{{ 2 ** 10**15 }}"), "no error");
  // Literals the fuzzer found escaping as std::out_of_range / invalid_argument:
  EXPECT_NE(render_error("x\n{{ 99999999999999999999 }}").find("t.jinja line 2: integer literal 99999999999999999999 does not fit"),
            std::string::npos) << render_error("x\n{{ 99999999999999999999 }}");
  EXPECT_NE(render_error("{{ '\\uZZ' }}").find("t.jinja line 1: a \\u escape needs 4 hex digits"), std::string::npos)
      << render_error("{{ '\\uZZ' }}");
  EXPECT_EQ(render_error("{{ 1e999 }}"), "no error");  // inf, as Python
  // An unclosed '{' in str.format looped forever (found by fuzz_jinja):
  EXPECT_NE(render_error("{{ 'a {b'.format(1) }}").find("single '{' encountered"), std::string::npos)
      << render_error("{{ 'a {b'.format(1) }}");
  // 64-bit integer overflow (Python's integers grow; m2's report it instead of wrapping undefinedly):
  for (const char* expr : {"9 * 9199999999999999998", "9223372036854775807 + 1", "-9223372036854775807 - 2",
                           "(-9223372036854775807 - 1) // -1", "-(-9223372036854775807 - 1)", "[9223372036854775807, 1] | sum"})
    EXPECT_NE(render_error(std::string("{{ ") + expr + " }}").find("integer overflow"), std::string::npos)
        << expr << " → " << render_error(std::string("{{ ") + expr + " }}");  // by squaring, not 10^15 multiplications
  // The budget is per render: a template that uses most of it (8M of 10M steps) renders again.
  ChatTemplate t("{% for i in range(4) %}{% set l = range(1000000) | list %}{% endfor %}ok", "t");
  for (int i = 0; i < 3; ++i) EXPECT_EQ(t.render(nlohmann::ordered_json::object()), "ok");
}

// Error messages quote file contents; bytes that are not UTF-8 and control characters come out
// escaped, so a terminal or a JSON error body never receives them raw.
TEST(Bounds, ErrorMessagesEscapeRawBytes) {
  test::TempDir tmp;
  // A tensor name with an escaped ESC (valid JSON) and a bad dtype: the name is quoted in the error.
  const std::string header = R"({"w\u001b[31m": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}})";
  std::ofstream f(tmp.path / "x.safetensors", std::ios::binary);
  const uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << "abcd";
  f.close();
  const auto error_of = [](const fs::path& p) -> std::string {
    try {
      SafetensorsFile s(p);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  const auto only_printable = [](const std::string& msg) {
    for (unsigned char c : msg)
      if (!(c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f))) return false;
    return true;
  };
  std::string msg = error_of(tmp.path / "x.safetensors");
  EXPECT_TRUE(only_printable(msg)) << msg;
  EXPECT_NE(msg.find("tensor 'w\\x1b[31m': unsupported dtype 'F33'"), std::string::npos) << msg;
  // A path that is not UTF-8.
  msg = error_of(tmp.path / "bad\xff\xfe.safetensors");
  EXPECT_TRUE(only_printable(msg)) << msg;
  EXPECT_NE(msg.find("bad\\xff\\xfe.safetensors: cannot open"), std::string::npos) << msg;
  EXPECT_EQ(printable("ok \xc3\xa9 \xed\xa0\x80 \x1b"), "ok \xc3\xa9 \\xed\\xa0\\x80 \\x1b");
}

// A checkpoint truncated while mapped: the read faults (SIGBUS) and m2 reports an I/O error naming
// the file, with exit status 74, instead of dying of the signal.
TEST(Bounds, TruncatedMappedFileIsAnIoErrorNamingIt) {
  test::TempDir tmp;
  const fs::path file = tmp.path / "model.safetensors", log = tmp.path / "stderr.txt";
  fs::copy_file(test::kFixtures / "tiny-bf16" / "model.safetensors", file);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    FILE* err = std::freopen(log.c_str(), "w", stderr);
    (void)err;
    SafetensorsFile s(file);
    const TensorRef* last = nullptr;
    for (const auto& [name, t] : s.tensors())
      if (!last || t.data > last->data) last = &t;
    if (::truncate(file.c_str(), 4096) != 0) ::_exit(3);
    uint8_t sum = 0;
    for (size_t i = 0; i < last->nbytes; ++i) sum = uint8_t(sum + *(volatile const uint8_t*)(last->data + i));
    std::printf("%d\n", sum);
    ::_exit(0);  // no fault: the test fails below
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(WIFEXITED(status)) << "died of signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0) << ": " << text;
  EXPECT_EQ(WEXITSTATUS(status), 74) << text;
  EXPECT_NE(text.find("m2: I/O error: " + file.string() + ": the file was truncated or replaced while mapped"), std::string::npos)
      << text;
}

// A KV budget larger than the machine's free memory is refused at start with the size that fits,
// instead of being overcommitted and killed mid-request.
TEST(Bounds, KvBudgetBeyondFreeMemoryIsRefusedAtStart) {
  const auto r = test::run_m2("serve " + test::kDemo.string() + " --port 0 --kv-cache-memory 100TiB");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("the KV cache needs 100.00 TiB"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("give it at most"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace m2
