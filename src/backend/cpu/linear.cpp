#include "backend/cpu/linear.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/q8_rows.h"
#include "core/dtype.h"
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
    return cpu.avx512          ? LinearPath::Avx512
           : cpu.avx2_fma_f16c ? LinearPath::Avx2
           : cpu.neon          ? LinearPath::Neon
                               : LinearPath::Generic;
  if (path == LinearPath::Neon && !cpu.neon) fail<InvalidArgument>("linear: NEON path requested on a CPU without NEON");
  if (path == LinearPath::Avx512 && !cpu.avx512)
    fail<InvalidArgument>("linear: AVX-512 path requested on a CPU without AVX-512");
  if (path == LinearPath::Avx2 && !cpu.avx2_fma_f16c)
    fail<InvalidArgument>("linear: AVX2 path requested on a CPU without AVX2/FMA/F16C");
  return path;
}

Activations parse_activations(std::string_view name) {
  if (name == "f32") return Activations::F32;
  if (name == "q8") return Activations::Q8;
  if (name == "q8-bf16") return Activations::Q8Bf16;
  fail<InvalidArgument>("activations: expected f32, q8 or q8-bf16, found '{}'", printable(name));
}

std::string_view activations_name(Activations a) {
  switch (a) {
    case Activations::Q8: return "q8";
    case Activations::Q8Bf16: return "q8-bf16";
    default: return "f32";
  }
}

int64_t q8_row_bytes(int64_t cols) { return cols / 32 * 68; }

namespace {
// One 32-column block of x → int8 codes (column order) and the block's scale (max|x| / 127).
inline float quantize_q8_block(const float* xb, int8_t q[32]) {
  float amax = 0.0f;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
  const float inv = detail::q8_inverse_scale(amax);
#if defined(__x86_64__)
  // Round to nearest even as nearbyint does, without its library call (baseline x86-64 has no
  // roundps): |x · inv| ≤ 127, so adding 1.5 · 2^23 leaves the integer in the low mantissa bits.
  // (No FMA in the baseline ISA, so the product is rounded to float first, as nearbyint sees it.)
  for (int i = 0; i < 32; ++i) q[i] = int8_t((xb[i] * inv + 0x1.8p23f) - 0x1.8p23f);
#else
  for (int i = 0; i < 32; ++i) q[i] = int8_t(std::nearbyint(xb[i] * inv));
#endif
  return amax / 127.0f;
}
}  // namespace

void quantize_q8_rows(const float* x, int64_t tokens, int64_t cols, uint8_t* out, ThreadPool& pool) {
  if (tokens < 8) return quantize_q8_rows(x, tokens, cols, out);
  const int64_t rb = q8_row_bytes(cols);
  pool.parallel_for(tokens, [&](int64_t t0, int64_t t1, int) {
    quantize_q8_rows(x + t0 * cols, t1 - t0, cols, out + t0 * rb);
  }, 4);
}

void quantize_q8_rows(const float* x, int64_t tokens, int64_t cols, uint8_t* out) {
  // The 1-token products quantize x on the calling thread before the others start: scalar, that was
  // a fifth of an FP4 × Q8 product from L2 (docs/BENCHMARKS.md).
  if (cpu_features().avx2_fma_f16c) return detail::quantize_q8_rows_avx2(x, tokens, cols, out);
  if (cpu_features().neon) return detail::quantize_q8_rows_neon(x, tokens, cols, out);
  quantize_q8_rows_reference(x, tokens, cols, out);
}

void quantize_q8_rows_reference(const float* x, int64_t tokens, int64_t cols, uint8_t* out) {
  detail::write_q8_rows(x, tokens, cols, out, [](const float* xb, int8_t* qb, int32_t half[2]) {
    int8_t cq[32];
    const float d = quantize_q8_block(xb, cq);
    for (int i = 0; i < 16; ++i) {
      qb[i] = cq[2 * i];
      qb[16 + i] = cq[2 * i + 1];
      half[i / 8] += cq[2 * i] + cq[2 * i + 1];  // columns 2i, 2i+1 lie in half i / 8
    }
    return d;
  });
}

