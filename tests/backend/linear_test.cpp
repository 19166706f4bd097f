// Every fast path of the linear layer against the scalar reference, on fresh random weights and inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/linear.h"
#include "backend/random_weight.h"
#include "core/error.h"
#include "test_util.h"

namespace m2 {
namespace {

struct FormatCase {
  const char* name;
  WeightFormat format;
  DType dtype;
  double tolerance;  // ‖fast − ref‖/‖ref‖: fp32 accumulation in a different order vs double
};
const FormatCase kFormats[] = {
    {"bf16", WeightFormat::Dense, DType::BF16, 2e-6},    {"f16", WeightFormat::Dense, DType::F16, 2e-6},
    {"f32", WeightFormat::Dense, DType::F32, 2e-6},      {"fp8-e4m3", WeightFormat::Fp8Block, DType::F8_E4M3, 2e-6},
    {"fp8-e5m2", WeightFormat::Fp8Block, DType::F8_E5M2, 2e-6}, {"nvfp4", WeightFormat::Nvfp4, DType::U8, 2e-6},
    {"mxfp4", WeightFormat::Mxfp4, DType::U8, 2e-6},
};

// The generic path and every SIMD path this CPU runs.
std::vector<LinearPath> this_cpu_paths() {
  std::vector<LinearPath> paths = {LinearPath::Generic};
  if (cpu_features().avx2_fma_f16c) paths.push_back(LinearPath::Avx2);
  if (cpu_features().avx512) paths.push_back(LinearPath::Avx512);
  if (cpu_features().neon) paths.push_back(LinearPath::Neon);
  return paths;
}

void check_paths(const FormatCase& f, int64_t rows, int64_t cols, int64_t tokens, std::mt19937_64& rng,
                 ThreadPool& pool, int64_t data_offset = 0) {
  auto w = test::random_weight(f.format, f.dtype, rows, cols, rng, 128, data_offset);
  auto x = test::random_floats(rng, size_t(tokens * cols));
  std::vector<float> ref(size_t(tokens * rows)), got(size_t(tokens * rows), NAN);
  linear_ref(w.view, x.data(), ref.data(), tokens);
  for (auto path : this_cpu_paths()) {
    std::fill(got.begin(), got.end(), NAN);
    linear(w.view, x.data(), got.data(), tokens, pool, path);
    EXPECT_LE(test::rel_err(got.data(), ref.data(), got.size()), f.tolerance)
        << f.name << " path " << int(path) << " rows " << rows << " cols " << cols << " tokens " << tokens
        << " data offset " << data_offset;
  }
}

TEST(Linear, FastPathsMatchReferenceForEveryFormat) {
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  for (const auto& f : kFormats) {
    // Shapes with tails: rows not a multiple of the 16-row tile, cols with a 16-column remainder.
    const bool fp4 = f.format == WeightFormat::Nvfp4 || f.format == WeightFormat::Mxfp4;
    std::vector<std::pair<int64_t, int64_t>> shapes = {{37, 96}, {64, 256}, {130, 320}};
    if (!fp4 || f.format == WeightFormat::Nvfp4) shapes.push_back({19, 48});
    if (!fp4) shapes.push_back({5, 21});
    for (auto [rows, cols] : shapes)
      for (int64_t tokens : {1, 2, 3, 4, 5, 6, 7, 13, 40}) check_paths(f, rows, cols, tokens, rng, pool);
  }
}

// Weights that do not start on a cache line (other writers' safetensors files: 8-byte header padding,
// tensors of any size before them), at every token count of the gemv and into the tiles.
TEST(Linear, WeightsOffCacheLinesMatchReference) {
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  for (const auto& f : kFormats) {
    const int64_t element = f.format == WeightFormat::Dense ? int64_t(dtype_size(f.dtype)) : 1;
    for (int64_t offset : {element, int64_t(8), int64_t(40), int64_t(64 - element)})
      for (int64_t tokens : {1, 2, 3, 4, 5, 8, 17}) check_paths(f, 64, 256, tokens, rng, pool, offset);
  }
}

// The AMX product (BF16 weights, f32, 3+ tokens) gives each token the same bits whatever the batch:
// every output is its own dot product over the same 32-column steps. And it stays exact: x's three
// bf16 planes sum to x (dropping the smallest plane fails the reference tests). 150 tokens cross
// token groups (16) and blocks (64).
TEST(Linear, AmxTokenDoesNotDependOnItsBatch) {
  if (!cpu_features().amx_bf16) GTEST_SKIP() << "needs AMX-BF16 (and the kernel's permission)";
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  constexpr int64_t kAll = 150;
  for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{37, 256}, {131, 608}}) {
    auto w = test::random_weight(WeightFormat::Dense, DType::BF16, rows, cols, rng);
    auto x = test::random_floats(rng, size_t(kAll * cols));
    std::vector<float> all(size_t(kAll * rows)), some(all.size());
    linear(w.view, x.data(), all.data(), kAll, pool);
    for (int64_t tokens = detail::kAmxMinTokens; tokens < kAll; tokens += tokens < 70 ? 1 : 13) {
      ASSERT_TRUE(linear_runs_on_amx(resolve_linear_path(LinearPath::Auto), Activations::F32, w.view, tokens));
      linear(w.view, x.data(), some.data(), tokens, pool);
      EXPECT_EQ(std::memcmp(some.data(), all.data(), size_t(tokens * rows) * 4), 0)
          << "rows " << rows << " cols " << cols << ": the first " << tokens << " tokens alone";
    }
  }
}

