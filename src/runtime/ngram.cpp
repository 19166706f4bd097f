#include "runtime/ngram.h"

#include <algorithm>

namespace m2 {

int propose_ngram(std::span<const int32_t> h, const NgramOptions& o, int max_draft, int32_t* out) {
  const int64_t L = int64_t(h.size());
  const int k = std::min(o.k, max_draft);
  if (k <= 0) return 0;
  for (int n = std::min<int64_t>(o.max_n, L - 1); n >= std::max(1, o.min_n); --n) {
    const int32_t* suffix = h.data() + (L - n);
    // The most recent earlier occurrence: start positions L - n - 1 down to 0.
    for (int64_t s = L - n - 1; s >= 0; --s) {
      if (!std::equal(suffix, suffix + n, h.data() + s)) continue;
      const int64_t from = s + n, avail = L - from;
      const int take = int(std::min<int64_t>(k, avail));
      std::copy_n(h.data() + from, take, out);
      return take;
    }
  }
  return 0;
}

}  // namespace m2
