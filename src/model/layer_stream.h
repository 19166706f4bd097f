// Sequences through the model one layer at a time: every sequence goes through layer 0, then every
// sequence through layer 1, and so on, with the hidden states of all of them kept between layers
// and one layer's KV (F32, reused by every layer). Each layer's weights are read once per pass, and
// with `release` its pages are dropped afterwards, so a model larger than memory can be run.
// Calibration observes activations through the model's activation_hook; streaming evaluation asks
// for logits at the end.
#pragma once
#include <memory>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"
#include "model/model.h"

namespace m2 {

class LayerStream {
 public:
  // Sequences of up to `max_len` tokens, run in chunks of `chunk` tokens.
  LayerStream(const ModelWeights& weights, Backend& backend, int64_t max_len, int64_t chunk = 256);
  ~LayerStream();

  Model& model() { return *model_; }

  // The sequences of the next pass (copied); hidden states are sized for them.
  void set_sequences(std::vector<std::vector<int32_t>> seqs);
  const std::vector<std::vector<int32_t>>& sequences() const { return seqs_; }
  int64_t tokens() const { return tokens_; }
  // F32 [tokens, hidden]: the sequences' hidden states, back to back (host memory).
  std::vector<float>& hidden() { return hidden_; }

  void embed();
  // Every sequence through layer l, chunk by chunk in order; then the layer's checkpoint pages are
  // released when `release`. During the pass, row() is the first row (of hidden()) of the chunk
  // being run, for activation hooks.
  void layer(int l, bool release);
  int64_t row() const { return row_; }
  // Logits of positions [at, at + n) of sequence i (n ≤ chunk): out F32 [n, vocab] (host memory).
  void logits(size_t i, int64_t at, int64_t n, float* out);
  int64_t chunk() const { return chunk_; }

  // Bytes a pass over `tokens` tokens keeps in hidden states.
  size_t hidden_bytes(int64_t tokens) const;

 private:
  template <typename Fn>
  void each_chunk(size_t first_seq, size_t last_seq, LogitsFor which, Fn&& fn);

  const ModelWeights& w_;
  Backend& be_;
  int64_t max_len_, chunk_;
  std::unique_ptr<Model> model_;
  std::vector<Buffer> kv_storage_;  // K and V of one layer: [blocks, 16, kv_dim] each
  PagedKv kv_;
  std::vector<int32_t> block_table_;
  std::vector<std::vector<int32_t>> seqs_;
  std::vector<int64_t> offsets_;    // [sequences + 1] first row of each sequence
  std::vector<float> hidden_;
  int64_t tokens_ = 0, row_ = 0;
  std::vector<int32_t> positions_;
  std::vector<int64_t> slots_;
};

}  // namespace m2
