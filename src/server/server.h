// m2 serve: the OpenAI-compatible HTTP server (cpp-httplib) on one engine. HTTP threads parse,
// render, tokenize, queue and stream; the engine thread owns the model.
#pragma once
#include <functional>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace m2 {

struct ServeOptions {
  std::string model_dir;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::vector<std::string> served_model_names;  // default: the model directory's name
  // Engine (vLLM's flag names).
  int64_t max_model_len = 0;
  int64_t max_num_seqs = 64;
  int64_t max_num_batched_tokens = 512;
  std::string kv_cache_dtype = "auto";
  size_t kv_cache_memory = 0;  // bytes; 0: room for max_num_seqs × max_model_len, at most 4 GiB
  int kv_block_size = 16;
  bool enable_prefix_caching = true;
  int speculative_ngram = 0;
  int threads = 0;
  std::string activations = "q8";  // q8 (int8 activations in FP4 products, as llama.cpp) | q8-bf16 | f32 (exact)
  // API.
  std::string api_key;
  bool enable_auto_tool_choice = false;
  std::string tool_call_parser;            // minimax_m2 (the only one)
  std::string reasoning_parser = "auto";   // auto | minimax_m2 | minimax_m2_append_think | none
  std::string chat_template;               // a file overriding the model's template
  std::string generation_config = "auto";  // auto (the model's) | vllm (neutral defaults) | a directory
  // Limits.
  size_t max_body_bytes = size_t(32) << 20;
  int max_connections = 256;               // HTTP worker threads; requests beyond are refused with 503
  int request_timeout_s = 600;
  int max_n = 16;
  int shutdown_grace_s = 30;               // SIGTERM: in-flight requests get this long to finish
  // Tests.
  std::string scripted_output;
  bool debug_decision_margins = false;     // each choice reports m2_decision_margins (reproducibility checks)
  bool log_requests = true;
  // Distributed jobs (m2 serve under mpirun): called with the engine options before the engine is
  // built (rank 0 sends them to the other ranks and adds its shard) and with the engine once built.
  std::function<void(EngineOptions&)> configure_engine;
  std::function<void(const Engine&)> engine_ready;
};

class Server {
 public:
  explicit Server(const ServeOptions& options);  // loads everything; prints the startup summary
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and serves until stop(); returns the process exit code.
  int run();
  // Stops accepting requests, lets in-flight ones finish within the grace period (then cancels
  // them), and makes run() return. Safe from any thread.
  void stop();
  int port() const { return bound_port_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::atomic<int> bound_port_{0};
};

}  // namespace m2
