#include "text/chat.h"

#include <fstream>
#include <sstream>

#include "io/config.h"

namespace m2 {

namespace fs = std::filesystem;

namespace {
std::string token_text(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return {};
}
}  // namespace

ChatFormat ChatFormat::load(const fs::path& model_dir) {
  ChatFormat f;
  std::string source, where;
  const fs::path cfg = model_dir / "tokenizer_config.json", jinja = model_dir / "chat_template.jinja";
  if (fs::exists(cfg)) {
    nlohmann::json j = read_json_file(cfg);
    f.bos_ = token_text(j, "bos_token");
    f.eos_ = token_text(j, "eos_token");
    if (auto it = j.find("chat_template"); it != j.end() && !it->is_null()) {
      where = cfg.string() + " chat_template";
      if (it->is_string()) {
        source = it->get<std::string>();
      } else if (it->is_array()) {  // [{name, template}], "default" wins
        for (const auto& t : *it)
          if (t.is_object() && t.contains("name") && t["name"] == "default" && t.contains("template") &&
              t["template"].is_string())
            source = t["template"].get<std::string>();
        if (source.empty() && !it->empty() && (*it)[0].is_object() && (*it)[0].contains("template") &&
            (*it)[0]["template"].is_string())
          source = (*it)[0]["template"].get<std::string>();
      } else {
        fail<FormatError>("{}: chat_template must be a string or a list of {{name, template}}", cfg.string());
      }
    }
  }
  if (source.empty() && fs::exists(jinja)) {
    std::ifstream in(jinja);
    std::stringstream s;
    s << in.rdbuf();
    source = s.str();
    where = jinja.string();
  }
  if (source.empty())
    fail<ModelError>("{}: no chat template (tokenizer_config.json has no chat_template and there is no chat_template.jinja)",
                     model_dir.string());
  f.template_ = std::make_unique<ChatTemplate>(source, where);
  return f;
}

ChatFormat ChatFormat::load(const fs::path& model_dir, const fs::path& template_file) {
  std::ifstream in(template_file);
  if (!in) fail<IoError>("{}: cannot read the chat template", template_file.string());
  std::stringstream s;
  s << in.rdbuf();
  ChatFormat f;
  if (fs::exists(model_dir / "tokenizer_config.json")) {
    nlohmann::json j = read_json_file(model_dir / "tokenizer_config.json");
    f.bos_ = token_text(j, "bos_token");
    f.eos_ = token_text(j, "eos_token");
  }
  f.template_ = std::make_unique<ChatTemplate>(s.str(), template_file.string());
  return f;
}

std::string ChatFormat::render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                               bool add_generation_prompt, const nlohmann::ordered_json& extra) const {
  if (!messages.is_array()) fail<InvalidArgument>("messages must be a list, found {}", messages.type_name());
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  vars["messages"] = messages;
  vars["tools"] = tools.is_array() && !tools.empty() ? tools : nlohmann::ordered_json(nullptr);
  vars["add_generation_prompt"] = add_generation_prompt;
  vars["bos_token"] = bos_;
  vars["eos_token"] = eos_;
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) vars[it.key()] = it.value();
  return template_->render(vars);
}

ChatOutputParser::ChatOutputParser(ReasoningMode mode, const nlohmann::json& tools, std::function<std::string()> new_id,
                                   bool parse_tools)
    : reasoning_(mode), tools_(tools, std::move(new_id)), parse_tools_(parse_tools) {}

ChatDelta ChatOutputParser::push(std::string_view text) {
  ReasoningDelta r = reasoning_.push(text);
  if (!parse_tools_) return {std::move(r.reasoning), std::move(r.content), {}};
  ToolParserDelta t = tools_.push(r.content);
  return {std::move(r.reasoning), std::move(t.content), std::move(t.tool_calls)};
}

ChatDelta ChatOutputParser::finish() {
  ReasoningDelta r = reasoning_.finish();
  if (!parse_tools_) return {std::move(r.reasoning), std::move(r.content), {}};
  ToolParserDelta t1 = tools_.push(r.content), t2 = tools_.finish();
  ChatDelta d{std::move(r.reasoning), t1.content + t2.content, std::move(t1.tool_calls)};
  d.tool_calls.insert(d.tool_calls.end(), t2.tool_calls.begin(), t2.tool_calls.end());
  return d;
}

void ChatAccumulator::add(const ChatDelta& d) {
  reasoning += d.reasoning;
  content += d.content;
  for (const auto& c : d.tool_calls) {
    if (!c.id.empty()) tool_calls.push_back({c.id, c.name, ""});
    if (size_t(c.index) >= tool_calls.size()) fail<Error>("tool call delta {} arrived before its header", c.index);
    tool_calls[size_t(c.index)].arguments += c.arguments;
  }
}

ReasoningMode ChatOutputParser::mode_for_prompt(const std::string& prompt) {
  size_t end = prompt.find_last_not_of(" \t\r\n");
  std::string_view p = end == std::string::npos ? std::string_view() : std::string_view(prompt).substr(0, end + 1);
  if (p.size() >= 7 && p.substr(p.size() - 7) == "<think>") return ReasoningMode::PromptOpened;
  return ReasoningMode::ModelOpens;
}

}  // namespace m2
