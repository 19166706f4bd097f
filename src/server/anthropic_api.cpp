// POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages API (what Claude Code
// speaks), translated at the edge into the chat pipeline: system and content blocks → template
// messages, tools with input_schema → function tools, thinking blocks ↔ reasoning, tool_use ↔ tool
// calls, Anthropic's SSE events in order.
#include <fmt/format.h>

#include "server/anthropic_api.h"
#include "server/chat_core.h"

namespace m2 {

namespace {

using Clock = std::chrono::steady_clock;

// The text of a string or of a list of text blocks (other block types are refused).
std::string block_text(const json& content, const std::string& where) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) wrong_type(where, "a string or a list of text blocks", content);
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const json& b = content[i];
    const std::string w = fmt::format("{}[{}]", where, i);
    if (!b.is_object()) wrong_type(w, "a content block", b);
    const std::string type = string_field(b, "type").value_or("");
    if (type != "text") throw ApiError(400, fmt::format("'{}.type' = '{}': only text blocks are supported here", w, type), w);
    auto t = string_field(b, "text");
    if (!t) throw ApiError(400, fmt::format("'{}.text' is required", w), w);
    text += (text.empty() ? "" : "\n") + *t;
  }
  return text;
}

std::string tool_use_id(const std::string& call_id) {
  return call_id.rfind("call_", 0) == 0 ? "toolu_" + call_id.substr(5) : call_id;
}

// Anthropic system + messages → OpenAI-form messages for the template.
json to_template_messages(const json& b) {
  json out = json::array();
  if (const json* sys = field_ptr(b, "system")) out.push_back({{"role", "system"}, {"content", block_text(*sys, "system")}});
  const json* messages = field_ptr(b, "messages");
  if (!messages) throw ApiError(400, "'messages' is required", "messages");
  if (!messages->is_array() || messages->empty()) throw ApiError(400, "'messages' must be a non-empty list", "messages");
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) wrong_type(where, "an object", m);
    const std::string role = string_field(m, "role").value_or("");
    if (role != "user" && role != "assistant")
      throw ApiError(400, fmt::format("'{}.role' = '{}': expected user or assistant", where, role), where + ".role");
    const json* content = field_ptr(m, "content");
    if (!content) throw ApiError(400, fmt::format("'{}.content' is required", where), where + ".content");
    if (content->is_string()) {
      out.push_back({{"role", role}, {"content", content->get<std::string>()}});
      continue;
    }
    if (!content->is_array()) wrong_type(where + ".content", "a string or a list of content blocks", *content);
    std::string text, thinking;
    json calls = json::array();
    for (size_t k = 0; k < content->size(); ++k) {
      const json& blk = (*content)[k];
      const std::string w = fmt::format("{}.content[{}]", where, k);
      if (!blk.is_object()) wrong_type(w, "a content block", blk);
      const std::string type = string_field(blk, "type").value_or("");
      if (type == "text") {
        text += string_field(blk, "text").value_or("");
      } else if (type == "thinking" && role == "assistant") {
        thinking += string_field(blk, "thinking").value_or("");
      } else if (type == "redacted_thinking") {
        continue;
      } else if (type == "tool_use" && role == "assistant") {
        auto name = string_field(blk, "name");
        auto id = string_field(blk, "id");
        if (!name || !id) throw ApiError(400, fmt::format("'{}' needs 'id' and 'name'", w), w);
        const json* input = field_ptr(blk, "input");
        if (input && !input->is_object()) wrong_type(w + ".input", "an object", *input);
        calls.push_back({{"id", *id}, {"type", "function"}, {"function", {{"name", *name}, {"arguments", input ? *input : json::object()}}}});
      } else if (type == "tool_result" && role == "user") {
        auto id = string_field(blk, "tool_use_id");
        if (!id) throw ApiError(400, fmt::format("'{}.tool_use_id' is required", w), w);
        std::string result = field_ptr(blk, "content") ? block_text(blk["content"], w + ".content") : "";
        if (bool_field(blk, "is_error").value_or(false)) result = "Error: " + result;
        out.push_back({{"role", "tool"}, {"tool_call_id", *id}, {"content", result}});
      } else {
        throw ApiError(400, fmt::format("'{}.type' = '{}' is not supported in a {} message", w, type, role), w);
      }
    }
    if (role == "assistant") {
      json a = {{"role", "assistant"}, {"content", text}};
      if (!thinking.empty()) a["reasoning_content"] = thinking;
      if (!calls.empty()) a["tool_calls"] = calls;
      out.push_back(std::move(a));
    } else if (!text.empty()) {
      out.push_back({{"role", "user"}, {"content", text}});
    }
  }
  return template_messages(out);
}

