// The sampler against direct formulas: penalties, temperature, min-p, top-k, top-p, draws that follow
// the distribution (chi-square), speculative verification that keeps it exact, log-probabilities,
// parameter validation, generation_config.json.
#include <gtest/gtest.h>

#include <fstream>
#include <numeric>

#include "core/error.h"
#include "runtime/ngram.h"
#include "runtime/sampling.h"
#include "test_util.h"

namespace m2 {
namespace {

// The processed distribution, computed directly in double: the definition the sampler must follow.
std::vector<double> reference_probs(const std::vector<float>& logits, const SamplingParams& p,
                                    const std::vector<int32_t>& history, int64_t prompt_len) {
  const size_t V = logits.size();
  std::vector<double> l(logits.begin(), logits.end());
  std::vector<int> count(V, 0), seen(V, 0);
  for (size_t i = 0; i < history.size(); ++i) {
    seen[size_t(history[i])] = 1;
    if (int64_t(i) >= prompt_len) ++count[size_t(history[i])];
  }
  for (size_t t = 0; t < V; ++t) {
    if (seen[t]) l[t] = l[t] > 0 ? l[t] / p.repetition_penalty : l[t] * p.repetition_penalty;
    l[t] -= p.frequency_penalty * count[t] + (count[t] > 0 ? p.presence_penalty : 0.0);
    l[t] /= p.temperature;
  }
  const double mx = *std::max_element(l.begin(), l.end());
  std::vector<double> pr(V);
  for (size_t t = 0; t < V; ++t) pr[t] = std::exp(l[t] - mx);
  for (size_t t = 0; t < V; ++t)
    if (pr[t] < p.min_p) pr[t] = 0;  // pr is relative to the top probability here
  std::vector<size_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return l[a] > l[b]; });
  if (p.top_k > 0)
    for (size_t i = size_t(p.top_k); i < V; ++i) pr[order[i]] = 0;
  double z = std::accumulate(pr.begin(), pr.end(), 0.0);
  if (p.top_p < 1) {
    double cum = 0;
    bool cut = false;
    for (size_t i : order) {
      if (cut) pr[i] = 0;
      cum += pr[i] / z;
      if (cum >= p.top_p) cut = true;
    }
    z = std::accumulate(pr.begin(), pr.end(), 0.0);
  }
  for (auto& x : pr) x /= z;
  return pr;
}

// Pearson chi-square statistic of `counts` against probabilities `p` (cells with expectation ≥ 5).
double chi_square(const std::vector<int>& counts, const std::vector<double>& p, int n, int* dof) {
  double chi = 0;
  *dof = -1;
  for (size_t i = 0; i < p.size(); ++i) {
    const double e = p[i] * n;
    if (e < 5) {
      EXPECT_LE(counts[i], std::max(5.0, 20 * e + 5)) << "token " << i << " drawn far too often";
      continue;
    }
    chi += (counts[i] - e) * (counts[i] - e) / e;
    ++*dof;
  }
  return chi;
}

struct Case {
  const char* name;
  SamplingParams p;
};

std::vector<Case> cases() {
  std::vector<Case> c;
  auto add = [&](const char* name, auto f) {
    SamplingParams p;
    f(p);
    c.push_back({name, p});
  };
  add("temperature", [](SamplingParams& p) { p.temperature = 0.7f; });
  add("top_k", [](SamplingParams& p) { p.top_k = 5; });
  add("top_p", [](SamplingParams& p) { p.top_p = 0.6f; p.temperature = 1.3f; });
  add("min_p", [](SamplingParams& p) { p.min_p = 0.2f; });
  add("all filters", [](SamplingParams& p) { p.top_k = 8; p.top_p = 0.9f; p.min_p = 0.05f; p.temperature = 0.9f; });
  add("penalties", [](SamplingParams& p) {
    p.repetition_penalty = 1.3f;
    p.frequency_penalty = 0.4f;
    p.presence_penalty = -0.5f;
  });
  return c;
}

