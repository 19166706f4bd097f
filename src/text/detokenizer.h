// The runtime's TextDecoder (generated ids → text, streamed) over a tokenizer.
#pragma once
#include "runtime/sequence.h"
#include "text/tokenizer.h"

namespace m2 {

// Decoders that read `tok` (which must outlive them) with the incremental detokenizer.
TextDecoderFactory text_decoder_factory(const Tokenizer& tok);

}  // namespace m2
