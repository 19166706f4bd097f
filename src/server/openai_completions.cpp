// POST /v1/completions: one or several prompts (text or token ids) → the engine → text completions,
// streamed or whole; n choices per prompt (index = prompt × n + choice).
#include <fmt/format.h>

#include "server/openai_api.h"

namespace m2 {

namespace {

using Clock = std::chrono::steady_clock;

std::vector<int32_t> id_list(const json& v, const std::string& where, int64_t vocab) {
  std::vector<int32_t> ids;
  for (const auto& t : v) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= vocab)
      throw ApiError(400, fmt::format("'{}' must hold token ids in [0, {}), found {}", where, vocab, t.dump()), "prompt");
    ids.push_back(t.get<int32_t>());
  }
  return ids;
}

// The prompts of a request, as ids, with the text each stands for (for echo).
std::vector<std::pair<std::vector<int32_t>, std::string>> prompts_of(const json& b, const ApiContext& ctx) {
  const json* p = field_ptr(b, "prompt");
  if (!p) throw ApiError(400, "'prompt' is required", "prompt");
  const int64_t V = ctx.engine.engine().config().vocab_size;
  std::vector<std::pair<std::vector<int32_t>, std::string>> out;
  auto from_text = [&](const std::string& s) {
    try {
      out.push_back({ctx.tokenizer.encode(s, true), s});
    } catch (const Error& e) {
      throw ApiError(400, e.what(), "prompt");
    }
  };
  if (p->is_string()) {
    from_text(p->get<std::string>());
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number_integer()) {
    auto ids = id_list(*p, "prompt", V);
    out.push_back({ids, ctx.tokenizer.decode(ids, false)});
  } else if (p->is_array() && !p->empty()) {
    for (size_t i = 0; i < p->size(); ++i) {
      const json& e = (*p)[i];
      if (e.is_string()) from_text(e.get<std::string>());
      else if (e.is_array()) {
        auto ids = id_list(e, fmt::format("prompt[{}]", i), V);
        out.push_back({ids, ctx.tokenizer.decode(ids, false)});
      } else {
        wrong_type(fmt::format("prompt[{}]", i), "a string or a list of token ids", e);
      }
    }
  } else {
    wrong_type("prompt", "a string, a list of strings, or token ids", *p);
  }
  for (const auto& [ids, text] : out)
    if (ids.empty()) throw ApiError(400, "a prompt is empty", "prompt");
  return out;
}

struct Choice {
  std::string text;
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), offsets = json::array();
  FinishReason finish = FinishReason::None;
  std::string stop_reason, error;
  int64_t generated = 0, prompt = 0, cached = 0;
  std::vector<float> margins;
};

}  // namespace

