#include "server/server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_features.h"
#include "server/anthropic_api.h"
#include "server/openai_api.h"
#include "server/responses_api.h"
#include "text/detokenizer.h"

namespace m2 {

namespace {

using Clock = std::chrono::steady_clock;

std::string human(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return fmt::format("{:.1f} {}", b, units[u]);
}

}  // namespace

struct Server::Impl {
  ServeOptions opt;
  ModelWeights weights;
  Tokenizer tokenizer;
  std::unique_ptr<ChatFormat> chat;
  GenerationConfig gen;
  CpuBackend backend;
  Metrics metrics;  // declared before the engine: the engine's sinks use it until the engine stops
  std::unique_ptr<ScriptedOutputs> scripted;
  std::unique_ptr<AsyncEngine> engine;
  std::atomic<uint64_t> counter{0};
  std::unique_ptr<ApiContext> ctx;
  httplib::Server http;
  std::atomic<int> active{0};
  std::atomic<bool> draining{false};
  std::once_flag stopping;

  explicit Impl(const ServeOptions& o)
      : opt(o), weights(ModelWeights::load(o.model_dir)), tokenizer(Tokenizer::load(o.model_dir)),
        backend(o.threads, LinearPath::Auto, parse_activations(o.activations)),
        metrics(o.served_model_names.empty() ? std::filesystem::path(o.model_dir).filename().string()
                                             : o.served_model_names[0]) {}
};

Server::Server(const ServeOptions& o) : impl_(std::make_unique<Impl>(o)) {
  Impl& m = *impl_;
  ServeOptions& opt = m.opt;
  if (opt.served_model_names.empty()) {
    std::string name = std::filesystem::path(opt.model_dir).lexically_normal().filename().string();
    if (name.empty()) name = std::filesystem::path(opt.model_dir).lexically_normal().parent_path().filename().string();
    opt.served_model_names = {name};
  }
  if (!opt.tool_call_parser.empty() && opt.tool_call_parser != "minimax_m2")
    fail<InvalidArgument>("--tool-call-parser '{}' is unknown: m2 has minimax_m2", opt.tool_call_parser);
  if (opt.enable_auto_tool_choice && opt.tool_call_parser.empty())
    fail<InvalidArgument>("--enable-auto-tool-choice needs --tool-call-parser minimax_m2");
  const std::vector<std::string> parsers = {"auto", "minimax_m2", "minimax_m2_append_think", "none"};
  if (std::find(parsers.begin(), parsers.end(), opt.reasoning_parser) == parsers.end())
    fail<InvalidArgument>("--reasoning-parser '{}' is unknown: expected auto, minimax_m2, minimax_m2_append_think or none",
                          opt.reasoning_parser);
  if (opt.port < 0 || opt.port > 65535) fail<InvalidArgument>("--port {} is not a TCP port", opt.port);
  if (opt.max_connections < 1 || opt.max_connections > 100000)
    fail<InvalidArgument>("--max-connections {} (expected 1 .. 100000)", opt.max_connections);
  if (opt.request_timeout_s < 1) fail<InvalidArgument>("--request-timeout {} (expected ≥ 1 second)", opt.request_timeout_s);
  for (const auto& n : m.weights.notices) fmt::print(stderr, "notice: {}\n", n);

  try {
    m.chat = std::make_unique<ChatFormat>(opt.chat_template.empty() ? ChatFormat::load(opt.model_dir)
                                                                    : ChatFormat::load(opt.model_dir, opt.chat_template));
  } catch (const ModelError& e) {
    fmt::print(stderr, "notice: {} (/v1/chat/completions is off; /v1/completions works)\n", e.what());
  }
  if (opt.generation_config == "auto") m.gen = GenerationConfig::load(opt.model_dir, m.weights.config);
  else if (opt.generation_config == "vllm") m.gen = GenerationConfig::load("/nonexistent", m.weights.config);
  else m.gen = GenerationConfig::load(opt.generation_config, m.weights.config);
  if (!opt.scripted_output.empty()) {
    m.scripted = std::make_unique<ScriptedOutputs>(opt.scripted_output);
    fmt::print(stderr,
               "WARNING: SCRIPTED MODE (--scripted-output {}): every request's output is forced from the script ({} "
               "outputs), not sampled from the model. For tests only.\n",
               opt.scripted_output, m.scripted->remaining());
  }

  EngineOptions eo;
  eo.max_num_seqs = opt.max_num_seqs;
  eo.max_num_batched_tokens = opt.max_num_batched_tokens;
  eo.max_model_len = opt.max_model_len;
  eo.kv.dtype = parse_kv_cache_dtype(opt.kv_cache_dtype, m.backend.device());
  eo.kv.block_size = opt.kv_block_size;
  eo.kv.memory_bytes = opt.kv_cache_memory;
  eo.kv.enable_prefix_caching = opt.enable_prefix_caching;
  eo.ngram.k = opt.speculative_ngram;
  eo.eos_token_ids = m.gen.eos_token_ids;
  eo.text_decoder = text_decoder_factory(m.tokenizer);
  eo.sample_vocab = m.tokenizer.vocab_size();
  eo.checkpoint = opt.model_dir;
  eo.record_decision_margins = opt.debug_decision_margins;
  if (opt.configure_engine) opt.configure_engine(eo);
  auto engine = std::make_unique<Engine>(m.weights, m.backend, eo);
  if (opt.engine_ready) opt.engine_ready(*engine);
  for (const auto& n : engine->notices()) fmt::print(stderr, "{}\n", n);
  const int64_t max_model_len = engine->max_model_len();
  const auto& kv = engine->kv_cache();

  // Startup summary: the model, its formats, the KV budget, the threads.
  const ModelConfig& c = m.weights.config;
  fmt::print(stderr, "m2 serve: model {} as '{}' ({} layers, hidden {}, {} experts top-{}, vocab {}), {}\n", opt.model_dir,
             opt.served_model_names[0], c.num_layers, c.hidden_size, c.num_experts, c.experts_per_token, c.vocab_size,
             m.weights.scheme.description());
  for (const auto& g : summarize_groups(m.weights))
    fmt::print(stderr, "  {:<16} {:<30} {}\n", g.name, g.formats_text(), human(double(g.bytes)));
  fmt::print(stderr,
             "  KV cache: {} blocks of {} tokens = {} tokens ({}, {}), prefix caching {}; max_model_len {}, max_num_seqs "
             "{}, max_num_batched_tokens {}{}\n",
             kv.blocks().num_blocks(), kv.view().block_size, kv.capacity_tokens(), kv_cache_dtype_name(kv.view().dtype),
             human(double(kv.bytes())), opt.enable_prefix_caching ? "on" : "off", max_model_len, opt.max_num_seqs,
             opt.max_num_batched_tokens,
             opt.speculative_ngram ? fmt::format(", n-gram speculation k = {}", opt.speculative_ngram) : "");
  fmt::print(stderr, "  threads: {} ({}, {} activations); reasoning parser {}; tool-call parser {}; chat template {}\n",
             m.backend.pool().size(), cpu_features().describe(), activations_name(m.backend.activations()), opt.reasoning_parser, opt.tool_call_parser.empty() ? "off" : opt.tool_call_parser,
             m.chat ? (opt.chat_template.empty() ? "the model's" : opt.chat_template) : "none");
  m.engine = std::make_unique<AsyncEngine>(std::move(engine));

  m.ctx = std::unique_ptr<ApiContext>(new ApiContext{*m.engine, m.metrics, m.tokenizer, m.chat.get(), opt.served_model_names,
                                                     m.gen.defaults, {}, opt.reasoning_parser, opt.enable_auto_tool_choice,
                                                     m.scripted.get(), opt.log_requests, &m.counter});
  m.ctx->limits.max_model_len = max_model_len;
  m.ctx->limits.max_n = opt.max_n;
  m.ctx->limits.request_timeout = std::chrono::seconds(opt.request_timeout_s);

  httplib::Server& http = m.http;
  http.new_task_queue = [n = opt.max_connections + 8] { return new httplib::ThreadPool(size_t(n)); };
  http.set_payload_max_length(opt.max_body_bytes);
  http.set_read_timeout(60, 0);
  http.set_write_timeout(30, 0);
  http.set_keep_alive_timeout(5);  // also how long a stop waits for idle keep-alive connections
  // Errors the library raises itself (unknown route, body over the limit) get a JSON body too.
  http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string msg = res.status == 404   ? fmt::format("no route for {} {}", req.method, req.path)
                      : res.status == 413 ? fmt::format("the request body is larger than the limit of {} bytes",
                                                        impl_->opt.max_body_bytes)
                                          : fmt::format("HTTP error {}", res.status);
    impl_->metrics.http_error(res.status);
    res.set_content(req.path.rfind("/v1/messages", 0) == 0 ? anthropic_error_body(res.status, msg)
                                                             : openai_error_body(res.status, msg),
                    "application/json");
  });
  http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string msg = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      msg = e.what();
    } catch (...) {
    }
    res.status = 500;
    impl_->metrics.http_error(500);
    res.set_content(openai_error_body(500, msg), "application/json");
  });

  // Every API route: the key, the connection limit, and errors turned into their status and body.
  // Anthropic routes answer errors in Anthropic's shape.
  auto api = [this](void (*handler)(ApiContext&, const httplib::Request&, httplib::Response&), bool auth,
                    bool anthropic = false) {
    return [this, handler, auth, anthropic](const httplib::Request& req, httplib::Response& res) {
      auto body = [anthropic](int status, const std::string& msg, const std::string& param) {
        return anthropic ? anthropic_error_body(status, msg) : openai_error_body(status, msg, param);
      };
      Impl& m = *impl_;
      struct Count {
        std::atomic<int>& n;
        ~Count() { --n; }
      } count{m.active};
      const int active = ++m.active;
      try {
        if (m.draining) throw ApiError(503, "the server is shutting down");
        if (auth && !m.opt.api_key.empty()) {
          const std::string bearer = req.get_header_value("Authorization");
          const std::string key = req.get_header_value("x-api-key");
          if (bearer != "Bearer " + m.opt.api_key && key != m.opt.api_key)
            throw ApiError(401, "invalid or missing API key (send 'Authorization: Bearer <key>' or 'x-api-key: <key>')");
        }
        if (active > m.opt.max_connections)
          throw ApiError(503, fmt::format("the server is busy: {} requests in flight (--max-connections {})", active - 1,
                                          m.opt.max_connections));
        handler(*m.ctx, req, res);
      } catch (const ApiError& e) {
        m.metrics.http_error(e.status());
        res.status = e.status();
        res.set_content(body(e.status(), e.what(), e.param()), "application/json");
      } catch (const InvalidArgument& e) {
        m.metrics.http_error(400);
        res.status = 400;
        res.set_content(body(400, e.what(), ""), "application/json");
      }
    };
  };
  http.Post("/v1/chat/completions", api(handle_chat, true));
  http.Post("/v1/completions", api(handle_completions, true));
  http.Post("/v1/messages", api(handle_messages, true, true));
  http.Post("/v1/messages/count_tokens", api(handle_count_tokens, true, true));
  http.Post("/v1/responses", api(handle_responses, true));
  http.Post("/tokenize", api(handle_tokenize, true));
  http.Post("/detokenize", api(handle_detokenize, true));
  http.Get("/v1/models", api([](ApiContext& ctx, const httplib::Request&, httplib::Response& res) {
             res.set_content(models_json(ctx).dump(), "application/json");
           }, true));
  http.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.status = 200; });
  http.Get("/version", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"version": "0.1.0"})", "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(impl_->metrics.render(impl_->engine->stats()), "text/plain; version=0.0.4");
  });
}

