#include "text/reasoning_parser.h"

#include <algorithm>

namespace m2 {

namespace {
constexpr std::string_view kOpen = "<think>", kClose = "</think>";

// Length of the longest suffix of s that is a proper prefix of tag.
size_t partial_suffix(std::string_view s, std::string_view tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == tag.substr(0, n)) return n;
  return 0;
}
}  // namespace

ReasoningParser::ReasoningParser(ReasoningMode mode)
    : mode_(mode),
      state_(mode == ReasoningMode::PromptOpened ? State::Reasoning
             : mode == ReasoningMode::ModelOpens ? State::Start
                                                 : State::Content),
      in_think_ever_(mode == ReasoningMode::PromptOpened) {}

ReasoningDelta ReasoningParser::push(std::string_view text) {
  ReasoningDelta d;
  if (mode_ == ReasoningMode::AppendThink) {
    if (first_) d.content = std::string(kOpen);
    first_ = false;
    d.content += text;
    return d;
  }
  held_ += text;
  for (;;) {
    if (state_ == State::Start) {
      // Leading whitespace, then "<think>" opens reasoning; anything else makes it all content.
      size_t ws = held_.find_first_not_of(" \t\r\n");
      if (ws == std::string::npos) return d;
      std::string_view rest = std::string_view(held_).substr(ws);
      if (rest.size() < kOpen.size() && kOpen.substr(0, rest.size()) == rest) return d;
      if (rest.substr(0, kOpen.size()) == kOpen) {
        held_.erase(0, ws + kOpen.size());
        state_ = State::Reasoning;
        in_think_ever_ = true;
      } else {
        state_ = State::Content;
      }
      continue;
    }
    if (state_ == State::Reasoning) {
      // A stray "<think>" inside reasoning is dropped (vLLM minimax_m2 strips it).
      size_t open = held_.find(kOpen);
      size_t close = held_.find(kClose);
      if (open != std::string::npos && (close == std::string::npos || open < close)) {
        d.reasoning += held_.substr(0, open);
        held_.erase(0, open + kOpen.size());
        continue;
      }
      if (close != std::string::npos) {
        d.reasoning += held_.substr(0, close);
        held_.erase(0, close + kClose.size());
        state_ = State::Content;
        skip_newlines_ = 2;  // the "</think>\n\n" separator the MiniMax format puts before content
        continue;
      }
      size_t keep = std::max(partial_suffix(held_, kClose), partial_suffix(held_, kOpen));
      d.reasoning += held_.substr(0, held_.size() - keep);
      held_.erase(0, held_.size() - keep);
      return d;
    }
    // Content: "<think>"/"</think>" are not looked for any more.
    while (skip_newlines_ > 0 && !held_.empty()) {
      if (held_[0] != '\n') {
        skip_newlines_ = 0;
        break;
      }
      held_.erase(0, 1);
      --skip_newlines_;
    }
    d.content += held_;
    held_.clear();
    return d;
  }
}

ReasoningDelta ReasoningParser::finish() {
  ReasoningDelta d;
  if (state_ == State::Reasoning) d.reasoning = held_;
  else d.content = held_;
  held_.clear();
  if (mode_ == ReasoningMode::AppendThink && first_) d.content = std::string(kOpen);
  first_ = false;
  return d;
}

ReasoningParser::Result ReasoningParser::parse(std::string_view output, ReasoningMode mode) {
  ReasoningParser p(mode);
  ReasoningDelta a = p.push(output), b = p.finish();
  Result r;
  r.content = a.content + b.content;
  if (p.in_think_ever_) r.reasoning = a.reasoning + b.reasoning;
  return r;
}

}  // namespace m2
