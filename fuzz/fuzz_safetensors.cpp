// safetensors header and sharded index: arbitrary bytes as a .safetensors file (first byte even) or
// as model.safetensors.index.json beside a valid shard (odd). Bad input must be a typed m2::Error.
#include <sys/mman.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const fs::path dir = [] {
    char tmpl[] = "/tmp/m2-fuzz-st-XXXXXX";
    fs::path d = ::mkdtemp(tmpl);
    // A valid one-tensor shard the index can point at.
    const std::string header = R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
    std::ofstream f(d / "a.safetensors", std::ios::binary);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << header << std::string(8, '\1');
    return d;
  }();
  const bool index = data[0] & 1;
  const fs::path file = dir / (index ? "model.safetensors.index.json" : "x.safetensors");
  {
    std::ofstream f(file, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data + 1), std::streamsize(size - 1));
  }
  try {
    if (index) {
      m2::Checkpoint ck(dir);
      for (const auto& [name, t] : ck.tensors()) (void)t.numel();
    } else {
      m2::SafetensorsFile s(file);
      uint64_t sum = 0;
      for (const auto& [name, t] : s.tensors())
        for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];  // every range must be readable
      (void)sum;
    }
  } catch (const m2::Error&) {
  }
  fs::remove(file);
  return 0;
}
