// Built-in filters, tests, global functions and the Python methods of str, list and dict that chat
// templates call.
#include <unicase.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>

#include "core/units.h"
#include "text/jinja/interpreter.h"
#include "text/regex.h"
#include "text/utf8.h"

namespace m2::jinja {

namespace {

std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> cps;
  for (size_t i = 0; i < s.size();) {
    size_t l = std::min(size_t(utf8_len((unsigned char)s[i])), s.size() - i);
    cps.push_back(s.substr(i, l));
    i += l;
  }
  return cps;
}

std::string case_map(const std::string& s, bool upper) {
  size_t len = 0;
  auto* f = upper ? u8_toupper : u8_tolower;
  uint8_t* out = f(reinterpret_cast<const uint8_t*>(s.data()), s.size(), nullptr, nullptr, nullptr, &len);
  if (!out) return s;
  std::string r(reinterpret_cast<char*>(out), len);
  free(out);
  return r;
}

bool is_py_space(const std::string& cp) {
  static const char* extra[] = {"\xc2\x85", "\xc2\xa0", "\xe1\x9a\x80", "\xe2\x80\x80", "\xe2\x80\x81", "\xe2\x80\x82",
                                "\xe2\x80\x83", "\xe2\x80\x84", "\xe2\x80\x85", "\xe2\x80\x86", "\xe2\x80\x87",
                                "\xe2\x80\x88", "\xe2\x80\x89", "\xe2\x80\x8a", "\xe2\x80\xa8", "\xe2\x80\xa9",
                                "\xe2\x80\xaf", "\xe2\x81\x9f", "\xe3\x80\x80"};
  if (cp.size() == 1) return cp[0] == ' ' || (cp[0] >= '\t' && cp[0] <= '\r') || (cp[0] >= 0x1c && cp[0] <= 0x1f);
  for (const char* e : extra)
    if (cp == e) return true;
  return false;
}

// Python str.strip / lstrip / rstrip: chars == nullptr strips whitespace.
std::string strip(const std::string& s, const Value* chars, bool left, bool right) {
  auto cps = code_points(s);
  std::vector<std::string> set;
  if (chars && chars->is_string()) set = code_points(chars->str());
  auto strip_this = [&](const std::string& cp) {
    return chars && chars->is_string() ? std::find(set.begin(), set.end(), cp) != set.end() : is_py_space(cp);
  };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_this(cps[b])) ++b;
  if (right)
    while (e > b && strip_this(cps[e - 1])) --e;
  std::string r;
  for (size_t i = b; i < e; ++i) r += cps[i];
  return r;
}

List split(const std::string& s, const Value* sep, int64_t maxsplit) {
  List out;
  if (!sep || sep->is_none()) {  // runs of whitespace, leading/trailing ignored
    auto cps = code_points(s);
    std::string cur;
    bool in_word = false;
    int64_t splits = 0;
    for (size_t i = 0; i < cps.size(); ++i) {
      if (is_py_space(cps[i]) && (maxsplit < 0 || splits < maxsplit)) {
        if (in_word) {
          out.push_back(Value(cur));
          cur.clear();
          in_word = false;
          ++splits;
        }
      } else {
        if (!in_word && maxsplit >= 0 && splits >= maxsplit) {
          // the rest, with leading whitespace removed
          std::string rest;
          for (size_t j = i; j < cps.size(); ++j) rest += cps[j];
          out.push_back(Value(strip(rest, nullptr, false, true)));
          return out;
        }
        cur += cps[i];
        in_word = true;
      }
    }
    if (in_word) out.push_back(Value(cur));
    return out;
  }
  const std::string& d = sep->str();
  if (d.empty()) fail<InvalidArgument>("empty separator");
  size_t start = 0;
  int64_t n = 0;
  for (size_t p = s.find(d); p != std::string::npos && (maxsplit < 0 || n < maxsplit); p = s.find(d, start)) {
    out.push_back(Value(s.substr(start, p - start)));
    start = p + d.size();
    ++n;
  }
  out.push_back(Value(s.substr(start)));
  return out;
}

