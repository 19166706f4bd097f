// y = x · Wᵀ for a weight in any stored format, on the CPU.
#pragma once
#include <cstdint>

#include "core/thread_pool.h"
#include "quant/weight.h"

namespace m2 {

enum class LinearPath {
  Auto,     // the best path this CPU supports
  Generic,  // portable C++: row dequantised to a buffer, then dot products
  Avx2,     // fused SIMD decode + FMA (gemv for few tokens, tiled gemm for many)
  Avx512,   // AVX-512 gemv for packed FP4/FP8 at 1-4 tokens; otherwise as Avx2
};

// x: [tokens, w.cols] row-major fp32; y: [tokens, w.rows] fp32 (overwritten).
void linear(const WeightView& w, const float* x, float* y, int64_t tokens, ThreadPool& pool,
            LinearPath path = LinearPath::Auto);

// Decodes rows [r0, r0 + n) of W into out[n, w.cols] fp32 (embedding lookup, tests).
void dequant_rows(const WeightView& w, int64_t r0, int64_t n, float* out);

namespace detail {
// The AVX2 kernels (linear_avx2.cpp); only called when cpu_features().avx2_fma_f16c.
void linear_avx2(const WeightView& w, const float* x, float* y, int64_t tokens, ThreadPool& pool);
void dequant_row_avx2(const WeightView& w, int64_t r, float* out);
// Decodes W[r0 .. r0+tile_rows) × [k0 .. k0+kc) into tile[k][tile_rows], zero rows past the end.
void decode_tile_avx2(const WeightView& w, int64_t r0, int tile_rows, int64_t k0, int64_t kc, float* tile);
// The AVX-512 gemv (linear_avx512.cpp); only called when cpu_features().avx512.
bool gemv_avx512_supports(const WeightView& w, int64_t tokens);
void gemv_avx512(const WeightView& w, const float* x, float* y, int64_t tokens, ThreadPool& pool);
// The AVX-512 gemm (5+ tokens): 32-row tiles, 8-token × 32-row register blocks.
void gemm_avx512(const WeightView& w, const float* x, float* y, int64_t tokens, ThreadPool& pool);
}  // namespace detail

}  // namespace m2
