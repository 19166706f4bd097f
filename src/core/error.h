// Typed errors. Every failure says where (file, tensor, field) and what was expected vs found.
#pragma once
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>
#include <string>
#include <string_view>

namespace m2 {

// `s` made safe for a terminal and a JSON error body: bytes that are not valid UTF-8, and control
// characters other than newline and tab, are written as \xNN. Messages quote file contents (a
// corrupted header, a tensor name, a template), so every Error passes through this.
std::string printable(std::string_view s);

// Base of every error m2 raises on bad input; what() is the full, user-facing message.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(printable(message)) {}
};

// A file could not be opened, mapped or read.
class IoError : public Error {
 public:
  using Error::Error;
};

// A file was read but its contents are malformed (header, JSON, offsets).
class FormatError : public Error {
 public:
  using Error::Error;
};

// The checkpoint is well formed but does not fit the model (missing tensor, shape, dtype, config value).
class ModelError : public Error {
 public:
  using Error::Error;
};

// A caller passed arguments that cannot be honoured (token id out of range, batch too large).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

template <typename E = Error, typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw E(fmt::format(f, std::forward<Args>(args)...));
}

// Internal invariant check: on in every build type.
#define M2_CHECK(cond, ...)                                                                     \
  do {                                                                                          \
    if (!(cond)) ::m2::fail<::m2::Error>("internal check failed at {}:{}: {} ({})", __FILE__, \
                                         __LINE__, #cond, fmt::format(__VA_ARGS__));          \
  } while (0)

}  // namespace m2
