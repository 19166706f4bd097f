#include "runtime/async_engine.h"

#include <fmt/format.h>

#include "core/error.h"

namespace m2 {

AsyncEngine::AsyncEngine(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {
  stats_ = engine_->stats();
  thread_ = std::thread([this] { loop(); });
}

AsyncEngine::~AsyncEngine() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

uint64_t AsyncEngine::submit(Request r, Sink sink) {
  engine_->validate(r);
  r.id = next_id_.fetch_add(1);
  const uint64_t id = r.id;
  {
    std::lock_guard lock(mutex_);
    if (stop_) fail<InvalidArgument>("the engine is shutting down");
    queue_.push_back({std::move(r), std::move(sink), 0});
    ++in_flight_;
  }
  cv_.notify_all();
  return id;
}

void AsyncEngine::abort(uint64_t id) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back({Request{}, nullptr, id});
  }
  cv_.notify_all();
}

EngineStats AsyncEngine::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void AsyncEngine::deliver(const std::vector<StepOutput>& outs) {
  for (const StepOutput& o : outs) {
    auto it = sinks_.find(o.id());
    if (it == sinks_.end()) continue;
    try {
      it->second(&o, {});
    } catch (const std::exception& e) {
      fmt::print(stderr, "engine: the output sink of request {} failed: {}\n", o.id(), e.what());
    }
    if (o.finished) {
      sinks_.erase(it);
      --in_flight_;
    }
  }
}

void AsyncEngine::loop() {
  std::vector<Command> commands;
  for (;;) {
    bool stopping;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty() || engine_->has_work(); });
      commands.swap(queue_);
      stopping = stop_;
    }
    for (Command& c : commands) {
      if (c.abort_id == kAll) {
        for (uint64_t id : engine_->active_ids()) engine_->abort(id);
        continue;
      }
      if (c.abort_id) {
        engine_->abort(c.abort_id);
        continue;
      }
      const uint64_t id = c.request.id;
      try {
        engine_->add_request(std::move(c.request));
        sinks_[id] = std::move(c.sink);
      } catch (const std::exception& e) {
        --in_flight_;
        try {
          c.sink(nullptr, e.what());
        } catch (const std::exception&) {
        }
      }
    }
    commands.clear();
    if (stopping)
      for (uint64_t id : engine_->active_ids()) engine_->abort(id);
    if (engine_->has_work()) {
      // The counters are refreshed before the outputs go out, so that a client that has its answer
      // sees the state after the step that produced it.
      const std::vector<StepOutput>* outs = nullptr;
      try {
        outs = &engine_->step();
      } catch (const std::exception& e) {
        // A failed step leaves no request half-done: every one in flight ends with an error.
        fmt::print(stderr, "engine: step failed: {}; ending {} requests\n", e.what(), engine_->active_ids().size());
        for (uint64_t id : engine_->active_ids()) engine_->abort(id, FinishReason::Error);
        outs = &engine_->step();
      }
      {
        std::lock_guard lock(mutex_);
        stats_ = engine_->stats();
      }
      deliver(*outs);
    }
    if (stopping && !engine_->has_work()) return;
  }
}

bool AsyncEngine::wait_idle(std::chrono::milliseconds grace) const {
  const auto until = std::chrono::steady_clock::now() + grace;
  for (;;) {
    if (in_flight_.load() == 0) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace m2
