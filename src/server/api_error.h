// Errors an HTTP API answers with: an HTTP status and an OpenAI-shaped JSON body
// ({"error": {"message", "type", "param", "code"}}), or Anthropic's shape for /v1/messages.
#pragma once
#include <string>

#include "core/error.h"

namespace m2 {

class ApiError : public Error {
 public:
  ApiError(int status, const std::string& message, std::string param = {})
      : Error(message), status_(status), param_(std::move(param)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  // OpenAI's error type for the status: invalid_request_error, authentication_error, ...
  std::string type() const;

 private:
  int status_;
  std::string param_;
};

template <typename... Args>
[[noreturn]] void bad_request(fmt::format_string<Args...> f, Args&&... args) {
  throw ApiError(400, fmt::format(f, std::forward<Args>(args)...));
}

std::string openai_error_body(int status, const std::string& message, const std::string& param = {});
std::string anthropic_error_body(int status, const std::string& message);

}  // namespace m2
