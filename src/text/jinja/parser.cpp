// Lexer and parser: template text → Body, with Jinja2's whitespace control as HF configures it
// (trim_blocks and lstrip_blocks on).
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "text/jinja/ast.h"
#include "text/utf8.h"

namespace m2::jinja {

namespace {

// The code point of a \u / \x escape: exactly `digits` hex digits at s[at].
uint32_t hex_escape(const std::string& s, size_t at, int digits, const std::string& where, int line) {
  uint32_t cp = 0;
  for (int i = 0; i < digits; ++i) {
    const char c = at + size_t(i) < s.size() ? s[at + size_t(i)] : '\0';
    if (!std::isxdigit(static_cast<unsigned char>(c))) fail<FormatError>("{} line {}: a \\{} escape needs {} hex digits", where, line, digits == 4 ? 'u' : 'x', digits);
    cp = cp * 16 + uint32_t(std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : std::tolower(c) - 'a' + 10);
  }
  return cp;
}

int64_t int_literal(const std::string& text, const std::string& where, int line) {
  errno = 0;
  const long long v = std::strtoll(text.c_str(), nullptr, 10);
  if (errno == ERANGE) fail<FormatError>("{} line {}: integer literal {} does not fit in 64 bits", where, line, text);
  return v;
}

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };

struct Token {
  Tok type;
  std::string text;
  int line;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

class Lexer {
 public:
  Lexer(const std::string& src, const std::string& where) : s_(src), where_(where) {
    for (size_t i = 0; i < s_.size(); ++i)
      if (s_[i] == '\n') newlines_.push_back(i);
  }

  std::vector<Token> run() {
    size_t i = 0;
    bool strip_next = false;  // "-%}" / "-}}" / "-#}" before this text
    bool trim_newline = false;  // trim_blocks after "%}" / "#}"
    while (i < s_.size()) {
      size_t open = find_tag(i);
      std::string text = s_.substr(i, (open == std::string::npos ? s_.size() : open) - i);
      if (strip_next) {
        size_t k = 0;
        while (k < text.size() && is_space(text[k])) ++k;
        text.erase(0, k);
      } else if (trim_newline && !text.empty() && text[0] == '\n') {
        text.erase(0, 1);
      } else if (trim_newline && text.size() >= 2 && text[0] == '\r' && text[1] == '\n') {
        text.erase(0, 2);
      }
      strip_next = trim_newline = false;
      if (open == std::string::npos) {
        emit_text(text, i);
        break;
      }
      const char kind = s_[open + 1];  // '{', '%' or '#'
      size_t p = open + 2;
      bool lstrip_minus = p < s_.size() && s_[p] == '-';
      bool plus = p < s_.size() && s_[p] == '+';
      if (lstrip_minus || plus) ++p;
      if (lstrip_minus) {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if (kind != '{' && !plus) {
        // lstrip_blocks: spaces and tabs between the line start and a block/comment tag go.
        size_t k = open;
        while (k > 0 && (s_[k - 1] == ' ' || s_[k - 1] == '\t')) --k;
        if (k == 0 || s_[k - 1] == '\n') {
          size_t n = open - k;  // the run of blanks just before the tag is the end of `text`
          text.erase(text.size() - std::min(n, text.size()));
        }
      }
      emit_text(text, i);
      const int tag_line = line_at(open);
      if (kind == '#') {
        size_t close = s_.find("#}", p);
        if (close == std::string::npos) fail<FormatError>("{} line {}: unclosed comment", where_, tag_line);
        strip_next = close > p && s_[close - 1] == '-';
        trim_newline = !strip_next;
        i = close + 2;
        continue;
      }
      const char* close_tag = kind == '{' ? "}}" : "%}";
      tokens_.push_back({kind == '{' ? Tok::VarBegin : Tok::BlockBegin, "", tag_line});
      size_t close = lex_expr(p, close_tag);
      strip_next = close > p && s_[close - 1] == '-';
      tokens_.push_back({kind == '{' ? Tok::VarEnd : Tok::BlockEnd, "", line_at(close)});
      trim_newline = kind == '%' && !strip_next;
      i = close + 2;
      // {% raw %}: everything up to {% endraw %} is text.
      if (kind == '%' && is_raw_block()) {
        tokens_.resize(tokens_.size() - 3);
        size_t end = find_endraw(i);
        std::string raw = s_.substr(i, end - i);
        size_t tag_open = end;
        // whitespace control of the endraw tag
        if (s_.compare(end + 2, 1, "-") == 0)
          while (!raw.empty() && is_space(raw.back())) raw.pop_back();
        emit_text(raw, i);
        size_t close2 = s_.find("%}", tag_open);
        strip_next = close2 > 0 && s_[close2 - 1] == '-';
        trim_newline = !strip_next;
        i = close2 + 2;
      }
    }
    tokens_.push_back({Tok::End, "", line_at(s_.size())});
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t k = s_.find('{', from); k != std::string::npos; k = s_.find('{', k + 1))
      if (k + 1 < s_.size() && (s_[k + 1] == '{' || s_[k + 1] == '%' || s_[k + 1] == '#')) return k;
    return std::string::npos;
  }
  int line_at(size_t pos) const {  // 1-based line of byte offset pos
    return 1 + int(std::lower_bound(newlines_.begin(), newlines_.end(), pos) - newlines_.begin());
  }
  void emit_text(const std::string& t, size_t at) {
    if (!t.empty()) tokens_.push_back({Tok::Text, t, line_at(at)});
  }
  bool is_raw_block() const {
    size_t n = tokens_.size();
    return n >= 3 && tokens_[n - 2].type == Tok::Name && tokens_[n - 2].text == "raw" && tokens_[n - 3].type == Tok::BlockBegin;
  }
  size_t find_endraw(size_t from) const {
    for (size_t k = s_.find("{%", from); k != std::string::npos; k = s_.find("{%", k + 2)) {
      size_t p = k + 2;
      if (p < s_.size() && (s_[p] == '-' || s_[p] == '+')) ++p;
      while (p < s_.size() && is_space(s_[p])) ++p;
      if (s_.compare(p, 6, "endraw") == 0) return k;
    }
    fail<FormatError>("{}: unclosed raw block", where_);
  }

