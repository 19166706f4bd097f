// MiniMax tool calls (<minimax:tool_call><invoke name="…"><parameter name="…">v</parameter></invoke>
// </minimax:tool_call>) → OpenAI tool_calls, streaming or not. Values are typed by the request's
// tool JSON schemas.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace m2 {

struct ToolCallDelta {
  int index = 0;
  std::string id, name;  // set on the first delta of a call only
  std::string arguments; // a fragment; a call's fragments concatenate to a JSON object
};

struct ToolParserDelta {
  std::string content;
  std::vector<ToolCallDelta> tool_calls;
};

struct ToolCall {
  std::string id, name, arguments;  // arguments: JSON object text
};

class ToolCallParser {
 public:
  // tools: the request's OpenAI `tools` array (may be null/empty). new_id makes call ids
  // ("call_" + 24 hex digits by default).
  explicit ToolCallParser(const nlohmann::json& tools, std::function<std::string()> new_id = {});

  // Streaming: feed text as it arrives. Content is held back only while it may still be the start of
  // markup; markup never reaches content.
  ToolParserDelta push(std::string_view text);
  ToolParserDelta finish();

  struct Result {
    std::optional<std::string> content;  // null when empty
    std::vector<ToolCall> tool_calls;
  };
  static Result parse(std::string_view output, const nlohmann::json& tools, std::function<std::string()> new_id = {});

  // Converts one parameter value by the schema of tool `tool`, parameter `param` (exposed for tests).
  nlohmann::json convert(const std::string& tool, const std::string& param, const std::string& value) const;

 private:
  enum class State { Text, Block, Invoke };
  bool step(ToolParserDelta& d, bool at_end);
  std::vector<std::string> types_for(const std::string& tool, const std::string& param) const;

  nlohmann::json tools_;
  std::function<std::string()> new_id_;
  State state_ = State::Text;
  std::string buf_;
  int calls_ = 0;           // calls started so far
  bool params_ = false;     // current invoke has emitted a parameter
  std::string tool_name_;   // current invoke's tool
  bool after_block_ = false;  // swallow whitespace right after a block
};

}  // namespace m2
