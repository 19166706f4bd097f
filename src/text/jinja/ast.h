// Syntax tree of a Jinja template.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "text/jinja/value.h"

namespace m2::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum Kind {
    Literal, Name, ListLit, TupleLit, DictLit, Attr, Item, Slice, Call, Filter, Test, Neg, Pos, Not, Binary,
    And, Or, Compare, Cond
  } kind;
  int line = 0;
  Value value;                         // Literal
  std::string name;                    // Name, Attr, Filter, Test; Binary/Compare operator
  std::vector<ExprPtr> items;          // List/Tuple/Dict (k, v alternating), call/filter/test arguments
  std::vector<std::string> kw_names;   // keyword argument names (parallel to kw_values)
  std::vector<ExprPtr> kw_values;
  ExprPtr a, b, c;                     // operands: object/left, key/right/then, else; slice start/stop/step
  std::vector<std::string> ops;        // Compare: operators, with items[0..n] the operands
  bool negated = false;                // Test: "is not"
  bool has_b = false, has_c = false, has_a = false;  // Slice parts present
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum Kind { Text, Output, If, For, Set, SetBlock, Macro, CallBlock, FilterBlock, Break, Continue } kind;
  int line = 0;
  std::string text;                                // Text
  ExprPtr expr;                                    // Output / Set value / For iterable / CallBlock call
  std::vector<std::pair<ExprPtr, Body>> branches;  // If: (condition, body) for if/elif
  Body body, else_body;                            // For, SetBlock, Macro, CallBlock, FilterBlock; If/For else
  std::vector<std::string> targets;                // For/Set names; Set "ns.attr" as {"ns", "attr"} with attr_set
  bool attr_set = false;
  ExprPtr filter_cond;                             // For ... if cond
  std::string name;                                // Macro name
  std::vector<std::string> params;                 // Macro / CallBlock caller parameters
  std::vector<ExprPtr> defaults;                   // parallel to params (null = required)
  ExprPtr filter;                                  // FilterBlock: a Filter expr applied to the body text (a = null)
};

// Parses template source; `where` names it in errors ("chat_template line 12: ...").
Body parse_template(const std::string& source, const std::string& where);

}  // namespace m2::jinja
