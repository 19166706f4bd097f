// The OpenAI Responses API on m2 serve.
#pragma once
#include "server/api_context.h"

namespace m2 {

void handle_responses(ApiContext& ctx, const httplib::Request& req, httplib::Response& res);  // POST /v1/responses

}  // namespace m2
