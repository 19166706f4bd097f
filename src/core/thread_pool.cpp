#include "core/thread_pool.h"

#include <algorithm>
#include <chrono>

namespace m2 {

namespace {
// Slice `index` of `parts` over [0, n), aligned to grain.
std::pair<int64_t, int64_t> slice(int64_t n, int64_t grain, int parts, int index) {
  int64_t blocks = (n + grain - 1) / grain;
  int64_t b0 = blocks * index / parts, b1 = blocks * (index + 1) / parts;
  return {std::min(n, b0 * grain), std::min(n, b1 * grain)};
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

constexpr auto kSpin = std::chrono::microseconds(200);  // how long an idle worker spins before sleeping
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  {
    std::lock_guard lock(mutex_);
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run(int64_t n, int64_t grain, int chunks_per_thread, void* ctx, Trampoline call) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (workers_.empty() || n <= grain) {
    call(ctx, 0, n, 0);
    return;
  }
  error_ = nullptr;
  job_ctx_ = ctx;
  job_call_ = call;
  job_n_ = n;
  job_grain_ = grain;
  job_slices_ = size() * std::max(1, chunks_per_thread);
  next_slice_.store(0, std::memory_order_relaxed);
  pending_.store(int(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  {
    std::lock_guard lock(mutex_);  // a worker between its check and its wait sees the new generation
  }
  start_cv_.notify_all();
  run_slices(0);
  for (int i = 0; pending_.load(std::memory_order_acquire) != 0; ++i) {
    cpu_relax();
    if ((i & 255) == 255) std::this_thread::yield();  // an oversubscribed machine: let the worker run
  }
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

void ThreadPool::run_slices(int thread) {
  if (job_slices_ == size()) {  // static: slice `thread`
    auto [b, e] = slice(job_n_, job_grain_, job_slices_, thread);
    if (b < e) run_slice(job_ctx_, job_call_, b, e, thread);
    return;
  }
  // Dynamic: any slice not yet taken (a thread that wakes late may find none).
  for (int s = next_slice_.fetch_add(1, std::memory_order_relaxed); s < job_slices_;
       s = next_slice_.fetch_add(1, std::memory_order_relaxed)) {
    auto [b, e] = slice(job_n_, job_grain_, job_slices_, s);
    if (b < e) run_slice(job_ctx_, job_call_, b, e, thread);
  }
}

void ThreadPool::run_slice(void* ctx, Trampoline call, int64_t b, int64_t e, int thread) {
  try {
    call(ctx, b, e, thread);
  } catch (...) {
    std::lock_guard lock(error_mutex_);
    if (!error_) error_ = std::current_exception();
  }
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    auto changed = [&] { return generation_.load(std::memory_order_acquire) != seen || stop_.load(); };
    if (!changed()) {
      const auto until = std::chrono::steady_clock::now() + kSpin;
      for (int i = 0; !changed(); ++i) {
        cpu_relax();
        if ((i & 255) == 255) {
          if (std::chrono::steady_clock::now() > until) break;
          std::this_thread::yield();
        }
      }
    }
    if (!changed()) {
      std::unique_lock lock(mutex_);
      start_cv_.wait(lock, changed);
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    run_slices(index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace m2
