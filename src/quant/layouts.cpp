#include "quant/layouts.h"

#include "core/error.h"

namespace m2 {

namespace {
// spec §2 (block FP8), §3 (NVFP4 ModelOpt), §4 (NVFP4 compressed-tensors), §5 (MXFP4 compressed-tensors).
const LayoutSpec kSpecs[] = {
    {StoredLayout::Dense, WeightFormat::Dense, "weight", "", DType::F32, 1, "", false, false, ""},
    {StoredLayout::Fp8Block, WeightFormat::Fp8Block, "weight", "weight_scale_inv", DType::F32, 128, "", false, false, ""},
    {StoredLayout::Nvfp4ModelOpt, WeightFormat::Nvfp4, "weight", "weight_scale", DType::F8_E4M3, 16, "weight_scale_2", false,
     false, "input_scale"},
    {StoredLayout::Nvfp4Ct, WeightFormat::Nvfp4, "weight_packed", "weight_scale", DType::F8_E4M3, 16, "weight_global_scale",
     true, true, "input_global_scale"},
    {StoredLayout::Mxfp4Ct, WeightFormat::Mxfp4, "weight_packed", "weight_scale", DType::U8, 32, "", false, false, ""},
};
}  // namespace

const LayoutSpec& layout_spec(StoredLayout layout) {
  for (const auto& s : kSpecs)
    if (s.layout == layout) return s;
  fail<Error>("no layout spec for layout {}", int(layout));
}

std::vector<int64_t> weight_shape(StoredLayout layout, int64_t rows, int64_t cols) {
  const LayoutSpec& s = layout_spec(layout);
  if (s.format == WeightFormat::Nvfp4 || s.format == WeightFormat::Mxfp4) return {rows, cols / 2};
  return {rows, cols};
}

std::vector<int64_t> scale_shape(StoredLayout layout, int64_t rows, int64_t cols, std::pair<int, int> fp8_block) {
  const LayoutSpec& s = layout_spec(layout);
  switch (s.format) {
    case WeightFormat::Dense: return {};
    case WeightFormat::Fp8Block:
      return {(rows + fp8_block.first - 1) / fp8_block.first, (cols + fp8_block.second - 1) / fp8_block.second};
    default: return {rows, cols / s.group};
  }
}

}  // namespace m2
