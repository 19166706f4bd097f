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

int64_t WeightView::element_bits() const {
  switch (format) {
    case WeightFormat::Dense: return int64_t(8 * dtype_size(dtype));
    case WeightFormat::Fp8Block: return 8;
    case WeightFormat::Nvfp4:
    case WeightFormat::Mxfp4: return 4;
  }
  return 0;
}

size_t WeightView::bytes() const {
  size_t n = size_t(rows * ((cols * element_bits() + 7) / 8));
  const int64_t scale_cols = (cols + block_cols - 1) / block_cols;
  switch (format) {
    case WeightFormat::Dense: break;
    case WeightFormat::Fp8Block: n += size_t(((rows + block_rows - 1) / block_rows) * scale_cols * 4); break;
    case WeightFormat::Nvfp4:
    case WeightFormat::Mxfp4: n += size_t(rows * scale_cols); break;
  }
  return n;
}

WeightView slice_rows(const WeightView& w, int64_t r0, int64_t n) {
  if (r0 < 0 || n <= 0 || r0 + n > w.rows)
    fail<InvalidArgument>("{}: rows [{}, {}) are outside the weight's {} rows", w.name, r0, r0 + n, w.rows);
  WeightView s = w;
  s.rows = n;
  s.data = w.data + r0 * w.row_bytes;
  if (w.format == WeightFormat::Fp8Block) {
    if (r0 % w.block_rows != 0 || (n % w.block_rows != 0 && r0 + n != w.rows))
      fail<InvalidArgument>("{}: a split at rows [{}, {}) cuts its {}x{} FP8 scale blocks", w.name, r0, r0 + n,
                            w.block_rows, w.block_cols);
    s.scales = w.scales + 4 * (r0 / w.block_rows) * w.scale_stride;
  } else if (w.format != WeightFormat::Dense) {
    s.scales = w.scales + r0 * w.scale_stride;
  }
  return s;
}

WeightView slice_cols(const WeightView& w, int64_t c0, int64_t n) {
  if (c0 < 0 || n <= 0 || c0 + n > w.cols)
    fail<InvalidArgument>("{}: columns [{}, {}) are outside the weight's {} columns", w.name, c0, c0 + n, w.cols);
  const int64_t block = w.format == WeightFormat::Dense ? 1 : w.block_cols;
  if (c0 % block != 0 || (n % block != 0 && c0 + n != w.cols))
    fail<InvalidArgument>("{}: a split at columns [{}, {}) cuts its {}-column scale blocks ({})", w.name, c0, c0 + n,
                          block, weight_format_name(w.format));
  WeightView s = w;
  s.cols = n;
  s.data = w.data + c0 * w.element_bits() / 8;
  if (w.format == WeightFormat::Fp8Block) s.scales = w.scales + 4 * (c0 / block);
  else if (w.format != WeightFormat::Dense) s.scales = w.scales + c0 / block;
  return s;
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
      std::memcpy(&s, w.scales + 4 * ((r / w.block_rows) * w.scale_stride + c / w.block_cols), 4);
      float e = w.dtype == DType::F8_E5M2 ? e5m2_to_f32(row[c]) : e4m3_to_f32(row[c]);
      return e * s;
    }
    case WeightFormat::Nvfp4: {
      uint8_t code = (c & 1) ? row[c / 2] >> 4 : row[c / 2] & 0xF;
      float s = e4m3_to_f32(w.scales[r * w.scale_stride + c / 16]);
      return e2m1_to_f32(code) * (s * w.global_scale);
    }
    case WeightFormat::Mxfp4: {
      uint8_t code = (c & 1) ? row[c / 2] >> 4 : row[c / 2] & 0xF;
      return e2m1_to_f32(code) * e8m0_to_f32(w.scales[r * w.scale_stride + c / 32]);
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
