#include "eval/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

namespace m2 {

using ojson = nlohmann::ordered_json;

std::string eval_markdown(const EvalSummary& s, const EvalInputs& in) {
  std::string out = fmt::format("m2 eval: {} on {} ({} tokens scored, windows of {} + 1{})\n\n", in.model, in.input, s.tokens,
                                in.ctx, in.streaming ? ", layer-streaming" : "");
  if (!s.has_ref) return out + fmt::format("| model | PPL |\n|---|---:|\n| {} | {:.4f} |\n", in.model, s.ppl);
  out += "| model | PPL ref | PPL | ΔPPL | KLD mean | KLD median | KLD p95 | KLD p99 | KLD max | top-1 | KLD > 1 |\n";
  out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  out += fmt::format("| {} | {:.4f} | {:.4f} | {:+.3f}% | {:.6f} | {:.6f} | {:.6f} | {:.6f} | {:.4f} | {:.2f}% | {:.3f}% |\n",
                     in.model, s.ref_ppl, s.ppl, s.ppl_delta_pct, s.kld_mean, s.kld_median, s.kld_p95, s.kld_p99, s.kld_max,
                     100 * s.top1, 100 * s.kld_gt1);
  out += fmt::format(
      "\nreference {}; mean ln(PPL/PPL ref) {:+.6f}; KLD p90 {:.6f}.\n"
      "Δp = p(next) − p_ref(next): mean {:+.4f}%, RMS {:.4f}%, min {:+.3f}%, p1 {:+.3f}%, p5 {:+.3f}%, median {:+.4f}%, "
      "p95 {:+.3f}%, p99 {:+.3f}%, max {:+.3f}%\n",
      in.ref, s.ln_ppl_ratio, s.kld_p90, 100 * s.dp_mean, 100 * s.dp_rms, 100 * s.dp_min, 100 * s.dp_p1, 100 * s.dp_p5,
      100 * s.dp_median, 100 * s.dp_p95, 100 * s.dp_p99, 100 * s.dp_max);
  return out;
}

ojson eval_json(const EvalSummary& s, const EvalInputs& in) {
  ojson j;
  j["ppl"] = s.ppl;
  if (s.has_ref) {
    j["ref_ppl"] = s.ref_ppl;
    j["ppl_delta_pct"] = s.ppl_delta_pct;
    j["ln_ppl_ratio"] = s.ln_ppl_ratio;
    j["kld_mean"] = s.kld_mean;
    j["kld_median"] = s.kld_median;
    j["kld_p90"] = s.kld_p90;
    j["kld_p95"] = s.kld_p95;
    j["kld_p99"] = s.kld_p99;
    j["kld_max"] = s.kld_max;
    j["kld_gt1"] = s.kld_gt1;
    j["top1"] = s.top1;
    j["dp_mean"] = s.dp_mean;
    j["dp_rms"] = s.dp_rms;
    j["dp_min"] = s.dp_min;
    j["dp_p1"] = s.dp_p1;
    j["dp_p5"] = s.dp_p5;
    j["dp_median"] = s.dp_median;
    j["dp_p95"] = s.dp_p95;
    j["dp_p99"] = s.dp_p99;
    j["dp_max"] = s.dp_max;
  }
  j["tokens"] = s.tokens;
  j["model"] = in.model;
  if (s.has_ref) j["ref"] = in.ref;
  j["input"] = in.input;
  j["ctx"] = in.ctx;
  j["streaming"] = in.streaming;
  return j;
}

namespace {

struct Column {
  const char* name;
  double ExpertError::*field;
};
const Column kColumns[] = {{"w1", &ExpertError::w1}, {"w2", &ExpertError::w2}, {"w3", &ExpertError::w3},
                           {"whole", &ExpertError::whole}, {"output", &ExpertError::output}};

std::vector<double> column(const ExpertErrors& e, double ExpertError::*f) {
  std::vector<double> v;
  for (const auto& x : e.e)
    if (x.*f >= 0) v.push_back(x.*f);
  return v;
}

// Experts by descending whole-expert error (ties: layer, then expert).
std::vector<size_t> worst(const ExpertErrors& e, size_t n) {
  std::vector<size_t> order(e.e.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return e.e[a].whole > e.e[b].whole; });
  order.resize(std::min(n, order.size()));
  return order;
}

}  // namespace

