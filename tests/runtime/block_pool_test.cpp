// The KV block pool: reference counts, prefix-cache lookups and registration, LRU eviction, and the
// hash index against a plain map under random operations.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "core/error.h"
#include "runtime/block_pool.h"
#include "test_util.h"

namespace m2 {
namespace {

std::vector<int32_t> toks(std::initializer_list<int32_t> t) { return t; }

TEST(BlockPool, AllocateIsAllOrNothingAndReleaseReturnsBlocks) {
  BlockPool pool(4, 2, false);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(pool.allocate(3, a));
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_FALSE(pool.allocate(2, b));  // only one left: nothing taken
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(pool.num_free(), 1);
  pool.release(a);
  EXPECT_EQ(pool.num_free(), 4);
  EXPECT_EQ(pool.num_used(), 0);
  EXPECT_THROW(pool.release(a), Error);  // a double release is an internal error, not corruption
  EXPECT_THROW(BlockPool(0, 16, true), InvalidArgument);
  EXPECT_THROW(BlockPool(4, 0, true), InvalidArgument);
}

TEST(BlockPool, PrefixBlocksAreSharedCountedAndEvictedLeastRecentlyReleasedFirst) {
  BlockPool pool(3, 2, true);
  const uint64_t root = BlockPool::kRootHash;
  std::vector<int32_t> seq;
  ASSERT_TRUE(pool.allocate(2, seq));
  const auto t0 = toks({5, 6}), t1 = toks({7, 8});
  const uint64_t h0 = BlockPool::hash_block(root, t0), h1 = BlockPool::hash_block(h0, t1);
  pool.register_full(seq[0], h0, root, t0);
  pool.register_full(seq[1], h1, h0, t1);
  EXPECT_EQ(pool.num_cached(), 2);
  // Another sequence finds both; the second block is only found after the first (its parent).
  EXPECT_EQ(pool.lookup(h0, root, t0), seq[0]);
  EXPECT_EQ(pool.ref_count(seq[0]), 2);
  EXPECT_EQ(pool.lookup(h1, h0, t1), seq[1]);
  EXPECT_EQ(pool.lookup(BlockPool::hash_block(root, t1), root, t1), -1);  // same tokens, other parent
  const auto other = toks({5, 7});
  EXPECT_EQ(pool.lookup(BlockPool::hash_block(root, other), root, other), -1);
  // Same hash, different tokens (a forced collision) is not a hit.
  EXPECT_EQ(pool.lookup(h0, root, other), -1);
  pool.release(seq);
  pool.release(seq);
  EXPECT_EQ(pool.num_used(), 0);
  EXPECT_EQ(pool.num_free(), 3);   // cached blocks nobody references count as free
  EXPECT_EQ(pool.num_cached(), 2);
  // Allocation takes the never-cached block first, then evicts the least recently released.
  std::vector<int32_t> fresh;
  ASSERT_TRUE(pool.allocate(1, fresh));
  EXPECT_EQ(fresh[0], 2);
  ASSERT_TRUE(pool.allocate(1, fresh));
  EXPECT_EQ(fresh[1], seq[0]);  // released first (the release order above: seq[0], seq[1], twice)
  EXPECT_EQ(pool.num_cached(), 1);
  EXPECT_EQ(pool.lookup(h0, root, t0), -1);
  EXPECT_EQ(pool.lookup(h1, h0, t1), seq[1]);  // still cached, and taken again
  EXPECT_EQ(pool.num_used(), 3);
  // A duplicate registration keeps the first block.
  pool.register_full(fresh[1], h1, h0, t1);
  EXPECT_EQ(pool.num_cached(), 1);
  pool.release(fresh);
  pool.release(std::vector<int32_t>{seq[1]});
  pool.drop_cache();
  EXPECT_EQ(pool.num_cached(), 0);
  EXPECT_EQ(pool.num_free(), 3);
}

// Random registrations, lookups, releases and evictions against a model of what must be cached.
TEST(BlockPool, RandomOperationsAgreeWithAPlainMap) {
  std::mt19937_64 rng(test::fresh_seed());
  const int bs = 3;
  BlockPool pool(64, bs, true);
  std::map<std::pair<uint64_t, std::vector<int32_t>>, int32_t> cached;  // (parent, tokens) → block
  std::vector<int32_t> held;
  for (int op = 0; op < 20000; ++op) {
    const int kind = int(rng() % 3);
    if (kind == 0 && pool.num_free() > 0) {  // allocate and register
      std::vector<int32_t> b;
      ASSERT_TRUE(pool.allocate(1, b));
      for (auto it = cached.begin(); it != cached.end();)  // an evicted block leaves the cache
        it = it->second == b[0] ? cached.erase(it) : std::next(it);
      const uint64_t parent = rng() % 8;
      std::vector<int32_t> t(bs);
      for (auto& x : t) x = int32_t(rng() % 3);
      const auto key = std::make_pair(parent, t);
      pool.register_full(b[0], BlockPool::hash_block(parent, t), parent, t);
      if (!cached.count(key)) cached[key] = b[0];
      held.push_back(b[0]);
    } else if (kind == 1 && !held.empty()) {  // release one
      const size_t i = size_t(rng() % held.size());
      pool.release(std::vector<int32_t>{held[i]});
      held.erase(held.begin() + long(i));
    } else {  // look up
      const uint64_t parent = rng() % 8;
      std::vector<int32_t> t(bs);
      for (auto& x : t) x = int32_t(rng() % 3);
      const int32_t got = pool.lookup(BlockPool::hash_block(parent, t), parent, t);
      auto it = cached.find({parent, t});
      ASSERT_EQ(got, it == cached.end() ? -1 : it->second) << "op " << op;
      if (got >= 0) held.push_back(got);
    }
    ASSERT_EQ(pool.num_cached(), int64_t(cached.size()));
    ASSERT_EQ(pool.num_used(), int64_t(std::set<int32_t>(held.begin(), held.end()).size()));
  }
}

}  // namespace
}  // namespace m2
