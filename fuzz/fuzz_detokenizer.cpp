// The incremental detokenizer on arbitrary id sequences (pairs of bytes → ids, some past the
// vocabulary): every piece it yields is valid UTF-8, and the pieces concatenate to the one-shot
// decode of the same ids wherever that decode is itself valid UTF-8 without replacements.
#include "core/error.h"
#include "fuzz_util.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const m2::Tokenizer tok = m2::Tokenizer::load(m2::fuzz::demo_dir() + "/tokenizer.json");
  if (size < 1) return 0;
  const bool skip = data[0] & 1;
  std::vector<int32_t> ids;
  for (size_t i = 1; i + 1 < size; i += 2) ids.push_back(int32_t(data[i] | (data[i + 1] << 8)) % (tok.vocab_size() + 16));
  m2::IncrementalDecoder dec(tok, skip);
  std::string joined;
  try {
    for (int32_t id : ids) {
      const std::string piece = dec.push(id);
      if (m2::utf8_invalid_at(piece) != std::string_view::npos) m2::fuzz::finding("a piece is not valid UTF-8");
      joined += piece;
    }
    const std::string rest = dec.flush();
    if (m2::utf8_invalid_at(rest) != std::string_view::npos) m2::fuzz::finding("the final piece is not valid UTF-8");
    joined += rest;
  } catch (const m2::Error&) {
    return 0;  // an id outside the vocabulary
  }
  const std::string whole = tok.decode(ids, skip);
  if (whole.find("\xef\xbf\xbd") == std::string::npos && joined != whole) m2::fuzz::finding("pieces do not concatenate to decode()");
  return 0;
}
