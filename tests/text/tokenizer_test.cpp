// The tokenizer against HF `tokenizers` 0.23 on three real tokenizer.json files.
#include <gtest/gtest.h>

#include "core/error.h"
#include "io/config.h"
#include "test_util.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace m2 {
namespace {

struct TokCase {
  std::string name;             // encodings file prefix
  std::filesystem::path file;   // tokenizer.json
};

std::filesystem::path tokenizer_path(const std::string& name) {
  if (name == "tiny-demo") return test::kDemo / "tokenizer.json";
  return test::kData / "tokenizers" / (name + "-tokenizer.json");
}

const Tokenizer& cached(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    const auto p = tokenizer_path(name);
    if (!std::filesystem::exists(p))
      throw std::runtime_error(p.string() + " is missing: run scripts/fetch_tokenizers.sh (scripts/test.sh does)");
    it = cache.emplace(name, Tokenizer::load(p)).first;
  }
  return it->second;
}

class HfEncodings : public ::testing::TestWithParam<std::string> {};

TEST_P(HfEncodings, IdsAndDecodedTextMatch) {
  const Tokenizer& tok = cached(GetParam());
  auto j = read_json_file(test::kFixtures / "tokenizer" / (GetParam() + "-encodings.json"));
  int n = 0;
  for (const auto& c : j["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const auto got = tok.encode(text);
    EXPECT_EQ(got, want) << "text: " << text.substr(0, 80);
    EXPECT_EQ(tok.decode(want), c["decoded"].get<std::string>()) << "text: " << text.substr(0, 80);
    ++n;
  }
  EXPECT_EQ(n, 26);
}

TEST_P(HfEncodings, IncrementalDecodingNeverBreaksUtf8AndConcatenates) {
  const Tokenizer& tok = cached(GetParam());
  auto j = read_json_file(test::kFixtures / "tokenizer" / (GetParam() + "-encodings.json"));
  for (const auto& c : j["cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    if (ids.size() > 3000) continue;
    IncrementalDecoder dec(tok, false);
    std::string all;
    for (int32_t id : ids) {
      std::string piece = dec.push(id);
      EXPECT_EQ(utf8_invalid_at(piece), std::string::npos) << piece;
      all += piece;
    }
    all += dec.flush();
    EXPECT_EQ(all, c["decoded"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Files, HfEncodings, ::testing::Values("tiny-demo", "gptoss", "qwen3"),
                         [](const auto& info) { return std::string(info.param == "tiny-demo" ? "tiny_demo" : info.param); });

TEST(Tokenizer, SpecialTokensAreAtomicAndSkippable) {
  const Tokenizer& tok = cached("tiny-demo");
  auto ids = tok.encode("]~b]user\nhi[e~[");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_TRUE(tok.is_special(2));
  EXPECT_EQ(tok.decode(ids, true), "user\nhi");
  EXPECT_EQ(tok.token_to_id("<think>"), 3);
}

// A small tokenizer.json where piece boundaries are visible in the ids: "a-", "-b" and "--" merge only
// when they end up in the same pre-token.
nlohmann::json synthetic(const nlohmann::json& pre_tokenizer, const nlohmann::json& added = nlohmann::json::array()) {
  return {{"model", {{"type", "BPE"}, {"unk_token", "<unk>"},
                     {"vocab", {{"a", 0}, {"b", 1}, {" ", 2}, {"-", 3}, {"a-", 4}, {"-b", 5}, {"--", 6}, {"<unk>", 8}}},
                     {"merges", {"a -", "- b", "- -"}}}},
          {"pre_tokenizer", pre_tokenizer},
          {"added_tokens", added}};
}

TEST(Tokenizer, SplitBehaviorsFollowHfTokenizers) {
  auto split = [](const char* behavior, bool invert = false) {
    return nlohmann::json{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}};
  };
  auto ids = [&](const nlohmann::json& pre, const char* text) {
    return Tokenizer::from_json(synthetic(pre), "synthetic").encode(text);
  };
  using V = std::vector<int32_t>;
  EXPECT_EQ(ids(split("Isolated"), "a--b"), (V{0, 3, 3, 1}));
  EXPECT_EQ(ids(split("Removed"), "a--b"), (V{0, 1}));
  EXPECT_EQ(ids(split("MergedWithPrevious"), "a--b"), (V{4, 3, 1}));
  EXPECT_EQ(ids(split("MergedWithNext"), "a--b"), (V{0, 3, 5}));
  EXPECT_EQ(ids(split("Contiguous"), "a--b"), (V{0, 6, 1}));
  EXPECT_EQ(ids(nullptr, "a--b"), (V{4, 5}));  // no pre-tokenizer: one word, merges by rank
  EXPECT_EQ(ids(split("Removed", true), "a-b"), (V{3}));  // inverted: the gaps are the delimiters
  nlohmann::json seq = {{"type", "Sequence"}, {"pretokenizers", {split("Isolated"), {{"type", "Digits"}}}}};
  EXPECT_EQ(ids(seq, "a-b"), (V{0, 3, 1}));
}

TEST(Tokenizer, AddedTokenStripAndSingleWord) {
  auto tok = [](bool lstrip, bool rstrip, bool single_word) {
    nlohmann::json added = {{{"id", 7}, {"content", "<m>"}, {"special", true}, {"lstrip", lstrip}, {"rstrip", rstrip},
                             {"single_word", single_word}, {"normalized", false}}};
    return Tokenizer::from_json(synthetic(nullptr, added), "synthetic");
  };
  using V = std::vector<int32_t>;
  EXPECT_EQ(tok(false, false, false).encode("a <m> b"), (V{0, 2, 7, 2, 1}));
  EXPECT_EQ(tok(true, false, false).encode("a <m> b"), (V{0, 7, 2, 1}));  // absorbs the space before
  EXPECT_EQ(tok(false, true, false).encode("a <m> b"), (V{0, 2, 7, 1}));  // absorbs the space after
  EXPECT_EQ(tok(false, false, true).encode("a<m>b"), (V{0, 8, 8, 8, 1})); // inside a word: not the token
  EXPECT_EQ(tok(false, false, true).encode("a <m> b"), (V{0, 2, 7, 2, 1}));
  EXPECT_EQ(tok(false, false, false).decode({0, 7, 1}, true), "a b");
}

TEST(Tokenizer, NormalizedAddedTokensMatchTheNormalizedText) {
  nlohmann::json added = {
      {{"id", 7}, {"content", "<M>"}, {"special", false}, {"normalized", true}},   // looked for as "<m>"
      {{"id", 9}, {"content", "<X>"}, {"special", true}, {"normalized", false}}};  // looked for in the raw text
  nlohmann::json j = synthetic(nullptr, added);
  j["normalizer"] = {{"type", "Lowercase"}};
  Tokenizer tok = Tokenizer::from_json(j, "synthetic");
  using V = std::vector<int32_t>;
  EXPECT_EQ(tok.encode("A <M> B"), (V{0, 2, 7, 2, 1}));
  EXPECT_EQ(tok.encode("a <m> b"), (V{0, 2, 7, 2, 1}));
  EXPECT_EQ(tok.encode("A<X>B"), (V{0, 9, 1}));
  EXPECT_EQ(tok.encode("a<x>b"), (V{0, 8, 8, 8, 1}));  // the raw token does not match its lowercase form
}

TEST(Tokenizer, BadInputIsAnError) {
  const Tokenizer& tok = cached("tiny-demo");
  EXPECT_THROW(tok.encode("abc\xff"), InvalidArgument);
  EXPECT_THROW(tok.decode({1, 99999}), InvalidArgument);
  EXPECT_THROW(Tokenizer::from_json(nlohmann::json{{"model", {{"type", "Unigram"}}}}, "t.json"), FormatError);
  EXPECT_THROW(Tokenizer::load(test::kFixtures / "nonexistent.json"), IoError);
  auto negative = nlohmann::json::parse(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                            "added_tokens": [{"id": -5, "content": "x"}]})");
  EXPECT_THROW(Tokenizer::from_json(negative, "t.json"), FormatError);
  negative["added_tokens"][0]["id"] = 2000000000;
  EXPECT_THROW(Tokenizer::from_json(negative, "t.json"), FormatError);
  // Wrong JSON types anywhere are a FormatError naming the file, not a stray exception.
  auto bad = nlohmann::json::parse(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [],
                                       "ignore_merges": false}, "added_tokens": [{"id": "zero", "content": "x"}]})");
  try {
    Tokenizer::from_json(bad, "t.json");
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("t.json"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace m2
