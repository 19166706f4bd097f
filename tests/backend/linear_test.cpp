// Every fast path of the linear layer against the scalar reference, on fresh random weights and inputs.
#include <gtest/gtest.h>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/linear.h"
#include "backend/random_weight.h"
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

void check_paths(const FormatCase& f, int64_t rows, int64_t cols, int64_t tokens, std::mt19937_64& rng,
                 ThreadPool& pool) {
  auto w = test::random_weight(f.format, f.dtype, rows, cols, rng);
  auto x = test::random_floats(rng, size_t(tokens * cols));
  std::vector<float> ref(size_t(tokens * rows)), got(size_t(tokens * rows), NAN);
  linear_ref(w.view, x.data(), ref.data(), tokens);
  std::vector<LinearPath> paths = {LinearPath::Generic};
  if (cpu_features().avx2_fma_f16c) paths.push_back(LinearPath::Avx2);
  if (cpu_features().avx512) paths.push_back(LinearPath::Avx512);
  for (auto path : paths) {
    std::fill(got.begin(), got.end(), NAN);
    linear(w.view, x.data(), got.data(), tokens, pool, path);
    EXPECT_LE(test::rel_err(got.data(), ref.data(), got.size()), f.tolerance)
        << f.name << " path " << int(path) << " rows " << rows << " cols " << cols << " tokens " << tokens;
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

}  // namespace
}  // namespace m2
