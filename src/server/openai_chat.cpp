// POST /v1/chat/completions: messages → the model's chat template → tokens → the engine; output →
// reasoning / content / MiniMax tool calls → an OpenAI chat completion, streamed or whole.
#include <fmt/format.h>

#include "server/openai_api.h"

namespace m2 {

namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

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
          } catch (const json::parse_error&) {
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

namespace {

json checked_tools(const json& b) {
  const json* tools = field_ptr(b, "tools");
  if (!tools) return json::array();
  if (!tools->is_array()) wrong_type("tools", "a list of tools", *tools);
  for (size_t i = 0; i < tools->size(); ++i) {
    const json& t = (*tools)[i];
    const std::string w = fmt::format("tools[{}]", i);
    if (!t.is_object() || string_field(t, "type").value_or("function") != "function")
      throw ApiError(400, fmt::format("'{}' must be a function tool", w), w);
    const json* fn = field_ptr(t, "function");
    if (!fn || !fn->is_object() || !string_field(*fn, "name"))
      throw ApiError(400, fmt::format("'{}.function.name' is required", w), w + ".function.name");
    if (const json* p = field_ptr(*fn, "parameters"); p && !p->is_object())
      wrong_type(w + ".function.parameters", "a JSON schema object", *p);
  }
  return *tools;
}

// tool_choice → which tools the template sees, whether output is parsed for calls, and the text
// that starts the assistant turn (required / named: the model must call).
struct ToolPlan {
  json tools;            // rendered and used for typing
  bool parse = false;
  bool required = false;
  std::string named;     // a named function
};

ToolPlan plan_tools(const json& b, const ApiContext& ctx) {
  ToolPlan p;
  json tools = checked_tools(b);
  const json* choice = field_ptr(b, "tool_choice");
  std::string mode = tools.empty() ? "none" : "auto";
  if (choice) {
    if (choice->is_string()) {
      mode = choice->get<std::string>();
      if (mode != "none" && mode != "auto" && mode != "required")
        throw ApiError(400, fmt::format("'tool_choice' = '{}' is not one of none, auto, required", mode), "tool_choice");
    } else if (choice->is_object()) {
      const json* fn = field_ptr(*choice, "function");
      auto name = fn && fn->is_object() ? string_field(*fn, "name") : std::nullopt;
      if (!name) throw ApiError(400, "'tool_choice.function.name' is required", "tool_choice");
      bool known = false;
      for (const auto& t : tools) known = known || t["function"]["name"] == *name;
      if (!known) throw ApiError(400, fmt::format("'tool_choice' names '{}', which is not among 'tools'", *name), "tool_choice");
      mode = "named";
      p.named = *name;
    } else {
      wrong_type("tool_choice", "a string or an object", *choice);
    }
  }
  if (mode != "none" && tools.empty()) throw ApiError(400, fmt::format("'tool_choice' = '{}' needs 'tools'", mode), "tool_choice");
  if (mode == "auto" && !ctx.auto_tool_choice)
    throw ApiError(400, "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
                   "tool_choice");
  if (mode == "none") return p;
  p.tools = tools;
  p.parse = true;
  p.required = mode == "required" || mode == "named";
  return p;
}

struct ChoiceState {
  explicit ChoiceState(ChatOutputParser p) : parser(std::move(p)) {}
  ChatOutputParser parser;
  ChatAccumulator acc;
  json logprobs = json::array();
  FinishReason finish = FinishReason::None;
  std::string stop_reason, error;
  int64_t generated = 0;
  std::vector<float> margins;
};

}  // namespace

void handle_chat(ApiContext& ctx, const httplib::Request& req, httplib::Response& res) {
  if (!ctx.chat) throw ApiError(400, "this model has no chat template: use /v1/completions, or start the server with --chat-template");
  const json b = parse_body(req.body);
  ctx.check_model(b);
  const json* messages = field_ptr(b, "messages");
  if (!messages) throw ApiError(400, "'messages' is required", "messages");
  const json tmpl_messages = template_messages(*messages);
  const ToolPlan tools = plan_tools(b, ctx);
  json kwargs = json::object();
  if (const json* k = field_ptr(b, "chat_template_kwargs")) {
    if (!k->is_object()) wrong_type("chat_template_kwargs", "an object", *k);
    kwargs = *k;
  }
  const bool add_generation_prompt = bool_field(b, "add_generation_prompt").value_or(true);
  std::string prompt;
  try {
    prompt = ctx.chat->render(nlohmann::ordered_json(tmpl_messages), nlohmann::ordered_json(tools.tools),
                              add_generation_prompt, nlohmann::ordered_json(kwargs));
  } catch (const Error& e) {
    throw ApiError(400, fmt::format("the chat template failed on these messages: {}", e.what()));
  }
  const ReasoningMode reasoning = ctx.reasoning_mode(prompt);
  // tool_choice required / named: the assistant turn starts with the tool-call opener.
  std::string prefix;
  if (tools.required) {
    if (reasoning == ReasoningMode::PromptOpened) prefix = "</think>\n\n";
    prefix += "<minimax:tool_call>\n";
    if (!tools.named.empty()) prefix += "<invoke name=\"" + tools.named + "\">\n";
  }
  std::vector<int32_t> ids = ctx.tokenizer.encode(prompt + prefix, false);
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
  const bool parallel = bool_field(b, "parallel_tool_calls").value_or(true);
  SamplingParams params = parse_sampling(b, ctx, int64_t(ids.size()));
  params.logprobs = top_logprobs;
  params.skip_special_tokens = false;  // the parsers read <think> and <minimax:tool_call>
  auto scripted = ctx.scripted_tokens();

  std::vector<Request> requests;
  for (int i = 0; i < n; ++i) {
    Request r;
    r.prompt = ids;
    r.params = params;
    if (params.seed) r.params.seed = *params.seed + uint64_t(i);
    if (scripted) r.forced_output = *scripted;
    requests.push_back(std::move(r));
  }
  const std::string id = ctx.new_id("chatcmpl-");
  const std::string model = ctx.model_names[0];
  const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  auto gen = start_generation(ctx, std::move(requests), id);
  auto states = std::make_shared<std::vector<ChoiceState>>();
  for (int i = 0; i < n; ++i) states->emplace_back(ChatOutputParser(reasoning, tools.tools, {}, tools.parse));
  // The prefix is output the model did not have to write: the parsers see it first.
  std::vector<ChatDelta> prefix_deltas(static_cast<size_t>(n));
  if (!prefix.empty())
    for (int i = 0; i < n; ++i) prefix_deltas[size_t(i)] = (*states)[size_t(i)].parser.push(prefix);
  const auto deadline = Clock::now() + ctx.limits.request_timeout;

  // One event → the choice's deltas (reasoning, content, tool calls) and logprob entries.
  auto absorb = [&ctx, states, parallel](const ChoiceEvent& e, ChatDelta* extra) {
    ChoiceState& st = (*states)[size_t(e.choice)];
    ChatDelta d = st.parser.push(e.text);
    if (e.finished) {
      ChatDelta f = st.parser.finish();
      d.reasoning += f.reasoning;
      d.content += f.content;
      d.tool_calls.insert(d.tool_calls.end(), f.tool_calls.begin(), f.tool_calls.end());
      st.finish = e.finish;
      st.stop_reason = e.stop_reason;
      st.error = e.error;
      st.margins = e.margins;
    }
    if (extra) {  // the prefix's deltas go out with the choice's first event
      extra->reasoning += d.reasoning;
      extra->content += d.content;
      extra->tool_calls.insert(extra->tool_calls.end(), d.tool_calls.begin(), d.tool_calls.end());
      d = std::move(*extra);
      *extra = ChatDelta{};
    }
    if (!parallel)
      d.tool_calls.erase(std::remove_if(d.tool_calls.begin(), d.tool_calls.end(), [](const ToolCallDelta& t) { return t.index > 0; }),
                         d.tool_calls.end());
    st.acc.add(d);
    st.generated = std::max(st.generated, e.generated);
    json lp = json::array();
    for (size_t k = 0; k < e.logprobs.size(); ++k) lp.push_back(chat_logprob_entry(ctx, e.tokens[k], e.logprobs[k]));
    for (const auto& x : lp) st.logprobs.push_back(x);
    return std::make_pair(std::move(d), std::move(lp));
  };
  auto finish_reason = [](const ChoiceState& st) -> std::string {
    if (st.finish == FinishReason::Stop && !st.acc.tool_calls.empty()) return "tool_calls";
    return std::string(finish_reason_name(st.finish));
  };
  auto usage = [states, gen_prompt = int64_t(ids.size())](int64_t cached) {
    int64_t completion = 0;
    for (const auto& st : *states) completion += st.generated;
    return usage_json(gen_prompt, completion, cached);
  };

  if (!stream) {
    int64_t cached = 0;
    bool timed_out = false;
    drive(*gen, nullptr, deadline,
          [&](const ChoiceEvent& e) {
            absorb(e, &prefix_deltas[size_t(e.choice)]);
            if (e.choice == 0) cached = e.cached_tokens;
            return true;
          },
          "", &timed_out);
    if (timed_out) throw ApiError(504, fmt::format("the request did not finish within {} s", ctx.limits.request_timeout.count() / 1000));
    json choices = json::array();
    for (int i = 0; i < n; ++i) {
      const ChoiceState& st = (*states)[size_t(i)];
      if (!st.error.empty()) throw ApiError(500, "generation failed: " + st.error);
      json msg = {{"role", "assistant"}, {"content", st.acc.content.empty() ? json() : json(st.acc.content)}};
      if (!st.acc.reasoning.empty()) msg["reasoning_content"] = st.acc.reasoning;
      if (!st.acc.tool_calls.empty()) {
        msg["tool_calls"] = json::array();
        for (const auto& c : st.acc.tool_calls)
          msg["tool_calls"].push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
      }
      choices.push_back({{"index", i},
                         {"message", msg},
                         {"logprobs", top_logprobs >= 0 ? json{{"content", st.logprobs}} : json()},
                         {"finish_reason", finish_reason(st)},
                         {"stop_reason", st.stop_reason.empty() ? json() : json(st.stop_reason)}});
      if (!st.margins.empty()) choices.back()["m2_decision_margins"] = st.margins;
    }
    json out = {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", model},
                {"choices", choices}, {"usage", usage(cached)}};
    res.set_content(out.dump(), "application/json");
    return;
  }

  auto chunk = [id, created, model](json choices) {
    return sse(json{{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
                    {"choices", std::move(choices)}}.dump());
  };
  res.set_chunked_content_provider(
      "text/event-stream",
      [gen, states, chunk, absorb, finish_reason, usage, n, include_usage, top_logprobs, deadline, prefix_deltas, id, created, model,
       timeout = ctx.limits.request_timeout](size_t, httplib::DataSink& sink) mutable {
        for (int i = 0; i < n; ++i) {
          json choice = {{"index", i}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
          choice["delta"] = {{"role", "assistant"}, {"content", ""}};
          if (!write(sink, chunk(json::array({choice})))) return false;
        }
        int64_t cached = 0;
        bool timed_out = false;
        const bool ok = drive(
            *gen, &sink, deadline,
            [&](const ChoiceEvent& e) {
              const auto absorbed = absorb(e, &prefix_deltas[size_t(e.choice)]);
              const json& lp = absorbed.second;
              if (e.choice == 0) cached = e.cached_tokens;
              const ChoiceState& st = (*states)[size_t(e.choice)];
              if (!st.error.empty()) return write(sink, sse(openai_error_body(500, "generation failed: " + st.error)));
              json delta = delta_json(absorbed.first);
              if (!delta.empty() || !lp.empty()) {
                json choice = {{"index", e.choice}, {"delta", delta}, {"finish_reason", nullptr}};
                choice["logprobs"] = top_logprobs >= 0 ? json{{"content", lp}} : json();
                if (!write(sink, chunk(json::array({choice})))) return false;
              }
              if (e.finished) {
                json choice = {{"index", e.choice}, {"delta", json::object()}, {"logprobs", nullptr},
                               {"finish_reason", finish_reason(st)}};
                choice["stop_reason"] = st.stop_reason.empty() ? json() : json(st.stop_reason);
                if (!st.margins.empty()) choice["m2_decision_margins"] = st.margins;
                return write(sink, chunk(json::array({choice})));
              }
              return true;
            },
            ": ping\n\n", &timed_out);
        if (!ok && !timed_out) return false;  // the client has gone: the generation is aborted
        if (timed_out)
          write(sink, sse(openai_error_body(504, fmt::format("the request did not finish within {} s", timeout.count() / 1000))));
        if (include_usage)
          write(sink, usage_chunk("chat.completion.chunk", id, created, model, usage(cached)));
        write(sink, "data: [DONE]\n\n");
        sink.done();
        return true;
      },
      [gen](bool success) {
        if (!success) gen->abort();
      });
}

}  // namespace m2
