// Tokenizer encode/decode on arbitrary bytes with the demo model's tokenizer.json: encode never
// fails on any bytes, and decode(encode(text)) gives the text back wherever the text is valid UTF-8
// (the demo tokenizer is byte-level: every string is representable).
#include "core/error.h"
#include "fuzz_util.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const m2::Tokenizer tok = m2::Tokenizer::load(m2::fuzz::demo_dir() + "/tokenizer.json");
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<int32_t> ids;
  try {
    ids = tok.encode(text, size > 0 && data[0] & 1);
  } catch (const m2::Error&) {
    return 0;  // invalid UTF-8 input is refused with an error
  }
  const std::string back = tok.decode(ids, size > 0 && data[0] & 1);
  if (m2::utf8_invalid_at(text) == std::string_view::npos && !(size > 0 && data[0] & 1) && back != text) m2::fuzz::finding("decode(encode(text)) != text");
  return 0;
}
