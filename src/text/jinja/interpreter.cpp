#include "text/jinja/interpreter.h"

#include <cmath>

#include "text/utf8.h"

namespace m2::jinja {

Value Context::lookup(const std::string& name) const {
  for (auto it = frames.rbegin(); it != frames.rend(); ++it)
    if (const Value* v = (*it)->find(name)) return *v;
  return Value::undefined(name);
}

void Context::error(int line, const std::string& msg) const {
  fail<TemplateError>("{} line {}: {}", where, line, msg);
}

namespace {
thread_local int64_t steps_left = Limits::kMaxSteps;
}

void reset_budget() { steps_left = Limits::kMaxSteps; }

namespace {
thread_local std::vector<std::shared_ptr<Dict>> render_namespaces;
}

void track_namespace(const std::shared_ptr<Dict>& attrs) { render_namespaces.push_back(attrs); }

void release_namespaces() {
  std::vector<std::shared_ptr<Dict>> made;
  made.swap(render_namespaces);
  for (auto& d : made) d->items.clear();  // breaks any cycle through the namespace
}

void charge_step(const Context& ctx, int line) {
  if (--steps_left < 0)
    ctx.error(line, fmt::format("the template exceeded its budget of {} steps (a loop without bound?)", Limits::kMaxSteps));
}

void charge_steps(const Context& ctx, int line, int64_t n) {
  steps_left -= n;
  charge_step(ctx, line);
}

void charge_items(int64_t n) {
  steps_left -= n;
  if (steps_left < 0) fail<InvalidArgument>("the template exceeded its budget of {} steps (a loop without bound?)", Limits::kMaxSteps);
}

void check_bytes(uint64_t bytes, const char* what) {
  if (bytes > Limits::kMaxBytes)
    fail<InvalidArgument>("{} would build {} bytes, over the template limit of {}", what, bytes, Limits::kMaxBytes);
}

namespace {

Args eval_args(const Expr& e, Context& ctx) {
  Args a;
  for (const auto& x : e.items) a.positional.push_back(eval(*x, ctx));
  for (size_t i = 0; i < e.kw_names.size(); ++i) a.keyword.emplace_back(e.kw_names[i], eval(*e.kw_values[i], ctx));
  return a;
}

void require_defined(const Value& v, const Context& ctx, int line, const char* what) {
  if (v.is_undefined()) ctx.error(line, fmt::format("'{}' is undefined ({})", std::get<Undefined>(v.v).name, what));
}

Value arithmetic(const std::string& op, const Value& a, const Value& b, Context& ctx, int line) {
  const auto bounded = [&](uint64_t bytes) {
    if (bytes > Limits::kMaxBytes)
      ctx.error(line, fmt::format("'{}' would build a string of {} bytes, over the template limit of {}", op, bytes, Limits::kMaxBytes));
  };
  if (op == "~") {
    std::string r = to_str(a);
    const std::string rb = to_str(b);
    bounded(uint64_t(r.size()) + rb.size());
    return Value(r + rb);
  }
  require_defined(a, ctx, line, "operand");
  require_defined(b, ctx, line, "operand");
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      bounded(uint64_t(a.str().size()) + b.str().size());
      return Value(a.str() + b.str());
    }
    if (a.is_list() && b.is_list()) {
      List l = a.list();
      l.insert(l.end(), b.list().begin(), b.list().end());
      return Value(std::move(l));
    }
  }
  if (op == "*" && ((a.is_string() && b.is_int()) || (a.is_int() && b.is_string()))) {
    const std::string& s = a.is_string() ? a.str() : b.str();
    const int64_t n = a.is_int() ? a.as_int() : b.as_int();
    if (n > 0 && !s.empty()) bounded(uint64_t(n) > Limits::kMaxBytes ? uint64_t(n) : uint64_t(n) * s.size());
    std::string r;
    for (int64_t i = 0; i < n; ++i) r += s;
    return Value(r);
  }
  if (op == "%" && a.is_string()) {  // printf-style: %s and %d with one value or a tuple
    std::vector<Value> vals = b.is_list() ? b.list() : std::vector<Value>{b};
    std::string r;
    size_t k = 0;
    const std::string& f = a.str();
    for (size_t i = 0; i < f.size(); ++i) {
      if (f[i] == '%' && i + 1 < f.size()) {
        char c = f[++i];
        if (c == '%') r += '%';
        else if (k < vals.size()) r += (c == 'd' ? std::to_string(vals[k++].as_int()) : to_str(vals[k++]));
        else ctx.error(line, "not enough arguments for format string");
      } else {
        r += f[i];
      }
    }
    return Value(r);
  }
  if (!(a.is_number() || a.is_bool()) || !(b.is_number() || b.is_bool()))
    ctx.error(line, fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, a.type_name(), b.type_name()));
  const bool ints = !a.is_float() && !b.is_float();
  if (op == "/") {
    if (b.as_double() == 0) ctx.error(line, "division by zero");
    return Value(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (b.as_double() == 0) ctx.error(line, "integer division or modulo by zero");
    if (ints) {
      if (a.as_int() == INT64_MIN && b.as_int() == -1) ctx.error(line, fmt::format("integer overflow in '{}'", op));
      int64_t x = a.as_int(), y = b.as_int(), q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) {
        --q;
        r += y;
      }
      return op == "//" ? Value(q) : Value(r);
    }
    double x = a.as_double(), y = b.as_double(), q = std::floor(x / y);
    return op == "//" ? Value(q) : Value(x - q * y);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {  // by squaring (int64 wraps where Python grows)
      uint64_t r = 1, base = uint64_t(a.as_int());
      for (uint64_t e = uint64_t(b.as_int()); e; e >>= 1, base *= base)
        if (e & 1) r *= base;
      return Value(int64_t(r));
    }
    return Value(std::pow(a.as_double(), b.as_double()));
  }
  if (ints) {  // Python's integers grow; m2's are 64-bit, and overflowing one is an error
    const int64_t x = a.as_int(), y = b.as_int();
    int64_t r = 0;
    const bool over = op == "+" ? __builtin_add_overflow(x, y, &r) : op == "-" ? __builtin_sub_overflow(x, y, &r)
                                                                        : __builtin_mul_overflow(x, y, &r);
    if (over) ctx.error(line, fmt::format("integer overflow in {} {} {}", x, op, y));
    return Value(r);
  }
  double x = a.as_double(), y = b.as_double();
  return op == "+" ? Value(x + y) : op == "-" ? Value(x - y) : Value(x * y);
}