  // Lexes expression tokens from p up to the close tag; returns the close tag's offset.
  size_t lex_expr(size_t p, const char* close_tag) {
    for (;;) {
      while (p < s_.size() && is_space(s_[p])) ++p;
      if (p >= s_.size()) fail<FormatError>("{} line {}: unclosed tag, expected '{}'", where_, line_at(p), close_tag);
      if (s_.compare(p, 2, close_tag) == 0) return p;
      if (s_[p] == '-' && s_.compare(p + 1, 2, close_tag) == 0) return p + 1;  // "-%}": strip after
      const char c = s_[p];
      const int line = line_at(p);
      if (std::isalpha((unsigned char)c) || c == '_') {
        size_t q = p;
        while (q < s_.size() && (std::isalnum((unsigned char)s_[q]) || s_[q] == '_')) ++q;
        tokens_.push_back({Tok::Name, s_.substr(p, q - p), line});
        p = q;
      } else if (std::isdigit((unsigned char)c)) {
        size_t q = p;
        bool is_float = false;
        while (q < s_.size() && (std::isdigit((unsigned char)s_[q]) || s_[q] == '_')) ++q;
        if (q + 1 < s_.size() && s_[q] == '.' && std::isdigit((unsigned char)s_[q + 1])) {
          is_float = true;
          ++q;
          while (q < s_.size() && std::isdigit((unsigned char)s_[q])) ++q;
        }
        if (q < s_.size() && (s_[q] == 'e' || s_[q] == 'E')) {
          size_t r = q + 1;
          if (r < s_.size() && (s_[r] == '+' || s_[r] == '-')) ++r;
          if (r < s_.size() && std::isdigit((unsigned char)s_[r])) {
            is_float = true;
            q = r;
            while (q < s_.size() && std::isdigit((unsigned char)s_[q])) ++q;
          }
        }
        std::string num = s_.substr(p, q - p);
        num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
        tokens_.push_back({is_float ? Tok::Float : Tok::Int, num, line});
        p = q;
      } else if (c == '"' || c == '\'') {
        std::string out;
        size_t q = p + 1;
        for (; q < s_.size() && s_[q] != c; ++q) {
          if (s_[q] == '\\' && q + 1 < s_.size()) {
            char e = s_[++q];
            switch (e) {
              case 'n': out += '\n'; break;
              case 't': out += '\t'; break;
              case 'r': out += '\r'; break;
              case '\\': out += '\\'; break;
              case '\'': out += '\''; break;
              case '"': out += '"'; break;
              case '0': out += '\0'; break;
              case 'u': {
                const uint32_t cp = hex_escape(s_, q + 1, 4, where_, line);
                q += 4;
                append_utf8(out, cp);
                break;
              }
              case 'x': {
                const uint32_t cp = hex_escape(s_, q + 1, 2, where_, line);
                q += 2;
                append_utf8(out, cp);
                break;
              }
              case '\n': break;
              default:
                out += '\\';
                out += e;
            }
          } else {
            out += s_[q];
          }
        }
        if (q >= s_.size()) fail<FormatError>("{} line {}: unterminated string", where_, line);
        tokens_.push_back({Tok::String, out, line});
        p = q + 1;
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(",
                                    ")", "[", "]", "{", "}", ",", ".", ":", "|", "=", ";"};
        bool matched = false;
        for (const char* op : ops) {
          size_t n = std::strlen(op);
          if (s_.compare(p, n, op) == 0) {
            tokens_.push_back({Tok::Op, op, line});
            p += n;
            matched = true;
            break;
          }
        }
        if (!matched) fail<FormatError>("{} line {}: unexpected character '{}'", where_, line, c);
      }
    }
  }
  const std::string& s_;
  const std::string& where_;
  std::vector<size_t> newlines_;  // offsets of '\n' in s_
  std::vector<Token> tokens_;
};

class Parser {
 public:
  Parser(std::vector<Token> toks, const std::string& where) : t_(std::move(toks)), where_(where) {}

