#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace m2 {

void SamplingParams::validate(int64_t vocab) const {
  auto bad = [](const char* name, double v, const char* range) {
    fail<InvalidArgument>("{} = {} is out of range: expected {}", name, v, range);
  };
  if (!std::isfinite(temperature) || temperature < 0) bad("temperature", temperature, ">= 0");
  if (!std::isfinite(top_p) || top_p <= 0 || top_p > 1) bad("top_p", top_p, "in (0, 1]");
  if (top_k < -1) bad("top_k", top_k, "-1, 0 (all) or a positive count");
  if (!std::isfinite(min_p) || min_p < 0 || min_p > 1) bad("min_p", min_p, "in [0, 1]");
  if (!std::isfinite(presence_penalty) || std::fabs(presence_penalty) > 2) bad("presence_penalty", presence_penalty, "in [-2, 2]");
  if (!std::isfinite(frequency_penalty) || std::fabs(frequency_penalty) > 2)
    bad("frequency_penalty", frequency_penalty, "in [-2, 2]");
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0 || repetition_penalty > 100)
    bad("repetition_penalty", repetition_penalty, "in (0, 100]");
  if (max_tokens < 0) bad("max_tokens", max_tokens, ">= 0");
  if (min_tokens < 0 || min_tokens > max_tokens) bad("min_tokens", min_tokens, "in [0, max_tokens]");
  if (logprobs < -1 || logprobs > 20) bad("logprobs", logprobs, "in [0, 20]");
  for (int32_t t : stop_token_ids)
    if (t < 0 || t >= vocab) bad("stop_token_ids entry", t, "a token id of the vocabulary");
  for (const auto& s : stop)
    if (s.empty()) fail<InvalidArgument>("stop: empty stop strings are not allowed");
}

GenerationConfig GenerationConfig::load(const std::filesystem::path& dir, const ModelConfig& config) {
  const auto file = dir / "generation_config.json";
  if (std::filesystem::exists(file)) return load_file(file, config);
  GenerationConfig g;
  if (config.eos_token_id >= 0) g.eos_token_ids.push_back(config.eos_token_id);
  return g;
}

GenerationConfig GenerationConfig::load_file(const std::filesystem::path& file, const ModelConfig& config) {
  GenerationConfig g;
  g.found = true;
  const nlohmann::json j = read_json_file(file);
  const std::string where = file.string();
  if (!j.is_object()) fail<FormatError>("{}: expected a JSON object", where);
  auto number = [&](const char* key, auto& out) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!j[key].is_number()) fail<FormatError>("{}: '{}' must be a number, found {}", where, key, j[key].dump());
    out = j[key].get<std::decay_t<decltype(out)>>();
  };
  number("temperature", g.defaults.temperature);
  number("top_p", g.defaults.top_p);
  number("top_k", g.defaults.top_k);
  number("min_p", g.defaults.min_p);
  number("repetition_penalty", g.defaults.repetition_penalty);
  if (j.contains("max_new_tokens") && j["max_new_tokens"].is_number_integer())
    g.max_new_tokens = j["max_new_tokens"].get<int32_t>();
  if (j.contains("eos_token_id")) {
    const auto& e = j["eos_token_id"];
    if (e.is_number_integer()) g.eos_token_ids.push_back(e.get<int32_t>());
    else if (e.is_array())
      for (const auto& v : e) {
        if (!v.is_number_integer()) fail<FormatError>("{}: eos_token_id entries must be integers", where);
        g.eos_token_ids.push_back(v.get<int32_t>());
      }
    else if (!e.is_null()) fail<FormatError>("{}: eos_token_id must be an integer or a list", where);
  }
  if (g.eos_token_ids.empty() && config.eos_token_id >= 0) g.eos_token_ids.push_back(config.eos_token_id);
  for (int32_t id : g.eos_token_ids)
    if (id < 0 || id >= config.vocab_size)
      fail<FormatError>("{}: eos_token_id {} is outside the vocabulary [0, {})", where, id, config.vocab_size);
  if (g.defaults.top_k < 0) g.defaults.top_k = 0;
  try {
    g.defaults.validate(config.vocab_size);
  } catch (const InvalidArgument& e) {
    fail<FormatError>("{}: {}", where, e.what());
  }
  return g;
}

Sampler::Sampler(int64_t vocab)
    : vocab_(vocab), work_(size_t(vocab)), counts_(size_t(vocab), 0), seen_(size_t(vocab), 0), order_(size_t(vocab)),
      probs_(size_t(vocab)) {}