bool contains(const Value& container, const Value& item, Context& ctx, int line) {
  if (container.is_string()) {
    if (!item.is_string()) ctx.error(line, "'in <string>' requires string as left operand");
    return container.str().find(item.str()) != std::string::npos;
  }
  if (container.is_list()) {
    for (const auto& x : container.list())
      if (equal(x, item)) return true;
    return false;
  }
  if (container.is_dict()) return item.is_string() && container.dict().find(item.str()) != nullptr;
  if (container.is_undefined()) ctx.error(line, "argument of type 'Undefined' is not iterable");
  ctx.error(line, fmt::format("argument of type '{}' is not iterable", container.type_name()));
}

Value slice(const Value& obj, const Expr& e, Context& ctx) {
  auto bound = [&](size_t i) -> std::optional<int64_t> {
    if (!e.items[i]) return std::nullopt;
    Value v = eval(*e.items[i], ctx);
    if (v.is_none()) return std::nullopt;
    if (!v.is_int()) ctx.error(e.line, "slice indices must be integers");
    return v.as_int();
  };
  std::optional<int64_t> start = bound(0), stop = bound(1), step_opt = bound(2);
  int64_t step = step_opt.value_or(1);
  if (step == 0) ctx.error(e.line, "slice step cannot be zero");
  // Elements: list items, or code points of a string.
  std::vector<std::string> cps;
  const bool is_str = obj.is_string();
  if (is_str) {
    const std::string& s = obj.str();
    for (size_t i = 0; i < s.size();) {
      size_t l = size_t(utf8_len((unsigned char)s[i]));
      cps.push_back(s.substr(i, l));
      i += l;
    }
  } else if (!obj.is_list()) {
    ctx.error(e.line, fmt::format("'{}' object is not subscriptable", obj.type_name()));
  }
  const int64_t n = is_str ? int64_t(cps.size()) : int64_t(obj.list().size());
  auto norm = [&](std::optional<int64_t> x, int64_t def) {
    if (!x) return def;
    int64_t v = *x < 0 ? *x + n : *x;
    if (step > 0) return std::clamp<int64_t>(v, 0, n);
    return std::clamp<int64_t>(v, -1, n - 1);
  };
  int64_t b = norm(start, step > 0 ? 0 : n - 1), en = norm(stop, step > 0 ? n : -1);
  std::string s;
  List l;
  for (int64_t i = b; step > 0 ? i < en : i > en; i += step) {
    if (is_str) s += cps[size_t(i)];
    else l.push_back(obj.list()[size_t(i)]);
  }
  return is_str ? Value(s) : Value(std::move(l));
}

}  // namespace

