#include "server/api_error.h"

#include <nlohmann/json.hpp>

namespace m2 {

namespace {

std::string openai_type(int status) {
  switch (status) {
    case 400: case 413: case 422: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 408: case 504: return "timeout_error";
    case 429: case 503: return "overloaded_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

}  // namespace

std::string ApiError::type() const { return openai_type(status_); }

std::string openai_error_body(int status, const std::string& message, const std::string& param) {
  nlohmann::json e = {{"message", printable(message)},
                      {"type", openai_type(status)},
                      {"param", param.empty() ? nlohmann::json() : nlohmann::json(param)},
                      {"code", status}};
  return nlohmann::json{{"error", e}}.dump();
}

std::string anthropic_error_body(int status, const std::string& message) {
  std::string type = status == 401   ? "authentication_error"
                     : status == 403 ? "permission_error"
                     : status == 404 ? "not_found_error"
                     : status == 413 ? "request_too_large"
                     : status == 429 ? "rate_limit_error"
                     : status == 529 || status == 503 ? "overloaded_error"
                     : status >= 500 ? "api_error"
                                     : "invalid_request_error";
  return nlohmann::json{{"type", "error"}, {"error", {{"type", type}, {"message", printable(message)}}}}.dump();
}

}  // namespace m2
