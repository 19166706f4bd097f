// The engine end to end on the fixtures and the demo model: exact greedy paths through the paged
// cache, chunked prefill and budgets, prefix caching, preemption by recompute, batch independence of
// seeded sampling, aborts, n-gram speculation, stop conditions, log-probabilities, and limits.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <condition_variable>
#include <future>
#include <mutex>
#include <numeric>
#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "model/model_fixture.h"
#include "runtime/async_engine.h"
#include "runtime/engine_harness.h"
#include "text/detokenizer.h"
#include "text/tokenizer.h"

namespace m2 {
namespace {

using test::Outcome;

EngineOptions options(int64_t seqs = 64, int64_t budget = 512, int64_t blocks = 512) {
  EngineOptions o;
  o.max_num_seqs = seqs;
  o.max_num_batched_tokens = budget;
  o.kv.dtype = DType::F32;
  o.kv.block_size = 16;
  o.kv.num_blocks = blocks;
  o.record_decision_margins = true;
  return o;
}

Request greedy(std::vector<int32_t> prompt, int max_tokens) {
  Request r;
  r.prompt = std::move(prompt);
  r.params.temperature = 0;
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = true;
  return r;
}

// The demo model, its tokenizer and a backend, loaded once for the suite.
class DemoEngine : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    weights_ = new ModelWeights(ModelWeights::load(test::kDemo));
    tokenizer_ = new Tokenizer(Tokenizer::load(test::kDemo));
    backend_ = new CpuBackend(2);
  }
  static void TearDownTestSuite() {
    delete backend_;
    delete tokenizer_;
    delete weights_;
  }
  std::unique_ptr<Engine> make(EngineOptions o, bool text = false) {
    o.eos_token_ids = {weights_->config.eos_token_id};
    o.checkpoint = test::kDemo.string();
    if (text) o.text_decoder = text_decoder_factory(*tokenizer_);
    return std::make_unique<Engine>(*weights_, *backend_, o);
  }
  std::vector<int32_t> text_ids(size_t offset, size_t n) {
    static const std::vector<int32_t> all = [] {
      SafetensorsFile ref(test::kDemo / "reference-nll.safetensors");
      return test::as_ids(ref.tensors().at("test-prose.input_ids"));
    }();
    return std::vector<int32_t>(all.begin() + long(offset), all.begin() + long(offset + n));
  }
  static ModelWeights* weights_;
  static Tokenizer* tokenizer_;
  static CpuBackend* backend_;
};
ModelWeights* DemoEngine::weights_ = nullptr;
Tokenizer* DemoEngine::tokenizer_ = nullptr;
CpuBackend* DemoEngine::backend_ = nullptr;

class FixtureEngine : public ::testing::TestWithParam<std::string> {};