// A row-parallel shard is a column slice that keeps its parent's row stride (slice_cols): every path
// must read only its columns, and the tiles' prefetch of the next chunk must size a row's piece by
// its columns, not by the stride (it once overflowed its line list on a TP-4 shard).
TEST(Linear, ColumnSlicesMatchReference) {
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  for (const auto& f : kFormats) {
    auto w = test::random_weight(f.format, f.dtype, 70, 1536, rng);
    const WeightView slice = slice_cols(w.view, 256, 768);
    for (int64_t tokens : {1, 4, 5, 16, 40}) {
      auto x = test::random_floats(rng, size_t(tokens * slice.cols));
      std::vector<float> ref(size_t(tokens * slice.rows)), got(ref.size());
      linear_ref(slice, x.data(), ref.data(), tokens);
      for (auto path : this_cpu_paths()) {
        std::fill(got.begin(), got.end(), NAN);
        linear(slice, x.data(), got.data(), tokens, pool, path);
        EXPECT_LE(test::rel_err(got.data(), ref.data(), got.size()), f.tolerance)
            << f.name << " path " << int(path) << " tokens " << tokens;
      }
    }
  }
}

// The AVX-512 fp32 tiles decode FP4, BF16 and E4M3 at full width (dword transposes, then vpermps,
// shifts and masks per column) and the AVX2 tiles by 8×8 transposes; both sum each output over the same 256-column chunks in the same
// order with FMAs, so the two paths must agree bit for bit at 5+ tokens (f32 activations): any
// misplaced nibble, row or scale shows, however small its value.
TEST(Linear, Avx512TilesEqualTheAvx2TilesBitForBit) {
  if (!cpu_features().avx512 || !cpu_features().avx2_fma_f16c) GTEST_SKIP() << "needs AVX-512 and AVX2";
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  const std::pair<WeightFormat, DType> formats[] = {
      {WeightFormat::Nvfp4, DType::U8}, {WeightFormat::Mxfp4, DType::U8}, {WeightFormat::Dense, DType::BF16},
      {WeightFormat::Fp8Block, DType::F8_E4M3}};
  for (auto [format, dtype] : formats)
    for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{64, 256}, {130, 320}, {96, 608}}) {
      auto w = test::random_weight(format, dtype, rows, cols, rng);
      // BF16 and E4M3 run the AVX-512 gemv up to their kAvx512*GemvMaxTokens, tiles past it.
      for (int64_t tokens : {5, 9, 12, 13, 17, 29}) {
        if (format == WeightFormat::Dense && tokens <= detail::kAvx512Bf16GemvMaxTokens) continue;
        if (format == WeightFormat::Dense && cpu_features().amx_bf16 && detail::amx_supports(w.view, tokens)) continue;
        if (format == WeightFormat::Fp8Block && tokens <= detail::kAvx512E4m3GemvMaxTokens) continue;
        auto x = test::random_floats(rng, size_t(tokens * cols));
        std::vector<float> avx2(size_t(tokens * rows)), avx512(size_t(tokens * rows), NAN);
        linear(w.view, x.data(), avx2.data(), tokens, pool, LinearPath::Avx2);
        linear(w.view, x.data(), avx512.data(), tokens, pool, LinearPath::Avx512);
        for (size_t i = 0; i < avx2.size(); ++i)
          ASSERT_EQ(avx512[i], avx2[i]) << int(format) << " rows " << rows
                                         << " cols " << cols << " tokens " << tokens << " output " << i;
      }
    }
}

TEST(Linear, Fp8RaggedEdgeBlocksAndSmallBlocks) {
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  for (int block : {128, 64, 32, 48}) {
    auto w = test::random_weight(WeightFormat::Fp8Block, DType::F8_E4M3, 200, 300, rng, block);
    auto x = test::random_floats(rng, 3 * 300);
    std::vector<float> ref(3 * 200), got(3 * 200);
    linear_ref(w.view, x.data(), ref.data(), 3);
    // The reference itself: element (r, c) uses scale [r / block, c / block].
    float s;
    std::memcpy(&s, w.view.scales + 4 * ((199 / block) * w.view.scale_stride + 299 / block), 4);
    EXPECT_EQ(weight_element_ref(w.view, 199, 299), e4m3_to_f32(w.view.data[199 * 300 + 299]) * s);
    linear(w.view, x.data(), got.data(), 3, pool);
    EXPECT_LE(test::rel_err(got.data(), ref.data(), got.size()), 2e-6) << "block " << block;
  }
}

