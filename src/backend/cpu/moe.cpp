// The MoE ops on the CPU: routing, the permutation of (token, choice) pairs into expert groups, the
// grouped expert products (every expert of a step in one parallel call), SwiGLU, and the weighted
// combine back into the residual stream.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace m2 {

namespace {
constexpr int kMaxExpertsPerToken = 64;
}

void CpuBackend::route(const TensorView& logits, const TensorView& bias, const TensorView& ids,
                       const TensorView& weights) {
  const int64_t M = logits.rank == 2 ? logits.dim(0) : 0, E = logits.rank == 2 ? logits.dim(1) : 0;
  const int64_t k = ids.rank == 2 ? ids.dim(1) : 0;
  expect_tensor(logits, DType::F32, {M, E}, "route logits");
  expect_tensor(bias, DType::F32, {E}, "route bias");
  expect_tensor(ids, DType::I32, {M, k}, "route ids");
  expect_tensor(weights, DType::F32, {M, k}, "route weights");
  if (k < 1 || k > std::min<int64_t>(E, kMaxExpertsPerToken))
    fail<InvalidArgument>("route: {} experts per token of {} (at most {})", k, E, kMaxExpertsPerToken);
  const float* lg_all = logits.ptr<float>();
  const float* bs = bias.ptr<float>();
  int32_t* id_all = ids.ptr<int32_t>();
  float* wt_all = weights.ptr<float>();
  pool_.parallel_for(M, [&](int64_t t0, int64_t t1, int) {
    float kept[kMaxExpertsPerToken];  // selection scores of id[0..n), descending
    for (int64_t t = t0; t < t1; ++t) {
      const float* lg = lg_all + t * E;
      int32_t* id = id_all + t * k;
      float* wt = wt_all + t * k;
      // Selection by sigmoid + bias (ties to the lower index); k is small: insertion into a sorted list.
      int64_t n = 0;
      for (int64_t e = 0; e < E; ++e) {
        const float sel = 1.0f / (1.0f + std::exp(-lg[e])) + bs[e];
        int64_t pos = n;
        while (pos > 0 && kept[pos - 1] < sel) --pos;
        if (pos >= k) continue;
        for (int64_t j = std::min(n, k - 1); j > pos; --j) {
          id[j] = id[j - 1];
          kept[j] = kept[j - 1];
        }
        id[pos] = int32_t(e);
        kept[pos] = sel;
        n = std::min(n + 1, k);
      }
      double sum = 0;
      for (int64_t j = 0; j < k; ++j) {
        wt[j] = 1.0f / (1.0f + std::exp(-lg[id[j]]));
        sum += wt[j];
      }
      for (int64_t j = 0; j < k; ++j) wt[j] = float(wt[j] / sum);
    }
  }, 16);
}

void CpuBackend::moe_permute(const TensorView& x, const TensorView& ids, const TensorView& x_perm,
                             const TensorView& offsets, const TensorView& slot_of) {
  const int64_t M = x.rank == 2 ? x.dim(0) : 0, H = x.rank == 2 ? x.dim(1) : 0;
  const int64_t k = ids.rank == 2 ? ids.dim(1) : 0, E = offsets.rank == 1 ? offsets.dim(0) - 1 : -1;
  expect_tensor(x, DType::F32, {M, H}, "moe_permute input");
  expect_tensor(ids, DType::I32, {M, k}, "moe_permute ids");
  expect_tensor(x_perm, DType::F32, {M * k, H}, "moe_permute output");
  expect_tensor(offsets, DType::I32, {E + 1}, "moe_permute offsets");
  expect_tensor(slot_of, DType::I32, {M * k}, "moe_permute slots");
  const int32_t* id = ids.ptr<int32_t>();
  int32_t* off = offsets.ptr<int32_t>();
  int32_t* slot = slot_of.ptr<int32_t>();
  if (int64_t(expert_fill_.size()) < E) expert_fill_.resize(size_t(E));
  std::fill_n(off, E + 1, 0);
  for (int64_t i = 0; i < M * k; ++i) {
    if (id[i] < 0 || id[i] >= E) fail<InvalidArgument>("moe_permute: choice {} is expert {} of {}", i, id[i], E);
    ++off[id[i] + 1];
  }
  for (int64_t e = 0; e < E; ++e) off[e + 1] += off[e];
  std::copy_n(off, E, expert_fill_.begin());
  for (int64_t i = 0; i < M * k; ++i) slot[i] = expert_fill_[size_t(id[i])]++;  // token order within an expert
  const float* xp = x.ptr<float>();
  float* xo = x_perm.ptr<float>();
  pool_.parallel_for(M * k, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) std::memcpy(xo + int64_t(slot[i]) * H, xp + (i / k) * H, size_t(H) * 4);
  }, 8);
}

