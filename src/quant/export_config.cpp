#include "quant/export_config.h"

namespace m2 {

using ojson = nlohmann::ordered_json;

namespace {
ojson producer(const std::string& version) { return {{"name", "modelopt"}, {"version", version}}; }
}  // namespace

ojson modelopt_nvfp4_quant_config(const std::vector<std::string>& exclude, bool kv_fp8, const std::string& version) {
  const ojson q = {{"dynamic", false}, {"num_bits", 4}, {"type", "float"}, {"group_size", 16}};
  ojson c;
  c["config_groups"] = {{"group_0", {{"input_activations", q}, {"weights", q}, {"targets", {"Linear"}}}}};
  c["ignore"] = exclude;
  c["quant_algo"] = "NVFP4";
  if (kv_fp8) c["kv_cache_scheme"] = {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}};
  c["producer"] = producer(version);
  c["quant_method"] = "modelopt";
  return c;
}

ojson modelopt_nvfp4_hf_quant_config(const std::vector<std::string>& exclude, bool kv_fp8, const std::string& version) {
  ojson q = {{"quant_algo", "NVFP4"}};
  if (kv_fp8) q["kv_cache_quant_algo"] = "FP8";
  q["group_size"] = 16;
  q["exclude_modules"] = exclude;
  return {{"producer", producer(version)}, {"quantization", q}};
}

ojson ct_nvfp4_quant_config(const std::vector<std::string>& ignore) {
  const ojson w = {{"num_bits", 4}, {"type", "float"}, {"strategy", "tensor_group"}, {"group_size", 16},
                   {"symmetric", true}, {"dynamic", false}};
  ojson a = w;
  a["dynamic"] = "local";
  ojson c;
  c["quant_method"] = "compressed-tensors";
  c["format"] = "nvfp4-pack-quantized";
  c["quantization_status"] = "compressed";
  c["config_groups"] = {{"group_0", {{"targets", {"Linear"}}, {"format", "nvfp4-pack-quantized"}, {"weights", w},
                                     {"input_activations", a}, {"output_activations", nullptr}}}};
  c["ignore"] = ignore;
  c["kv_cache_scheme"] = nullptr;
  return c;
}

ojson ct_mxfp4_quant_config(const std::vector<std::string>& targets, const std::vector<std::string>& ignore) {
  const ojson w = {{"num_bits", 4}, {"type", "float"}, {"strategy", "group"}, {"group_size", 32},
                   {"symmetric", true}, {"dynamic", false}, {"scale_dtype", "torch.uint8"}};
  ojson c;
  c["quant_method"] = "compressed-tensors";
  c["format"] = "mxfp4-pack-quantized";
  c["quantization_status"] = "compressed";
  c["config_groups"] = {{"group_0", {{"targets", targets}, {"format", "mxfp4-pack-quantized"}, {"weights", w},
                                     {"input_activations", nullptr}, {"output_activations", nullptr}}}};
  c["ignore"] = ignore;
  c["kv_cache_scheme"] = nullptr;
  return c;
}

ojson fp8_block_quant_config() {
  return {{"activation_scheme", "dynamic"}, {"fmt", "float8_e4m3fn"}, {"quant_method", "fp8"},
          {"weight_block_size", {128, 128}}, {"modules_to_not_convert", {"gate", "e_score_correction_bias", "lm_head"}}};
}

}  // namespace m2