TEST(Sampler, DrawsFollowTheProcessedDistribution) {
  std::mt19937_64 rng(test::fresh_seed());
  const int V = 40, N = 40000;
  auto logits = test::random_floats(rng, V, 1.5f);
  const std::vector<int32_t> history = {3, 7, 7, 12, 3, 30, 7};  // prompt of 3, then 4 generated
  for (const Case& c : cases()) {
    Sampler s(V);
    s.prepare(logits.data(), c.p, history, 3, {});
    auto want = reference_probs(logits, c.p, history, 3);
    for (int t = 0; t < V; ++t) EXPECT_NEAR(s.prob(t), want[size_t(t)], 1e-6) << c.name << " token " << t;
    std::vector<int> counts(V, 0);
    Rng r(rng());
    for (int i = 0; i < N; ++i) ++counts[size_t(s.pick(r))];
    int dof = 0;
    const double chi = chi_square(counts, want, N, &dof);
    // The 99.99th percentile of chi-square is below dof + 10·sqrt(2·dof) + 15 for these sizes.
    EXPECT_LT(chi, dof + 10 * std::sqrt(2.0 * dof) + 15) << c.name << " dof " << dof;
  }
}

// The speculative rule (accept a deterministic draft with probability p(draft), else draw from p with
// the draft removed) must leave the output distributed exactly as p, whatever the draft.
TEST(Sampler, SpeculativeVerificationKeepsTheDistributionExact) {
  std::mt19937_64 rng(test::fresh_seed());
  const int V = 30, N = 40000;
  auto logits = test::random_floats(rng, V, 1.2f);
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 12;
  Sampler s(V);
  s.prepare(logits.data(), p, {}, 0, {});
  auto want = reference_probs(logits, p, {}, 0);
  int best = int(std::max_element(want.begin(), want.end()) - want.begin());
  for (int draft : {best, int(std::min_element(want.begin(), want.end()) - want.begin()), 3}) {
    std::vector<int> counts(V, 0);
    int accepted = 0;
    Rng r(rng());
    for (int i = 0; i < N; ++i) {
      bool ok;
      ++counts[size_t(s.verify(draft, r, &ok))];
      accepted += ok;
    }
    int dof = 0;
    const double chi2 = chi_square(counts, want, N, &dof);
    EXPECT_LT(chi2, dof + 10 * std::sqrt(2.0 * dof) + 15) << "draft " << draft;
    EXPECT_NEAR(double(accepted) / N, want[size_t(draft)], 4 * std::sqrt(0.25 / N) + 1e-3) << "acceptance rate";
  }
  // Greedy: a draft is accepted exactly when it is the argmax, and the argmax always comes out.
  SamplingParams g;
  g.temperature = 0;
  s.prepare(logits.data(), g, {}, 0, {});
  Rng r(1);
  bool ok;
  EXPECT_EQ(s.verify(best, r, &ok), best);
  EXPECT_TRUE(ok);
  EXPECT_EQ(s.verify((best + 1) % V, r, &ok), best);
  EXPECT_FALSE(ok);
}

TEST(Sampler, GreedyTiesMaskingAndSeeds) {
  std::vector<float> logits = {1.0f, 3.0f, 3.0f, -2.0f};
  Sampler s(4);
  SamplingParams g;
  g.temperature = 0;
  Rng r(5);
  double margin;
  s.prepare(logits.data(), g, {}, 0, {});
  EXPECT_EQ(s.pick(r, &margin), 1);  // ties go to the lower id
  EXPECT_EQ(margin, 0.0);
  std::vector<int32_t> masked = {1, 2};
  s.prepare(logits.data(), g, {}, 0, masked);
  EXPECT_EQ(s.pick(r, &margin), 0);
  EXPECT_NEAR(margin, 3.0, 1e-6);
  // The same seed gives the same draws; the draws use nothing else.
  SamplingParams p;
  std::vector<int32_t> a, b;
  for (auto* out : {&a, &b}) {
    Rng rr(42);
    for (int i = 0; i < 50; ++i) {
      s.prepare(logits.data(), p, {}, 0, {});
      out->push_back(s.pick(rr));
    }
  }
  EXPECT_EQ(a, b);
}

