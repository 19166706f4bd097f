// Evaluation of the syntax tree (interpreter.cpp) and the built-in filters, tests and methods
// (builtins.cpp).
#pragma once
#include <string>

#include "text/jinja/ast.h"
#include "text/jinja/template.h"

namespace m2::jinja {

struct Context {
  std::string where;
  std::vector<std::shared_ptr<Dict>> frames;  // [0] globals, [1] template top level, then inner scopes
  Value lookup(const std::string& name) const;
  void set(const std::string& name, Value v) { frames.back()->set(name, std::move(v)); }
  [[noreturn]] void error(int line, const std::string& msg) const;
};

enum class Flow { Normal, Break, Continue };

Flow exec(const Body& body, Context& ctx, std::string& out);
Value eval(const Expr& e, Context& ctx);

// builtins.cpp
Value get_attr(const Value& obj, const std::string& name, Context& ctx, int line);
Value get_item(const Value& obj, const Value& key, Context& ctx, int line);
Value apply_filter(const std::string& name, const Value& v, Args& args, Context& ctx, int line);
bool apply_test(const std::string& name, const Value& v, Args& args, Context& ctx, int line);
Value make_globals_function(const std::string& name);  // range, namespace, dict, raise_exception, ...
std::vector<Value> iterate(const Value& v, Context& ctx, int line);
size_t length_of(const Value& v, Context& ctx, int line);

}  // namespace m2::jinja
