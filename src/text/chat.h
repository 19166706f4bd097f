// A model's chat format: its template and special tokens (tokenizer_config.json / chat_template.jinja),
// and the parser that turns generated text back into an OpenAI message (reasoning, content, tool calls).
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "text/jinja/template.h"
#include "text/reasoning_parser.h"
#include "text/tool_parser.h"

namespace m2 {

class ChatFormat {
 public:
  // Reads tokenizer_config.json (chat_template, bos_token, eos_token) or chat_template.jinja.
  static ChatFormat load(const std::filesystem::path& model_dir);
  // As load(), with the template read from `template_file` instead (--chat-template).
  static ChatFormat load(const std::filesystem::path& model_dir, const std::filesystem::path& template_file);

  // Renders messages (+ tools, + extra keyword arguments) as HF apply_chat_template does.
  std::string render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                     bool add_generation_prompt, const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  const std::string& bos_token() const { return bos_; }
  const std::string& eos_token() const { return eos_; }

 private:
  std::unique_ptr<ChatTemplate> template_;
  std::string bos_, eos_;
};

// Reasoning first, then tool calls on the content: the whole output path of a chat completion.
struct ChatDelta {
  std::string reasoning, content;
  std::vector<ToolCallDelta> tool_calls;
};

// Collects a stream of ChatDeltas into the final message (what a non-streaming response returns).
struct ChatAccumulator {
  std::string reasoning, content;
  std::vector<ToolCall> tool_calls;
  void add(const ChatDelta& d);
};

class ChatOutputParser {
 public:
  // parse_tools = false: tool-call markup stays in the content (tool_choice "none", no tools).
  ChatOutputParser(ReasoningMode mode, const nlohmann::json& tools, std::function<std::string()> new_id = {},
                   bool parse_tools = true);
  ChatDelta push(std::string_view text);
  ChatDelta finish();

  // The reasoning mode that fits a rendered prompt: a prompt that ends inside "<think>" means the
  // output starts in the think block.
  static ReasoningMode mode_for_prompt(const std::string& prompt);

 private:
  ReasoningParser reasoning_;
  ToolCallParser tools_;
  bool parse_tools_ = true;
};

}  // namespace m2