std::string replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  std::string r;
  if (from.empty()) {
    auto cps = code_points(s);
    int64_t n = 0;
    for (const auto& cp : cps) {
      if (count < 0 || n < count) {
        r += to;
        ++n;
      }
      r += cp;
      check_bytes(r.size(), "replace()");
    }
    if (count < 0 || n < count) r += to;
    return r;
  }
  size_t start = 0;
  int64_t n = 0;
  for (size_t p = s.find(from); p != std::string::npos && (count < 0 || n < count); p = s.find(from, start)) {
    r += s.substr(start, p - start) + to;
    check_bytes(r.size(), "replace()");
    start = p + from.size();
    ++n;
  }
  return r + s.substr(start);
}

std::string title(const std::string& s, bool capitalize_only) {
  std::string r;
  bool start = true;
  for (const auto& cp : code_points(s)) {
    bool alpha = cp.size() > 1 || std::isalpha((unsigned char)cp[0]);
    if (capitalize_only) {
      r += start ? case_map(cp, true) : case_map(cp, false);
      start = false;
    } else {
      r += alpha ? (start ? case_map(cp, true) : case_map(cp, false)) : cp;
      start = !alpha;
    }
  }
  return r;
}

int64_t arg_int(const Args& a, size_t i, const char* name, int64_t def) {
  const Value* v = a.get(i, name);
  return v && (v->is_int() || v->is_bool()) ? v->as_int() : def;
}

Value bound(Function f) { return Value(std::move(f)); }