Value eval(const Expr& e, Context& ctx) {
  charge_step(ctx, e.line);
  switch (e.kind) {
    case Expr::Literal: return e.value;
    case Expr::Name: {
      Value v = ctx.lookup(e.name);
      if (v.is_undefined()) {
        Value g = make_globals_function(e.name);
        if (!g.is_undefined()) return g;
      }
      return v;
    }
    case Expr::ListLit:
    case Expr::TupleLit: {
      List l;
      for (const auto& x : e.items) l.push_back(eval(*x, ctx));
      return e.kind == Expr::TupleLit ? Value::make_tuple(std::move(l)) : Value(std::move(l));
    }
    case Expr::DictLit: {
      Dict d;
      for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
        Value k = eval(*e.items[i], ctx);
        d.set(to_str(k), eval(*e.items[i + 1], ctx));
      }
      return Value(std::move(d));
    }
    case Expr::Attr: {
      Value obj = eval(*e.a, ctx);
      require_defined(obj, ctx, e.line, "attribute access");
      return get_attr(obj, e.name, ctx, e.line);
    }
    case Expr::Item: {
      Value obj = eval(*e.a, ctx);
      require_defined(obj, ctx, e.line, "subscript");
      return get_item(obj, eval(*e.b, ctx), ctx, e.line);
    }
    case Expr::Slice: {
      Value obj = eval(*e.a, ctx);
      require_defined(obj, ctx, e.line, "slice");
      return slice(obj, e, ctx);
    }
    case Expr::Call: {
      Value f = eval(*e.a, ctx);
      if (!f.is_callable()) {
        if (f.is_undefined()) ctx.error(e.line, fmt::format("'{}' is undefined", std::get<Undefined>(f.v).name));
        ctx.error(e.line, fmt::format("'{}' object is not callable", f.type_name()));
      }
      Args args = eval_args(e, ctx);
      try {
        return f.fn()(args, ctx);
      } catch (const TemplateError&) {
        throw;
      } catch (const Error& err) {
        ctx.error(e.line, err.what());
      }
    }
    case Expr::Filter: {
      Value v = eval(*e.a, ctx);
      Args args = eval_args(e, ctx);
      return apply_filter(e.name, v, args, ctx, e.line);
    }
    case Expr::Test: {
      Value v = eval(*e.a, ctx);
      Args args = eval_args(e, ctx);
      return Value(apply_test(e.name, v, args, ctx, e.line) != e.negated);
    }
    case Expr::Neg:
    case Expr::Pos: {
      Value v = eval(*e.a, ctx);
      if (v.is_int() || v.is_bool()) {
        if (e.kind == Expr::Neg && v.as_int() == INT64_MIN) ctx.error(e.line, "integer overflow in unary '-'");
        return Value(e.kind == Expr::Neg ? -v.as_int() : v.as_int());
      }
      if (v.is_float()) return Value(e.kind == Expr::Neg ? -v.as_double() : v.as_double());
      ctx.error(e.line, fmt::format("bad operand type for unary -: '{}'", v.type_name()));
    }
    case Expr::Not: return Value(!eval(*e.a, ctx).truthy());
    case Expr::And: {
      Value a = eval(*e.a, ctx);
      return a.truthy() ? eval(*e.b, ctx) : a;
    }
    case Expr::Or: {
      Value a = eval(*e.a, ctx);
      return a.truthy() ? a : eval(*e.b, ctx);
    }
    case Expr::Binary: return arithmetic(e.name, eval(*e.a, ctx), eval(*e.b, ctx), ctx, e.line);
    case Expr::Compare: {
      Value left = eval(*e.items[0], ctx);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value right = eval(*e.items[i + 1], ctx);
        const std::string& op = e.ops[i];
        bool r;
        if (op == "==") r = equal(left, right);
        else if (op == "!=") r = !equal(left, right);
        else if (op == "in") r = contains(right, left, ctx, e.line);
        else if (op == "not in") r = !contains(right, left, ctx, e.line);
        else {
          int c;
          try {
            c = compare(left, right);
          } catch (const Error& err) {
            ctx.error(e.line, err.what());
          }
          r = op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0;
        }
        if (!r) return Value(false);
        left = std::move(right);
      }
      return Value(true);
    }
    case Expr::Cond: {
      if (eval(*e.a, ctx).truthy()) return eval(*e.b, ctx);
      return e.c ? eval(*e.c, ctx) : Value::undefined("inline if");
    }
  }
  return Value();
}

