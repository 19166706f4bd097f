#include "text/jinja/value.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>

#include "core/error.h"
#include "text/utf8.h"

namespace m2::jinja {

const Value* Dict::find(const std::string& key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}
Value* Dict::find(const std::string& key) {
  for (auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}
void Dict::set(const std::string& key, Value v) {
  if (Value* x = find(key)) *x = std::move(v);
  else items.emplace_back(key, std::move(v));
}

const Value* Args::get(size_t index, const char* name) const {
  if (index < positional.size()) return &positional[index];
  for (const auto& [k, v] : keyword)
    if (k == name) return &v;
  return nullptr;
}

bool Value::truthy() const {
  return std::visit(
      [](const auto& x) -> bool {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, Undefined> || std::is_same_v<T, None>) return false;
        else if constexpr (std::is_same_v<T, bool>) return x;
        else if constexpr (std::is_same_v<T, int64_t>) return x != 0;
        else if constexpr (std::is_same_v<T, double>) return x != 0.0;
        else if constexpr (std::is_same_v<T, std::string>) return !x.empty();
        else if constexpr (std::is_same_v<T, std::shared_ptr<List>>) return !x->empty();
        else if constexpr (std::is_same_v<T, std::shared_ptr<Dict>>) return !x->items.empty();
        else return true;
      },
      v);
}

std::string Value::type_name() const {
  static const char* names[] = {"Undefined", "NoneType", "bool", "int", "float", "str", "list", "dict", "function", "Namespace"};
  return names[v.index()];
}

bool equal(const Value& a, const Value& b) {
  if (a.is_number() || a.is_bool()) {
    if (!(b.is_number() || b.is_bool())) return false;
    if (a.is_float() || b.is_float()) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.v.index() != b.v.index()) return false;
  if (a.is_undefined() || a.is_none()) return true;
  if (a.is_string()) return a.str() == b.str();
  if (a.is_list()) {
    const List &x = a.list(), &y = b.list();
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i)
      if (!equal(x[i], y[i])) return false;
    return true;
  }
  if (a.is_dict()) {
    const Dict &x = a.dict(), &y = b.dict();
    if (x.items.size() != y.items.size()) return false;
    for (const auto& [k, v] : x.items) {
      const Value* o = y.find(k);
      if (!o || !equal(v, *o)) return false;
    }
    return true;
  }
  if (a.is_namespace()) return std::get<Namespace>(a.v).attrs == std::get<Namespace>(b.v).attrs;
  return a.is_callable() && &a.fn() == &b.fn();
}

int compare(const Value& a, const Value& b) {
  if ((a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool())) {
    double x = a.as_double(), y = b.as_double();
    if (a.is_int() && b.is_int()) return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int();
    return x < y ? -1 : x > y;
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str() ? -1 : a.str() > b.str();
  if (a.is_list() && b.is_list()) {
    const List &x = a.list(), &y = b.list();
    for (size_t i = 0; i < std::min(x.size(), y.size()); ++i)
      if (int c = compare(x[i], y[i])) return c;
    return x.size() < y.size() ? -1 : x.size() > y.size();
  }
  fail<InvalidArgument>("'<' not supported between instances of '{}' and '{}'", a.type_name(), b.type_name());
}

std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  // Shortest round-trip digits (as Python's repr), laid out as Python does: fixed for decimal
  // exponents in [-4, 16), otherwise d.ddde±XX.
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  size_t e = sci.find('e');
  int exp10 = std::stoi(sci.substr(e + 1));
  std::string digits;
  for (char ch : sci.substr(0, e))
    if (std::isdigit((unsigned char)ch)) digits += ch;
  const std::string sign = std::signbit(d) ? "-" : "";
  if (exp10 >= -4 && exp10 < 16) {
    std::string s;
    if (exp10 < 0) s = "0." + std::string(size_t(-exp10 - 1), '0') + digits;
    else if (size_t(exp10) + 1 >= digits.size()) s = digits + std::string(size_t(exp10) + 1 - digits.size(), '0') + ".0";
    else s = digits.substr(0, size_t(exp10) + 1) + "." + digits.substr(size_t(exp10) + 1);
    return sign + s;
  }
  std::string m = digits.substr(0, 1);
  if (digits.size() > 1) m += "." + digits.substr(1);
  return sign + m + fmt::format("e{}{:02d}", exp10 < 0 ? '-' : '+', std::abs(exp10));
}