Value string_method(const std::string& s, const std::string& name) {
  auto S = [](std::function<Value(const std::string&, Args&)> f, std::string s) {
    return bound([f, s](Args& a, Context&) { return f(s, a); });
  };
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return S([name](const std::string& x, Args& a) {
      return Value(strip(x, a.get(0, "chars"), name != "rstrip", name != "lstrip"));
    }, s);
  if (name == "split") return S([](const std::string& x, Args& a) { return Value(split(x, a.get(0, "sep"), arg_int(a, 1, "maxsplit", -1))); }, s);
  if (name == "rsplit")
    return S([](const std::string& x, Args& a) {
      if (arg_int(a, 1, "maxsplit", -1) >= 0 && a.get(0, "sep") && a.get(0, "sep")->is_string()) {
        // rsplit with a limit: split from the right.
        const std::string& d = a.get(0, "sep")->str();
        if (d.empty()) fail<InvalidArgument>("empty separator");
        int64_t max = arg_int(a, 1, "maxsplit", -1);
        List out;
        size_t end = x.size();
        int64_t n = 0;
        for (size_t p = x.rfind(d, end); p != std::string::npos && n < max; ++n) {
          out.insert(out.begin(), Value(x.substr(p + d.size(), end - p - d.size())));
          end = p;
          if (p == 0) break;
          p = x.rfind(d, p - 1);
        }
        out.insert(out.begin(), Value(x.substr(0, end)));
        return Value(std::move(out));
      }
      return Value(split(x, a.get(0, "sep"), -1));
    }, s);
  if (name == "startswith" || name == "endswith")
    return S([name](const std::string& x, Args& a) {
      const Value* p = a.get(0, "prefix");
      if (!p) fail<InvalidArgument>("{}() takes at least 1 argument", name);
      std::vector<Value> opts = p->is_list() ? p->list() : std::vector<Value>{*p};
      for (const auto& o : opts) {
        if (!o.is_string()) fail<InvalidArgument>("{} first arg must be str or a tuple of str", name);
        const std::string& t = o.str();
        if (name == "startswith" ? x.compare(0, t.size(), t) == 0
                                 : (x.size() >= t.size() && x.compare(x.size() - t.size(), t.size(), t) == 0))
          return Value(true);
      }
      return Value(false);
    }, s);
  if (name == "lower" || name == "upper") return S([name](const std::string& x, Args&) { return Value(case_map(x, name == "upper")); }, s);
  if (name == "title" || name == "capitalize") return S([name](const std::string& x, Args&) { return Value(title(x, name == "capitalize")); }, s);
  if (name == "replace")
    return S([](const std::string& x, Args& a) {
      const Value *f = a.get(0, "old"), *t = a.get(1, "new");
      if (!f || !t || !f->is_string() || !t->is_string()) fail<InvalidArgument>("replace() needs two strings");
      return Value(replace(x, f->str(), t->str(), arg_int(a, 2, "count", -1)));
    }, s);
  if (name == "find" || name == "rfind" || name == "index" || name == "count")
    return S([name](const std::string& x, Args& a) {
      const Value* sub = a.get(0, "sub");
      if (!sub || !sub->is_string()) fail<InvalidArgument>("{}() needs a string", name);
      if (name == "count") {
        if (sub->str().empty()) return Value(int64_t(code_points(x).size() + 1));
        int64_t n = 0;
        for (size_t p = x.find(sub->str()); p != std::string::npos; p = x.find(sub->str(), p + sub->str().size())) ++n;
        return Value(n);
      }
      size_t p = name == "rfind" ? x.rfind(sub->str()) : x.find(sub->str());
      if (p == std::string::npos) {
        if (name == "index") fail<InvalidArgument>("substring not found");
        return Value(int64_t(-1));
      }
      return Value(int64_t(code_points(x.substr(0, p)).size()));
    }, s);
  if (name == "join")
    return S([](const std::string& x, Args& a) {
      const Value* it = a.get(0, "iterable");
      std::string r;
      if (it && it->is_list())
        for (size_t i = 0; i < it->list().size(); ++i) {
          r += (i ? x : "") + to_str(it->list()[i]);
          check_bytes(r.size(), "join()");
        }
      return Value(r);
    }, s);
  if (name == "splitlines")
    return S([](const std::string& x, Args&) {
      List out;
      std::string cur;
      for (size_t i = 0; i < x.size(); ++i) {
        if (x[i] == '\n' || x[i] == '\r') {
          out.push_back(Value(cur));
          cur.clear();
          if (x[i] == '\r' && i + 1 < x.size() && x[i + 1] == '\n') ++i;
        } else {
          cur += x[i];
        }
      }
      if (!cur.empty()) out.push_back(Value(cur));
      return Value(std::move(out));
    }, s);
  auto predicate = [&](int (*f)(int)) {
    return S([f](const std::string& x, Args&) {
      if (x.empty()) return Value(false);
      for (unsigned char c : x)
        if (!f(c)) return Value(false);
      return Value(true);
    }, s);
  };
  if (name == "isdigit") return predicate(std::isdigit);
  if (name == "isalpha") return predicate(std::isalpha);
  if (name == "isalnum") return predicate(std::isalnum);
  if (name == "isspace") return predicate(std::isspace);
  if (name == "islower" || name == "isupper")
    return S([name](const std::string& x, Args&) {
      bool any = false;
      for (unsigned char c : x) {
        if (std::isalpha(c)) any = true;
        if (name == "islower" ? std::isupper(c) : std::islower(c)) return Value(false);
      }
      return Value(any);
    }, s);
  if (name == "format")
    return S([](const std::string& x, Args& a) {
      std::string r;
      size_t k = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        if (x[i] == '{' && i + 1 < x.size() && x[i + 1] == '{') r += x[i++];
        else if (x[i] == '}' && i + 1 < x.size() && x[i + 1] == '}') r += x[i++];
        else if (x[i] == '{') {
          const size_t close = x.find('}', i);
          if (close == std::string::npos) fail<InvalidArgument>("format(): single '{{' encountered in the format string");
          std::string key = x.substr(i + 1, close - i - 1);
          const Value* v = key.empty() ? a.get(k++, "") : std::isdigit((unsigned char)key[0]) ? a.get(size_t(std::stoul(key)), "") : a.get(size_t(-1), key.c_str());
          r += v ? to_str(*v) : "";
          i = close;
        } else r += x[i];
      }
      return Value(r);
    }, s);
  return Value::undefined(name);
}

Value list_method(const Value& obj, const std::string& name) {
  auto l = std::get<std::shared_ptr<List>>(obj.v);
  if (name == "index")
    return bound([l](Args& a, Context&) {
      const Value* x = a.get(0, "value");
      for (size_t i = 0; x && i < l->size(); ++i)
        if (equal((*l)[i], *x)) return Value(int64_t(i));
      fail<InvalidArgument>("value is not in list");
    });
  if (name == "count")
    return bound([l](Args& a, Context&) {
      int64_t n = 0;
      const Value* x = a.get(0, "value");
      for (const auto& v : *l) n += x && equal(v, *x);
      return Value(n);
    });
  if (name == "append" || name == "extend" || name == "pop" || name == "insert" || name == "remove" || name == "clear" ||
      name == "sort" || name == "reverse")
    return bound([name](Args&, Context&) -> Value {
      fail<InvalidArgument>("access to attribute '{}' of 'list' object is unsafe (templates are immutable)", name);
    });
  return Value::undefined(name);
}