// Work is cut into units of rows (the kernel's grain) of every (expert, part) with tokens; each thread
// takes a contiguous share of the total estimated cost (rows × (4 + tokens): reading and decoding a row
// costs about as much as four tokens' FMAs), so that decode streams stay contiguous per thread.
void CpuBackend::grouped_linear(const ExpertStack& w, const TensorView& x, const TensorView& offsets,
                                const TensorView& y) {
  const int64_t S = x.rank == 2 ? x.dim(0) : 0;
  expect_tensor(x, DType::F32, {S, w.cols}, "grouped_linear input",
                w.views.empty() ? std::string_view() : std::string_view(w.views[0].name));
  expect_tensor(offsets, DType::I32, {w.experts + 1}, "grouped_linear offsets");
  expect_tensor(y, DType::F32, {S, w.rows}, "grouped_linear output");
  if (int64_t(w.views.size()) != w.experts * w.parts)
    fail<InvalidArgument>("grouped_linear: {} views for {} experts × {} parts", w.views.size(), w.experts, w.parts);
  const int32_t* off = offsets.ptr<int32_t>();
  if (off[0] != 0 || off[w.experts] != S)
    fail<InvalidArgument>("grouped_linear: offsets span [{}, {}), the input has {} rows", off[0], off[w.experts], S);
  const float* xp = x.ptr<float>();
  float* yp = y.ptr<float>();
  const float* xd = xp;
  group_items_.clear();  // capacity kept: no allocation once warmed up
  XLayout layout = XLayout::Plain;  // of every product that reads a rearranged x (one format per weight)
  bool q8 = false, rounded = false, any_amx = false;
  std::optional<Bf16Layout> bf16;  // of the products that read bf16 rows of x, when any does
  for (int64_t e = 0; e < w.experts; ++e) {
    const int64_t n = off[e + 1] - off[e];
    if (n < 0) fail<InvalidArgument>("grouped_linear: offsets decrease at expert {}", e);
    if (n == 0) continue;
    int64_t row0 = 0;
    for (int p = 0; p < w.parts; ++p) {
      const WeightView& v = w.part(e, p);
      if (v.cols != w.cols) fail<InvalidArgument>("grouped_linear: {} has {} columns, expected {}", v.name, v.cols, w.cols);
      const int64_t grain = linear_grain(path_, v, n);
      const bool wants_bf16 = linear_wants_bf16(path_, act_, v);
      const bool amx = linear_runs_on_amx(path_, act_, v, n);
      const bool wants_q8 = !wants_bf16 && !amx && linear_wants_q8(path_, act_, v, n);
      const bool rounds = !wants_bf16 && !amx && !wants_q8 && linear_rounds_q8(path_, act_, v);
      q8 |= wants_q8;
      rounded |= rounds;
      if (wants_bf16) {
        if (bf16 && *bf16 != bf16_layout(v))
          fail<InvalidArgument>("grouped_linear: {} reads its bf16 input in another layout than the group's other parts", v.name);
        bf16 = bf16_layout(v);
      }
      any_amx |= amx;
      if (const XLayout l = wants_q8 || wants_bf16 || amx ? XLayout::Plain : linear_x_layout(path_, v, n); l != XLayout::Plain) {
        if (layout != XLayout::Plain && layout != l)
          fail<InvalidArgument>("grouped_linear: {} reads its input in another layout than the group's other parts", v.name);
        layout = l;
      }
      LinearJob job{&v, xp + int64_t(off[e]) * w.cols, nullptr, nullptr, yp + int64_t(off[e]) * w.rows + row0, w.rows, n};
      group_items_.push_back({job, grain, (v.rows + grain - 1) / grain, double(grain) * double(4 + n), wants_q8, rounds,
                              wants_bf16, amx});
      row0 += v.rows;
    }
    if (row0 != w.rows) fail<InvalidArgument>("grouped_linear: expert {} has {} rows, expected {}", e, row0, w.rows);
  }
  if (layout != XLayout::Plain) {
    float* p = aligned_scratch(x_prepared_, S * w.cols);
    prepare_x(layout, xp, S, w.cols, p);
    xd = p;
  }
  if (rounded) {  // experts with 5+ rows: the fp32 tiles on the Q8-rounded input
    float* p = aligned_scratch(x_rounded_, S * w.cols);
    round_q8(xp, S, w.cols, p, pool_);
    for (auto& it : group_items_)
      if (it.rounded) it.job.x = p + (it.job.x - xp);
  }
  if (q8) {
    const int64_t rb = q8_row_bytes(w.cols);
    uint8_t* p = aligned_scratch(x_q8_, S * rb);
    quantize_q8_rows(xp, S, w.cols, p, pool_);
    for (auto& it : group_items_)
      if (it.q8) it.job.xq = p + (it.job.x - xp) / w.cols * rb;
  }
  if (bf16) {
    uint16_t* p = aligned_scratch(x_bf16_, S * w.cols);
    bf16_rows(xp, S, w.cols, *bf16, p, pool_);
    for (auto& it : group_items_)
      if (it.bf16) it.job.xb = p + (it.job.x - xp);
  }
  if (any_amx) {  // each expert's tokens as one AMX operand, at its offset (both parts read it)
    uint32_t* p = aligned_scratch(x_amx_, amx_x_words(S, w.cols));
    pool_.parallel_for(w.experts, [&](int64_t e0, int64_t e1, int) {
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t n = off[e + 1] - off[e];
        bool wanted = false;
        for (int q = 0; q < w.parts && n > 0; ++q) wanted |= linear_runs_on_amx(path_, act_, w.part(e, q), n);
        if (wanted) amx_split_x(xp + int64_t(off[e]) * w.cols, n, w.cols, p + amx_x_words(off[e], w.cols));
      }
    }, 8);
    for (auto& it : group_items_)
      if (it.amx) it.job.xamx = p + amx_x_words((it.job.x - xp) / w.cols, w.cols);
  }
  double total = 0;
  for (auto& it : group_items_) {
    it.job.xd = it.rounded ? it.job.x : xd + (it.job.x - xp);
    total += it.unit_cost * double(it.units);
  }
  // The units in chunks of equal cost, taken in turn by the threads (parallel_for_dynamic): a thread
  // that runs slower takes fewer. Which thread runs a chunk does not change its results.
  const int64_t chunks = int64_t(pool_.size()) * kLinearChunksPerThread;
  pool_.parallel_for_dynamic(chunks, [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c) {
      // This chunk runs the units whose starting cost lies in [lo, hi).
      const double lo = total * double(c) / double(chunks), hi = total * double(c + 1) / double(chunks);
      double start = 0;
      for (const auto& it : group_items_) {
        const double end = start + it.unit_cost * double(it.units);
        if (end > lo && start < hi) {
          const int64_t u0 = std::max<int64_t>(0, int64_t(std::ceil((lo - start) / it.unit_cost)));
          const int64_t u1 = std::min<int64_t>(it.units, int64_t(std::ceil((hi - start) / it.unit_cost)));
          if (u0 < u1)
            linear_rows(path_, it.job, u0 * it.grain, std::min(it.job.w->rows, u1 * it.grain));
        }
        if (end >= hi) break;
        start = end;
      }
    }
  }, 1, kLinearChunksPerThread);
}

