// PCRE2 (UTF + Unicode properties, JIT) for the split patterns of tokenizer.json and the parsers.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace m2 {

class Regex {
 public:
  // Throws FormatError naming `where` when the pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

  // Calls f(begin, end) for each non-empty-or-empty match, left to right, non-overlapping.
  template <typename F>
  void for_each_match(std::string_view text, F&& f) const {
    size_t pos = 0;
    std::pair<size_t, size_t> m;
    while (pos <= text.size() && next(text, pos, &m)) {
      f(m.first, m.second);
      pos = m.second > m.first ? m.second : m.second + 1;
    }
  }
  // First match at or after `start`; false when none.
  bool next(std::string_view text, size_t start, std::pair<size_t, size_t>* match) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace m2