Value dict_method(const Value& obj, const std::string& name) {
  auto d = std::get<std::shared_ptr<Dict>>(obj.v);
  if (name == "items")
    return bound([d](Args&, Context&) {
      List out;
      for (const auto& [k, v] : d->items) out.push_back(Value::make_tuple(List{Value(k), v}));
      return Value(std::move(out));
    });
  if (name == "keys")
    return bound([d](Args&, Context&) {
      List out;
      for (const auto& kv : d->items) out.push_back(Value(kv.first));
      return Value(std::move(out));
    });
  if (name == "values")
    return bound([d](Args&, Context&) {
      List out;
      for (const auto& kv : d->items) out.push_back(kv.second);
      return Value(std::move(out));
    });
  if (name == "get")
    return bound([d](Args& a, Context&) {
      const Value* k = a.get(0, "key");
      if (k && k->is_string())
        if (const Value* v = d->find(k->str())) return *v;
      const Value* def = a.get(1, "default");
      return def ? *def : Value(None{});
    });
  if (name == "update" || name == "pop" || name == "setdefault" || name == "clear")
    return bound([name](Args&, Context&) -> Value {
      fail<InvalidArgument>("access to attribute '{}' of 'dict' object is unsafe (templates are immutable)", name);
    });
  return Value::undefined(name);
}

}  // namespace

Value get_attr(const Value& obj, const std::string& name, Context& ctx, int line) {
  // Python getattr first (methods), then the item — Jinja's environment.getattr.
  if (obj.is_dict()) {
    Value m = dict_method(obj, name);
    if (!m.is_undefined()) return m;
    if (const Value* v = obj.dict().find(name)) return *v;
    return Value::undefined(name);
  }
  if (obj.is_namespace()) {
    if (const Value* v = std::get<Namespace>(obj.v).attrs->find(name)) return *v;
    return Value::undefined(name);
  }
  if (obj.is_string()) return string_method(obj.str(), name);
  if (obj.is_list()) return list_method(obj, name);
  return Value::undefined(name);
}

