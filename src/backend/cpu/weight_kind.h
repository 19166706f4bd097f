// The element encodings the SIMD kernels are specialised for: one instantiation per encoding, so no
// branch runs per chunk. Shared by the AVX2 and NEON kernel files (no intrinsics here).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "quant/weight.h"

namespace m2::detail {

enum class Kind { Bf16, F16, F32, E4m3, E5m2, Nvfp4, Mxfp4 };

inline Kind kind_of(const WeightView& w) {
  switch (w.format) {
    case WeightFormat::Dense: return w.dtype == DType::BF16 ? Kind::Bf16 : w.dtype == DType::F16 ? Kind::F16 : Kind::F32;
    case WeightFormat::Fp8Block: return w.dtype == DType::F8_E5M2 ? Kind::E5m2 : Kind::E4m3;
    case WeightFormat::Nvfp4: return Kind::Nvfp4;
    case WeightFormat::Mxfp4: return Kind::Mxfp4;
  }
  __builtin_unreachable();
}

// Calls f(std::integral_constant<Kind, K>{}) for w's kind.
template <typename F>
void with_kind(const WeightView& w, F&& f) {
  switch (kind_of(w)) {
    case Kind::Bf16: return f(std::integral_constant<Kind, Kind::Bf16>{});
    case Kind::F16: return f(std::integral_constant<Kind, Kind::F16>{});
    case Kind::F32: return f(std::integral_constant<Kind, Kind::F32>{});
    case Kind::E4m3: return f(std::integral_constant<Kind, Kind::E4m3>{});
    case Kind::E5m2: return f(std::integral_constant<Kind, Kind::E5m2>{});
    case Kind::Nvfp4: return f(std::integral_constant<Kind, Kind::Nvfp4>{});
    case Kind::Mxfp4: return f(std::integral_constant<Kind, Kind::Mxfp4>{});
  }
}

template <Kind K>
constexpr int64_t kElementBits = K == Kind::F32 ? 32 : K == Kind::Bf16 || K == Kind::F16 ? 16 : K == Kind::E4m3 || K == Kind::E5m2 ? 8 : 4;

// Formats whose elements are multiplied by a block scale.
template <Kind K>
constexpr bool kScaled = K == Kind::E4m3 || K == Kind::E5m2 || K == Kind::Nvfp4 || K == Kind::Mxfp4;

// The scale of columns [k0, k0 + 32) of row r (half = 0: columns k0.., half = 1: k0 + 16.. for NVFP4's
// 16-column blocks), with the FP4 codes' ½ folded in (kernels decode codes as 2 × value) and E4M3's
// 2^8 (decoded through F16 bit patterns, which carry 2^-8); 1 for unscaled formats.
template <Kind K>
inline float chunk_scale_f32(const WeightView& w, int64_t r, int64_t k0, int half) {
  if constexpr (K == Kind::E4m3 || K == Kind::E5m2) {
    float s;
    __builtin_memcpy(&s, w.scales + 4 * ((r / w.block_rows) * w.scale_stride + k0 / w.block_cols), 4);
    return K == Kind::E4m3 ? s * 256.0f : s;
  } else if constexpr (K == Kind::Nvfp4) {
    return kE4M3ToF32[w.scales[r * w.scale_stride + k0 / 16 + half]] * 0.5f * w.global_scale;
  } else if constexpr (K == Kind::Mxfp4) {
    return 0.5f * e8m0_to_f32(w.scales[r * w.scale_stride + k0 / 32]);
  } else {
    return 1.0f;
  }
}

// Calls pass(r, std::integral_constant<int, n>{}) over rows [r0, r1): blocks of R rows (the gemv
// kernels' weight streams per pass), then the rows left one at a time.
template <int R, typename Pass>
inline void for_row_blocks(int64_t r0, int64_t r1, Pass&& pass) {
  int64_t r = r0;
  for (; r + R <= r1; r += R) pass(r, std::integral_constant<int, R>{});
  for (; r < r1; ++r) pass(r, std::integral_constant<int, 1>{});
}

// The rows [r, r + R) of the next two passes follow in memory: one prefetch per row and 64 bytes,
// at the offset being read, 2R rows ahead; near the last row, at the offset itself (a wasted hint
// instead of a branch: GCC 12 drops a prefetch that is conditional on a member, measured as a 2×
// slower FP8 gemv from memory). Into L2 (T1): into L1 (T0) the 1-token gemv from memory ran 15-30%
// slower (BF16 26.4 against 30.7 GB/s, FP8 23.3 against 27.5, median of 4-7 rounds, 2026-12-06).
template <int R>
struct RowStreams {
  const uint8_t* rows[R];
  int64_t ahead;
  RowStreams(const WeightView& w, int64_t r) : ahead(r + 3 * R <= w.rows ? 2 * R * w.row_bytes : 0) {
    for (int i = 0; i < R; ++i) rows[i] = w.data + (r + i) * w.row_bytes;
  }
  void prefetch_at(int64_t byte) const {
    for (int i = 0; i < R; ++i) __builtin_prefetch(rows[i] + byte + ahead, 0, 2);  // prefetcht1 on x86
  }
};

// The FP4 scales of the rows [r + 2R, r + 3R) (those the row prefetches of a pass at r reach) into
// L2: a second stream beside the codes, 1/16-1/32 of their bytes, that the gemv would otherwise wait
// for at each row's first chunk. Near the last rows, those of [r, r + R) (a wasted hint, no branch
// around the prefetches). 1-token FP4 × Q8 from memory: 6-10% faster (docs/BENCHMARKS.md).
template <int R>
inline void prefetch_scales_ahead(const WeightView& w, int64_t r) {
  const uint8_t* s = w.scales + (r + 3 * R <= w.rows ? r + 2 * R : r) * w.scale_stride;
  for (int64_t b = 0; b < R * w.scale_stride; b += 64) __builtin_prefetch(s + b, 0, 2);  // prefetcht1 on x86
}

// [r0, r1) in stripes of whole 4-row passes of about kStripeBytes of weights: a gemv that runs its
// tokens in groups reads a stripe from memory once and from L2 for the later groups.
constexpr int64_t kStripeBytes = 128 << 10;
template <typename Stripe>
inline void for_row_stripes(const WeightView& w, int64_t r0, int64_t r1, Stripe&& stripe) {
  const int64_t rows = std::max<int64_t>(4, kStripeBytes / std::max<int64_t>(1, w.row_bytes) / 4 * 4);
  for (int64_t s = r0; s < r1; s += rows) stripe(s, std::min(r1, s + rows));
}

// Columns that the 32-wide SIMD decode covers; block-FP8 also needs whole chunks inside a scale block.
inline int64_t simd_cols(const WeightView& w) {
  if (w.format == WeightFormat::Fp8Block && w.block_cols % 32 != 0) return 0;
  return w.cols / 32 * 32;
}

}  // namespace m2::detail
