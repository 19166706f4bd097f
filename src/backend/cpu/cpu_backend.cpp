// CpuBackend: memory, weights, and the element-wise and normalisation ops. Attention and the MoE
// ops live in attention.cpp and moe.cpp; the linear kernels in linear*.cpp.
#include "backend/cpu/cpu_backend.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/units.h"

namespace m2 {

size_t ExpertStack::bytes_per_expert() const {
  size_t n = 0;
  for (int p = 0; p < parts && !views.empty(); ++p) n += views[size_t(p)].bytes();
  return n;
}

CpuBackend::CpuBackend(int threads, LinearPath path, Activations act)
    : pool_(threads), path_(resolve_linear_path(path)), act_(act), scores_(size_t(pool_.size())) {}

void* CpuBackend::allocate(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail<Error>("out of host memory: could not allocate {} bytes", bytes);
  return p;
}

void CpuBackend::release(void* ptr, size_t) noexcept { std::free(ptr); }

size_t CpuBackend::free_memory() const { return available_host_memory(); }

void CpuBackend::upload(const TensorView& dst, const void* src, size_t bytes) {
  if (bytes > dst.nbytes()) fail<InvalidArgument>("upload of {} bytes into tensor {}", bytes, dst.str());
  if (bytes) std::memcpy(dst.data, src, bytes);
}

void CpuBackend::download(void* dst, const TensorView& src, size_t bytes) {
  if (bytes > src.nbytes()) fail<InvalidArgument>("download of {} bytes from tensor {}", bytes, src.str());
  if (bytes) std::memcpy(dst, src.data, bytes);
}

void CpuBackend::copy(const TensorView& dst, const TensorView& src) {
  if (dst.nbytes() != src.nbytes()) fail<InvalidArgument>("copy from {} into {}", src.str(), dst.str());
  if (src.nbytes()) std::memmove(dst.data, src.data, src.nbytes());
}

namespace {

TensorView host_vector(const std::vector<float>& v) {
  return TensorView(v.data(), DType::F32, {int64_t(v.size())});
}

// Elements [begin, begin + n) of a host vector.
TensorView host_slice(const std::vector<float>& v, int64_t begin, int64_t n) {
  if (begin < 0 || n <= 0 || size_t(begin + n) > v.size())
    fail<InvalidArgument>("slice [{}, {}) of a vector of {}", begin, begin + n, v.size());
  return TensorView(v.data() + begin, DType::F32, {n});
}

}  // namespace

BackendWeights CpuBackend::prepare(const ModelWeights& w, const ShardSpec& shard) {
  const ModelConfig& c = w.config;
  BackendWeights b;
  b.shard = shard;
  b.dims = shard_dims(c, shard);
  const ShardDims& d = b.dims;
  b.embed = w.embed;
  b.lm_head = d.vocab_end - d.vocab_begin == w.lm_head.rows ? w.lm_head
                                                             : slice_rows(w.lm_head, d.vocab_begin, d.vocab_end - d.vocab_begin);
  b.final_norm = host_vector(w.final_norm);
  // Attention: this rank's q heads and kv heads (rows of q/k/v, columns of o, slices of the norms).
  const int64_t q0 = int64_t(shard.tp_rank) * d.q_dim, kv0 = int64_t(d.kv_head_begin) * c.head_dim;
  // Experts: whole experts [expert_begin, expert_end), or every expert's intermediate columns
  // [i0, i0 + intermediate) under plain tensor parallelism.
  const int64_t i0 = shard.ep_size > 1 ? 0 : int64_t(shard.tp_rank) * d.intermediate, I = d.intermediate;
  const bool split_experts = I != c.intermediate_size;
  b.layers.resize(size_t(d.local_layers()));
  for (int l = d.layer_begin; l < d.layer_end; ++l) {
    const LayerWeights& L = w.layers[size_t(l)];
    BackendLayer& B = b.layers[size_t(l - d.layer_begin)];
    B.input_norm = host_vector(L.input_norm);
    B.post_norm = host_vector(L.post_norm);
    B.q_norm = host_slice(L.q_norm, q0, d.q_dim);
    B.k_norm = host_slice(L.k_norm, kv0, d.kv_dim);
    B.router_bias = host_vector(L.router_bias);
    B.q = d.q_dim == L.q.rows ? L.q : slice_rows(L.q, q0, d.q_dim);
    B.k = d.kv_dim == L.k.rows ? L.k : slice_rows(L.k, kv0, d.kv_dim);
    B.v = d.kv_dim == L.v.rows ? L.v : slice_rows(L.v, kv0, d.kv_dim);
    B.o = d.q_dim == L.o.cols ? L.o : slice_cols(L.o, q0, d.q_dim);
    B.gate = L.gate;
    // Experts stay where the checkpoint stores them: gate_up = [w1; w3] as two parts per expert.
    B.gate_up = {d.local_experts(), 2 * I, c.hidden_size, 2, {}};
    B.down = {d.local_experts(), c.hidden_size, I, 1, {}};
    for (int64_t e = d.expert_begin; e < d.expert_end; ++e) {
      const WeightView &w1 = L.w1[size_t(e)], &w3 = L.w3[size_t(e)], &w2 = L.w2[size_t(e)];
      B.gate_up.views.push_back(split_experts ? slice_rows(w1, i0, I) : w1);
      B.gate_up.views.push_back(split_experts ? slice_rows(w3, i0, I) : w3);
      B.down.views.push_back(split_experts ? slice_cols(w2, i0, I) : w2);
    }
    B.k_scale = L.k_scale;
    B.v_scale = L.v_scale;
  }
  return b;
}

void CpuBackend::reserve(int64_t tokens, int64_t context) {
  reserved_context_ = std::max(reserved_context_, context);
  for (auto& s : scores_)
    if (int64_t(s.size()) < context) s.resize(size_t(context));
}

void CpuBackend::linear(const WeightView& w, const TensorView& x, const TensorView& y) {
  const int64_t M = x.rank ? x.dim(0) : 0;
  expect_tensor(x, DType::F32, {M, w.cols}, "linear input", w.name);
  expect_tensor(y, DType::F32, {M, w.rows}, "linear output", w.name);
  m2::linear(w, x.ptr<float>(), y.ptr<float>(), M, pool_, path_, act_);
}

void CpuBackend::embed(const WeightView& table, const TensorView& ids, const TensorView& out) {
  const int64_t n = ids.rank ? ids.dim(0) : 0;
  expect_tensor(ids, DType::I32, {n}, "embed ids");
  expect_tensor(out, DType::F32, {n, table.cols}, "embed output");
  const int32_t* id = ids.ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    if (id[i] < 0 || id[i] >= table.rows)
      fail<InvalidArgument>("token id {} at position {} is out of range [0, {})", id[i], i, table.rows);
  float* o = out.ptr<float>();
  pool_.parallel_for(n, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) dequant_rows(table, id[i], 1, o + i * table.cols);
  }, 8);
}

