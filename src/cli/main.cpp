// m2: quantize, evaluate and serve MiniMax-M2-family models.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <map>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"m2: MiniMax-M2 inference engine (CPU)", "m2"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "m2 0.1.0");
  std::map<CLI::App*, m2::cli::Runner> runners;
  auto add = [&](const char* name, const char* help, m2::cli::Runner (*fn)(CLI::App&)) {
    CLI::App* sub = app.add_subcommand(name, help);
    runners[sub] = fn(*sub);
  };
  add("serve", "OpenAI-compatible server (chat, completions, streaming, tool calls, reasoning)", m2::cli::add_serve);
  add("bench", "Serving benchmark of an OpenAI-compatible endpoint (pp/tg table, concurrency sweep, workload)",
      m2::cli::add_bench);
  add("quantize", "BF16/FP8 checkpoint -> NVFP4 (ModelOpt or compressed-tensors) or MXFP4, with calibration",
      m2::cli::add_quantize);
  add("eval", "Perplexity, KL divergence and top-1 against a reference; per-expert weight errors", m2::cli::add_eval);
  add("inspect", "Describe a checkpoint: architecture, formats, bytes", m2::cli::add_inspect);
  add("run", "Greedy generation from token ids, a text prompt, or a chat conversation", m2::cli::add_run);
  add("synth", "Write a random MiniMax-M2 checkpoint in any weight format", m2::cli::add_synth);
  add("tokenize", "Text on stdin -> token ids as a JSON array", m2::cli::add_tokenize);
  add("detokenize", "JSON array of ids on stdin -> text", m2::cli::add_detokenize);
  add("template", "Render a conversation with the model's chat template", m2::cli::add_template);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto* sub : app.get_subcommands()) return runners.at(sub)();
  } catch (const m2::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