// Every E4M3 code but NaN, one code per row (subnormals, the largest exponents and both signs each
// get rows of their own, so a code decoded wrongly cannot hide in a sum of larger ones), against the
// reference row by row, at 1-4 tokens (the gemv paths) and 5 (tiles); x spans 2^-20..2^20 so that
// products cover the range the kernels rescale. 288 columns (two 128-column blocks and a 32-column
// one) run the AVX2 gemv everywhere; 320 (a last block of 64) runs the AVX-512 one where it exists.
// E5M2 the same way, every finite code (its AVX-512 gemv is the VBMI table decode).
void check_every_fp8_code(DType dtype, int64_t cols, std::mt19937_64& rng, ThreadPool& pool) {
  std::vector<uint8_t> codes;
  for (int c = 0; c < 256; ++c)
    if (dtype == DType::F8_E4M3 ? (c & 0x7F) != 0x7F : (c & 0x7C) != 0x7C) codes.push_back(uint8_t(c));
  const int64_t rows = int64_t(codes.size());
  std::vector<uint8_t> data(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)  // mostly the row's code, one column in 7 a neighbour code
      data[size_t(r * cols + c)] = c % 7 == 3 ? codes[size_t((r + 1) % rows)] : codes[size_t(r)];
  const int64_t block = 128, srows = (rows + block - 1) / block, scols = (cols + block - 1) / block;
  std::vector<uint8_t> scales(size_t(4 * srows * scols));
  std::uniform_real_distribution<float> log_scale(-12.0f, 4.0f);
  for (int64_t i = 0; i < srows * scols; ++i) {
    const float s = std::exp2(log_scale(rng));
    std::memcpy(scales.data() + 4 * i, &s, 4);
  }
  WeightView w{"every_fp8_code", WeightFormat::Fp8Block, dtype, rows, cols, data.data(), cols,
               scales.data(), scols, block, block, 1.0f, 0};
  if (cpu_features().avx512 && dtype == DType::F8_E4M3) {
    ASSERT_EQ(linear_x_layout(LinearPath::Avx512, w, 1), cols % 64 == 0 ? XLayout::E4m3Quads64 : XLayout::E4m3Quads);
  }
  std::uniform_real_distribution<float> log_x(-20.0f, 20.0f);
  for (int64_t tokens : {1, 2, 3, 4, 5, 9, 16, 17}) {  // gemv, groups of 4 (AVX-512), tiles
    std::vector<float> x(size_t(tokens * cols));
    for (auto& v : x) v = (rng() % 2 ? 1.0f : -1.0f) * std::exp2(log_x(rng));
    std::vector<float> ref(size_t(tokens * rows)), got(size_t(tokens * rows));
    linear_ref(w, x.data(), ref.data(), tokens);
    for (auto path : this_cpu_paths()) {
      std::fill(got.begin(), got.end(), NAN);
      linear(w, x.data(), got.data(), tokens, pool, path);
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t r = 0; r < rows; ++r) {
          // fp32 accumulation of the row's products: within 2e-6 of Σ|x·w| (the reference is double).
          double mag = 0;
          for (int64_t c = 0; c < cols; ++c) mag += std::fabs(double(x[size_t(t * cols + c)]) * weight_element_ref(w, r, c));
          const size_t i = size_t(t * rows + r);
          EXPECT_LE(std::fabs(double(got[i]) - ref[i]), 2e-6 * mag)
              << "path " << int(path) << " cols " << cols << " tokens " << tokens << " row " << r << " code 0x"
              << std::hex << int(codes[size_t(r)]);
        }
    }
  }
}

TEST(Linear, Fp8EveryE4m3CodeRowByRow) {
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  for (int64_t cols : {288, 320}) check_every_fp8_code(DType::F8_E4M3, cols, rng, pool);
}

TEST(Linear, Fp8EveryE5m2CodeRowByRow) {
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  for (int64_t cols : {288, 320}) check_every_fp8_code(DType::F8_E5M2, cols, rng, pool);
}

TEST(Linear, Fp4NibbleOrderAndScales) {
  // Hand-built row: low nibble = even column (spec §3.2), scale per 16 (NVFP4) / 32 (MXFP4).
  std::vector<uint8_t> packed(16);
  for (int i = 0; i < 16; ++i) packed[size_t(i)] = uint8_t((i % 16) | (((15 - i) % 16) << 4));
  std::vector<uint8_t> nv_scales = {f32_to_e4m3(2.0f), f32_to_e4m3(0.5f)}, mx_scales = {uint8_t(127 + 3)};
  WeightView nv{"nv", WeightFormat::Nvfp4, DType::U8, 1, 32, packed.data(), 16, nv_scales.data(), 2, 1, 16, 0.25f, 0};
  WeightView mx{"mx", WeightFormat::Mxfp4, DType::U8, 1, 32, packed.data(), 16, mx_scales.data(), 1, 1, 32, 1.0f, 0};
  std::vector<float> row(32);
  for (auto* w : {&nv, &mx}) {
    dequant_rows(*w, 0, 1, row.data());
    for (int c = 0; c < 32; ++c) {
      uint8_t code = (c % 2 == 0) ? uint8_t(c / 2) : uint8_t(15 - c / 2);
      float scale = w == &nv ? (c < 16 ? 2.0f : 0.5f) * 0.25f : 8.0f;
      EXPECT_EQ(row[size_t(c)], e2m1_to_f32(code) * scale) << w->name << " col " << c;
    }
  }
}

