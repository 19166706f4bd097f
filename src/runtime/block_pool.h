// The KV-cache block allocator: a fixed number of blocks of block_size token slots, reference
// counted, with prefix caching. A block whose every slot holds a computed token can be registered
// under a hash of (its parent block's hash, its tokens); a later sequence with the same prefix takes
// it instead of recomputing. Registered blocks nobody references stay cached until an allocation
// needs them, least recently released first. Nothing here allocates after construction.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace m2 {

class BlockPool {
 public:
  BlockPool(int64_t num_blocks, int block_size, bool enable_prefix_caching);

  int64_t num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks an allocation can take now (never-used or released, plus cached ones nobody references).
  int64_t num_free() const { return int64_t(free_.size()) + evictable_; }
  int64_t num_used() const { return num_blocks_ - num_free(); }  // referenced by some sequence
  int64_t num_cached() const { return cached_; }                  // registered (referenced or not)

  // Takes n blocks (all or none): appends their ids to `out`. Returns false when fewer are free.
  bool allocate(int64_t n, std::vector<int32_t>& out);
  // Drops one reference from each block.
  void release(std::span<const int32_t> blocks);
  // The cached block holding `tokens` after the block hashed `parent` (hash = hash_block(parent,
  // tokens)), with a reference taken, or -1.
  int32_t lookup(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens);
  // Registers a full, referenced block under hash = hash_block(parent, tokens). A block with the same
  // content already registered wins (this one stays unregistered and is freed normally).
  void register_full(int32_t block, uint64_t hash, uint64_t parent, std::span<const int32_t> tokens);
  static uint64_t hash_block(uint64_t parent, std::span<const int32_t> tokens);
  static constexpr uint64_t kRootHash = 0x6d32'6b76'726f'6f74ull;  // the parent of a sequence's first block

  int32_t ref_count(int32_t block) const { return ref_[size_t(block)]; }
  // Clears every cached block nobody references (tests, and a server's cache reset).
  void drop_cache();

 private:
  bool valid(int32_t b) const { return b >= 0 && b < num_blocks_; }
  void unlink(int32_t b);          // out of the evictable list
  void push_evictable(int32_t b);  // to the most-recent end
  void unregister(int32_t b);
  int32_t find(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const;

  int64_t num_blocks_;
  int block_size_;
  bool prefix_caching_;
  std::vector<int32_t> ref_;
  std::vector<int32_t> free_;            // never-registered free blocks (a stack)
  std::vector<int32_t> prev_, next_;     // evictable list: registered, unreferenced, LRU at head_
  int32_t head_ = -1, tail_ = -1;
  int64_t evictable_ = 0, cached_ = 0;
  // Registered content: hash, parent hash and tokens per block; an open-addressing index hash → block.
  std::vector<uint8_t> registered_;
  std::vector<uint64_t> hash_, parent_;
  std::vector<int32_t> tokens_;          // [num_blocks, block_size]
  std::vector<int32_t> index_;           // slots of block ids (-1 empty), linear probing
  uint64_t index_mask_ = 0;
};

}  // namespace m2
