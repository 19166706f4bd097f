// The OpenAI-compatible endpoints and the JSON pieces they share.
#pragma once
#include "server/api_context.h"

namespace m2 {

void handle_chat(ApiContext& ctx, const httplib::Request& req, httplib::Response& res);         // /v1/chat/completions
void handle_completions(ApiContext& ctx, const httplib::Request& req, httplib::Response& res);  // /v1/completions
void handle_tokenize(ApiContext& ctx, const httplib::Request& req, httplib::Response& res);     // /tokenize
void handle_detokenize(ApiContext& ctx, const httplib::Request& req, httplib::Response& res);   // /detokenize
json models_json(const ApiContext& ctx);                                                         // /v1/models

// {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details": {"cached_tokens"}}
json usage_json(int64_t prompt, int64_t completion, int64_t cached);
// A chat delta as OpenAI streams it: reasoning_content, content, tool_calls (id, type, name first).
json delta_json(const ChatDelta& d);
// {"token", "logprob", "bytes", "top_logprobs": [...]} for one generated token.
json chat_logprob_entry(const ApiContext& ctx, int32_t token, const TokenLogprobs& lp);
// The last chunk of a stream that asked for usage: no choices, the usage.
std::string usage_chunk(const std::string& object, const std::string& id, int64_t created, const std::string& model,
                        const json& usage);

}  // namespace m2
