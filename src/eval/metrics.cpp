#include "eval/metrics.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace m2 {

namespace {

// log Σ exp(x) and the argmax of one row.
double log_sum_exp(const float* x, int64_t n, int32_t* argmax) {
  int32_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = int32_t(i);
  double sum = 0;
  const double mx = x[best];
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(x[i]) - mx);
  *argmax = best;
  return mx + std::log(sum);
}

}  // namespace

TokenScore score_token(const float* q, const float* r, int64_t V, int32_t next) {
  if (next < 0 || next >= V) fail<InvalidArgument>("token {} is outside the vocabulary [0, {})", next, V);
  TokenScore s;
  int32_t aq = 0, ar = 0;
  const double lq = log_sum_exp(q, V, &aq);
  if (!std::isfinite(lq)) fail<ModelError>("the model's logits are not finite (log-sum-exp {})", lq);
  s.nll = lq - double(q[next]);
  if (!r) return s;
  const double lr = log_sum_exp(r, V, &ar);
  if (!std::isfinite(lr)) fail<ModelError>("the reference's logits are not finite (log-sum-exp {})", lr);
  s.ref_nll = lr - double(r[next]);
  double kld = 0;
  for (int64_t i = 0; i < V; ++i) {
    const double log_r = double(r[i]) - lr, log_q = double(q[i]) - lq;
    const double p = std::exp(log_r);
    if (p > 0) kld += p * (log_r - log_q);
  }
  s.kld = std::max(kld, 0.0);  // rounding can leave −1e-17
  s.top1 = aq == ar;
  s.dp = std::exp(-s.nll) - std::exp(-s.ref_nll);
  return s;
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double at = std::clamp(p, 0.0, 100.0) / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(at);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (at - double(lo));
}

void EvalAccumulator::add(const TokenScore& s) {
  nll_.push_back(s.nll);
  if (!has_ref_) return;
  ref_nll_.push_back(s.ref_nll);
  kld_.push_back(s.kld);
  dp_.push_back(s.dp);
  top1_ += s.top1;
}

EvalSummary EvalAccumulator::summary() const {
  EvalSummary m;
  m.tokens = tokens();
  m.has_ref = has_ref_;
  if (m.tokens == 0) return m;
  const double n = double(m.tokens);
  double sum = 0;
  for (double x : nll_) sum += x;
  m.ppl = std::exp(sum / n);
  if (!has_ref_) return m;
  double ref = 0, kld = 0, dp = 0, dp2 = 0;
  int64_t gt1 = 0;
  for (size_t i = 0; i < nll_.size(); ++i) {
    ref += ref_nll_[i];
    kld += kld_[i];
    gt1 += kld_[i] > 1.0;
    dp += dp_[i];
    dp2 += dp_[i] * dp_[i];
  }
  m.ref_ppl = std::exp(ref / n);
  m.ppl_delta_pct = (m.ppl / m.ref_ppl - 1.0) * 100.0;
  m.ln_ppl_ratio = (sum - ref) / n;
  m.kld_mean = kld / n;
  m.kld_gt1 = double(gt1) / n;
  m.top1 = double(top1_) / n;
  m.dp_mean = dp / n;
  m.dp_rms = std::sqrt(dp2 / n);
  std::vector<double> k = kld_, d = dp_;
  m.kld_median = percentile(k, 50);
  m.kld_p90 = percentile(k, 90);
  m.kld_p95 = percentile(k, 95);
  m.kld_p99 = percentile(k, 99);
  m.kld_max = k.back();
  m.dp_median = percentile(d, 50);
  m.dp_min = d.front();
  m.dp_p1 = percentile(d, 1);
  m.dp_p5 = percentile(d, 5);
  m.dp_p95 = percentile(d, 95);
  m.dp_p99 = percentile(d, 99);
  m.dp_max = d.back();
  return m;
}

}  // namespace m2
