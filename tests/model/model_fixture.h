// Loading a fixture checkpoint with its HF reference outputs, and running prompts through the model and
// its paged KV cache directly (the engine's tests drive the runtime instead).
#pragma once
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "io/config.h"
#include "model/model.h"
#include "runtime/kv_cache.h"
#include "test_util.h"

namespace m2::test {

inline const std::vector<std::string> kAllFixtures = {
    "tiny-bf16",  "tiny-fp8",  "tiny-nvfp4-modelopt",  "tiny-nvfp4-ct",  "tiny-mxfp4-ct",
    "small-bf16", "small-fp8", "small-nvfp4-modelopt", "small-nvfp4-ct", "small-mxfp4-ct"};

// One sequence's place in the paged cache.
struct KvSeq {
  std::vector<int32_t> blocks;
  int64_t length = 0;
};

struct LoadOptions {
  LinearPath path = LinearPath::Auto;
  DType kv_dtype = DType::F32;
  int block_size = 16;
  int64_t num_blocks = 512;
  int64_t max_tokens = 1100;  // rows of one step (and of logits)
  int64_t max_seqs = 8;
  int threads = 2;
  ShardSpec shard;                     // a distributed shard (tests/dist), with its collectives
  Collectives* collectives = nullptr;
};

struct Loaded {
  ModelWeights weights;
  std::unique_ptr<CpuBackend> backend;
  std::unique_ptr<Model> model;
  std::unique_ptr<KvCache> kv;

  explicit Loaded(const std::filesystem::path& dir, const LoadOptions& o = {})
      : weights(ModelWeights::load(dir)), backend(std::make_unique<CpuBackend>(o.threads, o.path)) {
    ModelLimits limits;
    limits.max_tokens = o.max_tokens;
    limits.max_seqs = o.max_seqs;
    limits.max_logit_rows = o.max_tokens;
    limits.max_context = std::min<int64_t>(weights.config.max_position_embeddings, o.num_blocks * o.block_size);
    model = std::make_unique<Model>(weights, *backend, limits, o.block_size, o.shard, o.collectives);
    KvCacheOptions ko;
    ko.dtype = o.kv_dtype;
    ko.block_size = o.block_size;
    ko.num_blocks = o.num_blocks;
    ko.enable_prefix_caching = false;
    kv = std::make_unique<KvCache>(*backend, weights.config, model->weights(), ko, dir.string());
  }

  // Runs every sequence's new tokens as one step (prefill and decode alike), appending them to the
  // sequences. Logits: All → [Σ tokens, vocab]; Last → [sequences, vocab].
  std::vector<float> step(std::vector<std::pair<KvSeq*, std::span<const int32_t>>> batch, LogitsFor which) {
    const int bs = model->kv_block_size();
    std::vector<int32_t> tokens, positions;
    std::vector<int64_t> slots;
    std::vector<SequenceStep> steps;
    for (auto& [seq, ids] : batch) {
      const int64_t context = seq->length + int64_t(ids.size());
      const int64_t need = (context + bs - 1) / bs - int64_t(seq->blocks.size());
      if (need > 0 && !kv->blocks().allocate(need, seq->blocks)) throw std::runtime_error("test KV cache is full");
      for (size_t i = 0; i < ids.size(); ++i) {
        const int64_t pos = seq->length + int64_t(i);
        tokens.push_back(ids[i]);
        positions.push_back(int32_t(pos));
        slots.push_back(int64_t(seq->blocks[size_t(pos / bs)]) * bs + pos % bs);
      }
    }
    for (auto& [seq, ids] : batch)
      steps.push_back({int64_t(ids.size()), seq->length + int64_t(ids.size()), seq->blocks, which});
    ForwardBatch fb{tokens, positions, slots, steps};
    std::vector<float> logits(size_t(fb.logit_rows()) * size_t(weights.config.vocab_size));
    model->forward(fb, kv->view(), logits.data());
    for (auto& [seq, ids] : batch) seq->length += int64_t(ids.size());
    return logits;
  }
  std::vector<float> step(KvSeq& seq, std::span<const int32_t> ids, LogitsFor which) {
    return step({{&seq, ids}}, which);
  }
  void release(KvSeq& seq) {
    kv->blocks().release(seq.blocks);
    seq = {};
  }

  // Logits of every prompt position from one prefill: [T, vocab].
  std::vector<float> prefill(const std::vector<int32_t>& ids) {
    KvSeq s;
    auto logits = step(s, ids, LogitsFor::All);
    release(s);
    return logits;
  }

  std::vector<int32_t> greedy(const std::vector<int32_t>& prompt, int n) {
    KvSeq s;
    std::vector<int32_t> out;
    auto logits = step(s, prompt, LogitsFor::Last);
    for (int i = 0; i < n; ++i) {
      out.push_back(int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()));
      if (i + 1 == n) break;
      logits = step(s, std::span<const int32_t>(&out.back(), 1), LogitsFor::Last);
    }
    release(s);
    return out;
  }
};

}  // namespace m2::test
