#include "server/chat_core.h"

#include <fmt/format.h>

namespace m2 {

using json = nlohmann::json;

json template_messages(const json& messages) {
  if (!messages.is_array()) wrong_type("messages", "a list of messages", messages);
  if (messages.empty()) throw ApiError(400, "'messages' must not be empty", "messages");
  json out = json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) wrong_type(where, "an object", m);
    auto role = string_field(m, "role");
    if (!role) throw ApiError(400, fmt::format("'{}.role' is required", where), where + ".role");
    if (*role != "system" && *role != "developer" && *role != "user" && *role != "assistant" && *role != "tool")
      throw ApiError(400, fmt::format("'{}.role' = '{}' is not one of system, developer, user, assistant, tool", where, *role),
                     where + ".role");
    json t = m;
    if (*role == "developer") t["role"] = "system";
    if (!field_ptr(m, "content")) t["content"] = "";  // a template prints null as "None"
    if (const json* c = field_ptr(m, "content")) {
      if (c->is_array()) {
        for (size_t k = 0; k < c->size(); ++k) {
          const json& part = (*c)[k];
          const std::string pw = fmt::format("{}.content[{}]", where, k);
          if (!part.is_object()) wrong_type(pw, "an object", part);
          auto type = string_field(part, "type");
          if (type != "text")
            throw ApiError(400, fmt::format("'{}.type' = '{}': only text content is supported", pw, type.value_or("")), pw);
          if (!string_field(part, "text")) throw ApiError(400, fmt::format("'{}.text' is required", pw), pw + ".text");
        }
      } else if (!c->is_string()) {
        wrong_type(where + ".content", "a string or a list of content parts", *c);
      }
    }
    if (const json* calls = field_ptr(m, "tool_calls")) {
      if (!calls->is_array()) wrong_type(where + ".tool_calls", "a list", *calls);
      for (size_t k = 0; k < calls->size(); ++k) {
        const std::string cw = fmt::format("{}.tool_calls[{}]", where, k);
        const json& call = (*calls)[k];
        const json* fn = call.is_object() ? field_ptr(call, "function") : nullptr;
        if (!fn || !fn->is_object() || !string_field(*fn, "name"))
          throw ApiError(400, fmt::format("'{}.function.name' is required", cw), cw + ".function.name");
        json args = fn->contains("arguments") ? (*fn)["arguments"] : json::object();
        if (args.is_string()) {
          try {
            args = json::parse(args.get<std::string>());
          } catch (const json::exception&) {
            throw ApiError(400, fmt::format("'{}.function.arguments' is not valid JSON", cw), cw + ".function.arguments");
          }
        }
        if (!args.is_object()) throw ApiError(400, fmt::format("'{}.function.arguments' must be a JSON object", cw));
        t["tool_calls"][k]["function"]["arguments"] = args;
      }
    }
    out.push_back(std::move(t));
  }
  return out;
}

json checked_openai_tools(const json& tools) {
  if (!tools.is_array()) wrong_type("tools", "a list of tools", tools);
  for (size_t i = 0; i < tools.size(); ++i) {
    const json& t = tools[i];
    const std::string w = fmt::format("tools[{}]", i);
    if (!t.is_object() || string_field(t, "type").value_or("function") != "function")
      throw ApiError(400, fmt::format("'{}' must be a function tool", w), w);
    const json* fn = field_ptr(t, "function");
    if (!fn || !fn->is_object() || !string_field(*fn, "name"))
      throw ApiError(400, fmt::format("'{}.function.name' is required", w), w + ".function.name");
    if (const json* p = field_ptr(*fn, "parameters"); p && !p->is_object())
      wrong_type(w + ".function.parameters", "a JSON schema object", *p);
  }
  return tools;
}

ChatPlan plan_chat(const ApiContext& ctx, const json& messages, const json& tools, ToolMode mode, const std::string& named,
                   const json& kwargs, bool add_generation_prompt, bool check_auto) {
  if (!ctx.chat) throw ApiError(400, "this model has no chat template: use /v1/completions, or start the server with --chat-template");
  if (mode != ToolMode::None && tools.empty()) throw ApiError(400, "a tool choice other than none needs tools", "tool_choice");
  if (mode == ToolMode::Auto && !ctx.auto_tool_choice && check_auto)
    throw ApiError(400, "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
                   "tool_choice");
  ChatPlan p;
  if (mode != ToolMode::None) {
    p.tools = tools;
    p.parse_tools = true;
  }
  std::string prompt;
  try {
    prompt = ctx.chat->render(nlohmann::ordered_json(messages), nlohmann::ordered_json(p.tools), add_generation_prompt,
                              nlohmann::ordered_json(kwargs.is_object() ? kwargs : json::object()));
  } catch (const Error& e) {
    throw ApiError(400, fmt::format("the chat template failed on these messages: {}", e.what()));
  }
  p.reasoning = ctx.reasoning_mode(prompt);
  if (mode == ToolMode::Required || mode == ToolMode::Named) {
    if (p.reasoning == ReasoningMode::PromptOpened) p.prefix = "</think>\n\n";
    p.prefix += "<minimax:tool_call>\n";
    if (mode == ToolMode::Named) p.prefix += "<invoke name=\"" + named + "\">\n";
  }
  try {
    p.ids = ctx.tokenizer.encode(prompt + p.prefix, false);
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }
  return p;
}

ChatChoice::ChatChoice(const ChatPlan& plan)
    : parser_(plan.reasoning, plan.tools, {}, plan.parse_tools), parallel_(plan.parallel) {
  if (!plan.prefix.empty()) pending_ = parser_.push(plan.prefix);  // output the model did not have to write
}

ChatDelta ChatChoice::absorb(const ChoiceEvent& e) {
  ChatDelta d = parser_.push(e.text);
  if (e.finished) {
    ChatDelta f = parser_.finish();
    d.reasoning += f.reasoning;
    d.content += f.content;
    d.tool_calls.insert(d.tool_calls.end(), f.tool_calls.begin(), f.tool_calls.end());
    finish = e.finish;
    stop_reason = e.stop_reason;
    error = e.error;
    margins = e.margins;
  }
  if (!pending_.reasoning.empty() || !pending_.content.empty() || !pending_.tool_calls.empty()) {
    pending_.reasoning += d.reasoning;
    pending_.content += d.content;
    pending_.tool_calls.insert(pending_.tool_calls.end(), d.tool_calls.begin(), d.tool_calls.end());
    d = std::move(pending_);
    pending_ = ChatDelta{};
  }
  if (!parallel_)
    d.tool_calls.erase(std::remove_if(d.tool_calls.begin(), d.tool_calls.end(), [](const ToolCallDelta& t) { return t.index > 0; }),
                       d.tool_calls.end());
  acc_.add(d);
  generated = std::max(generated, e.generated);
  if (e.prompt_tokens) prompt_tokens = e.prompt_tokens;
  if (e.cached_tokens) cached_tokens = e.cached_tokens;
  return d;
}

std::vector<Request> chat_requests(const ApiContext& ctx, const ChatPlan& plan, const SamplingParams& params, int n) {
  auto scripted = ctx.scripted_tokens();
  std::vector<Request> requests;
  for (int i = 0; i < n; ++i) {
    Request r;
    r.prompt = plan.ids;
    r.params = params;
    r.params.skip_special_tokens = false;  // the parsers read <think> and <minimax:tool_call>
    if (params.seed) r.params.seed = *params.seed + uint64_t(i);
    if (scripted) r.forced_output = *scripted;
    requests.push_back(std::move(r));
  }
  return requests;
}

}  // namespace m2
