// Sampling parameters (vLLM's names and semantics), the model's defaults from generation_config.json,
// and the sampler: penalties, temperature, min-p, top-k, top-p, a draw from a per-request generator,
// log-probabilities, and what speculative verification needs (a token's probability, a draw with one
// token excluded).
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "io/config.h"

namespace m2 {

struct SamplingParams {
  float temperature = 1.0f;       // 0 = greedy
  float top_p = 1.0f;             // (0, 1]
  int32_t top_k = 0;              // 0 or -1 = every token
  float min_p = 0.0f;             // [0, 1]: drop tokens below min_p × the top probability
  float presence_penalty = 0.0f;  // [-2, 2], on generated tokens
  float frequency_penalty = 0.0f; // [-2, 2], × count in generated tokens
  float repetition_penalty = 1.0f;// > 0, on prompt and generated tokens (HF/vLLM rule)
  std::optional<uint64_t> seed;   // per-request generator: output independent of the batch
  int32_t max_tokens = 16;
  int32_t min_tokens = 0;         // stop tokens are masked until this many are generated
  std::vector<int32_t> stop_token_ids;  // besides the model's EOS ids
  std::vector<std::string> stop;        // stop strings, matched across token boundaries
  bool ignore_eos = false;
  bool include_stop_str_in_output = false;
  int32_t logprobs = -1;          // -1 none; n ≥ 0: the chosen token's logprob and the n most likely
  bool skip_special_tokens = true;

  bool greedy() const { return temperature < 1e-5f; }
  // Throws InvalidArgument naming the parameter and its allowed range.
  void validate(int64_t vocab_size) const;
};

// Defaults from the model's generation_config.json (the keys vLLM reads: temperature, top_p, top_k,
// min_p, repetition_penalty, max_new_tokens) and its end-of-sequence ids.
struct GenerationConfig {
  SamplingParams defaults;
  std::optional<int32_t> max_new_tokens;
  std::vector<int32_t> eos_token_ids;  // generation_config's eos_token_id (int or list), else config.json's
  bool found = false;                  // generation_config.json was present
  static GenerationConfig load(const std::filesystem::path& model_dir, const ModelConfig& config);
  static GenerationConfig load_file(const std::filesystem::path& file, const ModelConfig& config);
};

using Rng = std::mt19937_64;
inline double uniform01(Rng& rng) { return double(rng() >> 11) * 0x1.0p-53; }

struct TopLogprob {
  int32_t token;
  float logprob;
};

class Sampler {
 public:
  explicit Sampler(int64_t vocab_size);

  // Builds the processed distribution of one row of logits [vocab]: penalties over `history`
  // (prompt then generated tokens; generated = history[prompt_len ..]), stop tokens masked while
  // fewer than min_tokens are generated, then temperature, min-p, top-k, top-p.
  void prepare(const float* logits, const SamplingParams& p, std::span<const int32_t> history, int64_t prompt_len,
               std::span<const int32_t> masked);
  // The argmax (greedy) or a draw from the distribution. `margin` receives how far the decision was
  // from flipping: greedy, the logit gap to the runner-up; sampled, the probability distance of the
  // draw (and of any top-p / min-p cut) to the nearest boundary.
  int32_t pick(Rng& rng, double* margin = nullptr);
  // The processed probability of `token` (greedy: 1 for the argmax, 0 otherwise).
  double prob(int32_t token) const;
  // A draw from the distribution with `token` removed and the rest renormalised (speculative
  // rejection); greedy: the argmax.
  int32_t pick_excluding(int32_t token, Rng& rng, double* margin = nullptr);

  // Speculative verification of a deterministic draft token against the prepared distribution p:
  // greedy, accepted iff it is the argmax; sampled, accepted with probability p(draft) (the rule
  // min(1, p/q) for a draft distribution q that is one-hot), else replaced by a draw from p with the
  // draft removed. Either way the token that comes out is distributed exactly as p.
  int32_t verify(int32_t draft, Rng& rng, bool* accepted, double* margin = nullptr);

  // log_softmax of the raw logits: the chosen token's logprob, and the n most likely tokens (n ≤ 20)
  // in descending order.
  static float logprobs(const float* logits, int64_t vocab, int32_t chosen, int n, TopLogprob* top);

 private:
  int32_t draw(double u, int32_t excluded, double* margin) const;

  int64_t vocab_;
  std::vector<float> work_;          // [vocab] processed logits
  std::vector<int32_t> counts_;      // [vocab] generated-token counts (zero between calls)
  std::vector<uint8_t> seen_;        // [vocab] prompt-or-generated marks (zero between calls)
  std::vector<int32_t> order_;       // [vocab] candidate ids
  std::vector<double> probs_;        // [vocab] candidate probabilities, renormalised
  int64_t num_candidates_ = 0;
  bool greedy_ = false;
  int32_t argmax_ = 0;
  double greedy_margin_ = 0, cut_margin_ = 1;
};

}  // namespace m2
