// The Jinja interpreter against Python Jinja2 (Debian python3-jinja2, HF's settings) byte for byte:
// every template × every conversation × add_generation_prompt on and off.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "test_util.h"
#include "text/jinja/template.h"

namespace m2 {
namespace {

using ojson = nlohmann::ordered_json;
const auto kTemplates = test::kData / "templates";

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs the Python oracle on a batch of jobs; /usr/bin/python3 is Debian's, which has python3-jinja2.
ojson python_render(const ojson& jobs) {
  test::TempDir dir;
  const auto in = dir.path / "jobs.json", out = dir.path / "out.json";
  std::ofstream(in) << jobs.dump();
  const std::string cmd = "/usr/bin/python3 " + (std::filesystem::path(M2_TEST_DATA).parent_path() / "text" / "jinja_oracle.py").string() +
                          " < " + in.string() + " > " + out.string() + " 2>&1";
  int rc = std::system(cmd.c_str());
  std::string result = read_file(out);
  if (rc != 0) throw std::runtime_error("jinja oracle failed (is python3-jinja2 installed?): " + result);
  return ojson::parse(result);
}

class AgainstJinja2 : public ::testing::TestWithParam<std::string> {};

TEST_P(AgainstJinja2, EveryConversationRendersIdentically) {
  const std::string source = read_file(kTemplates / GetParam());
  const ChatTemplate tmpl(source, GetParam());
  const ojson conversations = ojson::parse(read_file(kTemplates / "conversations.json"));
  ojson jobs = ojson::array();
  std::vector<std::string> names;
  for (auto it = conversations.begin(); it != conversations.end(); ++it)
    for (bool gen : {false, true}) {
      ojson vars = it.value();
      vars["add_generation_prompt"] = gen;
      vars["bos_token"] = "<s>";
      vars["eos_token"] = "</s>";
      if (!vars.contains("tools")) vars["tools"] = nullptr;
      jobs.push_back({{"template", source}, {"variables", vars}});
      names.push_back(it.key() + (gen ? " +gen" : ""));
    }
  const ojson want = python_render(jobs);
  ASSERT_EQ(want.size(), jobs.size());
  int errors = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    std::string got, got_error;
    try {
      got = tmpl.render(jobs[i]["variables"]);
    } catch (const TemplateError& e) {
      got_error = e.what();
    }
    if (want[i].contains("error")) {
      ++errors;
      EXPECT_FALSE(got_error.empty()) << names[i] << ": Jinja2 raised " << want[i]["error"] << " but m2 rendered:\n" << got;
      // A raise_exception message is carried through word for word (other errors differ in wording).
      std::string msg = want[i]["error"].get<std::string>();
      if (msg.rfind("TemplateError: ", 0) == 0) {
        msg = msg.substr(msg.find(": ") + 2);
        EXPECT_NE(got_error.find(msg), std::string::npos) << names[i] << ": " << got_error << " vs " << msg;
      }
    } else {
      EXPECT_EQ(got_error, "") << names[i];
      EXPECT_EQ(got, want[i]["text"].get<std::string>()) << names[i];
    }
  }
  std::printf("%zu renders, %d expected errors\n", jobs.size(), errors);
}

INSTANTIATE_TEST_SUITE_P(Templates, AgainstJinja2,
                         ::testing::Values("MiniMax-M2.jinja", "qwen3.jinja", "llama3-style.jinja", "mistral-style.jinja",
                                           "features.jinja"),
                         test::ParamName());

TEST(ChatTemplate, ErrorsNameTheTemplateLine) {
  try {
    ChatTemplate t("line one\n{% if x %}\n{{ 1 + }}\n{% endif %}", "bad.jinja");
    FAIL();
  } catch (const TemplateError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jinja line 3"), std::string::npos) << e.what();
  }
  try {
    ChatTemplate t("{% for x in y %}{{ x }}", "open.jinja");
    FAIL();
  } catch (const TemplateError& e) {
    EXPECT_NE(std::string(e.what()).find("endfor"), std::string::npos) << e.what();
  }
  ChatTemplate t("a\n{{ x.y.z }}", "undef.jinja");
  try {
    t.render(ojson::object());
    FAIL();
  } catch (const TemplateError& e) {
    EXPECT_NE(std::string(e.what()).find("undef.jinja line 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ChatTemplate("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", "deep.jinja"), TemplateError);
  std::string nested;
  for (int i = 0; i < 1000; ++i) nested += "{% if true %}";
  EXPECT_THROW(ChatTemplate(nested, "nested.jinja"), TemplateError);
  ChatTemplate rec("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "rec.jinja");
  EXPECT_THROW(rec.render(ojson::object()), TemplateError);
  ChatTemplate r("{{ raise_exception('custom failure') }}", "r.jinja");
  EXPECT_THROW(r.render(ojson::object()), TemplateError);
}

}  // namespace
}  // namespace m2
