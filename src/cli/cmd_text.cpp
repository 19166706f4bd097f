// m2 tokenize / detokenize / template: the text layer on its own.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "text/chat.h"
#include "text/tokenizer.h"

namespace m2::cli {

namespace {

std::string read_all(std::istream& in) {
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

nlohmann::ordered_json read_json_arg(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) fail<IoError>("{} {}: cannot read", what, path);
  try {
    return nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail<InvalidArgument>("{} {}: malformed JSON: {}", what, path, e.what());
  }
}

}  // namespace

Runner add_tokenize(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto special = std::make_shared<bool>(false);
  app.add_option("model_dir_or_tokenizer_json", *path, "Model directory or tokenizer.json")->required();
  app.add_flag("--add-special-tokens", *special, "Apply the tokenizer's post-processor (e.g. add BOS)");
  return [path, special] {
    Tokenizer tok = Tokenizer::load(*path);
    fmt::print("[{}]\n", fmt::join(tok.encode(read_all(std::cin), *special), ", "));
    return 0;
  };
}

Runner add_detokenize(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto skip = std::make_shared<bool>(false);
  app.add_option("model_dir_or_tokenizer_json", *path, "Model directory or tokenizer.json")->required();
  app.add_flag("--skip-special-tokens", *skip, "Leave special tokens out of the text");
  return [path, skip] {
    Tokenizer tok = Tokenizer::load(*path);
    nlohmann::json ids;
    try {
      ids = nlohmann::json::parse(read_all(std::cin));
    } catch (const nlohmann::json::exception& e) {
      fail<InvalidArgument>("detokenize: stdin is not a JSON array of ids: {}", e.what());
    }
    if (!ids.is_array()) fail<InvalidArgument>("detokenize: stdin must be a JSON array of ids");
    std::vector<int32_t> v;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!ids[i].is_number_integer()) fail<InvalidArgument>("detokenize: element {} is not an integer id", i);
      v.push_back(ids[i].get<int32_t>());
    }
    fmt::print("{}", tok.decode(v, *skip));
    return 0;
  };
}

Runner add_template(CLI::App& app) {
  struct Opts {
    std::string model_dir, messages, tools, kwargs;
    bool add_generation_prompt = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("model_dir", o->model_dir, "Model directory (tokenizer_config.json or chat_template.jinja)")->required();
  app.add_option("--messages", o->messages, "JSON file: a list of messages")->required();
  app.add_option("--tools", o->tools, "JSON file: a list of OpenAI tools");
  app.add_flag("--add-generation-prompt", o->add_generation_prompt, "End with the assistant turn's opening");
  app.add_option("--kwargs", o->kwargs, "Extra template variables as a JSON object, e.g. '{\"model_identity\": \"...\"}'");
  return [o] {
    ChatFormat chat = ChatFormat::load(o->model_dir);
    auto messages = read_json_arg(o->messages, "--messages");
    if (messages.is_object() && messages.contains("messages")) messages = messages["messages"];
    nlohmann::ordered_json tools = o->tools.empty() ? nlohmann::ordered_json() : read_json_arg(o->tools, "--tools");
    nlohmann::ordered_json extra = nlohmann::ordered_json::object();
    if (!o->kwargs.empty()) {
      try {
        extra = nlohmann::ordered_json::parse(o->kwargs);
      } catch (const nlohmann::json::exception& e) {
        fail<InvalidArgument>("--kwargs: malformed JSON: {}", e.what());
      }
      if (!extra.is_object()) fail<InvalidArgument>("--kwargs: expected a JSON object");
    }
    fmt::print("{}", chat.render(messages, tools, o->add_generation_prompt, extra));
    return 0;
  };
}

}  // namespace m2::cli