// The int8-activation path (Activations::Q8) for FP4 weights: Q8 rows at 1-4 tokens, fp32 tiles on
// the rounded x at 5+.
//  1. Against the reference run on the rounded activations x̃ = q · scale (recovered from the Q8 rows,
//     so the layout is checked too): only fp32 accumulation differs, 2e-6 of Σ|x̃ w|.
//  2. Against the exact reference: per output, |y − ref| ≤ Σ_blocks (max|x_b| / 254) · Σ_b |w|
//     (round to nearest: each |x − x̃| ≤ scale / 2), plus the fp32 slack of 1.
// How many outputs of `got` (W · x run on rounded activations xr) miss a bound:
//  |got − ref(xr)| ≤ 2e-6 Σ|xr w| (only the fp32 summation differs from the reference on xr), and,
//  when `exact_bound` is given, |got − ref(x)| ≤ exact_bound(t, W row) + 2e-6 Σ|xr w| (what rounding x
//  may cost, plus that slack). A NaN misses both.
int outputs_outside(const WeightView& w, const std::vector<float>& x, const std::vector<float>& xr,
                    const std::vector<float>& got, int64_t tokens,
                    const std::function<double(int64_t t, const float* wrow)>& exact_bound = {}) {
  const int64_t rows = w.rows, cols = w.cols;
  std::vector<float> ref(got.size()), ref_rounded(got.size()), wrow(static_cast<size_t>(cols));
  linear_ref(w, xr.data(), ref_rounded.data(), tokens);
  if (exact_bound) linear_ref(w, x.data(), ref.data(), tokens);
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    dequant_row_ref(w, r, wrow.data());
    for (int64_t t = 0; t < tokens; ++t) {
      double abs_dot = 0;
      for (int64_t c = 0; c < cols; ++c) abs_dot += std::fabs(double(xr[size_t(t * cols + c)]) * wrow[size_t(c)]);
      const size_t i = size_t(t * rows + r);
      if (!(std::fabs(double(got[i]) - ref_rounded[i]) <= 2e-6 * abs_dot + 1e-30)) ++bad;
      if (exact_bound && !(std::fabs(double(got[i]) - ref[i]) <= exact_bound(t, wrow.data()) + 2e-6 * abs_dot)) ++bad;
    }
  }
  return bad;
}

std::vector<float> q8_rounded_x(const std::vector<uint8_t>& rows, int64_t tokens, int64_t cols) {
  const int64_t nb = cols / 32;
  std::vector<float> out(size_t(tokens * cols));
  for (int64_t t = 0; t < tokens; ++t) {
    const uint8_t* row = rows.data() + t * q8_row_bytes(cols);
    const float* scale = reinterpret_cast<const float*>(row + 12 * nb);
    const int8_t* q = reinterpret_cast<const int8_t*>(row + 24 * nb);
    for (int64_t b = 0; b < nb; ++b)
      for (int i = 0; i < 16; ++i) {
        out[size_t(t * cols + 32 * b + 2 * i)] = float(q[32 * b + i]) * scale[b];
        out[size_t(t * cols + 32 * b + 2 * i + 1)] = float(q[32 * b + 16 + i]) * scale[b];
      }
  }
  return out;
}

// x → its Q8 rows (quantize_q8_rows) → the values they stand for.
std::vector<float> q8_rounded(const std::vector<float>& x, int64_t tokens, int64_t cols) {
  std::vector<uint8_t> q8(size_t(tokens * q8_row_bytes(cols)));
  quantize_q8_rows(x.data(), tokens, cols, q8.data());
  return q8_rounded_x(q8, tokens, cols);
}

// The paths with a Q8 kernel on this CPU: AVX2, AVX-512 (its VNNI kernel where the CPU has VNNI and
// VBMI, else the AVX2 one), NEON with dotprod. Empty when there is none.
std::vector<LinearPath> q8_paths() {
  std::vector<LinearPath> paths;
  if (cpu_features().avx2_fma_f16c) paths.push_back(LinearPath::Avx2);
  if (cpu_features().avx512) paths.push_back(LinearPath::Avx512);
  if (cpu_features().neon && cpu_features().dotprod) paths.push_back(LinearPath::Neon);
  return paths;
}

// The most tokens a Q8 path runs from Q8 rows (in groups of 4 past 4); more run the fp32 tiles on
// the rounded x.
int64_t q8_row_tokens(LinearPath path) {
  if (path == LinearPath::Avx512) return cpu_features().avx512_vnni_vbmi ? INT64_MAX : 4;  // VNNI: the gemm past 4
  return kQ8MaxTokens;
}