// Logits that move by ~1e-6 (another batch, another summation order) must move a draw only where
// its recorded margin said it was that close: near-tied candidates that swap places in value order
// must not shift the others' intervals, and a near-tie at the top-k or top-p cut must show in the
// margin.
TEST(Sampler, DrawsMoveOnlyWithinTheirMarginWhenLogitsMoveSlightly) {
  std::mt19937_64 rng(test::fresh_seed());
  const int V = 60, N = 4000;
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 20;
  // The top 20 lifted well clear of the rest: no near-tie at the cut unless planted.
  auto base = test::random_floats(rng, V, 1.0f);
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return base[size_t(a)] > base[size_t(b)]; });
  for (int i = 0; i < p.top_k; ++i) base[size_t(order[size_t(i)])] += 3.0f;
  // Candidates i and i + 1 (in value order) made a near-tie in `one`, swapped in `other` if given.
  auto near_ties = [&](std::initializer_list<int> at, std::vector<float>& one, std::vector<float>* other) {
    for (int i : at) {
      const auto a = size_t(order[size_t(i)]), b = size_t(order[size_t(i + 1)]);
      one[b] = one[a] - 2e-6f;
      if (other) (*other)[b] = one[a] - 1e-6f, (*other)[a] = one[a] - 3e-6f;
    }
  };
  std::vector<float> logits = base, nudged = base;
  near_ties({0, 3, 7}, logits, &nudged);
  std::uniform_real_distribution<float> jitter(-1e-6f, 1e-6f);
  for (auto& l : nudged) l += jitter(rng);
  Sampler s(V), t(V);
  s.prepare(logits.data(), p, {}, 0, {});
  t.prepare(nudged.data(), p, {}, 0, {});
  const uint64_t seed = rng();
  Rng ra(seed), rb(seed);
  int moved = 0, close = 0;
  for (int i = 0; i < N; ++i) {
    double ma = 0, mb = 0;
    const int32_t x = s.pick(ra, &ma), y = t.pick(rb, &mb);
    close += std::min(ma, mb) < 1e-3;
    if (x == y) continue;
    ++moved;
    EXPECT_LT(std::min(ma, mb), 1e-3) << "draw " << i << ": token " << x << " became " << y << " far from any boundary";
  }
  EXPECT_LE(moved, N / 100);
  EXPECT_LT(close, N / 10) << "the margins flag most draws: the check above says little";
  // A near-tie at the top-k cut: which of the two is a candidate may flip, so every draw is close.
  logits = base;
  near_ties({p.top_k - 1}, logits, nullptr);
  auto first_margin = [&](const std::vector<float>& l) {
    s.prepare(l.data(), p, {}, 0, {});
    Rng r(seed);
    double m = 0;
    s.pick(r, &m);
    return m;
  };
  EXPECT_GT(first_margin(base), 1e-6) << "no near-tie at the top-k cut";
  EXPECT_LT(first_margin(logits), 1e-5) << "the near-tie at the top-k cut";
  // A near-tie at the top-p cut: top_p halfway into candidate 5's mass keeps 0-5 and cuts 6, its
  // near-twin, with both cut conditions themselves far from tight.
  logits = base;
  near_ties({5}, logits, nullptr);
  auto weight = [&](int i) { return std::exp(double(logits[size_t(order[size_t(i)])] - logits[size_t(order[0])])); };
  double z = 0, head = 0;
  for (int i = 0; i < p.top_k; ++i) z += weight(i);
  for (int i = 0; i < 5; ++i) head += weight(i) / z;
  p.top_p = float(head + 0.5 * weight(5) / z);
  EXPECT_GT(first_margin(base), 1e-6) << "no near-tie at the top-p cut";
  EXPECT_LT(first_margin(logits), 1e-5) << "the near-tie at the top-p cut";
}

TEST(Sampler, LogprobsAreLogSoftmaxOfTheRawLogits) {
  std::mt19937_64 rng(test::fresh_seed());
  auto logits = test::random_floats(rng, 1000, 3.0f);
  std::vector<TopLogprob> top(20);
  const float lp = Sampler::logprobs(logits.data(), 1000, 17, 20, top.data());
  double mx = *std::max_element(logits.begin(), logits.end()), sum = 0;
  for (float l : logits) sum += std::exp(double(l) - mx);
  const double lse = mx + std::log(sum);
  EXPECT_NEAR(lp, logits[17] - lse, 1e-5);
  std::vector<int> order(1000);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[size_t(a)] > logits[size_t(b)]; });
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(top[size_t(i)].token, order[size_t(i)]);
    EXPECT_NEAR(top[size_t(i)].logprob, logits[size_t(order[size_t(i)])] - lse, 1e-5);
  }
}

TEST(Sampler, LargeVocabularyTopPWithoutTopK) {
  // 200k tokens with a peaked distribution: the top-p head is found without sorting everything.
  std::mt19937_64 rng(test::fresh_seed());
  const int V = 200064;
  auto logits = test::random_floats(rng, V, 1.0f);
  for (int i = 0; i < 50; ++i) logits[size_t(rng() % V)] += 12.0f;
  SamplingParams p;
  p.top_p = 0.95f;
  Sampler s(V);
  s.prepare(logits.data(), p, {}, 0, {});
  auto want = reference_probs(logits, p, {}, 0);
  double err = 0;
  for (int t = 0; t < V; ++t) err = std::max(err, std::fabs(s.prob(t) - want[size_t(t)]));
  EXPECT_LT(err, 1e-6);
}

