// m2 serve MODEL_DIR: the OpenAI-compatible server (vLLM's flag names). SIGTERM / SIGINT stop it
// gracefully: no new requests, in-flight ones get --shutdown-grace seconds, exit 0.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "cli/commands.h"
#include "cli/parallel_flags.h"
#include "core/error.h"
#include "core/units.h"
#include "server/server.h"

namespace m2::cli {

namespace {

int g_signal_pipe[2] = {-1, -1};

void forward_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] auto n = write(g_signal_pipe[1], &b, 1);
  errno = saved;
}

struct ServeFlags {
  ServeOptions o;
  ParallelFlags parallel;
  std::string kv_cache_memory, max_body;
  bool no_prefix_caching = false, quiet = false;
};

int serve_until_stopped(ServeFlags& f);

// A distributed job: rank 0 serves (one HTTP front end), the other ranks run its steps.
int serve(ServeFlags& f) {
  std::unique_ptr<DistributedRun> dist = start_distributed(f.parallel, f.o.model_dir);
  if (!dist) return serve_until_stopped(f);
  return dist->run([&] {
    if (!dist->root()) {
      const ModelWeights weights = ModelWeights::load(f.o.model_dir);
      CpuBackend backend(f.o.threads, LinearPath::Auto, parse_activations(f.o.activations));
      return dist->follow(weights, backend);
    }
    f.o.configure_engine = [&](EngineOptions& eo) { dist->configure_root(eo); };
    f.o.engine_ready = [&](const Engine& e) { dist->attach(e); };
    const int code = serve_until_stopped(f);
    dist->finish();
    return code;
  });
}

int serve_until_stopped(ServeFlags& f) {
  if (!f.kv_cache_memory.empty()) f.o.kv_cache_memory = parse_size(f.kv_cache_memory, "--kv-cache-memory");
  if (!f.max_body.empty()) f.o.max_body_bytes = parse_size(f.max_body, "--max-body-size");
  if (f.no_prefix_caching) f.o.enable_prefix_caching = false;
  if (f.quiet) f.o.log_requests = false;
  // SIGTERM / SIGINT may land on any thread, including ones a library started before main (the
  // BLAS thread pool), so a handler (not a blocked mask and sigwait) forwards the signal number
  // through a pipe to one thread that stops the server.
  if (pipe(g_signal_pipe) != 0) fail<IoError>("m2 serve: cannot create the signal pipe: {}", std::strerror(errno));
  struct sigaction sa {};
  sa.sa_handler = forward_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that hangs up is an error on its socket, not a signal
  Server server(f.o);
  std::thread waiter([&] {
    unsigned char sig = 0;
    while (read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    if (sig == SIGTERM || sig == SIGINT) {
      fmt::print(stderr, "m2 serve: {} received\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      server.stop();
    }
  });
  const int code = server.run();
  server.stop();
  const unsigned char release = 0;  // wakes the waiter when the server ended by itself
  [[maybe_unused]] auto n = write(g_signal_pipe[1], &release, 1);
  waiter.join();
  return code;
}

}  // namespace

Runner add_serve(CLI::App& app) {
  auto f = std::make_shared<ServeFlags>();
  ServeOptions& o = f->o;
  app.add_option("model_dir", o.model_dir, "Checkpoint directory")->required();
  app.add_option("--host", o.host, "Address to listen on")->capture_default_str();
  app.add_option("--port", o.port, "Port (0: any free port, printed at start)")->capture_default_str();
  app.add_option("--served-model-name", o.served_model_names, "Name(s) clients use for the model (default: the directory name)");
  app.add_option("--max-model-len", o.max_model_len, "Longest prompt + output (0: what the model and the KV cache allow)");
  app.add_option("--max-num-seqs", o.max_num_seqs, "Sequences per step")->capture_default_str();
  app.add_option("--max-num-batched-tokens", o.max_num_batched_tokens, "Tokens per step (longer prompts are chunked)")
      ->capture_default_str();
  app.add_option("--kv-cache-dtype", o.kv_cache_dtype, "auto (fp32 on the CPU) | fp32 | bf16 | fp8")->capture_default_str();
  app.add_option("--kv-cache-memory", f->kv_cache_memory, "KV-cache budget, e.g. 8GiB (default: max_num_seqs × max_model_len, at most 4 GiB)");
  app.add_option("--block-size", o.kv_block_size, "Tokens per KV block")->capture_default_str();
  app.add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", o.enable_prefix_caching,
               "Reuse the KV blocks of shared prompt prefixes (on by default)");
  app.add_option("--api-key", o.api_key, "Require 'Authorization: Bearer KEY' (or x-api-key) on /v1 routes");
  app.add_flag("--enable-auto-tool-choice", o.enable_auto_tool_choice, "Parse tool calls when tool_choice is auto");
  app.add_option("--tool-call-parser", o.tool_call_parser, "minimax_m2");
  app.add_option("--reasoning-parser", o.reasoning_parser, "auto | minimax_m2 | minimax_m2_append_think | none")
      ->capture_default_str();
  app.add_option("--chat-template", o.chat_template, "A Jinja chat template file overriding the model's");
  app.add_option("--generation-config", o.generation_config,
                 "auto (the model's generation_config.json) | vllm (neutral defaults) | a directory")
      ->capture_default_str();
  app.add_option("--speculative-ngram", o.speculative_ngram, "Draft up to K tokens by n-gram lookup (0 = off)")
      ->capture_default_str();
  app.add_option("--threads,-t", o.threads, "Compute threads (0 = all cores)")->capture_default_str();
  app.add_option("--activations", o.activations,
                 "q8 (int8 activations in FP4 products, as llama.cpp) | q8-bf16 (q8, and bf16 activations in "
                 "BF16 / FP8 products on CPUs with AVX512_BF16, BF16 products with AArch64 BF16) | f32 (exact fp32)")->capture_default_str();
  app.add_option("--max-body-size", f->max_body, "Largest request body (default 32MiB)");
  app.add_option("--max-connections", o.max_connections, "Requests in flight at once; beyond, 503")->capture_default_str();
  app.add_option("--request-timeout", o.request_timeout_s, "Seconds before a request is cancelled")->capture_default_str();
  app.add_option("--shutdown-grace", o.shutdown_grace_s, "Seconds in-flight requests get on SIGTERM")->capture_default_str();
  app.add_option("--scripted-output", o.scripted_output,
                 "TESTS ONLY: a JSONL file of strings forced as the outputs of successive requests");
  app.add_flag("--debug-decision-margins", o.debug_decision_margins,
               "TESTS: each choice reports m2_decision_margins, how far each token's choice was from flipping");
  app.add_flag("--disable-log-requests", f->quiet, "No log line per request");
  add_parallel_flags(app, f->parallel);
  return [f] { return serve(*f); };
}

}  // namespace m2::cli