namespace {
std::string repr_string(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == q || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += char(c);
  }
  return out + q;
}

void json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += char(c);
    }
  }
  out += '"';
}
}  // namespace

std::string to_str(const Value& v) {
  if (v.is_undefined()) return "";
  if (v.is_string()) return v.str();
  return repr(v);
}

std::string repr(const Value& v) {
  return std::visit(
      [&](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, Undefined>) return "";
        else if constexpr (std::is_same_v<T, None>) return "None";
        else if constexpr (std::is_same_v<T, bool>) return x ? "True" : "False";
        else if constexpr (std::is_same_v<T, int64_t>) return std::to_string(x);
        else if constexpr (std::is_same_v<T, double>) return py_float(x);
        else if constexpr (std::is_same_v<T, std::string>) return repr_string(x);
        else if constexpr (std::is_same_v<T, std::shared_ptr<List>>) {
          std::string s = v.tuple ? "(" : "[";
          for (size_t i = 0; i < x->size(); ++i) s += (i ? ", " : "") + repr((*x)[i]);
          if (v.tuple && x->size() == 1) s += ",";
          return s + (v.tuple ? ")" : "]");
        } else if constexpr (std::is_same_v<T, std::shared_ptr<Dict>>) {
          std::string s = "{";
          for (size_t i = 0; i < x->items.size(); ++i)
            s += (i ? ", " : "") + repr_string(x->items[i].first) + ": " + repr(x->items[i].second);
          return s + "}";
        } else if constexpr (std::is_same_v<T, Namespace>) return "<Namespace>";
        else return "<function>";
      },
      v.v);
}

std::string to_json(const Value& v, int indent, bool sort_keys, int depth) {
  std::string out;
  auto newline = [&](int d) {
    if (indent >= 0) out += "\n" + std::string(size_t(indent * d), ' ');
  };
  if (v.is_none() || v.is_undefined()) return "null";
  if (v.is_bool()) return std::get<bool>(v.v) ? "true" : "false";
  if (v.is_int()) return std::to_string(v.as_int());
  if (v.is_float()) {
    double d = v.as_double();
    if (std::isnan(d)) return "NaN";
    if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
    return py_float(d);
  }
  if (v.is_string()) {
    json_string(out, v.str());
    return out;
  }
  const char* item_sep = indent >= 0 ? "," : ", ";
  if (v.is_list()) {
    const List& l = v.list();
    if (l.empty()) return "[]";
    out += "[";
    for (size_t i = 0; i < l.size(); ++i) {
      if (i) out += item_sep;
      newline(depth + 1);
      out += to_json(l[i], indent, sort_keys, depth + 1);
    }
    newline(depth);
    return out + "]";
  }
  if (v.is_dict() || v.is_namespace()) {
    const Dict& d = v.is_dict() ? v.dict() : *std::get<Namespace>(v.v).attrs;
    if (d.items.empty()) return "{}";
    std::vector<const std::pair<std::string, Value>*> items;
    for (const auto& it : d.items) items.push_back(&it);
    if (sort_keys) std::sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
    out += "{";
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += item_sep;
      newline(depth + 1);
      json_string(out, items[i]->first);
      out += ": " + to_json(items[i]->second, indent, sort_keys, depth + 1);
    }
    newline(depth);
    return out + "}";
  }
  fail<InvalidArgument>("Object of type {} is not JSON serializable", v.type_name());
}

Value from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value(None{});
    case nlohmann::ordered_json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: return Value(int64_t(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& x : j) l.push_back(from_json(x));
      return Value(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.items.emplace_back(it.key(), from_json(*it));
      return Value(std::move(d));
    }
    default: return Value(None{});
  }
}

}  // namespace m2::jinja
