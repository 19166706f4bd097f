// y = x · Wᵀ for a weight in any stored format, on the CPU: whole products (linear) and the
// row-range kernels that grouped products (all experts of a step in one call) are built from.
#pragma once
#include <cstdint>
#include <vector>
#include <string_view>

#include "core/thread_pool.h"
#include "quant/weight.h"

namespace m2 {

enum class LinearPath {
  Auto,     // the best path this CPU supports
  Generic,  // portable C++: row dequantised to a buffer, then dot products
  Avx2,     // fused SIMD decode + FMA (gemv for few tokens, tiled gemm for many)
  Avx512,   // AVX-512 gemv for packed FP4/FP8 at 1-4 tokens and AVX-512 gemm; otherwise as Avx2
  Neon,     // AArch64: NEON gemv at 1-4 tokens (SDOT for FP4 × Q8 where dotprod exists), tiled gemm at 5+
};
// Auto → the best path of this CPU; a path the CPU cannot run is an InvalidArgument.
LinearPath resolve_linear_path(LinearPath requested);

// The activation precision of the products (FP4 under q8; BF16 and FP8 too under q8-bf16).
enum class Activations {
  F32,  // exact: fp32 activations × decoded weights, fp32 accumulation (the reference; eval's default)
  Q8,   // FP4 weights see x rounded to int8 per 32-column block (scale max|x|/127, as llama.cpp's
        // Q8_0), then int8 × FP4-code integer dot products: a 32-column chunk in ~12 instructions
        // instead of ~25. Error per output ≤ Σ_blocks (max|x_b| / 254) · Σ_b |w|. Other weights: fp32.
  Q8Bf16,  // Q8, and BF16 weights on CPUs with AVX512_BF16 (FP8 block weights too, with VBMI, when
           // cols and block_cols are multiples of 64) or AArch64 BF16 see x rounded to bf16
           // (llama.cpp's BF16 vec_dot type) through vdpbf16ps / BFDOT: error per output ≤ 2^-8 Σ |x w|. Not the default: a
           // rounding amplifies the ~1e-6 batch-to-batch jitter of the fp32 ops before it into a
           // bf16 step (2^-8) of that input (docs/DESIGN.md, "Batch independence").
};
Activations parse_activations(std::string_view name);  // "f32" | "q8" | "q8-bf16"; else InvalidArgument
std::string_view activations_name(Activations a);

// Row ranges per thread of a product (linear and grouped products), taken in turn by the threads
// (ThreadPool::parallel_for_dynamic): a thread that runs slower takes fewer, and the last range
// one takes is 1/(threads × this) of the work. A row's result does not depend on its range.
constexpr int kLinearChunksPerThread = 8;

// Scratch for x in a kernel's layout: n elements of v from a 64-byte boundary, so that the kernels'
// 64-byte loads of it each touch one cache line (a heap vector starts 16 bytes past one: the AVX-512
// BF16 gemv at 4 tokens ran 9-18% slower in L2 on it). v grows once; the decode loop then reuses it.
template <typename T>
T* aligned_scratch(std::vector<T>& v, int64_t n) {
  constexpr size_t pad = 64 / sizeof(T);
  if (v.size() < size_t(n) + pad) v.resize(size_t(n) + pad);
  return v.data() + (64 - reinterpret_cast<uintptr_t>(v.data()) % 64) % 64 / sizeof(T);
}

// x: [tokens, w.cols] row-major fp32; y: [tokens, w.rows] fp32 (overwritten).
void linear(const WeightView& w, const float* x, float* y, int64_t tokens, ThreadPool& pool,
            LinearPath path = LinearPath::Auto, Activations act = Activations::F32);

// Q8 activations, one row per token, q8_row_bytes(cols) bytes each (cols % 32 == 0; nb = cols / 32):
//   float corr2[nb][2]  12 × Σq over each 16-column half of a block, and
//   float corr1[nb]     12 × Σq over the block: the kernel's weight codes carry a +12 offset (so that
//                       they are unsigned bytes for vpmaddubsw), whose contribution these remove
//   float scale[nb]     per 32-column block (max|x| / 127)
//   float scale2[nb][2] the same, each twice (NVFP4's two 16-column blocks per chunk)
//   int8  q[nb][32]     round(x / scale), per block the 16 even columns then the 16 odd ones
//   int32 neg_corr2[nb][2], neg_corr1[nb]  −corr2, −corr1 as integers (the VNNI matrix kernel
//                       starts its int32 sums of a scale block there)
int64_t q8_row_bytes(int64_t cols);
void quantize_q8_rows(const float* x, int64_t tokens, int64_t cols, uint8_t* out);  // AVX2 where the CPU has it
void quantize_q8_rows_reference(const float* x, int64_t tokens, int64_t cols, uint8_t* out);  // scalar, the same bytes
void quantize_q8_rows(const float* x, int64_t tokens, int64_t cols, uint8_t* out, ThreadPool& pool);  // rows in parallel
// Whether a product with these activations sees x rounded to Q8 (FP4 weights on the AVX2/AVX-512
// paths, NEON with dotprod): at 1-kQ8MaxTokens tokens (AVX-512: 1-4 without VNNI, every count with
// VNNI + VBMI, past 4 in its matrix product) linear_rows runs it from Q8 rows
// (linear_wants_q8; the caller fills LinearJob::xq; past 4 tokens in groups of 4 over each row range,
// whose weights are then read from L1), beyond that the fp32 tiles run on round_q8(x), so that a
// request's products do not depend on how many tokens its batch put through an expert. (An expert
// of a 512-token prefill sees ~16 tokens: integer dots do 4× the work of an FMA per instruction.)
constexpr int64_t kQ8MaxTokens = 16;
bool linear_rounds_q8(LinearPath path, Activations act, const WeightView& w);
bool linear_wants_q8(LinearPath path, Activations act, const WeightView& w, int64_t tokens);
// x [tokens, cols] → the values the Q8 rows stand for (q · scale), in column order.
void round_q8(const float* x, int64_t tokens, int64_t cols, float* out, ThreadPool& pool);  // rows in parallel

// One product of a grouped call, computed a row range at a time on the calling thread:
// y[t * ldy + r] = Σ_c x[t * w.cols + c] · W[r, c] for t < tokens. `xd` is x rearranged by
// prepare_x in the layout linear_x_layout names, when it names one (else unused).
struct LinearJob {
  const WeightView* w = nullptr;
  const float* x = nullptr;
  const float* xd = nullptr;
  const uint8_t* xq = nullptr;  // Q8 rows of x (quantize_q8_rows) when linear_wants_q8 says so, else null
  float* y = nullptr;
  int64_t ldy = 0;
  int64_t tokens = 0;
  const uint16_t* xb = nullptr;  // bf16 rows of x (bf16_rows) when linear_wants_bf16 says so, else null
  const uint32_t* xamx = nullptr;  // x as AMX's operand (amx_split_x) when linear_runs_on_amx says so, else null
};
// Whether a product runs BF16 weights × fp32 x on AMX (f32 products, 3+ tokens, cols % 32 == 0, a CPU
// with AMX-BF16): the caller fills LinearJob::xamx with amx_split_x. The result is exact as the fp32
// kernels' are (x in three bf16 planes that sum to it; linear_amx.cpp).
bool linear_runs_on_amx(LinearPath path, Activations act, const WeightView& w, int64_t tokens);
int64_t amx_x_words(int64_t tokens, int64_t cols);  // the words amx_split_x writes
void amx_split_x(const float* x, int64_t tokens, int64_t cols, uint32_t* out);
// How the bf16 rows of x are laid out for a weight: as x (BF16 weights), or per 64-column block the
// columns [0-7 16-23 32-39 48-55] then [8-15 24-31 40-47 56-63] (FP8 weights: the order their
// codes are converted in, linear_bf16_avx512.cpp).
enum class Bf16Layout { Plain, Fp8Interleaved64 };
Bf16Layout bf16_layout(const WeightView& w);
// Whether a product runs BF16 weights × bf16-rounded x (AVX512_BF16, or AArch64 BF16 for BF16 weights
// only; every token count, so that a request's products do not depend on its batch): the caller
// fills LinearJob::xb.
bool linear_wants_bf16(LinearPath path, Activations act, const WeightView& w);
// x [tokens, cols] → out [tokens, cols] bf16 (round to nearest even), rows in parallel. Only where
// linear_wants_bf16 can hold (AVX512_BF16; AArch64 BF16 with the plain layout).
void bf16_rows(const float* x, int64_t tokens, int64_t cols, Bf16Layout layout, uint16_t* out, ThreadPool& pool);
// Rows per work unit: ranges passed to linear_rows start at multiples of it (tile rows of the
// matrix-matrix kernels), and end at a multiple of it or at w.rows.
int64_t linear_grain(LinearPath path, const WeightView& w, int64_t tokens);
void linear_rows(LinearPath path, const LinearJob& job, int64_t r0, int64_t r1);
// How a 1-4 token kernel reads x (LinearJob::xd), rearranged once per call so that no weight needs
// reordering: per 32-column block c0 + [0, 32); columns past the last whole block are copied as is.
enum class XLayout {
  Plain,      // xd unused
  Pairs,      // the 16 even columns, then the 16 odd ones (AVX2 BF16, AVX-512 FP4)
  E4m3Quads,  // columns 4j, then 4j+1, 4j+2, 4j+3 (j = 0..7), each times kE4m3XScale (AVX2 E4M3)
  E4m3Quads64,  // per 64-column block: columns 4j, then 4j+1, 4j+2, 4j+3 (j = 0..15), times
                // kE4m3XScale (AVX-512 E4M3); columns past the last whole 64-block as is
  Fp8Bf16Pairs64,  // per 64-column block, lanes d = 4L + m (L, m = 0..3): columns 16L + 2m, then
                   // 16L + 2m + 1, 16L + 8 + 2m, 16L + 9 + 2m (AVX-512 VBMI FP8, fp8_lut_avx512.h's
                   // words split into fp32); columns past the last whole 64-block as is
};
constexpr float kE4m3XScale = 0x1p64f;  // see gemv_e4m3_pass: the weights decode as value × 2^-120
XLayout linear_x_layout(LinearPath path, const WeightView& w, int64_t tokens);
// x [tokens, cols] → out [tokens, cols] in `layout` (not Plain).
void prepare_x(XLayout layout, const float* x, int64_t tokens, int64_t cols, float* out);

// Decodes rows [r0, r0 + n) of W into out[n, w.cols] fp32 (embedding lookup, tests).
void dequant_rows(const WeightView& w, int64_t r0, int64_t n, float* out);

namespace detail {
// The AVX2 kernels (linear_avx2.cpp); only called when cpu_features().avx2_fma_f16c.
// 1-4 tokens: gemv over any row range; 5+ tokens: 16-row tiles.
// At 1-4 tokens BF16 and E4M3 read job.xd (gemv_avx2_x_layout).
void rows_avx2(const LinearJob& job, int64_t r0, int64_t r1);
inline XLayout gemv_avx2_x_layout(const WeightView& w, int64_t tokens) {
  if (tokens < 1 || tokens > 4) return XLayout::Plain;
  if (w.format == WeightFormat::Dense && w.dtype == DType::BF16) return XLayout::Pairs;
  // E4M3 blocks of whole 32-column chunks (simd_cols); other block widths take the scalar loop.
  if (w.format == WeightFormat::Fp8Block && w.dtype == DType::F8_E4M3 && w.block_cols % 32 == 0) return XLayout::E4m3Quads;
  return XLayout::Plain;
}
constexpr int64_t kAvx2TileRows = 16;
// FP4 gemv over Q8 rows (linear_q8_avx2.cpp): 1-4 tokens, cols % 32 == 0.
void rows_q8_avx2(const LinearJob& job, int64_t r0, int64_t r1);
void quantize_q8_rows_avx2(const float* x, int64_t tokens, int64_t cols, uint8_t* out);  // = the reference's bytes
void quantize_q8_rows_neon(const float* x, int64_t tokens, int64_t cols, uint8_t* out);  // = the reference's bytes
// The AArch64 kernels (linear_neon.cpp): 1-4 tokens, every format with fp32 activations, and FP4
// over Q8 rows (only called when cpu_features().dotprod); 5+ tokens, 8-row tiles.
void rows_neon(const LinearJob& job, int64_t r0, int64_t r1);
constexpr int64_t kNeonTileRows = 8;
void rows_q8_neon(const LinearJob& job, int64_t r0, int64_t r1);
// BF16 weights × bf16 rows of x with FEAT_BF16 (linear_bf16_neon.cpp): every token count; only
// called when cpu_features().neon_bf16.
void rows_bf16_neon(const LinearJob& job, int64_t r0, int64_t r1);
void dequant_row_avx2(const WeightView& w, int64_t r, float* out);
// Decodes W[r0 .. r0+tile_rows) × [k0 .. k0+kc) into tile[k][tile_rows], zero rows past the end.
void decode_tile_avx2(const WeightView& w, int64_t r0, int tile_rows, int64_t k0, int64_t kc, float* tile);
// The AVX-512 kernels (linear_avx512.cpp); only called when cpu_features().avx512.
// 1-4 tokens of BF16 or FP4, 1-kAvx512E4m3GemvMaxTokens of E4M3 (and of E5M2 with VBMI, through
// rows_fp8_lut_avx512; 64-column spans; past 4 in groups of 4): gemv over job.xd in
// gemv_avx512_x_layout; more tokens: 32-row tiles; else rows_avx2.
constexpr int64_t kAvx512E4m3GemvMaxTokens = 16;
constexpr int64_t kAvx512Bf16GemvMaxTokens = 8;  // in groups of 4 past 4: from memory 1.3x the tiles at 6-8
bool gemv_avx512_supports(const WeightView& w, int64_t tokens);
XLayout gemv_avx512_x_layout(const WeightView& w);
void rows_avx512(const LinearJob& job, int64_t r0, int64_t r1);
constexpr int64_t kAvx512TileRows = 32;
// FP4 gemv over Q8 rows with VNNI + VBMI (linear_q8_avx512.cpp): 1-4 tokens, cols % 32 == 0; only
// called when cpu_features().avx512_vnni_vbmi.
void rows_q8_avx512(const LinearJob& job, int64_t r0, int64_t r1);
// BF16 weights (any cols) and FP8 block weights (cols, block_cols % 64 == 0; with VBMI) × bf16 rows of
// x with AVX512_BF16 (linear_bf16_avx512.cpp): every token count; only called when
// cpu_features().avx512_bf16. bf16_rows_avx512 converts n floats (whole rows).
void rows_bf16_avx512(const LinearJob& job, int64_t r0, int64_t r1);
void bf16_rows_avx512(const float* x, int64_t n, Bf16Layout layout, uint16_t* out);
// BF16 weights × fp32 x on AMX (linear_amx.cpp): kAmxMinTokens tokens or more, cols % 32 == 0
// (amx_supports), x split into three bf16 planes that sum to it; only called when
// cpu_features().amx_bf16 and the products are f32. Rows in blocks of 16.
constexpr int64_t kAmxMinTokens = 3;
bool amx_supports(const WeightView& w, int64_t tokens);
void rows_bf16_amx(const LinearJob& job, int64_t r0, int64_t r1);  // reads job.xamx
void amx_split_x_avx512(const float* x, int64_t tokens, int64_t cols, uint32_t* out);
// FP8 code & 0x7F → the high byte (sign clear) and the low byte of its value's bf16, which is exact
// for every E4M3 and E5M2 code (fp8_lut_avx512.h looks them up).
struct Fp8Bf16Tables {
  alignas(64) uint8_t hi[128];
  alignas(64) uint8_t lo[128];
};
const Fp8Bf16Tables& fp8_bf16_tables(bool e5m2);
// FP8 block weights (E4M3 or E5M2; cols and block_cols multiples of 64) × fp32 x in
// XLayout::Fp8Bf16Pairs64, 1-kAvx512E4m3GemvMaxTokens tokens (past 4 in groups of 4 over row stripes),
// decoded through fp8_lut_avx512.h (linear_fp8_avx512.cpp); only called when
// cpu_features().avx512_vnni_vbmi.
void rows_fp8_lut_avx512(const LinearJob& job, int64_t r0, int64_t r1);
// The matrix product over Q8 rows with VNNI + VBMI (linear_q8_gemm_avx512.cpp): 5+ tokens, 32-row
// tiles (kAvx512TileRows), cols % 32 == 0; only called when cpu_features().avx512_vnni_vbmi.
void rows_q8_gemm_avx512(const LinearJob& job, int64_t r0, int64_t r1);
}  // namespace detail

}  // namespace m2
