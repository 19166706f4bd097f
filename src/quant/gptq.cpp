#include "quant/gptq.h"

#include <cblas.h>

#include <algorithm>
#include <numeric>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

extern "C" {
// LAPACK (Fortran ABI, as gfortran builds it: hidden lengths of character arguments last).
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info, size_t uplo_len);
void dpotri_(const char* uplo, const int* n, double* a, const int* lda, int* info, size_t uplo_len);
}

namespace m2 {

void accumulate_gram(const float* x, int64_t n, int64_t cols, const std::vector<int32_t>& rows, std::vector<double>& h) {
  if (int64_t(h.size()) != cols * cols) h.assign(size_t(cols * cols), 0.0);
  const int64_t total = rows.empty() ? n : int64_t(rows.size());
  const int64_t chunk = 256;
  std::vector<double> buf(size_t(chunk * cols));  // [chunk, cols] in double
  for (int64_t at = 0; at < total; at += chunk) {
    const int64_t k = std::min(chunk, total - at);
    for (int64_t i = 0; i < k; ++i) {
      const int64_t r = rows.empty() ? at + i : rows[size_t(at + i)];
      if (r < 0 || r >= n) fail<InvalidArgument>("gram: row {} of {}", r, n);
      for (int64_t c = 0; c < cols; ++c) buf[size_t(i * cols + c)] = double(x[r * cols + c]);
    }
    // H (row-major = column-major, symmetric) += bufᵀ buf: the upper triangle, mirrored below at the end.
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, int(cols), int(k), 1.0, buf.data(), int(cols), 1.0, h.data(), int(cols));
  }
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < i; ++j) h[size_t(i * cols + j)] = h[size_t(j * cols + i)];
}

namespace {

// The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), row-major in `h`; damping raised until H is
// positive definite. Columns no input ever reached (H_ii = 0) get H_ii = 1. Returns the damping used.
double inverse_cholesky(std::vector<double>& h, int64_t n, double damp) {
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (h[size_t(i * n + i)] <= 0) h[size_t(i * n + i)] = 1.0;
    mean += h[size_t(i * n + i)];
  }
  mean /= double(n);
  const std::vector<double> original = h;
  const int N = int(n);
  for (int attempt = 0; attempt < 6; ++attempt, damp *= 10) {
    h = original;
    for (int64_t i = 0; i < n; ++i) h[size_t(i * n + i)] += damp * mean;
    int info = 0;
    // Row-major symmetric = column-major symmetric; 'L' in column-major is the upper triangle here.
    dpotrf_("L", &N, h.data(), &N, &info, 1);
    if (info != 0) continue;
    dpotri_("L", &N, h.data(), &N, &info, 1);  // H⁻¹, lower triangle (column-major)
    if (info != 0) continue;
    for (int64_t i = 0; i < n; ++i)  // column-major lower (i ≥ j) at j*n + i → mirror to a full matrix
      for (int64_t j = 0; j < i; ++j) h[size_t(i * n + j)] = h[size_t(j * n + i)];
    dpotrf_("L", &N, h.data(), &N, &info, 1);  // H⁻¹ = L Lᵀ (column-major) = Uᵀ U with U = Lᵀ row-major
    if (info != 0) continue;
    for (int64_t i = 0; i < n; ++i)  // keep U (row-major upper: U[i][j] = L(j, i) at i*n + j); zero below
      for (int64_t j = 0; j < i; ++j) h[size_t(i * n + j)] = 0.0;
    return damp;
  }
  fail<ModelError>("GPTQ: the inputs' Gram matrix [{} × {}] is not positive definite even with damping {}", n, n, damp);
}

// tr(D H Dᵀ) for D = a − b [rows, cols]: the output error the Hessian predicts.
double proxy_error(const float* a, const std::vector<float>& b, int64_t rows, int64_t cols, const std::vector<double>& h) {
  std::vector<double> d(static_cast<size_t>(cols)), hd(static_cast<size_t>(cols));
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) d[size_t(c)] = double(a[r * cols + c]) - double(b[size_t(r * cols + c)]);
    cblas_dsymv(CblasRowMajor, CblasUpper, int(cols), 1.0, h.data(), int(cols), d.data(), 1, 0.0, hd.data(), 1);
    total += cblas_ddot(int(cols), d.data(), 1, hd.data(), 1);
  }
  return total;
}

