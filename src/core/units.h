// Byte sizes as people write them on command lines (4GiB, 512MB, 1000000) and as m2 prints them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace m2 {

// Parses a size with an optional unit (B, K/KB/M/MB/G/GB/T/TB decimal; KiB/MiB/GiB/TiB binary); throws
// InvalidArgument naming `flag` and the text on anything else.
size_t parse_size(const std::string& text, const std::string& flag);
// "1.50 GiB": binary units, two decimals.
std::string human_bytes(double bytes);
// A comma-separated list of integers as command lines write them ("20,42", "5, 17,3"): each
// piece (spaces and tabs around it trimmed) with its value as a base-10 integer, or nullopt for a
// piece that is not one (empty, trailing text, out of long's range). An empty text is one empty piece.
struct ListedInteger {
  std::string text;
  std::optional<long> value;
};
std::vector<ListedInteger> parse_integer_list(const std::string& text);
// Memory this process can still get: MemAvailable of /proc/meminfo, lowered to what the cgroup
// (v2 memory.max − memory.current) leaves; SIZE_MAX where neither can be read.
size_t available_host_memory();
// `d` as an int64 when it is a whole number inside int64's range, else nullopt (a plain cast of a
// double outside the range is undefined behaviour; JSON numbers like 1e300 reach here).
std::optional<int64_t> whole_int64(double d);

}  // namespace m2
