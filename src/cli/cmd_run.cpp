// m2 run MODEL_DIR (--ids 5,17,3 | --prompt TEXT | --chat [FILE]): generation through the engine
// (greedy unless --temperature > 0; the other sampling defaults come from generation_config.json).
//   --ids     prints the continuation as ids (and --logits-out writes the prompt's logits);
//   --prompt  streams the continuation as text;
//   --chat    renders a conversation with the model's chat template, generates, and prints the
//             reasoning, the content and the parsed tool calls separately.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <optional>
#include <iostream>
#include <sstream>

#include "backend/cpu/cpu_backend.h"
#include "cli/commands.h"
#include "cli/parallel_flags.h"
#include "core/error.h"
#include "core/units.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "runtime/engine.h"
#include "text/chat.h"
#include "text/detokenizer.h"
#include "text/tokenizer.h"

namespace m2::cli {

namespace {

struct RunOptions {
  std::string model_dir;
  std::string ids, prompt, chat;
  int max_tokens = 16;
  std::string logits_out;
  int threads = 0;
  std::string activations = "q8";
  bool stop_at_eos = true;
  std::string reasoning = "auto";
  double temperature = 0.0;  // greedy unless asked
  std::optional<double> top_p, min_p, repetition_penalty;
  std::optional<int> top_k;
  std::optional<uint64_t> seed;
  std::string kv_cache_dtype = "auto";
  int ngram = 0;
  bool stats = false;
  ParallelFlags parallel;
  DistributedRun* dist = nullptr;  // the job this process drives (rank 0), when distributed
  CLI::Option *ids_opt = nullptr, *prompt_opt = nullptr, *chat_opt = nullptr;  // which was given
};

std::vector<int32_t> parse_ids(const std::string& text) {
  if (text.empty()) fail<InvalidArgument>("--ids: no token ids given");
  std::vector<int32_t> ids;
  for (const ListedInteger& id : parse_integer_list(text)) {
    if (!id.value || *id.value < 0 || *id.value > INT32_MAX)
      fail<InvalidArgument>("--ids: '{}' at position {} is not a token id", id.text, ids.size());
    ids.push_back(int32_t(*id.value));
  }
  return ids;
}

std::string read_input(const std::string& path) {
  std::stringstream s;
  if (path == "-") {
    s << std::cin.rdbuf();
  } else {
    std::ifstream in(path);
    if (!in) fail<IoError>("{}: cannot read", path);
    s << in.rdbuf();
  }
  return s.str();
}

// One request through the engine, on the CPU backend: calls on_output for every step's output.
class Generator {
 public:
  Generator(const RunOptions& o, const ModelWeights& w, const Tokenizer* tok) : o_(o), w_(w), backend_(o.threads, LinearPath::Auto, parse_activations(o.activations)) {
    gen_ = GenerationConfig::load(o.model_dir, w.config);
    tok_ = tok;
  }

  SamplingParams params() const {
    SamplingParams p = gen_.defaults;
    p.temperature = float(o_.temperature);
    if (o_.top_p) p.top_p = float(*o_.top_p);
    if (o_.top_k) p.top_k = *o_.top_k;
    if (o_.min_p) p.min_p = float(*o_.min_p);
    if (o_.repetition_penalty) p.repetition_penalty = float(*o_.repetition_penalty);
    if (o_.seed) p.seed = *o_.seed;
    p.max_tokens = o_.max_tokens;
    p.ignore_eos = !o_.stop_at_eos;
    return p;
  }

