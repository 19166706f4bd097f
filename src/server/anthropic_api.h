// The Anthropic Messages API on m2 serve.
#pragma once
#include "server/api_context.h"

namespace m2 {

void handle_messages(ApiContext& ctx, const httplib::Request& req, httplib::Response& res);      // POST /v1/messages
void handle_count_tokens(ApiContext& ctx, const httplib::Request& req, httplib::Response& res);  // POST /v1/messages/count_tokens

}  // namespace m2
