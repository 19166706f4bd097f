// The CPU implementation of the backend ops (fp32 activations, weights decoded on the fly).
#pragma once
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/linear.h"
#include "core/thread_pool.h"

namespace m2 {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads = 0, LinearPath path = LinearPath::Auto);
  const char* name() const override { return "cpu"; }
  ThreadPool& pool() { return pool_; }
  void reserve(int64_t tokens, int64_t context) override;

  void linear(const WeightView& w, const float* x, float* y, int64_t tokens) override;
  void embed(const WeightView& table, const int32_t* ids, int64_t n, float* out) override;
  void rmsnorm(const float* x, const float* weight, float* y, int64_t rows, int64_t dim, float eps) override;
  void rope(float* x, int64_t tokens, int heads, int head_dim, int rotary_dim, const float* cos,
            const float* sin) override;
  void attention(const float* q, float* out, const AttentionSequence* seqs, int64_t num_seqs, int heads, int kv_heads,
                 int head_dim) override;
  void route(const float* logits, const float* bias, int64_t tokens, int experts, int k, int32_t* ids,
             float* weights) override;
  void silu_mul(const float* gate, const float* up, float* out, int64_t n) override;

 private:
  ThreadPool pool_;
  LinearPath path_;
  std::vector<std::vector<float>> scores_;  // per thread: [context] attention scores
  std::vector<float> kept_scores_;          // [experts_per_token] router selection scores
};

}  // namespace m2
