// One sequence's keys and values for every layer, fp32, allocated once for a fixed capacity.
// (The paged FP8 cache of the serving runtime replaces this in src/runtime/.)
#pragma once
#include <cstdint>
#include <vector>

#include "io/config.h"

namespace m2 {

class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t capacity);

  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  // Rows [0, capacity) of layer l: [capacity, kv_dim].
  float* keys(int layer) { return k_.data() + size_t(layer) * size_t(capacity_ * kv_dim_); }
  float* values(int layer) { return v_.data() + size_t(layer) * size_t(capacity_ * kv_dim_); }
  void advance(int64_t n) { length_ += n; }
  void truncate(int64_t n) { length_ = n < length_ ? n : length_; }
  void clear() { length_ = 0; }
  size_t bytes() const { return (k_.size() + v_.size()) * sizeof(float); }

 private:
  int64_t capacity_, kv_dim_, length_ = 0;
  std::vector<float> k_, v_;  // [layers, capacity, kv_dim]
};

}  // namespace m2
