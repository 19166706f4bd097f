// m2 run MODEL_DIR --ids 5,17,3: greedy continuation of a prompt given as token ids.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "backend/cpu/cpu_backend.h"
#include "cli/commands.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace m2::cli {

namespace {

struct RunOptions {
  std::string model_dir;
  std::string ids;
  int max_tokens = 16;
  std::string logits_out;
  int threads = 0;
  bool stop_at_eos = true;
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

int run(const RunOptions& o) {
  const std::vector<int32_t> prompt = parse_ids(o.ids);
  ModelWeights weights = ModelWeights::load(o.model_dir);
  for (const auto& n : weights.notices) fmt::print(stderr, "notice: {}\n", n);
  const ModelConfig& c = weights.config;
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] >= c.vocab_size)
      fail<InvalidArgument>("--ids: token {} at position {} is outside the vocabulary [0, {})", prompt[i], i, c.vocab_size);
  if (o.max_tokens < 0) fail<InvalidArgument>("--max-tokens must be >= 0, found {}", o.max_tokens);
  CpuBackend backend(o.threads);
  Model model(weights, backend);
  KvCache cache(c, std::min<int64_t>(c.max_position_embeddings, int64_t(prompt.size()) + o.max_tokens + 1));

  const int64_t V = c.vocab_size, T = int64_t(prompt.size());
  std::vector<float> logits(size_t(T * V));
  SequenceInput in{&cache, prompt};
  model.forward({&in, 1}, LogitsFor::AllTokens, logits.data());
  if (!o.logits_out.empty()) {
    write_safetensors(o.logits_out, {{"logits", DType::F32, {T, V},
                                      {reinterpret_cast<const uint8_t*>(logits.data()), logits.size() * 4}}});
  }
  auto argmax = [&](const float* l) { return int32_t(std::max_element(l, l + V) - l); };
  std::vector<int32_t> out;
  int32_t next = argmax(logits.data() + (T - 1) * V);
  for (int i = 0; i < o.max_tokens; ++i) {
    out.push_back(next);
    if (o.stop_at_eos && next == c.eos_token_id) break;
    if (i + 1 == o.max_tokens) break;
    SequenceInput step{&cache, {&out.back(), 1}};
    model.forward({&step, 1}, LogitsFor::LastToken, logits.data());
    next = argmax(logits.data());
  }
  fmt::print("{}\n", fmt::join(out, ","));
  return 0;
}

}  // namespace

Runner add_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  app.add_option("model_dir", o->model_dir, "Checkpoint directory")->required();
  app.add_option("--ids", o->ids, "Prompt token ids, comma-separated")->required();
  app.add_option("--max-tokens,-n", o->max_tokens, "Tokens to generate")->capture_default_str();
  app.add_option("--logits-out", o->logits_out, "Write the prompt's logits [T, vocab] as F32 safetensors");
  app.add_option("--threads,-t", o->threads, "Worker threads (0 = all cores)")->capture_default_str();
  app.add_flag("!--no-stop", o->stop_at_eos, "Do not stop at the EOS token");
  return [o] { return run(*o); };
}

}  // namespace m2::cli
