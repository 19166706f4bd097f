// Tool-call and reasoning parsers: non-streaming results, and streams split at every byte position
// (and into three pieces) giving the same result, valid JSON arguments, and no markup in content.
#include <gtest/gtest.h>

#include "test_util.h"
#include "text/chat.h"
#include "text/reasoning_parser.h"
#include "text/tokenizer.h"
#include "text/tool_parser.h"

namespace m2 {
namespace {

using nlohmann::json;

const json kTools = json::parse(R"([
  {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
     "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
     "temp": {"type": "number"}, "tags": {"type": "array"}, "opts": {"type": "object"},
     "zip": {"type": "string"}, "maybe": {"type": ["integer", "null"]},
     "unit": {"enum": ["c", "f"]}, "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}}}},
  {"type": "function", "function": {"name": "search", "parameters": {"properties": {"q": {"type": "string"}}}}}
])");

std::function<std::string()> counter_ids() {
  auto n = std::make_shared<int>(0);
  return [n] { return "call_" + std::to_string((*n)++); };
}

// Feeds `chunks` and reassembles what the stream said.
ToolCallParser::Result stream(const std::vector<std::string>& chunks, std::string* all_content = nullptr) {
  ToolCallParser p(kTools, counter_ids());
  ToolCallParser::Result r;
  std::string content;
  auto take = [&](const ToolParserDelta& d) {
    content += d.content;
    for (const auto& c : d.tool_calls) {
      if (!c.id.empty()) {
        EXPECT_EQ(size_t(c.index), r.tool_calls.size()) << "ids come once, in order";
        r.tool_calls.push_back({c.id, c.name, ""});
      }
      EXPECT_LT(size_t(c.index), r.tool_calls.size()) << "fragment before header";
      if (size_t(c.index) < r.tool_calls.size()) r.tool_calls[size_t(c.index)].arguments += c.arguments;
    }
  };
  for (const auto& c : chunks) take(p.push(c));
  take(p.finish());
  if (!content.empty()) r.content = content;
  if (all_content) *all_content = content;
  return r;
}

void expect_same(const ToolCallParser::Result& a, const ToolCallParser::Result& b, const std::string& what) {
  EXPECT_EQ(a.content, b.content) << what;
  ASSERT_EQ(a.tool_calls.size(), b.tool_calls.size()) << what;
  for (size_t i = 0; i < a.tool_calls.size(); ++i) {
    EXPECT_EQ(a.tool_calls[i].name, b.tool_calls[i].name) << what;
    EXPECT_EQ(json::parse(a.tool_calls[i].arguments), json::parse(b.tool_calls[i].arguments)) << what;
  }
}

const std::vector<std::string> kOutputs = {
    "Let me check.\n<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Paris</parameter>\n"
    "<parameter name=\"days\">3</parameter>\n</invoke>\n</minimax:tool_call>",
    "<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"zip\">007</parameter>\n"
    "<parameter name=\"metric\">true</parameter>\n<parameter name=\"temp\">-2.5</parameter>\n</invoke>\n"
    "<invoke name=\"search\">\n<parameter name=\"q\">a < b && c </param d</parameter>\n</invoke>\n</minimax:tool_call>"
    "\n<minimax:tool_call><invoke name='search'><parameter name='q'>  two  spaces \n</parameter></invoke>"
    "</minimax:tool_call> and after",
    "no tools here, just <b>html</b> and a lone < sign",
    "<minimax:tool_call>\n<invoke name=\"unknown_tool\">\n<parameter name=\"x\">42</parameter>\n</invoke>\n"
    "<invoke name=\"get_weather\">\n</invoke>\n</minimax:tool_call>",
    "<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"tags\">[\"a\", 1]</parameter>\n"
    "<parameter name=\"opts\">{\"k\": {\"n\": null}}</parameter>\n<parameter name=\"days\">three</parameter>\n"
    "<parameter name=\"maybe\">null</parameter>\n<parameter name=\"unit\">c</parameter>\n"
    "<parameter name=\"either\">12</parameter>\n<parameter name=\"city\">true</parameter>\n</invoke>\n</minimax:tool_call>",
    // "</parameter>" inside a value (code writing XML): only the one the next tag follows ends it.
    "<minimax:tool_call>\n<invoke name=\"search\">\n<parameter name=\"q\"><p>x</parameter> y</parameter>\n"
    "<parameter name=\"q2\">z</parameter></parameter>\n</invoke>\n</minimax:tool_call>",
};

TEST(ToolParser, NonStreamingResults) {
  auto r = ToolCallParser::parse(kOutputs[0], kTools, counter_ids());
  EXPECT_EQ(r.content, "Let me check.\n");
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].id, "call_0");
  EXPECT_EQ(r.tool_calls[0].name, "get_weather");
  EXPECT_EQ(json::parse(r.tool_calls[0].arguments), json({{"city", "Paris"}, {"days", 3}}));