Value get_item(const Value& obj, const Value& key, Context& ctx, int line) {
  // Subscription first, then the attribute.
  if (obj.is_dict()) {
    if (key.is_string())
      if (const Value* v = obj.dict().find(key.str())) return *v;
    if (key.is_string()) return get_attr(obj, key.str(), ctx, line);
    return Value::undefined(to_str(key));
  }
  if (obj.is_list() || obj.is_string()) {
    if (key.is_string()) return get_attr(obj, key.str(), ctx, line);
    if (!key.is_int() && !key.is_bool()) ctx.error(line, fmt::format("indices must be integers, not {}", key.type_name()));
    int64_t i = key.as_int();
    if (obj.is_list()) {
      int64_t n = int64_t(obj.list().size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined("list index");
      return obj.list()[size_t(i)];
    }
    auto cps = code_points(obj.str());
    int64_t n = int64_t(cps.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value::undefined("string index");
    return Value(cps[size_t(i)]);
  }
  if (obj.is_namespace() && key.is_string()) return get_attr(obj, key.str(), ctx, line);
  ctx.error(line, fmt::format("'{}' object is not subscriptable", obj.type_name()));
}

std::vector<Value> iterate(const Value& v, Context& ctx, int line) {
  if (v.is_list() || v.is_dict() || v.is_string())
    charge_steps(ctx, line, int64_t(v.is_list() ? v.list().size() : v.is_dict() ? v.dict().items.size() : v.str().size()));
  if (v.is_undefined() || v.is_none()) {
    if (v.is_none()) ctx.error(line, "'NoneType' object is not iterable");
    return {};
  }
  if (v.is_list()) return v.list();
  if (v.is_dict()) {
    std::vector<Value> keys;
    for (const auto& kv : v.dict().items) keys.push_back(Value(kv.first));
    return keys;
  }
  if (v.is_string()) {
    std::vector<Value> out;
    for (auto& cp : code_points(v.str())) out.push_back(Value(cp));
    return out;
  }
  ctx.error(line, fmt::format("'{}' object is not iterable", v.type_name()));
}

size_t length_of(const Value& v, Context& ctx, int line) {
  if (v.is_string()) return code_points(v.str()).size();
  if (v.is_list()) return v.list().size();
  if (v.is_dict()) return v.dict().items.size();
  if (v.is_undefined()) return 0;
  ctx.error(line, fmt::format("object of type '{}' has no len()", v.type_name()));
}

namespace {

Value attribute_path(const Value& v, const std::string& path, Context& ctx, int line) {
  Value cur = v;
  size_t start = 0;
  while (start <= path.size()) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur.is_undefined()) return cur;
    if (!part.empty() && std::all_of(part.begin(), part.end(), ::isdigit) && cur.is_list())
      cur = get_item(cur, Value(int64_t(std::stoll(part))), ctx, line);
    else
      cur = get_item(cur, Value(part), ctx, line);
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

Args rest_args(const Args& a, size_t from) {
  Args r;
  for (size_t i = from; i < a.positional.size(); ++i) r.positional.push_back(a.positional[i]);
  r.keyword = a.keyword;
  return r;
}

}  // namespace

Value apply_filter(const std::string& name, const Value& v, Args& a, Context& ctx, int line) {
  try {
    if (name == "tojson") {
      const Value* ind = a.get(0, "indent");
      const Value* sk = a.get(size_t(-1), "sort_keys");
      return Value(to_json(v, ind && ind->is_int() ? int(ind->as_int()) : -1, sk && sk->truthy()));
    }
    if (name == "items") {
      if (v.is_undefined()) return Value(List{});
      if (!v.is_dict()) ctx.error(line, "Can only get item pairs from a mapping.");
      List out;
      for (const auto& [k, x] : v.dict().items) out.push_back(Value::make_tuple(List{Value(k), x}));
      return Value(std::move(out));
    }
    if (name == "length" || name == "count") return Value(int64_t(length_of(v, ctx, line)));
    if (name == "string") return Value(to_str(v));
    if (name == "safe" || name == "escape" || name == "e" || name == "forceescape") {
      if (name == "safe") return v;
      std::string r;
      for (char c : to_str(v)) {
        switch (c) {
          case '&': r += "&amp;"; break;
          case '<': r += "&lt;"; break;
          case '>': r += "&gt;"; break;
          case '"': r += "&#34;"; break;
          case '\'': r += "&#39;"; break;
          default: r += c;
        }
      }
      return Value(r);
    }
    if (name == "lower" || name == "upper") return Value(case_map(to_str(v), name == "upper"));
    if (name == "capitalize" || name == "title") return Value(title(to_str(v), name == "capitalize"));
    if (name == "trim") return Value(strip(to_str(v), a.get(0, "chars"), true, true));
    if (name == "replace") {
      const Value *f = a.get(0, "old"), *t = a.get(1, "new");
      if (!f || !t) ctx.error(line, "replace needs two arguments");
      return Value(replace(to_str(v), to_str(*f), to_str(*t), arg_int(a, 2, "count", -1)));
    }
    if (name == "default" || name == "d") {
      const Value* def = a.get(0, "default_value");
      const Value* boolean = a.get(1, "boolean");
      bool use_default = v.is_undefined() || (boolean && boolean->truthy() && !v.truthy());
      return use_default ? (def ? *def : Value("")) : v;
    }
    if (name == "first" || name == "last") {
      auto items = iterate(v, ctx, line);
      if (items.empty()) return Value::undefined(name);
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") return Value(iterate(v, ctx, line));
    if (name == "reverse") {
      if (v.is_string()) {
        auto cps = code_points(v.str());
        std::string r;
        for (auto it = cps.rbegin(); it != cps.rend(); ++it) r += *it;
        return Value(r);
      }
      auto items = iterate(v, ctx, line);
      std::reverse(items.begin(), items.end());
      return Value(std::move(items));
    }
    if (name == "join") {
      const Value* sep = a.get(0, "d");
      const Value* attr = a.get(1, "attribute");
      std::string r;
      auto items = iterate(v, ctx, line);
      for (size_t i = 0; i < items.size(); ++i) {
        if (i && sep) r += to_str(*sep);
        r += to_str(attr ? attribute_path(items[i], to_str(*attr), ctx, line) : items[i]);
        check_bytes(r.size(), "join");
      }
      return Value(r);
    }
    if (name == "int") {
      if (v.is_int()) return v;
      if (v.is_bool()) return Value(v.as_int());
      if (v.is_float()) {
        if (const auto i = whole_int64(std::trunc(v.as_double()))) return Value(*i);
        ctx.error(line, fmt::format("int() of {} is outside the 64-bit range", v.as_double()));
      }
      if (v.is_string()) {
        try {
          size_t used = 0;
          std::string s = strip(v.str(), nullptr, true, true);
          int64_t x = std::stoll(s, &used);
          if (used == s.size()) return Value(x);
          double d = std::stod(s, &used);
          if (used == s.size())
            if (const auto i = whole_int64(std::trunc(d))) return Value(*i);
        } catch (const std::exception&) {
        }
      }
      const Value* def = a.get(0, "default");
      return def ? *def : Value(int64_t(0));
    }
    if (name == "float") {
      if (v.is_number() || v.is_bool()) return Value(v.as_double());
      try {
        return Value(std::stod(to_str(v)));
      } catch (const std::exception&) {
        const Value* def = a.get(0, "default");
        return def ? *def : Value(0.0);
      }
    }
    if (name == "abs") {
      if (v.is_int()) {
        if (v.as_int() == INT64_MIN) ctx.error(line, "integer overflow in abs()");
        return Value(std::abs(v.as_int()));
      }
      return Value(std::fabs(v.as_double()));
    }
    if (name == "round") {
      int64_t precision = arg_int(a, 0, "precision", 0);
      const Value* method = a.get(1, "method");
      std::string m = method ? to_str(*method) : "common";
      double scale = std::pow(10.0, double(precision)), x = v.as_double() * scale;
      double r = m == "ceil" ? std::ceil(x) : m == "floor" ? std::floor(x) : std::round(x);
      return Value(r / scale);
    }
    if (name == "indent") {
      int64_t width = arg_int(a, 0, "width", 4);
      const Value* w = a.get(0, "width");
      if (!(w && w->is_string())) check_bytes(uint64_t(std::max<int64_t>(width, 0)), "indent width");
      std::string pad = w && w->is_string() ? w->str() : std::string(size_t(width), ' ');
      const Value* first = a.get(1, "first");
      const Value* blank = a.get(2, "blank");
      std::string s = to_str(v), r;
      size_t start = 0;
      bool first_line = true;
      while (start <= s.size()) {
        size_t nl = s.find('\n', start);
        std::string ln = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
        bool indent_it = first_line ? (first && first->truthy()) : (!ln.empty() || (blank && blank->truthy()));
        r += (indent_it ? pad : "") + ln;
        check_bytes(r.size(), "indent");
        if (nl == std::string::npos) break;
        r += '\n';
        start = nl + 1;
        first_line = false;
      }
      return Value(r);
    }
    if (name == "unique") {
      List out;
      for (auto& x : iterate(v, ctx, line))
        if (std::none_of(out.begin(), out.end(), [&](const Value& y) { return equal(x, y); })) out.push_back(x);
      return Value(std::move(out));
    }
    if (name == "sort" || name == "dictsort") {
      auto items = name == "dictsort" ? apply_filter("items", v, a, ctx, line).list() : iterate(v, ctx, line);
      const Value* rev = a.get(size_t(-1), "reverse");
      const Value* attr = a.get(size_t(-1), "attribute");
      auto key = [&](const Value& x) {
        Value k = name == "dictsort" ? x.list()[0] : attr ? attribute_path(x, to_str(*attr), ctx, line) : x;
        return k.is_string() ? Value(case_map(k.str(), false)) : k;
      };
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) { return compare(key(x), key(y)) < 0; });
      if (rev && rev->truthy()) std::reverse(items.begin(), items.end());
      return Value(std::move(items));
    }
    if (name == "sum") {
      const Value* attr = a.get(size_t(-1), "attribute");
      Value total = a.get(size_t(-1), "start") ? *a.get(size_t(-1), "start") : Value(int64_t(0));
      for (auto& x : iterate(v, ctx, line)) {
        Value y = attr ? attribute_path(x, to_str(*attr), ctx, line) : x;
        int64_t r = 0;
        if (total.is_int() && y.is_int()) {
          if (__builtin_add_overflow(total.as_int(), y.as_int(), &r)) ctx.error(line, "integer overflow in sum()");
          total = Value(r);
        }
        else total = Value(total.as_double() + y.as_double());
      }
      return total;
    }
    if (name == "min" || name == "max") {
      auto items = iterate(v, ctx, line);
      if (items.empty()) return Value::undefined(name);
      Value best = items[0];
      for (auto& x : items)
        if ((name == "min") ? compare(x, best) < 0 : compare(x, best) > 0) best = x;
      return best;
    }
    if (name == "map") {
      List out;
      const Value* attr = a.get(size_t(-1), "attribute");
      for (auto& x : iterate(v, ctx, line)) {
        if (attr) {
          Value y = attribute_path(x, to_str(*attr), ctx, line);
          if (y.is_undefined() && a.get(size_t(-1), "default")) y = *a.get(size_t(-1), "default");
          out.push_back(y);
        } else {
          if (a.positional.empty()) ctx.error(line, "map needs a filter name or attribute=");
          Args rest = rest_args(a, 1);
          out.push_back(apply_filter(to_str(a.positional[0]), x, rest, ctx, line));
        }
      }
      return Value(std::move(out));
    }
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
      const bool by_attr = name == "selectattr" || name == "rejectattr", want = name == "select" || name == "selectattr";
      size_t test_at = by_attr ? 1 : 0;
      List out;
      for (auto& x : iterate(v, ctx, line)) {
        Value subject = by_attr ? attribute_path(x, to_str(a.positional.at(0)), ctx, line) : x;
        bool ok;
        if (a.positional.size() > test_at) {
          Args rest = rest_args(a, test_at + 1);
          ok = apply_test(to_str(a.positional[test_at]), subject, rest, ctx, line);
        } else {
          ok = subject.truthy();
        }
        if (ok == want) out.push_back(x);
      }
      return Value(std::move(out));
    }
    if (name == "wordcount") {  // Jinja counts matches of \w+
      static const Regex word("\\w+", "wordcount");
      int64_t n = 0;
      word.for_each_match(to_str(v), [&](size_t b, size_t e) { n += e > b; });
      return Value(n);
    }
    if (name == "center") {
      int64_t width = arg_int(a, 0, "width", 80);
      check_bytes(uint64_t(std::max<int64_t>(width, 0)), "center width");
      std::string s = to_str(v);
      int64_t n = int64_t(code_points(s).size());
      if (n >= width) return Value(s);
      int64_t left = (width - n) / 2 + ((width - n) % 2 && width % 2 ? 1 : 0);
      return Value(std::string(size_t(left), ' ') + s + std::string(size_t(width - n - left), ' '));
    }
    if (name == "format") {
      Value fmt_args = a.positional.size() == 1 ? a.positional[0] : Value(a.positional);
      std::string f = to_str(v), r;
      std::vector<Value> vals = fmt_args.is_list() ? fmt_args.list() : std::vector<Value>{fmt_args};
      size_t k = 0;
      for (size_t i = 0; i < f.size(); ++i) {
        if (f[i] == '%' && i + 1 < f.size()) {
          char c = f[++i];
          if (c == '%') r += '%';
          else if (k < vals.size()) r += c == 'd' ? std::to_string(vals[k++].as_int()) : to_str(vals[k++]);
        } else {
          r += f[i];
        }
      }
      return Value(r);
    }
    if (name == "batch" || name == "slice") {
      int64_t n = arg_int(a, 0, "linecount", 1);
      if (n <= 0) ctx.error(line, "batch size must be positive");
      List out, cur;
      for (auto& x : iterate(v, ctx, line)) {
        cur.push_back(x);
        if (int64_t(cur.size()) == n) {
          out.push_back(Value(cur));
          cur.clear();
        }
      }
      if (!cur.empty()) out.push_back(Value(cur));
      return Value(std::move(out));
    }
  } catch (const TemplateError&) {
    throw;
  } catch (const Error& e) {
    ctx.error(line, e.what());
  }
  ctx.error(line, fmt::format("no filter named '{}'", name));
}

