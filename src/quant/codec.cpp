#include "quant/codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"

namespace m2 {

uint8_t e2m1_code(double x) {
  const double a = std::fabs(x);
  uint8_t code;
  if (!(a > 0.25)) code = 0;  // also NaN
  else if (a < 0.75) code = 1;
  else if (a <= 1.25) code = 2;
  else if (a < 1.75) code = 3;
  else if (a <= 2.5) code = 4;
  else if (a < 3.5) code = 5;
  else if (a <= 5.0) code = 6;
  else code = 7;
  if (x < 0 && code != 0) code |= 8;
  return code;
}

double block_error(const float* w, const uint8_t* codes, int n, double scale, const float* cw) {
  double err = 0;
  for (int k = 0; k < n; ++k) {
    const double d = double(w[k]) - double(e2m1_to_f32(codes[k])) * scale;
    err += (cw ? double(cw[k]) : 1.0) * d * d;
  }
  return err;
}

namespace {

constexpr double kNvMax = 6.0 * 448.0;

void pack_row(const uint8_t* codes, int64_t cols, uint8_t* packed) {
  for (int64_t k = 0; k < cols; k += 2) packed[k / 2] = uint8_t(codes[k] | (codes[k + 1] << 4));
}

// Codes of one block for a multiplier.
void encode_codes(const float* w, int n, double mult, uint8_t* codes) {
  for (int k = 0; k < n; ++k) codes[k] = e2m1_code(double(w[k]) / mult);
}

// Codes of one block for a multiplier; returns the weighted error (what a scale search compares).
double encode_block(const float* w, int n, double mult, const float* cw, uint8_t* codes) {
  encode_codes(w, n, mult, codes);
  return block_error(w, codes, n, mult, cw);
}

}  // namespace

uint8_t nvfp4_block(const float* w, double ws2, ScaleSearch search, const float* cw, uint8_t* codes) {
  float amax = 0;
  for (int k = 0; k < 16; ++k) amax = std::max(amax, std::fabs(w[k]));
  double s = double(amax) / (6.0 * ws2);
  if (s == 0) s = 1.0;  // ModelOpt: an all-zero block gets scale 1
  uint8_t best = f32_to_e4m3(float(s));
  if (e4m3_to_f32(best) == 0.0f) best = 1;  // never a zero scale: the smallest subnormal
  if (search == ScaleSearch::Max || amax == 0) {
    encode_codes(w, 16, double(e4m3_to_f32(best)) * ws2, codes);
    return best;
  }
  double best_err = encode_block(w, 16, double(e4m3_to_f32(best)) * ws2, cw, codes);
  uint8_t trial[16];
  const uint8_t base = best;
  for (int d = -8; d <= 8; ++d) {
    const int c = int(base) + d;
    if (d == 0 || c < 1 || c > 0x7e) continue;
    const double err = encode_block(w, 16, double(e4m3_to_f32(uint8_t(c))) * ws2, cw, trial);
    if (err < best_err) {
      best_err = err;
      best = uint8_t(c);
      std::memcpy(codes, trial, 16);
    }
  }
  return best;
}

namespace {

// Rows of w [rows, cols] block by block: `block` encodes B weights (with their B activation
// weights, or null) to codes and returns the block's scale byte; codes are packed two per byte.
template <int B, typename BlockFn>
void quantize_rows(const float* w, int64_t rows, int64_t cols, const float* cw, uint8_t* packed, uint8_t* scales,
                   BlockFn block) {
  std::vector<uint8_t> codes(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    for (int64_t b = 0; b < cols / B; ++b)
      scales[r * (cols / B) + b] = block(wr + B * b, cw ? cw + B * b : nullptr, codes.data() + B * b);
    pack_row(codes.data(), cols, packed + r * (cols / 2));
  }
}

}  // namespace

double nvfp4_global_scale(double amax) { return amax > 0 ? amax / kNvMax : 1.0 / kNvMax; }

void quantize_nvfp4(const float* w, int64_t rows, int64_t cols, double ws2, ScaleSearch search, const float* cw,
                    uint8_t* packed, uint8_t* scales) {
  quantize_rows<16>(w, rows, cols, cw, packed, scales, [&](const float* wb, const float* cwb, uint8_t* codes) {
    return nvfp4_block(wb, ws2, search, cwb, codes);
  });
}

double nvfp4_error(const Nvfp4Tensor& t, double ws2) {
  double err = 0;
  uint8_t codes[16];
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t b = 0; b < t.cols / 16; ++b) {
      const float* blk = t.w + r * t.cols + 16 * b;
      const float* cw = t.column_weights ? t.column_weights + 16 * b : nullptr;
      const uint8_t s = nvfp4_block(blk, ws2, ScaleSearch::Mse, cw, codes);
      err += block_error(blk, codes, 16, double(e4m3_to_f32(s)) * ws2, cw);
    }
  return err;
}

double search_nvfp4_global_scale(std::span<const Nvfp4Tensor> members, double amax) {
  const double base = nvfp4_global_scale(amax);
  double best = base, best_err = INFINITY;
  for (double m : {1.0, 0.96875, 0.9375, 0.90625, 0.85, 0.75}) {
    double err = 0;
    for (const auto& t : members) err += nvfp4_error(t, base * m);
    if (err < best_err) best_err = err, best = base * m;
  }
  return best;
}

namespace {

// The biased E8M0 exponent of a 32-block by a rule, clamped to [0, 254].
int mx_exponent(float amax, MxRule rule) {
  amax = std::max(amax, std::ldexp(1.0f, -126));
  uint32_t bits;
  std::memcpy(&bits, &amax, 4);
  if (rule == MxRule::CompressedTensors) bits = (bits + (1u << 21)) & ~((1u << 23) - 1);  // round to a power of two
  const int e = int((bits >> 23) & 0xFF) - 2;  // floor(log2) − 2 (emax of E2M1), biased by 127
  return std::clamp(e, 0, 254);
}

}  // namespace

uint8_t mxfp4_block(const float* blk, MxRule rule, ScaleSearch search, const float* c, uint8_t* codes) {
  float amax = 0;
  for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(blk[k]));
  const int base = mx_exponent(amax, rule);
  int e = base;
  if (search != ScaleSearch::Mse || amax == 0) {
    encode_codes(blk, 32, std::ldexp(1.0, e - 127), codes);
    return uint8_t(e);
  }
  double best = encode_block(blk, 32, std::ldexp(1.0, e - 127), c, codes);
  {
    uint8_t trial[32];
    for (int d : {-1, 1}) {
      const int e2 = base + d;
      if (e2 < 0 || e2 > 254) continue;
      const double err = encode_block(blk, 32, std::ldexp(1.0, e2 - 127), c, trial);
      if (err < best) {
        best = err;
        e = e2;
        std::memcpy(codes, trial, 32);
      }
    }
  }
  return uint8_t(e);
}

void quantize_mxfp4(const float* w, int64_t rows, int64_t cols, MxRule rule, ScaleSearch search, const float* cw,
                    uint8_t* packed, uint8_t* exponents) {
  quantize_rows<32>(w, rows, cols, cw, packed, exponents, [&](const float* wb, const float* cwb, uint8_t* codes) {
    return mxfp4_block(wb, rule, search, cwb, codes);
  });
}

}  // namespace m2
