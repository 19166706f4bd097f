// N-gram (prompt-lookup) speculation: the draft is what followed the most recent earlier occurrence
// of the sequence's last n tokens (n from max_n down to min_n), up to k tokens.
#pragma once
#include <cstdint>
#include <span>

namespace m2 {

struct NgramOptions {
  int k = 0;      // draft tokens per step (0 = off)
  int max_n = 4;  // longest suffix matched
  int min_n = 2;  // shortest suffix matched
};

// Writes up to `max_draft` draft tokens to `out` and returns how many.
int propose_ngram(std::span<const int32_t> history, const NgramOptions& o, int max_draft, int32_t* out);

}  // namespace m2
