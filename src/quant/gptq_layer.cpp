#include "quant/gptq_layer.h"

#include <cblas.h>
#include <dlfcn.h>

#include <cmath>
#include <algorithm>
#include <map>

#include "backend/cpu/linear.h"
#include "core/error.h"

namespace m2 {

namespace {

// W [rows, cols] as fp32.
std::vector<float> dense(const WeightView& w) {
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  dequant_rows(w, 0, w.rows, out.data());
  return out;
}

// The input rows of one group of jobs: x [n, cols] gathered from the layer's activations.
std::vector<float> gather(std::span<const float> src, int64_t cols, const std::vector<int32_t>& rows, int64_t tokens) {
  if (rows.empty()) return std::vector<float>(src.begin(), src.begin() + tokens * cols);
  std::vector<float> x(rows.size() * size_t(cols));
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy_n(src.begin() + int64_t(rows[i]) * cols, cols, x.begin() + int64_t(i) * cols);
  return x;
}

// Row i of x [n, cols] times weight[i]: its Gram matrix weighs row i by weight[i]².
std::vector<float> weighted_rows(std::vector<float> x, int64_t cols, const std::vector<float>& weight) {
  for (size_t i = 0; i < weight.size(); ++i)
    for (int64_t c = 0; c < cols; ++c) x[i * size_t(cols) + size_t(c)] *= weight[i];
  return x;
}

}  // namespace

namespace {

// Dequantized weights of a GPTQ result.
std::vector<float> dequantized(const GptqModuleResult& r, const WeightView& w, const GptqTarget& t) {
  const int g = t.format == GptqTarget::Format::Nvfp4 ? 16 : 32;
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  for (int64_t i = 0; i < w.rows; ++i)
    for (int64_t c = 0; c < w.cols; ++c) {
      const uint8_t b = r.packed[size_t(i * w.cols / 2 + c / 2)], code = c % 2 ? b >> 4 : b & 0xF;
      const uint8_t s = r.scales[size_t(i * (w.cols / g) + c / g)];
      const double m = t.format == GptqTarget::Format::Nvfp4 ? double(e4m3_to_f32(s)) * t.ws2 : std::ldexp(1.0, int(s) - 127);
      out[size_t(i * w.cols + c)] = float(double(e2m1_to_f32(code)) * m);
    }
  return out;
}

// silu(x gᵀ) ⊙ (x uᵀ) for dense g, u [I, H]: [n, I].
std::vector<float> swiglu(const std::vector<float>& x, int64_t n, const std::vector<float>& g, const std::vector<float>& u, int64_t I,
                          int64_t H) {
  std::vector<float> a(static_cast<size_t>(n * I)), b(a.size());
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(I), int(H), 1.0f, x.data(), int(H), g.data(), int(H), 0.0f,
              a.data(), int(I));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(I), int(H), 1.0f, x.data(), int(H), u.data(), int(H), 0.0f,
              b.data(), int(I));
  for (size_t i = 0; i < a.size(); ++i) a[i] = a[i] / (1.0f + std::exp(-a[i])) * b[i];
  return a;
}

// The modules of a layer run in parallel on m2's threads, so a threaded BLAS (OpenBLAS, when the
// system provides it) runs one thread per call. Looked up at run time: reference BLAS has no such call.
void single_threaded_blas() {
  static const bool done = [] {
    for (const char* name : {"openblas_set_num_threads", "goto_set_num_threads"})
      if (void* f = dlsym(RTLD_DEFAULT, name)) {
        reinterpret_cast<void (*)(int)>(f)(1);
        break;
      }
    return true;
  }();
  (void)done;
}

void run_jobs(const std::vector<GptqJob>& jobs, const std::vector<size_t>& members, const std::vector<float>& x, int64_t n,
              std::vector<GptqModuleResult>& out, const GptqOptions& options) {
  if (members.empty()) return;
  std::vector<double> h;
  accumulate_gram(x.data(), n, jobs[members.front()].w->cols, {}, h);
  for (size_t m : members) {
    const GptqJob& j = jobs[m];
    const int g = j.target.format == GptqTarget::Format::Nvfp4 ? 16 : 32;
    GptqModuleResult& r = out[m];
    r.packed.resize(size_t(j.w->rows * j.w->cols / 2));
    r.scales.resize(size_t(j.w->rows * (j.w->cols / g)));
    r.tokens = n;
    std::vector<double> hm = h;
    const std::vector<float> w = dense(*j.w);
    r.stats = gptq_quantize(w.data(), j.w->rows, j.w->cols, hm, j.target, r.packed.data(), r.scales.data(), options);
  }
}

}  // namespace

