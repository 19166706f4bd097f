// One forward step of several sequences: what the runtime hands the model.
#pragma once
#include <cstdint>
#include <span>

namespace m2 {

// Which rows of a sequence's new tokens need logits: none (a prefill chunk that is not the last),
// the last one (decode, the end of a prompt), or all (speculative verification, scoring a prompt).
enum class LogitsFor : uint8_t { None, Last, All };

struct SequenceStep {
  int64_t tokens = 0;                    // new tokens of this sequence in the step
  int64_t context = 0;                   // tokens in its cache after the step, the new ones included
  std::span<const int32_t> block_table;  // KV blocks holding positions [0, context), in order
  LogitsFor logits = LogitsFor::Last;
};

// The new tokens of every sequence, sequence after sequence. For the i-th new token of a sequence
// (i < tokens), position = context - tokens + i and slot = block_table[position / block_size] *
// block_size + position % block_size: the model checks both, so a batch can never write into a block
// it does not list.
struct ForwardBatch {
  std::span<const int32_t> tokens;     // [T] token ids
  std::span<const int32_t> positions;  // [T] absolute positions (RoPE)
  std::span<const int64_t> slots;      // [T] KV-cache slot of each new token
  std::span<const SequenceStep> seqs;  // Σ seqs[s].tokens == T

  // Rows of logits the step returns, in batch order.
  int64_t logit_rows() const {
    int64_t n = 0;
    for (const auto& s : seqs) n += s.logits == LogitsFor::All ? s.tokens : s.logits == LogitsFor::Last ? 1 : 0;
    return n;
  }
};

}  // namespace m2