// Round-to-nearest dequantized weights of w (for the proxy).
std::vector<float> rtn(const float* w, int64_t rows, int64_t cols, const GptqTarget& t) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  const int g = t.format == GptqTarget::Format::Nvfp4 ? 16 : 32;
  uint8_t codes[32];
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < cols / g; ++b) {
      const float* blk = w + r * cols + b * g;
      double mult;
      if (t.format == GptqTarget::Format::Nvfp4) mult = double(e4m3_to_f32(nvfp4_block(blk, t.ws2, t.search, nullptr, codes))) * t.ws2;
      else mult = std::ldexp(1.0, int(mxfp4_block(blk, t.rule, t.search, nullptr, codes)) - 127);
      for (int k = 0; k < g; ++k) out[size_t(r * cols + b * g + k)] = float(double(e2m1_to_f32(codes[k])) * mult);
    }
  return out;
}

}  // namespace

int64_t refine_codes(const float* w, int64_t rows, int64_t cols, int g, const std::vector<double>& h, const std::vector<double>& mult,
                     std::vector<uint8_t>& codes, int sweeps) {
  const int64_t nblocks = cols / g;
  std::vector<double> D(static_cast<size_t>(rows * cols)), R(D.size());  // [rows, cols]: D = w − Ŵ, R = D H
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      D[size_t(r * cols + c)] = double(w[r * cols + c]) - double(e2m1_to_f32(codes[size_t(r * cols + c)])) * mult[size_t(r * nblocks + c / g)];
  cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, int(rows), int(cols), 1.0, h.data(), int(cols), D.data(), int(cols), 0.0,
              R.data(), int(cols));
  int64_t changed = 0;
  for (int s = 0; s < sweeps; ++s) {
    int64_t changed_now = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double hjj = h[size_t(j * cols + j)];
      if (!(hjj > 0)) continue;  // no input reached this column: its code does not matter
      const double* hj = h.data() + j * cols;
      for (int64_t r = 0; r < rows; ++r) {
        double& d = D[size_t(r * cols + j)];
        const double m = mult[size_t(r * nblocks + j / g)];
        // The error is minimal in this coordinate at D_j = D_j − R_j / H_jj, i.e. Ŵ_j = w_j − that.
        const double target = double(w[r * cols + j]) - (d - R[size_t(r * cols + j)] / hjj);
        const uint8_t c = e2m1_code(target / m);
        if (c == codes[size_t(r * cols + j)]) continue;
        const double nd = double(w[r * cols + j]) - double(e2m1_to_f32(c)) * m, dd = nd - d;
        if (dd == 0) continue;  // ±0: the same value
        codes[size_t(r * cols + j)] = c;
        d = nd;
        cblas_daxpy(int(cols), dd, hj, 1, R.data() + r * cols, 1);
        ++changed_now;
      }
    }
    changed += changed_now;
    if (changed_now == 0) break;
  }
  return changed;
}

