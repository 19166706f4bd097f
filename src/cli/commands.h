// The m2 subcommands. Each registers its options on a CLI11 subcommand and returns its runner.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace m2::cli {

using Runner = std::function<int()>;
Runner add_inspect(CLI::App& app);
Runner add_run(CLI::App& app);
Runner add_synth(CLI::App& app);
Runner add_tokenize(CLI::App& app);
Runner add_detokenize(CLI::App& app);
Runner add_template(CLI::App& app);
Runner add_serve(CLI::App& app);
Runner add_bench(CLI::App& app);
Runner add_quantize(CLI::App& app);
Runner add_eval(CLI::App& app);

}  // namespace m2::cli
