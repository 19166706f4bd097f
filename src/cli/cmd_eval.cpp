// m2 eval --model Q [--ref R] (--text FILE | --ids FILE): perplexity, and against a reference KL
// divergence, top-1 agreement and Δp. m2 eval --experts Q --ref R: per-expert errors and plots.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backend/cpu/cpu_backend.h"
#include "cli/commands.h"
#include "core/error.h"
#include "eval/evaluate.h"
#include "eval/expert_error.h"
#include "eval/report.h"
#include "io/config.h"
#include "quant/calibration.h"
#include "text/chat.h"
#include "text/tokenizer.h"

namespace m2::cli {

namespace {

namespace fs = std::filesystem;

struct EvalFlags {
  std::string model, ref, experts, text, ids, json, plots, tokenizer;
  std::vector<std::string> calib;
  int calib_samples = 16, calib_seq_len = 512;
  int64_t ctx = 1024, max_tokens = 0;
  bool streaming = false, quiet = false;
  int threads = 0;
  std::string activations = "f32";
};

std::vector<int32_t> read_ids(const EvalFlags& f) {
  if (!f.ids.empty()) {
    const nlohmann::json j = read_json_file(f.ids);
    if (!j.is_array()) fail<FormatError>("--ids {}: expected a JSON array of token ids", f.ids);
    std::vector<int32_t> ids;
    for (size_t i = 0; i < j.size(); ++i) {
      if (!j[i].is_number_integer()) fail<FormatError>("--ids {}: element {} is not an integer", f.ids, i);
      ids.push_back(j[i].get<int32_t>());
    }
    return ids;
  }
  std::ifstream in(f.text, std::ios::binary);
  if (!in) fail<IoError>("--text {}: cannot read", f.text);
  std::stringstream s;
  s << in.rdbuf();
  const Tokenizer tok = Tokenizer::load(f.tokenizer.empty() ? f.model : f.tokenizer);
  return tok.encode(s.str(), false);  // no BOS: the windows of reference-nll.safetensors
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) fail<IoError>("{}: cannot write", path);
  out << text;
  if (!out) fail<IoError>("{}: write failed", path);
}

// A progress bar on stderr, redrawn at most every 1% of the work.
std::function<void(int64_t, int64_t, const char*)> progress_bar(bool on) {
  if (!on) return {};
  auto last = std::make_shared<int>(-1);
  return [last](int64_t done, int64_t total, const char* what) {
    const int pct = total ? int(100 * done / total) : 100;
    if (pct == *last) return;
    *last = pct;
    fmt::print(stderr, "\r[{:<30}] {:3d}% {}/{} {}", std::string(size_t(pct * 30 / 100), '#'), pct, done, total, what);
    if (done == total) fmt::print(stderr, "\n");
  };
}

int eval_text(const EvalFlags& f) {
  if (f.text.empty() == f.ids.empty()) fail<InvalidArgument>("give one of --text FILE or --ids FILE");
  std::vector<int32_t> ids = read_ids(f);
  if (f.max_tokens > 0 && int64_t(ids.size()) > f.max_tokens) ids.resize(size_t(f.max_tokens));
  const ModelWeights q = ModelWeights::load(f.model);
  std::unique_ptr<ModelWeights> r;
  if (!f.ref.empty()) r = std::make_unique<ModelWeights>(ModelWeights::load(f.ref));
  // The model runs with --activations; the reference always with exact fp32 activations, so that
  // `m2 eval M --ref M --activations q8` measures what int8 activations cost.
  const Activations act = parse_activations(f.activations);
  CpuBackend be(f.threads, LinearPath::Auto, act);
  std::unique_ptr<CpuBackend> ref_be;
  EvalOptions o;
  if (r && act != Activations::F32) {
    ref_be = std::make_unique<CpuBackend>(f.threads);
    o.ref_backend = ref_be.get();
  }
  o.ctx = f.ctx;
  o.streaming = f.streaming;
  o.progress = progress_bar(!f.quiet);
  const EvalSummary s = evaluate(q, r.get(), be, ids, o);
  const EvalInputs in{f.model, f.ref, f.text.empty() ? f.ids : f.text, f.ctx, f.streaming};
  fmt::print("{}", eval_markdown(s, in));
  if (!f.json.empty()) write_file(f.json, eval_json(s, in).dump(2) + "\n");
  return 0;
}

int eval_experts(const EvalFlags& f) {
  if (f.ref.empty()) fail<InvalidArgument>("--experts needs --ref: the checkpoint the experts are compared with");
  const ModelWeights q = ModelWeights::load(f.experts), r = ModelWeights::load(f.ref);
  CpuBackend be(f.threads);
  ExpertErrors errs = expert_weight_errors(q, r, be);
  if (!f.calib.empty()) {
    std::unique_ptr<Tokenizer> tok;
    std::unique_ptr<ChatFormat> chat;
    if (fs::exists(fs::path(f.ref) / "tokenizer.json")) tok = std::make_unique<Tokenizer>(Tokenizer::load(f.ref));
    try {
      chat = std::make_unique<ChatFormat>(ChatFormat::load(f.ref));
    } catch (const ModelError&) {
    }
    const auto samples = load_calibration(f.calib, f.calib_samples, f.calib_seq_len, tok.get(), chat.get(), r.config.vocab_size);
    expert_output_errors(errs, q, r, be, samples);
  }
  const ExpertInputs in{f.experts, f.ref, f.calib};
  fmt::print("{}", experts_markdown(errs, in));
  if (!f.json.empty()) write_file(f.json, experts_json(errs, in).dump(2) + "\n");
  if (!f.plots.empty()) {
    fs::create_directories(f.plots);
    write_file((fs::path(f.plots) / "expert_weight_error_heatmap.svg").string(), expert_heatmap_svg(errs, "whole"));
    write_file((fs::path(f.plots) / "expert_weight_error_histogram.svg").string(), expert_histogram_svg(errs));
    if (errs.has_output)
      write_file((fs::path(f.plots) / "expert_output_error_heatmap.svg").string(), expert_heatmap_svg(errs, "output"));
    fmt::print(stderr, "plots written to {}\n", f.plots);
  }
  return 0;
}

int eval_main(const EvalFlags& f) {
  if (!f.experts.empty()) {
    if (!f.model.empty()) fail<InvalidArgument>("give --model (text metrics) or --experts (expert errors), not both");
    return eval_experts(f);
  }
  if (f.model.empty()) fail<InvalidArgument>("give --model DIR (with --text or --ids), or --experts DIR --ref DIR");
  return eval_text(f);
}

}  // namespace

