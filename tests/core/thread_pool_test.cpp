#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/thread_pool.h"

namespace m2 {
namespace {

TEST(ThreadPool, EveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 7, 64, 1001}) {
      for (int64_t grain : {1, 4, 16}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool.parallel_for(n, [&](int64_t b, int64_t e, int t) {
          EXPECT_LT(t, pool.size());
          for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
        }, grain);
        for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[size_t(i)].load(), 1) << n << " " << grain << " " << i;
      }
    }
  }
}

// Dynamic slices: every index once, slices aligned to the grain, and a slow thread takes fewer of
// them (thread 0 sleeps in each of its slices; with 16 slices the other thread runs most).
TEST(ThreadPool, DynamicSlicesCoverEveryIndexOnceAndFollowTheFasterThread) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 7, 64, 1001})
      for (int64_t grain : {1, 4, 16})
        for (int chunks : {1, 4, 8}) {
          std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
          pool.parallel_for_dynamic(n, [&](int64_t b, int64_t e, int t) {
            EXPECT_LT(t, pool.size());
            EXPECT_EQ(b % grain, 0);
            EXPECT_TRUE(e % grain == 0 || e == n);
            for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
          }, grain, chunks);
          for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[size_t(i)].load(), 1) << n << " " << grain << " " << chunks << " " << i;
        }
  }
  ThreadPool pool(2);
  std::atomic<int> by_thread[2] = {0, 0};
  pool.parallel_for_dynamic(16, [&](int64_t, int64_t, int t) {
    if (t == 0) std::this_thread::sleep_for(std::chrono::milliseconds(30));
    by_thread[t]++;
  }, 1, 8);
  EXPECT_EQ(by_thread[0].load() + by_thread[1].load(), 16);
  EXPECT_LT(by_thread[0].load(), 8) << "the sleeping thread took half of the slices: they were not handed out in turn";
}

TEST(ThreadPool, ReusableManyTimes) {
  ThreadPool pool(2);
  std::atomic<int64_t> sum{0};
  for (int rep = 0; rep < 2000; ++rep)
    pool.parallel_for(10, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) sum += i;
    });
  EXPECT_EQ(sum.load(), 2000 * 45);
}

// A throw in any slice reaches the caller exactly once, after every worker has left the job; the pool
// keeps working afterwards.
TEST(ThreadPool, ExceptionFromAnySliceReachesTheCallerOnce) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    for (int thrower = 0; thrower < threads; ++thrower) {
      std::atomic<int> active{0}, finished{0};
      int caught = 0;
      try {
        pool.parallel_for(threads, [&](int64_t b, int64_t e, int t) {
          active++;
          if (t == thrower) {
            active--;
            throw std::runtime_error("slice " + std::to_string(b));
          }
          // The others take a while, so the caller would return early if it did not wait for them.
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          finished++;
          active--;
        });
      } catch (const std::runtime_error& err) {
        ++caught;
        EXPECT_EQ(active.load(), 0) << "a worker was still inside the job when the error reached the caller";
        EXPECT_EQ(finished.load(), threads - 1);
      }
      EXPECT_EQ(caught, 1) << threads << " threads, thrower " << thrower;
    }
    // Every slice throwing: still one exception (static and dynamic slices).
    int caught = 0;
    try {
      pool.parallel_for(64, [&](int64_t, int64_t, int) { throw std::logic_error("all"); });
    } catch (const std::logic_error&) {
      ++caught;
    }
    EXPECT_EQ(caught, 1);
    caught = 0;
    try {
      pool.parallel_for_dynamic(64, [&](int64_t, int64_t, int) { throw std::logic_error("all"); }, 1, 8);
    } catch (const std::logic_error&) {
      ++caught;
    }
    EXPECT_EQ(caught, 1);
    std::atomic<int64_t> sum{0};
    pool.parallel_for(100, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) sum += i;
    });
    EXPECT_EQ(sum.load(), 4950);
  }
}

}  // namespace
}  // namespace m2