namespace {

Value make_macro(const Node& n, Context& def_ctx) {
  const Node* node = &n;
  // The defining scopes, seen live; held weakly because the macro itself is stored in one of them.
  std::vector<std::weak_ptr<Dict>> root(def_ctx.frames.begin(), def_ctx.frames.end());
  std::string where = def_ctx.where;
  return Value(Function([node, root, where](Args& args, Context& caller_ctx) -> Value {
    thread_local int depth = 0;  // macros may recurse, but not without bound
    struct Guard {
      Guard() { ++depth; }
      ~Guard() { --depth; }
    } guard;
    if (depth > Limits::kMaxMacroDepth)
      caller_ctx.error(node->line, fmt::format("macro '{}' recursed more than {} deep", node->name, Limits::kMaxMacroDepth));
    Context ctx{where, {}};
    for (const auto& f : root) {
      auto frame = f.lock();
      if (!frame) caller_ctx.error(node->line, fmt::format("macro '{}' called after its template finished", node->name));
      ctx.frames.push_back(std::move(frame));
    }
    auto frame = std::make_shared<Dict>();
    List varargs;
    for (size_t i = 0; i < args.positional.size(); ++i) {
      if (i < node->params.size()) frame->set(node->params[i], args.positional[i]);
      else varargs.push_back(args.positional[i]);
    }
    Dict kwargs;
    for (auto& [k, v] : args.keyword) {
      if (std::find(node->params.begin(), node->params.end(), k) != node->params.end()) frame->set(k, v);
      else if (k == "caller") frame->set(k, v);
      else kwargs.set(k, v);
    }
    ctx.frames.push_back(frame);
    for (size_t i = 0; i < node->params.size(); ++i) {
      if (frame->find(node->params[i])) continue;
      if (node->defaults[i]) frame->set(node->params[i], eval(*node->defaults[i], ctx));
      else frame->set(node->params[i], Value::undefined(node->params[i]));
    }
    frame->set("varargs", Value(std::move(varargs)));
    frame->set("kwargs", Value(std::move(kwargs)));
    std::string out;
    exec(node->body, ctx, out);
    return Value(out);
  }));
}

void assign(Context& ctx, const Node& n, Value v) {
  if (n.attr_set) {
    Value ns = ctx.lookup(n.targets[0]);
    if (!ns.is_namespace()) ctx.error(n.line, fmt::format("cannot assign attribute on non-namespace object '{}'", n.targets[0]));
    std::get<Namespace>(ns.v).attrs->set(n.targets[1], std::move(v));
    return;
  }
  if (n.targets.size() == 1) {
    ctx.set(n.targets[0], std::move(v));
    return;
  }
  std::vector<Value> items = iterate(v, ctx, n.line);
  if (items.size() != n.targets.size())
    ctx.error(n.line, fmt::format("cannot unpack {} values into {} names", items.size(), n.targets.size()));
  for (size_t i = 0; i < items.size(); ++i) ctx.set(n.targets[i], items[i]);
}

}  // namespace

