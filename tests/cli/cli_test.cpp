// The m2 binary end to end: inspect, run (ids in, ids and logits out), synth in every format, bad input.
#include <gtest/gtest.h>

#include <array>
#include <fstream>
#include <cstdio>
#include <sys/wait.h>

#include "test_util.h"

namespace m2 {
namespace {

using Result = test::RunResult;
Result m2(const std::string& args) { return test::run_m2(args); }

std::string ids_csv(const std::vector<int32_t>& ids) {
  std::string s;
  for (auto i : ids) s += (s.empty() ? "" : ",") + std::to_string(i);
  return s;
}

TEST(Cli, InspectDescribesFormatsAndExclusions) {
  auto r = m2("inspect " + (test::kFixtures / "small-nvfp4-modelopt").string());
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* s : {"2 layers, hidden 256, vocab 1024", "nvfp4 (modelopt)", "*self_attn*", "experts w1/w3",
                        "nvfp4 (32)", "4 k/v scales", "bits/w"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
}

TEST(Cli, RunGreedyMatchesReferenceAndWritesLogits) {
  const auto dir = test::kFixtures / "tiny-bf16";
  SafetensorsFile ref(dir / "reference.safetensors");
  auto prompt = test::as_ids(ref.tensors().at("ref.greedy.prompt"));
  auto want = test::as_ids(ref.tensors().at("ref.greedy.output"));
  test::TempDir tmp;
  auto r = m2("run " + dir.string() + " --no-stop --max-tokens 16 --ids " + ids_csv(prompt) + " --logits-out " +
              (tmp.path / "l.safetensors").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, ids_csv(want) + "\n");
  SafetensorsFile logits(tmp.path / "l.safetensors");
  EXPECT_EQ(logits.tensors().at("logits").shape, (std::vector<int64_t>{int64_t(prompt.size()), 320}));
}

// m2 run is a client of the engine: sampling flags, KV dtypes and speculation.
TEST(Cli, RunSamplingKvDtypesAndSpeculation) {
  const std::string demo = test::kDemo.string();
  auto greedy = m2("run " + demo + " --prompt 'The President said that' --max-tokens 24");
  ASSERT_EQ(greedy.code, 0) << greedy.out;
  auto spec = m2("run " + demo + " --prompt 'The President said that' --max-tokens 24 --speculative-ngram 3");
  ASSERT_EQ(spec.code, 0) << spec.out;
  EXPECT_NE(spec.out.find("speculative n-gram:"), std::string::npos) << spec.out;
  const size_t stats = spec.out.find("speculative n-gram:");
  std::string text = spec.out;
  text.erase(stats, spec.out.find('\n', stats) + 1 - stats);  // the stats line (stderr) out of the text
  EXPECT_EQ(text, greedy.out);
  auto a = m2("run " + demo + " --prompt 'The President said that' --max-tokens 24 --temperature 0.9 --top-k 50 --seed 11");
  auto b = m2("run " + demo + " --prompt 'The President said that' --max-tokens 24 --temperature 0.9 --top-k 50 --seed 11");
  auto c = m2("run " + demo + " --prompt 'The President said that' --max-tokens 24 --temperature 0.9 --top-k 50 --seed 12");
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  EXPECT_NE(a.out, greedy.out);
  auto fp8 = m2("run " + demo + " --prompt 'The President said that' --max-tokens 8 --kv-cache-dtype fp8");
  ASSERT_EQ(fp8.code, 0) << fp8.out;
  EXPECT_NE(fp8.out.find("WARNING: FP8 KV cache for " + demo), std::string::npos) << fp8.out;
  auto bad = m2("run " + demo + " --prompt x --kv-cache-dtype int4");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("--kv-cache-dtype 'int4' is unknown"), std::string::npos) << bad.out;
  bad = m2("run " + demo + " --prompt x --top-p 0");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("top_p = 0 is out of range"), std::string::npos) << bad.out;
}

TEST(Cli, BadInputGivesAClearErrorAndExitCode) {
  const std::string dir = (test::kFixtures / "tiny-bf16").string();
  struct Case {
    std::string args, expect;
  };
  for (const auto& c : std::vector<Case>{
           {"run " + dir + " --ids 5,abc", "'abc' at position 1 is not a token id"},
           {"run " + dir + " --ids 5,320", "token 320 at position 1 is outside the vocabulary [0, 320)"},
           {"run " + dir + " --ids ''", "no token ids"},
           {"run /nonexistent --ids 1", "/nonexistent: not a directory"},
           {"inspect " + (test::kData / "fixtures" / "templates").string(), "config.json: cannot read"},
           {"synth /tmp/x --format int3", "--format 'int3' is unknown"},
       }) {
    auto r = m2(c.args);
    EXPECT_EQ(r.code, 1) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.expect), std::string::npos) << c.args << "\n" << r.out;
  }
  EXPECT_NE(m2("frobnicate").code, 0);
}

Result m2_stdin(const std::string& args, const std::string& input) {
  test::TempDir tmp;
  std::ofstream(tmp.path / "in") << input;
  return m2(args + " < " + (tmp.path / "in").string());
}

TEST(Cli, TokenizeAndDetokenize) {
  const std::string demo = test::kDemo.string();
  auto r = m2_stdin("tokenize " + demo, "The President said that");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, "[2693, 1456, 1847, 338]\n");
  r = m2_stdin("detokenize " + demo, "[2693, 1456, 1847, 338, 2]");
  EXPECT_EQ(r.out, "The President said that[e~[");
  r = m2_stdin("detokenize " + demo + " --skip-special-tokens", "[2693, 1456, 1847, 338, 2]");
  EXPECT_EQ(r.out, "The President said that");
  r = m2_stdin("detokenize " + demo, "[1, \"x\"]");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("element 1 is not an integer id"), std::string::npos) << r.out;
  r = m2_stdin("tokenize " + demo, "bad \xff utf8");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("not valid UTF-8 at byte 4"), std::string::npos) << r.out;
}

