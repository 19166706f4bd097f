// Byte sizes as people write them on command lines (4GiB, 512MB, 1000000) and as m2 prints them.
#pragma once
#include <cstddef>
#include <string>

namespace m2 {

// Parses a size with an optional unit (B, K/KB/M/MB/G/GB decimal; KiB/MiB/GiB binary); throws
// InvalidArgument naming `flag` and the text on anything else.
size_t parse_size(const std::string& text, const std::string& flag);
// "1.50 GiB": binary units, two decimals.
std::string human_bytes(double bytes);

}  // namespace m2
