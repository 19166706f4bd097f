#include "text/tokenizer.h"

#include <unistr.h>
#include <uninorm.h>
#include <unicase.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <shared_mutex>

#include "core/error.h"
#include "io/config.h"
#include "text/regex.h"
#include "text/utf8.h"

namespace m2 {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// GPT-2's reversible byte → printable code point map (ByteLevel).
struct ByteMap {
  std::array<std::string, 256> encoded;  // byte → UTF-8 of its code point
  std::unordered_map<uint32_t, uint8_t> decoded;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      uint32_t cp = keep ? uint32_t(b) : uint32_t(256 + n++);
      append_utf8(encoded[size_t(b)], cp);
      decoded[cp] = uint8_t(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

uint32_t decode_cp(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  unsigned char c = p[i];
  int len = utf8_len(c);
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (p[i + size_t(k)] & 0x3F);
  i += size_t(len);
  return cp;
}

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// Every occurrence of `pattern` in s replaced by `content` (Replace normalizer and decoder).
std::string replace_all(const std::string& s, const std::string& pattern, const std::string& content) {
  if (pattern.empty()) return s;
  std::string r;
  size_t start = 0;
  for (size_t p = s.find(pattern); p != std::string::npos; p = s.find(pattern, start)) {
    r.append(s, start, p - start);
    r += content;
    start = p + pattern.size();
  }
  return r.append(s, start, std::string::npos);
}

// A piece of the input during pre-tokenization.
using Pieces = std::vector<std::string>;

struct Normalizer {
  std::string type;
  std::vector<Normalizer> children;  // Sequence
  std::string pattern, content;      // Replace / Prepend
  void apply(std::string& s) const {
    if (type == "Sequence") {
      for (const auto& c : children) c.apply(s);
    } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
      bool ascii = std::all_of(s.begin(), s.end(), [](char c) { return (unsigned char)c < 0x80; });
      if (ascii) return;  // every normal form of ASCII is itself
      uninorm_t form = type == "NFC" ? UNINORM_NFC : type == "NFD" ? UNINORM_NFD : type == "NFKC" ? UNINORM_NFKC : UNINORM_NFKD;
      size_t len = 0;
      uint8_t* out = u8_normalize(form, reinterpret_cast<const uint8_t*>(s.data()), s.size(), nullptr, &len);
      if (!out) fail("normalizer {}: libunistring failed", type);
      s.assign(reinterpret_cast<char*>(out), len);
      free(out);
    } else if (type == "Lowercase") {
      size_t len = 0;
      uint8_t* out = u8_tolower(reinterpret_cast<const uint8_t*>(s.data()), s.size(), nullptr, nullptr, nullptr, &len);
      if (!out) fail("normalizer Lowercase: libunistring failed");
      s.assign(reinterpret_cast<char*>(out), len);
      free(out);
    } else if (type == "Replace") {
      s = replace_all(s, pattern, content);
    } else if (type == "Prepend") {
      if (!s.empty()) s = content + s;
    }
  }
};

struct PreTokenizer {
  std::string type;
  std::vector<PreTokenizer> children;         // Sequence
  std::shared_ptr<Regex> regex;                // Split (Regex) / ByteLevel use_regex
  std::string literal;                         // Split (String)
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false, add_prefix_space = false, individual_digits = false;

  // Streaming form: calls emit(piece) for every final piece, without materialising the list.
  // Only the stages that tokenizer.json files use in practice stream; others fall back to apply().
  template <typename Emit>
  void each(std::string_view piece, size_t stage_depth, Emit&& emit) const {
    if (type == "Sequence") {
      each_from(0, piece, stage_depth, emit);
      return;
    }
    emit_stage(piece, stage_depth, [&](std::string_view p) { emit(p); });
  }
  template <typename Emit>
  void each_from(size_t child, std::string_view piece, size_t depth, Emit& emit) const {
    if (child == children.size()) {
      emit(piece);
      return;
    }
    children[child].emit_stage(piece, depth + child, [&](std::string_view p) { each_from(child + 1, p, depth, emit); });
  }
  template <typename Emit>
  void emit_stage(std::string_view s, size_t depth, Emit&& emit) const {
    thread_local std::vector<std::string> buffers;  // one scratch string per pipeline depth
    if (buffers.size() <= depth) buffers.resize(depth + 1);
    if (type == "Split" && regex && behavior == SplitBehavior::Isolated && !invert) {
      size_t last = 0;
      regex->for_each_match(s, [&](size_t b, size_t e) {
        if (e == b) return;
        if (b > last) emit(s.substr(last, b - last));
        emit(s.substr(b, e - b));
        last = e;
      });
      if (last < s.size()) emit(s.substr(last));
    } else if (type == "ByteLevel" && !regex) {
      std::string& buf = buffers[depth];
      buf.clear();
      if (add_prefix_space && !s.empty() && s[0] != ' ') buf += byte_map().encoded[' '];
      const auto& m = byte_map();
      for (unsigned char ch : s) buf += m.encoded[ch];
      emit(std::string_view(buf));
    } else {
      Pieces ps{std::string(s)};
      apply(ps);
      for (const auto& p : ps) emit(std::string_view(p));
    }
  }