// Every fixture's greedy continuation through the engine (fp32 KV, paged, block size 16 and 5)
// equals HF's.
TEST_P(FixtureEngine, GreedyContinuationMatchesReference) {
  const auto dir = test::kFixtures / GetParam();
  ModelWeights w = ModelWeights::load(dir);
  SafetensorsFile ref(dir / "reference.safetensors");
  auto prompt = test::as_ids(ref.tensors().at("ref.greedy.prompt"));
  auto want = test::as_ids(ref.tensors().at("ref.greedy.output"));
  CpuBackend be(2);
  for (int bs : {16, 5}) {
    EngineOptions o = options(4, 512, 64);
    o.kv.block_size = bs;
    Engine e(w, be, o);
    auto out = test::run_to_completion(e, {greedy(prompt, int(want.size()))});
    EXPECT_EQ(out[0].tokens, want) << "block size " << bs;
    EXPECT_EQ(e.stats().kv_blocks_used, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, FixtureEngine, ::testing::ValuesIn(test::kAllFixtures), test::ParamName());

TEST_F(DemoEngine, ChunkedPrefillBudgetsGiveTheSameTokens) {
  std::vector<Request> reqs;
  for (size_t n : {5, 40, 130, 300}) reqs.push_back(greedy(text_ids(n * 3, n), 8));
  auto e = make(options(8, 512));
  auto want = test::run_to_completion(*e, reqs);
  for (int64_t budget : {1, 7, 64}) {
    auto e2 = make(options(8, budget));
    auto got = test::run_to_completion(*e2, reqs);
    for (size_t i = 0; i < reqs.size(); ++i) test::expect_same_tokens(got[i], want[i], fmt::format("budget {} request {}", budget, i));
    EXPECT_GT(e2->stats().steps, 300 / budget) << "the prompts were not chunked";
  }
}

TEST_F(DemoEngine, PrefixCacheHitGivesTheSameLogitsAsAMiss) {
  auto prefix = text_ids(0, 100);
  auto extended = prefix;
  for (int32_t t : text_ids(500, 20)) extended.push_back(t);
  auto with_logprobs = [](Request r) {
    r.params.logprobs = 20;
    return r;
  };
  auto cold = make(options());
  auto miss = test::run_to_completion(*cold, {with_logprobs(greedy(extended, 4)), with_logprobs(greedy(prefix, 4))});
  auto warm = make(options());
  test::run_to_completion(*warm, {greedy(prefix, 1)});  // fills the cache
  auto hit = test::run_to_completion(*warm, {with_logprobs(greedy(extended, 4)), with_logprobs(greedy(prefix, 4))});
  EXPECT_EQ(hit[0].cached_tokens, 96);  // 6 full blocks of 16 of the 100-token prefix
  EXPECT_EQ(hit[1].cached_tokens, 96);  // the whole prompt again: its last block is recomputed for logits
  EXPECT_EQ(miss[0].cached_tokens, 0);
  EXPECT_GE(warm->stats().prefix_hit_tokens, 192);
  for (int i = 0; i < 2; ++i) {
    test::expect_same_tokens(hit[size_t(i)], miss[size_t(i)], "prefix hit");
    ASSERT_EQ(hit[size_t(i)].logprobs.size(), miss[size_t(i)].logprobs.size());
    for (size_t t = 0; t < hit[size_t(i)].logprobs.size(); ++t)
      for (int j = 0; j < 20; ++j) {
        const auto& a = hit[size_t(i)].logprobs[t].top[size_t(j)];
        const auto& b = miss[size_t(i)].logprobs[t].top[size_t(j)];
        EXPECT_NEAR(a.logprob, b.logprob, 1e-4) << "request " << i << " token " << t << " alternative " << j;
      }
  }
  EXPECT_EQ(warm->stats().kv_blocks_used, 0);
  EXPECT_GT(warm->stats().kv_blocks_cached, 0);
}

// Seeded sampling with a mix of parameters, for the batch and preemption tests.
std::vector<Request> mixed_requests(std::mt19937_64& rng, const std::function<std::vector<int32_t>(size_t, size_t)>& ids,
                                    int n, int max_tokens, int max_prompt) {
  std::vector<Request> reqs;
  for (int i = 0; i < n; ++i) {
    Request r = greedy(ids(size_t(rng() % 2000), size_t(1 + rng() % uint64_t(max_prompt))), max_tokens);
    switch (i % 4) {
      case 0: break;  // greedy
      case 1: r.params.temperature = 0.8f; break;
      case 2: r.params.temperature = 1.0f; r.params.top_k = 20; r.params.top_p = 0.9f; break;
      case 3: r.params.temperature = 0.7f; r.params.min_p = 0.05f; r.params.repetition_penalty = 1.2f;
              r.params.frequency_penalty = 0.3f; break;
    }
    r.params.seed = rng();
    reqs.push_back(std::move(r));
  }
  return reqs;
}

TEST_F(DemoEngine, SixtyFourSequencesOfMixedLengthsGetWhatEachGetsAlone) {
  std::mt19937_64 rng(test::fresh_seed());
  auto reqs = mixed_requests(rng, [&](size_t o, size_t n) { return text_ids(o, n); }, 64, 12, 200);
  auto e = make(options(64, 256));
  auto together = test::run_to_completion(*e, reqs);
  int excused = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto alone_engine = make(options(1, 256, 64));
    auto alone = test::run_to_completion(*alone_engine, {reqs[i]});
    excused += test::expect_same_tokens(together[i], alone[0], fmt::format("request {}", i));
  }
  EXPECT_LE(excused, 2) << "too many near-ties";
  EXPECT_EQ(e->stats().kv_blocks_used, 0);
}

TEST_F(DemoEngine, PreemptionByRecomputeKeepsEveryRequestsTokens) {
  std::mt19937_64 rng(test::fresh_seed());
  auto reqs = mixed_requests(rng, [&](size_t o, size_t n) { return text_ids(o, n); }, 8, 60, 60);
  auto roomy = make(options(8, 128));
  auto want = test::run_to_completion(*roomy, reqs);
  // 16 blocks of 16 = 256 tokens for 8 requests of up to 120: they cannot all be resident.
  auto tight = make(options(8, 128, 16));
  auto got = test::run_to_completion(*tight, reqs);
  EXPECT_GT(tight->stats().preemptions, 0);
  int64_t preempted = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    test::expect_same_tokens(got[i], want[i], fmt::format("request {}", i));
    EXPECT_EQ(got[i].finish, FinishReason::Length);
    preempted += got[i].preemptions;
  }
  EXPECT_EQ(preempted, tight->stats().preemptions);
  EXPECT_EQ(tight->stats().kv_blocks_used, 0);
}

