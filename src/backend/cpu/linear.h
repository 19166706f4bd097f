// y = x · Wᵀ for a weight in any stored format, on the CPU: whole products (linear) and the
// row-range kernels that grouped products (all experts of a step in one call) are built from.
#pragma once
#include <cstdint>

#include "core/thread_pool.h"
#include "quant/weight.h"

namespace m2 {

enum class LinearPath {
  Auto,     // the best path this CPU supports
  Generic,  // portable C++: row dequantised to a buffer, then dot products
  Avx2,     // fused SIMD decode + FMA (gemv for few tokens, tiled gemm for many)
  Avx512,   // AVX-512 gemv for packed FP4/FP8 at 1-4 tokens and AVX-512 gemm; otherwise as Avx2
};
// Auto → the best path of this CPU; a path the CPU cannot run is an InvalidArgument.
LinearPath resolve_linear_path(LinearPath requested);

// x: [tokens, w.cols] row-major fp32; y: [tokens, w.rows] fp32 (overwritten).
void linear(const WeightView& w, const float* x, float* y, int64_t tokens, ThreadPool& pool,
            LinearPath path = LinearPath::Auto);

// One product of a grouped call, computed a row range at a time on the calling thread:
// y[t * ldy + r] = Σ_c x[t * w.cols + c] · W[r, c] for t < tokens. `xd` is x de-interleaved
// (deinterleave_pairs) when linear_wants_deinterleaved says so, else unused.
struct LinearJob {
  const WeightView* w = nullptr;
  const float* x = nullptr;
  const float* xd = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
  int64_t tokens = 0;
};
// Rows per work unit: ranges passed to linear_rows start at multiples of it (tile rows of the
// matrix-matrix kernels), and end at a multiple of it or at w.rows.
int64_t linear_grain(LinearPath path, const WeightView& w, int64_t tokens);
void linear_rows(LinearPath path, const LinearJob& job, int64_t r0, int64_t r1);
bool linear_wants_deinterleaved(LinearPath path, const WeightView& w, int64_t tokens);
// x [tokens, cols] → per 32-column block: its 16 even columns, then its 16 odd columns (tail kept).
void deinterleave_pairs(const float* x, int64_t tokens, int64_t cols, float* out);

// Decodes rows [r0, r0 + n) of W into out[n, w.cols] fp32 (embedding lookup, tests).
void dequant_rows(const WeightView& w, int64_t r0, int64_t n, float* out);

namespace detail {
// The AVX2 kernels (linear_avx2.cpp); only called when cpu_features().avx2_fma_f16c.
// 1-4 tokens: gemv over any row range; 5+ tokens: 16-row tiles.
void rows_avx2(const LinearJob& job, int64_t r0, int64_t r1);
constexpr int64_t kAvx2TileRows = 16;
void dequant_row_avx2(const WeightView& w, int64_t r, float* out);
// Decodes W[r0 .. r0+tile_rows) × [k0 .. k0+kc) into tile[k][tile_rows], zero rows past the end.
void decode_tile_avx2(const WeightView& w, int64_t r0, int tile_rows, int64_t k0, int64_t kc, float* tile);
// The AVX-512 kernels (linear_avx512.cpp); only called when cpu_features().avx512.
// 1-4 tokens of packed FP4/FP8: gemv (FP4 reads job.xd); 5+ tokens: 32-row tiles; else rows_avx2.
bool gemv_avx512_supports(const WeightView& w, int64_t tokens);
void rows_avx512(const LinearJob& job, int64_t r0, int64_t r1);
constexpr int64_t kAvx512TileRows = 32;
}  // namespace detail

}  // namespace m2