  void apply(Pieces& pieces) const {
    if (type == "Sequence") {
      for (const auto& c : children) c.apply(pieces);
      return;
    }
    Pieces out;
    out.reserve(pieces.size() * 2);
    for (auto& p : pieces) {
      if (type == "Split") split(p, out);
      else if (type == "Digits") digits(p, out);
      else if (type == "ByteLevel") {
        std::string s = add_prefix_space && !p.empty() && p[0] != ' ' ? " " + p : p;
        if (regex) {
          Pieces sub;
          split_isolated(s, *regex, sub);
          for (auto& x : sub) out.push_back(to_byte_level(x));
        } else {
          out.push_back(to_byte_level(s));
        }
      }
    }
    pieces = std::move(out);
  }

  static std::string to_byte_level(std::string_view s) {
    std::string r;
    r.reserve(s.size() * 2);
    const auto& m = byte_map();
    for (unsigned char c : s) r += m.encoded[c];
    return r;
  }

  static void split_isolated(const std::string& s, const Regex& re, Pieces& out) {
    size_t last = 0;
    re.for_each_match(s, [&](size_t b, size_t e) {
      if (e == b) return;
      if (b > last) out.emplace_back(s, last, b - last);
      out.emplace_back(s, b, e - b);
      last = e;
    });
    if (last < s.size()) out.emplace_back(s, last, s.size() - last);
  }

  void split(const std::string& s, Pieces& out) const {
    // Matches (or, inverted, the gaps) are the delimiters; behaviour decides where they go.
    std::vector<std::pair<size_t, bool>> spans;  // (end offset, is_delimiter), covering s in order
    size_t last = 0;
    auto on_match = [&](size_t b, size_t e) {
      if (e == b) return;
      if (b > last) spans.push_back({b, invert});
      spans.push_back({e, !invert});
      last = e;
    };
    if (regex) regex->for_each_match(s, on_match);
    else if (!literal.empty())
      for (size_t pos = s.find(literal); pos != std::string::npos; pos = s.find(literal, pos + literal.size()))
        on_match(pos, pos + literal.size());
    if (last < s.size()) spans.push_back({s.size(), invert});
    // Merging rules of HF tokenizers' split(): a delimiter merges with its non-delimiter neighbour
    // only; runs of delimiters merge with each other only under Contiguous.
    std::vector<std::pair<std::string, bool>> parts;
    size_t begin = 0;
    for (auto [end, delim] : spans) {
      parts.emplace_back(s.substr(begin, end - begin), delim);
      begin = end;
    }
    std::vector<std::string> merged;
    bool prev = false;
    switch (behavior) {
      case SplitBehavior::Removed:
        for (auto& [p, d] : parts)
          if (!d) out.push_back(std::move(p));
        return;
      case SplitBehavior::Isolated:
        for (auto& [p, d] : parts) out.push_back(std::move(p));
        return;
      case SplitBehavior::MergedWithPrevious:
        for (auto& [p, d] : parts) {
          if (d && !prev && !merged.empty()) merged.back() += p;
          else merged.push_back(std::move(p));
          prev = d;
        }
        break;
      case SplitBehavior::MergedWithNext:
        for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
          if (it->second && !prev && !merged.empty()) merged.back() = it->first + merged.back();
          else merged.push_back(std::move(it->first));
          prev = it->second;
        }
        std::reverse(merged.begin(), merged.end());
        break;
      case SplitBehavior::Contiguous:
        for (auto& [p, d] : parts) {
          if (d == prev && !merged.empty()) merged.back() += p;
          else merged.push_back(std::move(p));
          prev = d;
        }
        break;
    }
    for (auto& p : merged) out.push_back(std::move(p));
  }

