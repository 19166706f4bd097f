#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace m2 {

CpuBackend::CpuBackend(int threads, LinearPath path) : pool_(threads), path_(path), scores_(size_t(pool_.size())) {}

void CpuBackend::reserve(int64_t tokens, int64_t context) {
  for (auto& s : scores_)
    if (int64_t(s.size()) < context) s.resize(size_t(context));
}

void CpuBackend::linear(const WeightView& w, const float* x, float* y, int64_t tokens) {
  m2::linear(w, x, y, tokens, pool_, path_);
}

void CpuBackend::embed(const WeightView& table, const int32_t* ids, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= table.rows)
      fail<InvalidArgument>("token id {} at position {} is out of range [0, {})", ids[i], i, table.rows);
    dequant_rows(table, ids[i], 1, out + i * table.cols);
  }
}

void CpuBackend::rmsnorm(const float* x, const float* weight, float* y, int64_t rows, int64_t dim, float eps) {
  pool_.parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * dim;
      float* yr = y + r * dim;
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += double(xr[i]) * double(xr[i]);
      const float inv = float(1.0 / std::sqrt(ss / double(dim) + double(eps)));
      for (int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv);
    }
  }, 4);
}

void CpuBackend::rope(float* x, int64_t tokens, int heads, int head_dim, int rotary_dim, const float* cos,
                      const float* sin) {
  const int half = rotary_dim / 2;
  pool_.parallel_for(tokens, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      for (int h = 0; h < heads; ++h) {
        float* v = x + (t * heads + h) * head_dim;
        for (int i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = b * c[i] + a * s[i];
        }
      }
    }
  }, 8);
}

void CpuBackend::attention(const float* q, float* out, const AttentionSequence* seqs, int64_t num_seqs, int heads,
                           int kv_heads, int head_dim) {
  const int group = heads / kv_heads;
  const int64_t q_dim = int64_t(heads) * head_dim, kv_dim = int64_t(kv_heads) * head_dim;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  // Work items: (sequence, new token, head), flattened.
  int64_t total_tokens = 0;
  for (int64_t s = 0; s < num_seqs; ++s) total_tokens += seqs[s].tokens;
  int64_t max_context = 0;
  for (int64_t s = 0; s < num_seqs; ++s) max_context = std::max(max_context, seqs[s].past + seqs[s].tokens);
  reserve(total_tokens, max_context);
  pool_.parallel_for(total_tokens * heads, [&](int64_t i0, int64_t i1, int thread) {
    std::vector<float>& scores = scores_[size_t(thread)];
    int64_t seq = 0, seq_first_item = 0;
    for (int64_t item = i0; item < i1; ++item) {
      while (item >= seq_first_item + seqs[seq].tokens * heads) {
        seq_first_item += seqs[seq].tokens * heads;
        ++seq;
      }
      const AttentionSequence& S = seqs[seq];
      const int64_t local = item - seq_first_item;
      const int64_t t = local / heads;
      const int h = int(local % heads);
      const int64_t row = S.token_begin + t;
      const int64_t ctx = S.past + t + 1;  // causal: positions 0 .. past + t
      const float* qv = q + row * q_dim + int64_t(h) * head_dim;
      const int64_t kv_off = int64_t(h / group) * head_dim;
      float mx = -INFINITY;
      for (int64_t j = 0; j < ctx; ++j) {
        const float* kv = S.k_cache + j * kv_dim + kv_off;
        float d = 0;
#pragma omp simd reduction(+ : d)
        for (int i = 0; i < head_dim; ++i) d += qv[i] * kv[i];
        d *= scale;
        scores[size_t(j)] = d;
        mx = std::max(mx, d);
      }
      double sum = 0;
      for (int64_t j = 0; j < ctx; ++j) {
        scores[size_t(j)] = std::exp(scores[size_t(j)] - mx);
        sum += scores[size_t(j)];
      }
      const float inv = float(1.0 / sum);
      float* o = out + row * q_dim + int64_t(h) * head_dim;
      for (int i = 0; i < head_dim; ++i) o[i] = 0.0f;
      for (int64_t j = 0; j < ctx; ++j) {
        const float p = scores[size_t(j)] * inv;
        const float* vv = S.v_cache + j * kv_dim + kv_off;
        for (int i = 0; i < head_dim; ++i) o[i] += p * vv[i];
      }
    }
  });
}

void CpuBackend::route(const float* logits, const float* bias, int64_t tokens, int experts, int k, int32_t* ids,
                       float* weights) {
  if (int(kept_scores_.size()) < k) kept_scores_.resize(size_t(k));
  float* kept = kept_scores_.data();  // [k] selection scores of id[0..n), descending
  for (int64_t t = 0; t < tokens; ++t) {
    const float* lg = logits + t * experts;
    int32_t* id = ids + t * k;
    float* wt = weights + t * k;
    // Selection by sigmoid + bias (ties to the lower index); k is small, so insertion into a sorted list.
    int n = 0;
    for (int e = 0; e < experts; ++e) {
      const float sel = 1.0f / (1.0f + std::exp(-lg[e])) + bias[e];
      int pos = n;
      while (pos > 0 && kept[pos - 1] < sel) --pos;
      if (pos >= k) continue;
      for (int j = std::min(n, k - 1); j > pos; --j) {
        id[j] = id[j - 1];
        kept[j] = kept[j - 1];
      }
      id[pos] = e;
      kept[pos] = sel;
      n = std::min(n + 1, k);
    }
    double sum = 0;
    for (int j = 0; j < k; ++j) {
      wt[j] = 1.0f / (1.0f + std::exp(-lg[id[j]]));
      sum += wt[j];
    }
    for (int j = 0; j < k; ++j) wt[j] = float(wt[j] / sum);
  }
}

void CpuBackend::silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace m2