void Sampler::prepare(const float* logits, const SamplingParams& p, std::span<const int32_t> history,
                      int64_t prompt_len, std::span<const int32_t> masked) {
  const int64_t V = vocab_;
  float* w = work_.data();
  std::copy_n(logits, V, w);
  // Penalties, as vLLM applies them: repetition over prompt and generated tokens, frequency and
  // presence over generated tokens.
  if (p.repetition_penalty != 1.0f) {
    for (int32_t t : history) {
      if (t >= V || seen_[size_t(t)]) continue;  // prompt ids past the sampled range have no logit here
      seen_[size_t(t)] = 1;
      w[t] = w[t] > 0 ? w[t] / p.repetition_penalty : w[t] * p.repetition_penalty;
    }
    for (int32_t t : history)
      if (t < V) seen_[size_t(t)] = 0;
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    const auto generated = history.subspan(size_t(std::min<int64_t>(prompt_len, int64_t(history.size()))));
    for (int32_t t : generated)
      if (t < V) ++counts_[size_t(t)];
    for (int32_t t : generated) {
      if (t >= V || counts_[size_t(t)] == 0) continue;
      w[t] -= p.frequency_penalty * float(counts_[size_t(t)]) + p.presence_penalty;
      counts_[size_t(t)] = 0;
    }
  }
  for (int32_t t : masked)
    if (t < V) w[t] = -std::numeric_limits<float>::infinity();

  // Greedy: the argmax (ties to the lower id) and its gap to the runner-up.
  int32_t best = 0, second = -1;
  for (int64_t i = 1; i < V; ++i) {
    if (w[i] > w[best]) {
      second = best;
      best = int32_t(i);
    } else if (second < 0 || w[i] > w[second]) {
      second = int32_t(i);
    }
  }
  argmax_ = best;
  greedy_margin_ = second >= 0 ? double(w[best]) - double(w[second]) : INFINITY;
  greedy_ = p.greedy() || !std::isfinite(w[best]);
  cut_margin_ = 1.0;
  if (greedy_) return;

  const float inv_t = 1.0f / p.temperature;
  for (int64_t i = 0; i < V; ++i) w[i] *= inv_t;
  const float lmax = w[best];
  // min-p: tokens below min_p × p_max, i.e. logit < lmax + log(min_p).
  const float floor = p.min_p > 0 ? lmax + std::log(p.min_p) : -std::numeric_limits<float>::infinity();
  int64_t n = 0;
  for (int64_t i = 0; i < V; ++i)
    if (w[i] >= floor && w[i] > -std::numeric_limits<float>::infinity()) order_[size_t(n++)] = int32_t(i);
  if (p.min_p > 0) {
    for (int64_t i = 0; i < V; ++i)
      if (std::isfinite(w[i])) cut_margin_ = std::min(cut_margin_, std::fabs(std::exp(double(w[i] - lmax)) - p.min_p));
  }
  double z = 0;  // softmax normaliser over the min-p survivors
  for (int64_t i = 0; i < n; ++i) z += std::exp(double(w[order_[size_t(i)]] - lmax));
  auto by_value = [&](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
  const bool top_k = p.top_k > 0 && p.top_k < n;
  if (top_k) {
    std::nth_element(order_.begin(), order_.begin() + p.top_k, order_.begin() + n, by_value);
    n = p.top_k;
    std::sort(order_.begin(), order_.begin() + n, by_value);
    z = 0;
    for (int64_t i = 0; i < n; ++i) z += std::exp(double(w[order_[size_t(i)]] - lmax));
    // order_[n] is the largest token cut: a near-tie with the last one kept may swap them.
    cut_margin_ = std::min(cut_margin_, (std::exp(double(w[order_[size_t(n - 1)]] - lmax)) -
                                         std::exp(double(w[order_[size_t(n)]] - lmax))) / z);
  }
  if (p.top_p < 1.0f) {
    // The smallest prefix of the sorted candidates whose mass reaches top_p (at least one token).
    // Without top-k, only a growing head of the candidates is sorted.
    int64_t sorted = top_k ? n : 0;
    for (int64_t want = std::min<int64_t>(n, 256);; want = std::min<int64_t>(n, want * 4)) {
      if (sorted < want) {
        std::nth_element(order_.begin(), order_.begin() + (want - 1), order_.begin() + n, by_value);
        std::sort(order_.begin(), order_.begin() + want, by_value);
        sorted = want;
      }
      double cum = 0;
      int64_t keep = -1;
      for (int64_t i = 0; i < sorted; ++i) {
        const double pi = std::exp(double(w[order_[size_t(i)]] - lmax)) / z;
        if (cum + pi >= p.top_p) {
          keep = i + 1;
          cut_margin_ = std::min({cut_margin_, cum + pi - p.top_p, p.top_p - cum});
          if (keep < n) {  // and a near-tie of the last one kept with the largest one cut
            float next = w[order_[size_t(keep)]];  // past the sorted head, the largest of the rest
            if (keep == sorted)
              for (int64_t j = sorted; j < n; ++j) next = std::max(next, w[order_[size_t(j)]]);
            cut_margin_ = std::min(cut_margin_, pi - std::exp(double(next - lmax)) / z);
          }
          break;
        }
        cum += pi;
      }
      if (keep > 0) {
        n = keep;
        break;
      }
      if (sorted == n) break;  // rounding: the whole set is below top_p
    }
  }
  // Draws walk the candidates in token-id order: then the token drawn moves only when the
  // probabilities move by the decision margin, whereas in value order a near-tie that swaps two
  // candidates would move every later one's interval.
  if (top_k || p.top_p < 1.0f) std::sort(order_.begin(), order_.begin() + n);
  num_candidates_ = n;
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += probs_[size_t(i)] = std::exp(double(w[order_[size_t(i)]] - lmax));
  for (int64_t i = 0; i < n; ++i) probs_[size_t(i)] /= total;
}

int32_t Sampler::draw(double u, int32_t excluded, double* margin) const {
  double total = 0;
  for (int64_t i = 0; i < num_candidates_; ++i)
    if (order_[size_t(i)] != excluded) total += probs_[size_t(i)];
  if (!(total > 0)) {
    if (margin) *margin = 0;
    return argmax_;
  }
  const double target = u * total;
  double cum = 0;
  int32_t last = argmax_;
  for (int64_t i = 0; i < num_candidates_; ++i) {
    const int32_t t = order_[size_t(i)];
    if (t == excluded) continue;
    const double next = cum + probs_[size_t(i)];
    last = t;
    if (target < next) {
      if (margin) *margin = std::min({(target - cum) / total, (next - target) / total, cut_margin_});
      return t;
    }
    cum = next;
  }
  if (margin) *margin = 0;
  return last;
}

int32_t Sampler::pick(Rng& rng, double* margin) {
  if (greedy_) {
    if (margin) *margin = greedy_margin_;
    return argmax_;
  }
  return draw(uniform01(rng), -1, margin);
}

double Sampler::prob(int32_t token) const {
  if (greedy_) return token == argmax_ ? 1.0 : 0.0;
  for (int64_t i = 0; i < num_candidates_; ++i)
    if (order_[size_t(i)] == token) return probs_[size_t(i)];
  return 0.0;
}

int32_t Sampler::pick_excluding(int32_t token, Rng& rng, double* margin) {
  if (greedy_) {
    if (margin) *margin = greedy_margin_;
    return argmax_;
  }
  return draw(uniform01(rng), token, margin);
}

int32_t Sampler::verify(int32_t draft, Rng& rng, bool* accepted, double* margin) {
  if (greedy_) {
    *accepted = draft == argmax_;
    if (margin) *margin = greedy_margin_;
    return argmax_;
  }
  const double u = uniform01(rng), p = prob(draft);
  *accepted = u < p;
  if (*accepted) {
    if (margin) *margin = std::min(p - u, cut_margin_);
    return draft;
  }
  const int32_t t = pick_excluding(draft, rng, margin);
  if (margin) *margin = std::min(*margin, u - p);
  return t;
}

float Sampler::logprobs(const float* logits, int64_t V, int32_t chosen, int n, TopLogprob* top) {
  float mx = logits[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(double(logits[i] - mx));
  const double lse = double(mx) + std::log(sum);
  // The n largest, by insertion into a sorted array (n ≤ 20).
  int k = 0;
  for (int64_t i = 0; i < V && n > 0; ++i) {
    const float v = logits[i];
    if (k == n && v <= logits[top[n - 1].token]) continue;
    int pos = k < n ? k++ : n - 1;
    while (pos > 0 && logits[top[pos - 1].token] < v) {
      top[pos] = top[pos - 1];
      --pos;
    }
    top[pos] = {int32_t(i), 0.0f};
  }
  for (int i = 0; i < k; ++i) top[i].logprob = float(double(logits[top[i].token]) - lse);
  return float(double(logits[chosen]) - lse);
}

}  // namespace m2