  void digits(const std::string& s, Pieces& out) const {
    size_t start = 0;
    for (size_t i = 0; i <= s.size(); ++i) {
      bool boundary = i == s.size();
      if (!boundary) {
        bool d = s[i] >= '0' && s[i] <= '9';
        bool pd = i > start && s[i - 1] >= '0' && s[i - 1] <= '9';
        boundary = i > start && (d != pd || (d && individual_digits));
      }
      if (boundary && i > start) {
        out.push_back(s.substr(start, i - start));
        start = i;
      }
    }
  }
};

struct Decoder {
  std::string type;
  std::vector<Decoder> children;
  std::string pattern, content;
  int strip_start = 0, strip_stop = 0;
  bool prefix_space = true;

  void apply(std::vector<std::string>& toks) const {
    if (type == "Sequence") {
      for (const auto& c : children) c.apply(toks);
    } else if (type == "ByteLevel") {
      std::string bytes;
      const auto& m = byte_map().decoded;
      for (const auto& t : toks) {
        std::string mine;
        bool ok = true;
        for (size_t i = 0; i < t.size() && ok;) {
          auto it = m.find(decode_cp(t, i));
          if (it == m.end()) ok = false;
          else mine.push_back(char(it->second));
        }
        bytes += ok ? mine : t;
      }
      toks = {utf8_lossy(bytes)};
    } else if (type == "Replace") {
      for (auto& t : toks) t = replace_all(t, pattern, content);
    } else if (type == "ByteFallback") {
      std::vector<std::string> out;
      std::string bytes;
      auto flush = [&] {
        if (!bytes.empty()) out.push_back(utf8_lossy(bytes));
        bytes.clear();
      };
      for (auto& t : toks) {
        if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>') {
          bytes.push_back(char(std::stoi(t.substr(3, 2), nullptr, 16)));
        } else {
          flush();
          out.push_back(t);
        }
      }
      flush();
      toks = std::move(out);
    } else if (type == "Fuse") {
      std::string all;
      for (auto& t : toks) all += t;
      toks = {all};
    } else if (type == "Strip") {
      for (auto& t : toks) {
        size_t b = 0, e = t.size();
        for (int i = 0; i < strip_start && b < e && t.compare(b, content.size(), content) == 0; ++i) b += content.size();
        for (int i = 0; i < strip_stop && e > b && e >= content.size() && t.compare(e - content.size(), content.size(), content) == 0; ++i)
          e -= content.size();
        t = t.substr(b, e - b);
      }
    } else if (type == "Metaspace") {
      for (size_t k = 0; k < toks.size(); ++k) {
        std::string r = replace_all(toks[k], content.empty() ? "\xE2\x96\x81" : content, " ");
        if (k == 0 && prefix_space && !r.empty() && r[0] == ' ') r.erase(0, 1);
        toks[k] = std::move(r);
      }
    }
  }
};

bool is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

struct AddedToken {
  int32_t id;
  std::string content;
  bool special, lstrip, rstrip, single_word, normalized;
  std::string match;  // what is looked for: content, or for normalized tokens the normalized content
};

// Added tokens of one kind (raw or normalized), bucketed by first byte, longest first.
struct AddedIndex {
  std::array<std::vector<const AddedToken*>, 256> by_first;

