// Shared by the libFuzzer harnesses: input splitting and the bundled demo model's path.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>

namespace m2::fuzz {

// The bundled demo model (tokenizer.json, chat template, weights), compiled in by fuzz/CMakeLists.txt.
inline std::string demo_dir() {
  const char* env = std::getenv("M2_DEMO_MODEL");
  return env ? env : M2_FUZZ_DEMO_MODEL;
}

// Input split at the first NUL byte: (before, after). Harnesses that take two texts use it.
inline std::pair<std::string_view, std::string_view> split_nul(const uint8_t* data, size_t size) {
  const std::string_view s(reinterpret_cast<const char*>(data), size);
  const size_t z = s.find('\0');
  if (z == std::string_view::npos) return {s, {}};
  return {s.substr(0, z), s.substr(z + 1)};
}

// Finding: the harness found a property broken (not a crash the sanitizers report themselves).
[[noreturn]] inline void finding(const char* what) {
  __builtin_fprintf(stderr, "fuzz finding: %s\n", what);
  std::abort();
}

}  // namespace m2::fuzz
