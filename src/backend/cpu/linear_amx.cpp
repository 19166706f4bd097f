// BF16 weights × fp32 x on Intel AMX (AMX-TILE + AMX-BF16), kAmxMinTokens tokens or more, and
// still exact: x is split into three bf16 planes whose sum is x (x1 = bf16(x), x2 = bf16(x − x1),
// x3 = bf16(x − x1 − x2), each rounded to nearest even: 24 significant bits in 3 × 8). Every
// product of two bf16 is exact in fp32, and the tiles accumulate in fp32. A token's result is
// (W·x3 + W·x2) + W·x1: within the fp32 path's tolerance of the reference, and, since every output
// is its own dot product over the same 32-column steps, the same bits at every token count (tests).
//   One tdpbf16ps multiplies a 16-row × 32-column tile of the weight, read as stored (tileloadd with
// the row stride), by 32 columns of 3T plane-token columns. That is 1-3 instructions per 16 × 32
// weights, where the fp32 gemv needs ~16 FMAs and conversions per token.
//   Tiles: A0, A1 (two 16-row blocks; one when the columns need three B tiles), B0-B2 (the 3T
// columns in groups of 16; "VNNI" layout: dword (j, c) holds columns 2j, 2j + 1 of column c), and a
// C tile per A and B. Tokens run in groups of 16 (kAmxGroup), every group of a block of 64 over a
// stripe of rows (256 KB) before the next stripe. x's planes are written in that layout once per
// product (amx_split_x; per expert in a grouped call).
//   Measured on the Intel host (docs/BENCHMARKS.md):
//   - at 1-2 tokens the fp32 gemv is as fast or faster (in L2 at 1 token, 52 against 37 GB/s), so
//     AMX starts at 3;
//   - at 8 tokens, one thread in L2: 25 against 11 GB/s;
//   - batch 8, whole model: 85% of the read limit against 72% (BF16 model), 73% against 64% (the
//     MXFP4 model, whose attention and lm_head are BF16);
//   - a 512-token prefill: BF16 model 57-68% of the fp32 FMA peak against 43-53%, the MXFP4 model
//     (BF16 attention) 80-85% against 72%.
//   Past 64 tokens (kAmxBlockTokens) the tokens run in blocks of 64, whose operand (18 KB per token at
//   3072 columns) stays in L2 while the weight streams by once per block.
//   Linux hands AMX state to a process only after arch_prctl(ARCH_REQ_XCOMP_PERM) (cpu_features.cpp).
// note: only POD fields of WeightView are touched here, so no std::string code is emitted with AVX-512.
#if defined(__x86_64__)
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/linear.h"
#include "backend/cpu/transpose_avx2.h"

namespace m2::detail {

namespace {

constexpr int kAmxRows = 16;  // rows of a weight tile (and of a C tile)
// How far ahead in its rows a block prefetches into L2. Prefetching the next block's rows at the offset
// being read, as the gemv does, held the product from memory at 17-21 GB/s whatever the tokens; 512,
// 1024, 2048 and 4096 bytes ahead gave 22 / 26 / 24 / 23 GB/s at 1 token (docs/BENCHMARKS.md).
constexpr int64_t kPrefetchAhead = 1024;
constexpr int64_t kAmxGroup = 16;                  // tokens per pass (3 × 16 B columns)
constexpr int64_t kAmxStripeBytes = int64_t(256) << 10;  // weight rows run by every token group in turn
constexpr int64_t kAmxBlockTokens = 64;                  // tokens whose operand stays in L2 over all stripes

struct TileConfig {  // the 64-byte operand of ldtilecfg, palette 1
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The B operand's columns: 3T (plane p of token t at p·T + t), in groups of up to 16 per tile.
inline int groups_of(int64_t T) { return int((3 * T + 15) / 16); }
inline int group_cols(int64_t T, int g) { return int(std::min<int64_t>(16, 3 * T - 16 * g)); }

// Tiles: A0 = 0, A1 = 1 (two row blocks), B0-B2 = 2-4 (column groups), then C of (row block a,
// group g) at c_tile(a, g). A1 only with at most 2 groups: 2 + 2 + 4 tiles at most.
constexpr int c_tile(int a, int g, int G) { return G <= 2 ? 2 + G + a * G + g : 5 + g; }
void load_config(int rows, int64_t T, int NA) {
  TileConfig c;
  const int G = groups_of(T);
  for (int a = 0; a < NA; ++a) {
    c.rows[a] = uint8_t(rows);
    c.colsb[a] = 64;
  }
  for (int g = 0; g < G; ++g) {
    c.rows[2 + g] = 16;
    c.colsb[2 + g] = uint16_t(4 * group_cols(T, g));
    for (int a = 0; a < NA; ++a) {
      c.rows[c_tile(a, g, G)] = uint8_t(rows);
      c.colsb[c_tile(a, g, G)] = uint16_t(4 * group_cols(T, g));
    }
  }
  // Our own ldtilecfg, with the config as a memory operand: GCC 12 dropped most stores into `c`
  // before _tile_loadconfig (the tile rows stayed, the column widths did not; #GP).
  __asm__ volatile("ldtilecfg %0" ::"m"(c));
}

// The tile instructions with the tile number a template argument (GCC's _tile_* macros paste their
// argument into the instruction text, so they take only literal numbers). AT&T operand order.
template <int Tile>
inline void tile_zero() {
  __asm__ volatile("tilezero %%tmm%c0" ::"i"(Tile));
}
template <int Tile>
inline void tile_load(const void* base, int64_t stride) {
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(base), "r"(stride), "i"(Tile) : "memory");
}
template <int Tile>
inline void tile_store(void* base, int64_t stride) {
  __asm__ volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(base), "r"(stride), "i"(Tile) : "memory");
}
template <int C, int A, int B>
inline void tile_dp_bf16() {  // C += A · B
  __asm__ volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(C), "i"(A), "i"(B));
}

