// Runs an Engine on a thread of its own: the one thread that owns the engine and the model. Other
// threads (HTTP handlers) submit requests and aborts through a queue and receive each request's
// outputs through its sink, called on the engine thread between steps.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "runtime/engine.h"

namespace m2 {

class AsyncEngine {
 public:
  // Gets every output of its request, in order, the last one with finished set; or, once, a null
  // output and the reason when the engine refused the request after queueing it. Runs on the engine
  // thread: it must be quick (copy and hand off) and must not call back into the AsyncEngine.
  using Sink = std::function<void(const StepOutput* output, const std::string& error)>;

  explicit AsyncEngine(std::unique_ptr<Engine> engine);
  ~AsyncEngine();  // stops the thread; requests still in flight are aborted and reported
  AsyncEngine(const AsyncEngine&) = delete;
  AsyncEngine& operator=(const AsyncEngine&) = delete;

  // Validates at once (InvalidArgument, on the caller's thread) and queues; returns the id.
  uint64_t submit(Request r, Sink sink);
  // Cancels a request: its KV blocks are freed before the next step; its sink gets a finished output.
  void abort(uint64_t id);
  // Cancels every request queued or running.
  void abort_all() { abort(kAll); }
  // A snapshot of the engine's counters, refreshed after every step.
  EngineStats stats() const;
  // Configuration of the engine (immutable while it runs).
  const Engine& engine() const { return *engine_; }
  // Waits until no request is queued or running, at most `grace`; true when idle.
  bool wait_idle(std::chrono::milliseconds grace) const;

 private:
  struct Command {
    Request request;  // id != 0: an add
    Sink sink;
    uint64_t abort_id = 0;
  };
  static constexpr uint64_t kAll = ~uint64_t(0);
  void loop();
  void deliver(const std::vector<StepOutput>& outs);

  std::unique_ptr<Engine> engine_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Command> queue_;
  bool stop_ = false;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<int64_t> in_flight_{0};  // submitted and not yet reported finished
  std::unordered_map<uint64_t, Sink> sinks_;  // engine thread only
  EngineStats stats_;                         // guarded by mutex_
  std::thread thread_;
};

}  // namespace m2
