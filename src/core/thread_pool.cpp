#include "core/thread_pool.h"

#include <algorithm>

namespace m2 {

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

namespace {
// Slice `index` of `parts` over [0, n), aligned to grain.
std::pair<int64_t, int64_t> slice(int64_t n, int64_t grain, int parts, int index) {
  int64_t blocks = (n + grain - 1) / grain;
  int64_t b0 = blocks * index / parts, b1 = blocks * (index + 1) / parts;
  return {std::min(n, b0 * grain), std::min(n, b1 * grain)};
}
}  // namespace

void ThreadPool::run(int64_t n, int64_t grain, void* ctx, Trampoline call) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (workers_.empty() || n <= grain) {
    call(ctx, 0, n, 0);
    return;
  }
  {
    std::lock_guard lock(mutex_);
    job_ctx_ = ctx;
    job_call_ = call;
    job_n_ = n;
    job_grain_ = grain;
    pending_ = int(workers_.size());
    ++generation_;
  }
  start_cv_.notify_all();
  auto [b, e] = slice(n, grain, size(), 0);
  if (b < e) call(ctx, b, e, 0);
  std::unique_lock lock(mutex_);
  done_cv_.wait(lock, [this] { return pending_ == 0; });
  job_ctx_ = nullptr;
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    void* ctx;
    Trampoline call;
    int64_t n, grain;
    {
      std::unique_lock lock(mutex_);
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      ctx = job_ctx_;
      call = job_call_;
      n = job_n_;
      grain = job_grain_;
    }
    auto [b, e] = slice(n, grain, size(), index);
    if (b < e) call(ctx, b, e, index);
    {
      std::lock_guard lock(mutex_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }
}

}  // namespace m2
