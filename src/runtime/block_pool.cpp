#include "runtime/block_pool.h"

#include <algorithm>

#include "core/error.h"

namespace m2 {

BlockPool::BlockPool(int64_t num_blocks, int block_size, bool enable_prefix_caching)
    : num_blocks_(num_blocks), block_size_(block_size), prefix_caching_(enable_prefix_caching) {
  if (num_blocks <= 0 || num_blocks > INT32_MAX)
    fail<InvalidArgument>("KV cache: {} blocks (expected 1 .. {})", num_blocks, INT32_MAX);
  if (block_size <= 0 || block_size > 4096) fail<InvalidArgument>("KV cache: block size {} (expected 1 .. 4096)", block_size);
  const size_t n = size_t(num_blocks);
  ref_.assign(n, 0);
  free_.resize(n);
  for (size_t i = 0; i < n; ++i) free_[i] = int32_t(n - 1 - i);  // block 0 is taken first
  prev_.assign(n, -1);
  next_.assign(n, -1);
  registered_.assign(n, 0);
  hash_.assign(n, 0);
  parent_.assign(n, 0);
  if (prefix_caching_) {
    tokens_.assign(n * size_t(block_size), 0);
    uint64_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    index_.assign(cap, -1);
    index_mask_ = cap - 1;
  }
}

uint64_t BlockPool::hash_block(uint64_t parent, std::span<const int32_t> tokens) {
  // 64-bit multiply-xorshift mixing of the parent hash and each token (collisions are harmless:
  // lookups also compare the parent hash and the tokens).
  auto mix = [](uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
  };
  uint64_t h = mix(0xcbf29ce484222325ull, parent);
  for (int32_t t : tokens) h = mix(h, uint64_t(uint32_t(t)));
  return mix(h, tokens.size());
}

bool BlockPool::allocate(int64_t n, std::vector<int32_t>& out) {
  if (n < 0 || n > num_free()) return false;
  for (int64_t i = 0; i < n; ++i) {
    int32_t b;
    if (!free_.empty()) {
      b = free_.back();
      free_.pop_back();
    } else {
      b = head_;  // the least recently released cached block
      unlink(b);
      unregister(b);
    }
    ref_[size_t(b)] = 1;
    out.push_back(b);
  }
  return true;
}

void BlockPool::release(std::span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    M2_CHECK(valid(b) && ref_[size_t(b)] > 0, "release of block {} with {} references", b, valid(b) ? ref_[size_t(b)] : -1);
    if (--ref_[size_t(b)] > 0) continue;
    if (registered_[size_t(b)]) push_evictable(b);
    else free_.push_back(b);
  }
}

void BlockPool::unlink(int32_t b) {
  const int32_t p = prev_[size_t(b)], n = next_[size_t(b)];
  if (p >= 0) next_[size_t(p)] = n;
  else head_ = n;
  if (n >= 0) prev_[size_t(n)] = p;
  else tail_ = p;
  prev_[size_t(b)] = next_[size_t(b)] = -1;
  --evictable_;
}

void BlockPool::push_evictable(int32_t b) {
  prev_[size_t(b)] = tail_;
  next_[size_t(b)] = -1;
  if (tail_ >= 0) next_[size_t(tail_)] = b;
  else head_ = b;
  tail_ = b;
  ++evictable_;
}

int32_t BlockPool::find(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const {
  if (!prefix_caching_ || int64_t(tokens.size()) != block_size_) return -1;
  for (uint64_t i = hash & index_mask_;; i = (i + 1) & index_mask_) {
    const int32_t b = index_[i];
    if (b < 0) return -1;
    if (hash_[size_t(b)] == hash && parent_[size_t(b)] == parent &&
        std::equal(tokens.begin(), tokens.end(), tokens_.begin() + int64_t(b) * block_size_))
      return b;
  }
}

int32_t BlockPool::lookup(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) {
  const int32_t b = find(hash, parent, tokens);
  if (b < 0) return -1;
  if (ref_[size_t(b)]++ == 0) unlink(b);
  return b;
}

void BlockPool::register_full(int32_t b, uint64_t h, uint64_t parent, std::span<const int32_t> tokens) {
  if (!prefix_caching_) return;
  M2_CHECK(valid(b) && ref_[size_t(b)] > 0 && int64_t(tokens.size()) == block_size_,
           "register of block {} ({} tokens)", b, tokens.size());
  if (registered_[size_t(b)]) return;
  if (find(h, parent, tokens) >= 0) return;
  registered_[size_t(b)] = 1;
  hash_[size_t(b)] = h;
  parent_[size_t(b)] = parent;
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + int64_t(b) * block_size_);
  uint64_t i = h & index_mask_;
  while (index_[i] >= 0) i = (i + 1) & index_mask_;
  index_[i] = b;
  ++cached_;
}

void BlockPool::unregister(int32_t b) {
  if (!registered_[size_t(b)]) return;
  registered_[size_t(b)] = 0;
  --cached_;
  uint64_t i = hash_[size_t(b)] & index_mask_;
  while (index_[i] != b) i = (i + 1) & index_mask_;
  // Backward-shift deletion keeps every remaining entry reachable from its home slot.
  for (uint64_t j = (i + 1) & index_mask_;; j = (j + 1) & index_mask_) {
    const int32_t e = index_[j];
    if (e < 0) break;
    const uint64_t home = hash_[size_t(e)] & index_mask_;
    const bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (stays) continue;
    index_[i] = e;
    i = j;
  }
  index_[i] = -1;
}

void BlockPool::drop_cache() {
  while (head_ >= 0) {
    const int32_t b = head_;
    unlink(b);
    unregister(b);
    free_.push_back(b);
  }
}

}  // namespace m2
