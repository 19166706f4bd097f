// Paged KV cache ops on the CPU: storing each new token's K/V into its slot (fp32, bf16, or fp8 E4M3
// with a per-layer scale) and causal GQA attention that reads the cache through block tables.
#include <algorithm>
#include <cmath>

#include "backend/cpu/attention_simd.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_features.h"
#include "core/error.h"

namespace m2 {

namespace {

inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t v) { return bf16_to_f32(v); }
inline float to_f32(uint8_t v) { return e4m3_to_f32(v); }

template <typename E>
inline E from_f32(float v, float scale);
template <>
inline float from_f32<float>(float v, float) { return v; }
template <>
inline uint16_t from_f32<uint16_t>(float v, float) { return f32_to_bf16(v); }
template <>
inline uint8_t from_f32<uint8_t>(float v, float scale) { return f32_to_e4m3(v / scale); }  // sat_e4m3(x / scale), spec §3.7

template <typename E>
void store_rows(const float* k, const float* v, const int64_t* slots, int64_t M, int64_t kvd, E* kc, E* vc,
                float k_scale, float v_scale, ThreadPool& pool) {
  pool.parallel_for(M, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      E* kd = kc + slots[r] * kvd;
      E* vd = vc + slots[r] * kvd;
      for (int64_t i = 0; i < kvd; ++i) {
        kd[i] = from_f32<E>(k[r * kvd + i], k_scale);
        vd[i] = from_f32<E>(v[r * kvd + i], v_scale);
      }
    }
  }, 4);
}

inline float dot(const float* q, const float* k, int n) {
  float d = 0;
#pragma omp simd reduction(+ : d)
  for (int i = 0; i < n; ++i) d += q[i] * k[i];
  return d;
}

inline void axpy(float p, const float* v, float* o, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) o[i] += p * v[i];
}

constexpr int kMaxGroup = 64;  // q heads per kv head (paged_attention refuses more)

// One K row against a GQA group's q heads, one V row into their outputs: the portable loops, or the
// AVX2 / AVX-512 kernels (attention_simd.cpp) where the CPU has them and head_dim fits.
struct GroupKernels {
  void (*dots)(const float* q, const float* k, int group, int d, float* out);
  void (*axpys)(const float* p, const float* v, float* o, int group, int d);
};

void dots_portable(const float* q, const float* k, int group, int d, float* out) {
  for (int h = 0; h < group; ++h) out[h] = dot(q + int64_t(h) * d, k, d);
}
void axpys_portable(const float* p, const float* v, float* o, int group, int d) {
  for (int h = 0; h < group; ++h) axpy(p[h], v, o + int64_t(h) * d, d);
}

GroupKernels group_kernels(int head_dim) {
#if defined(__x86_64__)
  if (head_dim <= detail::kAttnSimdMaxDim) {
    if (cpu_features().avx512) return {detail::attn_dots_avx512, detail::attn_axpys_avx512};
    if (cpu_features().avx2_fma_f16c) return {detail::attn_dots_avx2, detail::attn_axpys_avx2};
  }
#endif
  (void)head_dim;
  return {dots_portable, axpys_portable};
}

struct AttentionArgs {
  const float* q;
  float* out;
  const AttentionSeq* seqs;
  int64_t num_seqs;
  const int32_t* tables;
  int heads, kv_heads, head_dim, block_size;
  float k_scale, v_scale;  // 1 for fp32 and bf16
};

// Converts one cached K or V row to fp32 (a copy only for bf16 / fp8 caches).
template <typename E>
inline const float* row_f32(const E* src, float* buf, int n) {
  if constexpr (std::is_same_v<E, float>) {
    return src;
  } else {
    for (int i = 0; i < n; ++i) buf[i] = to_f32(src[i]);
    return buf;
  }
}

