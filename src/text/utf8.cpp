#include "text/utf8.h"

namespace m2 {

namespace {
// Length of a valid sequence at s[i], 0 if invalid (or truncated).
size_t valid_len(std::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  unsigned char c = p[i];
  if (c < 0x80) return 1;
  auto cont = [&](size_t k) { return i + k < n && (p[i + k] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && p[i + 1] < 0xA0) return 0;  // overlong
    if (c == 0xED && p[i + 1] > 0x9F) return 0;  // surrogates
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && p[i + 1] < 0x90) return 0;
    if (c == 0xF4 && p[i + 1] > 0x8F) return 0;
    return 4;
  }
  return 0;
}
}  // namespace

size_t utf8_invalid_at(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t l = valid_len(s, i);
    if (!l) return i;
    i += l;
  }
  return std::string_view::npos;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) out.push_back(char(cp));
  else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    size_t l = valid_len(s, i);
    if (l) {
      out.append(s.data() + i, l);
      i += l;
      continue;
    }
    // Maximal invalid prefix as one U+FFFD (the WHATWG / Rust rule): skip the lead byte and the
    // continuation bytes that could still have belonged to it.
    unsigned char c = p[i];
    size_t skip = 1;
    int need = c >= 0xF0 && c <= 0xF4 ? 3 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xC2 && c <= 0xDF ? 1 : 0;
    for (int k = 0; k < need && i + skip < s.size() && (p[i + skip] & 0xC0) == 0x80; ++k) {
      unsigned char d = p[i + skip];
      if (skip == 1 && ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F) || (c == 0xF0 && d < 0x90) ||
                        (c == 0xF4 && d > 0x8F)))
        break;
      ++skip;
    }
    out += "\xEF\xBF\xBD";
    i += skip;
  }
  return out;
}

size_t utf8_incomplete_tail(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    unsigned char c = p[s.size() - back];
    if ((c & 0xC0) == 0x80) continue;
    int len = utf8_len(c);
    return (len > int(back) && c >= 0xC0) ? back : 0;
  }
  return 0;
}

}  // namespace m2