// The AVX2 and NEON quantizers of x (quantize_q8_rows there) write the scalar reference's bytes: codes,
// scales, offset corrections. Blocks of random values at magnitudes from 1e-30 to 1e30, a block of
// zeros, one of exact ties (amax 127: x · inv = k + ½, rounded to even), one with -0.0 and
// subnormals (127 / amax overflows: codes 0), one at the edge of that, and the real widths.
TEST(Linear, Q8RowsOfTheSimdQuantizerAreTheReferencesBytes) {
  if (!cpu_features().avx2_fma_f16c && !cpu_features().neon)
    GTEST_SKIP() << "neither AVX2 nor NEON on this CPU: quantize_q8_rows is the reference";
  std::mt19937_64 rng(test::fresh_seed());
  for (int64_t cols : {32, 96, 1536, 3072}) {
    const int64_t tokens = 3, nb = cols / 32;
    auto x = test::random_floats(rng, size_t(tokens * cols));
    std::uniform_int_distribution<int> expo(-30, 30);
    for (int64_t b = 0; b < tokens * nb; ++b) {
      const float m = std::pow(10.0f, float(expo(rng)));
      for (int i = 0; i < 32; ++i) x[size_t(32 * b + i)] *= m;
    }
    if (tokens * nb >= 6) {
      std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // block 1: zeros (scale 0)
      for (int i = 0; i < 32; ++i) x[size_t(64 + i)] = i == 0 ? 127.0f : float(i % 7) - 2.5f;  // block 2: ties
      for (int i = 0; i < 32; ++i) x[size_t(96 + i)] = i % 2 ? -0.0f : 1e-40f * float(i);  // block 3: -0, subnormals
      for (int i = 0; i < 32; ++i) x[size_t(128 + i)] = float(i - 16) * 0x1.2p-127f;        // block 4: amax 2^-123
    }
    std::vector<uint8_t> got(size_t(tokens * q8_row_bytes(cols))), want(got.size());
    quantize_q8_rows(x.data(), tokens, cols, got.data());
    quantize_q8_rows_reference(x.data(), tokens, cols, want.data());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], want[i]) << cols << " columns: byte " << i << " of " << got.size();
  }
}

TEST(Linear, Q8ActivationsWithinTheirRoundingBound) {
  if (q8_paths().empty()) GTEST_SKIP() << "no AVX2 and no NEON dotprod: the Q8 path is not used on this CPU";
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  // cols: one partial scale group (96: a pair of chunks and one alone), groups + a tail (320), the
  // real widths, and > 8192 columns (more than one column stripe per pass; 8224 leaves a stripe of
  // one chunk).
  // 96, 320 and 8224 columns leave 3, 2 and 1 chunks past the VNNI kernel's groups of 4; 8256 two
  // column stripes of both kernels.
  for (const LinearPath path : q8_paths())
  for (auto format : {WeightFormat::Nvfp4, WeightFormat::Mxfp4})
    for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{37, 96}, {19, 320}, {64, 3072}, {9, 1536}, {5, 8256}, {7, 8224}})
      // 5-16: Q8 rows in groups of 4 (AVX-512 VNNI: its gemm, 6 tokens per step, so 13 and 40 leave
      // 1 and 4); 17+: fp32 tiles on the rounded x (VNNI: the gemm).
      for (int64_t tokens : {1, 2, 3, 4, 5, 6, 13, 16, 17, 40}) {
        auto w = test::random_weight(format, DType::U8, rows, cols, rng);
        auto x = test::random_floats(rng, size_t(tokens * cols));
        for (size_t i = 0; i < x.size(); i += 97) x[i] *= 20.0f;  // outliers, as activations have
        ASSERT_EQ(linear_wants_q8(path, Activations::Q8, w.view, tokens), tokens <= q8_row_tokens(path));
        ASSERT_TRUE(linear_rounds_q8(path, Activations::Q8, w.view));
        std::vector<float> got(size_t(tokens * rows));
        linear(w.view, x.data(), got.data(), tokens, pool, path, Activations::Q8);
        // Per output: Σ_blocks (max|x_b| / 254) · Σ_b |w| (round to nearest: |x − x̃| ≤ scale / 2).
        const int bad = outputs_outside(w.view, x, q8_rounded(x, tokens, cols), got, tokens, [&](int64_t t, const float* wrow) {
          double bound = 0;
          for (int64_t b = 0; b < cols / 32; ++b) {
            double amax = 0, wsum = 0;
            for (int64_t c = 32 * b; c < 32 * b + 32; ++c) {
              amax = std::max(amax, std::fabs(double(x[size_t(t * cols + c)])));
              wsum += std::fabs(double(wrow[c]));
            }
            bound += amax / 254.0 * wsum;
          }
          return bound * (1 + 1e-5);
        });
        EXPECT_EQ(bad, 0) << "path " << int(path) << " " << weight_format_name(format) << " " << rows << "x" << cols
                          << " tokens " << tokens;
      }
}

