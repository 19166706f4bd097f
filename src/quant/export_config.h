// The quantization configs each exporter writes (config.json `quantization_config`, ModelOpt's
// hf_quant_config.json), in the field layout vLLM, SGLang and TensorRT-LLM read (spec §2–5). Used by
// m2 quantize and m2 synth.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace m2 {

// ModelOpt NVFP4: exclude_modules (globs), kv_cache_quant_algo FP8 when k/v scales are written.
nlohmann::ordered_json modelopt_nvfp4_quant_config(const std::vector<std::string>& exclude, bool kv_fp8,
                                                   const std::string& producer_version);
nlohmann::ordered_json modelopt_nvfp4_hf_quant_config(const std::vector<std::string>& exclude, bool kv_fp8,
                                                      const std::string& producer_version);
// compressed-tensors nvfp4-pack-quantized: targets Linear, `ignore` (exact names and re: patterns).
nlohmann::ordered_json ct_nvfp4_quant_config(const std::vector<std::string>& ignore);
// compressed-tensors mxfp4-pack-quantized: `targets` and `ignore`.
nlohmann::ordered_json ct_mxfp4_quant_config(const std::vector<std::string>& targets, const std::vector<std::string>& ignore);
// The official block-FP8 release's quantization_config.
nlohmann::ordered_json fp8_block_quant_config();

}  // namespace m2
