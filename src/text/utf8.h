// Small UTF-8 helpers.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace m2 {

// Byte offset of the first invalid sequence, or npos when `s` is valid UTF-8.
size_t utf8_invalid_at(std::string_view s);
// Length in bytes of the sequence starting with lead byte c (1 for invalid lead bytes).
inline int utf8_len(unsigned char c) { return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1; }
void append_utf8(std::string& out, uint32_t cp);
// Replaces every invalid sequence by U+FFFD (as Rust's from_utf8_lossy).
std::string utf8_lossy(std::string_view s);
// Bytes at the end of `s` that start an incomplete (but so far valid) sequence.
size_t utf8_incomplete_tail(std::string_view s);

}  // namespace m2