GptqResult gptq_quantize(const float* w0, int64_t rows, int64_t cols, std::vector<double>& h, const GptqTarget& t,
                         uint8_t* packed, uint8_t* scales, const GptqOptions& opt) {
  const int g = t.format == GptqTarget::Format::Nvfp4 ? 16 : 32;
  const int block = opt.block;
  if (cols % g || block <= 0 || block % g)
    fail<InvalidArgument>("GPTQ: {} columns, block {}: both must be positive multiples of {}", cols, block, g);
  if (int64_t(h.size()) != cols * cols) fail<InvalidArgument>("GPTQ: H has {} entries, expected {}²", h.size(), cols);
  GptqResult res;
  const std::vector<double> hess = h;  // for the proxy errors
  std::vector<float> diag(static_cast<size_t>(cols));
  for (int64_t i = 0; i < cols; ++i) diag[size_t(i)] = float(hess[size_t(i * cols + i)]);
  // The order the columns are quantized in: as stored, or (act order) by decreasing input energy
  // H_ii, so that the columns that matter most are rounded while the most columns are left to absorb
  // their error. order[i] is the stored column at position i, pos its inverse; H and W are permuted.
  std::vector<int64_t> order(static_cast<size_t>(cols)), pos(static_cast<size_t>(cols));
  std::iota(order.begin(), order.end(), int64_t(0));
  if (opt.act_order) {
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return diag[size_t(a)] > diag[size_t(b)]; });
    std::vector<double> hp(h.size());
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) hp[size_t(i * cols + j)] = h[size_t(order[size_t(i)] * cols + order[size_t(j)])];
    h.swap(hp);
  }
  for (int64_t i = 0; i < cols; ++i) pos[size_t(order[size_t(i)])] = i;
  res.damp = inverse_cholesky(h, cols, opt.damp);
  const std::vector<double>& U = h;  // [cols, cols] row-major upper, in quantization order
  std::vector<double> W(static_cast<size_t>(rows * cols));  // [rows, cols] in quantization order, updated as columns are quantized
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < cols; ++i) W[size_t(r * cols + i)] = double(w0[r * cols + order[size_t(i)]]);
  const int64_t nblocks = cols / g;
  std::vector<double> mult(static_cast<size_t>(rows * nblocks));  // [rows, nblocks] multipliers, set as blocks are reached
  std::vector<uint8_t> block_ready(static_cast<size_t>(nblocks), 0);
  std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));   // stored order
  std::vector<double> E(static_cast<size_t>(rows * block));  // [rows, block] scaled errors of this block
  std::vector<float> grp(static_cast<size_t>(g));
  uint8_t tmp[32];
  for (int64_t i0 = 0; i0 < cols; i0 += block) {
    const int64_t i1 = std::min<int64_t>(i0 + block, cols), B = i1 - i0;
    for (int64_t j = i0; j < i1; ++j) {
      const int64_t col = order[size_t(j)], b = col / g;
      if (!block_ready[size_t(b)]) {  // the first column of a scale block: its scale from the weights as updated so far
        block_ready[size_t(b)] = 1;
        for (int64_t r = 0; r < rows; ++r) {
          for (int k = 0; k < g; ++k) grp[size_t(k)] = float(W[size_t(r * cols + pos[size_t(b * g + k)])]);
          if (t.format == GptqTarget::Format::Nvfp4) {
            const uint8_t s = nvfp4_block(grp.data(), t.ws2, t.search, diag.data() + b * g, tmp);
            scales[r * nblocks + b] = s;
            mult[size_t(r * nblocks + b)] = double(e4m3_to_f32(s)) * t.ws2;
          } else {
            const uint8_t e = mxfp4_block(grp.data(), t.rule, t.search, diag.data() + b * g, tmp);
            scales[r * nblocks + b] = e;
            mult[size_t(r * nblocks + b)] = std::ldexp(1.0, int(e) - 127);
          }
        }
      }
      const double d = U[size_t(j * cols + j)];
      for (int64_t r = 0; r < rows; ++r) {
        double* wr = W.data() + r * cols;
        const double m = mult[size_t(r * nblocks + b)];
        const uint8_t c = e2m1_code(wr[j] / m);
        codes[size_t(r * cols + col)] = c;
        const double err = (wr[j] - double(e2m1_to_f32(c)) * m) / d;
        E[size_t(r * block + (j - i0))] = err;
        for (int64_t k = j + 1; k < i1; ++k) wr[k] -= err * U[size_t(j * cols + k)];
      }
    }
    // The columns after this block: W[:, i1:] −= E · U[i0:i1, i1:].
    if (i1 < cols)
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(cols - i1), int(B), -1.0, E.data(), block,
                  U.data() + i0 * cols + i1, int(cols), 1.0, W.data() + i1, int(cols));
  }
  if (opt.refine_sweeps > 0) res.refined = refine_codes(w0, rows, cols, g, hess, mult, codes, opt.refine_sweeps);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; k += 2)
      packed[r * (cols / 2) + k / 2] = uint8_t(codes[size_t(r * cols + k)] | (codes[size_t(r * cols + k + 1)] << 4));
  // The output errors H predicts, for the report: round-to-nearest and GPTQ.
  std::vector<float> q(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      q[size_t(r * cols + c)] = float(double(e2m1_to_f32(codes[size_t(r * cols + c)])) * mult[size_t(r * nblocks + c / g)]);
  res.proxy_before = proxy_error(w0, rtn(w0, rows, cols, t), rows, cols, hess);
  res.proxy_after = proxy_error(w0, q, rows, cols, hess);
  return res;
}

}  // namespace m2