// Anthropic tools ({name, description, input_schema}) → OpenAI function tools.
json to_openai_tools(const json& b) {
  json tools = json::array();
  const json* t = field_ptr(b, "tools");
  if (!t) return tools;
  if (!t->is_array()) wrong_type("tools", "a list of tools", *t);
  for (size_t i = 0; i < t->size(); ++i) {
    const json& x = (*t)[i];
    const std::string w = fmt::format("tools[{}]", i);
    if (!x.is_object()) wrong_type(w, "a tool", x);
    auto name = string_field(x, "name");
    if (!name) throw ApiError(400, fmt::format("'{}.name' is required", w), w);
    const json* schema = field_ptr(x, "input_schema");
    if (!schema || !schema->is_object())
      throw ApiError(400, fmt::format("'{}' ({}) needs an input_schema: only client tools are supported", w, *name), w);
    json fn = {{"name", *name}, {"parameters", *schema}};
    if (auto d = string_field(x, "description")) fn["description"] = *d;
    tools.push_back({{"type", "function"}, {"function", fn}});
  }
  return tools;
}

struct Parsed {
  ChatPlan plan;
  SamplingParams params;
  bool stream = false, thinking = false;
};

Parsed parse_messages_request(ApiContext& ctx, const json& b, bool for_count) {
  ctx.check_model(b);
  Parsed p;
  const json messages = to_template_messages(b);
  const json tools = to_openai_tools(b);
  ToolMode mode = tools.empty() ? ToolMode::None : ToolMode::Auto;
  std::string named;
  bool parallel = true;
  if (const json* tc = field_ptr(b, "tool_choice")) {
    if (!tc->is_object()) wrong_type("tool_choice", "an object", *tc);
    const std::string type = string_field(*tc, "type").value_or("");
    if (type == "auto") mode = ToolMode::Auto;
    else if (type == "any") mode = ToolMode::Required;
    else if (type == "none") mode = ToolMode::None;
    else if (type == "tool") {
      auto name = string_field(*tc, "name");
      if (!name) throw ApiError(400, "'tool_choice.name' is required for type tool", "tool_choice");
      bool known = false;
      for (const auto& t : tools) known = known || t["function"]["name"] == *name;
      if (!known) throw ApiError(400, fmt::format("'tool_choice' names '{}', which is not among 'tools'", *name), "tool_choice");
      mode = ToolMode::Named;
      named = *name;
    } else {
      throw ApiError(400, fmt::format("'tool_choice.type' = '{}': expected auto, any, tool or none", type), "tool_choice");
    }
    parallel = !bool_field(*tc, "disable_parallel_tool_use").value_or(false);
  }
  p.plan = plan_chat(ctx, messages, tools, mode, named, json::object(), true, !for_count);
  p.plan.parallel = parallel;
  if (for_count) return p;
  auto max_tokens = int_in(b, "max_tokens", 1, INT32_MAX);
  if (!max_tokens) throw ApiError(400, "'max_tokens' is required", "max_tokens");
  json sampling = {{"max_tokens", *max_tokens}};
  for (const char* k : {"temperature", "top_p", "top_k"})
    if (b.contains(k)) sampling[k] = b[k];
  if (const json* st = field_ptr(b, "stop_sequences")) {
    if (!st->is_array()) wrong_type("stop_sequences", "a list of strings", *st);
    sampling["stop"] = *st;
  }
  p.params = parse_sampling(sampling, ctx, int64_t(p.plan.ids.size()));
  p.stream = bool_field(b, "stream").value_or(false);
  if (const json* th = field_ptr(b, "thinking")) {
    if (!th->is_object()) wrong_type("thinking", "an object", *th);
    const std::string type = string_field(*th, "type").value_or("");
    if (type != "enabled" && type != "disabled" && type != "adaptive")
      throw ApiError(400, fmt::format("'thinking.type' = '{}': expected enabled or disabled", type), "thinking.type");
    p.thinking = type != "disabled";
  }
  if (const json* md = field_ptr(b, "metadata"); md && !md->is_object()) wrong_type("metadata", "an object", *md);
  return p;
}