  r = ToolCallParser::parse(kOutputs[1], kTools, counter_ids());
  ASSERT_EQ(r.tool_calls.size(), 3u);  // parallel calls across two blocks
  EXPECT_EQ(json::parse(r.tool_calls[0].arguments), json({{"zip", "007"}, {"metric", true}, {"temp", -2.5}}));
  EXPECT_EQ(json::parse(r.tool_calls[1].arguments)["q"], "a < b && c </param d");
  EXPECT_EQ(json::parse(r.tool_calls[2].arguments)["q"], "  two  spaces ");  // only the format's newline goes
  EXPECT_EQ(r.content, "and after");

  r = ToolCallParser::parse(kOutputs[2], kTools, counter_ids());
  EXPECT_EQ(r.content, kOutputs[2]);
  EXPECT_TRUE(r.tool_calls.empty());

  r = ToolCallParser::parse(kOutputs[3], kTools, counter_ids());
  ASSERT_EQ(r.tool_calls.size(), 2u);
  EXPECT_EQ(json::parse(r.tool_calls[0].arguments), json({{"x", "42"}}));  // unknown tool: strings
  EXPECT_EQ(r.tool_calls[1].arguments, "{}");
  EXPECT_FALSE(r.content.has_value());

  r = ToolCallParser::parse(kOutputs[4], kTools, counter_ids());
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(json::parse(r.tool_calls[0].arguments),
            json::parse(R"({"tags": ["a", 1], "opts": {"k": {"n": null}}, "days": "three", "maybe": null,
                           "unit": "c", "either": 12, "city": "true"})"));
}

TEST(ToolParser, ClosingTagInsideAValueIsPartOfIt) {
  auto r = ToolCallParser::parse(kOutputs[5], kTools, counter_ids());
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(json::parse(r.tool_calls[0].arguments), json({{"q", "<p>x</parameter> y"}, {"q2", "z</parameter>"}}));
}

TEST(ToolParser, TruncatedOutputStillGivesValidJson) {
  auto r = ToolCallParser::parse("<minimax:tool_call>\n<invoke name=\"search\">\n<parameter name=\"q\">x</parameter>\n"
                                 "<parameter name=\"q2\">cut off he",
                                 kTools, counter_ids());
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(json::parse(r.tool_calls[0].arguments), json({{"q", "x"}}));
}

TEST(ToolParser, EverySplitPointGivesTheSameResult) {
  for (const auto& out : kOutputs) {
    auto whole = ToolCallParser::parse(out, kTools, counter_ids());
    for (size_t i = 0; i <= out.size(); ++i) {
      std::string content;
      auto r = stream({out.substr(0, i), out.substr(i)}, &content);
      expect_same(r, whole, "split at " + std::to_string(i));
      for (const char* tag : {"<minimax", "<invoke", "<parameter", "</invoke", "</minimax"})
        EXPECT_EQ(content.find(tag), std::string::npos) << "markup leaked at split " << i;
    }
    for (size_t i = 0; i < out.size(); i += 3)
      for (size_t j = i; j <= out.size(); j += 5)
        expect_same(stream({out.substr(0, i), out.substr(i, j - i), out.substr(j)}), whole,
                    "splits " + std::to_string(i) + "," + std::to_string(j));
    std::vector<std::string> bytes;
    for (char c : out) bytes.emplace_back(1, c);
    expect_same(stream(bytes), whole, "byte by byte");
  }
}

TEST(ToolParser, ContentIsNotHeldBackLongerThanNeeded) {
  ToolCallParser p(kTools, counter_ids());
  EXPECT_EQ(p.push("Hello <").content, "Hello ");  // "<" may start a tag
  EXPECT_EQ(p.push("b>").content, "<b>");           // it did not
  EXPECT_EQ(p.push("x <minimax:tool").content, "x ");
  auto d = p.push("_call>\n<invoke name=\"search\">");
  EXPECT_EQ(d.content, "");
  ASSERT_EQ(d.tool_calls.size(), 1u);
  EXPECT_EQ(d.tool_calls[0].name, "search");  // header as soon as the invoke tag is complete
}

TEST(Reasoning, PromptOpenedThinkBlock) {
  auto r = ReasoningParser::parse("I should greet.\n</think>\n\nHello!", ReasoningMode::PromptOpened);
  EXPECT_EQ(r.reasoning, "I should greet.\n");
  EXPECT_EQ(r.content, "Hello!");  // the "\n\n" after </think> is the format's separator
  r = ReasoningParser::parse("a</think>\n\n\nb", ReasoningMode::PromptOpened);
  EXPECT_EQ(r.content, "\nb");  // at most two newlines are the separator
  r = ReasoningParser::parse("still thinking when cut", ReasoningMode::PromptOpened);
  EXPECT_EQ(r.reasoning, "still thinking when cut");
  EXPECT_EQ(r.content, "");
  r = ReasoningParser::parse("<think>a</think>b", ReasoningMode::PromptOpened);  // stray <think> dropped
  EXPECT_EQ(r.reasoning, "a");
  EXPECT_EQ(r.content, "b");
}