TEST_F(DemoEngine, AbortFreesEveryBlockAtOnce) {
  auto e = make(options(4, 64, 64));
  std::vector<uint64_t> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(e->add_request(greedy(text_ids(size_t(i) * 50, 90), 40)));
  for (int s = 0; s < 4; ++s) e->step();  // some running (mid-prefill or decoding), some waiting
  ASSERT_GT(e->stats().kv_blocks_used, 0);
  ASSERT_GT(e->stats().waiting, 0);
  for (uint64_t id : ids) e->abort(id);
  EXPECT_EQ(e->stats().kv_blocks_used, 0);  // before any further step
  EXPECT_EQ(e->stats().running + e->stats().waiting, 0);
  int finished = 0;
  for (const StepOutput& o : e->step()) {
    EXPECT_TRUE(o.finished);
    EXPECT_EQ(o.seq->finish, FinishReason::Abort);
    ++finished;
  }
  EXPECT_EQ(finished, 6);
  EXPECT_FALSE(e->has_work());
  e->step();
  EXPECT_EQ(e->find(ids[0]), nullptr);  // forgotten after being reported
  EXPECT_EQ(e->kv_cache().blocks().num_free(), e->kv_cache().blocks().num_blocks());
  e->abort(ids[0]);  // unknown ids are ignored
  EXPECT_FALSE(e->has_work());
}

// Copy-heavy work: the prompt holds a passage, then its first half again; the model goes on copying.
TEST_F(DemoEngine, SpeculativeGreedyIsTokenForTokenTheNonSpeculativeOutput) {
  std::vector<Request> reqs;
  for (size_t at : {0, 700, 1400}) {
    auto passage = text_ids(at, 120);
    auto prompt = passage;
    prompt.insert(prompt.end(), passage.begin(), passage.begin() + 40);
    reqs.push_back(greedy(prompt, 60));
  }
  auto plain = make(options(4, 256));
  auto want = test::run_to_completion(*plain, reqs);
  for (int k : {1, 4}) {
    EngineOptions o = options(4, 256);
    o.ngram.k = k;
    auto spec = make(o);
    auto got = test::run_to_completion(*spec, reqs);
    for (size_t i = 0; i < reqs.size(); ++i) {
      test::expect_same_tokens(got[i], want[i], fmt::format("k {} request {}", k, i));
      EXPECT_GT(got[i].spec_drafted, 0);
    }
    EXPECT_GT(spec->stats().spec_accepted, 0);
    EXPECT_LT(spec->stats().steps, plain->stats().steps) << "speculation saved no steps";
    EXPECT_EQ(spec->stats().kv_blocks_used, 0);
  }
}

