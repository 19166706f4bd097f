#include "bench/http_client.h"

#include <curl/curl.h>

#include <mutex>

#include "core/error.h"

namespace m2 {

namespace {

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Easy {
  CURL* h;
  curl_slist* headers = nullptr;
  Easy() : h(curl_easy_init()) {
    if (!h) fail<IoError>("libcurl: cannot create a handle");
  }
  ~Easy() {
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
  }
};

struct StreamState {
  const std::function<bool(std::string_view)>* on_data;
  std::string* error_body;
  long status = 0;
  CURL* h;
  bool stopped = false;
};

size_t collect(char* p, size_t size, size_t n, void* ud) {
  static_cast<std::string*>(ud)->append(p, size * n);
  return size * n;
}

size_t stream_cb(char* p, size_t size, size_t n, void* ud) {
  auto* s = static_cast<StreamState*>(ud);
  if (s->status == 0) curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &s->status);
  if (s->status != 200) {
    s->error_body->append(p, size * n);
    return size * n;
  }
  if (!(*s->on_data)(std::string_view(p, size * n))) {
    s->stopped = true;
    return 0;  // aborts the transfer
  }
  return size * n;
}

void setup(Easy& e, const std::string& url, const std::string& body, const HttpOptions& o) {
  curl_easy_setopt(e.h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(e.h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e.h, CURLOPT_CONNECTTIMEOUT_MS, long(o.connect_timeout.count()));
  curl_easy_setopt(e.h, CURLOPT_TIMEOUT_MS, long(o.timeout.count()));
  curl_easy_setopt(e.h, CURLOPT_TCP_NODELAY, 1L);
  e.headers = curl_slist_append(e.headers, "Content-Type: application/json");
  if (!o.api_key.empty()) e.headers = curl_slist_append(e.headers, ("Authorization: Bearer " + o.api_key).c_str());
  curl_easy_setopt(e.h, CURLOPT_HTTPHEADER, e.headers);
  if (!body.empty()) {
    curl_easy_setopt(e.h, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(e.h, CURLOPT_POSTFIELDSIZE, long(body.size()));
  }
}

[[noreturn]] void transport_error(const std::string& url, CURLcode rc) {
  fail<IoError>("{}: {}", url,
                rc == CURLE_COULDNT_CONNECT         ? "connection refused (is the server running?)"
                : rc == CURLE_OPERATION_TIMEDOUT    ? "timed out"
                : rc == CURLE_COULDNT_RESOLVE_HOST  ? "cannot resolve the host"
                : rc == CURLE_URL_MALFORMAT         ? "not a valid URL"
                : rc == CURLE_UNSUPPORTED_PROTOCOL  ? "unsupported protocol (use http:// or https://)"
                                                    : curl_easy_strerror(rc));
}

}  // namespace

HttpResult http_request(const std::string& url, const std::string& body, const HttpOptions& o) {
  global_init();
  Easy e;
  setup(e, url, body, o);
  HttpResult r;
  curl_easy_setopt(e.h, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(e.h, CURLOPT_WRITEDATA, &r.body);
  const CURLcode rc = curl_easy_perform(e.h);
  if (rc != CURLE_OK) transport_error(url, rc);
  curl_easy_getinfo(e.h, CURLINFO_RESPONSE_CODE, &r.status);
  return r;
}

long http_stream(const std::string& url, const std::string& body, const HttpOptions& o,
                 const std::function<bool(std::string_view)>& on_data, std::string* error_body) {
  global_init();
  Easy e;
  setup(e, url, body, o);
  std::string err;
  StreamState s{&on_data, error_body ? error_body : &err, 0, e.h};
  curl_easy_setopt(e.h, CURLOPT_WRITEFUNCTION, stream_cb);
  curl_easy_setopt(e.h, CURLOPT_WRITEDATA, &s);
  const CURLcode rc = curl_easy_perform(e.h);
  if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && s.stopped)) transport_error(url, rc);
  if (s.status == 0) curl_easy_getinfo(e.h, CURLINFO_RESPONSE_CODE, &s.status);
  return s.status;
}

bool SseReader::feed(std::string_view bytes, const std::function<bool(std::string_view)>& on_data) {
  buf_.append(bytes);
  size_t start = 0;
  for (;;) {
    const size_t nl = buf_.find('\n', start);
    if (nl == std::string::npos) break;
    std::string_view line(buf_.data() + start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    start = nl + 1;
    if (line.substr(0, 5) == "data:") {
      std::string_view payload = line.substr(5);
      if (!payload.empty() && payload.front() == ' ') payload.remove_prefix(1);
      if (!on_data(payload)) {
        buf_.erase(0, start);
        return false;
      }
    }
  }
  buf_.erase(0, start);
  return true;
}

}  // namespace m2
