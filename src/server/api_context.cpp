#include "server/api_context.h"

#include <fmt/format.h>

#include <fstream>
#include <random>

namespace m2 {

ScriptedOutputs::ScriptedOutputs(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail<IoError>("--scripted-output {}: cannot read", path);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      fail<FormatError>("--scripted-output {} line {}: malformed JSON: {}", path, n, e.what());
    }
    if (!j.is_string()) fail<FormatError>("--scripted-output {} line {}: expected a JSON string, found {}", path, n, j.type_name());
    lines_.push_back(j.get<std::string>());
  }
}

std::string ScriptedOutputs::next() {
  std::lock_guard lock(mutex_);
  if (lines_.empty()) throw ApiError(500, "--scripted-output: the script has no output left for this request");
  std::string s = std::move(lines_.front());
  lines_.pop_front();
  return s;
}

size_t ScriptedOutputs::remaining() const {
  std::lock_guard lock(mutex_);
  return lines_.size();
}

void ApiContext::check_model(const json& body) const {
  auto name = string_field(body, "model");
  if (!name) return;
  for (const auto& m : model_names)
    if (*name == m) return;
  throw ApiError(404, fmt::format("The model '{}' does not exist: this server serves '{}'", *name, model_names[0]), "model");
}

std::string ApiContext::new_id(const char* prefix) const {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}{:08x}", prefix, rng(), uint32_t(rng()));
}

std::string ApiContext::token_text(int32_t id) const { return tokenizer.decode({id}, false); }

ReasoningMode ApiContext::reasoning_mode(const std::string& prompt) const {
  if (reasoning_parser == "none") return ReasoningMode::None;
  if (reasoning_parser == "minimax_m2_append_think") return ReasoningMode::AppendThink;
  if (reasoning_parser == "minimax_m2") return ReasoningMode::PromptOpened;
  return ChatOutputParser::mode_for_prompt(prompt);
}

std::optional<std::vector<int32_t>> ApiContext::scripted_tokens() const {
  if (!scripted) return std::nullopt;
  return tokenizer.encode(scripted->next(), false);
}

json parse_body(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", e.what()));
  }
  if (!j.is_object()) throw ApiError(400, fmt::format("the request body must be a JSON object, found {}", j.type_name()));
  return j;
}

SamplingParams parse_sampling(const json& b, const ApiContext& ctx, int64_t prompt_tokens) {
  SamplingParams p = ctx.defaults;
  if (auto v = number_field(b, "temperature")) p.temperature = float(*v);
  if (auto v = number_field(b, "top_p")) p.top_p = float(*v);
  if (auto v = int_in(b, "top_k", -1, INT32_MAX)) p.top_k = *v < 0 ? 0 : *v;
  if (auto v = number_field(b, "min_p")) p.min_p = float(*v);
  if (auto v = number_field(b, "presence_penalty")) p.presence_penalty = float(*v);
  if (auto v = number_field(b, "frequency_penalty")) p.frequency_penalty = float(*v);
  if (auto v = number_field(b, "repetition_penalty")) p.repetition_penalty = float(*v);
  if (const json* v = field_ptr(b, "seed")) {
    if (!v->is_number_integer()) wrong_type("seed", "an integer", *v);
    p.seed = v->is_number_unsigned() ? v->get<uint64_t>() : uint64_t(v->get<int64_t>());
  }
  if (const json* v = field_ptr(b, "stop")) {
    if (v->is_string()) {
      p.stop = {v->get<std::string>()};
    } else if (v->is_array()) {
      for (const auto& s : *v) {
        if (!s.is_string()) wrong_type("stop", "a string or a list of strings", s);
        p.stop.push_back(s.get<std::string>());
      }
    } else {
      wrong_type("stop", "a string or a list of strings", *v);
    }
  }
  if (const json* v = field_ptr(b, "stop_token_ids")) {
    if (!v->is_array()) wrong_type("stop_token_ids", "a list of integers", *v);
    for (const auto& t : *v) {
      if (!t.is_number_integer()) wrong_type("stop_token_ids", "a list of integers", t);
      p.stop_token_ids.push_back(int32_t(std::clamp<int64_t>(t.get<int64_t>(), -1, INT32_MAX)));
    }
  }
  const int64_t room = std::max<int64_t>(0, ctx.limits.max_model_len - prompt_tokens);
  auto max_tokens = int_in(b, "max_tokens", 0, INT32_MAX);
  if (auto v = int_in(b, "max_completion_tokens", 0, INT32_MAX)) max_tokens = v;
  if (max_tokens && *max_tokens == 0) throw ApiError(400, "'max_tokens' must be at least 1", "max_tokens");
  p.max_tokens = max_tokens ? *max_tokens : int32_t(std::min<int64_t>(room, INT32_MAX));
  if (prompt_tokens >= ctx.limits.max_model_len)
    throw ApiError(400, fmt::format("This model's maximum context length is {} tokens. However, your request has {} input "
                                    "tokens. Please reduce the length of the input.",
                                    ctx.limits.max_model_len, prompt_tokens));
  if (auto v = int_in(b, "min_tokens", 0, INT32_MAX)) p.min_tokens = *v;
  if (auto v = bool_field(b, "ignore_eos")) p.ignore_eos = *v;
  if (auto v = bool_field(b, "skip_special_tokens")) p.skip_special_tokens = *v;
  if (auto v = bool_field(b, "include_stop_str_in_output")) p.include_stop_str_in_output = *v;
  return p;
}

std::string sse(const std::string& data, const std::string& event) {
  if (event.empty()) return "data: " + data + "\n\n";
  return "event: " + event + "\ndata: " + data + "\n\n";
}

bool drive(Generation& gen, httplib::DataSink* sink, std::chrono::steady_clock::time_point deadline,
           const std::function<bool(const ChoiceEvent&)>& on_event, const std::string& keepalive, bool* timed_out) {
  using namespace std::chrono;
  *timed_out = false;
  ChoiceEvent e;
  while (!gen.all_finished()) {
    const auto wake = std::min(deadline, steady_clock::now() + seconds(5));
    if (!gen.next(e, wake)) {
      if (steady_clock::now() >= deadline) {
        *timed_out = true;
        gen.abort();
        return false;
      }
      if (sink && !keepalive.empty() && !write(*sink, keepalive)) {
        gen.abort();
        return false;
      }
      continue;
    }
    if (!on_event(e)) {
      gen.abort();
      return false;
    }
  }
  return true;
}

std::shared_ptr<Generation> start_generation(ApiContext& ctx, std::vector<Request> requests, const std::string& tag) {
  try {
    return std::make_shared<Generation>(ctx.engine, ctx.metrics, std::move(requests), tag, ctx.log_requests);
  } catch (const ApiError&) {
    throw;
  } catch (const InvalidArgument& e) {
    throw ApiError(400, e.what());
  }
}

}  // namespace m2
