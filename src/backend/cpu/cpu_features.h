// Which SIMD fast paths this CPU can run, read once at start-up.
#pragma once
#include <string>

namespace m2 {

struct CpuFeatures {
  bool avx2_fma_f16c = false;  // x86-64-v3 fast path
  bool avx512 = false;         // AVX-512 F/BW/VL/DQ: the packed-format gemv
  bool avx512_vnni_vbmi = false;  // + VNNI (vpdpbusd) and VBMI (vpermb): the FP4 × Q8 gemv at 512 bits
  bool avx512_bf16 = false;    // + AVX512_BF16 (vdpbf16ps): BF16 / FP8 weights × bf16 activations (Activations::Q8Bf16)
  bool amx_bf16 = false;       // + AMX-TILE/AMX-BF16, granted by the kernel: BF16 weights × f32 x from 3 tokens
  bool neon = false;           // AArch64 Advanced SIMD (every AArch64 CPU)
  bool dotprod = false;        // AArch64 SDOT/UDOT (ARMv8.2+, e.g. Grace, GB10): the FP4 × Q8 gemv
  bool neon_bf16 = false;      // AArch64 FEAT_BF16 (BFDOT; Grace, GB10): BF16 weights × bf16 activations (Activations::Q8Bf16)
  std::string describe() const;
};
const CpuFeatures& cpu_features();

}  // namespace m2
