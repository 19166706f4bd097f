// A linear layer's weight W [rows = out, cols = in] kept in its stored format (mmap'd bytes).
// The scalar reference decoders live here; the fast paths are in backend/cpu/.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include "core/dtype.h"

namespace m2 {

enum class WeightFormat : uint8_t {
  Dense,     // BF16 / F16 / F32 elements
  Fp8Block,  // F8_E4M3 elements × F32 scale per [block_rows × block_cols] block (weight_scale_inv)
  Nvfp4,     // E2M1 pairs (low nibble = even column) × E4M3 scale per 16 columns × global scale
  Mxfp4,     // E2M1 pairs × E8M0 scale per 32 columns
};
std::string_view weight_format_name(WeightFormat f);

struct WeightView {
  std::string name;  // module name, for messages: "model.layers.3.block_sparse_moe.experts.7.w2"
  WeightFormat format = WeightFormat::Dense;
  DType dtype = DType::BF16;  // element dtype for Dense and Fp8Block; U8 for the FP4 formats
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;  // [rows, row_bytes]: row r starts at data + r * row_bytes
  int64_t row_bytes = 0;          // row stride in bytes (≥ the bytes of `cols` elements: a column slice keeps it)
  // Fp8Block: F32 [ceil(rows/block_rows), ceil(cols/block_cols)]; Nvfp4: E4M3 [rows, cols/16];
  // Mxfp4: E8M0 [rows, cols/32]; Dense: null. Scale row i starts at scales + i * scale_stride elements:
  // the stride is separate from the column count so that a column slice keeps its parent's stride.
  const uint8_t* scales = nullptr;
  int64_t scale_stride = 0;
  int block_rows = 1, block_cols = 1;  // scale granularity
  float global_scale = 1.0f;           // Nvfp4: multiplies every block scale (ModelOpt weight_scale_2)
  float input_scale = 0.0f;            // Nvfp4 W4A4 activation scale when the checkpoint has one (0 = none)

  size_t bytes() const;  // element + scale bytes read by one full pass over W
  double bits_per_weight() const { return 8.0 * double(bytes()) / double(rows * cols); }
  int64_t element_bits() const;  // bits of one stored element (4 for FP4, 8 for FP8, 16/32 dense)
};

// Rows [r0, r0 + n) of W (output features; a column-parallel shard). For block-FP8 the slice must
// start on a scale-block boundary; a split that cuts a block is an InvalidArgument naming the tensor.
WeightView slice_rows(const WeightView& w, int64_t r0, int64_t n);
// Columns [c0, c0 + n) of W (input features; a row-parallel shard). c0 and n must be multiples of
// the scale block (16 NVFP4, 32 MXFP4, block_cols for FP8); the slice keeps W's strides.
WeightView slice_cols(const WeightView& w, int64_t c0, int64_t n);

// Scalar reference: W[r, c] as float. Simple and obviously right; the fast paths are tested against it.
float weight_element_ref(const WeightView& w, int64_t r, int64_t c);
// Scalar reference: one full row into out[cols].
void dequant_row_ref(const WeightView& w, int64_t r, float* out);
// Scalar reference linear layer: y[t, r] = Σ_c x[t, c] W[r, c], accumulated in double.
// x: [tokens, cols], y: [tokens, rows].
void linear_ref(const WeightView& w, const float* x, float* y, int64_t tokens);

}  // namespace m2