TEST(SamplingParams, ValidationNamesTheParameter) {
  auto expect_bad = [](auto f, const char* name) {
    SamplingParams p;
    f(p);
    try {
      p.validate(100);
      ADD_FAILURE() << name << " accepted";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  };
  expect_bad([](SamplingParams& p) { p.temperature = -1; }, "temperature");
  expect_bad([](SamplingParams& p) { p.temperature = NAN; }, "temperature");
  expect_bad([](SamplingParams& p) { p.top_p = 0; }, "top_p");
  expect_bad([](SamplingParams& p) { p.top_p = 1.5f; }, "top_p");
  expect_bad([](SamplingParams& p) { p.top_k = -2; }, "top_k");
  expect_bad([](SamplingParams& p) { p.min_p = 2; }, "min_p");
  expect_bad([](SamplingParams& p) { p.presence_penalty = 3; }, "presence_penalty");
  expect_bad([](SamplingParams& p) { p.frequency_penalty = -3; }, "frequency_penalty");
  expect_bad([](SamplingParams& p) { p.repetition_penalty = 0; }, "repetition_penalty");
  expect_bad([](SamplingParams& p) { p.max_tokens = -1; }, "max_tokens");
  expect_bad([](SamplingParams& p) { p.min_tokens = 20; }, "min_tokens");
  expect_bad([](SamplingParams& p) { p.logprobs = 21; }, "logprobs");
  expect_bad([](SamplingParams& p) { p.stop_token_ids = {100}; }, "stop_token_ids");
  expect_bad([](SamplingParams& p) { p.stop = {""}; }, "stop");
}

TEST(GenerationConfig, DefaultsAndEosIdsFromTheFile) {
  test::TempDir dir;
  ModelConfig c;
  c.vocab_size = 1000;
  c.eos_token_id = 2;
  auto g = GenerationConfig::load(dir.path, c);
  EXPECT_FALSE(g.found);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{2}));
  EXPECT_EQ(g.defaults.temperature, 1.0f);
  std::ofstream(dir.path / "generation_config.json")
      << R"({"do_sample": true, "temperature": 0.6, "top_p": 0.95, "top_k": 40, "eos_token_id": [7, 9], "max_new_tokens": 50})";
  g = GenerationConfig::load(dir.path, c);
  EXPECT_TRUE(g.found);
  EXPECT_FLOAT_EQ(g.defaults.temperature, 0.6f);
  EXPECT_FLOAT_EQ(g.defaults.top_p, 0.95f);
  EXPECT_EQ(g.defaults.top_k, 40);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{7, 9}));
  EXPECT_EQ(g.max_new_tokens, 50);
  for (const char* bad : {R"({"temperature": "hot"})", R"({"eos_token_id": [1, "x"]})", R"({"eos_token_id": 5000})",
                          R"({"top_p": 7})", "[1]", "{"}) {
    std::ofstream(dir.path / "generation_config.json", std::ios::trunc) << bad;
    EXPECT_THROW(GenerationConfig::load(dir.path, c), FormatError) << bad;
  }
}

TEST(Ngram, ProposesWhatFollowedTheLatestLongestMatch) {
  NgramOptions o{4, 3, 1};
  int32_t out[8];
  // The last 3 tokens "0 2 3" occur nowhere earlier; "2 3" does, latest at index 7, followed by 5 6 7 8.
  std::vector<int32_t> h = {1, 2, 3, 9, 9, 4, 1, 2, 3, 5, 6, 7, 8, 0, 2, 3};
  ASSERT_EQ(propose_ngram(h, o, 8, out), 4);
  EXPECT_EQ(std::vector<int32_t>(out, out + 4), (std::vector<int32_t>{5, 6, 7, 8}));
  EXPECT_EQ(propose_ngram(h, o, 2, out), 2);  // capped by the caller
  std::vector<int32_t> h2 = {1, 2, 3, 4, 7, 2, 3, 4};  // "2 3 4" of length 3 matches at 1 → 7 2 3 4
  ASSERT_EQ(propose_ngram(h2, o, 8, out), 4);
  EXPECT_EQ(std::vector<int32_t>(out, out + 4), (std::vector<int32_t>{7, 2, 3, 4}));
  std::vector<int32_t> none = {1, 2, 3, 4};
  EXPECT_EQ(propose_ngram(none, o, 8, out), 0);
  o.k = 0;
  EXPECT_EQ(propose_ngram(h, o, 8, out), 0);
}

}  // namespace
}  // namespace m2
