// tokenizer.json loading: arbitrary JSON text → Tokenizer::from_json, then encode and decode a fixed
// text and the ids 0..15 with what loaded. Bad input must be a typed m2::Error.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "fuzz_util.h"
#include "text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  try {
    const m2::Tokenizer t = m2::Tokenizer::from_json(j, "fuzz tokenizer.json");
    const auto ids = t.encode("Hello, wörld! 123 <|im_start|> \xf0\x9f\x99\x82", true);
    (void)t.decode(ids);
    std::vector<int32_t> some;
    for (int32_t i = 0; i < 16 && i < t.vocab_size(); ++i) some.push_back(i);
    (void)t.decode(some, true);
  } catch (const m2::Error&) {
  }
  return 0;
}