std::string stop_reason(const ChatChoice& c) {
  if (c.finish == FinishReason::Length) return "max_tokens";
  if (c.has_tool_calls()) return "tool_use";
  if (c.finish == FinishReason::Stop && !c.stop_reason.empty()) return "stop_sequence";  // Anthropic has only stop strings
  return "end_turn";
}

json usage(const ChatChoice& c, int64_t prompt_tokens) {
  return {{"input_tokens", prompt_tokens - c.cached_tokens}, {"output_tokens", c.generated},
          {"cache_read_input_tokens", c.cached_tokens}, {"cache_creation_input_tokens", 0}};
}

// The open content block of a stream, and the events that move between blocks.
class BlockWriter {
 public:
  BlockWriter(httplib::DataSink& sink, bool thinking) : sink_(sink), thinking_(thinking) {}
  bool delta(const ChatDelta& d) {
    if (thinking_ && !d.reasoning.empty()) {
      if (!open("thinking", {{"type", "thinking"}, {"thinking", ""}, {"signature", ""}})) return false;
      if (!event("content_block_delta", {{"type", "content_block_delta"}, {"index", index_}, {"delta", {{"type", "thinking_delta"}, {"thinking", d.reasoning}}}}))
        return false;
    }
    if (!d.content.empty()) {
      if (!open("text", {{"type", "text"}, {"text", ""}})) return false;
      if (!event("content_block_delta", {{"type", "content_block_delta"}, {"index", index_}, {"delta", {{"type", "text_delta"}, {"text", d.content}}}}))
        return false;
    }
    for (const auto& t : d.tool_calls) {
      if (!t.id.empty()) {
        current_ = "";  // every call is a block of its own
        if (!open("tool_use", {{"type", "tool_use"}, {"id", tool_use_id(t.id)}, {"name", t.name}, {"input", json::object()}})) return false;
      }
      if (!t.arguments.empty() &&
          !event("content_block_delta", {{"type", "content_block_delta"}, {"index", index_}, {"delta", {{"type", "input_json_delta"}, {"partial_json", t.arguments}}}}))
        return false;
    }
    return true;
  }
  bool close() {
    if (current_.empty()) return true;
    if (current_ == "thinking" &&
        !event("content_block_delta", {{"type", "content_block_delta"}, {"index", index_}, {"delta", {{"type", "signature_delta"}, {"signature", ""}}}}))
      return false;
    current_.clear();
    return event("content_block_stop", {{"type", "content_block_stop"}, {"index", index_}});
  }
  bool event(const std::string& name, const json& data) { return write(sink_, sse(data.dump(), name)); }

 private:
  bool open(const std::string& kind, json block) {
    if (current_ == kind) return true;
    if (!close()) return false;
    ++index_;
    current_ = kind;
    return event("content_block_start", {{"type", "content_block_start"}, {"index", index_}, {"content_block", std::move(block)}});
  }
  httplib::DataSink& sink_;
  bool thinking_;
  std::string current_;
  int index_ = -1;
};

}  // namespace

