// The chat pipeline every chat-shaped API shares (OpenAI chat completions, Anthropic Messages, OpenAI
// Responses): messages in the template's form → the model's chat template → tokens, and the model's
// output → reasoning, content and MiniMax tool calls, as it streams. The APIs are translations at the
// edge of this one pipeline.
#pragma once
#include "server/api_context.h"

namespace m2 {

enum class ToolMode { None, Auto, Required, Named };

struct ChatPlan {
  std::vector<int32_t> ids;          // the prompt
  ReasoningMode reasoning = ReasoningMode::None;
  std::string prefix;                // the forced start of the assistant turn (tool_choice required / named)
  nlohmann::json tools = nlohmann::json::array();  // OpenAI function tools the output is typed by
  bool parse_tools = false;
  bool parallel = true;              // more than one tool call may be returned
};

// Messages as chat templates expect them: "developer" is "system", tool-call arguments are objects
// (the API carries them as JSON strings), content parts checked (text only), null content empty. 400
// naming the field.
nlohmann::json template_messages(const nlohmann::json& messages);
// Checks OpenAI function tools ([{type: function, function: {name, parameters}}]); 400 naming the entry.
nlohmann::json checked_openai_tools(const nlohmann::json& tools);
// Renders and tokenizes. Auto needs --enable-auto-tool-choice; Required/Named start the assistant turn
// with the tool-call opener (after closing a think block the prompt opened).
// check_auto = false renders auto tool choice without the server flag (for counting tokens).
ChatPlan plan_chat(const ApiContext& ctx, const nlohmann::json& messages, const nlohmann::json& tools, ToolMode mode,
                   const std::string& named, const nlohmann::json& kwargs, bool add_generation_prompt = true,
                   bool check_auto = true);

// One choice's output, parsed as it streams.
class ChatChoice {
 public:
  explicit ChatChoice(const ChatPlan& plan);
  // The deltas of one event (the prefix's deltas come out with the first), the finish folded in.
  ChatDelta absorb(const ChoiceEvent& e);
  const ChatAccumulator& total() const { return acc_; }
  bool has_tool_calls() const { return !acc_.tool_calls.empty(); }

  FinishReason finish = FinishReason::None;
  std::string stop_reason, error;
  int64_t generated = 0, prompt_tokens = 0, cached_tokens = 0;
  std::vector<float> margins;

 private:
  ChatOutputParser parser_;
  ChatAccumulator acc_;
  ChatDelta pending_;  // the prefix's deltas, not yet sent
  bool parallel_;
};

// The engine requests of a chat: n choices (seed + i each), with the scripted output when testing.
std::vector<Request> chat_requests(const ApiContext& ctx, const ChatPlan& plan, const SamplingParams& params, int n);

}  // namespace m2
