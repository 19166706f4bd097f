// POST /v1/chat/completions: the OpenAI chat API over the chat pipeline (chat_core.h).
#include <fmt/format.h>

#include "server/chat_core.h"
#include "server/openai_api.h"

namespace m2 {

namespace {

using Clock = std::chrono::steady_clock;

// tool_choice: none | auto | required | {"type": "function", "function": {"name"}}.
ToolMode tool_mode(const json& b, const json& tools, std::string* named) {
  const json* choice = field_ptr(b, "tool_choice");
  if (!choice) return tools.empty() ? ToolMode::None : ToolMode::Auto;
  if (choice->is_string()) {
    const std::string m = choice->get<std::string>();
    if (m == "none") return ToolMode::None;
    if (m == "auto") return ToolMode::Auto;
    if (m == "required") return ToolMode::Required;
    throw ApiError(400, fmt::format("'tool_choice' = '{}' is not one of none, auto, required", m), "tool_choice");
  }
  if (!choice->is_object()) wrong_type("tool_choice", "a string or an object", *choice);
  const json* fn = field_ptr(*choice, "function");
  auto name = fn && fn->is_object() ? string_field(*fn, "name") : std::nullopt;
  if (!name) throw ApiError(400, "'tool_choice.function.name' is required", "tool_choice");
  bool known = false;
  for (const auto& t : tools) known = known || t["function"]["name"] == *name;
  if (!known) throw ApiError(400, fmt::format("'tool_choice' names '{}', which is not among 'tools'", *name), "tool_choice");
  *named = *name;
  return ToolMode::Named;
}

json message_json(const ChatChoice& c) {
  const ChatAccumulator& a = c.total();
  json msg = {{"role", "assistant"}, {"content", a.content.empty() ? json() : json(a.content)}};
  if (!a.reasoning.empty()) msg["reasoning_content"] = a.reasoning;
  if (!a.tool_calls.empty()) {
    msg["tool_calls"] = json::array();
    for (const auto& t : a.tool_calls)
      msg["tool_calls"].push_back({{"id", t.id}, {"type", "function"}, {"function", {{"name", t.name}, {"arguments", t.arguments}}}});
  }
  return msg;
}

std::string finish_reason(const ChatChoice& c) {
  if (c.finish == FinishReason::Stop && c.has_tool_calls()) return "tool_calls";
  return std::string(finish_reason_name(c.finish));
}

}  // namespace

void handle_chat(ApiContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const json b = parse_body(req.body);
  ctx.check_model(b);
  const json* messages = field_ptr(b, "messages");
  if (!messages) throw ApiError(400, "'messages' is required", "messages");
  const json tmpl = template_messages(*messages);
  const json tools = field_ptr(b, "tools") ? checked_openai_tools(b["tools"]) : json::array();
  std::string named;
  const ToolMode mode = tool_mode(b, tools, &named);
  json kwargs = json::object();
  if (const json* k = field_ptr(b, "chat_template_kwargs")) {
    if (!k->is_object()) wrong_type("chat_template_kwargs", "an object", *k);
    kwargs = *k;
  }
  ChatPlan plan = plan_chat(ctx, tmpl, tools, mode, named, kwargs, bool_field(b, "add_generation_prompt").value_or(true));
  plan.parallel = bool_field(b, "parallel_tool_calls").value_or(true);
  const int n = int_in(b, "n", 1, ctx.limits.max_n).value_or(1);
  const bool stream = bool_field(b, "stream").value_or(false);
  bool include_usage = false;
  if (const json* so = field_ptr(b, "stream_options")) {
    if (!so->is_object()) wrong_type("stream_options", "an object", *so);
    include_usage = bool_field(*so, "include_usage").value_or(false);
  }
  int top_logprobs = -1;
  if (bool_field(b, "logprobs").value_or(false)) top_logprobs = int_in(b, "top_logprobs", 0, 20).value_or(0);
  else if (field_ptr(b, "top_logprobs")) int_in(b, "top_logprobs", 0, 20);  // type-checked either way
  SamplingParams params = parse_sampling(b, ctx, int64_t(plan.ids.size()));
  params.logprobs = top_logprobs;

  const std::string id = ctx.new_id("chatcmpl-");
  const std::string model = ctx.model_names[0];
  const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  auto gen = start_generation(ctx, chat_requests(ctx, plan, params, n), id);
  auto choices = std::make_shared<std::vector<ChatChoice>>();
  for (int i = 0; i < n; ++i) choices->emplace_back(plan);
  const auto deadline = Clock::now() + ctx.limits.request_timeout;
  const int64_t prompt_tokens = int64_t(plan.ids.size());
  auto usage = [choices, prompt_tokens] {
    int64_t completion = 0;
    for (const auto& c : *choices) completion += c.generated;
    return usage_json(prompt_tokens, completion, choices->at(0).cached_tokens);
  };
  auto logprobs_of = [&ctx](const ChoiceEvent& e) {
    json lp = json::array();
    for (size_t k = 0; k < e.logprobs.size(); ++k) lp.push_back(chat_logprob_entry(ctx, e.tokens[k], e.logprobs[k]));
    return lp;
  };

  if (!stream) {
    std::vector<json> lps(static_cast<size_t>(n), json::array());
    bool timed_out = false;
    drive(*gen, nullptr, deadline,
          [&](const ChoiceEvent& e) {
            (*choices)[size_t(e.choice)].absorb(e);
            for (auto& x : logprobs_of(e)) lps[size_t(e.choice)].push_back(x);
            return true;
          },
          "", &timed_out);
    if (timed_out) throw ApiError(504, fmt::format("the request did not finish within {} s", ctx.limits.request_timeout.count() / 1000));
    json out_choices = json::array();
    for (int i = 0; i < n; ++i) {
      const ChatChoice& c = (*choices)[size_t(i)];
      if (!c.error.empty()) throw ApiError(500, "generation failed: " + c.error);
      json choice = {{"index", i}, {"message", message_json(c)}, {"finish_reason", finish_reason(c)}};
      choice["logprobs"] = top_logprobs >= 0 ? json{{"content", lps[size_t(i)]}} : json();
      choice["stop_reason"] = c.stop_reason.empty() ? json() : json(c.stop_reason);
      if (!c.margins.empty()) choice["m2_decision_margins"] = c.margins;
      out_choices.push_back(std::move(choice));
    }
    json out = {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", model},
                {"choices", out_choices}, {"usage", usage()}};
    res.set_content(out.dump(), "application/json");
    return;
  }

  auto chunk = [id, created, model](json choice) {
    return sse(json{{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
                    {"choices", json::array({std::move(choice)})}}.dump());
  };
  res.set_chunked_content_provider(
      "text/event-stream",
      [gen, choices, chunk, usage, logprobs_of, n, include_usage, top_logprobs, deadline, id, created, model,
       timeout = ctx.limits.request_timeout](size_t, httplib::DataSink& sink) {
        for (int i = 0; i < n; ++i) {
          json choice = {{"index", i}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
          choice["delta"] = {{"role", "assistant"}, {"content", ""}};
          if (!write(sink, chunk(std::move(choice)))) return false;
        }
        bool timed_out = false;
        const bool ok = drive(
            *gen, &sink, deadline,
            [&](const ChoiceEvent& e) {
              ChatChoice& c = (*choices)[size_t(e.choice)];
              const ChatDelta d = c.absorb(e);
              const json lp = logprobs_of(e);
              if (!c.error.empty()) return write(sink, sse(openai_error_body(500, "generation failed: " + c.error)));
              const json delta = delta_json(d);
              if (!delta.empty() || !lp.empty()) {
                json choice = {{"index", e.choice}, {"delta", delta}, {"finish_reason", nullptr}};
                choice["logprobs"] = top_logprobs >= 0 ? json{{"content", lp}} : json();
                if (!write(sink, chunk(std::move(choice)))) return false;
              }
              if (!e.finished) return true;
              json choice = {{"index", e.choice}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", finish_reason(c)}};
              choice["stop_reason"] = c.stop_reason.empty() ? json() : json(c.stop_reason);
              if (!c.margins.empty()) choice["m2_decision_margins"] = c.margins;
              return write(sink, chunk(std::move(choice)));
            },
            ": ping\n\n", &timed_out);
        if (!ok && !timed_out) return false;  // the client has gone: the generation is aborted
        if (timed_out)
          write(sink, sse(openai_error_body(504, fmt::format("the request did not finish within {} s", timeout.count() / 1000))));
        if (include_usage) write(sink, usage_chunk("chat.completion.chunk", id, created, model, usage()));
        write(sink, "data: [DONE]\n\n");
        sink.done();
        return true;
      },
      [gen](bool success) {
        if (!success) gen->abort();
      });
}

}  // namespace m2