TEST_F(DemoEngine, SpeculativeSamplingFinishesWithinItsLimits) {
  std::mt19937_64 rng(test::fresh_seed());
  auto reqs = mixed_requests(rng, [&](size_t o, size_t n) { return text_ids(o, n); }, 8, 30, 50);
  EngineOptions o = options(8, 128, 128);
  o.ngram.k = 3;
  auto e = make(o);
  auto got = test::run_to_completion(*e, reqs);
  for (auto& g : got) {
    EXPECT_EQ(g.tokens.size(), 30u);
    EXPECT_EQ(g.finish, FinishReason::Length);
  }
  EXPECT_EQ(e->stats().kv_blocks_used, 0);
}

TEST_F(DemoEngine, StopStringsAcrossTokenBoundariesAreHeldBackAndCut) {
  auto e = make(options(), true);
  Request base = greedy(tokenizer_->encode("The President said that", true), 40);
  auto full = test::run_to_completion(*e, {base})[0];
  ASSERT_GT(full.text.size(), 30u);
  EXPECT_EQ(full.streamed, full.text);
  // A stop string starting inside one token and ending inside a later one.
  std::string pieces;
  size_t boundary = 0;
  for (size_t i = 0; i < 6; ++i) pieces += tokenizer_->decode({full.tokens[i]}, true);
  boundary = pieces.size();
  const std::string stop = full.text.substr(boundary - 2, 5);
  const size_t at = full.text.find(stop);
  for (bool include : {false, true}) {
    Request r = base;
    r.params.stop = {"never appears", stop};
    r.params.include_stop_str_in_output = include;
    auto got = test::run_to_completion(*e, {r})[0];
    EXPECT_EQ(got.finish, FinishReason::Stop);
    EXPECT_EQ(got.stop_reason, stop);
    EXPECT_EQ(got.text, full.text.substr(0, at + (include ? stop.size() : 0)));
    EXPECT_EQ(got.streamed, got.text) << "released text was taken back";
    EXPECT_GT(got.outputs, 2);
  }
}

TEST_F(DemoEngine, StopTokensMinTokensAndLengths) {
  auto e = make(options(), true);
  auto prompt = tokenizer_->encode("The President said that", true);
  auto free_run = test::run_to_completion(*e, {greedy(prompt, 20)})[0];
  // A stop token id: the first generated token that is not the first one.
  Request r = greedy(prompt, 20);
  r.params.stop_token_ids = {free_run.tokens[3]};
  auto got = test::run_to_completion(*e, {r})[0];
  EXPECT_EQ(got.finish, FinishReason::Stop);
  EXPECT_EQ(got.stop_reason, std::to_string(free_run.tokens[3]));
  EXPECT_EQ(got.tokens.back(), free_run.tokens[3]);
  // min_tokens masks it before then.
  r.params.min_tokens = 10;
  got = test::run_to_completion(*e, {r})[0];
  EXPECT_GE(got.tokens.size(), 10u);
  for (size_t i = 0; i < std::min<size_t>(got.tokens.size(), 10); ++i) EXPECT_NE(got.tokens[i], free_run.tokens[3]);
  // A stop token as the very first token: nothing of it reaches the text.
  Request eos = greedy(prompt, 20);
  eos.params.ignore_eos = false;
  eos.params.temperature = 0;
  eos.params.stop_token_ids = {free_run.tokens[0]};
  got = test::run_to_completion(*e, {eos})[0];
  EXPECT_EQ(got.tokens.size(), 1u);
  EXPECT_EQ(got.text, "");  // the stop token's text is not output
  EXPECT_EQ(test::run_to_completion(*e, {greedy(prompt, 7)})[0].tokens.size(), 7u);
  // max_tokens 0 with prompt logits: scored, nothing generated.
  Request score = greedy(prompt, 0);
  score.prompt_logits = true;
  EngineOptions so = options();
  so.max_prompt_logit_rows = 64;
  auto e2 = make(so);
  auto id = e2->add_request(score);
  std::vector<float> logits;
  while (e2->has_work())
    for (const StepOutput& o : e2->step())
      if (o.id() == id && o.finished) {
        EXPECT_EQ(o.seq->num_generated(), 0);
        EXPECT_EQ(o.seq->finish, FinishReason::Length);
        logits = o.seq->prompt_logits;
      }
  test::Loaded m(test::kDemo);
  auto want = m.prefill(prompt);
  ASSERT_EQ(logits.size(), want.size());
  EXPECT_LE(test::rel_err(logits.data(), want.data(), want.size()), 1e-5);
}