void CpuBackend::rmsnorm(const TensorView& x, const TensorView& weight, const TensorView& y, float eps) {
  const int64_t rows = x.rank == 2 ? x.dim(0) : 0, dim = x.rank == 2 ? x.dim(1) : 0;
  expect_tensor(x, DType::F32, {rows, dim}, "rmsnorm input");
  expect_tensor(weight, DType::F32, {dim}, "rmsnorm weight");
  expect_tensor(y, DType::F32, {rows, dim}, "rmsnorm output");
  const float* xp = x.ptr<float>();
  const float* wp = weight.ptr<float>();
  float* yp = y.ptr<float>();
  pool_.parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * dim;
      float* yr = yp + r * dim;
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += double(xr[i]) * double(xr[i]);
      const float inv = float(1.0 / std::sqrt(ss / double(dim) + double(eps)));
      for (int64_t i = 0; i < dim; ++i) yr[i] = wp[i] * (xr[i] * inv);
    }
  }, 4);
}

void CpuBackend::sum_squares(const TensorView& x, const TensorView& ss) {
  const int64_t rows = x.rank == 2 ? x.dim(0) : 0, dim = x.rank == 2 ? x.dim(1) : 0;
  expect_tensor(x, DType::F32, {rows, dim}, "sum_squares input");
  expect_tensor(ss, DType::F64, {rows}, "sum_squares output");
  const float* xp = x.ptr<float>();
  double* sp = ss.ptr<double>();
  for (int64_t r = 0; r < rows; ++r) {
    double acc = 0;
    for (int64_t i = 0; i < dim; ++i) acc += double(xp[r * dim + i]) * double(xp[r * dim + i]);
    sp[r] = acc;
  }
}

