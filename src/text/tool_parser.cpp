#include "text/tool_parser.h"

#include "core/units.h"

#include <algorithm>
#include <random>

namespace m2 {

using nlohmann::json;

namespace {
constexpr std::string_view kBlockOpen = "<minimax:tool_call>", kBlockClose = "</minimax:tool_call>";
constexpr std::string_view kInvoke = "<invoke", kInvokeClose = "</invoke>";
constexpr std::string_view kParam = "<parameter", kParamClose = "</parameter>";

size_t partial_suffix(std::string_view s, std::string_view tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

// `name="x"` / `name=x` / ` name='x' ` up to the closing '>' → x.
std::string attribute_value(std::string_view head) {
  size_t eq = head.find('=');
  std::string_view v = eq == std::string_view::npos ? head : head.substr(eq + 1);
  while (!v.empty() && std::isspace((unsigned char)v.front())) v.remove_prefix(1);
  while (!v.empty() && std::isspace((unsigned char)v.back())) v.remove_suffix(1);
  if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front()) v = v.substr(1, v.size() - 2);
  return std::string(v);
}

std::string default_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += hex[rng() % 16];
  return id;
}

void collect_types(const json& schema, std::vector<std::string>& out) {
  if (!schema.is_object()) return;
  if (auto t = schema.find("type"); t != schema.end()) {
    if (t->is_string()) out.push_back(t->get<std::string>());
    else if (t->is_array())
      for (const auto& x : *t)
        if (x.is_string()) out.push_back(x.get<std::string>());
  }
  if (auto e = schema.find("enum"); e != schema.end() && e->is_array())
    for (const auto& v : *e)
      out.push_back(v.is_string() ? "string" : v.is_boolean() ? "boolean" : v.is_number_integer() ? "integer"
                    : v.is_number() ? "number" : v.is_null() ? "null" : v.is_array() ? "array" : "object");
  for (const char* k : {"anyOf", "oneOf", "allOf"})
    if (auto a = schema.find(k); a != schema.end() && a->is_array())
      for (const auto& s : *a) collect_types(s, out);
}

bool has(const std::vector<std::string>& v, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (std::find(v.begin(), v.end(), n) != v.end()) return true;
  return false;
}

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower((unsigned char)c));
  return s;
}

}  // namespace

ToolCallParser::ToolCallParser(const json& tools, std::function<std::string()> new_id)
    : tools_(tools.is_array() ? tools : json::array()), new_id_(new_id ? std::move(new_id) : default_id) {}

std::vector<std::string> ToolCallParser::types_for(const std::string& tool, const std::string& param) const {
  std::vector<std::string> types;
  for (const auto& t : tools_) {
    const json& f = t.contains("function") ? t["function"] : t;
    if (!f.is_object() || f.value("name", "") != tool) continue;
    auto p = f.find("parameters");
    if (p == f.end() || !p->is_object()) break;
    auto props = p->find("properties");
    if (props == p->end() || !props->is_object() || !props->contains(param)) break;
    collect_types((*props)[param], types);
    break;
  }
  if (types.empty()) types.push_back("string");
  return types;
}

json ToolCallParser::convert(const std::string& tool, const std::string& param, const std::string& value) const {
  const auto types = types_for(tool, param);
  // Tried in this order; the first allowed type that parses wins. A string parameter keeps its text.
  if (has(types, {"null"}) && lower(value) == "null") return nullptr;
  if (has(types, {"integer", "int"})) {
    try {
      json v = json::parse(value);
      if (v.is_number_integer()) return v;
      if (v.is_number_float())
        if (const auto i = whole_int64(v.get<double>())) return *i;
    } catch (const json::exception&) {
    }
  }
  if (has(types, {"number", "float"})) {
    try {
      json v = json::parse(value);
      if (v.is_number()) return v;
    } catch (const json::exception&) {
    }
  }
  if (has(types, {"boolean", "bool"})) {
    std::string l = lower(value);
    if (l == "true") return true;
    if (l == "false") return false;
  }
  if (has(types, {"object", "array"})) {
    try {
      json v = json::parse(value);
      if ((v.is_object() && has(types, {"object"})) || (v.is_array() && has(types, {"array"}))) return v;
    } catch (const json::exception&) {
    }
  }
  return value;  // strings, and the fallback when nothing else parses
}