// A row's result must not depend on the range it came in (linear.h: grouped products cut their
// ranges where the chunks of equal cost fall, so a row's range changes with the batch's experts),
// however the rows were split (ranges start at multiples of the grain), and one long range (1,000
// rows, as a model's products give: 8 experts' rows in 16 chunks) must agree with the reference.
// Bit for bit against linear() on 2 threads; every SIMD path, 1-4 tokens, fp32 and Q8 activations.
TEST(Linear, GemvRowDoesNotDependOnItsRange) {
  if (this_cpu_paths().size() == 1) GTEST_SKIP() << "no SIMD path on this CPU: the generic path only";
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  const FormatCase* cases[] = {&kFormats[0], &kFormats[1], &kFormats[3], &kFormats[4], &kFormats[5], &kFormats[6]};
  for (auto path : this_cpu_paths()) {
    if (path == LinearPath::Generic) continue;
    for (const FormatCase* f : cases)
      for (auto act : {Activations::F32, Activations::Q8})
        for (int64_t tokens : {1, 2, 3, 4}) {
          const int64_t rows = 16 * 61 + 3, cols = 256;  // 3 rows past the last whole 16
          auto w = test::random_weight(f->format, f->dtype, rows, cols, rng);
          auto x = test::random_floats(rng, size_t(tokens * cols));
          std::vector<float> ref(size_t(tokens * rows)), whole(ref.size()), split(ref.size(), NAN);
          linear(w.view, x.data(), whole.data(), tokens, pool, path, act);
          LinearJob job{&w.view, x.data(), x.data(), nullptr, split.data(), rows, tokens};
          std::vector<uint8_t> q8(size_t(tokens * q8_row_bytes(cols)));
          std::vector<float> xd(x.size());
          std::vector<uint32_t> xamx;
          if (linear_runs_on_amx(path, act, w.view, tokens)) {
            xamx.resize(size_t(amx_x_words(tokens, cols)));
            amx_split_x(x.data(), tokens, cols, xamx.data());
            job.xamx = xamx.data();
          } else if (linear_wants_q8(path, act, w.view, tokens)) {
            quantize_q8_rows(x.data(), tokens, cols, q8.data());
            job.xq = q8.data();
          } else if (const XLayout layout = linear_x_layout(path, w.view, tokens); layout != XLayout::Plain) {
            prepare_x(layout, x.data(), tokens, cols, xd.data());
            job.xd = xd.data();
          }
          const int64_t grain = linear_grain(path, w.view, tokens);
          std::uniform_int_distribution<int64_t> units(1, 9);
          for (int64_t r0 = 0; r0 < rows;) {
            const int64_t r1 = std::min(rows, r0 + grain * units(rng));
            linear_rows(path, job, r0, r1);
            r0 = r1;
          }
          const std::string what = std::string(f->name) + " path " + std::to_string(int(path)) + " " +
                                   std::string(activations_name(act)) + " tokens " + std::to_string(tokens);
          EXPECT_EQ(std::memcmp(split.data(), whole.data(), split.size() * 4), 0) << what << ": split ranges";
          std::fill(split.begin(), split.end(), NAN);
          linear_rows(path, job, 0, rows);  // one range
          EXPECT_EQ(std::memcmp(split.data(), whole.data(), split.size() * 4), 0) << what << ": one range";
          if (job.xq) continue;  // Q8: within its rounding bound (Q8ActivationsWithinTheirRoundingBound)
          linear_ref(w.view, x.data(), ref.data(), tokens);
          EXPECT_LE(test::rel_err(split.data(), ref.data(), ref.size()), f->tolerance) << what;
        }
  }
}

// Every block-scale code through the Q8 paths (the VNNI gemm converts them 16 rows at a time, the
// gemv 4-8 per row): NVFP4 every E4M3 code but NaN, MXFP4 E8M0 codes 2^±30 (wider ones overflow or
// underflow fp32 in both the kernel and the reference); against the reference on the rounded x,
// 2e-6 of Σ|x̃ w|. (NaN codes are outside what the fast paths promise, as for FP8 weights.)
TEST(Linear, Q8EveryScaleCode) {
  if (q8_paths().empty()) GTEST_SKIP() << "no AVX2 and no NEON dotprod: the Q8 path is not used on this CPU";
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  const int64_t rows = 40, cols = 512;
  for (const LinearPath path : q8_paths())
    for (auto format : {WeightFormat::Nvfp4, WeightFormat::Mxfp4}) {
      auto w = test::random_weight(format, DType::U8, rows, cols, rng);
      const bool nv = format == WeightFormat::Nvfp4;
      const int64_t per_row = nv ? cols / 16 : cols / 32;
      ASSERT_EQ(w.view.scale_stride, per_row);
      for (int64_t i = 0; i < rows * per_row; ++i) {
        uint8_t code = nv ? uint8_t(i % 256) : uint8_t(97 + i % 61);
        if (nv && (code & 0x7F) == 0x7F) code = 0x7E;
        w.scales[size_t(i)] = code;
      }
      for (int64_t tokens : {1, 3, 8, 13}) {
        auto x = test::random_floats(rng, size_t(tokens * cols));
        std::vector<float> got(size_t(tokens * rows));
        linear(w.view, x.data(), got.data(), tokens, pool, path, Activations::Q8);
        const int bad = outputs_outside(w.view, x, q8_rounded(x, tokens, cols), got, tokens);
        EXPECT_EQ(bad, 0) << "path " << int(path) << " " << weight_format_name(format) << " tokens " << tokens;
      }
    }
}

// BF16 and FP8 block weights × bf16-rounded x (Activations::Q8Bf16 on CPUs with AVX512_BF16, FP8
// also needing VBMI; on AArch64 with BF16, BF16 weights only), every token count:
//  1. Against the reference run on x̃ = bf16(x) (round to nearest even): only the fp32 summation
//     differs, 2e-6 of Σ|x̃ w|. Run on x itself the products differ by ~2^-10 √K |x w|, far outside it.
//  2. Against the exact reference: |y − ref| ≤ 2^-8 Σ|x w| (each |x − x̃| ≤ 2^-8 |x|: 8 significant
//     bits), plus the fp32 slack.
struct Bf16Case {
  WeightFormat format;
  DType dtype;
  int64_t rows, cols;
  int block;  // FP8 block size (rows and columns)
};
// BF16 cols: 96 (3 chunks), 100 and 33 (a masked last chunk), the real widths; rows 37 and 19 leave
// rows past the 8- and 4-row blocks. FP8: 128-blocks (137 rows: a block row of 9; 3072 / 1536
// columns: the real widths) and 64-blocks (one 64-column step per scale block).
const Bf16Case kBf16Cases[] = {
    {WeightFormat::Dense, DType::BF16, 37, 96, 0},          {WeightFormat::Dense, DType::BF16, 19, 100, 0},
    {WeightFormat::Dense, DType::BF16, 64, 3072, 0},        {WeightFormat::Dense, DType::BF16, 9, 1536, 0},
    {WeightFormat::Dense, DType::BF16, 8, 33, 0},           {WeightFormat::Fp8Block, DType::F8_E4M3, 137, 256, 128},
    {WeightFormat::Fp8Block, DType::F8_E4M3, 19, 3072, 128}, {WeightFormat::Fp8Block, DType::F8_E4M3, 70, 1536, 128},
    {WeightFormat::Fp8Block, DType::F8_E4M3, 37, 192, 64},  {WeightFormat::Fp8Block, DType::F8_E5M2, 45, 384, 128},
};