// x [T][K] → b [K/2][3T] dwords: dword (j, p·T + t) holds columns 2j, 2j + 1 of plane p of token t
// (two bf16, the even column low), where x1 + x2 + x3 = x. Per 16 columns: each token's three planes
// (8 dwords each), then per plane and 8 tokens an 8 × 8 transpose into the 8 rows of b.
void split_group(const float* x, int64_t T, int64_t K, uint32_t* b) {
  const int64_t nc = 3 * T, groups = (T + 7) / 8;
  for (int64_t k = 0; k < K; k += 16) {
    __m256i d[3][kAmxGroup];  // [plane][token]: 8 column pairs
    for (int64_t t = 0; t < groups * 8; ++t) {
      if (t >= T) {
        d[0][t] = d[1][t] = d[2][t] = _mm256_setzero_si256();
        continue;
      }
      const __m512 v = _mm512_loadu_ps(x + t * K + k);
      d[0][t] = (__m256i)_mm512_cvtneps_pbh(v);
      const __m512 r1 = _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(d[0][t]), 16)));
      d[1][t] = (__m256i)_mm512_cvtneps_pbh(r1);
      const __m512 r2 = _mm512_sub_ps(r1, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(d[1][t]), 16)));
      d[2][t] = (__m256i)_mm512_cvtneps_pbh(r2);
    }
    uint32_t* out = b + (k / 2) * nc;
    for (int p = 0; p < 3; ++p)
      for (int64_t g = 0; g < groups; ++g) {
        __m256i r[8];
        for (int i = 0; i < 8; ++i) r[i] = d[p][8 * g + i];
        transpose8(r);
        const __mmask8 m = __mmask8((1u << std::min<int64_t>(8, T - 8 * g)) - 1);
        for (int j = 0; j < 8; ++j) _mm256_mask_storeu_epi32(out + j * nc + p * T + 8 * g, m, r[j]);
      }
  }
}

// Rows [r, r + NA·rows) × tokens [0, T) over all K columns, G column groups; the next rows (as many)
// prefetched into L2 when `prefetch_next`.
template <int NA, int G>
void amx_block(const WeightView& w, const uint32_t* b, int64_t T, float* y, int64_t ldy, int64_t r, int rows,
               bool prefetch_next) {
  static_assert(NA == 1 || G <= 2, "two row blocks take at most two column groups");
  const int64_t K = w.cols, nc = 3 * T, stride = 4 * nc;
  const uint8_t* a = w.data + r * w.row_bytes;
  const uint8_t* next = a + NA * kAmxRows * w.row_bytes;
  const int64_t a1 = int64_t(kAmxRows) * w.row_bytes;
  tile_zero<c_tile(0, 0, G)>();
  if constexpr (G > 1) tile_zero<c_tile(0, 1, G)>();
  if constexpr (G > 2) tile_zero<c_tile(0, 2, G)>();
  if constexpr (NA > 1) {
    tile_zero<c_tile(1, 0, G)>();
    if constexpr (G > 1) tile_zero<c_tile(1, 1, G)>();
  }
  for (int64_t k = 0; k < K; k += 32) {
    if (prefetch_next)  // this block's rows 1 KB ahead; past a row's end, the next block's rows
      for (int i = 0; i < NA * kAmxRows; ++i) {
        const int64_t o = 2 * k + kPrefetchAhead;
        const uint8_t* p = o < w.row_bytes ? a + i * w.row_bytes + o : next + i * w.row_bytes + (o - w.row_bytes);
        _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1);
      }
    const uint32_t* bk = b + (k / 2) * nc;
    tile_load<0>(a + 2 * k, w.row_bytes);
    if constexpr (NA > 1) tile_load<1>(a + a1 + 2 * k, w.row_bytes);
    tile_load<2>(bk, stride);
    if constexpr (G > 1) tile_load<3>(bk + 16, stride);
    if constexpr (G > 2) tile_load<4>(bk + 32, stride);
    tile_dp_bf16<c_tile(0, 0, G), 0, 2>();
    if constexpr (G > 1) tile_dp_bf16<c_tile(0, 1, G), 0, 3>();
    if constexpr (G > 2) tile_dp_bf16<c_tile(0, 2, G), 0, 4>();
    if constexpr (NA > 1) {
      tile_dp_bf16<c_tile(1, 0, G), 1, 2>();
      if constexpr (G > 1) tile_dp_bf16<c_tile(1, 1, G), 1, 3>();
    }
  }
  alignas(64) float c[2][kAmxRows][48];  // [row block][row][column], columns p·T + t
  constexpr int64_t ld = 48 * 4;
  tile_store<c_tile(0, 0, G)>(&c[0][0][0], ld);
  if constexpr (G > 1) tile_store<c_tile(0, 1, G)>(&c[0][0][16], ld);
  if constexpr (G > 2) tile_store<c_tile(0, 2, G)>(&c[0][0][32], ld);
  if constexpr (NA > 1) {
    tile_store<c_tile(1, 0, G)>(&c[1][0][0], ld);
    if constexpr (G > 1) tile_store<c_tile(1, 1, G)>(&c[1][0][16], ld);
  }
  for (int ab = 0; ab < NA; ++ab)
    for (int i = 0; i < rows; ++i) {
      const float* ci = c[ab][i];
      for (int64_t t = 0; t < T; ++t) y[t * ldy + r + ab * kAmxRows + i] = (ci[2 * T + t] + ci[T + t]) + ci[t];
    }
}

