// Per-token quality metrics of a model's next-token distributions, alone (NLL → perplexity) or
// against a reference's (KL divergence, top-1 agreement, Δp), accumulated token by token so that
// no full-vocabulary logits are kept; and their summary statistics.
#pragma once
#include <cstdint>
#include <vector>

namespace m2 {

// One position: logits rows [vocab] of the model (q) and, optionally, the reference (r), and the
// token that came next.
struct TokenScore {
  double nll = 0;      // −log q(next)
  double ref_nll = 0;  // −log r(next)
  double kld = 0;      // KL(r ‖ q) = Σ r (log r − log q)
  bool top1 = false;   // argmax q == argmax r (ties: the lower id)
  double dp = 0;       // q(next) − r(next)
};
// Scores one position in double precision. `r` may be null (then only nll is set).
TokenScore score_token(const float* q, const float* r, int64_t vocab, int32_t next);

// Percentile of `v` (linear interpolation between order statistics; p in [0, 100]); v is sorted in place.
double percentile(std::vector<double>& v, double p);

struct EvalSummary {
  int64_t tokens = 0;
  bool has_ref = false;
  double ppl = 0, ref_ppl = 0;
  double ppl_delta_pct = 0;      // (ppl / ref_ppl − 1) × 100
  double ln_ppl_ratio = 0;       // mean (nll − ref_nll)
  double kld_mean = 0, kld_median = 0, kld_p90 = 0, kld_p95 = 0, kld_p99 = 0, kld_max = 0;
  double kld_gt1 = 0;            // share of tokens with KLD > 1
  double top1 = 0;               // share of tokens whose argmax agrees
  double dp_mean = 0, dp_rms = 0, dp_min = 0, dp_p1 = 0, dp_p5 = 0, dp_median = 0, dp_p95 = 0, dp_p99 = 0, dp_max = 0;
};

// Collects TokenScores (a few doubles per token) and summarises them.
class EvalAccumulator {
 public:
  explicit EvalAccumulator(bool has_ref) : has_ref_(has_ref) {}
  void add(const TokenScore& s);
  int64_t tokens() const { return int64_t(nll_.size()); }
  EvalSummary summary() const;

 private:
  bool has_ref_;
  std::vector<double> nll_, ref_nll_, kld_, dp_;
  int64_t top1_ = 0;
};

}  // namespace m2
