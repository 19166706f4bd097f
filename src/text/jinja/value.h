// Values of the Jinja interpreter, with Python's semantics for truth, equality, str() and repr().
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>
#include <vector>

namespace m2::jinja {

struct Value;
using List = std::vector<Value>;
// Insertion-ordered string-keyed mapping (Python dict).
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const;
  Value* find(const std::string& key);
  void set(const std::string& key, Value v);
};
struct Context;
// Positional and keyword arguments of a call.
struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
  const Value* get(size_t index, const char* name) const;  // positional index, or the keyword
};
using Function = std::function<Value(Args&, Context&)>;

struct Undefined {
  std::string name;  // what was looked up, for error messages
};
struct None {};
struct Namespace {
  std::shared_ptr<Dict> attrs;
};

struct Value {
  std::variant<Undefined, None, bool, int64_t, double, std::string, std::shared_ptr<List>, std::shared_ptr<Dict>,
               std::shared_ptr<Function>, Namespace>
      v;
  bool tuple = false;  // a list that Python would hold as a tuple (repr "(a, b)")

  Value() : v(Undefined{}) {}
  Value(None) : v(None{}) {}
  Value(bool b) : v(b) {}
  Value(int64_t i) : v(i) {}
  Value(int i) : v(int64_t(i)) {}
  Value(double d) : v(d) {}
  Value(std::string s) : v(std::move(s)) {}
  Value(const char* s) : v(std::string(s)) {}
  Value(List l) : v(std::make_shared<List>(std::move(l))) {}
  Value(Dict d) : v(std::make_shared<Dict>(std::move(d))) {}
  Value(Function f) : v(std::make_shared<Function>(std::move(f))) {}
  static Value make_tuple(List l) {
    Value x(std::move(l));
    x.tuple = true;
    return x;
  }
  static Value undefined(std::string name) {
    Value x;
    x.v = Undefined{std::move(name)};
    return x;
  }

  bool is_undefined() const { return std::holds_alternative<Undefined>(v); }
  bool is_none() const { return std::holds_alternative<None>(v); }
  bool is_bool() const { return std::holds_alternative<bool>(v); }
  bool is_int() const { return std::holds_alternative<int64_t>(v); }
  bool is_float() const { return std::holds_alternative<double>(v); }
  bool is_number() const { return is_int() || is_float(); }
  bool is_string() const { return std::holds_alternative<std::string>(v); }
  bool is_list() const { return std::holds_alternative<std::shared_ptr<List>>(v); }
  bool is_dict() const { return std::holds_alternative<std::shared_ptr<Dict>>(v); }
  bool is_callable() const { return std::holds_alternative<std::shared_ptr<Function>>(v); }
  bool is_namespace() const { return std::holds_alternative<Namespace>(v); }

  const std::string& str() const { return std::get<std::string>(v); }
  List& list() const { return *std::get<std::shared_ptr<List>>(v); }
  Dict& dict() const { return *std::get<std::shared_ptr<Dict>>(v); }
  Function& fn() const { return *std::get<std::shared_ptr<Function>>(v); }
  int64_t as_int() const { return is_bool() ? int64_t(std::get<bool>(v)) : std::get<int64_t>(v); }
  double as_double() const { return is_float() ? std::get<double>(v) : double(as_int()); }

  bool truthy() const;
  std::string type_name() const;  // Python's type name, for errors
};

bool equal(const Value& a, const Value& b);
// Python ordering for numbers and strings (and lists element-wise); throws for other pairs.
int compare(const Value& a, const Value& b);
std::string to_str(const Value& v);   // Python str()
std::string repr(const Value& v);     // Python repr()
std::string py_float(double d);        // Python's repr of a float: shortest round-trip, "1.0" not "1"
// json.dumps(v, ensure_ascii=False) with Python's separators (or `indent` spaces) and key order.
std::string to_json(const Value& v, int indent = -1, bool sort_keys = false, int depth = 0);
Value from_json(const nlohmann::ordered_json& j);

}  // namespace m2::jinja
