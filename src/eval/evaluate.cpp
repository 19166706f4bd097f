#include "eval/evaluate.h"

#include "core/error.h"
#include "model/layer_stream.h"

namespace m2 {

std::vector<std::vector<int32_t>> eval_windows(const std::vector<int32_t>& ids, int64_t ctx) {
  if (ctx < 1) fail<InvalidArgument>("--ctx {}: expected a positive window length", ctx);
  std::vector<std::vector<int32_t>> out;
  for (size_t s = 0; s + 1 < ids.size(); s += size_t(ctx)) {
    const size_t n = std::min(size_t(ctx) + 1, ids.size() - s);
    out.emplace_back(ids.begin() + long(s), ids.begin() + long(s + n));
  }
  return out;
}

namespace {

// Runs every layer of `stream` over its sequences.
void run_layers(LayerStream& stream, bool release, const std::function<void()>& after_layer) {
  stream.embed();
  for (int l = 0; l < stream.model().config().num_layers; ++l) {
    stream.layer(l, release);
    after_layer();
  }
}

}  // namespace

EvalSummary evaluate(const ModelWeights& q, const ModelWeights* r, Backend& be, const std::vector<int32_t>& ids,
                     const EvalOptions& o) {
  const int64_t V = q.config.vocab_size;
  if (r && r->config.vocab_size != V)
    fail<InvalidArgument>("the model's vocabulary has {} ids, the reference's {}: they must share a tokenizer", V,
                          r->config.vocab_size);
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= V) fail<InvalidArgument>("token {} at position {} is outside the vocabulary [0, {})", ids[i], i, V);
  const auto windows = eval_windows(ids, o.ctx);
  if (windows.empty()) fail<InvalidArgument>("{} tokens: at least 2 are needed to score one", ids.size());
  const int64_t len = std::min<int64_t>(o.ctx + 1, int64_t(ids.size()));
  LayerStream sq(q, be, len, o.chunk);
  std::unique_ptr<LayerStream> sr = r ? std::make_unique<LayerStream>(*r, o.ref_backend ? *o.ref_backend : be, len, o.chunk) : nullptr;
  const int64_t L = q.config.num_layers + (r ? r->config.num_layers : 0);
  const int64_t total = int64_t(windows.size()) * L;
  int64_t done = 0;
  auto tick = [&] {
    ++done;
    if (o.progress) o.progress(done, total, o.streaming ? "layers" : "windows");
  };
  std::vector<float> lq(size_t(o.chunk * V)), lr(r ? lq.size() : 0);  // [chunk, vocab] each
  EvalAccumulator acc(r != nullptr);
  // Scores window i's rows once both streams hold its final hidden states.
  auto score = [&](size_t stream_index, const std::vector<int32_t>& w) {
    const int64_t n = int64_t(w.size()) - 1;  // rows with a next token
    for (int64_t at = 0; at < n; at += o.chunk) {
      const int64_t k = std::min(o.chunk, n - at);
      sq.logits(stream_index, at, k, lq.data());
      if (sr) sr->logits(stream_index, at, k, lr.data());
      for (int64_t j = 0; j < k; ++j)
        acc.add(score_token(lq.data() + j * V, sr ? lr.data() + j * V : nullptr, V, w[size_t(at + j + 1)]));
    }
  };
  if (o.streaming) {
    // Every window through layer 0, then layer 1, ...: one layer of each model resident at a time.
    sq.set_sequences(windows);
    run_layers(sq, true, [&] { done += int64_t(windows.size()) - 1, tick(); });
    if (sr) {
      sr->set_sequences(windows);
      run_layers(*sr, true, [&] { done += int64_t(windows.size()) - 1, tick(); });
    }
    for (size_t i = 0; i < windows.size(); ++i) score(i, windows[i]);
  } else {
    for (const auto& w : windows) {
      sq.set_sequences({w});
      run_layers(sq, false, tick);
      if (sr) {
        sr->set_sequences({w});
        run_layers(*sr, false, tick);
      }
      score(0, w);
    }
  }
  return acc.summary();
}

}  // namespace m2