Flow exec(const Body& body, Context& ctx, std::string& out) {
  for (const auto& np : body) {
    const Node& n = *np;
    charge_step(ctx, n.line);
    if (out.size() > Limits::kMaxBytes)
      ctx.error(n.line, fmt::format("the template's output passed the limit of {} bytes", Limits::kMaxBytes));
    switch (n.kind) {
      case Node::Text: out += n.text; break;
      case Node::Output: out += to_str(eval(*n.expr, ctx)); break;
      case Node::If: {
        bool done = false;
        for (const auto& [cond, b] : n.branches) {
          if (eval(*cond, ctx).truthy()) {
            Flow f = exec(b, ctx, out);
            if (f != Flow::Normal) return f;
            done = true;
            break;
          }
        }
        if (!done) {
          Flow f = exec(n.else_body, ctx, out);
          if (f != Flow::Normal) return f;
        }
        break;
      }
      case Node::For: {
        Value seq = eval(*n.expr, ctx);
        std::vector<Value> items = iterate(seq, ctx, n.line);
        ctx.frames.push_back(std::make_shared<Dict>());
        if (n.filter_cond) {  // "for x in y if cond": the condition sees the loop variable
          std::vector<Value> kept;
          for (auto& it : items) {
            Node tmp;
            tmp.targets = n.targets;
            tmp.line = n.line;
            assign(ctx, tmp, it);
            if (eval(*n.filter_cond, ctx).truthy()) kept.push_back(it);
          }
          items = std::move(kept);
        }
        const int64_t len = int64_t(items.size());
        for (int64_t i = 0; i < len; ++i) {
          Node tmp;
          tmp.targets = n.targets;
          tmp.line = n.line;
          assign(ctx, tmp, items[size_t(i)]);
          Dict loop;
          loop.set("index", Value(i + 1));
          loop.set("index0", Value(i));
          loop.set("revindex", Value(len - i));
          loop.set("revindex0", Value(len - i - 1));
          loop.set("first", Value(i == 0));
          loop.set("last", Value(i == len - 1));
          loop.set("length", Value(len));
          loop.set("depth", Value(1));
          loop.set("depth0", Value(0));
          loop.set("previtem", i > 0 ? items[size_t(i - 1)] : Value::undefined("loop.previtem"));
          loop.set("nextitem", i + 1 < len ? items[size_t(i + 1)] : Value::undefined("loop.nextitem"));
          loop.set("cycle", Value(Function([i](Args& a, Context&) -> Value {
            if (a.positional.empty()) return Value::undefined("cycle");
            return a.positional[size_t(i) % a.positional.size()];
          })));
          ctx.set("loop", Value(std::move(loop)));
          Flow f = exec(n.body, ctx, out);
          if (f == Flow::Break) break;
        }
        ctx.frames.pop_back();
        if (len == 0) {
          Flow f = exec(n.else_body, ctx, out);
          if (f != Flow::Normal) return f;
        }
        break;
      }
      case Node::Set: assign(ctx, n, eval(*n.expr, ctx)); break;
      case Node::SetBlock: {
        std::string captured;
        exec(n.body, ctx, captured);
        Value v(captured);
        if (n.filter) {
          // The filter chain was parsed with an empty target; apply it from the innermost outwards.
          std::vector<const Expr*> chain;
          for (const Expr* f = n.filter.get(); f; f = f->a.get()) chain.push_back(f);
          for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
            Args args = eval_args(**it, ctx);
            v = apply_filter((*it)->name, v, args, ctx, (*it)->line);
          }
        }
        assign(ctx, n, v);
        break;
      }
      case Node::Macro: ctx.set(n.name, make_macro(n, ctx)); break;
      case Node::CallBlock: {
        const Node* node = &n;
        std::vector<std::weak_ptr<Dict>> frames(ctx.frames.begin(), ctx.frames.end());
        std::string where = ctx.where;
        Value caller(Function([node, frames, where](Args& args, Context&) -> Value {
          Context c{where, {}};
          for (const auto& f : frames)
            if (auto frame = f.lock()) c.frames.push_back(std::move(frame));
          auto frame = std::make_shared<Dict>();
          for (size_t i = 0; i < node->params.size(); ++i) {
            if (i < args.positional.size()) frame->set(node->params[i], args.positional[i]);
            else if (const Value* kv = args.get(size_t(-1), node->params[i].c_str())) frame->set(node->params[i], *kv);
            else if (node->defaults[i]) frame->set(node->params[i], eval(*node->defaults[i], c));
          }
          c.frames.push_back(frame);
          std::string o;
          exec(node->body, c, o);
          return Value(o);
        }));
        const Expr& call = *n.expr;
        if (call.kind != Expr::Call) ctx.error(n.line, "{% call %} needs a macro call");
        Value f = eval(*call.a, ctx);
        if (!f.is_callable()) ctx.error(n.line, "{% call %} target is not callable");
        Args args = eval_args(call, ctx);
        args.keyword.emplace_back("caller", caller);
        out += to_str(f.fn()(args, ctx));
        break;
      }
      case Node::FilterBlock: {
        std::string captured;
        exec(n.body, ctx, captured);
        Value v(captured);
        std::vector<const Expr*> chain;
        for (const Expr* f = n.filter.get(); f; f = f->a.get()) chain.push_back(f);
        for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
          Args args = eval_args(**it, ctx);
          v = apply_filter((*it)->name, v, args, ctx, (*it)->line);
        }
        out += to_str(v);
        break;
      }
      case Node::Break: return Flow::Break;
      case Node::Continue: return Flow::Continue;
    }
  }
  return Flow::Normal;
}

}  // namespace m2::jinja

