// The CPU implementation of the backend: host memory, weights read in place from the checkpoint's
// mmap, fp32 activations, every op parallelised over one thread pool.
#pragma once
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/linear.h"
#include "core/thread_pool.h"

namespace m2 {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads = 0, LinearPath path = LinearPath::Auto, Activations act = Activations::F32);
  const char* name() const override { return "cpu"; }
  size_t free_memory() const override;
  Device device() const override { return Device::Cpu; }
  ThreadPool& pool() { return pool_; }
  LinearPath linear_path() const { return path_; }
  Activations activations() const { return act_; }

  void* allocate(size_t bytes) override;
  void release(void* ptr, size_t bytes) noexcept override;
  void upload(const TensorView& dst, const void* src, size_t bytes) override;
  void download(void* dst, const TensorView& src, size_t bytes) override;
  void copy(const TensorView& dst, const TensorView& src) override;
  void synchronize() override {}

  WeightView upload_weight(const WeightView& host, std::vector<Buffer>&) override { return host; }
  BackendWeights prepare(const ModelWeights& w, const ShardSpec& shard) override;
  void reserve(int64_t tokens, int64_t context) override;

  void linear(const WeightView& w, const TensorView& x, const TensorView& y) override;
  void embed(const WeightView& table, const TensorView& ids, const TensorView& out) override;
  void rmsnorm(const TensorView& x, const TensorView& weight, const TensorView& y, float eps) override;
  void sum_squares(const TensorView& x, const TensorView& ss) override;
  void rmsnorm_with_sums(const TensorView& x, const TensorView& weight, const TensorView& ss, double count,
                         const TensorView& y, float eps) override;
  void zero(const TensorView& x) override;
  void add(const TensorView& h, const TensorView& a) override;
  void gather_rows(const TensorView& x, const TensorView& rows, const TensorView& out) override;
  void rope_table(const TensorView& positions, const TensorView& inv_freq, const TensorView& cos,
                  const TensorView& sin) override;
  void rope(const TensorView& x, int heads, int head_dim, int rotary_dim, const TensorView& cos,
            const TensorView& sin) override;
  void kv_store(const PagedKv& kv, int layer, const TensorView& k, const TensorView& v,
                const TensorView& slots) override;
  void paged_attention(const PagedKv& kv, int layer, const TensorView& q, const TensorView& out,
                       const AttentionBatch& batch, int heads, int kv_heads, int head_dim) override;
  void route(const TensorView& logits, const TensorView& bias, const TensorView& ids,
             const TensorView& weights) override;
  void moe_permute(const TensorView& x, const TensorView& ids, const TensorView& x_perm, const TensorView& offsets,
                   const TensorView& slot_of) override;
  void grouped_linear(const ExpertStack& w, const TensorView& x, const TensorView& offsets,
                      const TensorView& y) override;
  void swiglu(const TensorView& gu, const TensorView& out) override;
  void moe_unpermute(const TensorView& y, const TensorView& slot_of, const TensorView& weights,
                     const TensorView& h) override;

 private:
  ThreadPool pool_;
  LinearPath path_;
  Activations act_;
  std::vector<std::vector<float>> scores_;  // per thread: [q heads per kv head, context] scores + one K/V row
  int64_t reserved_context_ = 0;            // the longest context reserve() was told of
  std::vector<int32_t> expert_fill_;        // [experts] slots filled per expert while permuting
  std::vector<float> x_prepared_;           // [S, cols] grouped-linear input in the kernels' XLayout
  std::vector<uint8_t> x_q8_;               // [S, q8_row_bytes(cols)] grouped-linear input as Q8 rows
  std::vector<float> x_rounded_;            // [S, cols] grouped-linear input rounded to Q8 (5+ rows)
  std::vector<uint16_t> x_bf16_;            // [S, cols] grouped-linear input as bf16 rows
  std::vector<uint32_t> x_amx_;             // grouped-linear input as AMX operands, amx_x_words(S, cols)
  struct GroupItem {                        // one expert × part of a grouped call
    LinearJob job;
    int64_t grain, units;                   // rows per work unit, units
    double unit_cost;
    bool q8;                                // the job reads Q8 rows of x
    bool rounded;                           // the job reads x rounded to Q8 (fp32 tiles)
    bool bf16;                              // the job reads bf16 rows of x
    bool amx;                               // the job reads x as AMX operands (per expert)
  };
  std::vector<GroupItem> group_items_;
};

}  // namespace m2