  // Runs `prompt`; returns the finished sequence's generated ids.
  std::vector<int32_t> run(std::vector<int32_t> prompt, SamplingParams p, bool skip_special,
                           const std::function<void(const std::string&)>& on_text) {
    if (o_.max_tokens < 0) fail<InvalidArgument>("--max-tokens must be >= 0, found {}", o_.max_tokens);
    const ModelConfig& c = w_.config;
    for (size_t i = 0; i < prompt.size(); ++i)
      if (prompt[i] < 0 || prompt[i] >= c.vocab_size)
        fail<InvalidArgument>("prompt token {} at position {} is outside the vocabulary [0, {})", prompt[i], i, c.vocab_size);
    const int64_t len = int64_t(prompt.size()) + o_.max_tokens;
    if (len > c.max_position_embeddings)
      fail<InvalidArgument>("prompt ({} tokens) + --max-tokens {} exceeds max_position_embeddings = {}", prompt.size(),
                            o_.max_tokens, c.max_position_embeddings);
    EngineOptions eo;
    eo.max_num_seqs = 1;
    eo.max_num_batched_tokens = 512;
    eo.max_model_len = std::max<int64_t>(1, len);
    eo.kv.dtype = parse_kv_cache_dtype(o_.kv_cache_dtype);
    eo.kv.block_size = 16;
    eo.kv.num_blocks = (eo.max_model_len + o_.ngram + 16) / 16 + 1;
    eo.ngram.k = o_.ngram;
    eo.eos_token_ids = gen_.eos_token_ids;
    eo.checkpoint = o_.model_dir;
    const bool logits = !o_.logits_out.empty();
    if (logits) eo.max_prompt_logit_rows = std::min<int64_t>(int64_t(prompt.size()), eo.max_num_batched_tokens);
    if (tok_) {
      eo.text_decoder = text_decoder_factory(*tok_);
      eo.sample_vocab = tok_->vocab_size();
      p.skip_special_tokens = skip_special;
    }
    if (o_.dist) o_.dist->configure_root(eo);
    Engine engine(w_, backend_, eo);
    if (o_.dist) o_.dist->attach(engine);
    for (const auto& n : engine.notices()) fmt::print(stderr, "{}\n", n);
    const int64_t T = int64_t(prompt.size());
    Request r;
    r.prompt = std::move(prompt);
    r.params = std::move(p);
    r.prompt_logits = logits;
    const uint64_t id = engine.add_request(std::move(r));
    std::vector<int32_t> out;
    using Clock = std::chrono::steady_clock;
    const Clock::time_point start = Clock::now();
    Clock::time_point first_step_end{}, last_step{};
    std::vector<Clock::time_point> step_ends;  // --stats: when each step ended
    CollectiveStats after_prefill;
    while (engine.has_work()) {
      const auto& outputs = engine.step();
      last_step = Clock::now();
      if (o_.stats) step_ends.push_back(last_step);
      if (first_step_end == Clock::time_point{}) {
        first_step_end = last_step;
        if (o_.dist) after_prefill = o_.dist->collectives().stats();
      }
      for (const StepOutput& s : outputs) {
        if (s.id() != id) continue;
        for (int32_t t : s.new_tokens()) out.push_back(t);
        if (on_text && !s.text.empty()) on_text(s.text);
        if (s.finished && logits) {
          const auto& l = s.seq->prompt_logits;
          write_safetensors(o_.logits_out, {{"logits", DType::F32, {T, int64_t(c.vocab_size)},
                                             {reinterpret_cast<const uint8_t*>(l.data()), l.size() * 4}}});
        }
      }
    }
    if (o_.stats) {
      const double decode_s = std::chrono::duration<double>(last_step - first_step_end).count();
      const int64_t decoded = int64_t(step_ends.size()) - 1;
      // The second half of the decode steps: the steady state, once the first touches of the
      // checkpoint's pages (each expert's first use maps its pages) are behind.
      const int64_t half = decoded / 2;
      const double late_s =
          half > 0 ? std::chrono::duration<double>(last_step - step_ends[size_t(decoded - half)]).count() : 0.0;
      fmt::print(stderr, "timing: prefill {} tokens in {:.2f} ms; decode {} tokens at {:.1f} tok/s; steady {:.1f} tok/s\n", T,
                 1e3 * std::chrono::duration<double>(first_step_end - start).count(), decoded,
                 decoded > 0 && decode_s > 0 ? double(decoded) / decode_s : 0.0,
                 late_s > 0 ? double(half) / late_s : 0.0);
    }
    if (o_.dist && o_.stats) {
      // Decode steps only (the first step, the prefill, excluded): what one generated token costs.
      const CollectiveStats& c = o_.dist->collectives().stats();
      const double steps = double(std::max<int64_t>(1, engine.stats().steps - 1));
      const CollectiveStats& a = after_prefill;
      fmt::print(stderr,
                 "collectives per decode step (rank 0): {:.1f} all-reduces, {:.1f} KiB, {:.3f} ms; {:.1f} logit gathers, "
                 "{:.1f} KiB, {:.3f} ms; {:.1f} stage messages, {:.1f} KiB, {:.3f} ms ({} steps)\n",
                 double(c.all_reduces - a.all_reduces) / steps, double(c.all_reduce_bytes - a.all_reduce_bytes) / 1024 / steps,
                 1e3 * (c.all_reduce_seconds - a.all_reduce_seconds) / steps, double(c.gathers - a.gathers) / steps,
                 double(c.gather_bytes - a.gather_bytes) / 1024 / steps, 1e3 * (c.gather_seconds - a.gather_seconds) / steps,
                 double(c.stage_messages - a.stage_messages) / steps, double(c.stage_bytes - a.stage_bytes) / 1024 / steps,
                 1e3 * (c.stage_seconds - a.stage_seconds) / steps, int64_t(steps));
    }
    if (o_.ngram > 0) {
      const EngineStats st = engine.stats();
      fmt::print(stderr, "speculative n-gram: {} drafted, {} accepted ({:.0f}%)\n", st.spec_drafted, st.spec_accepted,
                 st.spec_drafted ? 100.0 * double(st.spec_accepted) / double(st.spec_drafted) : 0.0);
    }
    return out;
  }