void round_q8(const float* x, int64_t tokens, int64_t cols, float* out, ThreadPool& pool) {
  pool.parallel_for(tokens, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t b = 0; b < cols / 32; ++b) {
        int8_t q[32];
        const float d = quantize_q8_block(x + t * cols + 32 * b, q);
        for (int j = 0; j < 32; ++j) out[t * cols + 32 * b + j] = float(q[j]) * d;
      }
  }, 4);
}

bool linear_rounds_q8(LinearPath path, Activations act, const WeightView& w) {
  const bool has_q8_kernel = path == LinearPath::Avx2 || path == LinearPath::Avx512 ||
                             (path == LinearPath::Neon && cpu_features().dotprod);
  return (act == Activations::Q8 || act == Activations::Q8Bf16) && has_q8_kernel &&
         (w.format == WeightFormat::Nvfp4 || w.format == WeightFormat::Mxfp4) && w.cols % 32 == 0 && w.cols > 0;
}

bool linear_wants_q8(LinearPath path, Activations act, const WeightView& w, int64_t tokens) {
  // AVX-512 without VNNI keeps its 12 × 32 fp32 tiles from 5 tokens on: Q8 groups were measured
  // against the AVX2 tiles only.
  if (path == LinearPath::Avx512) {
    if (cpu_features().avx512_vnni_vbmi) return linear_rounds_q8(path, act, w);  // every count: gemv, then the VNNI gemm
    return tokens <= 4 && linear_rounds_q8(path, act, w);
  }
  return tokens <= kQ8MaxTokens && linear_rounds_q8(path, act, w);
}

bool linear_wants_bf16(LinearPath path, Activations act, const WeightView& w) {
  if (act != Activations::Q8Bf16 || w.cols <= 0) return false;
  if (path == LinearPath::Neon) return cpu_features().neon_bf16 && w.format == WeightFormat::Dense && w.dtype == DType::BF16;
  if (path != LinearPath::Avx512 || !cpu_features().avx512_bf16) return false;
  if (w.format == WeightFormat::Dense) return w.dtype == DType::BF16;
  return w.format == WeightFormat::Fp8Block && (w.dtype == DType::F8_E4M3 || w.dtype == DType::F8_E5M2) &&
         cpu_features().avx512_vnni_vbmi && w.cols % 64 == 0 && w.block_cols % 64 == 0;
}

Bf16Layout bf16_layout(const WeightView& w) {
  return w.format == WeightFormat::Fp8Block ? Bf16Layout::Fp8Interleaved64 : Bf16Layout::Plain;
}

void bf16_rows(const float* x, int64_t tokens, int64_t cols, Bf16Layout layout, uint16_t* out, ThreadPool& pool) {
  const bool avx512 = cpu_features().avx512_bf16;
  M2_CHECK(avx512 || (cpu_features().neon_bf16 && layout == Bf16Layout::Plain),
           "bf16_rows: this CPU has no AVX512_BF16 or AArch64 BF16 kernel for this layout");
  pool.parallel_for(tokens, [&](int64_t t0, int64_t t1, int) {
    const int64_t n = (t1 - t0) * cols;
    if (avx512) return detail::bf16_rows_avx512(x + t0 * cols, n, layout, out + t0 * cols);
    for (int64_t i = 0; i < n; ++i) out[t0 * cols + i] = f32_to_bf16(x[t0 * cols + i]);  // round to nearest even
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)));
}

int64_t linear_grain(LinearPath path, const WeightView& w, int64_t tokens) {
  switch (path) {
    case LinearPath::Avx512:
      if (!detail::gemv_avx512_supports(w, tokens) && tokens > 4) return detail::kAvx512TileRows;
      return detail::kAvx2TileRows;
    case LinearPath::Avx2: return detail::kAvx2TileRows;
    case LinearPath::Neon: return tokens <= 4 ? 4 * kGenericGrain : 2 * detail::kNeonTileRows;
    default: return kGenericGrain;
  }
}

