// Jinja chat templates: the input split at the first NUL is template source and a JSON object of
// variables (messages, tools, ...). Parse and render under the execution budget; bad templates and
// templates that raise must be TemplateErrors.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "fuzz_util.h"
#include "text/jinja/template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto [source, vars] = m2::fuzz::split_nul(data, size);
  nlohmann::ordered_json v = nlohmann::ordered_json::object();
  try {
    if (!vars.empty()) v = nlohmann::ordered_json::parse(vars);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  try {
    const m2::ChatTemplate t{std::string(source), "fuzz.jinja"};
    (void)t.render(v);
  } catch (const m2::Error&) {
  }
  return 0;
}
