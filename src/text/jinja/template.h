// A Jinja2 interpreter for chat templates, configured as Hugging Face renders them: trim_blocks,
// lstrip_blocks, loop controls, raise_exception, and a tojson that is json.dumps(ensure_ascii=False).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"

namespace m2 {

// A template that failed to parse or raised while rendering; the message names the template line.
class TemplateError : public Error {
 public:
  using Error::Error;
};

class ChatTemplate {
 public:
  ChatTemplate(const std::string& source, const std::string& where = "chat_template");
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  ~ChatTemplate();

  // variables: messages, tools, add_generation_prompt, bos_token, eos_token and any extra keyword
  // arguments, as an object (insertion order of every object is kept, as json.dumps would).
  std::string render(const nlohmann::ordered_json& variables) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace m2
