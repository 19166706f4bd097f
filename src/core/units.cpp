#include "core/units.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>

#include "core/error.h"

namespace m2 {

size_t parse_size(const std::string& text, const std::string& flag) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  double mult = 1;
  if (unit == "" || unit == "B") mult = 1;
  else if (unit == "KB" || unit == "K") mult = 1e3;
  else if (unit == "MB" || unit == "M") mult = 1e6;
  else if (unit == "GB" || unit == "G") mult = 1e9;
  else if (unit == "KiB") mult = 1024.0;
  else if (unit == "MiB") mult = 1024.0 * 1024;
  else if (unit == "GiB") mult = 1024.0 * 1024 * 1024;
  else if (unit == "TB" || unit == "T") mult = 1e12;
  else if (unit == "TiB") mult = 1024.0 * 1024 * 1024 * 1024;
  else used = 0;
  if (used == 0 || !(v >= 0) || v * mult > 1e18)
    fail<InvalidArgument>("{} '{}': expected a size such as 4GiB, 512MB or 1000000", flag, text);
  return size_t(v * mult);
}

std::vector<ListedInteger> parse_integer_list(const std::string& text) {
  std::vector<ListedInteger> out;
  size_t i = 0;
  for (;;) {
    size_t j = text.find(',', i);
    if (j == std::string::npos) j = text.size();
    std::string piece = text.substr(i, j - i);
    piece.erase(0, piece.find_first_not_of(" \t"));
    piece.erase(piece.find_last_not_of(" \t") + 1);
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(piece, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    out.push_back({piece, piece.empty() || used != piece.size() ? std::nullopt : std::optional<long>(v)});
    if (j == text.size()) return out;
    i = j + 1;
  }
}

std::string human_bytes(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) b /= 1024, ++i;
  return fmt::format("{:.2f} {}", b, unit[i]);
}

size_t available_host_memory() {
  size_t avail = SIZE_MAX;
  if (std::ifstream in("/proc/meminfo"); in) {
    std::string key;
    size_t kib = 0;
    std::string unit;
    while (in >> key >> kib >> unit)
      if (key == "MemAvailable:") {
        avail = kib * 1024;
        break;
      }
  }
  std::ifstream max_in("/sys/fs/cgroup/memory.max"), cur_in("/sys/fs/cgroup/memory.current");
  std::string max_text;
  size_t current = 0;
  if (max_in >> max_text && max_text != "max" && cur_in >> current) {
    const size_t limit = std::strtoull(max_text.c_str(), nullptr, 10);
    avail = std::min(avail, limit > current ? limit - current : 0);
  }
  return avail;
}

std::optional<int64_t> whole_int64(double d) {
  if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) return std::nullopt;
  const int64_t i = static_cast<int64_t>(d);
  if (static_cast<double>(i) != d) return std::nullopt;
  return i;
}

}  // namespace m2