  // Splits text at leftmost-longest occurrences: on_text(segment) for the text between (possibly
  // empty), on_token(id) for each token; lstrip/rstrip absorb adjacent whitespace, single_word tokens
  // match only between non-word characters.
  template <typename OnText, typename OnToken>
  void split(std::string_view text, OnText&& on_text, OnToken&& on_token) const {
    size_t start = 0, i = 0;
    while (i < text.size()) {
      const AddedToken* hit = nullptr;
      for (const AddedToken* a : by_first[(unsigned char)text[i]]) {
        if (text.compare(i, a->match.size(), a->match) != 0) continue;
        if (a->single_word) {
          auto word_char = [](unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; };
          bool left_ok = i == 0 || !word_char((unsigned char)text[i - 1]);
          size_t e = i + a->match.size();
          bool right_ok = e == text.size() || !word_char((unsigned char)text[e]);
          if (!left_ok || !right_ok) continue;
        }
        hit = a;
        break;
      }
      if (!hit) {
        ++i;
        continue;
      }
      size_t seg_end = i, next = i + hit->match.size();
      if (hit->lstrip)
        while (seg_end > start && is_ws((unsigned char)text[seg_end - 1])) --seg_end;
      if (hit->rstrip)
        while (next < text.size() && is_ws((unsigned char)text[next])) ++next;
      on_text(text.substr(start, seg_end - start));
      on_token(hit->id);
      start = i = next;
    }
    on_text(text.substr(start));
  }
  bool empty() const { return count == 0; }
  size_t count = 0;
};

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

}  // namespace

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

struct Tokenizer::Impl {
  std::string where;
  StringMap<int32_t> vocab;
  std::vector<std::string> id_to_token;  // model vocab and added tokens
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (a, b) → (rank, merged id)
  std::unordered_map<uint32_t, int32_t> char_ids;  // single code point tokens: the initial BPE symbols
  bool ignore_merges = false, byte_fallback = false, fuse_unk = false;
  std::optional<int32_t> unk;
  std::vector<AddedToken> added;
  AddedIndex raw_added;         // normalized: false — matched on the input text
  AddedIndex normalized_added;  // normalized: true — matched on the normalized text
  std::vector<bool> special;
  std::optional<Normalizer> normalizer;
  std::optional<PreTokenizer> pre_tokenizer;
  std::optional<Decoder> decoder;
  std::vector<std::pair<bool, int32_t>> template_single;  // (is_sequence, special id) for add_special_tokens
  // Word → ids cache; BPE of a piece is a pure function of its text.
  mutable std::shared_mutex cache_mutex;
  mutable StringMap<std::vector<int32_t>> cache;

