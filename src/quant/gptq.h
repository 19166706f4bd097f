// GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
// Transformers"), for the block-scaled FP4 formats: the columns of W are quantized in order and
// each column's rounding error is spread over the columns not yet quantized, weighted by the
// inverse of H = XᵀX/n (the layer inputs' second moment), which minimises the output error
// ‖XŴᵀ − XWᵀ‖ rather than the weight error. A block's scale is chosen when the quantization reaches
// its first column, from the weights as updated so far (by the format's rule, or by the MSE search
// with each column's error weighted by its input energy H_ii).
// Linear algebra: LAPACK (Cholesky) and BLAS (the rank-k updates), in double precision.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/codec.h"

namespace m2 {

// H += XᵀX over the rows of x [n, cols] listed in `rows` (all when empty); `h` is [cols, cols].
void accumulate_gram(const float* x, int64_t n, int64_t cols, const std::vector<int32_t>& rows, std::vector<double>& h);

struct GptqTarget {
  enum class Format { Nvfp4, Mxfp4 } format = Format::Nvfp4;
  double ws2 = 0;                  // NVFP4: the per-tensor scale (fixed beforehand)
  MxRule rule = MxRule::CompressedTensors;
  ScaleSearch search = ScaleSearch::Max;
};

struct GptqResult {
  double damp = 0;          // the relative damping the Cholesky factorisation needed
  double proxy_before = 0;  // tr((W − Ŵ_rtn) H (W − Ŵ_rtn)ᵀ): round-to-nearest output error
  double proxy_after = 0;   // the same for the GPTQ result
  int64_t refined = 0;      // codes changed by refine_codes
};

struct GptqOptions {
  double damp = 0.01;      // relative damping λ = damp × mean(diag H), raised tenfold until H factorises
  int block = 128;         // columns per lazy update (a multiple of the format's scale block)
  bool act_order = false;  // quantize columns by decreasing H_ii instead of in stored order
  int refine_sweeps = 0;   // coordinate-descent sweeps over the codes afterwards (refine_codes)
  bool route_weighted = false;  // gptq_layer: an expert's Hessian weighs each routed token by its routing weight²
};

// Quantizes w [rows, cols] (cols a multiple of the format's block) with the Hessian `h` [cols, cols]
// (the Gram matrix of its inputs, any positive scale; destroyed). Writes packed codes [rows, cols/2]
// and scales [rows, cols / block] as quantize_nvfp4 / quantize_mxfp4 do. Under act order a scale
// block's scale is still chosen when the quantization first reaches one of its columns, from all of
// its columns as updated so far; codes and scales are written in stored order either way.
// Coordinate descent on the output error tr(D H Dᵀ), D = w − codes·mult, with the scales fixed:
// column by column, every row's code becomes the one nearest to the value that minimises the error
// with the other columns as they are (exact for that coordinate, so the error never rises). `codes`
// [rows, cols] (E2M1), `mult` [rows, cols / g] the blocks' multipliers, `h` the full symmetric
// [cols, cols] Gram matrix. Returns how many codes changed.
int64_t refine_codes(const float* w, int64_t rows, int64_t cols, int g, const std::vector<double>& h, const std::vector<double>& mult,
                     std::vector<uint8_t>& codes, int sweeps);

GptqResult gptq_quantize(const float* w, int64_t rows, int64_t cols, std::vector<double>& h, const GptqTarget& target,
                         uint8_t* packed, uint8_t* scales, const GptqOptions& options = {});

}  // namespace m2