TEST_F(DemoEngine, LogprobsAreTheModelsLogSoftmax) {
  auto e = make(options());
  auto prompt = text_ids(10, 30);
  Request r = greedy(prompt, 6);
  r.params.logprobs = 5;
  auto got = test::run_to_completion(*e, {r})[0];
  ASSERT_EQ(got.logprobs.size(), 6u);
  test::Loaded m(test::kDemo);
  auto all = prompt;
  all.insert(all.end(), got.tokens.begin(), got.tokens.end());
  auto logits = m.prefill(all);
  const int64_t V = m.weights.config.vocab_size;
  for (size_t i = 0; i < 6; ++i) {
    const float* l = logits.data() + (prompt.size() - 1 + i) * size_t(V);
    double mx = *std::max_element(l, l + V), sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(l[v]) - mx);
    const double lse = mx + std::log(sum);
    EXPECT_NEAR(got.logprobs[i].logprob, l[got.tokens[i]] - lse, 1e-4);
    EXPECT_EQ(got.logprobs[i].top[0].token, got.tokens[i]);  // greedy: the chosen token is the top one
    EXPECT_EQ(got.logprobs[i].top.size(), 5u);
  }
}

TEST_F(DemoEngine, RequestsAreValidatedAndLimitsEnforced) {
  auto e = make(options(4, 64, 64));  // 1024 tokens of KV: max_model_len 1024
  EXPECT_EQ(e->max_model_len(), 1024);
  auto expect_error = [&](Request r, const char* text) {
    try {
      e->add_request(std::move(r));
      ADD_FAILURE() << "accepted: " << text;
    } catch (const InvalidArgument& err) {
      EXPECT_NE(std::string(err.what()).find(text), std::string::npos) << err.what();
    }
  };
  expect_error(greedy({}, 4), "prompt is empty");
  expect_error(greedy({1, 8192}, 4), "outside the vocabulary");
  expect_error(greedy(text_ids(0, 1000), 30), "maximum context length is 1024 tokens");
  Request bad = greedy({1, 2}, 4);
  bad.params.top_p = 0;
  expect_error(bad, "top_p");
  Request stop = greedy({1, 2}, 4);
  stop.params.stop = {"x"};
  expect_error(stop, "stop strings need a tokenizer");
  EXPECT_FALSE(e->has_work());
  // A KV cache that cannot hold one sequence of max_model_len is refused at start with what fits.
  EngineOptions small = options(4, 64, 8);
  small.max_model_len = 1000;
  try {
    make(small);
    ADD_FAILURE() << "accepted a KV cache smaller than max_model_len";
  } catch (const InvalidArgument& err) {
    EXPECT_NE(std::string(err.what()).find("holds 128 tokens"), std::string::npos) << err.what();
    EXPECT_NE(std::string(err.what()).find("at most 128"), std::string::npos) << err.what();
  }
}

TEST_F(DemoEngine, SeedsReproduceAndDiffer) {
  auto e = make(options());
  Request r = greedy(text_ids(3, 20), 24);
  r.params.temperature = 1.0f;
  r.params.seed = 7;
  auto a = test::run_to_completion(*e, {r, r})[0];
  auto b = test::run_to_completion(*e, {r})[0];
  EXPECT_EQ(a.tokens, b.tokens);
  r.params.seed = 8;
  auto c = test::run_to_completion(*e, {r})[0];
  EXPECT_NE(a.tokens, c.tokens);
}

