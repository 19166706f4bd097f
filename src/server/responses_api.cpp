// POST /v1/responses: the OpenAI Responses API (what Codex-style agents speak) with store: false
// semantics (the whole conversation comes in `input`; nothing is kept), translated at the edge into
// the chat pipeline: input items → template messages, flat function tools → chat tools, output →
// reasoning / message / function_call items, streamed as response.* events.
#include <fmt/format.h>

#include "server/chat_core.h"
#include "server/responses_api.h"

namespace m2 {

namespace {

using Clock = std::chrono::steady_clock;

std::string item_text(const json& content, const std::string& where) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) wrong_type(where, "a string or a list of content parts", content);
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const json& p = content[i];
    const std::string w = fmt::format("{}[{}]", where, i);
    if (!p.is_object()) wrong_type(w, "a content part", p);
    const std::string type = string_field(p, "type").value_or("");
    if (type != "input_text" && type != "output_text" && type != "text")
      throw ApiError(400, fmt::format("'{}.type' = '{}': only text parts are supported", w, type), w);
    text += string_field(p, "text").value_or("");
  }
  return text;
}

// input (a string or items) and instructions → template messages.
json to_template_messages(const json& b) {
  json out = json::array();
  if (auto ins = string_field(b, "instructions")) out.push_back({{"role", "system"}, {"content", *ins}});
  const json* input = field_ptr(b, "input");
  if (!input) throw ApiError(400, "'input' is required", "input");
  if (input->is_string()) {
    out.push_back({{"role", "user"}, {"content", input->get<std::string>()}});
    return template_messages(out);
  }
  if (!input->is_array() || input->empty()) throw ApiError(400, "'input' must be a string or a non-empty list of items", "input");
  std::string reasoning;  // a reasoning item goes with the assistant turn that follows it
  bool turn = false;      // the last message is an assistant turn still being assembled
  auto open_assistant = [&]() -> json& {
    if (!turn) {
      out.push_back({{"role", "assistant"}, {"content", ""}});
      turn = true;
    }
    json& a = out.back();
    if (!reasoning.empty()) {
      a["reasoning_content"] = a.value("reasoning_content", std::string()) + reasoning;
      reasoning.clear();
    }
    return a;
  };
  for (size_t i = 0; i < input->size(); ++i) {
    const json& it = (*input)[i];
    const std::string w = fmt::format("input[{}]", i);
    if (!it.is_object()) wrong_type(w, "an item", it);
    const std::string type = string_field(it, "type").value_or("message");
    if (type == "message") {
      const std::string role = string_field(it, "role").value_or("");
      const json* content = field_ptr(it, "content");
      if (!content) throw ApiError(400, fmt::format("'{}.content' is required", w), w);
      if (role == "assistant") {
        json& a = open_assistant();
        a["content"] = a["content"].get<std::string>() + item_text(*content, w + ".content");
      } else if (role == "user" || role == "system" || role == "developer") {
        out.push_back({{"role", role}, {"content", item_text(*content, w + ".content")}});
        turn = false;
      } else {
        throw ApiError(400, fmt::format("'{}.role' = '{}': expected user, system, developer or assistant", w, role), w);
      }
    } else if (type == "function_call") {
      auto name = string_field(it, "name");
      auto call_id = string_field(it, "call_id");
      if (!name || !call_id) throw ApiError(400, fmt::format("'{}' needs 'name' and 'call_id'", w), w);
      json& a = open_assistant();
      a["tool_calls"].push_back({{"id", *call_id}, {"type", "function"},
                                 {"function", {{"name", *name}, {"arguments", string_field(it, "arguments").value_or("{}")}}}});
    } else if (type == "function_call_output") {
      auto call_id = string_field(it, "call_id");
      if (!call_id) throw ApiError(400, fmt::format("'{}.call_id' is required", w), w);
      const json* o = field_ptr(it, "output");
      out.push_back({{"role", "tool"}, {"tool_call_id", *call_id}, {"content", o ? item_text(*o, w + ".output") : ""}});
      turn = false;
    } else if (type == "reasoning") {
      std::string text = string_field(it, "encrypted_content").value_or("");
      if (text.empty() && field_ptr(it, "content") && it["content"].is_array())
        for (const auto& c : it["content"]) text += c.value("text", "");
      if (text.empty() && field_ptr(it, "summary") && it["summary"].is_array())
        for (const auto& c : it["summary"]) text += c.value("text", "");
      reasoning += text;
    } else if (type == "item_reference") {
      throw ApiError(400, fmt::format("'{}': item references need stored responses; send the items (store: false)", w), w);
    } else {
      throw ApiError(400, fmt::format("'{}.type' = '{}' is not supported", w, type), w);
    }
  }
  return template_messages(out);
}