WeightView gptq_result_view(const GptqModuleResult& r, const WeightView& original, const GptqTarget& target) {
  const bool nv = target.format == GptqTarget::Format::Nvfp4;
  const int g = nv ? 16 : 32;
  WeightView v;
  v.name = original.name;
  v.format = nv ? WeightFormat::Nvfp4 : WeightFormat::Mxfp4;
  v.dtype = DType::U8;
  v.rows = original.rows;
  v.cols = original.cols;
  v.row_bytes = original.cols / 2;
  v.scale_stride = original.cols / g;
  v.block_cols = g;
  v.global_scale = nv ? float(target.ws2) : 1.0f;
  if (int64_t(r.packed.size()) != v.rows * v.row_bytes || int64_t(r.scales.size()) != v.rows * v.scale_stride)
    fail<Error>("GPTQ {}: {} code bytes and {} scales, expected {} and {}", original.name, r.packed.size(), r.scales.size(),
                v.rows * v.row_bytes, v.rows * v.scale_stride);
  v.data = r.packed.data();
  v.scales = r.scales.data();
  return v;
}

std::vector<GptqModuleResult> gptq_layer(const std::vector<GptqJob>& jobs, const LayerActivations& acts, const RoutedRows& routed,
                                         ThreadPool& pool, const GptqOptions& options) {
  // Work items: the attention input's modules (q/k/v), o_proj, and each expert (w1/w3, then w2 on
  // the SwiGLU of its quantized w1/w3, as it will run).
  std::map<std::pair<int, int>, std::vector<size_t>> groups;  // (kind, expert) → jobs; kind 0 attn in, 1 attn out, 2 expert
  for (size_t i = 0; i < jobs.size(); ++i) {
    const auto in = jobs[i].input;
    const int kind = in == GptqJob::Input::AttnIn ? 0 : in == GptqJob::Input::AttnOut ? 1 : 2;
    groups[{kind, kind == 2 ? jobs[i].expert : -1}].push_back(i);
  }
  std::vector<std::pair<std::pair<int, int>, std::vector<size_t>>> items(groups.begin(), groups.end());
  std::vector<GptqModuleResult> out(jobs.size());
  single_threaded_blas();
  pool.parallel_for(int64_t(items.size()), [&](int64_t b, int64_t e, int) {
    for (int64_t it = b; it < e; ++it) {
      const auto& [key, members] = items[size_t(it)];
      if (key.first < 2) {
        const auto src = key.first == 0 ? acts.attn_in : acts.attn_out;
        const int64_t cols = jobs[members.front()].w->cols;
        if (int64_t(src.size()) != acts.tokens * cols)
          fail<Error>("GPTQ {}: {} input values for {} tokens × {} columns", jobs[members.front()].name, src.size(), acts.tokens, cols);
        run_jobs(jobs, members, gather(src, cols, {}, acts.tokens), acts.tokens, out, options);
        continue;
      }
      std::vector<size_t> in, mid;
      for (size_t m : members) (jobs[m].input == GptqJob::Input::ExpertIn ? in : mid).push_back(m);
      const auto& rows = routed.rows.at(size_t(key.second));
      const auto& weights = routed.weights.at(size_t(key.second));
      if (weights.size() != rows.size())
        fail<Error>("GPTQ expert {}: {} routing weights for {} routed rows", key.second, weights.size(), rows.size());
      const bool weigh = options.route_weighted && !rows.empty();
      const GptqJob& any = jobs[members.front()];
      const WeightView& gate = mid.empty() ? *any.w : *jobs[mid.front()].gate;
      const int64_t H = gate.cols, I = gate.rows;
      const std::vector<float> x = gather(acts.moe_in, H, rows, acts.tokens);
      const int64_t n = rows.empty() ? acts.tokens : int64_t(rows.size());
      run_jobs(jobs, in, weigh ? weighted_rows(x, H, weights) : x, n, out, options);
      if (mid.empty()) continue;
      // w2's inputs through w1/w3 as the quantized model computes them (quantized where they are).
      const GptqJob& j2 = jobs[mid.front()];
      std::vector<float> g = dense(*j2.gate), u = dense(*j2.up);
      for (size_t m : in) {
        if (jobs[m].w == j2.gate) g = dequantized(out[m], *jobs[m].w, jobs[m].target);
        if (jobs[m].w == j2.up) u = dequantized(out[m], *jobs[m].w, jobs[m].target);
      }
      const std::vector<float> a = swiglu(x, n, g, u, I, H);
      run_jobs(jobs, mid, weigh ? weighted_rows(a, I, weights) : a, n, out, options);
    }
  });
  return out;
}

}  // namespace m2
