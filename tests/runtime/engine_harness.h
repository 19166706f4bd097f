// Running requests through an Engine to completion, and comparing two runs token by token where a
// different batch composition may legitimately flip a near-tie.
#pragma once
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace m2::test {

// What a request ended with.
struct Outcome {
  std::vector<int32_t> tokens;
  std::string text, streamed;  // final text, and the concatenation of the released deltas
  std::vector<float> margins;
  std::vector<TokenLogprobs> logprobs;
  FinishReason finish = FinishReason::None;
  std::string stop_reason;
  int64_t cached_tokens = 0, preemptions = 0, spec_drafted = 0, spec_accepted = 0;
  int outputs = 0;
};

inline std::vector<Outcome> run_to_completion(Engine& e, std::vector<Request> reqs, int max_steps = 100000) {
  std::vector<Outcome> out(reqs.size());
  std::map<uint64_t, size_t> index;
  for (size_t i = 0; i < reqs.size(); ++i) index[e.add_request(std::move(reqs[i]))] = i;
  for (int step = 0; e.has_work(); ++step) {
    if (step == max_steps) {
      ADD_FAILURE() << "requests did not finish in " << max_steps << " steps";
      break;
    }
    for (const StepOutput& o : e.step()) {
      auto it = index.find(o.id());
      if (it == index.end()) continue;
      Outcome& r = out[it->second];
      ++r.outputs;
      for (int32_t t : o.new_tokens()) r.tokens.push_back(t);
      r.streamed += o.text;
      if (o.finished) {
        const Sequence& s = *o.seq;
        EXPECT_EQ(std::vector<int32_t>(s.generated().begin(), s.generated().end()), r.tokens);
        r.text = s.text;
        r.margins = s.margins;
        r.logprobs = s.logprobs;
        r.finish = s.finish;
        r.stop_reason = s.stop_reason;
        r.cached_tokens = s.cached_tokens;
        r.preemptions = s.preemptions;
        r.spec_drafted = s.spec_drafted;
        r.spec_accepted = s.spec_accepted;
      }
    }
  }
  return out;
}

// A decision within this margin of flipping may come out differently when the same sequence runs
// in another batch (the kernels sum in another order: logits differ by ~1e-6 relative).
constexpr float kNearTie = 1e-3f;

// The same tokens; or, where they first differ, a decision that was a near-tie in one of the runs.
// Returns true when a near-tie explained a difference.
inline bool expect_same_tokens(const Outcome& got, const Outcome& want, const std::string& what) {
  const size_t n = std::min(got.tokens.size(), want.tokens.size());
  for (size_t i = 0; i < n; ++i) {
    if (got.tokens[i] == want.tokens[i]) continue;
    const float m = std::min(i < got.margins.size() ? got.margins[i] : 0.0f, i < want.margins.size() ? want.margins[i] : 0.0f);
    EXPECT_LT(m, kNearTie) << what << ": token " << i << " is " << got.tokens[i] << ", expected " << want.tokens[i]
                           << " (decision margin " << m << ")";
    return true;
  }
  EXPECT_EQ(got.tokens.size(), want.tokens.size()) << what;
  EXPECT_EQ(got.finish, want.finish) << what;
  return false;
}

}  // namespace m2::test
