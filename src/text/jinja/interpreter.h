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

// The execution budget of one render: a template (or the data it is given) cannot loop, print,
// build values or recurse without bound. Exceeding one is a TemplateError naming the line.
struct Limits {
  static constexpr int64_t kMaxSteps = 10'000'000;     // statements executed + expressions evaluated
  static constexpr size_t kMaxBytes = size_t(64) << 20;  // the output, and any one string built
  static constexpr int64_t kMaxItems = 1'000'000;      // range() and list repetition
  static constexpr int kMaxMacroDepth = 100;
};
// Starts a render's budget (ChatTemplate::render).
void reset_budget();
// Namespaces made during the current render: a namespace can hold itself (ns.a = [ns]), a cycle of
// shared pointers; the render clears every one it made when it ends, so cycles never outlive it.
void track_namespace(const std::shared_ptr<Dict>& attrs);
void release_namespaces();
// One step of work at `line`; throws once the render has taken Limits::kMaxSteps.
void charge_step(const Context& ctx, int line);
// `n` steps at once (iterating n items); builtins without a line use charge_items (InvalidArgument,
// the caller adds the line).
void charge_steps(const Context& ctx, int line, int64_t n);
void charge_items(int64_t n);
// Throws InvalidArgument naming `what` when a string of `bytes` would pass Limits::kMaxBytes
// (builtins: the caller adds the line).
void check_bytes(uint64_t bytes, const char* what);

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
