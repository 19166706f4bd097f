// Quantization codecs (the scalar reference; the quantizer runs them on many threads): weights in
// fp32/fp64 → NVFP4 (E2M1 codes, E4M3 block scales per 16, one per-tensor scale) and MXFP4 (E2M1
// codes, E8M0 exponents per 32), with the published rules (spec §3–5) and an optional search for
// the scales that minimise the (optionally activation-weighted) reconstruction error.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace m2 {

// Round to the nearest E2M1 value, ties to the even code, saturating at ±6, in double precision
// (the published quantizers compute the scaled value in float64). -0 and values that round to 0
// give code 0.
uint8_t e2m1_code(double x);

enum class ScaleSearch { Max, Mse };
enum class MxRule {
  CompressedTensors,  // vLLM / compressed-tensors: amax rounded to a power of two (up at mantissa ≥ .75), exponent − 2
  Ocp,                // OCP MX v1.0: floor(log2(amax)) − 2; elements saturate at ±6
};

// NVFP4 rows: `w` [rows, cols] (row-major, cols % 16 == 0) with per-tensor scale `ws2` (ModelOpt's
// weight_scale_2, multiplying). ModelOpt's rule per 16-block: s = amax_b / (6 ws2) (0 → 1), stored
// as E4M3, codes = E2M1(w / (e4m3(s) ws2)). With Mse, each block's E4M3 scale is chosen among its
// neighbours to minimise Σ c_k (w_k − ŵ_k)² (c = column weights, or 1). Writes packed codes
// [rows, cols/2] (low nibble = even column) and scales [rows, cols/16].
void quantize_nvfp4(const float* w, int64_t rows, int64_t cols, double ws2, ScaleSearch search, const float* column_weights,
                    uint8_t* packed, uint8_t* scales);
// ws2 by ModelOpt's rule: amax / (6 × 448) (an all-zero tensor gets 1 / (6 × 448), never 0).
double nvfp4_global_scale(double amax);
// A tensor sharing a per-tensor scale with others (ModelOpt: q/k/v; w1/w3 of an expert).
struct Nvfp4Tensor {
  const float* w;                 // [rows, cols]
  int64_t rows, cols;
  const float* column_weights;    // [cols] or null
};
// Σ c_k (w_k − ŵ_k)² of `t` quantized at `ws2` with the MSE block search.
double nvfp4_error(const Nvfp4Tensor& t, double ws2);
// Mse: the per-tensor scale `members` share, among amax/(6·448) × candidates (shifts within one
// E4M3 step, which move the grid of representable block scales, and clipping ones), minimising their
// summed error; returns the chosen ws2 (amax: of all members).
double search_nvfp4_global_scale(std::span<const Nvfp4Tensor> members, double amax);

// MXFP4 rows: E8M0 exponent per 32 columns by `rule` (Mse: the rule's exponent or one below/above,
// whichever reconstructs best), codes E2M1(w / 2^(e − 127)). Writes packed [rows, cols/2] and
// exponents [rows, cols/32].
void quantize_mxfp4(const float* w, int64_t rows, int64_t cols, MxRule rule, ScaleSearch search, const float* column_weights,
                    uint8_t* packed, uint8_t* exponents);

// One NVFP4 block of 16: returns its E4M3 scale code, writes its element codes.
uint8_t nvfp4_block(const float* w16, double ws2, ScaleSearch search, const float* column_weights, uint8_t* codes);
// One MXFP4 block of 32: returns its biased E8M0 exponent, writes its element codes.
uint8_t mxfp4_block(const float* w32, MxRule rule, ScaleSearch search, const float* column_weights, uint8_t* codes);

// Σ c_k (w_k − ŵ_k)² of one block against its stored codes and multiplier (tests, reports).
double block_error(const float* w, const uint8_t* codes, int n, double scale, const float* column_weights);

}  // namespace m2