// The sequence that holds a flattened work item (sequence s holds query_len · kv_heads items from
// `first`), found by moving from the cursor's last position either way.
struct SeqCursor {
  const AttentionArgs& a;
  int64_t seq = 0, first = 0;
  int64_t items(int64_t s) const { return int64_t(a.seqs[s].query_len) * a.kv_heads; }
  void seek(int64_t item) {
    while (item >= first + items(seq)) first += items(seq++);
    while (item < first) first -= items(--seq);
  }
};

// Work items (sequence, new token, kv head), flattened in that order and split across threads. The
// q heads that share a kv head (GQA group) are computed together, so that each cached K and V row
// is read once per token instead of once per q head. A causal prefill's items cost as much as their
// context, so the threads' contiguous slices take them in the order 0, N−1, 1, N−2, …: each slice
// pairs short contexts with long ones (in order, the first of 2 threads had a quarter of the work
// and waited for the other: 15% of a 2048-token prefill was spent spinning).
template <typename E>
void attend(const AttentionArgs& a, const E* kc, const E* vc, int64_t total_tokens,
            std::vector<std::vector<float>>& scores_per_thread, ThreadPool& pool) {
  const int group = a.heads / a.kv_heads;
  const int64_t q_dim = int64_t(a.heads) * a.head_dim, kv_dim = int64_t(a.kv_heads) * a.head_dim;
  const int64_t bs = a.block_size;
  const float scale = 1.0f / std::sqrt(float(a.head_dim));
  const GroupKernels kern = group_kernels(a.head_dim);
  pool.parallel_for(total_tokens * a.kv_heads, [&](int64_t i0, int64_t i1, int thread) {
    // [group, context] scores, then one converted K/V row.
    std::vector<float>& buf = scores_per_thread[size_t(thread)];
    const int64_t N = total_tokens * a.kv_heads;
    SeqCursor from_start{a}, from_end{a};
    for (int64_t k = i0; k < i1; ++k) {
      const int64_t item = k % 2 == 0 ? k / 2 : N - 1 - k / 2;
      SeqCursor& cur = k % 2 == 0 ? from_start : from_end;
      cur.seek(item);
      const AttentionSeq& S = a.seqs[cur.seq];
      const int64_t local = item - cur.first;
      const int64_t t = local / a.kv_heads;
      const int g = int(local % a.kv_heads);
      const int64_t row = S.query_start + t;
      const int64_t ctx = S.context_len - S.query_len + t + 1;  // causal: positions 0 .. ctx - 1
      const int32_t* table = a.tables + S.block_table_start;
      const float* qv = a.q + row * q_dim + int64_t(g) * group * a.head_dim;  // [group, head_dim]
      const int64_t kv_off = int64_t(g) * a.head_dim;
      float* scores = buf.data();                       // [group][ctx]
      float* kv_row = buf.data() + int64_t(group) * ctx;  // [head_dim]
      float mx[kMaxGroup];
      for (int hh = 0; hh < group; ++hh) mx[hh] = -INFINITY;
      const float k_mul = (std::is_same_v<E, float> ? 1.0f : a.k_scale) * scale;
      for (int64_t j0 = 0, b = 0; j0 < ctx; j0 += bs, ++b) {
        const E* kb = kc + int64_t(table[b]) * bs * kv_dim + kv_off;
        const int64_t n = std::min(bs, ctx - j0);
        for (int64_t r = 0; r < n; ++r) {
          const float* k = row_f32(kb + r * kv_dim, kv_row, a.head_dim);
          float dots[kMaxGroup];
          kern.dots(qv, k, group, a.head_dim, dots);
          for (int hh = 0; hh < group; ++hh) {
            const float d = dots[hh] * k_mul;
            scores[hh * ctx + j0 + r] = d;
            mx[hh] = std::max(mx[hh], d);
          }
        }
      }
      float inv[kMaxGroup];
      for (int hh = 0; hh < group; ++hh) {
        float* sc = scores + hh * ctx;
        double sum = 0;
        for (int64_t j = 0; j < ctx; ++j) {
          sc[j] = std::exp(sc[j] - mx[hh]);
          sum += sc[j];
        }
        inv[hh] = float(1.0 / sum) * (std::is_same_v<E, float> ? 1.0f : a.v_scale);
      }
      float* o = a.out + row * q_dim + int64_t(g) * group * a.head_dim;  // [group, head_dim]
      std::fill_n(o, int64_t(group) * a.head_dim, 0.0f);
      for (int64_t j0 = 0, b = 0; j0 < ctx; j0 += bs, ++b) {
        const E* vb = vc + int64_t(table[b]) * bs * kv_dim + kv_off;
        const int64_t n = std::min(bs, ctx - j0);
        for (int64_t r = 0; r < n; ++r) {
          const float* v = row_f32(vb + r * kv_dim, kv_row, a.head_dim);
          float p[kMaxGroup];
          for (int hh = 0; hh < group; ++hh) p[hh] = scores[hh * ctx + j0 + r] * inv[hh];
          kern.axpys(p, v, o, group, a.head_dim);
        }
      }
    }
  });
}

