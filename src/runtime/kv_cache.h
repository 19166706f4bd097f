// The paged KV cache of a model: per layer K and V blocks in backend memory (fp32, bf16, or fp8 E4M3
// with the checkpoint's per-layer k_scale/v_scale), and the block pool that hands them out.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "runtime/block_pool.h"

namespace m2 {

struct KvCacheOptions {
  DType dtype = DType::F32;     // F32, BF16 or F8_E4M3
  int block_size = 16;          // tokens per block
  int64_t num_blocks = 0;       // 0: from memory_bytes
  size_t memory_bytes = 0;      // budget for K and V of every layer when num_blocks is 0
  bool enable_prefix_caching = true;
};

// "auto" (the backend's activation dtype: fp32 on the CPU, so the cache is exact), "fp32"/"float32",
// "bf16"/"bfloat16", "fp8"/"fp8_e4m3".
DType parse_kv_cache_dtype(std::string_view name, Device device = Device::Cpu);
std::string_view kv_cache_dtype_name(DType d);

class KvCache {
 public:
  // `weights` supplies the per-layer FP8 scales; a checkpoint without them gets 1.0, and says so
  // once in notices() (naming `checkpoint`), never silently.
  KvCache(Backend& backend, const ModelConfig& config, const BackendWeights& weights, const KvCacheOptions& options,
          const std::string& checkpoint);

  // Bytes of one block of every layer's K and V.
  static size_t bytes_per_block(const ModelConfig& config, DType dtype, int block_size);

  const PagedKv& view() const { return kv_; }
  BlockPool& blocks() { return pool_; }
  const BlockPool& blocks() const { return pool_; }
  int64_t capacity_tokens() const { return kv_.num_blocks * kv_.block_size; }
  size_t bytes() const;
  const std::vector<std::string>& notices() const { return notices_; }

 private:
  PagedKv kv_;
  std::vector<Buffer> storage_;  // [layers × {K, V}]
  BlockPool pool_;
  std::vector<std::string> notices_;
};

}  // namespace m2
