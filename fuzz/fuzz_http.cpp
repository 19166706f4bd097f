// The HTTP request → engine request path: a real `m2 serve` (the demo model, max_model_len 64) runs
// in this process on a loopback port; each input is POSTed as the body of one endpoint (the first
// byte picks which) through cpp-httplib's client. Every answer must be a 2xx or a 4xx with a JSON
// error body: a 5xx or a dropped connection is a finding, as is anything the sanitizers report in
// the server's threads.
#include <httplib.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "fuzz_util.h"
#include "server/server.h"

namespace {

struct Running {
  std::unique_ptr<m2::Server> server;
  std::thread thread;
  int port = 0;
  Running() {
    m2::ServeOptions o;
    o.model_dir = m2::fuzz::demo_dir();
    o.port = 0;
    o.served_model_names = {"demo"};
    o.max_model_len = 64;
    o.max_num_seqs = 4;
    o.threads = 1;
    o.log_requests = false;
    o.enable_auto_tool_choice = true;
    o.tool_call_parser = "minimax_m2";
    o.request_timeout_s = 30;
    server = std::make_unique<m2::Server>(o);
    thread = std::thread([this] { server->run(); });
    while ((port = server->port()) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Running* r = new Running();  // lives for the process: libFuzzer exits without unwinding
  if (size < 1) return 0;
  static const char* kPaths[] = {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/messages/count_tokens",
                                 "/v1/responses", "/tokenize", "/detokenize"};
  const char* path = kPaths[data[0] % 7];
  httplib::Client c("127.0.0.1", r->port);
  c.set_read_timeout(60, 0);
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  auto res = c.Post(path, body, "application/json");
  if (!res) m2::fuzz::finding("no HTTP answer (connection dropped)");
  if (res->status >= 500) {
    std::fprintf(stderr, "%s → %d %s\n", path, res->status, res->body.c_str());
    m2::fuzz::finding("5xx answer");
  }
  if (res->status >= 400) {
    if (!nlohmann::json::accept(res->body)) m2::fuzz::finding("an error body that is not JSON");
  }
  return 0;
}