void check_layer(const PagedKv& kv, int layer, const char* op) {
  if (layer < 0 || layer >= int(kv.layers.size()))
    fail<InvalidArgument>("{}: layer {} of a KV cache with {} layers", op, layer, kv.layers.size());
  const PagedKvLayer& L = kv.layers[size_t(layer)];
  expect_tensor(L.k, kv.dtype, {kv.num_blocks, kv.block_size, kv.kv_dim}, op, "the K cache");
  expect_tensor(L.v, kv.dtype, {kv.num_blocks, kv.block_size, kv.kv_dim}, op, "the V cache");
  if (kv.dtype != DType::F32 && kv.dtype != DType::BF16 && kv.dtype != DType::F8_E4M3)
    fail<InvalidArgument>("{}: KV cache dtype {} is not supported (F32, BF16, F8_E4M3)", op, dtype_name(kv.dtype));
  if (!(L.k_scale > 0) || !(L.v_scale > 0) || !std::isfinite(L.k_scale) || !std::isfinite(L.v_scale))
    fail<InvalidArgument>("{}: layer {} KV scales k {} v {} must be positive", op, layer, L.k_scale, L.v_scale);
}

}  // namespace

void CpuBackend::kv_store(const PagedKv& kv, int layer, const TensorView& k, const TensorView& v,
                          const TensorView& slots) {
  check_layer(kv, layer, "kv_store");
  const int64_t M = slots.rank == 1 ? slots.dim(0) : 0;
  expect_tensor(slots, DType::I64, {M}, "kv_store slots");
  expect_tensor(k, DType::F32, {M, kv.kv_dim}, "kv_store keys");
  expect_tensor(v, DType::F32, {M, kv.kv_dim}, "kv_store values");
  const int64_t* s = slots.ptr<int64_t>();
  const int64_t capacity = kv.num_blocks * kv.block_size;
  for (int64_t i = 0; i < M; ++i)
    if (s[i] < 0 || s[i] >= capacity)
      fail<InvalidArgument>("kv_store: row {} has slot {}, outside the cache's {} slots", i, s[i], capacity);
  const PagedKvLayer& L = kv.layers[size_t(layer)];
  const float* kp = k.ptr<float>();
  const float* vp = v.ptr<float>();
  switch (kv.dtype) {
    case DType::F32:
      return store_rows(kp, vp, s, M, kv.kv_dim, static_cast<float*>(L.k.data), static_cast<float*>(L.v.data), 1.0f,
                        1.0f, pool_);
    case DType::BF16:
      return store_rows(kp, vp, s, M, kv.kv_dim, static_cast<uint16_t*>(L.k.data), static_cast<uint16_t*>(L.v.data),
                        1.0f, 1.0f, pool_);
    default:
      return store_rows(kp, vp, s, M, kv.kv_dim, static_cast<uint8_t*>(L.k.data), static_cast<uint8_t*>(L.v.data),
                        L.k_scale, L.v_scale, pool_);
  }
}

