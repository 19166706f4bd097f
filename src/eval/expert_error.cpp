#include "eval/expert_error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/linear.h"
#include "core/error.h"
#include "core/svg.h"
#include "model/layer_stream.h"

namespace m2 {

ErrorStats error_stats(const std::vector<double>& v) {
  ErrorStats s;
  if (v.empty()) return s;
  double sum = 0, sum2 = 0;
  s.min = s.max = v[0];
  for (double x : v) sum += x, sum2 += x * x, s.min = std::min(s.min, x), s.max = std::max(s.max, x);
  const double n = double(v.size());
  s.mean = sum / n;
  s.std = std::sqrt(std::max(0.0, sum2 / n - s.mean * s.mean));
  return s;
}

namespace {

// Σ (q − r)² and Σ r² over a projection, row block by row block.
std::pair<double, double> diff_norms(const WeightView& q, const WeightView& r) {
  if (q.rows != r.rows || q.cols != r.cols)
    fail<InvalidArgument>("expert shapes differ: [{}, {}] against the reference's [{}, {}]", q.rows, q.cols, r.rows, r.cols);
  const int64_t B = 64;
  std::vector<float> a(size_t(B * q.cols)), b(a.size());
  double d2 = 0, r2 = 0;
  for (int64_t r0 = 0; r0 < q.rows; r0 += B) {
    const int64_t n = std::min(B, q.rows - r0);
    dequant_rows(q, r0, n, a.data());
    dequant_rows(r, r0, n, b.data());
    for (int64_t i = 0; i < n * q.cols; ++i) {
      const double d = double(a[size_t(i)]) - double(b[size_t(i)]);
      d2 += d * d;
      r2 += double(b[size_t(i)]) * double(b[size_t(i)]);
    }
  }
  return {d2, r2};
}

double rel(double d2, double r2) { return r2 > 0 ? std::sqrt(d2 / r2) : (d2 > 0 ? INFINITY : 0.0); }

}  // namespace

ExpertErrors expert_weight_errors(const ModelWeights& q, const ModelWeights& r, CpuBackend& be) {
  const ModelConfig &cq = q.config, &cr = r.config;
  if (cq.num_layers != cr.num_layers || cq.num_experts != cr.num_experts || cq.hidden_size != cr.hidden_size ||
      cq.intermediate_size != cr.intermediate_size)
    fail<InvalidArgument>("the models differ in shape: {} layers × {} experts ({}×{}) against the reference's {} × {} ({}×{})",
                          cq.num_layers, cq.num_experts, cq.hidden_size, cq.intermediate_size, cr.num_layers, cr.num_experts,
                          cr.hidden_size, cr.intermediate_size);
  ExpertErrors out;
  out.layers = cq.num_layers;
  out.experts = cq.num_experts;
  out.e.resize(size_t(out.layers) * size_t(out.experts));
  be.pool().parallel_for(int64_t(out.e.size()), [&](int64_t b, int64_t end, int) {
    for (int64_t i = b; i < end; ++i) {
      const size_t l = size_t(i / out.experts), x = size_t(i % out.experts);
      const LayerWeights &lq = q.layers[l], &lr = r.layers[l];
      const auto n1 = diff_norms(lq.w1[x], lr.w1[x]), n2 = diff_norms(lq.w2[x], lr.w2[x]), n3 = diff_norms(lq.w3[x], lr.w3[x]);
      ExpertError& e = out.e[size_t(i)];
      e.w1 = rel(n1.first, n1.second);
      e.w2 = rel(n2.first, n2.second);
      e.w3 = rel(n3.first, n3.second);
      e.whole = rel(n1.first + n2.first + n3.first, n1.second + n2.second + n3.second);
    }
  });
  return out;
}

void expert_output_errors(ExpertErrors& out, const ModelWeights& q, const ModelWeights& r, CpuBackend& be,
                          const std::vector<std::vector<int32_t>>& samples) {
  const ModelConfig& c = r.config;
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts;
  int64_t longest = 0;
  for (const auto& s : samples) longest = std::max<int64_t>(longest, int64_t(s.size()));
  if (longest == 0) fail<InvalidArgument>("expert output errors: no calibration tokens");
  LayerStream stream(r, be, longest, 128);
  stream.set_sequences(samples);
  const BackendWeights qw = be.prepare(q, ShardSpec{});
  const int64_t rows = 128 * c.experts_per_token;  // routed rows of one chunk at most
  std::vector<float> gate(size_t(rows * I)), up(gate.size()), act(gate.size()), yq(size_t(rows * H)), yr(yq.size());
  std::vector<double> d2(static_cast<size_t>(E)), r2(static_cast<size_t>(E));
  std::vector<int64_t> tokens(static_cast<size_t>(E));
  // y = W2 (silu(W1 x) ⊙ W3 x) for one expert's rows.
  auto expert = [&](const ExpertStack& gu, const ExpertStack& down, int64_t e, const TensorView& x, float* y) {
    const int64_t n = x.dim(0);
    be.linear(gu.part(e, 0), x, TensorView(gate.data(), DType::F32, {n, I}));
    be.linear(gu.part(e, 1), x, TensorView(up.data(), DType::F32, {n, I}));
    for (int64_t i = 0; i < n * I; ++i) act[size_t(i)] = gate[size_t(i)] / (1.0f + std::exp(-gate[size_t(i)])) * up[size_t(i)];
    be.linear(down.part(e, 0), TensorView(act.data(), DType::F32, {n, I}), TensorView(y, DType::F32, {n, H}));
  };
  stream.embed();
  for (int l = 0; l < c.num_layers; ++l) {
    std::fill(d2.begin(), d2.end(), 0.0);
    std::fill(r2.begin(), r2.end(), 0.0);
    std::fill(tokens.begin(), tokens.end(), 0);
    const BackendLayer &br = stream.model().weights().layers[size_t(l)], &bq = qw.layers[size_t(l)];
    stream.model().activation_hook = [&](int, Model::Site site, const TensorView& x, const TensorView& offsets) {
      if (site != Model::Site::ExpertIn) return;
      const int32_t* off = offsets.ptr<int32_t>();
      for (int64_t e = 0; e < E; ++e) {
        const int64_t n = off[e + 1] - off[e];
        if (n == 0) continue;
        const TensorView xe(x.ptr<float>() + int64_t(off[e]) * H, DType::F32, {n, H});  // [n, hidden]
        expert(br.gate_up, br.down, e, xe, yr.data());
        expert(bq.gate_up, bq.down, e, xe, yq.data());
        for (int64_t i = 0; i < n * H; ++i) {
          const double d = double(yq[size_t(i)]) - double(yr[size_t(i)]);
          d2[size_t(e)] += d * d;
          r2[size_t(e)] += double(yr[size_t(i)]) * double(yr[size_t(i)]);
        }
        tokens[size_t(e)] += n;
      }
    };
    stream.layer(l, false);
    stream.model().activation_hook = nullptr;
    for (int64_t e = 0; e < E; ++e) {
      ExpertError& x = out.e[size_t(l) * size_t(E) + size_t(e)];
      x.tokens = tokens[size_t(e)];
      x.output = tokens[size_t(e)] ? rel(d2[size_t(e)], r2[size_t(e)]) : -1;
    }
  }
  out.has_output = true;
}

std::string expert_heatmap_svg(const ExpertErrors& errs, const std::string& what) {
  std::vector<double> v;
  for (const auto& e : errs.e) v.push_back(what == "output" ? e.output : e.whole);
  return svg::heatmap(fmt::format("Relative {} error per expert", what == "output" ? "output" : "weight"), "expert", "layer",
                      errs.layers, errs.experts, v);
}

std::string expert_histogram_svg(const ExpertErrors& errs) {
  std::vector<std::pair<std::string, std::vector<double>>> series(4);
  series[0].first = "w1";
  series[1].first = "w2";
  series[2].first = "w3";
  series[3].first = "whole expert";
  for (const auto& e : errs.e) {
    series[0].second.push_back(e.w1);
    series[1].second.push_back(e.w2);
    series[2].second.push_back(e.w3);
    series[3].second.push_back(e.whole);
  }
  return svg::histogram("Relative weight error of the experts", "relative error ‖Ŵ − W‖ / ‖W‖", series, 30);
}

}  // namespace m2