json to_chat_tools(const json& b) {
  json tools = json::array();
  const json* t = field_ptr(b, "tools");
  if (!t) return tools;
  if (!t->is_array()) wrong_type("tools", "a list of tools", *t);
  for (size_t i = 0; i < t->size(); ++i) {
    const json& x = (*t)[i];
    const std::string w = fmt::format("tools[{}]", i);
    if (!x.is_object() || string_field(x, "type").value_or("") != "function")
      throw ApiError(400, fmt::format("'{}': only function tools are supported", w), w);
    auto name = string_field(x, "name");
    if (!name) throw ApiError(400, fmt::format("'{}.name' is required", w), w);
    json fn = {{"name", *name}, {"parameters", field_ptr(x, "parameters") ? x["parameters"] : json::object()}};
    if (auto d = string_field(x, "description")) fn["description"] = *d;
    tools.push_back({{"type", "function"}, {"function", fn}});
  }
  return checked_openai_tools(tools);
}

struct Output {
  json reasoning, message, calls = json::array();
};

}  // namespace

void handle_responses(ApiContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const json b = parse_body(req.body);
  ctx.check_model(b);
  if (string_field(b, "previous_response_id"))
    throw ApiError(400, "'previous_response_id' needs stored responses; this server keeps none (store: false): send the whole input",
                   "previous_response_id");
  const json messages = to_template_messages(b);
  const json tools = to_chat_tools(b);
  ToolMode mode = tools.empty() ? ToolMode::None : ToolMode::Auto;
  std::string named;
  if (const json* tc = field_ptr(b, "tool_choice")) {
    if (tc->is_string()) {
      const std::string m = tc->get<std::string>();
      mode = m == "none" ? ToolMode::None : m == "auto" ? ToolMode::Auto : m == "required" ? ToolMode::Required : ToolMode::Auto;
      if (m != "none" && m != "auto" && m != "required")
        throw ApiError(400, fmt::format("'tool_choice' = '{}' is not one of none, auto, required", m), "tool_choice");
    } else if (tc->is_object() && string_field(*tc, "type").value_or("") == "function" && string_field(*tc, "name")) {
      mode = ToolMode::Named;
      named = *string_field(*tc, "name");
    } else {
      throw ApiError(400, "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"name\": ...}", "tool_choice");
    }
  }
  ChatPlan plan = plan_chat(ctx, messages, tools, mode, named, json::object());
  plan.parallel = bool_field(b, "parallel_tool_calls").value_or(true);
  std::string summary;
  if (const json* r = field_ptr(b, "reasoning")) {
    if (!r->is_object()) wrong_type("reasoning", "an object", *r);
    summary = string_field(*r, "summary").value_or("");
  }
  bool encrypted = false;
  if (const json* inc = field_ptr(b, "include"); inc && inc->is_array())
    for (const auto& x : *inc) encrypted = encrypted || x == "reasoning.encrypted_content";
  json sampling = json::object();
  if (b.contains("max_output_tokens") && !b["max_output_tokens"].is_null()) sampling["max_tokens"] = b["max_output_tokens"];
  for (const char* k : {"temperature", "top_p"})
    if (b.contains(k)) sampling[k] = b[k];
  const SamplingParams params = parse_sampling(sampling, ctx, int64_t(plan.ids.size()));
  const bool stream = bool_field(b, "stream").value_or(false);

  const std::string id = ctx.new_id("resp_");
  const std::string model = ctx.model_names[0];
  const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  const int64_t prompt_tokens = int64_t(plan.ids.size());
  auto gen = start_generation(ctx, chat_requests(ctx, plan, params, 1), id);
  auto choice = std::make_shared<ChatChoice>(plan);
  const auto deadline = Clock::now() + ctx.limits.request_timeout;
  // The response object, in progress or final.
  auto response = [=](const ChatChoice& c, const json& output, bool done) {
    const bool incomplete = done && c.finish == FinishReason::Length;
    json r = {{"id", id}, {"object", "response"}, {"created_at", created}, {"model", model}, {"output", output},
              {"status", !done ? "in_progress" : incomplete ? "incomplete" : "completed"},
              {"incomplete_details", incomplete ? json{{"reason", "max_output_tokens"}} : json()},
              {"error", nullptr}, {"instructions", b.contains("instructions") ? b["instructions"] : json()},
              {"tools", b.contains("tools") ? b["tools"] : json::array()},
              {"tool_choice", b.contains("tool_choice") ? b["tool_choice"] : json("auto")},
              {"parallel_tool_calls", plan.parallel}, {"store", false}, {"metadata", json::object()},
              {"temperature", b.contains("temperature") ? b["temperature"] : json()}, {"top_p", b.contains("top_p") ? b["top_p"] : json()},
              {"max_output_tokens", b.contains("max_output_tokens") ? b["max_output_tokens"] : json()},
              {"reasoning", {{"effort", nullptr}, {"summary", summary.empty() ? json() : json(summary)}}},
              {"text", {{"format", {{"type", "text"}}}}}};
    if (done)
      r["usage"] = {{"input_tokens", prompt_tokens}, {"input_tokens_details", {{"cached_tokens", c.cached_tokens}}},
                    {"output_tokens", c.generated}, {"output_tokens_details", {{"reasoning_tokens", 0}}},
                    {"total_tokens", prompt_tokens + c.generated}};
    return r;
  };
  auto reasoning_item = [summary, encrypted](const std::string& rid, const std::string& text) {
    json it = {{"type", "reasoning"}, {"id", rid}, {"summary", json::array()},
               {"content", json::array({{{"type", "reasoning_text"}, {"text", text}}})}};
    if (!summary.empty()) it["summary"].push_back({{"type", "summary_text"}, {"text", text}});
    if (encrypted) it["encrypted_content"] = text;
    return it;
  };
  auto message_item = [](const std::string& mid, const std::string& text) {
    return json{{"type", "message"}, {"id", mid}, {"status", "completed"}, {"role", "assistant"},
                {"content", json::array({{{"type", "output_text"}, {"text", text}, {"annotations", json::array()}}})}};
  };
  auto call_item = [](const std::string& fid, const ToolCall& t) {
    return json{{"type", "function_call"}, {"id", fid}, {"call_id", t.id}, {"name", t.name}, {"arguments", t.arguments},
                {"status", "completed"}};
  };

  if (!stream) {
    bool timed_out = false;
    drive(*gen, nullptr, deadline, [&](const ChoiceEvent& e) { choice->absorb(e); return true; }, "", &timed_out);
    if (timed_out) throw ApiError(504, fmt::format("the request did not finish within {} s", ctx.limits.request_timeout.count() / 1000));
    if (!choice->error.empty()) throw ApiError(500, "generation failed: " + choice->error);
    const ChatAccumulator& a = choice->total();
    json output = json::array();
    if (!a.reasoning.empty()) output.push_back(reasoning_item(ctx.new_id("rs_"), a.reasoning));
    if (!a.content.empty()) output.push_back(message_item(ctx.new_id("msg_"), a.content));
    for (const auto& t : a.tool_calls) output.push_back(call_item(ctx.new_id("fc_"), t));
    res.set_content(response(*choice, output, true).dump(), "application/json");
    return;
  }
  auto new_id = [&ctx](const char* p) { return ctx.new_id(p); };
  res.set_chunked_content_provider(
      "text/event-stream",
      [gen, choice, response, reasoning_item, message_item, call_item, new_id, deadline,
       timeout = ctx.limits.request_timeout](size_t, httplib::DataSink& sink) {
        int seq = 0;
        json output = json::array();     // finished items
        std::string open_kind, open_id;  // the item being streamed: reasoning | message | call
        std::string text;                // its text so far
        ToolCall call;
        auto event = [&](const std::string& type, json data) {
          data["type"] = type;
          data["sequence_number"] = seq++;
          return write(sink, sse(data.dump(), type));
        };
        auto close = [&]() {
          if (open_kind.empty()) return true;
          const int idx = int(output.size());
          json item;
          bool ok = true;
          if (open_kind == "reasoning") {
            item = reasoning_item(open_id, text);
            ok = event("response.reasoning_text.done", {{"item_id", open_id}, {"output_index", idx}, {"content_index", 0}, {"text", text}}) &&
                 event("response.content_part.done", {{"item_id", open_id}, {"output_index", idx}, {"content_index", 0},
                                                      {"part", {{"type", "reasoning_text"}, {"text", text}}}});
          } else if (open_kind == "message") {
            item = message_item(open_id, text);
            ok = event("response.output_text.done", {{"item_id", open_id}, {"output_index", idx}, {"content_index", 0}, {"text", text}}) &&
                 event("response.content_part.done", {{"item_id", open_id}, {"output_index", idx}, {"content_index", 0},
                                                      {"part", item["content"][0]}});
          } else {
            call.arguments = text;
            item = call_item(open_id, call);
            ok = event("response.function_call_arguments.done", {{"item_id", open_id}, {"output_index", idx}, {"arguments", text}});
          }
          ok = ok && event("response.output_item.done", {{"output_index", idx}, {"item", item}});
          output.push_back(item);
          open_kind.clear();
          text.clear();
          return ok;
        };
        auto open = [&](const std::string& kind, const std::string& iid, json item, json part) {
          if (open_kind == kind && kind != "call") return true;
          if (!close()) return false;
          open_kind = kind;
          open_id = iid;
          const int idx = int(output.size());
          if (!event("response.output_item.added", {{"output_index", idx}, {"item", std::move(item)}})) return false;
          return part.is_null() || event("response.content_part.added", {{"item_id", iid}, {"output_index", idx}, {"content_index", 0}, {"part", part}});
        };
        if (!event("response.created", {{"response", response(*choice, output, false)}}) ||
            !event("response.in_progress", {{"response", response(*choice, output, false)}}))
          return false;
        bool timed_out = false;
        const bool ok = drive(
            *gen, &sink, deadline,
            [&](const ChoiceEvent& e) {
              const ChatDelta d = choice->absorb(e);
              if (!choice->error.empty())
                return event("error", {{"code", "server_error"}, {"message", "generation failed: " + choice->error}, {"param", nullptr}});
              if (!d.reasoning.empty()) {
                const std::string rid = open_kind == "reasoning" ? open_id : new_id("rs_");
                if (!open("reasoning", rid, {{"type", "reasoning"}, {"id", rid}, {"summary", json::array()}, {"content", json::array()}},
                          {{"type", "reasoning_text"}, {"text", ""}}))
                  return false;
                text += d.reasoning;
                if (!event("response.reasoning_text.delta", {{"item_id", open_id}, {"output_index", int(output.size())}, {"content_index", 0},
                                                            {"delta", d.reasoning}}))
                  return false;
              }
              if (!d.content.empty()) {
                const std::string mid = open_kind == "message" ? open_id : new_id("msg_");
                if (!open("message", mid, {{"type", "message"}, {"id", mid}, {"status", "in_progress"}, {"role", "assistant"}, {"content", json::array()}},
                          {{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}}))
                  return false;
                text += d.content;
                if (!event("response.output_text.delta", {{"item_id", open_id}, {"output_index", int(output.size())}, {"content_index", 0},
                                                         {"delta", d.content}, {"logprobs", json::array()}}))
                  return false;
              }
              for (const auto& t : d.tool_calls) {
                if (!t.id.empty()) {
                  const std::string fid = new_id("fc_");
                  call = {t.id, t.name, ""};
                  if (!open("call", fid, {{"type", "function_call"}, {"id", fid}, {"call_id", t.id}, {"name", t.name}, {"arguments", ""}, {"status", "in_progress"}}, json()))
                    return false;
                }
                if (t.arguments.empty()) continue;
                text += t.arguments;
                if (!event("response.function_call_arguments.delta", {{"item_id", open_id}, {"output_index", int(output.size())}, {"delta", t.arguments}}))
                  return false;
              }
              return true;
            },
            ": ping\n\n", &timed_out);
        if (!ok && !timed_out) return false;
        if (timed_out) {
          event("error", {{"code", "timeout"}, {"message", fmt::format("the request did not finish within {} s", timeout.count() / 1000)}, {"param", nullptr}});
        } else if (choice->error.empty()) {
          close();
          const json r = response(*choice, output, true);
          event(r["status"] == "completed" ? "response.completed" : "response.incomplete", {{"response", r}});
        }
        sink.done();
        return true;
      },
      [gen](bool success) {
        if (!success) gen->abort();
      });
}

}  // namespace m2