Server::~Server() = default;

int Server::run() {
  Impl& m = *impl_;
  int port = m.opt.port;
  if (port == 0) {
    port = m.http.bind_to_any_port(m.opt.host);
  } else if (!m.http.bind_to_port(m.opt.host, port)) {
    port = -1;
  }
  if (port < 0) {
    fmt::print(stderr, "error: cannot listen on {}:{}\n", m.opt.host, m.opt.port);
    return 1;
  }
  bound_port_ = port;
  fmt::print("m2 serve: listening on http://{}:{}\n", m.opt.host, port);
  std::fflush(stdout);
  m.http.listen_after_bind();
  fmt::print(stderr, "m2 serve: stopped\n");
  return 0;
}

void Server::stop() {
  Impl& m = *impl_;
  std::call_once(m.stopping, [&] {
    m.draining = true;
    fmt::print(stderr, "m2 serve: shutting down, waiting up to {} s for requests in flight\n", m.opt.shutdown_grace_s);
    if (!m.engine->wait_idle(std::chrono::seconds(m.opt.shutdown_grace_s))) {
      fmt::print(stderr, "m2 serve: grace period over; cancelling what is still running\n");
      m.engine->abort_all();
      m.engine->wait_idle(std::chrono::seconds(5));
    }
    m.http.stop();
  });
}

}  // namespace m2
