#include "text/detokenizer.h"

namespace m2 {

namespace {

class IncrementalTextDecoder final : public TextDecoder {
 public:
  IncrementalTextDecoder(const Tokenizer& tok, bool skip_special) : dec_(tok, skip_special) {}
  void push(int32_t id, std::string& out) override { out += dec_.push(id); }
  void flush(std::string& out) override { out += dec_.flush(); }

 private:
  IncrementalDecoder dec_;
};

}  // namespace

TextDecoderFactory text_decoder_factory(const Tokenizer& tok) {
  return [&tok](bool skip_special) { return std::make_unique<IncrementalTextDecoder>(tok, skip_special); };
}

}  // namespace m2