  void bpe(std::string_view word, std::vector<int32_t>& out) const {
    if (ignore_merges) {
      auto it = vocab.find(word);
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    {
      std::shared_lock lock(cache_mutex);
      auto it = cache.find(word);
      if (it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> sym;
    for (size_t i = 0; i < word.size();) {
      size_t start = i;
      auto it = char_ids.find(decode_cp(word, i));
      if (it != char_ids.end()) {
        sym.push_back(it->second);
        continue;
      }
      std::string ch(word.substr(start, i - start));
      if (byte_fallback) {
        for (unsigned char b : ch) {
          char name[8];
          std::snprintf(name, sizeof name, "<0x%02X>", b);
          auto bt = vocab.find(name);
          if (bt != vocab.end()) sym.push_back(bt->second);
          else if (unk) sym.push_back(*unk);
        }
      } else if (unk) {
        if (!(fuse_unk && !sym.empty() && sym.back() == *unk)) sym.push_back(*unk);
      } else {
        fail<InvalidArgument>("{}: character '{}' is not in the vocabulary and the tokenizer has no unk_token", where, ch);
      }
    }
    merge(sym);
    out.insert(out.end(), sym.begin(), sym.end());
    if (word.size() > kMaxCachedWordBytes) return;  // long words are rare; caching them would let one request fill memory
    std::unique_lock lock(cache_mutex);
    if (cache.size() > 200000) cache.clear();
    cache.emplace(std::string(word), std::move(sym));
  }

  // Merges the lowest-ranked adjacent pair (leftmost on ties) until none is in the merge table, as
  // HF's word merge does: candidate pairs in a min-heap keyed (rank, position), symbols in a linked
  // list, a popped pair skipped when either side has changed since it was pushed. O(n log n).
  void merge(std::vector<int32_t>& sym) const {
    const size_t n = sym.size();
    if (n < 2) return;
    struct Candidate {
      int32_t rank;
      uint32_t pos;
      int32_t left, right, merged;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::vector<uint32_t> next(n), prev(n);
    std::vector<bool> alive(n, true);
    for (size_t i = 0; i < n; ++i) {
      next[i] = uint32_t(i + 1);
      prev[i] = uint32_t(i - 1);  // wraps for i = 0: never read
    }
    std::vector<Candidate> heap;
    const auto push = [&](uint32_t i) {
      if (next[i] >= n) return;
      auto it = merges.find(pair_key(sym[i], sym[next[i]]));
      if (it == merges.end()) return;
      heap.push_back({it->second.first, i, sym[i], sym[next[i]], it->second.second});
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    };
    for (uint32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>());
      const Candidate c = heap.back();
      heap.pop_back();
      const uint32_t i = c.pos, j = next[i];
      if (!alive[i] || j >= n || sym[i] != c.left || sym[j] != c.right) continue;  // stale
      sym[i] = c.merged;
      alive[j] = false;
      next[i] = next[j];
      if (next[j] < n) prev[next[j]] = i;
      if (i > 0) push(prev[i]);
      push(i);
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i = next[i]) sym[k++] = sym[i];
    sym.resize(k);
  }

  // A word longer than kMaxWordBytes (a pasted blob without a break) is encoded in pieces of at most
  // that many bytes, cut at code-point boundaries: the one place m2 may differ from HF, which merges
  // across the cut.
  void bpe_bounded(std::string_view word, std::vector<int32_t>& out) const {
    while (word.size() > kMaxWordBytes) {
      size_t cut = kMaxWordBytes;
      while (cut > 0 && (static_cast<unsigned char>(word[cut]) & 0xC0) == 0x80) --cut;
      bpe(word.substr(0, cut), out);
      word.remove_prefix(cut);
    }
    if (!word.empty()) bpe(word, out);
  }

  // Text between raw added tokens: normalize, split at normalized added tokens, then the model.
  void encode_segment(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    std::string normalized;
    if (normalizer) {
      normalized = std::string(text);
      normalizer->apply(normalized);
      text = normalized;
    }
    if (normalized_added.empty()) return encode_normalized(text, out);
    normalized_added.split(text, [&](std::string_view seg) { encode_normalized(seg, out); },
                           [&](int32_t id) { out.push_back(id); });
  }

  void encode_normalized(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    if (!pre_tokenizer) {
      bpe_bounded(text, out);
      return;
    }
    pre_tokenizer->each(text, 0, [&](std::string_view p) { bpe_bounded(p, out); });
  }
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

namespace {

// A token id field: an integer in [0, INT32_MAX] (a float or an out-of-range number is an error,
// never a narrowing cast).
int32_t checked_id(const json& v, const std::string& where, const char* what) {
  if (!v.is_number_integer() || (v.is_number_unsigned() ? v.get<uint64_t>() > uint64_t(INT32_MAX)
                                                         : (v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)))
    fail<FormatError>("{}: {} must be an integer in [0, {}], found {}", where, what, INT32_MAX, v.dump());
  return int32_t(v.get<int64_t>());
}

std::string str(const json& j, const char* key, const std::string& where, const std::string& def = "") {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_string()) fail<FormatError>("{}: '{}' must be a string, found {}", where, key, it->dump());
  return it->get<std::string>();
}

bool flag(const json& j, const char* key, bool def) {
  auto it = j.find(key);
  return it == j.end() || !it->is_boolean() ? def : it->get<bool>();
}

Normalizer parse_normalizer(const json& j, const std::string& where) {
  Normalizer n;
  n.type = str(j, "type", where);
  if (n.type == "Sequence") {
    for (const auto& c : j.at("normalizers")) n.children.push_back(parse_normalizer(c, where));
  } else if (n.type == "Replace") {
    const json& p = j.at("pattern");
    if (!p.contains("String")) fail<FormatError>("{}: normalizer Replace supports String patterns only, found {}", where, p.dump());
    n.pattern = p["String"].get<std::string>();
    n.content = str(j, "content", where);
  } else if (n.type == "Prepend") {
    n.content = str(j, "prepend", where);
  } else if (n.type != "NFC" && n.type != "NFD" && n.type != "NFKC" && n.type != "NFKD" && n.type != "Lowercase") {
    fail<FormatError>("{}: normalizer type '{}' is not supported", where, n.type);
  }
  return n;
}

PreTokenizer parse_pre_tokenizer(const json& j, const std::string& where) {
  PreTokenizer p;
  p.type = str(j, "type", where);
  if (p.type == "Sequence") {
    for (const auto& c : j.at("pretokenizers")) p.children.push_back(parse_pre_tokenizer(c, where));
  } else if (p.type == "Split") {
    const json& pat = j.at("pattern");
    if (pat.contains("Regex")) p.regex = std::make_shared<Regex>(pat["Regex"].get<std::string>(), where + ": pre_tokenizer Split");
    else if (pat.contains("String")) p.literal = pat["String"].get<std::string>();
    else fail<FormatError>("{}: pre_tokenizer Split pattern must be Regex or String, found {}", where, pat.dump());
    std::string b = str(j, "behavior", where, "Isolated");
    static const std::map<std::string, SplitBehavior> kBehaviors = {
        {"Removed", SplitBehavior::Removed},
        {"Isolated", SplitBehavior::Isolated},
        {"MergedWithPrevious", SplitBehavior::MergedWithPrevious},
        {"MergedWithNext", SplitBehavior::MergedWithNext},
        {"Contiguous", SplitBehavior::Contiguous}};
    auto it = kBehaviors.find(b);
    if (it == kBehaviors.end()) fail<FormatError>("{}: Split behavior '{}' is not supported", where, b);
    p.behavior = it->second;
    p.invert = flag(j, "invert", false);
  } else if (p.type == "ByteLevel") {
    p.add_prefix_space = flag(j, "add_prefix_space", false);
    if (flag(j, "use_regex", true)) p.regex = std::make_shared<Regex>(kGpt2Pattern, where + ": ByteLevel");
  } else if (p.type == "Digits") {
    p.individual_digits = flag(j, "individual_digits", false);
  } else {
    fail<FormatError>("{}: pre_tokenizer type '{}' is not supported", where, p.type);
  }
  return p;
}

Decoder parse_decoder(const json& j, const std::string& where) {
  Decoder d;
  d.type = str(j, "type", where);
  if (d.type == "Sequence") {
    for (const auto& c : j.at("decoders")) d.children.push_back(parse_decoder(c, where));
  } else if (d.type == "Replace") {
    const json& p = j.at("pattern");
    if (!p.contains("String")) fail<FormatError>("{}: decoder Replace supports String patterns only", where);
    d.pattern = p["String"].get<std::string>();
    d.content = str(j, "content", where);
  } else if (d.type == "Strip") {
    d.content = str(j, "content", where, " ");
    d.strip_start = j.value("start", 0);
    d.strip_stop = j.value("stop", 0);
  } else if (d.type == "Metaspace") {
    d.content = str(j, "replacement", where, "\xE2\x96\x81");
    d.prefix_space = flag(j, "add_prefix_space", true) && str(j, "prepend_scheme", where, "always") != "never";
  } else if (d.type != "ByteLevel" && d.type != "ByteFallback" && d.type != "Fuse") {
    fail<FormatError>("{}: decoder type '{}' is not supported", where, d.type);
  }
  return d;
}

}  // namespace

Tokenizer Tokenizer::load(const fs::path& path) {
  fs::path p = fs::is_directory(path) ? path / "tokenizer.json" : path;
  return from_json(read_json_file(p), p.string());
}

Tokenizer Tokenizer::from_json(const json& j, const std::string& where) {
  try {
    return from_json_checked(j, where);
  } catch (const json::exception& e) {  // a field of the wrong JSON type or missing
    fail<FormatError>("{}: unexpected tokenizer.json structure: {}", where, e.what());
  }
}

Tokenizer Tokenizer::from_json_checked(const json& j, const std::string& where) {
  Tokenizer t;
  Impl& I = *t.impl_;
  I.where = where;
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    fail<FormatError>("{}: expected a tokenizer.json object with a 'model'", where);
  const json& m = j["model"];
  const std::string mtype = str(m, "type", where, "BPE");
  if (mtype != "BPE") fail<FormatError>("{}: model type '{}' is not supported: expected 'BPE'", where, mtype);
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!str(m, k, where).empty()) fail<FormatError>("{}: model.{} = '{}' is not supported", where, k, str(m, k, where));
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0)
    fail<FormatError>("{}: BPE dropout is not supported", where);
  I.ignore_merges = flag(m, "ignore_merges", false);
  I.byte_fallback = flag(m, "byte_fallback", false);
  I.fuse_unk = flag(m, "fuse_unk", false);
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail<FormatError>("{}: model.vocab must be an object", where);
  int32_t max_id = -1;
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > INT32_MAX)
      fail<FormatError>("{}: vocab['{}'] is not a valid id", where, it.key());
    int32_t id = it->get<int32_t>();
    I.vocab.emplace(it.key(), id);
    max_id = std::max(max_id, id);
  }
  const json* added = j.contains("added_tokens") && j["added_tokens"].is_array() ? &j["added_tokens"] : nullptr;
  if (added)
    for (const auto& a : *added) max_id = std::max(max_id, checked_id(a.at("id"), where, "added_tokens id"));
  if (max_id >= (1 << 24))  // ids index dense tables; no real vocabulary comes near this
    fail<FormatError>("{}: token id {} is implausibly large (limit {})", where, max_id, 1 << 24);
  I.id_to_token.assign(size_t(max_id + 1), std::string());
  I.special.assign(size_t(max_id + 1), false);
  for (const auto& [s, id] : I.vocab) {
    I.id_to_token[size_t(id)] = s;
    if (!s.empty() && size_t(utf8_len((unsigned char)s[0])) == s.size()) {
      size_t k = 0;
      I.char_ids.emplace(decode_cp(s, k), id);
    }
  }
  if (std::string u = str(m, "unk_token", where); !u.empty()) {
    auto it = I.vocab.find(u);
    if (it != I.vocab.end()) I.unk = it->second;
  }
  if (!m.contains("merges") || !m["merges"].is_array()) fail<FormatError>("{}: model.merges must be a list", where);
  int32_t rank = 0;
  for (const auto& mg : m["merges"]) {
    std::string a, b;
    if (mg.is_string()) {
      const std::string s = mg.get<std::string>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) fail<FormatError>("{}: merge '{}' is not 'a b'", where, s);
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (mg.is_array() && mg.size() == 2) {
      a = mg[0].get<std::string>();
      b = mg[1].get<std::string>();
    } else {
      fail<FormatError>("{}: merge {} is neither 'a b' nor [a, b]", where, mg.dump());
    }
    auto ia = I.vocab.find(a), ib = I.vocab.find(b), iab = I.vocab.find(a + b);
    if (ia == I.vocab.end() || ib == I.vocab.end() || iab == I.vocab.end())
      fail<FormatError>("{}: merge #{} ('{}', '{}') uses a token missing from the vocabulary", where, rank, a, b);
    I.merges.emplace(pair_key(ia->second, ib->second), std::make_pair(rank++, iab->second));
  }
  if (added) {
    for (const auto& a : *added) {
      AddedToken tok{checked_id(a.at("id"), where, "added_tokens id"), a.at("content").get<std::string>(), flag(a, "special", false),
                     flag(a, "lstrip", false),  flag(a, "rstrip", false),          flag(a, "single_word", false),
                     flag(a, "normalized", false), {}};
      if (tok.id < 0) fail<FormatError>("{}: added token '{}' has negative id {}", where, tok.content, tok.id);
      if (tok.content.empty()) fail<FormatError>("{}: added token {} has empty content", where, tok.id);
      I.id_to_token[size_t(tok.id)] = tok.content;
      I.special[size_t(tok.id)] = tok.special;
      I.added.push_back(tok);
    }
    // (indexed after the normalizer is parsed, below)
  }
  if (j.contains("normalizer") && !j["normalizer"].is_null()) I.normalizer = parse_normalizer(j["normalizer"], where);
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null())
    I.pre_tokenizer = parse_pre_tokenizer(j["pre_tokenizer"], where);
  if (j.contains("decoder") && !j["decoder"].is_null()) I.decoder = parse_decoder(j["decoder"], where);
  for (auto& a : I.added) {
    a.match = a.content;
    if (a.normalized && I.normalizer) I.normalizer->apply(a.match);
    if (a.match.empty()) continue;
    AddedIndex& index = a.normalized ? I.normalized_added : I.raw_added;
    index.by_first[(unsigned char)a.match[0]].push_back(&a);
    ++index.count;
  }
  for (AddedIndex* index : {&I.raw_added, &I.normalized_added})
    for (auto& v : index->by_first)
      std::stable_sort(v.begin(), v.end(), [](const AddedToken* a, const AddedToken* b) { return a->match.size() > b->match.size(); });
  if (j.contains("post_processor") && !j["post_processor"].is_null()) {
    const json& pp = j["post_processor"];
    const std::string type = str(pp, "type", where);
    auto template_of = [&](const json& p) {
      if (!p.contains("single")) return;
      for (const auto& piece : p["single"]) {
        if (piece.contains("Sequence")) {
          I.template_single.push_back({true, -1});
        } else if (piece.contains("SpecialToken")) {
          std::string id = piece["SpecialToken"].at("id").get<std::string>();
          const json& ids = p.at("special_tokens").at(id).at("ids");
          for (const auto& x : ids) I.template_single.push_back({false, checked_id(x, where, "post_processor special token id")});
        }
      }
    };
    if (type == "TemplateProcessing") template_of(pp);
    else if (type == "Sequence") {
      for (const auto& c : pp.at("processors"))
        if (str(c, "type", where) == "TemplateProcessing") template_of(c);
    } else if (type != "ByteLevel") {
      fail<FormatError>("{}: post_processor type '{}' is not supported", where, type);
    }
  }
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& I = *impl_;
  if (size_t bad = utf8_invalid_at(text); bad != std::string_view::npos)
    fail<InvalidArgument>("tokenize: text is not valid UTF-8 at byte {}", bad);
  std::vector<int32_t> out;
  // Added tokens are matched first, leftmost-longest; the text between them goes through the model.
  I.raw_added.split(text, [&](std::string_view seg) { I.encode_segment(seg, out); },
                    [&](int32_t id) { out.push_back(id); });
  if (add_special_tokens && !I.template_single.empty()) {
    std::vector<int32_t> with;
    for (auto [seq, id] : I.template_single) {
      if (seq) with.insert(with.end(), out.begin(), out.end());
      else with.push_back(id);
    }
    return with;
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& I = *impl_;
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || size_t(id) >= I.id_to_token.size() || I.id_to_token[size_t(id)].empty())
      fail<InvalidArgument>("detokenize: id {} is not in the vocabulary (size {})", id, I.id_to_token.size());
    if (skip_special_tokens && I.special[size_t(id)]) continue;
    toks.push_back(I.id_to_token[size_t(id)]);
  }
  if (!I.decoder) {
    std::string s;
    for (size_t i = 0; i < toks.size(); ++i) s += (i ? " " : "") + toks[i];
    return s;
  }
  I.decoder->apply(toks);
  std::string s;
  for (auto& t : toks) s += t;
  return s;
}

