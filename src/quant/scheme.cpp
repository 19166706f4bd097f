#include "quant/scheme.h"

#include <cmath>

#include "core/error.h"
#include "io/config.h"
#include "quant/layouts.h"

namespace m2 {

namespace fs = std::filesystem;
using nlohmann::json;

std::string_view stored_layout_name(StoredLayout l) {
  switch (l) {
    case StoredLayout::Dense: return "dense";
    case StoredLayout::Fp8Block: return "fp8-block";
    case StoredLayout::Nvfp4ModelOpt: return "nvfp4 (modelopt)";
    case StoredLayout::Nvfp4Ct: return "nvfp4 (compressed-tensors)";
    case StoredLayout::Mxfp4Ct: return "mxfp4 (compressed-tensors)";
  }
  return "?";
}

namespace {

// fnmatch-style: '*' any run, '?' one character.
bool glob_match(std::string_view pat, std::string_view s) {
  size_t p = 0, i = 0, star = std::string_view::npos, mark = 0;
  while (i < s.size()) {
    if (p < pat.size() && (pat[p] == '?' || pat[p] == s[i])) {
      ++p;
      ++i;
    } else if (p < pat.size() && pat[p] == '*') {
      star = p++;
      mark = i;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      i = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

std::vector<std::string> string_list(const json& j, const char* key, const std::string& where) {
  std::vector<std::string> out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) fail<ModelError>("{}: '{}' must be a list of strings, found {}", where, key, it->dump());
  for (const auto& x : *it) {
    if (!x.is_string()) fail<ModelError>("{}: '{}' must be a list of strings, found {}", where, key, x.dump());
    out.push_back(x.get<std::string>());
  }
  return out;
}

}  // namespace

bool QuantScheme::Pattern::matches(const std::string& module) const {
  switch (kind) {
    case Glob:
      // ModelOpt / vLLM: glob over the whole name, or a prefix naming a parent module.
      return glob_match(text, module) || module.rfind(text + ".", 0) == 0 || glob_match(text + ".*", module);
    case Exact: return module == text;
    case Regex: return std::regex_search(module, *re, std::regex_constants::match_continuous);
    case Substring: return module.find(text) != std::string::npos;
    case ClassName: return true;  // "Linear": every linear module
  }
  return false;
}

QuantScheme QuantScheme::detect(const fs::path& dir, const json& config) {
  try {
    return detect_checked(dir, config);
  } catch (const json::exception& e) {  // a field of the wrong JSON type
    fail<ModelError>("{}: unexpected quantization config structure: {}", (dir / "config.json").string(), e.what());
  }
}

QuantScheme QuantScheme::detect_checked(const fs::path& dir, const json& config) {
  QuantScheme s;
  const std::string cfg_where = (dir / "config.json").string();
  const json* qc = nullptr;
  if (auto it = config.find("quantization_config"); it != config.end() && !it->is_null()) {
    if (!it->is_object()) fail<ModelError>("{}: 'quantization_config' must be an object", cfg_where);
    qc = &*it;
  }
  json hf;
  const fs::path hf_path = dir / "hf_quant_config.json";
  if (fs::exists(hf_path)) hf = read_json_file(hf_path);

  std::string method = qc ? qc->value("quant_method", std::string()) : std::string();
  if (!qc && hf.is_object() && hf.contains("quantization")) method = "modelopt";
  if (method.empty() && qc) fail<ModelError>("{}: quantization_config has no 'quant_method'", cfg_where);
  auto exclude = [&](Pattern::Kind kind, const std::string& text) {
    Pattern p{kind, text, std::nullopt};
    if (kind == Pattern::Regex) {
      try {
        p.re.emplace(text, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        fail<ModelError>("{}: ignore pattern 're:{}' is not a valid regular expression: {}", cfg_where, text, e.what());
      }
    }
    s.exclusions_.push_back(std::move(p));
    s.exclusion_text_.push_back(kind == Pattern::Regex ? "re:" + text : text);
  };

  if (method.empty()) {
    s.description_ = "unquantized";
  } else if (method == "fp8") {
    const std::string fmtname = qc->value("fmt", std::string("float8_e4m3fn"));
    if (fmtname != "float8_e4m3fn" && fmtname != "e4m3")
      fail<ModelError>("{}: quantization_config.fmt = '{}' is not supported: expected 'float8_e4m3fn'", cfg_where, fmtname);
    auto bs = qc->find("weight_block_size");
    if (bs == qc->end() || !bs->is_array() || bs->size() != 2 || !(*bs)[0].is_number_integer() ||
        !(*bs)[1].is_number_integer() || (*bs)[0].get<int64_t>() <= 0 || (*bs)[1].get<int64_t>() <= 0 ||
        (*bs)[0].get<int64_t>() > 65536 || (*bs)[1].get<int64_t>() > 65536)
      fail<ModelError>("{}: quantization_config.weight_block_size must be [rows, cols], found {}", cfg_where,
                       bs == qc->end() ? "nothing" : bs->dump());
    s.fp8_block_ = {(*bs)[0].get<int>(), (*bs)[1].get<int>()};
    s.description_ = fmt::format("fp8 block {}x{} (weight_scale_inv)", s.fp8_block_.first, s.fp8_block_.second);
    s.groups_.push_back({{{Pattern::ClassName, "Linear", std::nullopt}}, StoredLayout::Fp8Block});
    for (const auto& m : string_list(*qc, "modules_to_not_convert", cfg_where)) exclude(Pattern::Substring, m);
  } else if (method == "modelopt") {
    // hf_quant_config.json is authoritative when present; config.json carries the converted form.
    const json* q = hf.is_object() && hf.contains("quantization") ? &hf["quantization"] : qc;
    const std::string where = q == qc ? cfg_where : hf_path.string();
    std::string algo = q->value("quant_algo", std::string());
    if (algo == "NVFP4") {
      s.description_ = "nvfp4 (modelopt)";
      s.groups_.push_back({{{Pattern::ClassName, "Linear", std::nullopt}}, StoredLayout::Nvfp4ModelOpt});
    } else if (algo == "MIXED_PRECISION") {
      s.description_ = "mixed precision (modelopt)";
      s.mixed_ = true;
      auto ql = q->find("quantized_layers");
      if (ql == q->end() || !ql->is_object())
        fail<ModelError>("{}: quant_algo MIXED_PRECISION needs a 'quantized_layers' object", where);
      for (auto it = ql->begin(); it != ql->end(); ++it) {
        std::string a = it->is_object() ? it->value("quant_algo", std::string()) : std::string();
        if (a == "NVFP4") s.per_module_.emplace_back(it.key(), StoredLayout::Nvfp4ModelOpt);
        else if (a == "FP8_PB_WO" || a == "FP8_BLOCK") s.per_module_.emplace_back(it.key(), StoredLayout::Fp8Block);
        else
          fail<ModelError>("{}: quantized_layers['{}'].quant_algo = '{}' is not supported (NVFP4 or block FP8)", where,
                           it.key(), a);
      }
    } else {
      fail<ModelError>("{}: modelopt quant_algo = '{}' is not supported: expected 'NVFP4'", where, algo);
    }
    auto ex = string_list(*q, q == qc ? "ignore" : "exclude_modules", where);
    if (q == qc && ex.empty()) ex = string_list(*q, "exclude_modules", where);
    for (const auto& m : ex) exclude(Pattern::Glob, m);
    std::string kv = q->contains("kv_cache_quant_algo") && (*q)["kv_cache_quant_algo"].is_string()
                         ? (*q)["kv_cache_quant_algo"].get<std::string>()
                         : std::string();
    s.kv_cache_fp8_ = kv == "FP8" || (qc && qc->contains("kv_cache_scheme") && !(*qc)["kv_cache_scheme"].is_null());
  } else if (method == "compressed-tensors") {
    std::string top_format = qc->value("format", std::string());
    auto cg = qc->find("config_groups");
    if (cg == qc->end() || !cg->is_object() || cg->empty())
      fail<ModelError>("{}: compressed-tensors quantization_config needs a non-empty 'config_groups'", cfg_where);
    std::vector<std::string> names;
    for (auto it = cg->begin(); it != cg->end(); ++it) {
      const json& g = *it;
      std::string gwhere = fmt::format("{}: config_groups.{}", cfg_where, it.key());
      std::string f = g.is_object() ? g.value("format", top_format) : top_format;
      StoredLayout layout;
      const json* w = g.is_object() && g.contains("weights") ? &g["weights"] : nullptr;
      const int64_t group_size = w && (*w).contains("group_size") && (*w)["group_size"].is_number_integer()
                                     ? (*w)["group_size"].get<int64_t>()
                                     : -1;
      if (f == "nvfp4-pack-quantized") {
        layout = StoredLayout::Nvfp4Ct;
        if (group_size != 16) fail<ModelError>("{}: weights.group_size = {} for nvfp4: expected 16", gwhere, group_size);
      } else if (f == "mxfp4-pack-quantized") {
        layout = StoredLayout::Mxfp4Ct;
        if (group_size != 32) fail<ModelError>("{}: weights.group_size = {} for mxfp4: expected 32", gwhere, group_size);
      } else {
        fail<ModelError>("{}: format '{}' is not supported: expected 'nvfp4-pack-quantized' or 'mxfp4-pack-quantized'",
                         gwhere, f);
      }
      Group grp{{}, layout};
      for (const auto& t : string_list(g, "targets", gwhere)) {
        if (t.rfind("re:", 0) == 0) {
          Pattern p{Pattern::Regex, t.substr(3), std::nullopt};
          try {
            p.re.emplace(p.text, std::regex::ECMAScript);
          } catch (const std::regex_error& e) {
            fail<ModelError>("{}: target '{}' is not a valid regular expression: {}", gwhere, t, e.what());
          }
          grp.targets.push_back(std::move(p));
        } else if (t == "Linear") {
          grp.targets.push_back({Pattern::ClassName, t, std::nullopt});
        } else {
          grp.targets.push_back({Pattern::Exact, t, std::nullopt});
        }
      }
      if (grp.targets.empty()) fail<ModelError>("{}: 'targets' is empty", gwhere);
      names.push_back(std::string(stored_layout_name(layout)));
      s.groups_.push_back(std::move(grp));
    }
    s.description_ = fmt::format("{}", fmt::join(names, " + "));
    for (const auto& m : string_list(*qc, "ignore", cfg_where)) {
      if (m.rfind("re:", 0) == 0) exclude(Pattern::Regex, m.substr(3));
      else exclude(Pattern::Exact, m);
    }
    s.kv_cache_fp8_ = qc->contains("kv_cache_scheme") && !(*qc)["kv_cache_scheme"].is_null();
  } else {
    fail<ModelError>(
        "{}: quantization_config.quant_method = '{}' is not supported: expected 'fp8', 'modelopt' or "
        "'compressed-tensors'",
        cfg_where, method);
  }
  return s;
}

std::string QuantScheme::exclusion_reason(const std::string& module) const {
  for (size_t i = 0; i < exclusions_.size(); ++i)
    if (exclusions_[i].matches(module)) return fmt::format("excluded by '{}'", exclusion_text_[i]);
  return {};
}

StoredLayout QuantScheme::layout_for(const std::string& module) const {
  if (!exclusion_reason(module).empty()) return StoredLayout::Dense;
  if (mixed_) {
    for (const auto& [name, layout] : per_module_)
      if (name == module) return layout;
    return StoredLayout::Dense;
  }
  for (const auto& g : groups_)
    for (const auto& t : g.targets)
      if (t.matches(module)) return g.layout;
  return StoredLayout::Dense;
}

namespace {

const TensorRef& expect_tensor(const Checkpoint& ckpt, const std::string& module, const std::string& suffix,
                               StoredLayout layout, std::initializer_list<DType> dtypes,
                               const std::vector<int64_t>& shape, std::vector<std::string>* used) {
  const std::string name = module + "." + suffix;
  const TensorRef* t = ckpt.find(name);
  auto expected_dtypes = [&] {
    std::string s;
    for (auto d : dtypes) s += (s.empty() ? "" : "|") + std::string(dtype_name(d));
    return s;
  };
  if (!t) {
    std::string found;
    if (auto l = layout_from_tensors(ckpt, module)) found = fmt::format(" (the module's tensors look {})", stored_layout_name(*l));
    fail<ModelError>("{}: missing tensor '{}': {} expects {} {}{}", ckpt.dir().string(), name,
                     stored_layout_name(layout), expected_dtypes(), fmt::format("[{}]", fmt::join(shape, ", ")), found);
  }
  bool dtype_ok = false;
  for (auto d : dtypes) dtype_ok |= t->dtype == d;
  if (!dtype_ok || t->shape != shape)
    fail<ModelError>("{}: tensor '{}': {} expects {} [{}], found {} {}", t->file, name, stored_layout_name(layout),
                     expected_dtypes(), fmt::join(shape, ", "), dtype_name(t->dtype), t->shape_str());
  if (used) used->push_back(name);
  return *t;
}

// A scalar F32 stored as shape [] or [1].
float expect_scalar(const Checkpoint& ckpt, const std::string& module, const std::string& suffix,
                    StoredLayout layout, std::vector<std::string>* used, bool required) {
  const std::string name = module + "." + suffix;
  const TensorRef* t = ckpt.find(name);
  if (!t) {
    if (!required) return 0.0f;
    fail<ModelError>("{}: missing tensor '{}': {} expects an F32 scalar", ckpt.dir().string(), name,
                     stored_layout_name(layout));
  }
  if (t->dtype != DType::F32 || t->numel() != 1 || t->shape.size() > 1)
    fail<ModelError>("{}: tensor '{}': expected an F32 scalar ([] or [1]), found {} {}", t->file, name,
                     dtype_name(t->dtype), t->shape_str());
  float v;
  std::memcpy(&v, t->data, 4);
  if (!std::isfinite(v) || v <= 0)
    fail<ModelError>("{}: tensor '{}': expected a positive finite scale, found {}", t->file, name, v);
  if (used) used->push_back(name);
  return v;
}

}  // namespace

std::optional<StoredLayout> layout_from_tensors(const Checkpoint& ckpt, const std::string& module) {
  auto has = [&](const char* s) { return ckpt.find(module + "." + s) != nullptr; };
  if (has("weight_packed")) {
    if (has("weight_global_scale")) return StoredLayout::Nvfp4Ct;
    return StoredLayout::Mxfp4Ct;
  }
  if (const TensorRef* w = ckpt.find(module + ".weight")) {
    if (w->dtype == DType::U8 && has("weight_scale_2")) return StoredLayout::Nvfp4ModelOpt;
    if (w->dtype == DType::F8_E4M3 || w->dtype == DType::F8_E5M2) return StoredLayout::Fp8Block;
    if (w->dtype == DType::BF16 || w->dtype == DType::F16 || w->dtype == DType::F32) return StoredLayout::Dense;
  }
  return std::nullopt;
}

WeightView bind_linear(const Checkpoint& ckpt, const QuantScheme& scheme, const std::string& module, int64_t rows,
                       int64_t cols, std::vector<std::string>* used) {
  const StoredLayout layout = scheme.layout_for(module);
  const LayoutSpec& spec = layout_spec(layout);
  WeightView w;
  w.name = module;
  w.rows = rows;
  w.cols = cols;
  w.format = spec.format;
  // A dense tensor where a quantized one is declared (or the reverse) is named precisely.
  if (auto found = layout_from_tensors(ckpt, module); found && *found != layout)
    fail<ModelError>("{}: module '{}': quantization config declares {} but the checkpoint stores {}",
                     ckpt.dir().string(), module, stored_layout_name(layout), stored_layout_name(*found));
  if (spec.format != WeightFormat::Dense && spec.format != WeightFormat::Fp8Block && cols % spec.group)
    fail<ModelError>("{}: module '{}': {} needs in-features divisible by {}, found {}", ckpt.dir().string(), module,
                     stored_layout_name(layout), spec.group, cols);
  const std::initializer_list<DType> dense = {DType::BF16, DType::F16, DType::F32}, fp8 = {DType::F8_E4M3, DType::F8_E5M2},
                                     packed = {DType::U8};
  const auto& t = expect_tensor(ckpt, module, std::string(spec.weight), layout,
                                spec.format == WeightFormat::Dense ? dense : spec.format == WeightFormat::Fp8Block ? fp8 : packed,
                                weight_shape(layout, rows, cols), used);
  w.dtype = t.dtype;
  w.data = t.data;
  w.row_bytes = weight_shape(layout, rows, cols)[1] * int64_t(dtype_size(t.dtype));
  if (!spec.scale.empty()) {
    const auto block = scheme.fp8_block();
    const auto shape = scale_shape(layout, rows, cols, block);
    const auto& sc = expect_tensor(ckpt, module, std::string(spec.scale), layout, {spec.scale_dtype}, shape, used);
    w.scales = sc.data;
    w.scale_stride = shape[1];
    w.block_rows = spec.format == WeightFormat::Fp8Block ? block.first : 1;
    w.block_cols = spec.format == WeightFormat::Fp8Block ? block.second : spec.group;
  }
  if (!spec.global_scale.empty()) {
    // ModelOpt weight_scale_2 multiplies; compressed-tensors weight_global_scale divides (spec §4).
    const float g = expect_scalar(ckpt, module, std::string(spec.global_scale), layout, used, true);
    w.global_scale = stored_scale(spec, g);
  }
  if (!spec.input_scale.empty()) {
    const float in = expect_scalar(ckpt, module, std::string(spec.input_scale), layout, used, false);
    w.input_scale = in == 0.0f ? 0.0f : stored_scale(spec, in);
  }
  return w;
}

}  // namespace m2