bool apply_test(const std::string& name, const Value& v, Args& a, Context& ctx, int line) {
  const Value* arg = a.get(0, "other");
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && std::get<bool>(v.v);
  if (name == "false") return v.is_bool() && !std::get<bool>(v.v);
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_number() || v.is_bool();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string();
  if (name == "sequence") return v.is_list() || v.is_dict() || v.is_string();
  if (name == "callable") return v.is_callable();
  if (name == "sameas") return arg && ((v.is_none() && arg->is_none()) || (v.is_bool() && arg->is_bool() && equal(v, *arg)));
  if (name == "eq" || name == "equalto" || name == "==") return arg && equal(v, *arg);
  if (name == "ne" || name == "!=") return arg && !equal(v, *arg);
  if (name == "lt" || name == "lessthan" || name == "<") return arg && compare(v, *arg) < 0;
  if (name == "le" || name == "<=") return arg && compare(v, *arg) <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return arg && compare(v, *arg) > 0;
  if (name == "ge" || name == ">=") return arg && compare(v, *arg) >= 0;
  if (name == "in") {
    if (!arg) return false;
    if (arg->is_string()) return v.is_string() && arg->str().find(v.str()) != std::string::npos;
    for (auto& x : iterate(*arg, ctx, line))
      if (equal(x, v)) return true;
    return false;
  }
  if (name == "even" || name == "odd") {
    if (!v.is_int()) ctx.error(line, fmt::format("test '{}' needs an integer", name));
    return (v.as_int() % 2 == 0) == (name == "even");
  }
  if (name == "divisibleby") return arg && arg->as_int() != 0 && v.as_int() % arg->as_int() == 0;
  if (name == "lower" || name == "upper") return v.is_string() && case_map(v.str(), name == "upper") == v.str();
  ctx.error(line, fmt::format("no test named '{}'", name));
}