int32_t Tokenizer::vocab_size() const { return int32_t(impl_->id_to_token.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const auto& a : impl_->added)
    if (a.content == token) return a.id;
  auto it = impl_->vocab.find(std::string(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= impl_->id_to_token.size()) return {};
  return impl_->id_to_token[size_t(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->special.size() && impl_->special[size_t(id)];
}

void Tokenizer::clear_cache() const {
  std::unique_lock lock(impl_->cache_mutex);
  impl_->cache.clear();
}

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

std::string IncrementalDecoder::push(int32_t id) {
  ids_.push_back(id);
  // Decode a short window: text of [prefix, read) is already emitted; emit what [prefix, end) adds,
  // unless it ends in an incomplete character (U+FFFD from a partial byte sequence).
  std::vector<int32_t> prefix(ids_.begin() + long(prefix_offset_), ids_.begin() + long(read_offset_));
  std::vector<int32_t> all(ids_.begin() + long(prefix_offset_), ids_.end());
  std::string before = tok_.decode(prefix, skip_special_), now = tok_.decode(all, skip_special_);
  if (now.size() > before.size() && !(now.size() >= 3 && now.compare(now.size() - 3, 3, "\xEF\xBF\xBD") == 0)) {
    std::string piece = now.substr(before.size());
    prefix_offset_ = read_offset_;
    read_offset_ = ids_.size();
    return piece;
  }
  return {};
}

std::string IncrementalDecoder::flush() {
  std::vector<int32_t> prefix(ids_.begin() + long(prefix_offset_), ids_.begin() + long(read_offset_));
  std::vector<int32_t> all(ids_.begin() + long(prefix_offset_), ids_.end());
  std::string before = tok_.decode(prefix, skip_special_), now = tok_.decode(all, skip_special_);
  prefix_offset_ = read_offset_ = ids_.size();
  return now.size() > before.size() ? now.substr(before.size()) : std::string();
}

}  // namespace m2