// The path whose bf16 kernel this CPU has (AVX-512 or NEON), Generic when none.
LinearPath bf16_path() {
  return cpu_features().avx512_bf16 ? LinearPath::Avx512 : cpu_features().neon_bf16 ? LinearPath::Neon : LinearPath::Generic;
}

bool bf16_runs(const Bf16Case& c) {
  if (bf16_path() == LinearPath::Neon) return c.format == WeightFormat::Dense;
  return cpu_features().avx512_bf16 && (c.format == WeightFormat::Dense || cpu_features().avx512_vnni_vbmi);
}

TEST(Linear, Bf16ActivationsWithinTheirRoundingBound) {
  const LinearPath path = bf16_path();
  if (path == LinearPath::Generic) GTEST_SKIP() << "no AVX512_BF16 or AArch64 BF16: BF16 weights keep fp32 activations on this CPU";
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  for (const Bf16Case& c : kBf16Cases)
    for (int64_t tokens : {1, 2, 3, 5, 6, 7, 13, 40}) {
      if (!bf16_runs(c)) continue;
      const int64_t rows = c.rows, cols = c.cols;
      auto w = test::random_weight(c.format, c.dtype, rows, cols, rng, c.block ? c.block : 128);
      auto x = test::random_floats(rng, size_t(tokens * cols));
      for (size_t i = 0; i < x.size(); i += 97) x[i] *= 20.0f;  // outliers, as activations have
      ASSERT_TRUE(linear_wants_bf16(path, Activations::Q8Bf16, w.view)) << dtype_name(c.dtype);
      std::vector<float> xr(x.size());
      for (size_t i = 0; i < x.size(); ++i) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
      std::vector<float> got(size_t(tokens * rows));
      linear(w.view, x.data(), got.data(), tokens, pool, path, Activations::Q8Bf16);
      const int bad = outputs_outside(w.view, x, xr, got, tokens, [&](int64_t t, const float* wrow) {
        double abs_dot_x = 0;
        for (int64_t k = 0; k < cols; ++k) abs_dot_x += std::fabs(double(x[size_t(t * cols + k)]) * wrow[k]);
        return 0x1p-8 * abs_dot_x;
      });
      EXPECT_EQ(bad, 0) << dtype_name(c.dtype) << " " << rows << "x" << cols << " tokens " << tokens;
    }
}

// A token's bf16 product is the same bits whether it runs alone, beside 39 others, or on one thread
// (other row ranges: the rows past the 8-, 4- and 2-row blocks run one at a time).
TEST(Linear, Bf16ProductOfATokenDoesNotDependOnItsBatch) {
  const LinearPath path = bf16_path();
  if (path == LinearPath::Generic) GTEST_SKIP() << "no AVX512_BF16 or AArch64 BF16: BF16 weights keep fp32 activations on this CPU";
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool2(2), pool1(1);
  for (const Bf16Case& c : {Bf16Case{WeightFormat::Dense, DType::BF16, 45, 3072 + 17, 0},
                            Bf16Case{WeightFormat::Fp8Block, DType::F8_E4M3, 45, 3072, 128}}) {
    if (!bf16_runs(c)) continue;
    const int64_t rows = c.rows, cols = c.cols, tokens = 40;
    auto w = test::random_weight(c.format, c.dtype, rows, cols, rng, c.block ? c.block : 128);
    auto x = test::random_floats(rng, size_t(tokens * cols));
    std::vector<float> all(size_t(tokens * rows)), one(static_cast<size_t>(rows)), all1(all.size());
    linear(w.view, x.data(), all.data(), tokens, pool2, path, Activations::Q8Bf16);
    linear(w.view, x.data(), all1.data(), tokens, pool1, path, Activations::Q8Bf16);
    EXPECT_EQ(std::memcmp(all.data(), all1.data(), all.size() * 4), 0) << dtype_name(c.dtype) << ": 1 thread against 2";
    for (int64_t t = 0; t < tokens; ++t) {
      linear(w.view, x.data() + t * cols, one.data(), 1, pool2, path, Activations::Q8Bf16);
      EXPECT_EQ(std::memcmp(one.data(), all.data() + t * rows, size_t(rows) * 4), 0) << dtype_name(c.dtype) << " token " << t;
    }
    for (int64_t n : {2, 3, 7}) {  // the first n tokens as a batch of their own (other blocks and groups)
      std::vector<float> part(size_t(n * rows));
      linear(w.view, x.data(), part.data(), n, pool2, path, Activations::Q8Bf16);
      EXPECT_EQ(std::memcmp(part.data(), all.data(), part.size() * 4), 0) << dtype_name(c.dtype) << " " << n << " tokens";
    }
  }
}