TEST(Cli, TemplateRendersTheShippedTemplate) {
  test::TempDir tmp;
  std::ofstream(tmp.path / "m.json") << R"([{"role": "user", "content": "hi"}])";
  std::ofstream(tmp.path / "t.json") << R"([{"type": "function", "function": {"name": "f", "parameters": {}}}])";
  auto r = m2("template " + test::kDemo.string() + " --messages " + (tmp.path / "m.json").string() + " --tools " +
              (tmp.path / "t.json").string() + " --add-generation-prompt");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.rfind("]~!b[]~b]system\nYou are a helpful assistant.", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("<tool>{\"name\": \"f\", \"parameters\": {}}</tool>"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("]~b]user\nhi[e~[\n]~b]ai\n<think>\n"), std::string::npos) << r.out;
  r = m2("template " + test::kDemo.string() + " --messages " + (tmp.path / "m.json").string() +
         " --kwargs '{\"model_identity\": \"I am m2.\"}'");
  EXPECT_EQ(r.out.rfind("]~!b[]~b]system\nI am m2.[e~[", 0), 0u) << r.out;
  std::ofstream(tmp.path / "bad.json") << "[{";
  r = m2("template " + test::kDemo.string() + " --messages " + (tmp.path / "bad.json").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("malformed JSON"), std::string::npos) << r.out;
  r = m2("template " + (test::kFixtures / "tiny-bf16").string() + " --messages " + (tmp.path / "m.json").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("no chat template"), std::string::npos) << r.out;
}

TEST(Cli, RunFromTextAndChat) {
  const std::string demo = test::kDemo.string();
  auto r = m2("run " + demo + " --prompt 'The President said that' --max-tokens 40");
  ASSERT_EQ(r.code, 0) << r.out;
  // models/tiny-m2-demo/train-info.json: the greedy sample after this prompt.
  EXPECT_EQ(r.out, " the President of the United States was in the hands of the President. The President was elected to "
                   "the Congress, and it was the first President of the United States. The President was elected to be "
                   "elected\n");
  // bf16 activations (where the CPU has AVX512_BF16): a greedy sample that starts as the exact one does
  // (it leaves it after ~20 tokens on an AVX512_BF16 host: docs/DESIGN.md); an unknown mode is refused.
  r = m2("run " + demo + " --prompt 'The President said that' --max-tokens 40 --activations q8-bf16");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.rfind(" the President of the United States", 0), 0u) << r.out;
  r = m2("run " + demo + " --prompt 'The President said that' --max-tokens 4 --activations int8");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("expected f32, q8 or q8-bf16, found 'int8'"), std::string::npos) << r.out;
  r = m2_stdin("run " + demo + " --chat --max-tokens 12", R"({"messages": [{"role": "user", "content": "Hello"}]})");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* s : {"=== reasoning ===", "=== content ===", "=== tool calls ===", "\"role\": \"assistant\""})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
  r = m2_stdin("run " + demo + " --chat", "{\"messages\": 3}");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("expected a list of messages"), std::string::npos) << r.out;
  r = m2("run " + demo + " --prompt x --ids 1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("exactly one of"), std::string::npos) << r.out;
}

class Synth : public ::testing::TestWithParam<std::string> {};

TEST_P(Synth, WritesALoadableShardedCheckpoint) {
  test::TempDir tmp;
  const std::string out = (tmp.path / "m").string();
  auto r = m2("synth " + out + " --preset tiny --layers 3 --format " + GetParam() + " --quantize-attention");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(std::filesystem::exists(tmp.path / "m" / "model.safetensors.index.json"));
  auto ins = m2("inspect " + out);
  ASSERT_EQ(ins.code, 0) << ins.out;
  EXPECT_NE(ins.out.find("3 layers"), std::string::npos) << ins.out;
  EXPECT_NE(ins.out.find("4 file(s)"), std::string::npos) << ins.out;
  auto run = m2("run " + out + " --no-stop --ids 3,4,5 --max-tokens 4");
  ASSERT_EQ(run.code, 0) << run.out;
  EXPECT_EQ(std::count(run.out.begin(), run.out.end(), ','), 3) << run.out;
}

INSTANTIATE_TEST_SUITE_P(AllFormats, Synth,
                         ::testing::Values("bf16", "fp8", "nvfp4-modelopt", "nvfp4-ct", "mxfp4-ct"),
                         test::ParamName());

TEST(Cli, SynthAtTheRealWidths) {
  // hidden 3072, 48/8 heads of 128, expert width 1536 (few experts and a small vocab keep it quick).
  test::TempDir tmp;
  const std::string out = (tmp.path / "m").string();
  auto r = m2("synth " + out + " --preset minimax-m2 --layers 1 --experts 4 --top-k 2 --vocab 512 --format nvfp4-modelopt");
  ASSERT_EQ(r.code, 0) << r.out;
  auto ins = m2("inspect " + out);
  EXPECT_NE(ins.out.find("hidden 3072"), std::string::npos) << ins.out;
  EXPECT_NE(ins.out.find("expert width 1536"), std::string::npos) << ins.out;
  auto run = m2("run " + out + " --no-stop --ids 1,2 --max-tokens 2");
  EXPECT_EQ(run.code, 0) << run.out;
}

}  // namespace
}  // namespace m2
