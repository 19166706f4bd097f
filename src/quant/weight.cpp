#include "quant/weight.h"

#include <vector>

#include "core/error.h"

namespace m2 {

std::string_view weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::Dense: return "dense";
    case WeightFormat::Fp8Block: return "fp8-block";
    case WeightFormat::Nvfp4: return "nvfp4";
    case WeightFormat::Mxfp4: return "mxfp4";
  }
  return "?";
}

size_t WeightView::bytes() const {
  size_t n = size_t(rows * row_bytes);
  switch (format) {
    case WeightFormat::Dense: break;
    case WeightFormat::Fp8Block: n += size_t(((rows + block_rows - 1) / block_rows) * scale_cols * 4); break;
    case WeightFormat::Nvfp4:
    case WeightFormat::Mxfp4: n += size_t(rows * scale_cols); break;
  }
  return n;
}

float weight_element_ref(const WeightView& w, int64_t r, int64_t c) {
  const uint8_t* row = w.data + r * w.row_bytes;
  switch (w.format) {
    case WeightFormat::Dense:
      switch (w.dtype) {
        case DType::BF16: {
          uint16_t v;
          std::memcpy(&v, row + 2 * c, 2);
          return bf16_to_f32(v);
        }
        case DType::F16: {
          uint16_t v;
          std::memcpy(&v, row + 2 * c, 2);
          return f16_to_f32(v);
        }
        case DType::F32: {
          float v;
          std::memcpy(&v, row + 4 * c, 4);
          return v;
        }
        default: fail("{}: dense weight dtype {} is not supported", w.name, dtype_name(w.dtype));
      }
    case WeightFormat::Fp8Block: {
      float s;
      std::memcpy(&s, w.scales + 4 * ((r / w.block_rows) * w.scale_cols + c / w.block_cols), 4);
      float e = w.dtype == DType::F8_E5M2 ? e5m2_to_f32(row[c]) : e4m3_to_f32(row[c]);
      return e * s;
    }
    case WeightFormat::Nvfp4: {
      uint8_t code = (c & 1) ? row[c / 2] >> 4 : row[c / 2] & 0xF;
      float s = e4m3_to_f32(w.scales[r * w.scale_cols + c / 16]);
      return e2m1_to_f32(code) * (s * w.global_scale);
    }
    case WeightFormat::Mxfp4: {
      uint8_t code = (c & 1) ? row[c / 2] >> 4 : row[c / 2] & 0xF;
      return e2m1_to_f32(code) * e8m0_to_f32(w.scales[r * w.scale_cols + c / 32]);
    }
  }
  return 0.0f;
}

void dequant_row_ref(const WeightView& w, int64_t r, float* out) {
  for (int64_t c = 0; c < w.cols; ++c) out[c] = weight_element_ref(w, r, c);
}

void linear_ref(const WeightView& w, const float* x, float* y, int64_t tokens) {
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequant_row_ref(w, r, row.data());
    for (int64_t t = 0; t < tokens; ++t) {
      double acc = 0;
      for (int64_t c = 0; c < w.cols; ++c) acc += double(x[t * w.cols + c]) * double(row[size_t(c)]);
      y[t * w.rows + r] = float(acc);
    }
  }
}

}  // namespace m2
