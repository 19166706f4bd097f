#include "model/kv_cache.h"

#include "core/error.h"

namespace m2 {

KvCache::KvCache(const ModelConfig& config, int64_t capacity) : capacity_(capacity), kv_dim_(config.kv_dim()) {
  if (capacity <= 0) fail<InvalidArgument>("KV cache capacity must be positive, found {}", capacity);
  if (capacity > config.max_position_embeddings)
    fail<InvalidArgument>("KV cache capacity {} exceeds max_position_embeddings = {}", capacity,
                          config.max_position_embeddings);
  const size_t n = size_t(config.num_layers) * size_t(capacity) * size_t(kv_dim_);
  k_.assign(n, 0.0f);
  v_.assign(n, 0.0f);
}

}  // namespace m2
