// The MiniMax tool-call and reasoning parsers fed arbitrary model output in arbitrary splits (the
// first byte seeds the split points; the text may hold partial and nested markup): streaming gives
// exactly what the one-shot parse gives, and no markup ever reaches content.
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "fuzz_util.h"
#include "text/reasoning_parser.h"
#include "text/tool_parser.h"

namespace {

std::vector<std::string_view> chunks(std::string_view s, uint8_t seed) {
  std::minstd_rand rng(seed + 1u);
  std::vector<std::string_view> out;
  while (!s.empty()) {
    const size_t n = std::min(s.size(), size_t(1 + rng() % 7));
    out.push_back(s.substr(0, n));
    s.remove_prefix(n);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const nlohmann::json tools = nlohmann::json::parse(R"([
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
      "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
      "where": {"type": "object"}, "tags": {"type": "array"}, "ratio": {"type": ["number", "null"]}}}}}])");
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const auto parts = chunks(text, data[0]);

  const m2::ReasoningMode modes[] = {m2::ReasoningMode::PromptOpened, m2::ReasoningMode::ModelOpens,
                                     m2::ReasoningMode::AppendThink, m2::ReasoningMode::None};
  const m2::ReasoningMode mode = modes[data[0] % 4];
  m2::ReasoningParser rp(mode);
  std::string reasoning, content;
  for (auto p : parts) {
    const auto d = rp.push(p);
    reasoning += d.reasoning;
    content += d.content;
  }
  const auto end = rp.finish();
  reasoning += end.reasoning;
  content += end.content;
  const auto whole = m2::ReasoningParser::parse(text, mode);
  if (whole.content != content || whole.reasoning.value_or("") != reasoning) m2::fuzz::finding("streamed reasoning split differs from parse()");

  int counter = 0, counter2 = 0;
  m2::ToolCallParser tp(tools, [&] { return "call_" + std::to_string(counter++); });
  std::string tcontent;
  std::vector<std::pair<std::string, std::string>> calls;  // name, arguments
  const auto take = [&](const m2::ToolParserDelta& d) {
    tcontent += d.content;
    for (const auto& c : d.tool_calls) {
      if (size_t(c.index) >= calls.size()) calls.resize(size_t(c.index) + 1);
      calls[size_t(c.index)].first += c.name;
      calls[size_t(c.index)].second += c.arguments;
    }
  };
  for (auto p : parts) take(tp.push(p));
  take(tp.finish());
  const auto tw = m2::ToolCallParser::parse(text, tools, [&] { return "call_" + std::to_string(counter2++); });
  if (tw.content.value_or("") != tcontent) m2::fuzz::finding("streamed content differs from parse()");
  if (tw.tool_calls.size() != calls.size()) m2::fuzz::finding("streamed tool-call count differs from parse()");
  for (size_t i = 0; i < calls.size(); ++i) {
    if (calls[i].first != tw.tool_calls[i].name) m2::fuzz::finding("streamed tool name differs");
    if (!nlohmann::json::accept(calls[i].second)) m2::fuzz::finding("streamed arguments are not JSON");
    if (nlohmann::json::parse(calls[i].second) != nlohmann::json::parse(tw.tool_calls[i].arguments))
      m2::fuzz::finding("streamed arguments differ from parse()");
  }
  if (tcontent.find("<minimax:tool_call>") != std::string::npos && tw.tool_calls.empty() == false)
    m2::fuzz::finding("markup reached content");
  return 0;
}
