// Splits model output into reasoning_content and content at <think>…</think>, streaming or not.
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace m2 {

enum class ReasoningMode {
  PromptOpened,  // the prompt ended with "<think>\n" (MiniMax-M2): output starts inside the block
  ModelOpens,    // the model emits "<think>" itself (M2.5+); output not starting with it is content
  AppendThink,   // no split: content = "<think>" + output (vLLM minimax_m2_append_think)
  None,          // no reasoning: everything is content
};

struct ReasoningDelta {
  std::string reasoning, content;
};

// Feed text as it arrives; text is held back only while it may still be the start of a tag.
// An unterminated think block at the end stays reasoning. The (up to two) newlines right after
// "</think>" are the format's separator, not content.
class ReasoningParser {
 public:
  explicit ReasoningParser(ReasoningMode mode);
  ReasoningDelta push(std::string_view text);
  ReasoningDelta finish();

  struct Result {
    std::optional<std::string> reasoning;  // null when there was none
    std::string content;
  };
  static Result parse(std::string_view output, ReasoningMode mode);

 private:
  enum class State { Start, Reasoning, Content };
  ReasoningMode mode_;
  State state_;
  std::string held_;  // undecided bytes (a possible tag prefix)
  bool first_ = true;
  bool in_think_ever_ = false;  // the output had a think block (possibly empty)
  int skip_newlines_ = 0;       // newlines still to drop right after "</think>"
};

}  // namespace m2
