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

// The cache lines of the chunk decoded after [r0, r0 + TileRows) × [k0, k0 + kc): the same rows' next
// TileCols columns, or the next tile's first, none after the last tile. Line by line, each over the
// rows, in the order the next decode reads them. Returns how many were written to `lines`, at most
// kMaxChunkLines (a column slice keeps its parent's row stride, so a row's bytes come from the
// element size, not the stride). Dense weights only (BF16, F16, F32): FP8 and FP4 tiles from memory
// ran no faster with them (1.00 FP8; 0.93-1.04 FP4, whose AVX-512 decode prefetches its next chunk
// itself), while BF16 ran 1.06-1.20x faster (docs/BENCHMARKS.md).
template <int TileRows, int TileCols>
constexpr int64_t kMaxChunkLines = TileRows * (TileCols * 4 / 64 + 2);
template <int TileRows, int TileCols>
int64_t next_chunk_lines(const WeightView& w, int64_t r0, int64_t k0, int64_t tile1, const uint8_t** lines) {
  if (w.format != WeightFormat::Dense) return 0;
  const int64_t K = w.cols;
  int64_t nr = r0, nk = k0 + TileCols;
  if (nk >= K) nr += TileRows, nk = 0;
  if (nr >= w.rows || nr >= tile1 * TileRows) return 0;
  const int64_t rows = std::min<int64_t>(TileRows, w.rows - nr), kc = std::min<int64_t>(TileCols, K - nk);
  const int64_t b0 = nk * w.element_bits() / 8, b1 = (nk + kc) * w.element_bits() / 8;  // in a row
  const int64_t per_row = (b1 - b0 + 63) / 64 + 1;  // lines a row's piece can touch
  int64_t n = 0;
  for (int64_t j = 0; j < per_row; ++j)
    for (int64_t i = 0; i < rows; ++i) {
      const uint8_t* row = w.data + (nr + i) * w.row_bytes;
      const uint8_t* line = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(row + b0) & ~uintptr_t(63)) + 64 * j;
      if (line < row + b1) lines[n++] = line;
    }
  return n;
}

// For weight tiles [tile0, tile1) of TileRows rows: decode TileCols columns at a time into `tile`
// ([TileCols][TileRows]) with decode(r0, k0, kc, tile), then run
// kernel(M, x_rows, tile, kc, y_rows, rows, first, prefetch, n_prefetch) over the tokens, at most Mr
// at a time. y has row stride ldy (≥ w.rows). The kernels prefetch the next chunk's lines into L2,
// line k of their share at their step k, so that the loads arrive spread over the products: the
// decode reads TileRows short pieces of rows a row length apart, which the hardware prefetcher does
// not follow, and a burst of prefetches at the decode's start waits on the few lines a core keeps in
// flight (docs/BENCHMARKS.md, "Tile decode prefetched by the products").
template <int TileRows, int TileCols, int Mr, typename Decode, typename Kernel>
void gemm_tile_loop(const WeightView& w, const float* x, float* y, int64_t ldy, int64_t tokens, int64_t tile0,
                    int64_t tile1, float* tile, Decode&& decode, Kernel&& kernel) {
  const int64_t K = w.cols, N = w.rows;
  const uint8_t* lines[kMaxChunkLines<TileRows, TileCols>];
  for (int64_t tt = tile0; tt < tile1; ++tt) {
    const int64_t r0 = tt * TileRows;
    const int rows = int(std::min<int64_t>(TileRows, N - r0));
    for (int64_t k0 = 0; k0 < K; k0 += TileCols) {
      const int64_t kc = std::min<int64_t>(TileCols, K - k0);
      decode(r0, k0, kc, tile);
      const int64_t n_lines = next_chunk_lines<TileRows, TileCols>(w, r0, k0, tile1, lines);
      const bool first = k0 == 0;
      // Balanced token blocks: a block of M tokens has 2M independent FMA chains, too few to cover
      // the FMA latency when M is small. Block b prefetches lines [b kc, b kc + kc).
      balanced_blocks<Mr>(tokens, [&](int64_t b, int64_t t, auto m) {
        const int64_t from = std::min(n_lines, b * kc), n = std::min(kc, n_lines - from);
        kernel(m, x + t * K + k0, tile, kc, y + t * ldy + r0, rows, first, lines + from, n);
      });
    }
  }
}

}  // namespace m2::detail