void CpuBackend::swiglu(const TensorView& gu, const TensorView& out) {
  const int64_t S = out.rank == 2 ? out.dim(0) : 0, I = out.rank == 2 ? out.dim(1) : 0;
  expect_tensor(gu, DType::F32, {S, 2 * I}, "swiglu input");
  expect_tensor(out, DType::F32, {S, I}, "swiglu output");
  const float* g = gu.ptr<float>();
  float* o = out.ptr<float>();
  pool_.parallel_for(S, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* gr = g + r * 2 * I;
      const float* ur = gr + I;
      float* orow = o + r * I;
      for (int64_t i = 0; i < I; ++i) orow[i] = gr[i] / (1.0f + std::exp(-gr[i])) * ur[i];
    }
  }, 4);
}

void CpuBackend::moe_unpermute(const TensorView& y, const TensorView& slot_of, const TensorView& weights,
                               const TensorView& h) {
  const int64_t M = h.rank == 2 ? h.dim(0) : 0, H = h.rank == 2 ? h.dim(1) : 0;
  const int64_t k = weights.rank == 2 ? weights.dim(1) : 0;
  expect_tensor(y, DType::F32, {M * k, H}, "moe_unpermute expert outputs");
  expect_tensor(slot_of, DType::I32, {M * k}, "moe_unpermute slots");
  expect_tensor(weights, DType::F32, {M, k}, "moe_unpermute weights");
  expect_tensor(h, DType::F32, {M, H}, "moe_unpermute residual");
  const int32_t* slot = slot_of.ptr<int32_t>();
  for (int64_t i = 0; i < M * k; ++i)
    if (slot[i] < 0 || slot[i] >= M * k) fail<InvalidArgument>("moe_unpermute: choice {} has slot {}", i, slot[i]);
  const float* yp = y.ptr<float>();
  const float* wp = weights.ptr<float>();
  float* hp = h.ptr<float>();
  pool_.parallel_for(M, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      float* hr = hp + t * H;
      for (int64_t j = 0; j < k; ++j) {
        const float wgt = wp[t * k + j];
        const float* d = yp + int64_t(slot[t * k + j]) * H;
#pragma omp simd
        for (int64_t i = 0; i < H; ++i) hr[i] += wgt * d[i];
      }
    }
  }, 1);
}

}  // namespace m2