// One parsing step on buf_; returns true when it consumed something and should be called again.
bool ToolCallParser::step(ToolParserDelta& d, bool at_end) {
  switch (state_) {
    case State::Text: {
      if (after_block_) {
        size_t ws = buf_.find_first_not_of(" \t\r\n");
        if (ws == std::string::npos) {
          if (at_end) buf_.clear();
          return false;
        }
        buf_.erase(0, ws);
        after_block_ = false;
      }
      size_t open = buf_.find(kBlockOpen);
      if (open != std::string::npos) {
        d.content += buf_.substr(0, open);
        buf_.erase(0, open + kBlockOpen.size());
        state_ = State::Block;
        return true;
      }
      size_t keep = at_end ? 0 : partial_suffix(buf_, kBlockOpen);
      d.content += buf_.substr(0, buf_.size() - keep);
      buf_.erase(0, buf_.size() - keep);
      return false;
    }
    case State::Block: {
      size_t ws = buf_.find_first_not_of(" \t\r\n");
      if (ws == std::string::npos) {
        buf_.clear();
        return false;
      }
      buf_.erase(0, ws);
      if (buf_.compare(0, kBlockClose.size(), kBlockClose) == 0) {
        buf_.erase(0, kBlockClose.size());
        state_ = State::Text;
        after_block_ = true;
        return true;
      }
      if (buf_.compare(0, kInvoke.size(), kInvoke) == 0) {
        size_t gt = buf_.find('>');
        if (gt == std::string::npos) return false;  // header incomplete
        tool_name_ = attribute_value(std::string_view(buf_).substr(kInvoke.size(), gt - kInvoke.size()));
        buf_.erase(0, gt + 1);
        d.tool_calls.push_back({calls_++, new_id_(), tool_name_, ""});
        params_ = false;
        state_ = State::Invoke;
        return true;
      }
      // Could still become one of the tags: wait.
      for (auto tag : {kBlockClose, kInvoke})
        if (buf_.size() < tag.size() && tag.substr(0, buf_.size()) == buf_) return false;
      // Stray text inside a block is not content (markup never leaks): skip to the next tag.
      size_t lt = buf_.find('<', 1);
      buf_.erase(0, lt == std::string::npos ? buf_.size() : lt);
      return !buf_.empty();
    }
    case State::Invoke: {
      size_t ws = buf_.find_first_not_of(" \t\r\n");
      if (ws == std::string::npos) {
        buf_.clear();
        return false;
      }
      buf_.erase(0, ws);
      auto close_call = [&] {
        d.tool_calls.push_back({calls_ - 1, "", "", params_ ? "}" : "{}"});
        state_ = State::Block;
      };
      if (buf_.compare(0, kInvokeClose.size(), kInvokeClose) == 0) {
        buf_.erase(0, kInvokeClose.size());
        close_call();
        return true;
      }
      if (buf_.compare(0, kBlockClose.size(), kBlockClose) == 0) {  // invoke left open
        close_call();
        return true;
      }
      if (buf_.compare(0, kParam.size(), kParam) == 0) {
        size_t gt = buf_.find('>');
        if (gt == std::string::npos) return false;
        // The value ends at the first "</parameter>" that the next tag (<parameter, </invoke>,
        // </minimax:tool_call>) or the end of output follows; any other "</parameter>" is part of the
        // value (code that writes XML). Undecided: wait for more text. A value is emitted whole.
        size_t end = std::string::npos;
        for (size_t from = gt + 1;;) {
          const size_t c = buf_.find(kParamClose, from);
          if (c == std::string::npos) return false;  // value incomplete
          const size_t next = buf_.find_first_not_of(" \t\r\n", c + kParamClose.size());
          if (next == std::string::npos) {
            if (!at_end) return false;
            end = c;
            break;
          }
          const std::string_view rest = std::string_view(buf_).substr(next);
          bool tag = false, maybe = false;
          for (auto t : {kParam, kInvokeClose, kBlockClose}) {
            tag = tag || rest.substr(0, t.size()) == t;
            maybe = maybe || (rest.size() < t.size() && t.substr(0, rest.size()) == rest);
          }
          if (tag || (maybe && at_end)) {
            end = c;
            break;
          }
          if (maybe) return false;
          from = c + kParamClose.size();
        }
        std::string name = attribute_value(std::string_view(buf_).substr(kParam.size(), gt - kParam.size()));
        std::string value = buf_.substr(gt + 1, end - gt - 1);
        // The format's own newline after the opening tag and before the closing tag is not part of the value.
        if (!value.empty() && value.front() == '\n') value.erase(0, 1);
        if (!value.empty() && value.back() == '\n') value.pop_back();
        buf_.erase(0, end + kParamClose.size());
        json v = convert(tool_name_, name, value);
        std::string frag = (params_ ? ", " : "{") + json(name).dump(-1, ' ', false, json::error_handler_t::replace) + ": " + v.dump(-1, ' ', false, json::error_handler_t::replace);
        params_ = true;
        d.tool_calls.push_back({calls_ - 1, "", "", frag});
        return true;
      }
      for (auto tag : {kInvokeClose, kBlockClose, kParam})
        if (buf_.size() < tag.size() && tag.substr(0, buf_.size()) == buf_) return false;
      size_t lt = buf_.find('<', 1);
      buf_.erase(0, lt == std::string::npos ? buf_.size() : lt);
      return !buf_.empty();
    }
  }
  return false;
}

ToolParserDelta ToolCallParser::push(std::string_view text) {
  ToolParserDelta d;
  buf_ += text;
  while (step(d, false)) {
  }
  return d;
}

ToolParserDelta ToolCallParser::finish() {
  ToolParserDelta d;
  while (step(d, true)) {
  }
  // An invoke cut off by the end of output still yields valid JSON arguments.
  if (state_ == State::Invoke) d.tool_calls.push_back({calls_ - 1, "", "", params_ ? "}" : "{}"});
  buf_.clear();
  state_ = State::Text;
  return d;
}

ToolCallParser::Result ToolCallParser::parse(std::string_view output, const json& tools,
                                             std::function<std::string()> new_id) {
  ToolCallParser p(tools, std::move(new_id));
  ToolParserDelta a = p.push(output), b = p.finish();
  Result r;
  std::string content = a.content + b.content;
  if (!content.empty()) r.content = std::move(content);
  for (const auto* d : {&a, &b})
    for (const auto& c : d->tool_calls) {
      if (!c.id.empty()) r.tool_calls.push_back({c.id, c.name, ""});
      r.tool_calls[size_t(c.index)].arguments += c.arguments;
    }
  return r;
}

}  // namespace m2
