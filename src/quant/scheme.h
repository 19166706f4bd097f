// Which weight format each linear module of a checkpoint is stored in, from config.json
// `quantization_config` and `hf_quant_config.json`, and binding of a module's tensors to a WeightView.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "quant/weight.h"

namespace m2 {

// How a module's tensors are laid out on disk.
enum class StoredLayout : uint8_t {
  Dense,           // <m>.weight BF16/F16/F32
  Fp8Block,        // <m>.weight F8_E4M3 + <m>.weight_scale_inv F32
  Nvfp4ModelOpt,   // <m>.weight U8 + weight_scale E4M3 + weight_scale_2 F32 (+ input_scale)
  Nvfp4Ct,         // <m>.weight_packed U8 + weight_scale E4M3 + weight_global_scale F32 (+ input_global_scale)
  Mxfp4Ct,         // <m>.weight_packed U8 + weight_scale U8 (E8M0)
};
std::string_view stored_layout_name(StoredLayout l);

class QuantScheme {
 public:
  // Reads config.json (already parsed) and hf_quant_config.json if present in `dir`.
  static QuantScheme detect(const std::filesystem::path& dir, const nlohmann::json& config);

  // The checkpoint's method in words ("bf16", "fp8 block 128x128", "nvfp4 (modelopt)", ...).
  const std::string& description() const { return description_; }
  // The layout the config declares for the linear module `module` ("model.layers.0.self_attn.q_proj").
  StoredLayout layout_for(const std::string& module) const;
  // Why a module is left unquantized ("excluded by 'lm_head'"), or empty when it is quantized.
  std::string exclusion_reason(const std::string& module) const;
  bool kv_cache_fp8() const { return kv_cache_fp8_; }
  const std::vector<std::string>& exclusion_patterns() const { return exclusion_text_; }
  // Block-FP8 scale block [rows, cols] (weight_block_size; 128x128 in the official release).
  std::pair<int, int> fp8_block() const { return fp8_block_; }

 private:
  static QuantScheme detect_checked(const std::filesystem::path& dir, const nlohmann::json& config);
  struct Pattern {
    enum Kind { Glob, Exact, Regex, Substring, ClassName } kind;
    std::string text;
    std::optional<std::regex> re;
    bool matches(const std::string& module) const;
  };
  struct Group {
    std::vector<Pattern> targets;
    StoredLayout layout;
  };
  std::string description_ = "unquantized";
  std::vector<Group> groups_;        // first match wins
  std::vector<Pattern> exclusions_;  // modules left unquantized
  std::vector<std::string> exclusion_text_;
  std::vector<std::pair<std::string, StoredLayout>> per_module_;  // MIXED_PRECISION map
  bool mixed_ = false;
  bool kv_cache_fp8_ = false;
  std::pair<int, int> fp8_block_{128, 128};
};

// Binds the tensors of linear module `module` with expected logical shape [rows, cols] to a WeightView,
// in the layout the scheme declares for it. Every mismatch is a ModelError naming the tensor, expected
// and found. Records the consumed tensor names in `used`.
WeightView bind_linear(const Checkpoint& ckpt, const QuantScheme& scheme, const std::string& module, int64_t rows,
                       int64_t cols, std::vector<std::string>* used);

// Detects the layout from the tensors present (for `m2 inspect` and for error messages).
std::optional<StoredLayout> layout_from_tensors(const Checkpoint& ckpt, const std::string& module);

}  // namespace m2