  Body parse_all() {
    Body b = parse_body({});
    if (peek().type != Tok::End) error("unexpected tag");
    return b;
  }

 private:
  const Token& peek(size_t k = 0) const { return t_[std::min(pos_ + k, t_.size() - 1)]; }
  const Token& next() { return t_[std::min(pos_++, t_.size() - 1)]; }
  [[noreturn]] void error(const std::string& msg) const {
    fail<FormatError>("{} line {}: {}{}", where_, peek().line, msg,
                      peek().text.empty() ? "" : " near '" + peek().text + "'");
  }
  int64_t int_token() {
    const Token& t = next();
    return int_literal(t.text, where_, t.line);
  }
  bool is_op(const char* op, size_t k = 0) const { return peek(k).type == Tok::Op && peek(k).text == op; }
  bool is_name(const char* n, size_t k = 0) const { return peek(k).type == Tok::Name && peek(k).text == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) error(std::string("expected '") + op + "'");
    ++pos_;
  }
  std::string expect_name() {
    if (peek().type != Tok::Name) error("expected a name");
    return next().text;
  }
  void expect_block_end() {
    if (peek().type != Tok::BlockEnd) error("expected '%}'");
    ++pos_;
  }

  // Parses nodes until a block tag whose keyword is in `stop` (left unconsumed, at BlockBegin).
  Body parse_body(std::initializer_list<const char*> stop) {
    if (++body_depth_ > 200) error("blocks nested too deeply");
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{body_depth_};
    Body body;
    for (;;) {
      const Token& tk = peek();
      if (tk.type == Tok::End) {
        if (stop.size()) error(std::string("missing '{% ") + *(stop.end() - 1) + " %}'");
        return body;
      }
      if (tk.type == Tok::Text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Text;
        n->line = tk.line;
        n->text = tk.text;
        body.push_back(std::move(n));
        ++pos_;
      } else if (tk.type == Tok::VarBegin) {
        ++pos_;
        auto n = std::make_unique<Node>();
        n->kind = Node::Output;
        n->line = tk.line;
        n->expr = parse_expr();
        if (peek().type != Tok::VarEnd) error("expected '}}'");
        ++pos_;
        body.push_back(std::move(n));
      } else if (tk.type == Tok::BlockBegin) {
        const Token& kw = peek(1);
        for (const char* s : stop)
          if (kw.type == Tok::Name && kw.text == s) return body;
        ++pos_;
        body.push_back(parse_statement());
      } else {
        error("unexpected token");
      }
    }
  }

