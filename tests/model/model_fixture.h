// Loading a fixture checkpoint with its HF reference outputs, and running prompts through the model.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "io/config.h"
#include "model/model.h"
#include "test_util.h"

namespace m2::test {

inline const std::vector<std::string> kAllFixtures = {
    "tiny-bf16",  "tiny-fp8",  "tiny-nvfp4-modelopt",  "tiny-nvfp4-ct",  "tiny-mxfp4-ct",
    "small-bf16", "small-fp8", "small-nvfp4-modelopt", "small-nvfp4-ct", "small-mxfp4-ct"};

struct Loaded {
  ModelWeights weights;
  std::unique_ptr<CpuBackend> backend;
  std::unique_ptr<Model> model;

  explicit Loaded(const std::filesystem::path& dir, LinearPath path = LinearPath::Auto)
      : weights(ModelWeights::load(dir)), backend(std::make_unique<CpuBackend>(2, path)),
        model(std::make_unique<Model>(weights, *backend)) {}

  // Logits of every prompt position from one prefill: [T, vocab].
  std::vector<float> prefill(const std::vector<int32_t>& ids) {
    KvCache cache(weights.config, int64_t(ids.size()) + 1);
    std::vector<float> logits(ids.size() * size_t(weights.config.vocab_size));
    SequenceInput in{&cache, ids};
    model->forward({&in, 1}, LogitsFor::AllTokens, logits.data());
    return logits;
  }

  std::vector<int32_t> greedy(const std::vector<int32_t>& prompt, int n) {
    const int64_t V = weights.config.vocab_size;
    KvCache cache(weights.config, int64_t(prompt.size()) + n);
    std::vector<float> logits(static_cast<size_t>(V));
    std::vector<int32_t> out;
    SequenceInput in{&cache, prompt};
    model->forward({&in, 1}, LogitsFor::LastToken, logits.data());
    for (int i = 0; i < n; ++i) {
      out.push_back(int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()));
      if (i + 1 == n) break;
      SequenceInput step{&cache, {&out.back(), 1}};
      model->forward({&step, 1}, LogitsFor::LastToken, logits.data());
    }
    return out;
  }
};

}  // namespace m2::test