namespace {
// Whether a product of these weights and tokens runs on AMX when its products are f32.
bool runs_on_amx(LinearPath path, const WeightView& w, int64_t tokens) {
  return path == LinearPath::Avx512 && cpu_features().amx_bf16 && detail::amx_supports(w, tokens);
}
}  // namespace

bool linear_runs_on_amx(LinearPath path, Activations act, const WeightView& w, int64_t tokens) {
  return !linear_wants_bf16(path, act, w) && runs_on_amx(path, w, tokens);
}
int64_t amx_x_words(int64_t tokens, int64_t cols) { return 3 * (cols / 2) * tokens; }
void amx_split_x(const float* x, int64_t tokens, int64_t cols, uint32_t* out) {
  M2_CHECK(cpu_features().amx_bf16 && cols % 32 == 0, "amx_split_x: needs AMX and whole 32-column chunks");
  detail::amx_split_x_avx512(x, tokens, cols, out);
}

XLayout linear_x_layout(LinearPath path, const WeightView& w, int64_t tokens) {
  if (runs_on_amx(path, w, tokens)) return XLayout::Plain;
  if (path == LinearPath::Avx512 && detail::gemv_avx512_supports(w, tokens)) return detail::gemv_avx512_x_layout(w);
  if (path == LinearPath::Avx2 || path == LinearPath::Avx512) return detail::gemv_avx2_x_layout(w, tokens);
  return XLayout::Plain;
}

void prepare_x(XLayout layout, const float* x, int64_t tokens, int64_t K, float* out) {
  M2_CHECK(layout != XLayout::Plain, "prepare_x: the plain layout needs no copy");
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xt = x + t * K;
    float* ot = out + t * K;
    int64_t k0 = 0;
    if (layout == XLayout::Fp8Bf16Pairs64) {
      for (; k0 + 64 <= K; k0 += 64)
        for (int d = 0; d < 16; ++d) {
          const int64_t c = k0 + 16 * (d / 4) + 2 * (d % 4);
          ot[k0 + d] = xt[c];
          ot[k0 + 16 + d] = xt[c + 1];
          ot[k0 + 32 + d] = xt[c + 8];
          ot[k0 + 48 + d] = xt[c + 9];
        }
      for (; k0 < K; ++k0) ot[k0] = xt[k0];
      continue;
    }
    if (layout == XLayout::E4m3Quads64) {
      for (; k0 + 64 <= K; k0 += 64)
        for (int q = 0; q < 4; ++q)
          for (int j = 0; j < 16; ++j) ot[k0 + 16 * q + j] = xt[k0 + 4 * j + q] * kE4m3XScale;
      for (; k0 < K; ++k0) ot[k0] = xt[k0];
      continue;
    }
    for (; k0 + 32 <= K; k0 += 32) {
      if (layout == XLayout::Pairs) {
        for (int i = 0; i < 16; ++i) {
          ot[k0 + i] = xt[k0 + 2 * i];
          ot[k0 + 16 + i] = xt[k0 + 2 * i + 1];
        }
      } else {
        for (int q = 0; q < 4; ++q)
          for (int j = 0; j < 8; ++j) ot[k0 + 8 * q + j] = xt[k0 + 4 * j + q] * kE4m3XScale;
      }
    }
    for (; k0 < K; ++k0) ot[k0] = xt[k0];
  }
}

namespace detail {
Fp8Bf16Tables make_fp8_bf16_tables(bool e5m2) {
  Fp8Bf16Tables t;
  for (int c = 0; c < 128; ++c) {
    const float v = e5m2 ? f16_to_f32(uint16_t(c << 8)) : kE4M3ToF32[size_t(c)];
    const uint16_t b = f32_to_bf16(v);
    t.hi[c] = uint8_t(b >> 8);
    t.lo[c] = uint8_t(b & 0xFF);
  }
  return t;
}
const Fp8Bf16Tables& fp8_bf16_tables(bool e5m2) {
  static const Fp8Bf16Tables e4m3 = make_fp8_bf16_tables(false), e5m2t = make_fp8_bf16_tables(true);
  return e5m2 ? e5m2t : e4m3;
}
}  // namespace detail