Runner add_eval(CLI::App& app) {
  auto f = std::make_shared<EvalFlags>();
  app.add_option("--model", f->model, "The checkpoint evaluated (usually the quantized one)");
  app.add_option("--ref", f->ref, "The reference checkpoint (BF16): adds KLD, top-1 and Δp");
  app.add_option("--text", f->text, "Text file, tokenized with the model's tokenizer (no BOS)");
  app.add_option("--ids", f->ids, "JSON array of token ids");
  app.add_option("--tokenizer", f->tokenizer, "Tokenizer directory or tokenizer.json (default: the model's)");
  app.add_option("--ctx", f->ctx, "Window: ctx + 1 tokens starting every ctx tokens, each scoring its last ctx")
      ->capture_default_str();
  app.add_option("--max-tokens", f->max_tokens, "Use only the first N tokens (0 = all)")->capture_default_str();
  app.add_flag("--streaming", f->streaming,
               "Layer by layer over all windows, each layer's pages released after it: models larger than memory");
  app.add_option("--experts", f->experts, "Per-expert errors of this checkpoint against --ref");
  app.add_option("--calib", f->calib, "With --experts: calibration data for output errors (as m2 quantize --calib)");
  app.add_option("--calib-samples", f->calib_samples, "Calibration sequences")->capture_default_str();
  app.add_option("--calib-seq-len", f->calib_seq_len, "Tokens per calibration sequence")->capture_default_str();
  app.add_option("--plots", f->plots, "With --experts: directory for the SVG heatmaps and histogram");
  app.add_option("--json", f->json, "Write the results as JSON");
  app.add_option("--threads,-t", f->threads, "Threads (0 = all cores)")->capture_default_str();
  app.add_option("--activations", f->activations,
                 "f32 (exact, the default here) | q8 (int8 activations for FP4 weights, as m2 serve's default) | "
                 "q8-bf16 (q8, and bf16 activations for BF16 / FP8 weights with AVX512_BF16, BF16 with AArch64 BF16); "
                 "the --ref model always runs f32")
      ->capture_default_str();
  app.add_flag("--quiet,-q", f->quiet, "No progress bar");
  return [f] { return eval_main(*f); };
}

}  // namespace m2::cli