Value make_globals_function(const std::string& name) {
  if (name == "raise_exception")
    return bound([](Args& a, Context&) -> Value {
      throw TemplateError(a.positional.empty() ? "raise_exception" : to_str(a.positional[0]));
    });
  if (name == "namespace")
    return bound([](Args& a, Context&) {
      Namespace ns{std::make_shared<Dict>()};
      track_namespace(ns.attrs);
      for (const auto& p : a.positional)
        if (p.is_dict())
          for (const auto& [k, v] : p.dict().items) ns.attrs->set(k, v);
      for (const auto& [k, v] : a.keyword) ns.attrs->set(k, v);
      Value r;
      r.v = ns;
      return r;
    });
  if (name == "range")
    return bound([](Args& a, Context&) {
      int64_t start = 0, stop, step = 1;
      if (a.positional.size() == 1) stop = a.positional[0].as_int();
      else {
        start = a.positional.at(0).as_int();
        stop = a.positional.at(1).as_int();
        if (a.positional.size() > 2) step = a.positional[2].as_int();
      }
      if (step == 0) fail<InvalidArgument>("range() arg 3 must not be zero");
      const __int128 span = step > 0 ? __int128(stop) - start : __int128(start) - stop;
      const __int128 count = span <= 0 ? 0 : (span + (step > 0 ? step : -__int128(step)) - 1) / (step > 0 ? step : -__int128(step));
      if (count > Limits::kMaxItems)
        fail<InvalidArgument>("range() of {} items is over the template limit of {}", int64_t(count), Limits::kMaxItems);
      charge_items(int64_t(count));
      List out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(Value(i));
      return Value(std::move(out));
    });
  if (name == "dict")
    return bound([](Args& a, Context&) {
      Dict d;
      for (const auto& [k, v] : a.keyword) d.set(k, v);
      return Value(std::move(d));
    });
  if (name == "strftime_now")
    return bound([](Args& a, Context&) {
      std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[256];
      std::string f = a.positional.empty() ? "%Y-%m-%d" : to_str(a.positional[0]);
      size_t n = std::strftime(buf, sizeof buf, f.c_str(), &tm);
      return Value(std::string(buf, n));
    });
  return Value::undefined(name);
}

}  // namespace m2::jinja
