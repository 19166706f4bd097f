#include "model/layer_stream.h"

#include <fmt/format.h>

#include "core/error.h"

namespace m2 {

namespace {
constexpr int kBlock = 16;
}

LayerStream::LayerStream(const ModelWeights& w, Backend& be, int64_t max_len, int64_t chunk)
    : w_(w), be_(be), max_len_(max_len), chunk_(chunk) {
  const ModelConfig& c = w.config;
  if (be.device() != Device::Cpu) fail<InvalidArgument>("layer stream: hidden states live in host memory: a CPU backend is needed");
  if (max_len <= 0 || chunk <= 0) fail<InvalidArgument>("layer stream: max_len {} and chunk {} must be positive", max_len, chunk);
  if (max_len > c.max_position_embeddings)
    fail<InvalidArgument>("sequences of {} tokens exceed the model's max_position_embeddings = {}", max_len,
                          c.max_position_embeddings);
  ModelLimits lim;
  lim.max_tokens = std::min(chunk, max_len);
  lim.max_seqs = 1;
  lim.max_logit_rows = lim.max_tokens;
  lim.max_context = max_len;
  model_ = std::make_unique<Model>(w, be, lim, kBlock);
  const int64_t blocks = (max_len + kBlock - 1) / kBlock;
  const size_t bytes = size_t(blocks * kBlock * c.kv_dim()) * 4;
  kv_storage_.emplace_back(be, bytes);
  kv_storage_.emplace_back(be, bytes);
  kv_ = PagedKv{DType::F32, kBlock, blocks, c.kv_dim(), {}};
  kv_.layers.push_back({kv_storage_[0].view(DType::F32, {blocks, kBlock, c.kv_dim()}),
                        kv_storage_[1].view(DType::F32, {blocks, kBlock, c.kv_dim()}), 1.0f, 1.0f});
  block_table_.resize(size_t(blocks));
  for (size_t i = 0; i < block_table_.size(); ++i) block_table_[i] = int32_t(i);
  positions_.resize(size_t(lim.max_tokens));
  slots_.resize(size_t(lim.max_tokens));
}

LayerStream::~LayerStream() = default;

size_t LayerStream::hidden_bytes(int64_t tokens) const { return size_t(tokens) * size_t(w_.config.hidden_size) * 4; }

void LayerStream::set_sequences(std::vector<std::vector<int32_t>> seqs) {
  offsets_.assign(1, 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto& s = seqs[i];
    if (s.empty() || int64_t(s.size()) > max_len_)
      fail<InvalidArgument>("layer stream: sequence {} has {} tokens (expected 1 .. {})", i, s.size(), max_len_);
    for (size_t j = 0; j < s.size(); ++j)
      if (s[j] < 0 || s[j] >= w_.config.vocab_size)
        fail<InvalidArgument>("sequence {} token {} is {}, outside the vocabulary [0, {})", i, j, s[j], w_.config.vocab_size);
    offsets_.push_back(offsets_.back() + int64_t(s.size()));
  }
  seqs_ = std::move(seqs);
  tokens_ = offsets_.back();
  hidden_.assign(size_t(tokens_ * w_.config.hidden_size), 0.0f);
}

template <typename Fn>
void LayerStream::each_chunk(size_t first_seq, size_t last_seq, LogitsFor which, Fn&& fn) {
  const int64_t H = w_.config.hidden_size;
  for (size_t i = first_seq; i < last_seq; ++i) {
    const auto& s = seqs_[i];
    for (int64_t at = 0; at < int64_t(s.size()); at += chunk_) {
      const int64_t n = std::min<int64_t>(chunk_, int64_t(s.size()) - at);
      for (int64_t k = 0; k < n; ++k) positions_[size_t(k)] = int32_t(at + k), slots_[size_t(k)] = at + k;
      const SequenceStep step{n, at + n, block_table_, which};
      model_->stage(ForwardBatch{std::span<const int32_t>(s.data() + at, size_t(n)), std::span(positions_.data(), size_t(n)),
                                 std::span(slots_.data(), size_t(n)), {&step, 1}},
                    kv_);
      row_ = offsets_[i] + at;
      fn(TensorView(hidden_.data() + row_ * H, DType::F32, {n, H}), at, n);  // [n, hidden]
    }
  }
}

void LayerStream::embed() {
  each_chunk(0, seqs_.size(), LogitsFor::None, [&](const TensorView& h, int64_t, int64_t) { model_->embed(h); });
}

void LayerStream::layer(int l, bool release) {
  each_chunk(0, seqs_.size(), LogitsFor::None, [&](const TensorView& h, int64_t, int64_t) { model_->layer(l, kv_, 0, h); });
  if (release) w_.checkpoint->release(fmt::format("model.layers.{}.", l));
}

void LayerStream::logits(size_t i, int64_t at, int64_t n, float* out) {
  if (i >= seqs_.size()) fail<InvalidArgument>("layer stream: sequence {} of {}", i, seqs_.size());
  const int64_t len = int64_t(seqs_[i].size());
  if (at < 0 || n <= 0 || n > chunk_ || at + n > len)
    fail<InvalidArgument>("layer stream: logits of rows [{}, {}) of a {}-token sequence (at most {} rows)", at, at + n, len, chunk_);
  const int64_t H = w_.config.hidden_size;
  for (int64_t k = 0; k < n; ++k) positions_[size_t(k)] = int32_t(at + k), slots_[size_t(k)] = at + k;
  const SequenceStep step{n, at + n, block_table_, LogitsFor::All};
  const auto& s = seqs_[i];
  model_->stage(ForwardBatch{std::span<const int32_t>(s.data() + at, size_t(n)), std::span(positions_.data(), size_t(n)),
                             std::span(slots_.data(), size_t(n)), {&step, 1}},
                kv_);
  model_->logits(TensorView(hidden_.data() + (offsets_[i] + at) * H, DType::F32, {n, H}), out);  // [n, hidden] → [n, vocab]
}

}  // namespace m2