  void end_tag(const char* name) {
    expect_block_begin();
    if (!is_name(name)) error(std::string("expected '") + name + "'");
    ++pos_;
    expect_block_end();
  }
  void expect_block_begin() {
    if (peek().type != Tok::BlockBegin) error("expected '{%'");
    ++pos_;
  }

  std::unique_ptr<Node> parse_statement() {
    const int line = peek().line;
    std::string kw = expect_name();
    auto n = std::make_unique<Node>();
    n->line = line;
    if (kw == "if") {
      n->kind = Node::If;
      ExprPtr cond = parse_expr();
      expect_block_end();
      for (;;) {
        Body b = parse_body({"elif", "else", "endif"});
        n->branches.emplace_back(std::move(cond), std::move(b));
        expect_block_begin();
        std::string k = expect_name();
        if (k == "elif") {
          cond = parse_expr();
          expect_block_end();
          continue;
        }
        if (k == "else") {
          expect_block_end();
          n->else_body = parse_body({"endif"});
          end_tag("endif");
        } else {
          expect_block_end();
        }
        break;
      }
    } else if (kw == "for") {
      n->kind = Node::For;
      n->targets.push_back(expect_name());
      while (is_op(",")) {
        ++pos_;
        n->targets.push_back(expect_name());
      }
      if (!is_name("in")) error("expected 'in'");
      ++pos_;
      n->expr = parse_or();  // not a conditional: "if" here filters the loop
      if (is_name("if")) {
        ++pos_;
        n->filter_cond = parse_or();
      }
      if (is_name("recursive")) error("recursive loops are not supported");
      expect_block_end();
      n->body = parse_body({"else", "endfor"});
      expect_block_begin();
      if (expect_name() == "else") {
        expect_block_end();
        n->else_body = parse_body({"endfor"});
        end_tag("endfor");
      } else {
        expect_block_end();
      }
    } else if (kw == "set") {
      std::string first = expect_name();
      if (is_op(".")) {
        ++pos_;
        n->targets = {first, expect_name()};
        n->attr_set = true;
      } else {
        n->targets.push_back(first);
        while (is_op(",")) {
          ++pos_;
          n->targets.push_back(expect_name());
        }
      }
      if (is_op("=")) {
        ++pos_;
        n->kind = Node::Set;
        n->expr = parse_tuple_or_expr();
        expect_block_end();
      } else {
        n->kind = Node::SetBlock;
        if (is_op("|")) n->filter = parse_filter_chain(nullptr);
        expect_block_end();
        n->body = parse_body({"endset"});
        end_tag("endset");
      }
    } else if (kw == "macro" || kw == "call") {
      if (kw == "macro") {
        n->kind = Node::Macro;
        n->name = expect_name();
        parse_params(*n);
      } else {
        n->kind = Node::CallBlock;
        if (is_op("(")) parse_params(*n);
        n->expr = parse_expr();
      }
      expect_block_end();
      const char* end = kw == "macro" ? "endmacro" : "endcall";
      n->body = parse_body({end});
      end_tag(end);
    } else if (kw == "filter") {
      n->kind = Node::FilterBlock;
      n->filter = parse_filter_chain(nullptr, true);
      expect_block_end();
      n->body = parse_body({"endfilter"});
      end_tag("endfilter");
    } else if (kw == "break" || kw == "continue") {
      n->kind = kw == "break" ? Node::Break : Node::Continue;
      expect_block_end();
    } else {
      fail<FormatError>("{} line {}: unknown statement '{}'", where_, line, kw);
    }
    return n;
  }

  void parse_params(Node& n) {
    expect_op("(");
    while (!is_op(")")) {
      n.params.push_back(expect_name());
      if (is_op("=")) {
        ++pos_;
        n.defaults.push_back(parse_expr());
      } else {
        n.defaults.push_back(nullptr);
      }
      if (!is_op(")")) expect_op(",");
    }
    expect_op(")");
  }

