// The tiled matrix-matrix loop shared by the AVX2 and AVX-512 linear kernels. Each ISA file includes
// it under its own target pragma and passes its decoder and micro-kernel; the loop itself holds no
// intrinsics.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "quant/weight.h"

namespace m2::detail {

// Calls kernel(std::integral_constant<int, M>{}) for M = n, with 1 <= n <= Max.
template <int Max, typename Kernel>
inline void dispatch_rows(int n, Kernel&& kernel) {
  if constexpr (Max >= 1) {
    if (n == Max) return kernel(std::integral_constant<int, Max>{});
    dispatch_rows<Max - 1>(n, kernel);
  }
}

// Calls fn(b, t, std::integral_constant<int, M>{}) for ceil(tokens / Max) blocks of balanced sizes M
// (10 tokens, Max 8: 5 + 5, not 8 + 2), block b starting at token t.
template <int Max, typename Fn>
inline void balanced_blocks(int64_t tokens, Fn&& fn) {
  if (tokens <= 0) return;
  const int64_t blocks = (tokens + Max - 1) / Max, base = tokens / blocks, extra = tokens % blocks;
  for (int64_t b = 0, t = 0; b < blocks; ++b) {
    const int m = int(base + (b < extra));
    dispatch_rows<Max>(m, [&](auto mm) { fn(b, t, mm); });
    t += m;
  }
}

// For weight tiles [tile0, tile1) of TileRows rows: decode TileCols columns at a time into `tile`
// ([TileCols][TileRows]) with decode(r0, k0, kc, tile), then run
// kernel(M, x_rows, tile, kc, y_rows, rows, first) over the tokens, at most Mr at a time.
// y has row stride ldy (≥ w.rows).
template <int TileRows, int TileCols, int Mr, typename Decode, typename Kernel>
void gemm_tile_loop(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t tokens, int64_t tile0,
                    int64_t tile1, float* tile, Decode&& decode, Kernel&& kernel) {
  const int64_t K = w.cols, N = w.rows;
  for (int64_t tt = tile0; tt < tile1; ++tt) {
    const int64_t r0 = tt * TileRows;
    const int rows = int(std::min<int64_t>(TileRows, N - r0));
    for (int64_t k0 = 0; k0 < K; k0 += TileCols) {
      const int64_t kc = std::min<int64_t>(TileCols, K - k0);
      decode(r0, k0, kc, tile);
      const bool first = k0 == 0;
      // Balanced token blocks: a block of M tokens has 2M independent FMA chains, too few to cover
      // the FMA latency when M is small.
      balanced_blocks<Mr>(tokens, [&](int64_t, int64_t t, auto m) {
        kernel(m, x + t * K + k0, tile, kc, y + t * ldy + r0, rows, first);
      });
    }
  }
}

}  // namespace m2::detail
