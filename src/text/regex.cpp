#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/regex.h"

#include <pcre2.h>

#include "core/error.h"

namespace m2 {

struct Regex::Impl {
  pcre2_code* code = nullptr;
  ~Impl() {
    if (code) pcre2_code_free(code);
  }
};

Regex::Regex(const std::string& pattern, const std::string& where) : impl_(std::make_unique<Impl>()) {
  int err = 0;
  PCRE2_SIZE offset = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail<FormatError>("{}: regular expression does not compile at offset {}: {}", where, offset,
                      reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
}

Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;
Regex::~Regex() = default;

bool Regex::next(std::string_view text, size_t start, std::pair<size_t, size_t>* match) const {
  // One match-data block per thread, reused: matching does not allocate.
  struct Data {
    pcre2_match_data* md = pcre2_match_data_create(4, nullptr);
    ~Data() { pcre2_match_data_free(md); }
  };
  thread_local Data data;
  int rc = pcre2_match(impl_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start, PCRE2_NO_UTF_CHECK,
                       data.md, nullptr);
  if (rc < 0) {
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    fail<Error>("regex match failed with PCRE2 error {}", rc);
  }
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.md);
  *match = {size_t(ov[0]), size_t(ov[1])};
  return true;
}

}  // namespace m2