TEST(Reasoning, ModelOpensThinkBlock) {
  auto r = ReasoningParser::parse("\n<think>\nplan</think>answer", ReasoningMode::ModelOpens);
  EXPECT_EQ(r.reasoning, "\nplan");
  EXPECT_EQ(r.content, "answer");
  r = ReasoningParser::parse("plain answer with </think> inside", ReasoningMode::ModelOpens);
  EXPECT_FALSE(r.reasoning.has_value());
  EXPECT_EQ(r.content, "plain answer with </think> inside");
  r = ReasoningParser::parse("<think>unterminated", ReasoningMode::ModelOpens);
  EXPECT_EQ(r.reasoning, "unterminated");
}

TEST(Reasoning, AppendThinkAndNone) {
  auto r = ReasoningParser::parse("x</think>y", ReasoningMode::AppendThink);
  EXPECT_FALSE(r.reasoning.has_value());
  EXPECT_EQ(r.content, "<think>x</think>y");
  ReasoningParser p(ReasoningMode::AppendThink);
  EXPECT_EQ(p.push("a").content, "<think>a");
  EXPECT_EQ(p.push("b").content, "b");
  r = ReasoningParser::parse("x</think>y", ReasoningMode::None);
  EXPECT_EQ(r.content, "x</think>y");
}

TEST(Reasoning, EverySplitPointGivesTheSameResult) {
  const std::vector<std::pair<std::string, ReasoningMode>> cases = {
      {"I think <thi</think> so </think>\n\nHello </think>", ReasoningMode::PromptOpened},
      {"  <think>deep <think> thought</think>\nanswer <think>", ReasoningMode::ModelOpens},
      {"<thinking>not a tag", ReasoningMode::ModelOpens},
      {"reason</think>", ReasoningMode::PromptOpened},
  };
  for (const auto& [out, mode] : cases) {
    auto whole = ReasoningParser::parse(out, mode);
    for (size_t i = 0; i <= out.size(); ++i)
      for (size_t j = i; j <= out.size(); ++j) {
        ReasoningParser p(mode);
        std::string reasoning, content;
        for (auto piece : {out.substr(0, i), out.substr(i, j - i), out.substr(j)}) {
          auto d = p.push(piece);
          reasoning += d.reasoning;
          content += d.content;
          EXPECT_EQ(d.reasoning.find("</think>"), std::string::npos) << out << " @" << i << "," << j;
        }
        auto d = p.finish();
        reasoning += d.reasoning;
        content += d.content;
        EXPECT_EQ(reasoning, whole.reasoning.value_or("")) << out << " @" << i << "," << j;
        EXPECT_EQ(content, whole.content) << out << " @" << i << "," << j;
      }
  }
}

}  // namespace
}  // namespace m2

namespace m2 {
namespace {

// Model output as the server sees it: token ids (the tags are single special tokens of the demo
// tokenizer), detokenized incrementally and parsed delta by delta, equals the non-streaming parse.
TEST(ChatOutput, TokenByTokenThroughTheTokenizer) {
  const Tokenizer tok = Tokenizer::load(test::kDemo);
  const std::string output =
      "The user wants the weather. 天气 ☀️\n</think>\n\nLet me check.\n<minimax:tool_call>\n"
      "<invoke name=\"get_weather\">\n<parameter name=\"city\">São Paulo</parameter>\n"
      "<parameter name=\"days\">2</parameter>\n</invoke>\n</minimax:tool_call>";
  const auto ids = tok.encode(output);
  ASSERT_NE(std::find(ids.begin(), ids.end(), *tok.token_to_id("<minimax:tool_call>")), ids.end());
  ChatOutputParser parser(ReasoningMode::PromptOpened, kTools, counter_ids());
  IncrementalDecoder dec(tok, false);
  ChatAccumulator acc;
  for (int32_t id : ids) acc.add(parser.push(dec.push(id)));
  acc.add(parser.push(dec.flush()));
  acc.add(parser.finish());
  const auto& [reasoning, content, calls] = acc;
  EXPECT_EQ(reasoning, "The user wants the weather. 天气 ☀️\n");
  EXPECT_EQ(content, "Let me check.\n");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].name, "get_weather");
  EXPECT_EQ(json::parse(calls[0].arguments), json({{"city", "São Paulo"}, {"days", 2}}));
  EXPECT_EQ(ChatOutputParser::mode_for_prompt("]~b]ai\n<think>\n"), ReasoningMode::PromptOpened);
  EXPECT_EQ(ChatOutputParser::mode_for_prompt("]~b]ai\n"), ReasoningMode::ModelOpens);
}

}  // namespace
}  // namespace m2
