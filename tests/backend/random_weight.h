// Random weights of every stored format, owning their bytes, for kernel tests and benchmarks.
#pragma once
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "quant/weight.h"

namespace m2::test {

inline std::vector<float> random_floats(std::mt19937_64& rng, size_t n, float stddev = 1.0f) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Bytes that start `offset` bytes past a 64-byte line: at 0 where m2's own files put a tensor
// (write_safetensors), elsewhere where other writers may (the kernels must give the same results).
class LineBytes {
 public:
  explicit LineBytes(int64_t offset = 0) : offset_(offset) {}
  LineBytes(LineBytes&&) = default;  // the buffer moves with its bytes
  LineBytes& operator=(LineBytes&&) = default;
  LineBytes(const LineBytes&) = delete;
  void resize(size_t n) {
    buf_.assign(n + 64 + size_t(offset_), 0);
    begin_ = buf_.data() + (64 - reinterpret_cast<uintptr_t>(buf_.data()) % 64) % 64 + offset_;
    size_ = n;
  }
  uint8_t* data() { return begin_; }
  uint8_t* begin() { return begin_; }
  uint8_t* end() { return begin_ + size_; }
  size_t size() const { return size_; }

 private:
  int64_t offset_;
  std::vector<uint8_t> buf_;
  uint8_t* begin_ = nullptr;
  size_t size_ = 0;
};

struct OwnedWeight {
  LineBytes data;
  std::vector<uint8_t> scales;
  WeightView view;
};

// Every code and scale is random (never zero everywhere): E2M1 codes uniform over all 16, block
// scales spread over two octaves, FP8 elements from normal values. The elements start data_offset
// bytes past a 64-byte line.
inline OwnedWeight random_weight(WeightFormat format, DType dtype, int64_t rows, int64_t cols, std::mt19937_64& rng,
                                 int fp8_block = 128, int64_t data_offset = 0) {
  OwnedWeight w{LineBytes(data_offset), {}, {}};
  WeightView& v = w.view;
  v.name = "test";
  v.format = format;
  v.dtype = dtype;
  v.rows = rows;
  v.cols = cols;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> spread(0.5f, 2.0f);
  switch (format) {
    case WeightFormat::Dense: {
      v.row_bytes = cols * int64_t(dtype_size(dtype));
      w.data.resize(size_t(rows * v.row_bytes));
      for (int64_t i = 0; i < rows * cols; ++i) {
        float x = normal(rng);
        if (dtype == DType::F32) std::memcpy(w.data.data() + 4 * i, &x, 4);
        else {
          uint16_t b = dtype == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x);
          std::memcpy(w.data.data() + 2 * i, &b, 2);
        }
      }
      break;
    }
    case WeightFormat::Fp8Block: {
      v.row_bytes = cols;
      v.block_rows = v.block_cols = fp8_block;
      v.scale_stride = (cols + fp8_block - 1) / fp8_block;
      const int64_t grid = ((rows + fp8_block - 1) / fp8_block) * v.scale_stride;
      w.data.resize(size_t(rows * cols));
      for (auto& b : w.data) {
        float x = 100.0f * normal(rng);
        b = dtype == DType::F8_E5M2 ? uint8_t(f32_to_f16(x) >> 8) : f32_to_e4m3(x);
      }
      w.scales.resize(size_t(grid * 4));
      for (int64_t i = 0; i < grid; ++i) {
        float s = spread(rng) / 100.0f;
        std::memcpy(w.scales.data() + 4 * i, &s, 4);
      }
      break;
    }
    case WeightFormat::Nvfp4:
    case WeightFormat::Mxfp4: {
      const int group = format == WeightFormat::Nvfp4 ? 16 : 32;
      v.row_bytes = cols / 2;
      v.scale_stride = cols / group;
      v.block_cols = group;
      w.data.resize(size_t(rows * cols / 2));
      for (auto& b : w.data) b = uint8_t(rng());
      w.scales.resize(size_t(rows * v.scale_stride));
      for (auto& s : w.scales)
        s = format == WeightFormat::Nvfp4 ? f32_to_e4m3(16.0f * spread(rng)) : uint8_t(120 + rng() % 6);
      v.global_scale = format == WeightFormat::Nvfp4 ? 1.0f / 64.0f : 1.0f;
      break;
    }
  }
  v.data = w.data.data();
  v.scales = w.scales.empty() ? nullptr : w.scales.data();
  return w;
}

}  // namespace m2::test
