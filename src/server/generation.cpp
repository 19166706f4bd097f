#include "server/generation.h"

#include <fmt/format.h>

namespace m2 {

namespace {
using Clock = std::chrono::steady_clock;
double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

Generation::Generation(AsyncEngine& engine, Metrics& metrics, std::vector<Request> requests, std::string log_tag,
                       bool log)
    : engine_(engine), shared_(std::make_shared<Shared>()) {
  for (const Request& r : requests) engine.engine().validate(r);
  for (size_t i = 0; i < requests.size(); ++i) {
    auto shared = shared_;
    const int choice = int(i);
    // Per engine request, on the engine thread: copy the output out, and account for it.
    struct Timing {
      Clock::time_point start = Clock::now(), last;
      bool first = true;
    };
    auto timing = std::make_shared<Timing>();
    metrics.request_started();
    auto sink = [shared, choice, timing, &metrics, log, tag = log_tag](const StepOutput* o, const std::string& error) {
      ChoiceEvent e;
      e.choice = choice;
      if (!o) {
        e.finished = true;
        e.finish = FinishReason::Error;
        e.error = error;
      } else {
        const Sequence& s = *o->seq;
        const auto toks = o->new_tokens();
        e.tokens.assign(toks.begin(), toks.end());
        e.text = o->text;
        if (s.params.logprobs >= 0)
          for (int64_t k = o->first_new; k < o->first_new + o->num_new; ++k) e.logprobs.push_back(s.logprobs[size_t(k)]);
        e.finished = o->finished;
        e.finish = s.finish;
        e.stop_reason = s.stop_reason;
        e.prompt_tokens = s.prompt_len;
        e.cached_tokens = s.cached_tokens;
        e.generated = s.num_generated();
        e.spec_drafted = s.spec_drafted;
        e.spec_accepted = s.spec_accepted;
        if (o->finished) e.margins = s.margins;
        const auto now = Clock::now();
        if (!e.tokens.empty()) {
          if (timing->first) {
            metrics.first_token(seconds(now - timing->start));
            timing->first = false;
          } else {
            metrics.tokens(int64_t(e.tokens.size()), seconds(now - timing->last));
          }
          timing->last = now;
        }
        if (o->finished) {
          const double e2e = seconds(now - timing->start);
          metrics.request_finished(s.finish, e2e, s.prompt_len, s.num_generated());
          if (log) {
            const double ttft = s.num_generated() ? seconds(s.first_token_time - s.arrival_time) : 0.0;
            const double decode = s.num_generated() > 1 ? seconds(s.finish_time - s.first_token_time) : 0.0;
            fmt::print(stderr, "request {} #{}: prompt {} tokens ({} cached), generated {}, ttft {:.1f} ms, {:.1f} tok/s, finish {}{}\n",
                       tag, s.id, s.prompt_len, s.cached_tokens, s.num_generated(), ttft * 1e3,
                       decode > 0 ? double(s.num_generated() - 1) / decode : 0.0, finish_reason_name(s.finish),
                       s.spec_drafted ? fmt::format(", {} of {} drafts accepted", s.spec_accepted, s.spec_drafted) : "");
          }
        }
      }
      {
        std::lock_guard lock(shared->mutex);
        if (e.finished) ++shared->finished;
        shared->events.push_back(std::move(e));
      }
      shared->cv.notify_all();
    };
    try {
      ids_.push_back(engine.submit(std::move(requests[i]), std::move(sink)));
    } catch (...) {
      abort();
      throw;
    }
  }
}

Generation::~Generation() { abort(); }

void Generation::abort() {
  std::lock_guard lock(shared_->mutex);
  if (shared_->finished == int(ids_.size())) return;
  for (uint64_t id : ids_) engine_.abort(id);  // finished ones are ignored by the engine
}

bool Generation::next(ChoiceEvent& e, Clock::time_point deadline) {
  std::unique_lock lock(shared_->mutex);
  if (!shared_->cv.wait_until(lock, deadline, [&] { return !shared_->events.empty(); })) return false;
  e = std::move(shared_->events.front());
  shared_->events.pop_front();
  if (e.finished) ++delivered_finished_;
  return true;
}

bool Generation::all_finished() const { return delivered_finished_ == int(ids_.size()); }

}  // namespace m2