// Checkpoints pad lm_head past the tokenizer; sampling stays inside sample_vocab, whatever the
// prompt holds and whatever penalties touch.
TEST_F(DemoEngine, SamplingStaysInsideSampleVocab) {
  EngineOptions o = options();
  o.sample_vocab = 300;
  auto e = make(o);
  std::mt19937_64 rng(test::fresh_seed());
  std::vector<Request> reqs;
  for (int i = 0; i < 4; ++i) {
    Request r = greedy(text_ids(size_t(rng() % 1000), 24), 32);  // prompt ids reach far past 300
    r.params.temperature = i == 0 ? 0.0f : 1.5f;
    r.params.repetition_penalty = 1.3f;
    r.params.frequency_penalty = 0.5f;
    r.params.seed = int64_t(rng() % 1000);
    r.params.logprobs = 5;
    reqs.push_back(r);
  }
  bool prompt_past = false;
  for (auto& r : reqs)
    for (int32_t t : r.prompt) prompt_past |= t >= 300;
  ASSERT_TRUE(prompt_past);
  for (const Outcome& g : test::run_to_completion(*e, reqs)) {
    ASSERT_EQ(g.tokens.size(), 32u);
    for (int32_t t : g.tokens) EXPECT_LT(t, 300);
    for (const TokenLogprobs& lp : g.logprobs)
      for (const TopLogprob& top : lp.top) EXPECT_LT(top.token, 300);
  }
  Request forced = greedy(text_ids(0, 4), 4);
  forced.forced_output = {299, 300};
  EXPECT_THROW(e->validate(forced), InvalidArgument);
}

TEST_F(DemoEngine, AsyncEngineServesConcurrentSubmittersAndAborts) {
  std::vector<Request> reqs;
  for (int i = 0; i < 16; ++i) reqs.push_back(greedy(text_ids(size_t(i) * 30, size_t(10 + i)), 12));
  auto sync = make(options(16, 128));
  auto want = test::run_to_completion(*sync, reqs);
  AsyncEngine async(make(options(16, 128)));
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, std::vector<int32_t>> got;
  std::map<uint64_t, FinishReason> finish;
  std::map<uint64_t, std::vector<float>> margins;
  std::vector<uint64_t> ids(reqs.size());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = size_t(t); i < reqs.size(); i += 4)
        ids[i] = async.submit(reqs[i], [&](const StepOutput* o, const std::string& err) {
          ASSERT_NE(o, nullptr) << err;
          std::lock_guard lock(mu);
          for (int32_t x : o->new_tokens()) got[o->id()].push_back(x);
          if (o->finished) {
            finish[o->id()] = o->seq->finish;
            margins[o->id()] = o->seq->margins;
            cv.notify_all();
          }
        });
    });
  for (auto& t : threads) t.join();
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return finish.size() == reqs.size(); }));
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    Outcome o;
    o.tokens = got[ids[i]];
    o.finish = finish[ids[i]];
    o.margins = margins[ids[i]];
    test::expect_same_tokens(o, want[i], fmt::format("request {}", i));
  }
  EXPECT_TRUE(async.wait_idle(std::chrono::seconds(5)));
  // A long request aborted while it runs ends at once with its blocks freed.
  std::promise<FinishReason> done;
  const uint64_t id = async.submit(greedy(text_ids(0, 50), 900), [&](const StepOutput* o, const std::string&) {
    if (o && o->finished) done.set_value(o->seq->finish);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  async.abort(id);
  auto f = done.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(f.get(), FinishReason::Abort);
  EXPECT_TRUE(async.wait_idle(std::chrono::seconds(5)));
  EXPECT_EQ(async.stats().kv_blocks_used, 0);
  EXPECT_THROW(async.submit(greedy({}, 1), nullptr), InvalidArgument);  // validated on the caller's thread
}

}  // namespace
}  // namespace m2
