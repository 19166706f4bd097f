// Typed access to the fields of a JSON request body: a wrong type is a 400 naming the field, expected
// and found. Absent and null fields are "not given". Unknown fields are ignored by the callers.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/units.h"
#include "server/api_error.h"

namespace m2 {

using json = nlohmann::json;

inline std::string json_type_name(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  return v.type_name();
}

[[noreturn]] inline void wrong_type(const std::string& field, const char* expected, const json& found) {
  throw ApiError(400, fmt::format("'{}' must be {}, found {}", field, expected, json_type_name(found)), field);
}

inline const json* field_ptr(const json& obj, const std::string& key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

inline std::optional<double> number_field(const json& obj, const std::string& key) {
  const json* v = field_ptr(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(key, "a number", *v);
  return v->get<double>();
}

inline std::optional<int64_t> int_field(const json& obj, const std::string& key) {
  const json* v = field_ptr(obj, key);
  if (!v) return std::nullopt;
  if (v->is_number_float())
    if (const auto i = whole_int64(v->get<double>())) return *i;
  if (!v->is_number_integer()) wrong_type(key, "an integer", *v);
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
    throw ApiError(400, fmt::format("'{}' is too large", key), key);
  return v->get<int64_t>();
}

inline std::optional<bool> bool_field(const json& obj, const std::string& key) {
  const json* v = field_ptr(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(key, "a boolean", *v);
  return v->get<bool>();
}

inline std::optional<std::string> string_field(const json& obj, const std::string& key) {
  const json* v = field_ptr(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) wrong_type(key, "a string", *v);
  return v->get<std::string>();
}

// An integer field narrowed to [lo, hi] (a range error names the field).
inline std::optional<int32_t> int_in(const json& obj, const std::string& key, int64_t lo, int64_t hi) {
  auto v = int_field(obj, key);
  if (v && (*v < lo || *v > hi))
    throw ApiError(400, fmt::format("'{}' = {} is out of range: expected {} .. {}", key, *v, lo, hi), key);
  return v ? std::optional<int32_t>(int32_t(*v)) : std::nullopt;
}

}  // namespace m2
