#include "backend/cpu/linear.h"

#include <vector>

#include "backend/cpu/cpu_features.h"
#include "core/error.h"

namespace m2 {

namespace {

constexpr int64_t kGenericGrain = 4;

void rows_generic(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  const int64_t K = w.cols;
  thread_local std::vector<float> row;  // grows once per thread
  if (int64_t(row.size()) < K) row.resize(size_t(K));
  for (int64_t r = r0; r < r1; ++r) {
    dequant_row_ref(w, r, row.data());
    for (int64_t t = 0; t < job.tokens; ++t) {
      const float* xt = job.x + t * K;
      float acc = 0.0f;
      for (int64_t c = 0; c < K; ++c) acc += xt[c] * row[size_t(c)];
      job.y[t * job.ldy + r] = acc;
    }
  }
}

}  // namespace

LinearPath resolve_linear_path(LinearPath path) {
  const CpuFeatures& cpu = cpu_features();
  if (path == LinearPath::Auto)
    return cpu.avx512 ? LinearPath::Avx512 : cpu.avx2_fma_f16c ? LinearPath::Avx2 : LinearPath::Generic;
  if (path == LinearPath::Avx512 && !cpu.avx512)
    fail<InvalidArgument>("linear: AVX-512 path requested on a CPU without AVX-512");
  if (path == LinearPath::Avx2 && !cpu.avx2_fma_f16c)
    fail<InvalidArgument>("linear: AVX2 path requested on a CPU without AVX2/FMA/F16C");
  return path;
}

int64_t linear_grain(LinearPath path, const WeightView& w, int64_t tokens) {
  switch (path) {
    case LinearPath::Avx512:
      if (!detail::gemv_avx512_supports(w, tokens) && tokens > 4) return detail::kAvx512TileRows;
      return detail::kAvx2TileRows;
    case LinearPath::Avx2: return detail::kAvx2TileRows;
    default: return kGenericGrain;
  }
}

bool linear_wants_deinterleaved(LinearPath path, const WeightView& w, int64_t tokens) {
  return path == LinearPath::Avx512 && detail::gemv_avx512_supports(w, tokens) && w.format != WeightFormat::Fp8Block;
}

void deinterleave_pairs(const float* x, int64_t tokens, int64_t K, float* out) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xt = x + t * K;
    float* ot = out + t * K;
    int64_t k0 = 0;
    for (; k0 + 32 <= K; k0 += 32)
      for (int i = 0; i < 16; ++i) {
        ot[k0 + i] = xt[k0 + 2 * i];
        ot[k0 + 16 + i] = xt[k0 + 2 * i + 1];
      }
    for (; k0 < K; ++k0) ot[k0] = xt[k0];
  }
}

void linear_rows(LinearPath path, const LinearJob& job, int64_t r0, int64_t r1) {
  switch (path) {
    case LinearPath::Avx512: return detail::rows_avx512(job, r0, r1);
    case LinearPath::Avx2: return detail::rows_avx2(job, r0, r1);
    default: return rows_generic(job, r0, r1);
  }
}

void linear(const WeightView& w, const float* x, float* y, int64_t tokens, ThreadPool& pool, LinearPath path) {
  path = resolve_linear_path(path);
  LinearJob job{&w, x, x, y, w.rows, tokens};
  if (linear_wants_deinterleaved(path, w, tokens)) {
    thread_local std::vector<float> buf;  // grows once; the decode loop then reuses it
    if (int64_t(buf.size()) < tokens * w.cols) buf.resize(size_t(tokens * w.cols));
    deinterleave_pairs(x, tokens, w.cols, buf.data());
    job.xd = buf.data();
  }
  pool.parallel_for(w.rows, [&](int64_t r0, int64_t r1, int) { linear_rows(path, job, r0, r1); },
                    linear_grain(path, w, tokens));
}

void dequant_rows(const WeightView& w, int64_t r0, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (cpu_features().avx2_fma_f16c) detail::dequant_row_avx2(w, r0 + i, out + i * w.cols);
    else dequant_row_ref(w, r0 + i, out + i * w.cols);
  }
}

}  // namespace m2