TEST(Linear, Q8IsNotUsedWhereItDoesNotApply) {
  if (q8_paths().empty()) GTEST_SKIP() << "no AVX2 and no NEON dotprod: the Q8 path is not used on this CPU";
  const LinearPath path = q8_paths().front();
  std::mt19937_64 rng(test::fresh_seed());
  auto nv = test::random_weight(WeightFormat::Nvfp4, DType::U8, 8, 64, rng);
  auto bf = test::random_weight(WeightFormat::Dense, DType::BF16, 8, 64, rng);
  auto nv48 = test::random_weight(WeightFormat::Nvfp4, DType::U8, 8, 48, rng);
  EXPECT_FALSE(linear_wants_q8(path, Activations::F32, nv.view, 1));      // exact requested
  EXPECT_FALSE(linear_wants_q8(LinearPath::Generic, Activations::Q8, nv.view, 1));    // portable path
  EXPECT_FALSE(linear_wants_q8(path, Activations::Q8, bf.view, 1));       // not FP4
  EXPECT_TRUE(linear_wants_q8(path, Activations::Q8, nv.view, 16));       // an expert's share of a prefill
  EXPECT_FALSE(linear_wants_q8(LinearPath::Avx2, Activations::Q8, nv.view, 17));  // longer prefill: fp32 tiles
  EXPECT_EQ(linear_wants_q8(LinearPath::Avx512, Activations::Q8, nv.view, 512), cpu_features().avx512_vnni_vbmi);  // the VNNI gemm
  EXPECT_TRUE(linear_wants_q8(LinearPath::Avx512, Activations::Q8, nv.view, 4));
  // AVX-512 without VNNI: fp32 tiles from 5 tokens on; with it, the VNNI gemm.
  EXPECT_EQ(linear_wants_q8(LinearPath::Avx512, Activations::Q8, nv.view, 5), cpu_features().avx512_vnni_vbmi);
  EXPECT_TRUE(linear_rounds_q8(path, Activations::Q8, nv.view));          // ... on the rounded x
  EXPECT_FALSE(linear_rounds_q8(path, Activations::Q8, bf.view));
  EXPECT_FALSE(linear_wants_q8(path, Activations::Q8, nv48.view, 1));     // cols % 32 != 0
  // bf16 activations: BF16 weights only, AVX-512 with AVX512_BF16 only, q8-bf16 requested only;
  // q8-bf16 rounds FP4 products' x as q8 does.
  EXPECT_EQ(linear_wants_bf16(LinearPath::Avx512, Activations::Q8Bf16, bf.view), cpu_features().avx512_bf16);
  EXPECT_FALSE(linear_wants_bf16(LinearPath::Avx512, Activations::Q8, bf.view));
  EXPECT_FALSE(linear_wants_bf16(LinearPath::Avx512, Activations::F32, bf.view));
  EXPECT_FALSE(linear_wants_bf16(LinearPath::Avx2, Activations::Q8Bf16, bf.view));
  EXPECT_EQ(linear_wants_bf16(LinearPath::Neon, Activations::Q8Bf16, bf.view), cpu_features().neon_bf16);
  EXPECT_FALSE(linear_wants_bf16(LinearPath::Neon, Activations::Q8, bf.view));
  EXPECT_FALSE(linear_wants_bf16(LinearPath::Avx512, Activations::Q8Bf16, nv.view));
  auto f8 = test::random_weight(WeightFormat::Fp8Block, DType::F8_E4M3, 8, 256, rng);
  auto f8_32 = test::random_weight(WeightFormat::Fp8Block, DType::F8_E4M3, 8, 256, rng, 32);
  EXPECT_EQ(linear_wants_bf16(LinearPath::Avx512, Activations::Q8Bf16, f8.view),
            cpu_features().avx512_bf16 && cpu_features().avx512_vnni_vbmi);
  EXPECT_FALSE(linear_wants_bf16(LinearPath::Avx512, Activations::Q8Bf16, f8_32.view));  // 32-column blocks: fp32
  EXPECT_FALSE(linear_wants_bf16(LinearPath::Neon, Activations::Q8Bf16, f8.view));  // NEON: BF16 weights only
  EXPECT_TRUE(linear_rounds_q8(path, Activations::Q8Bf16, nv.view));
  EXPECT_EQ(linear_wants_q8(path, Activations::Q8Bf16, nv.view, 1), linear_wants_q8(path, Activations::Q8, nv.view, 1));
  EXPECT_EQ(parse_activations("q8"), Activations::Q8);
  EXPECT_EQ(parse_activations("f32"), Activations::F32);
  EXPECT_EQ(parse_activations("q8-bf16"), Activations::Q8Bf16);
  for (auto a : {Activations::F32, Activations::Q8, Activations::Q8Bf16}) EXPECT_EQ(parse_activations(activations_name(a)), a);
  EXPECT_THROW(parse_activations("int8"), InvalidArgument);
}

}  // namespace
}  // namespace m2
