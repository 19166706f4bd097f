// m2 run MODEL_DIR (--ids 5,17,3 | --prompt TEXT | --chat [FILE]): greedy generation.
//   --ids     prints the continuation as ids (and --logits-out writes the prompt's logits);
//   --prompt  streams the continuation as text;
//   --chat    renders a conversation with the model's chat template, generates, and prints the
//             reasoning, the content and the parsed tool calls separately.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>

#include "backend/cpu/cpu_backend.h"
#include "cli/commands.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "text/chat.h"
#include "text/tokenizer.h"

namespace m2::cli {

namespace {

struct RunOptions {
  std::string model_dir;
  std::string ids, prompt, chat;
  int max_tokens = 16;
  std::string logits_out;
  int threads = 0;
  bool stop_at_eos = true;
  std::string reasoning = "auto";
  CLI::Option *ids_opt = nullptr, *prompt_opt = nullptr, *chat_opt = nullptr;  // which was given
};

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = text.find(',', i);
    if (j == std::string::npos) j = text.size();
    std::string piece = text.substr(i, j - i);
    piece.erase(0, piece.find_first_not_of(" \t"));
    piece.erase(piece.find_last_not_of(" \t") + 1);
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(piece, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (piece.empty() || used != piece.size() || v < 0 || v > INT32_MAX)
      fail<InvalidArgument>("--ids: '{}' at position {} is not a token id", piece, ids.size());
    ids.push_back(int32_t(v));
    i = j + 1;
  }
  if (ids.empty()) fail<InvalidArgument>("--ids: no token ids given");
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

// Greedy decoding: calls on_token(id) for each generated token; stops at EOS unless told not to.
class Generator {
 public:
  Generator(const ModelWeights& w, int threads) : backend_(threads), model_(w, backend_), w_(w) {}

  void run(const std::vector<int32_t>& prompt, int max_tokens, bool stop_at_eos, const std::string& logits_out,
           const std::function<void(int32_t)>& on_token) {
    const ModelConfig& c = w_.config;
    for (size_t i = 0; i < prompt.size(); ++i)
      if (prompt[i] < 0 || prompt[i] >= c.vocab_size)
        fail<InvalidArgument>("prompt token {} at position {} is outside the vocabulary [0, {})", prompt[i], i, c.vocab_size);
    if (max_tokens < 0) fail<InvalidArgument>("--max-tokens must be >= 0, found {}", max_tokens);
    if (int64_t(prompt.size()) + max_tokens > c.max_position_embeddings)
      fail<InvalidArgument>("prompt ({} tokens) + --max-tokens {} exceeds max_position_embeddings = {}", prompt.size(),
                            max_tokens, c.max_position_embeddings);
    KvCache cache(c, int64_t(prompt.size()) + max_tokens + 1);
    const int64_t V = c.vocab_size, T = int64_t(prompt.size());
    const bool all = !logits_out.empty();
    std::vector<float> logits(size_t((all ? T : 1) * V));
    SequenceInput in{&cache, prompt};
    model_.forward({&in, 1}, all ? LogitsFor::AllTokens : LogitsFor::LastToken, logits.data());
    if (all)
      write_safetensors(logits_out, {{"logits", DType::F32, {T, V},
                                      {reinterpret_cast<const uint8_t*>(logits.data()), logits.size() * 4}}});
    const float* last = logits.data() + (all ? (T - 1) * V : 0);
    int32_t next = int32_t(std::max_element(last, last + V) - last);
    for (int i = 0; i < max_tokens; ++i) {
      on_token(next);
      if ((stop_at_eos && next == c.eos_token_id) || i + 1 == max_tokens) break;
      SequenceInput step{&cache, {&next, 1}};
      model_.forward({&step, 1}, LogitsFor::LastToken, logits.data());
      next = int32_t(std::max_element(logits.data(), logits.data() + V) - logits.data());
    }
  }

 private:
  CpuBackend backend_;
  Model model_;
  const ModelWeights& w_;
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

int run(const RunOptions& o) {
  const bool by_ids = o.ids_opt->count() > 0, by_prompt = o.prompt_opt->count() > 0;
  const int modes = by_ids + by_prompt + (o.chat_opt->count() > 0);
  if (modes != 1) fail<InvalidArgument>("give exactly one of --ids, --prompt or --chat");
  ModelWeights weights = ModelWeights::load(o.model_dir);
  for (const auto& n : weights.notices) fmt::print(stderr, "notice: {}\n", n);
  Generator gen(weights, o.threads);

  if (by_ids) {
    std::vector<int32_t> out;
    gen.run(parse_ids(o.ids), o.max_tokens, o.stop_at_eos, o.logits_out, [&](int32_t id) { out.push_back(id); });
    fmt::print("{}\n", fmt::join(out, ","));
    return 0;
  }
  Tokenizer tok = Tokenizer::load(o.model_dir);
  if (by_prompt) {
    IncrementalDecoder dec(tok, true);
    gen.run(tok.encode(o.prompt, true), o.max_tokens, o.stop_at_eos, o.logits_out, [&](int32_t id) {
      fmt::print("{}", dec.push(id));
      std::fflush(stdout);
    });
    fmt::print("{}\n", dec.flush());
    return 0;
  }
  // --chat: {"messages": [...], "tools": [...]} or a bare list of messages.
  nlohmann::ordered_json conv;
  try {
    conv = nlohmann::ordered_json::parse(read_input(o.chat));
  } catch (const nlohmann::json::parse_error& e) {
    fail<InvalidArgument>("--chat {}: malformed JSON: {}", o.chat, e.what());
  }
  nlohmann::ordered_json messages = conv.is_array() ? conv : conv.value("messages", nlohmann::ordered_json());
  nlohmann::ordered_json tools = conv.is_object() ? conv.value("tools", nlohmann::ordered_json()) : nlohmann::ordered_json();
  if (!messages.is_array()) fail<InvalidArgument>("--chat {}: expected a list of messages or {{\"messages\": [...]}}", o.chat);
  ChatFormat chat = ChatFormat::load(o.model_dir);
  const std::string prompt = chat.render(messages, tools, true);
  ChatOutputParser parser(reasoning_mode(o.reasoning, prompt), nlohmann::json::parse(tools.dump()));
  // Special tokens stay in the text: <think>, </think> and <minimax:tool_call> are what the parsers read.
  // The end-of-turn token is not output.
  IncrementalDecoder dec(tok, false);
  const int32_t eos = weights.config.eos_token_id;
  ChatAccumulator acc;
  auto take = [&](const ChatDelta& d) { acc.add(d); };
  gen.run(tok.encode(prompt, false), o.max_tokens, o.stop_at_eos, o.logits_out, [&](int32_t id) {
    if (id != eos) take(parser.push(dec.push(id)));
  });
  take(parser.push(dec.flush()));
  take(parser.finish());
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
  app.add_option("--reasoning-parser", o->reasoning,
                 "auto | minimax_m2 | model_opens | minimax_m2_append_think | none")->capture_default_str();
  app.add_flag("!--no-stop", o->stop_at_eos, "Do not stop at the EOS token");
  return [o] { return run(*o); };
}

}  // namespace m2::cli