std::string experts_markdown(const ExpertErrors& e, const ExpertInputs& in) {
  std::string out = fmt::format("m2 eval --experts {} --ref {}: {} layers × {} experts\n\n", in.model, in.ref, e.layers, e.experts);
  out += "| relative error | mean | std | min | max |\n|---|---:|---:|---:|---:|\n";
  for (const auto& c : kColumns) {
    if (c.field == &ExpertError::output && !e.has_output) continue;
    const ErrorStats s = error_stats(column(e, c.field));
    out += fmt::format("| {} | {:.5f} | {:.5f} | {:.5f} | {:.5f} |\n", c.name, s.mean, s.std, s.min, s.max);
  }
  out += "\nWorst experts (whole-expert weight error):\n\n| layer | expert | w1 | w2 | w3 | whole |" +
         std::string(e.has_output ? " output | tokens |" : "") + "\n|---:|---:|---:|---:|---:|---:|" +
         std::string(e.has_output ? "---:|---:|" : "") + "\n";
  for (size_t i : worst(e, 10)) {
    const ExpertError& x = e.e[i];
    out += fmt::format("| {} | {} | {:.5f} | {:.5f} | {:.5f} | {:.5f} |", i / size_t(e.experts), i % size_t(e.experts), x.w1, x.w2,
                       x.w3, x.whole);
    if (e.has_output) out += x.output >= 0 ? fmt::format(" {:.5f} | {} |", x.output, x.tokens) : fmt::format(" – | 0 |");
    out += "\n";
  }
  out += "\nPer layer (mean whole-expert weight error): ";
  for (int l = 0; l < e.layers; ++l) {
    double sum = 0;
    for (int x = 0; x < e.experts; ++x) sum += e.at(l, x).whole;
    out += fmt::format("{}{}: {:.5f}", l ? ", " : "", l, sum / e.experts);
  }
  return out + "\n";
}

ojson experts_json(const ExpertErrors& e, const ExpertInputs& in) {
  ojson j;
  j["model"] = in.model;
  j["ref"] = in.ref;
  j["calib"] = in.calib;
  j["layers"] = e.layers;
  j["experts"] = e.experts;
  ojson summary = ojson::object();
  for (const auto& c : kColumns) {
    if (c.field == &ExpertError::output && !e.has_output) continue;
    const ErrorStats s = error_stats(column(e, c.field));
    summary[c.name] = {{"mean", s.mean}, {"std", s.std}, {"min", s.min}, {"max", s.max}};
  }
  j["summary"] = summary;
  ojson worst_list = ojson::array();
  for (size_t i : worst(e, 10)) worst_list.push_back({{"layer", i / size_t(e.experts)}, {"expert", i % size_t(e.experts)}, {"whole", e.e[i].whole}});
  j["worst"] = worst_list;
  ojson rows = ojson::array();
  for (size_t i = 0; i < e.e.size(); ++i) {
    const ExpertError& x = e.e[i];
    ojson r = {{"layer", i / size_t(e.experts)}, {"expert", i % size_t(e.experts)}, {"w1", x.w1}, {"w2", x.w2}, {"w3", x.w3}, {"whole", x.whole}};
    if (e.has_output) r["output"] = x.output >= 0 ? ojson(x.output) : ojson(nullptr), r["tokens"] = x.tokens;
    rows.push_back(r);
  }
  j["per_expert"] = rows;
  return j;
}

}  // namespace m2
