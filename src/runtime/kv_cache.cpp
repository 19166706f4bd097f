#include "runtime/kv_cache.h"

#include <fmt/format.h>

#include "core/error.h"

namespace m2 {

DType parse_kv_cache_dtype(std::string_view n, Device device) {
  if (n == "auto") return device == Device::Cpu ? DType::F32 : DType::BF16;
  if (n == "bf16" || n == "bfloat16") return DType::BF16;
  if (n == "fp32" || n == "float32" || n == "float") return DType::F32;
  if (n == "fp8" || n == "fp8_e4m3") return DType::F8_E4M3;
  fail<InvalidArgument>("--kv-cache-dtype '{}' is unknown: expected auto, fp32, bf16 or fp8 (fp8_e4m3)", n);
}

std::string_view kv_cache_dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "fp32";
    case DType::BF16: return "bf16";
    case DType::F8_E4M3: return "fp8_e4m3";
    default: return dtype_name(d);
  }
}

size_t KvCache::bytes_per_block(const ModelConfig& c, DType dtype, int block_size) {
  return 2 * size_t(c.num_layers) * size_t(block_size) * size_t(c.kv_dim()) * dtype_size(dtype);
}

namespace {

int64_t blocks_for(const ModelConfig& c, const KvCacheOptions& o) {
  if (o.block_size <= 0) fail<InvalidArgument>("KV cache block size must be positive, found {}", o.block_size);
  if (o.num_blocks > 0) return o.num_blocks;
  const size_t per = KvCache::bytes_per_block(c, o.dtype, o.block_size);
  const int64_t n = int64_t(o.memory_bytes / per);
  if (n < 1)
    fail<InvalidArgument>("KV cache budget of {} bytes holds no block: one block of {} tokens needs {} bytes",
                          o.memory_bytes, o.block_size, per);
  return n;
}

}  // namespace

KvCache::KvCache(Backend& be, const ModelConfig& c, const BackendWeights& w, const KvCacheOptions& o,
                 const std::string& checkpoint)
    : pool_(blocks_for(c, o), o.block_size, o.enable_prefix_caching) {
  if (o.dtype != DType::F32 && o.dtype != DType::BF16 && o.dtype != DType::F8_E4M3)
    fail<InvalidArgument>("KV cache dtype {} is not supported: fp32, bf16 or fp8_e4m3", dtype_name(o.dtype));
  kv_.dtype = o.dtype;
  kv_.block_size = o.block_size;
  kv_.num_blocks = pool_.num_blocks();
  // A shard caches its own layers and its own kv heads (docs/DESIGN.md, "Parallelism").
  kv_.kv_dim = w.dims.kv_dim;
  const int layers = w.dims.local_layers();
  if (kv_.kv_dim <= 0 || layers <= 0 || size_t(layers) != w.layers.size())
    fail<InvalidArgument>("KV cache: the weights hold {} layers of {} KV dims", w.layers.size(), kv_.kv_dim);
  const size_t layer_bytes = size_t(kv_.num_blocks) * size_t(o.block_size) * size_t(kv_.kv_dim) * dtype_size(o.dtype);
  int missing = 0;
  for (int l = 0; l < layers; ++l) {
    storage_.emplace_back(be, layer_bytes);
    storage_.emplace_back(be, layer_bytes);
    PagedKvLayer L;
    L.k = storage_[storage_.size() - 2].view(o.dtype, {kv_.num_blocks, o.block_size, kv_.kv_dim});
    L.v = storage_.back().view(o.dtype, {kv_.num_blocks, o.block_size, kv_.kv_dim});
    if (o.dtype == DType::F8_E4M3) {
      const BackendLayer& B = w.layers[size_t(l)];
      L.k_scale = B.k_scale > 0 ? B.k_scale : 1.0f;
      L.v_scale = B.v_scale > 0 ? B.v_scale : 1.0f;
      missing += (B.k_scale > 0 ? 0 : 1) + (B.v_scale > 0 ? 0 : 1);
    }
    kv_.layers.push_back(L);
  }
  if (missing > 0)
    notices_.push_back(fmt::format(
        "WARNING: FP8 KV cache for {}: {} of {} k_scale/v_scale tensors are missing from the checkpoint; those "
        "scales are 1.0, which clips K/V values beyond ±448 and loses precision on small ones. Calibrate them "
        "(m2 quantize --kv-cache fp8) or use --kv-cache-dtype bf16.",
        checkpoint, missing, 2 * layers));
}

size_t KvCache::bytes() const {
  size_t n = 0;
  for (const auto& b : storage_) n += b.bytes();
  return n;
}

}  // namespace m2
