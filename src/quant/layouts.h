// The one table of stored layouts: for each way a linear module can be stored, its tensors (names,
// dtypes, shapes) and scale conventions. The loader (bind_linear), the quantizer and m2 synth read
// and write modules through it, so a layout is described once.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "quant/scheme.h"
#include "quant/weight.h"

namespace m2 {

struct LayoutSpec {
  StoredLayout layout;
  WeightFormat format;
  std::string_view weight;        // "weight" or "weight_packed"
  std::string_view scale;         // "" (dense), "weight_scale_inv" (FP8 block), "weight_scale"
  DType scale_dtype;              // F32 (FP8 block), F8_E4M3 (NVFP4), U8 (MXFP4 E8M0)
  int group;                      // columns per scale (NVFP4 16, MXFP4 32; FP8: the config's block)
  std::string_view global_scale;  // "" or "weight_scale_2" (ModelOpt) or "weight_global_scale" (CT)
  bool global_is_divisor;         // compressed-tensors stores 1 / scale
  bool global_is_vector;          // stored as [1] (CT) rather than a scalar [] (ModelOpt)
  std::string_view input_scale;   // "" or "input_scale" (ModelOpt) or "input_global_scale" (CT, a divisor)
};

const LayoutSpec& layout_spec(StoredLayout layout);

// Shapes of a module [rows, cols] stored in `layout` (fp8_block: the FP8 scale block, rows × cols).
std::vector<int64_t> weight_shape(StoredLayout layout, int64_t rows, int64_t cols);
std::vector<int64_t> scale_shape(StoredLayout layout, int64_t rows, int64_t cols, std::pair<int, int> fp8_block = {128, 128});

// The stored value of a multiplying scale s for the layout's global/input-scale convention, and back.
inline float stored_scale(const LayoutSpec& l, float s) { return l.global_is_divisor ? 1.0f / s : s; }

}  // namespace m2
