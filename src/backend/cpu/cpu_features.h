// Which SIMD fast paths this CPU can run, read once at start-up.
#pragma once
#include <string>

namespace m2 {

struct CpuFeatures {
  bool avx2_fma_f16c = false;  // x86-64-v3 fast path
  bool avx512 = false;         // AVX-512 F/BW/VL/DQ: the packed-format gemv
  std::string describe() const;
};
const CpuFeatures& cpu_features();

}  // namespace m2
