// Hugging Face tokenizer.json, reproduced exactly: added tokens, normalizers, pre-tokenizers
// (Sequence, Split with a PCRE2 regex, ByteLevel, Digits), BPE (merges, ignore_merges,
// byte_fallback, unk), post-processors, decoders.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace m2 {

class Tokenizer {
 public:
  // Reads tokenizer.json (a file, or a directory holding one).
  static Tokenizer load(const std::filesystem::path& path);
  static Tokenizer from_json(const nlohmann::json& j, const std::string& where);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Text → ids, as HF `encode(text, add_special_tokens=...)`.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // Ids → text, as HF `decode(ids, skip_special_tokens=...)`. Invalid UTF-8 becomes U+FFFD.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int32_t vocab_size() const;  // largest id + 1
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // "" when unknown
  bool is_special(int32_t id) const;
  // Drops the word → ids cache (it is rebuilt as text is encoded; bounded at 200k words of at most
  // kMaxCachedWordBytes each).
  void clear_cache() const;

  // BPE merges a word in O(n log n). A single pre-tokenized word longer than kMaxWordBytes is cut
  // into pieces of at most that many bytes (at code-point boundaries) and each piece merged alone:
  // the only input on which m2's ids can differ from HF's.
  static constexpr size_t kMaxWordBytes = size_t(1) << 20;
  static constexpr size_t kMaxCachedWordBytes = 256;

 private:
  Tokenizer();
  static Tokenizer from_json_checked(const nlohmann::json& j, const std::string& where);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Streaming detokenizer: feed ids one at a time, get the text they complete. Never yields a broken
// UTF-8 sequence; text is held back until the bytes that complete it arrive.
class IncrementalDecoder {
 public:
  IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens);
  std::string push(int32_t id);
  std::string flush();  // whatever is held back at the end (incomplete sequences as U+FFFD)
  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0, read_offset_ = 0;
};

}  // namespace m2