void CpuBackend::paged_attention(const PagedKv& kv, int layer, const TensorView& q, const TensorView& out,
                                 const AttentionBatch& batch, int heads, int kv_heads, int head_dim) {
  check_layer(kv, layer, "paged_attention");
  if (heads <= 0 || kv_heads <= 0 || heads % kv_heads || int64_t(kv_heads) * head_dim != kv.kv_dim)
    fail<InvalidArgument>("paged_attention: {} heads / {} kv heads of {} dims against a cache of {} dims", heads,
                          kv_heads, head_dim, kv.kv_dim);
  if (heads / kv_heads > kMaxGroup)
    fail<InvalidArgument>("paged_attention: {} q heads per kv head (at most {})", heads / kv_heads, kMaxGroup);
  const int64_t M = q.rank == 2 ? q.dim(0) : 0, S = batch.seqs.rank == 2 ? batch.seqs.dim(0) : 0;
  expect_tensor(q, DType::F32, {M, int64_t(heads) * head_dim}, "paged_attention queries");
  expect_tensor(out, DType::F32, {M, int64_t(heads) * head_dim}, "paged_attention output");
  expect_tensor(batch.seqs, DType::I32, {S, 4}, "paged_attention sequences");
  const int64_t entries = batch.block_tables.rank == 1 ? batch.block_tables.dim(0) : 0;
  expect_tensor(batch.block_tables, DType::I32, {entries}, "paged_attention block tables");
  const auto* seqs = static_cast<const AttentionSeq*>(batch.seqs.data);
  const int32_t* tables = batch.block_tables.ptr<int32_t>();
  // Every sequence's rows and blocks must be inside the batch and the cache.
  int64_t total = 0, max_context = 0;
  for (int64_t s = 0; s < S; ++s) {
    const AttentionSeq& a = seqs[s];
    const int64_t blocks = (int64_t(a.context_len) + kv.block_size - 1) / kv.block_size;
    if (a.query_len <= 0 || a.query_start != total || a.context_len < a.query_len || a.block_table_start < 0 ||
        a.block_table_start + blocks > entries)
      fail<InvalidArgument>("paged_attention: sequence {} (rows {}+{}, context {}, table at {}) does not fit the batch",
                            s, a.query_start, a.query_len, a.context_len, a.block_table_start);
    for (int64_t b = 0; b < blocks; ++b)
      if (tables[a.block_table_start + b] < 0 || tables[a.block_table_start + b] >= kv.num_blocks)
        fail<InvalidArgument>("paged_attention: sequence {} block {} is {}, outside the cache's {} blocks", s, b,
                              tables[a.block_table_start + b], kv.num_blocks);
    total += a.query_len;
    max_context = std::max<int64_t>(max_context, a.context_len);
  }
  if (total != M) fail<InvalidArgument>("paged_attention: the sequences cover {} rows, the queries have {}", total, M);
  // Per thread: the scores of a GQA group over the context and one K/V row, sized for the longest
  // context reserved (the first call grows the buffers once; later steps allocate nothing).
  const int64_t need = int64_t(heads / kv_heads) * std::max(max_context, reserved_context_) + head_dim;
  for (auto& s : scores_)
    if (int64_t(s.size()) < need) s.resize(size_t(need));
  const PagedKvLayer& L = kv.layers[size_t(layer)];
  AttentionArgs a{q.ptr<float>(), out.ptr<float>(), seqs, S, tables, heads, kv_heads, head_dim, kv.block_size,
                  L.k_scale, L.v_scale};
  switch (kv.dtype) {
    case DType::F32:
      return attend(a, static_cast<const float*>(L.k.data), static_cast<const float*>(L.v.data), M, scores_, pool_);
    case DType::BF16:
      a.k_scale = a.v_scale = 1.0f;
      return attend(a, static_cast<const uint16_t*>(L.k.data), static_cast<const uint16_t*>(L.v.data), M, scores_,
                    pool_);
    default:
      return attend(a, static_cast<const uint8_t*>(L.k.data), static_cast<const uint8_t*>(L.v.data), M, scores_,
                    pool_);
  }
}

}  // namespace m2