void CpuBackend::rmsnorm_with_sums(const TensorView& x, const TensorView& weight, const TensorView& ss, double count,
                                   const TensorView& y, float eps) {
  const int64_t rows = x.rank == 2 ? x.dim(0) : 0, dim = x.rank == 2 ? x.dim(1) : 0;
  expect_tensor(x, DType::F32, {rows, dim}, "rmsnorm input");
  expect_tensor(weight, DType::F32, {dim}, "rmsnorm weight");
  expect_tensor(ss, DType::F64, {rows}, "rmsnorm sums of squares");
  expect_tensor(y, DType::F32, {rows, dim}, "rmsnorm output");
  if (!(count > 0)) fail<InvalidArgument>("rmsnorm over {} elements", count);
  const float* xp = x.ptr<float>();
  const float* wp = weight.ptr<float>();
  const double* sp = ss.ptr<double>();
  float* yp = y.ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = float(1.0 / std::sqrt(sp[r] / count + double(eps)));
    for (int64_t i = 0; i < dim; ++i) yp[r * dim + i] = wp[i] * (xp[r * dim + i] * inv);
  }
}

void CpuBackend::zero(const TensorView& x) {
  if (x.nbytes()) std::memset(x.data, 0, x.nbytes());
}

void CpuBackend::add(const TensorView& h, const TensorView& a) {
  if (h.dtype != DType::F32 || a.dtype != DType::F32 || h.numel() != a.numel() || h.rank != a.rank)
    fail<InvalidArgument>("add: tensors {} and {} differ", h.str(), a.str());
  float* hp = h.ptr<float>();
  const float* ap = a.ptr<float>();
  pool_.parallel_for(h.numel(), [&](int64_t i0, int64_t i1, int) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) hp[i] += ap[i];
  }, 4096);
}

void CpuBackend::gather_rows(const TensorView& x, const TensorView& rows, const TensorView& out) {
  const int64_t M = x.rank == 2 ? x.dim(0) : 0, D = x.rank == 2 ? x.dim(1) : 0;
  const int64_t R = rows.rank == 1 ? rows.dim(0) : 0;
  expect_tensor(x, DType::F32, {M, D}, "gather_rows input");
  expect_tensor(rows, DType::I32, {R}, "gather_rows indices");
  expect_tensor(out, DType::F32, {R, D}, "gather_rows output");
  const int32_t* r = rows.ptr<int32_t>();
  for (int64_t i = 0; i < R; ++i) {
    if (r[i] < 0 || r[i] >= M) fail<InvalidArgument>("gather_rows: index {} is row {} of {}", i, r[i], M);
    std::memcpy(out.ptr<float>() + i * D, x.ptr<float>() + r[i] * D, size_t(D) * 4);
  }
}

void CpuBackend::rope_table(const TensorView& positions, const TensorView& inv_freq, const TensorView& cos,
                            const TensorView& sin) {
  const int64_t M = positions.rank == 1 ? positions.dim(0) : 0;
  const int64_t half = inv_freq.rank == 1 ? inv_freq.dim(0) : 0;
  expect_tensor(positions, DType::I32, {M}, "rope_table positions");
  expect_tensor(inv_freq, DType::F32, {half}, "rope_table inv_freq");
  expect_tensor(cos, DType::F32, {M, half}, "rope_table cos");
  expect_tensor(sin, DType::F32, {M, half}, "rope_table sin");
  const int32_t* pos = positions.ptr<int32_t>();
  const float* f = inv_freq.ptr<float>();
  float* cp = cos.ptr<float>();
  float* sp = sin.ptr<float>();
  pool_.parallel_for(M, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < half; ++j) {
        const float theta = float(pos[r]) * f[j];  // fp32 angle, as HF computes it
        cp[r * half + j] = float(std::cos(double(theta)));
        sp[r * half + j] = float(std::sin(double(theta)));
      }
  }, 16);
}

void CpuBackend::rope(const TensorView& x, int heads, int head_dim, int rotary_dim, const TensorView& cos,
                      const TensorView& sin) {
  const int64_t M = x.rank == 2 ? x.dim(0) : 0;
  const int half = rotary_dim / 2;
  if (rotary_dim <= 0 || rotary_dim % 2 || rotary_dim > head_dim)
    fail<InvalidArgument>("rope: rotary_dim {} with head_dim {}", rotary_dim, head_dim);
  expect_tensor(x, DType::F32, {M, int64_t(heads) * head_dim}, "rope input");
  expect_tensor(cos, DType::F32, {M, half}, "rope cos");
  expect_tensor(sin, DType::F32, {M, half}, "rope sin");
  float* xp = x.ptr<float>();
  const float* cp = cos.ptr<float>();
  const float* sp = sin.ptr<float>();
  pool_.parallel_for(M, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* c = cp + t * half;
      const float* s = sp + t * half;
      for (int h = 0; h < heads; ++h) {
        float* v = xp + (t * heads + h) * head_dim;
        for (int i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = b * c[i] + a * s[i];
        }
      }
    }
  }, 8);
}

}  // namespace m2