  ExprPtr make(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  ExprPtr parse_tuple_or_expr() {
    ExprPtr first = parse_expr();
    if (!is_op(",")) return first;
    auto t = make(Expr::TupleLit, first->line);
    t->items.push_back(std::move(first));
    while (is_op(",")) {
      ++pos_;
      if (peek().type == Tok::BlockEnd) break;
      t->items.push_back(parse_expr());
    }
    return t;
  }

  ExprPtr parse_expr() {
    // Nesting is bounded so a hostile template cannot exhaust the stack.
    struct Depth {
      int& d;
      explicit Depth(int& x) : d(++x) {}
      ~Depth() { --d; }
    } guard(depth_);
    if (depth_ > 200) error("expression nested too deeply");
    ExprPtr e = parse_or();
    while (is_name("if")) {
      const int line = peek().line;
      ++pos_;
      auto c = make(Expr::Cond, line);
      c->a = parse_or();
      c->b = std::move(e);
      if (is_name("else")) {
        ++pos_;
        c->c = parse_expr();
      }
      e = std::move(c);
    }
    return e;
  }
  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      auto n = make(Expr::Or, peek().line);
      ++pos_;
      n->a = std::move(e);
      n->b = parse_and();
      e = std::move(n);
    }
    return e;
  }
  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      auto n = make(Expr::And, peek().line);
      ++pos_;
      n->a = std::move(e);
      n->b = parse_not();
      e = std::move(n);
    }
    return e;
  }
  ExprPtr parse_not() {
    if (is_name("not")) {
      auto n = make(Expr::Not, peek().line);
      ++pos_;
      n->a = parse_not();
      return n;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    std::unique_ptr<Expr> cmp;
    for (;;) {
      std::string op;
      if (peek().type == Tok::Op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                     peek().text == ">" || peek().text == "<=" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        ++pos_;
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        pos_ += 2;
        op = "not in";
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Compare, e->line);
        cmp->items.push_back(std::move(e));
      }
      cmp->ops.push_back(op);
      cmp->items.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(e);
  }
  ExprPtr binary(const std::string& op, ExprPtr l, ExprPtr r) {
    auto n = make(Expr::Binary, l->line);
    n->name = op;
    n->a = std::move(l);
    n->b = std::move(r);
    return n;
  }
  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      std::string op = next().text;
      e = binary(op, std::move(e), parse_concat());
    }
    return e;
  }
  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      ++pos_;
      e = binary("~", std::move(e), parse_math2());
    }
    return e;
  }
  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = next().text;
      e = binary(op, std::move(e), parse_pow());
    }
    return e;
  }
  ExprPtr parse_pow() {
    ExprPtr e = parse_unary();
    while (is_op("**")) {
      ++pos_;
      e = binary("**", std::move(e), parse_unary());
    }
    return e;
  }
  ExprPtr parse_unary() {
    if (is_op("-") || is_op("+")) {
      auto n = make(is_op("-") ? Expr::Neg : Expr::Pos, peek().line);
      ++pos_;
      n->a = parse_unary();
      return parse_filters_and_tests(std::move(n));
    }
    return parse_filters_and_tests(parse_postfix(parse_primary()));
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().type == Tok::Name && is_op("=", 1)) {
        e.kw_names.push_back(next().text);
        ++pos_;
        e.kw_values.push_back(parse_expr());
      } else {
        e.items.push_back(parse_expr());
      }
      if (!is_op(")")) expect_op(",");
    }
    expect_op(")");
  }

  ExprPtr parse_filter_chain(ExprPtr target, bool first_without_bar = false) {
    bool first = true;
    while ((first && first_without_bar) || is_op("|")) {
      if (!(first && first_without_bar)) ++pos_;
      first = false;
      auto f = make(Expr::Filter, peek().line);
      f->name = expect_name();
      if (is_op("(")) parse_call_args(*f);
      f->a = std::move(target);
      target = std::move(f);
    }
    return target;
  }

  ExprPtr parse_filters_and_tests(ExprPtr e) {
    for (;;) {
      if (is_op("|")) {
        e = parse_filter_chain(std::move(e));
      } else if (is_name("is")) {
        auto t = make(Expr::Test, peek().line);
        ++pos_;
        if (is_name("not")) {
          ++pos_;
          t->negated = true;
        }
        t->name = expect_name();
        if (is_op("(")) {
          parse_call_args(*t);
        } else if (peek().type == Tok::Int || peek().type == Tok::Float || peek().type == Tok::String ||
                   (peek().type == Tok::Name && !is_name("and") && !is_name("or") && !is_name("else") &&
                    !is_name("if") && !is_name("in") && !is_name("not") && !is_name("is"))) {
          t->items.push_back(parse_postfix(parse_primary()));
        }
        t->a = std::move(e);
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_postfix(ExprPtr e) {
    for (;;) {
      if (is_op(".")) {
        ++pos_;
        auto a = make(Expr::Attr, peek().line);
        if (peek().type == Tok::Int) {  // x.0 → x[0]
          auto lit = make(Expr::Literal, peek().line);
          lit->value = Value(int_token());
          a->kind = Expr::Item;
          a->b = std::move(lit);
        } else {
          a->name = expect_name();
        }
        a->a = std::move(e);
        e = std::move(a);
      } else if (is_op("[")) {
        ++pos_;
        auto s = make(Expr::Item, peek().line);
        s->a = std::move(e);
        ExprPtr start, stop, step;
        bool slice = false;
        if (!is_op(":")) start = parse_expr();
        if (is_op(":")) {
          slice = true;
          ++pos_;
          if (!is_op("]") && !is_op(":")) stop = parse_expr();
          if (is_op(":")) {
            ++pos_;
            if (!is_op("]")) step = parse_expr();
          }
        }
        expect_op("]");
        if (slice) {
          s->kind = Expr::Slice;
          s->has_a = bool(start);
          s->has_b = bool(stop);
          s->has_c = bool(step);
          s->items.push_back(std::move(start));
          s->items.push_back(std::move(stop));
          s->items.push_back(std::move(step));
        } else {
          s->b = std::move(start);
        }
        e = std::move(s);
      } else if (is_op("(")) {
        auto c = make(Expr::Call, peek().line);
        parse_call_args(*c);
        c->a = std::move(e);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_primary() {
    const Token& tk = peek();
    const int line = tk.line;
    if (tk.type == Tok::String) {
      auto e = make(Expr::Literal, line);
      std::string s;
      while (peek().type == Tok::String) s += next().text;  // adjacent literals concatenate
      e->value = Value(s);
      return e;
    }
    if (tk.type == Tok::Int) {
      auto e = make(Expr::Literal, line);
      e->value = Value(int_token());
      return e;
    }
    if (tk.type == Tok::Float) {
      auto e = make(Expr::Literal, line);
      e->value = Value(std::strtod(next().text.c_str(), nullptr));  // overflow is inf, as in Python
      return e;
    }
    if (tk.type == Tok::Name) {
      const std::string n = next().text;
      auto e = make(Expr::Literal, line);
      if (n == "true" || n == "True") e->value = Value(true);
      else if (n == "false" || n == "False") e->value = Value(false);
      else if (n == "none" || n == "None") e->value = Value(None{});
      else {
        e->kind = Expr::Name;
        e->name = n;
      }
      return e;
    }
    if (is_op("(")) {
      ++pos_;
      if (is_op(")")) {
        ++pos_;
        return make(Expr::TupleLit, line);
      }
      ExprPtr first = parse_expr();
      if (is_op(",")) {
        auto t = make(Expr::TupleLit, line);
        t->items.push_back(std::move(first));
        while (is_op(",")) {
          ++pos_;
          if (is_op(")")) break;
          t->items.push_back(parse_expr());
        }
        expect_op(")");
        return t;
      }
      expect_op(")");
      return first;
    }
    if (is_op("[")) {
      ++pos_;
      auto l = make(Expr::ListLit, line);
      while (!is_op("]")) {
        l->items.push_back(parse_expr());
        if (!is_op("]")) expect_op(",");
      }
      expect_op("]");
      return l;
    }
    if (is_op("{")) {
      ++pos_;
      auto d = make(Expr::DictLit, line);
      while (!is_op("}")) {
        d->items.push_back(parse_expr());
        expect_op(":");
        d->items.push_back(parse_expr());
        if (!is_op("}")) expect_op(",");
      }
      expect_op("}");
      return d;
    }
    error("expected an expression");
  }

  std::vector<Token> t_;
  size_t pos_ = 0;
  int depth_ = 0, body_depth_ = 0;
  const std::string& where_;
};

}  // namespace

Body parse_template(const std::string& source, const std::string& where) {
  Lexer lex(source, where);
  Parser p(lex.run(), where);
  return p.parse_all();
}

}  // namespace m2::jinja