 private:
  const RunOptions& o_;
  const ModelWeights& w_;
  CpuBackend backend_;
  GenerationConfig gen_;
  const Tokenizer* tok_ = nullptr;
};

ReasoningMode reasoning_mode(const std::string& name, const std::string& prompt) {
  if (name == "auto") return ChatOutputParser::mode_for_prompt(prompt);
  if (name == "minimax_m2") return ReasoningMode::PromptOpened;
  if (name == "model_opens") return ReasoningMode::ModelOpens;
  if (name == "minimax_m2_append_think") return ReasoningMode::AppendThink;
  if (name == "none") return ReasoningMode::None;
  fail<InvalidArgument>("--reasoning-parser '{}' is unknown: expected auto, minimax_m2, model_opens, "
                        "minimax_m2_append_think or none", name);
}

int run_root(const RunOptions& o);

// A distributed job: rank 0 runs the request and prints; the other ranks run its steps.
int run(RunOptions& o) {
  const bool by_ids = o.ids_opt->count() > 0, by_prompt = o.prompt_opt->count() > 0;
  const int modes = by_ids + by_prompt + (o.chat_opt->count() > 0);
  if (modes != 1) fail<InvalidArgument>("give exactly one of --ids, --prompt or --chat");
  std::unique_ptr<DistributedRun> dist = start_distributed(o.parallel, o.model_dir);
  if (!dist) return run_root(o);
  return dist->run([&] {
    if (!dist->root()) {
      const ModelWeights weights = ModelWeights::load(o.model_dir);
      CpuBackend backend(o.threads, LinearPath::Auto, parse_activations(o.activations));
      return dist->follow(weights, backend);
    }
    o.dist = dist.get();
    const int code = run_root(o);
    dist->finish();
    return code;
  });
}

int run_root(const RunOptions& o) {
  const bool by_ids = o.ids_opt->count() > 0, by_prompt = o.prompt_opt->count() > 0;
  ModelWeights weights = ModelWeights::load(o.model_dir);
  for (const auto& n : weights.notices) fmt::print(stderr, "notice: {}\n", n);

  if (by_ids) {
    Generator gen(o, weights, nullptr);
    auto out = gen.run(parse_ids(o.ids), gen.params(), true, {});
    fmt::print("{}\n", fmt::join(out, ","));
    return 0;
  }
  Tokenizer tok = Tokenizer::load(o.model_dir);
  Generator gen(o, weights, &tok);
  if (by_prompt) {
    gen.run(tok.encode(o.prompt, true), gen.params(), true, [](const std::string& t) {
      fmt::print("{}", t);
      std::fflush(stdout);
    });
    fmt::print("\n");
    return 0;
  }
  // --chat: {"messages": [...], "tools": [...]} or a bare list of messages.
  nlohmann::ordered_json conv;
  try {
    conv = nlohmann::ordered_json::parse(read_input(o.chat));
  } catch (const nlohmann::json::exception& e) {
    fail<InvalidArgument>("--chat {}: malformed JSON: {}", o.chat, e.what());
  }
  nlohmann::ordered_json messages = conv.is_array() ? conv : conv.value("messages", nlohmann::ordered_json());
  nlohmann::ordered_json tools = conv.is_object() ? conv.value("tools", nlohmann::ordered_json()) : nlohmann::ordered_json();
  if (!messages.is_array()) fail<InvalidArgument>("--chat {}: expected a list of messages or {{\"messages\": [...]}}", o.chat);
  ChatFormat chat = ChatFormat::load(o.model_dir);
  const std::string prompt = chat.render(messages, tools, true);
  ChatOutputParser parser(reasoning_mode(o.reasoning, prompt), nlohmann::json::parse(tools.dump()));
  // Special tokens stay in the text: <think>, </think> and <minimax:tool_call> are what the parsers read.
  // The end-of-turn token ends generation and is not output.
  ChatAccumulator acc;
  gen.run(tok.encode(prompt, false), gen.params(), false, [&](const std::string& t) { acc.add(parser.push(t)); });
  acc.add(parser.finish());
  const std::string& reasoning = acc.reasoning;
  const std::string& content = acc.content;
  const std::vector<ToolCall>& calls = acc.tool_calls;
  nlohmann::ordered_json msg = {{"role", "assistant"}, {"content", content.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(content)}};
  if (!reasoning.empty()) msg["reasoning_content"] = reasoning;
  if (!calls.empty()) {
    msg["tool_calls"] = nlohmann::ordered_json::array();
    for (const auto& c : calls)
      msg["tool_calls"].push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
  }
  fmt::print("=== reasoning ===\n{}\n=== content ===\n{}\n=== tool calls ===\n{}\n=== message ===\n{}\n", reasoning, content,
             calls.empty() ? "(none)" : msg["tool_calls"].dump(2), msg.dump(2));
  return 0;
}

}  // namespace

Runner add_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  app.add_option("model_dir", o->model_dir, "Checkpoint directory")->required();
  o->ids_opt = app.add_option("--ids", o->ids, "Prompt token ids, comma-separated");
  o->prompt_opt = app.add_option("--prompt,-p", o->prompt, "Prompt text (tokenized with the model's tokenizer.json)");
  o->chat_opt = app.add_option("--chat", o->chat, "Conversation JSON file ('-' = stdin): {\"messages\": [...], \"tools\": [...]}")
      ->expected(0, 1)
      ->default_str("-");
  app.add_option("--max-tokens,-n", o->max_tokens, "Tokens to generate")->capture_default_str();
  app.add_option("--logits-out", o->logits_out, "Write the prompt's logits [T, vocab] as F32 safetensors");
  app.add_option("--threads,-t", o->threads, "Worker threads (0 = all cores)")->capture_default_str();
  app.add_option("--activations", o->activations,
                 "q8 (int8 activations in FP4 products, as llama.cpp) | q8-bf16 (q8, and bf16 activations in "
                 "BF16 / FP8 products on CPUs with AVX512_BF16, BF16 products with AArch64 BF16) | f32 (exact; what --logits-out comparisons with a "
                 "reference want)")
      ->capture_default_str();
  app.add_option("--reasoning-parser", o->reasoning,
                 "auto | minimax_m2 | model_opens | minimax_m2_append_think | none")->capture_default_str();
  app.add_flag("!--no-stop", o->stop_at_eos, "Do not stop at the EOS token");
  app.add_option("--temperature", o->temperature, "Sampling temperature (0 = greedy)")->capture_default_str();
  app.add_option("--top-p", o->top_p, "Nucleus sampling mass (default: generation_config.json, else 1)");
  app.add_option("--top-k", o->top_k, "Sample among the k most likely tokens (0 = all)");
  app.add_option("--min-p", o->min_p, "Drop tokens below min_p x the top probability");
  app.add_option("--repetition-penalty", o->repetition_penalty, "HF repetition penalty (1 = off)");
  app.add_option("--seed", o->seed, "Seed of the request's sampler");
  app.add_option("--kv-cache-dtype", o->kv_cache_dtype, "auto (fp32 on the CPU) | fp32 | bf16 | fp8")->capture_default_str();
  app.add_option("--speculative-ngram", o->ngram, "Draft up to K tokens by n-gram lookup in the context (0 = off)")
      ->capture_default_str();
  add_parallel_flags(app, o->parallel);
  app.add_flag("--stats", o->stats, "Print prefill time, decode tok/s and (distributed) collective volume and time");
  return [o] { return run(*o); };
}

}  // namespace m2::cli
