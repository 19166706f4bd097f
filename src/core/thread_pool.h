// A fixed pool of worker threads for data-parallel loops. The caller thread takes part, so a pool of
// n threads runs n-way parallel work with n-1 workers. Between jobs, workers spin briefly (the decode
// loop issues thousands of small jobs per token) and then sleep on a condition variable.
// Exceptions: a throw in any slice (caller's or a worker's) is captured; parallel_for returns only
// after every worker has left the job, then rethrows the first one caught, once.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace m2 {

class ThreadPool {
 public:
  // threads == 0 means one per hardware thread.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }

  // Calls fn(begin, end, thread_index) on contiguous slices of [0, n), one slice per thread, and
  // returns when all are done. Slices are rounded to multiples of `grain`. Does not allocate (unless
  // a slice throws). Not reentrant: fn must not call parallel_for on the same pool.
  template <typename F>
  void parallel_for(int64_t n, F&& fn, int64_t grain = 1) {
    auto call = [](void* ctx, int64_t b, int64_t e, int t) { (*static_cast<std::remove_reference_t<F>*>(ctx))(b, e, t); };
    run(n, grain, 1, const_cast<void*>(static_cast<const void*>(&fn)), call);
  }

  // As parallel_for, but [0, n) is cut into size() × chunks_per_thread slices (aligned to grain)
  // that the threads take in turn from one counter: a thread that runs slower (a VM's vCPUs do)
  // takes fewer. fn's thread_index is the thread running the slice; which thread runs a slice is
  // not fixed, so fn's results must not depend on it.
  template <typename F>
  void parallel_for_dynamic(int64_t n, F&& fn, int64_t grain, int chunks_per_thread) {
    auto call = [](void* ctx, int64_t b, int64_t e, int t) { (*static_cast<std::remove_reference_t<F>*>(ctx))(b, e, t); };
    run(n, grain, chunks_per_thread, const_cast<void*>(static_cast<const void*>(&fn)), call);
  }

 private:
  using Trampoline = void (*)(void*, int64_t, int64_t, int);
  void run(int64_t n, int64_t grain, int chunks_per_thread, void* ctx, Trampoline call);
  void worker_loop(int index);
  void run_slice(void* ctx, Trampoline call, int64_t b, int64_t e, int thread);
  void run_slices(int thread);  // this thread's share of the current job

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable start_cv_;
  // The current job; written before generation_ is bumped (release), read after (acquire).
  void* job_ctx_ = nullptr;
  Trampoline job_call_ = nullptr;
  int64_t job_n_ = 0, job_grain_ = 1;
  int job_slices_ = 1;                 // slices of the current job (size() × chunks per thread)
  std::atomic<int> next_slice_{0};     // the next slice to take (dynamic jobs: more slices than threads)
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  // The first exception thrown by a slice of the current job (guarded by error_mutex_).
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace m2
