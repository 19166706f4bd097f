// Shared pieces of the OpenAI API: usage, deltas, logprob entries, models, tokenize/detokenize.
#include <fmt/format.h>

#include "server/chat_core.h"
#include "server/openai_api.h"

namespace m2 {

json usage_json(int64_t prompt, int64_t completion, int64_t cached) {
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

json delta_json(const ChatDelta& d) {
  json delta = json::object();
  if (!d.reasoning.empty()) delta["reasoning_content"] = d.reasoning;
  if (!d.content.empty()) delta["content"] = d.content;
  if (!d.tool_calls.empty()) {
    json calls = json::array();
    for (const auto& c : d.tool_calls) {
      json call = {{"index", c.index}};
      json fn = {{"arguments", c.arguments}};
      if (!c.id.empty()) {
        call["id"] = c.id;
        call["type"] = "function";
        fn["name"] = c.name;
      }
      call["function"] = fn;
      calls.push_back(call);
    }
    delta["tool_calls"] = calls;
  }
  return delta;
}

namespace {
json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}
}  // namespace

json chat_logprob_entry(const ApiContext& ctx, int32_t token, const TokenLogprobs& lp) {
  const std::string text = ctx.token_text(token);
  json top = json::array();
  for (const auto& t : lp.top) {
    const std::string tt = ctx.token_text(t.token);
    top.push_back({{"token", tt}, {"logprob", t.logprob}, {"bytes", bytes_of(tt)}});
  }
  return {{"token", text}, {"logprob", lp.logprob}, {"bytes", bytes_of(text)}, {"top_logprobs", top}};
}

std::string usage_chunk(const std::string& object, const std::string& id, int64_t created, const std::string& model,
                        const json& usage) {
  return sse(json{{"id", id}, {"object", object}, {"created", created}, {"model", model}, {"choices", json::array()},
                  {"usage", usage}}.dump());
}

json models_json(const ApiContext& ctx) {
  json data = json::array();
  for (const auto& name : ctx.model_names)
    data.push_back({{"id", name}, {"object", "model"}, {"created", 0}, {"owned_by", "m2"},
                    {"root", ctx.model_names[0]}, {"max_model_len", ctx.limits.max_model_len}});
  return {{"object", "list"}, {"data", data}};
}

void handle_tokenize(ApiContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const json b = parse_body(req.body);
  ctx.check_model(b);
  std::vector<int32_t> ids;
  if (const json* messages = field_ptr(b, "messages")) {
    if (!ctx.chat) throw ApiError(400, "this model has no chat template");
    const json msgs = template_messages(*messages);
    json tools = field_ptr(b, "tools") ? b["tools"] : json::array();
    std::string prompt;
    try {
      prompt = ctx.chat->render(nlohmann::ordered_json(msgs), nlohmann::ordered_json(tools),
                                bool_field(b, "add_generation_prompt").value_or(true));
    } catch (const Error& e) {
      throw ApiError(400, fmt::format("the chat template failed on these messages: {}", e.what()));
    }
    ids = ctx.tokenizer.encode(prompt, bool_field(b, "add_special_tokens").value_or(false));
  } else {
    auto prompt = string_field(b, "prompt");
    if (!prompt) throw ApiError(400, "'prompt' (a string) or 'messages' is required", "prompt");
    try {
      ids = ctx.tokenizer.encode(*prompt, bool_field(b, "add_special_tokens").value_or(true));
    } catch (const Error& e) {
      throw ApiError(400, e.what(), "prompt");
    }
  }
  json out = {{"count", ids.size()}, {"max_model_len", ctx.limits.max_model_len}, {"tokens", ids}};
  if (bool_field(b, "return_token_strs").value_or(false)) {
    json strs = json::array();
    for (int32_t id : ids) strs.push_back(ctx.tokenizer.id_to_token(id));
    out["token_strs"] = strs;
  }
  res.set_content(out.dump(), "application/json");
}

void handle_detokenize(ApiContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const json b = parse_body(req.body);
  ctx.check_model(b);
  const json* tokens = field_ptr(b, "tokens");
  if (!tokens || !tokens->is_array()) throw ApiError(400, "'tokens' must be a list of token ids", "tokens");
  std::vector<int32_t> ids;
  const int64_t V = ctx.engine.engine().config().vocab_size;
  for (const auto& t : *tokens) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= V)
      throw ApiError(400, fmt::format("'tokens' must hold token ids in [0, {}), found {}", V, t.dump()), "tokens");
    ids.push_back(t.get<int32_t>());
  }
  res.set_content(json{{"prompt", ctx.tokenizer.decode(ids, false)}}.dump(), "application/json");
}

}  // namespace m2
