// A small HTTP client over libcurl for the serving benchmark: JSON requests, and streaming requests
// whose body is handed over as it arrives (SSE), each with connect and total timeouts. Failures are
// IoErrors naming the URL and what went wrong (refused, timed out, HTTP status and body).
#pragma once
#include <chrono>
#include <functional>
#include <map>
#include <string>

namespace m2 {

struct HttpResult {
  long status = 0;
  std::string body;
};

struct HttpOptions {
  std::string api_key;                                  // sent as Authorization: Bearer
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds timeout{600000};           // whole request
};

// GET or POST (when body is not empty); returns status and body (any status).
HttpResult http_request(const std::string& url, const std::string& body, const HttpOptions& o);
// POST with a streamed response: on_data receives the body in pieces as they arrive and returns
// false to stop early. Returns the status (the body of an error status is collected in `error_body`).
long http_stream(const std::string& url, const std::string& body, const HttpOptions& o,
                 const std::function<bool(std::string_view)>& on_data, std::string* error_body);

// Splits an SSE byte stream into events' data payloads ("data: ..." lines), whatever the chunking.
class SseReader {
 public:
  // Feeds bytes; calls on_data(payload) for each complete data line; false from it stops.
  bool feed(std::string_view bytes, const std::function<bool(std::string_view)>& on_data);

 private:
  std::string buf_;
};

}  // namespace m2