void handle_messages(ApiContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const json b = parse_body(req.body);
  Parsed p = parse_messages_request(ctx, b, false);
  const std::string id = ctx.new_id("msg_");
  const std::string model = ctx.model_names[0];
  const int64_t prompt_tokens = int64_t(p.plan.ids.size());
  auto gen = start_generation(ctx, chat_requests(ctx, p.plan, p.params, 1), id);
  auto choice = std::make_shared<ChatChoice>(p.plan);
  const auto deadline = Clock::now() + ctx.limits.request_timeout;
  const bool thinking = p.thinking;

  if (!p.stream) {
    bool timed_out = false;
    drive(*gen, nullptr, deadline, [&](const ChoiceEvent& e) { choice->absorb(e); return true; }, "", &timed_out);
    if (timed_out) throw ApiError(504, fmt::format("the request did not finish within {} s", ctx.limits.request_timeout.count() / 1000));
    if (!choice->error.empty()) throw ApiError(500, "generation failed: " + choice->error);
    const ChatAccumulator& a = choice->total();
    json content = json::array();
    if (thinking && !a.reasoning.empty()) content.push_back({{"type", "thinking"}, {"thinking", a.reasoning}, {"signature", ""}});
    if (!a.content.empty()) content.push_back({{"type", "text"}, {"text", a.content}});
    for (const auto& t : a.tool_calls) {
      json input = json::object();
      try {
        input = json::parse(t.arguments);
      } catch (const json::exception&) {
      }
      content.push_back({{"type", "tool_use"}, {"id", tool_use_id(t.id)}, {"name", t.name}, {"input", input}});
    }
    const std::string sr = stop_reason(*choice);
    json out = {{"id", id}, {"type", "message"}, {"role", "assistant"}, {"model", model}, {"content", content},
                {"stop_reason", sr}, {"stop_sequence", sr == "stop_sequence" ? json(choice->stop_reason) : json()},
                {"usage", usage(*choice, prompt_tokens)}};
    res.set_content(out.dump(), "application/json");
    return;
  }
  res.set_chunked_content_provider(
      "text/event-stream",
      [gen, choice, id, model, prompt_tokens, deadline, thinking, timeout = ctx.limits.request_timeout](size_t, httplib::DataSink& sink) {
        BlockWriter w(sink, thinking);
        json start = {{"id", id}, {"type", "message"}, {"role", "assistant"}, {"model", model}, {"content", json::array()},
                      {"stop_reason", nullptr}, {"stop_sequence", nullptr},
                      {"usage", {{"input_tokens", prompt_tokens}, {"output_tokens", 0}}}};
        if (!w.event("message_start", {{"type", "message_start"}, {"message", start}})) return false;
        bool timed_out = false;
        const bool ok = drive(
            *gen, &sink, deadline,
            [&](const ChoiceEvent& e) {
              const ChatDelta d = choice->absorb(e);
              if (!choice->error.empty())
                return w.event("error", json::parse(anthropic_error_body(500, "generation failed: " + choice->error)));
              return w.delta(d);
            },
            sse(R"({"type": "ping"})", "ping"), &timed_out);
        if (!ok && !timed_out) return false;
        if (timed_out) {
          w.event("error", json::parse(anthropic_error_body(504, fmt::format("the request did not finish within {} s", timeout.count() / 1000))));
        } else {
          const std::string sr = stop_reason(*choice);
          w.close();
          w.event("message_delta", {{"type", "message_delta"},
                                    {"delta", {{"stop_reason", sr}, {"stop_sequence", sr == "stop_sequence" ? json(choice->stop_reason) : json()}}},
                                    {"usage", usage(*choice, prompt_tokens)}});
          w.event("message_stop", {{"type", "message_stop"}});
        }
        sink.done();
        return true;
      },
      [gen](bool success) {
        if (!success) gen->abort();
      });
}

void handle_count_tokens(ApiContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const json b = parse_body(req.body);
  Parsed p = parse_messages_request(ctx, b, true);
  res.set_content(json{{"input_tokens", p.plan.ids.size()}}.dump(), "application/json");
}

}  // namespace m2