void handle_completions(ApiContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const json b = parse_body(req.body);
  ctx.check_model(b);
  if (string_field(b, "suffix")) throw ApiError(400, "'suffix' is not supported", "suffix");
  const auto prompts = prompts_of(b, ctx);
  const int n = int_in(b, "n", 1, ctx.limits.max_n).value_or(1);
  if (auto best_of = int_in(b, "best_of", 1, ctx.limits.max_n); best_of && *best_of != n)
    throw ApiError(400, "'best_of' different from 'n' is not supported", "best_of");
  const bool stream = bool_field(b, "stream").value_or(false);
  const bool echo = bool_field(b, "echo").value_or(false);
  bool include_usage = false;
  if (const json* so = field_ptr(b, "stream_options")) {
    if (!so->is_object()) wrong_type("stream_options", "an object", *so);
    include_usage = bool_field(*so, "include_usage").value_or(false);
  }
  const int logprobs = int_in(b, "logprobs", 0, 20).value_or(-1);
  if (echo && logprobs >= 0) throw ApiError(400, "'echo' together with 'logprobs' is not supported", "echo");
  auto scripted = ctx.scripted_tokens();
  std::vector<Request> requests;
  for (const auto& [ids, text] : prompts) {
    SamplingParams params = parse_sampling(b, ctx, int64_t(ids.size()));
    params.logprobs = logprobs;
    for (int i = 0; i < n; ++i) {
      Request r;
      r.prompt = ids;
      r.params = params;
      if (params.seed) r.params.seed = *params.seed + uint64_t(i);
      if (scripted) r.forced_output = *scripted;
      requests.push_back(std::move(r));
    }
  }
  const int total = int(requests.size());
  const std::string id = ctx.new_id("cmpl-");
  const std::string model = ctx.model_names[0];
  const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  auto gen = start_generation(ctx, std::move(requests), id);
  auto choices = std::make_shared<std::vector<Choice>>(size_t(total));
  for (int i = 0; i < total; ++i) {
    (*choices)[size_t(i)].prompt = int64_t(prompts[size_t(i / n)].first.size());
    if (echo) (*choices)[size_t(i)].text = prompts[size_t(i / n)].second;
  }
  const auto deadline = Clock::now() + ctx.limits.request_timeout;
  // One event → its text and logprobs appended to the choice; returns the logprobs of this event.
  auto absorb = [&ctx, choices](const ChoiceEvent& e) {
    Choice& c = (*choices)[size_t(e.choice)];
    json lp = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
               {"text_offset", json::array()}};
    for (size_t k = 0; k < e.logprobs.size(); ++k) {
      const std::string t = ctx.token_text(e.tokens[k]);
      json top = json::object();
      for (const auto& alt : e.logprobs[k].top) top[ctx.token_text(alt.token)] = alt.logprob;
      const size_t offset = c.text.size();  // text offsets of the whole choice; c.text grows below
      lp["tokens"].push_back(t);
      lp["token_logprobs"].push_back(e.logprobs[k].logprob);
      lp["top_logprobs"].push_back(top);
      lp["text_offset"].push_back(offset);
      c.tokens.push_back(t);
      c.token_logprobs.push_back(e.logprobs[k].logprob);
      c.top_logprobs.push_back(top);
      c.offsets.push_back(offset);
    }
    c.text += e.text;
    c.generated = std::max(c.generated, e.generated);
    if (e.cached_tokens) c.cached = e.cached_tokens;
    if (e.finished) {
      c.finish = e.finish;
      c.stop_reason = e.stop_reason;
      c.error = e.error;
      c.margins = e.margins;
    }
    return lp;
  };
  auto usage = [choices, n]() {
    int64_t prompt = 0, completion = 0, cached = 0;
    for (size_t i = 0; i < choices->size(); ++i) {
      if (i % size_t(n) == 0) prompt += (*choices)[i].prompt;
      completion += (*choices)[i].generated;
      cached += i % size_t(n) == 0 ? (*choices)[i].cached : 0;
    }
    return usage_json(prompt, completion, cached);
  };

  if (!stream) {
    bool timed_out = false;
    drive(*gen, nullptr, deadline, [&](const ChoiceEvent& e) { absorb(e); return true; }, "", &timed_out);
    if (timed_out) throw ApiError(504, fmt::format("the request did not finish within {} s", ctx.limits.request_timeout.count() / 1000));
    json out_choices = json::array();
    for (int i = 0; i < total; ++i) {
      const Choice& c = (*choices)[size_t(i)];
      if (!c.error.empty()) throw ApiError(500, "generation failed: " + c.error);
      json lp = logprobs >= 0 ? json{{"tokens", c.tokens}, {"token_logprobs", c.token_logprobs},
                                     {"top_logprobs", c.top_logprobs}, {"text_offset", c.offsets}}
                              : json();
      out_choices.push_back({{"index", i}, {"text", c.text}, {"logprobs", lp},
                             {"finish_reason", std::string(finish_reason_name(c.finish))},
                             {"stop_reason", c.stop_reason.empty() ? json() : json(c.stop_reason)}});
      if (!c.margins.empty()) out_choices.back()["m2_decision_margins"] = c.margins;
    }
    json out = {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                {"choices", out_choices}, {"usage", usage()}};
    res.set_content(out.dump(), "application/json");
    return;
  }
  auto chunk = [id, created, model](json choice) {
    return sse(json{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                    {"choices", json::array({std::move(choice)})}}.dump());
  };
  res.set_chunked_content_provider(
      "text/event-stream",
      [gen, choices, chunk, absorb, usage, echo, include_usage, logprobs, deadline, total, id, created, model,
       timeout = ctx.limits.request_timeout](size_t, httplib::DataSink& sink) {
        if (echo)
          for (int i = 0; i < total; ++i)
            if (!write(sink, chunk({{"index", i}, {"text", (*choices)[size_t(i)].text}, {"logprobs", nullptr},
                                    {"finish_reason", nullptr}})))
              return false;
        bool timed_out = false;
        const bool ok = drive(
            *gen, &sink, deadline,
            [&](const ChoiceEvent& e) {
              json lp = absorb(e);
              const Choice& c = (*choices)[size_t(e.choice)];
              if (!c.error.empty()) return write(sink, sse(openai_error_body(500, "generation failed: " + c.error)));
              if (!e.text.empty() || e.finished || !e.logprobs.empty()) {
                json choice = {{"index", e.choice}, {"text", e.text}};
                choice["logprobs"] = logprobs >= 0 ? lp : json();
                choice["finish_reason"] = e.finished ? json(std::string(finish_reason_name(c.finish))) : json();
                choice["stop_reason"] = c.stop_reason.empty() ? json() : json(c.stop_reason);
                if (e.finished && !c.margins.empty()) choice["m2_decision_margins"] = c.margins;
                return write(sink, chunk(choice));
              }
              return true;
            },
            ": ping\n\n", &timed_out);
        if (!ok && !timed_out) return false;
        if (timed_out)
          write(sink, sse(openai_error_body(504, fmt::format("the request did not finish within {} s", timeout.count() / 1000))));
        if (include_usage) write(sink, usage_chunk("text_completion", id, created, model, usage()));
        write(sink, "data: [DONE]\n\n");
        sink.done();
        return true;
      },
      [gen](bool success) {
        if (!success) gen->abort();
      });
}

}  // namespace m2