template <int G>
void amx_rows(const WeightView& w, const uint32_t* b, int64_t T, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  constexpr int NA = G <= 2 ? 2 : 1;
  load_config(kAmxRows, T, NA);
  int64_t r = r0;
  for (; r + NA * kAmxRows <= r1; r += NA * kAmxRows)
    amx_block<NA, G>(w, b, T, y, ldy, r, kAmxRows, r + 2 * NA * kAmxRows <= w.rows);
  if constexpr (NA > 1)
    if (r + kAmxRows <= r1) {
      load_config(kAmxRows, T, 1);
      amx_block<1, G>(w, b, T, y, ldy, r, kAmxRows, false);
      r += kAmxRows;
    }
  if (r < r1) {
    load_config(int(r1 - r), T, 1);
    amx_block<1, G>(w, b, T, y, ldy, r, int(r1 - r), false);
  }
}

}  // namespace

bool amx_supports(const WeightView& w, int64_t tokens) {
  return w.format == WeightFormat::Dense && w.dtype == DType::BF16 && w.cols % 32 == 0 && tokens >= kAmxMinTokens;
}

// Tokens in groups of kAmxGroup, each group's operand of its own ([K/2][3 × its tokens]), one after
// the other: group g at 3 · (K/2) · kAmxGroup · g words.
void amx_split_x_avx512(const float* x, int64_t tokens, int64_t cols, uint32_t* out) {
  for (int64_t t0 = 0; t0 < tokens; t0 += kAmxGroup)
    split_group(x + t0 * cols, std::min<int64_t>(kAmxGroup, tokens - t0), cols, out + 3 * (cols / 2) * t0);
}

// Rows [r0, r1) × tokens in blocks of kAmxBlockTokens; per block, the rows in stripes of
// ~kAmxStripeBytes of weight, each stripe run by every group of 16 tokens of the block while it stays
// in L2. A block's operand (18 KB per token at 3072 columns, 1.2 MB for 64 tokens) stays in L2 over
// all the stripes; the weight is read from memory once per block.
void rows_bf16_amx(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightView& w = *job.w;
  const int64_t stripe = std::max<int64_t>(2 * kAmxRows, kAmxStripeBytes / w.row_bytes / (2 * kAmxRows) * (2 * kAmxRows));
  for (int64_t b0 = 0; b0 < job.tokens; b0 += kAmxBlockTokens) {
    const int64_t b1 = std::min(job.tokens, b0 + kAmxBlockTokens);
    for (int64_t s0 = r0; s0 < r1; s0 += stripe) {
      const int64_t s1 = std::min(r1, s0 + stripe);
      for (int64_t t0 = b0; t0 < b1; t0 += kAmxGroup) {
        const int64_t T = std::min<int64_t>(kAmxGroup, b1 - t0);
        const uint32_t* b = job.xamx + 3 * (w.cols / 2) * t0;
        float* y = job.y + t0 * job.ldy;
        switch (groups_of(T)) {
          case 1: amx_rows<1>(w, b, T, y, job.ldy, s0, s1); break;
          case 2: amx_rows<2>(w, b, T, y, job.ldy, s0, s1); break;
          default: amx_rows<3>(w, b, T, y, job.ldy, s0, s1); break;
        }
      }
    }
  }
  _tile_release();
}

}  // namespace m2::detail
#else
#include "backend/cpu/linear.h"
#include "core/error.h"
namespace m2::detail {
bool amx_supports(const WeightView&, int64_t) { return false; }
void rows_bf16_amx(const LinearJob& job, int64_t, int64_t) {
  fail("linear {}: the AMX path is not compiled for this architecture", job.w->name);
}
void amx_split_x_avx512(const float*, int64_t, int64_t, uint32_t*) {
  fail("amx_split_x: the AMX path is not compiled for this architecture");
}
}  // namespace m2::detail
#endif
