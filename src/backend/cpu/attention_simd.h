// Vector kernels of the CPU attention (attention_simd.cpp; x86-64 only, chosen at run time).
#pragma once
#include <cstdint>

namespace m2::detail {

// head_dim the vector kernels take (they hold one K or V row in registers).
constexpr int kAttnSimdMaxDim = 256;

// out[h] = Σ_i q[h·d + i] · k[i] for h < group (q: [group, d]).
void attn_dots_avx512(const float* q, const float* k, int group, int d, float* out);
void attn_dots_avx2(const float* q, const float* k, int group, int d, float* out);
// o[h·d + i] += p[h] · v[i] for h < group (o: [group, d]).
void attn_axpys_avx512(const float* p, const float* v, float* o, int group, int d);
void attn_axpys_avx2(const float* p, const float* v, float* o, int group, int d);

}  // namespace m2::detail
