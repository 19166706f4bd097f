// What a sharded model needs from the ranks holding the other shards (docs/DESIGN.md,
// "Parallelism"). src/dist implements it over MPI for the CPU backend (NCCL for a device backend);
// a model that runs whole in one process has none. Every call is collective: each rank of the group
// makes the same calls in the same order with tensors of the same shape.
#pragma once
#include <cstddef>

#include "core/tensor.h"

namespace m2 {

class Collectives {
 public:
  virtual ~Collectives() = default;
  // Sums x (F32 or F64, the backend's memory) over the tensor-parallel group, in place: every rank
  // of the group ends with the same sum.
  virtual void tp_all_reduce(const TensorView& x) = 0;
  // Vocab-parallel lm_head: each rank of the tensor-parallel group holds the logits of vocabulary
  // rows [vocab_begin, vocab_begin + part.dim(1)) (part: F32 [rows, cols], backend memory); the
  // group's rank 0 receives all of them in `logits` (host, [rows, vocab]). Other ranks' `logits`
  // are not written.
  virtual void tp_gather_vocab(const TensorView& part, int64_t vocab_begin, float* logits, int64_t vocab) = 0;
  // Pipeline: the hidden state from the previous stage / to the next (the peer of the same
  // tensor-parallel rank). h: F32 [tokens, hidden].
  virtual void recv_from_previous_stage(const TensorView& h) = 0;
  virtual void send_to_next_stage(const TensorView& h) = 0;
  // The logits [count floats] computed by the last stage reach world rank 0 (which returns them);
  // a no-op where rank 0 computed them itself.
  virtual void logits_to_root(float* logits, size_t count) = 0;
};

}  // namespace m2