namespace m2 {

struct ChatTemplate::Impl {
  std::string where;
  jinja::Body body;
};

ChatTemplate::ChatTemplate(const std::string& source, const std::string& where) : impl_(std::make_unique<Impl>()) {
  impl_->where = where;
  try {
    impl_->body = jinja::parse_template(source, where);
  } catch (const TemplateError&) {
    throw;
  } catch (const Error& e) {
    throw TemplateError(e.what());
  } catch (const std::exception& e) {  // a library call the parser makes: still this template's error
    throw TemplateError(where + ": " + e.what());
  }
}
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

std::string ChatTemplate::render(const nlohmann::ordered_json& variables) const {
  jinja::Context ctx;
  ctx.where = impl_->where;
  auto globals = std::make_shared<jinja::Dict>();
  if (variables.is_object())
    for (auto it = variables.begin(); it != variables.end(); ++it) globals->set(it.key(), jinja::from_json(*it));
  ctx.frames = {globals, std::make_shared<jinja::Dict>()};
  std::string out;
  jinja::reset_budget();
  struct Release {
    ~Release() { jinja::release_namespaces(); }
  } release;
  try {
    jinja::exec(impl_->body, ctx, out);
    if (out.size() > jinja::Limits::kMaxBytes)
      fail<TemplateError>("{}: the template's output passed the limit of {} bytes", impl_->where, jinja::Limits::kMaxBytes);
  } catch (const TemplateError&) {
    throw;
  } catch (const std::exception& e) {  // anything else a builtin raised: still a template error
    throw TemplateError(impl_->where + ": " + e.what());
  }
  return out;
}

}  // namespace m2
