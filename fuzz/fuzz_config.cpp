// config.json / hf_quant_config.json / quantization_config → format binding: the first byte picks
// one of the five tiny fixtures' weights; the rest, split at the first NUL, is config.json and
// hf_quant_config.json (absent when empty). The whole ModelWeights::load runs: config parsing,
// scheme detection and binding every tensor. Bad input must be a typed m2::Error.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "fuzz_util.h"
#include "model/weights.h"

namespace fs = std::filesystem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* kFormats[] = {"tiny-bf16", "tiny-fp8", "tiny-nvfp4-modelopt", "tiny-nvfp4-ct", "tiny-mxfp4-ct"};
  static const fs::path root = [] {
    char tmpl[] = "/tmp/m2-fuzz-cfg-XXXXXX";
    fs::path d = ::mkdtemp(tmpl);
    for (const char* f : kFormats) {
      fs::create_directories(d / f);
      fs::create_symlink(fs::path(M2_FUZZ_FIXTURES) / f / "model.safetensors", d / f / "model.safetensors");
    }
    return d;
  }();
  const fs::path dir = root / kFormats[data[0] % 5];
  const auto [config, quant] = m2::fuzz::split_nul(data + 1, size - 1);
  std::ofstream(dir / "config.json", std::ios::trunc) << config;
  if (!quant.empty()) std::ofstream(dir / "hf_quant_config.json", std::ios::trunc) << quant;
  try {
    const m2::ModelWeights w = m2::ModelWeights::load(dir);
    (void)w;
  } catch (const m2::Error&) {
  }
  fs::remove(dir / "hf_quant_config.json");
  return 0;
}