void linear_rows(LinearPath path, const LinearJob& job, int64_t r0, int64_t r1) {
  if (job.xb) return path == LinearPath::Neon ? detail::rows_bf16_neon(job, r0, r1) : detail::rows_bf16_avx512(job, r0, r1);
  if (job.xamx) return detail::rows_bf16_amx(job, r0, r1);
  if (job.xq && job.tokens > 4 && path == LinearPath::Avx512 && cpu_features().avx512_vnni_vbmi)
    return detail::rows_q8_gemm_avx512(job, r0, r1);
  if (job.xq) {  // the Q8 gemv kernels take 1-4 tokens: more run in groups of 4 over the same rows
    const int64_t rb = q8_row_bytes(job.w->cols);
    for (int64_t t0 = 0; t0 < job.tokens; t0 += 4) {
      LinearJob group = job;
      group.tokens = std::min<int64_t>(4, job.tokens - t0);
      group.x = job.x + t0 * job.w->cols;
      group.xq = job.xq + t0 * rb;
      group.y = job.y + t0 * job.ldy;
      if (path == LinearPath::Neon) detail::rows_q8_neon(group, r0, r1);
      else if (path == LinearPath::Avx512 && cpu_features().avx512_vnni_vbmi) detail::rows_q8_avx512(group, r0, r1);
      else detail::rows_q8_avx2(group, r0, r1);
    }
    return;
  }
  switch (path) {
    case LinearPath::Neon: return detail::rows_neon(job, r0, r1);
    case LinearPath::Avx512: return detail::rows_avx512(job, r0, r1);
    case LinearPath::Avx2: return detail::rows_avx2(job, r0, r1);
    default: return rows_generic(job, r0, r1);
  }
}

void linear(const WeightView& w, const float* x, float* y, int64_t tokens, ThreadPool& pool, LinearPath path,
            Activations act) {
  path = resolve_linear_path(path);
  LinearJob job{&w, x, x, nullptr, y, w.rows, tokens};
  if (linear_runs_on_amx(path, act, w, tokens)) {
    thread_local std::vector<uint32_t> xamx;
    uint32_t* p = aligned_scratch(xamx, amx_x_words(tokens, w.cols));
    amx_split_x(x, tokens, w.cols, p);
    job.xamx = p;
  } else if (linear_wants_bf16(path, act, w)) {
    thread_local std::vector<uint16_t> xb;
    uint16_t* p = aligned_scratch(xb, tokens * w.cols);
    bf16_rows(x, tokens, w.cols, bf16_layout(w), p, pool);
    job.xb = p;
  } else if (linear_wants_q8(path, act, w, tokens)) {
    thread_local std::vector<uint8_t> q8;
    uint8_t* p = aligned_scratch(q8, tokens * q8_row_bytes(w.cols));
    quantize_q8_rows(x, tokens, w.cols, p, pool);
    job.xq = p;
  } else if (linear_rounds_q8(path, act, w)) {  // 5+ tokens: the fp32 tiles on the same rounded x
    thread_local std::vector<float> rounded;
    float* p = aligned_scratch(rounded, tokens * w.cols);
    round_q8(x, tokens, w.cols, p, pool);
    job.x = job.xd = p;
  } else if (const XLayout layout = linear_x_layout(path, w, tokens); layout != XLayout::Plain) {
    thread_local std::vector<float> buf;
    float* p = aligned_scratch(buf, tokens * w.cols);
    prepare_x(layout, x, tokens, w.cols, p);
    job.xd = p;
  }
  pool.parallel_for_dynamic(w.rows, [&](int64_t r0, int64_t r1, int) { linear_rows(path, job, r0, r1); },
                            linear_grain(path, w, tokens), kLinearChunksPerThread);
}

void dequant_rows(const WeightView& w, int64_t r0, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (cpu_features().avx2_fma_f16c) detail::dequant_row_avx2(w, r0 + i, out + i * w.cols);
    else dequant_row_ref(w, r0 + i, out + i * w.cols);
  }
}

}  // namespace m2
