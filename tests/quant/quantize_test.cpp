// m2 quantize end to end: the bf16 fixtures re-quantized give the published-format fixtures bit for
// bit; interrupted runs resume to identical bytes; cold experts get real scales; MSE search lowers
// the error; recipes, exclusions, shards and bad input.
#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <random>
#include <set>
#include <tuple>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "eval/evaluate.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "model/editable_checkpoint.h"
#include "model/model_fixture.h"
#include "quant/quantizer.h"
#include "text/tokenizer.h"
#include "test_util.h"

namespace m2 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The fixtures' calibration tokens: torch.randint(3, vocab, (1, 64), generator seeded 5), which
// draws 32-bit words of mt19937 and reduces them modulo the range (make_quant_fixtures.py).
fs::path fixture_calibration(const fs::path& dir, int vocab) {
  std::mt19937 g(5);
  json ids = json::array();
  for (int i = 0; i < 64; ++i) ids.push_back(3 + int(g() % uint32_t(vocab - 3)));
  const fs::path p = dir / "calib.json";
  std::ofstream(p) << json::array({ids}).dump();
  return p;
}

// GPTQ needs more calibration tokens than a module has inputs (256 in the small fixtures): 16 × 256
// random ids.
fs::path gptq_calibration(const fs::path& dir) {
  std::mt19937_64 rng(test::fresh_seed());
  json seqs = json::array();
  for (int s = 0; s < 16; ++s) {
    json ids = json::array();
    for (int i = 0; i < 256; ++i) ids.push_back(3 + int(rng() % 1021));
    seqs.push_back(ids);
  }
  const fs::path p = dir / "gptq-calib.json";
  std::ofstream(p) << seqs.dump();
  return p;
}

QuantizeOptions options(const fs::path& in, const fs::path& out, const std::string& recipe) {
  QuantizeOptions o;
  o.in_dir = in;
  o.out_dir = out;
  o.recipe = recipe;
  o.threads = 2;
  o.progress = false;
  return o;
}

float scalar(const TensorRef& t) {
  EXPECT_EQ(t.dtype, DType::F32) << t.name;
  float v;
  std::memcpy(&v, t.data, 4);
  return v;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct Requantize : ::testing::TestWithParam<std::string> {};

// Weights, block scales, global scales and k/v scales bit for bit; calibrated input scales to the
// float32 rounding of the fixtures' float64 calibration; configs as JSON. Two input scales of the
// fixtures are placeholders, not calibrations (make_quant_fixtures.py): w2's is the MoE-input amax
// and o_proj's is 4.0; for those only a finite positive value is required.
TEST_P(Requantize, ReproducesTheFixture) {
  const std::string fixture = GetParam();  // e.g. "tiny-nvfp4-ct"
  const std::string size = fixture.substr(0, fixture.find('-')), kind = fixture.substr(fixture.find('-') + 1);
  const std::string recipe = kind == "nvfp4-modelopt" ? "nvfp4-experts-only" : kind == "nvfp4-ct" ? "nvfp4-ct" : "mxfp4-experts";
  test::TempDir tmp;
  const fs::path in = test::kFixtures / (size + "-bf16"), want_dir = test::kFixtures / fixture, out = tmp.path / "out";
  const int vocab = read_json_file(in / "config.json")["vocab_size"];
  QuantizeOptions o = options(in, out, recipe);
  if (kind != "mxfp4-ct") {
    o.calib = {fixture_calibration(tmp.path, vocab).string()};
    o.calib_all_experts = true;  // the fixtures' expert input scales are the amax over every token
  }
  o.kv_cache_fp8 = kind == "nvfp4-modelopt";
  quantize(o);

  SafetensorsFile got(out / "model.safetensors"), want(want_dir / "model.safetensors");
  std::set<std::string> got_names, want_names;
  for (const auto& [n, t] : got.tensors()) got_names.insert(n);
  for (const auto& [n, t] : want.tensors()) want_names.insert(n);
  EXPECT_EQ(got_names, want_names);
  int exact = 0, calibrated = 0;
  for (const auto& [name, w] : want.tensors()) {
    if (!got.tensors().count(name)) continue;
    const TensorRef& g = got.tensors().at(name);
    ASSERT_EQ(g.dtype, w.dtype) << name;
    ASSERT_EQ(g.shape, w.shape) << name;
    const bool input_scale = ends_with(name, "input_scale") || ends_with(name, "input_global_scale");
    if (!input_scale) {
      EXPECT_EQ(std::memcmp(g.data, w.data, w.nbytes), 0) << name << " differs";
      ++exact;
      continue;
    }
    const float gv = scalar(g), wv = scalar(w);
    EXPECT_TRUE(std::isfinite(gv) && gv > 0) << name;
    if (name.find(".w2.") != std::string::npos || name.find("o_proj") != std::string::npos) continue;
    EXPECT_NEAR(gv / wv, 1.0, 1e-6) << name << ": " << gv << " vs the fixture's " << wv;
    ++calibrated;
  }
  EXPECT_GT(exact, 0);
  if (kind != "mxfp4-ct") {
    EXPECT_GT(calibrated, 0);
  }
  // Configs: the same JSON.
  EXPECT_EQ(read_json_file(out / "config.json"), read_json_file(want_dir / "config.json"));
  if (fs::exists(want_dir / "hf_quant_config.json")) {
    EXPECT_EQ(read_json_file(out / "hf_quant_config.json"), read_json_file(want_dir / "hf_quant_config.json"));
  }
  // And m2 loads it to the fixture's reference logits.
  test::Loaded m(out);
  const SafetensorsFile ref(want_dir / "reference.safetensors");
  const auto ids = test::as_ids(ref.tensors().at("ref.seq2.input_ids"));
  const auto logits = m.prefill(ids);
  const auto want_logits = test::as_floats(ref.tensors().at("ref.seq2.logits"));
  EXPECT_LE(test::rel_err(logits.data(), want_logits.data(), logits.size()), 1e-3);  // as the fixtures themselves load
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Requantize,
                         ::testing::Values("tiny-nvfp4-modelopt", "tiny-nvfp4-ct", "tiny-mxfp4-ct", "small-nvfp4-modelopt",
                                           "small-nvfp4-ct", "small-mxfp4-ct"),
                         test::ParamName());

// Every file of a directory, by name → bytes.
std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream f(e.path(), std::ios::binary);
    out[e.path().filename().string()] = std::string(std::istreambuf_iterator<char>(f), {});
  }
  return out;
}

// kill -9 at every kind of point (mid-calibration, a shard written but not renamed, after a shard),
// then --resume: the same files, byte for byte, as a run never interrupted.
TEST(Quantize, ResumeAfterKillGivesIdenticalBytes) {
  test::TempDir tmp;
  const fs::path in = test::kFixtures / "small-bf16";
  const fs::path calib = fixture_calibration(tmp.path, 1024);
  const std::string flags = " --recipe nvfp4-ct --calib " + calib.string() + " --max-shard-size 1MiB --kv-cache fp8 -q -t 2";
  const fs::path clean = tmp.path / "clean";
  auto r = test::run_m2("quantize " + in.string() + " " + clean.string() + flags);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto want = files_of(clean);
  ASSERT_GT(want.count("model.safetensors.index.json"), 0u) << "expected several shards";
  for (const std::string point : {"calib-layer:0", "shard-written:0", "shard:1"}) {
    const fs::path out = tmp.path / ("out-" + point.substr(0, point.find(':')));
    r = test::run_m2("quantize " + in.string() + " " + out.string() + flags, "M2_TEST_KILL_AT=" + point);
    EXPECT_EQ(r.code, 128 + SIGKILL) << point << "\n" << r.out;
    ASSERT_FALSE(fs::exists(out)) << point << ": the output appeared before the run finished";
    ASSERT_TRUE(fs::exists(out.string() + ".m2-partial")) << point;
    auto again = test::run_m2("quantize " + in.string() + " " + out.string() + flags);
    EXPECT_NE(again.code, 0) << point << ": an interrupted run must not be silently overwritten";
    EXPECT_NE(again.out.find("--resume"), std::string::npos) << again.out;
    auto resumed = test::run_m2("quantize " + in.string() + " " + out.string() + flags + " --resume");
    ASSERT_EQ(resumed.code, 0) << point << "\n" << resumed.out;
    EXPECT_NE(resumed.out.find("resuming"), std::string::npos) << resumed.out;
    auto got = files_of(out);
    got.erase("quantization_run.json");  // timings
    auto w = want;
    w.erase("quantization_run.json");
    ASSERT_EQ(got.size(), w.size()) << point;
    for (const auto& [name, bytes] : w) EXPECT_TRUE(got[name] == bytes) << point << ": " << name << " differs";
  }
}

// GPTQ through the quantizer: the Hessian-predicted output error drops for every group, and an
// interrupted GPTQ run resumes to the same bytes.
TEST(Quantize, GptqLowersTheOutputErrorAndResumes) {
  test::TempDir tmp;
  const fs::path in = test::kFixtures / "small-bf16", calib = gptq_calibration(tmp.path);
  for (const auto& [recipe, act_order, refine] : std::vector<std::tuple<std::string, bool, int>>{
           {"nvfp4-ct", false, 0}, {"mxfp4-experts", false, 0}, {"mxfp4-experts", true, 0}, {"nvfp4-ct", false, 3}}) {
    QuantizeOptions o = options(in, tmp.path / fmt::format("{}-gptq-{}-{}", recipe, act_order, refine), recipe);
    o.calib = {calib.string()};
    o.calib_seq_len = 256;
    o.gptq = true;
    o.gptq_act_order = act_order;
    o.gptq_refine = refine;
    quantize(o);
    const json rep = read_json_file(o.out_dir / "quantization_report.json");
    ASSERT_TRUE(rep.contains("gptq")) << rep.dump();
    EXPECT_EQ(rep["gptq"]["act_order"].get<bool>(), act_order);
    EXPECT_EQ(rep["gptq"]["refine_sweeps"].get<int>(), refine);
    for (const auto& [group, g] : rep["gptq"]["groups"].items())
      EXPECT_GT(g["mean_output_error_reduction"].get<double>(), 0.1) << recipe << " " << group;
    EXPECT_EQ(rep["gptq"]["groups"].contains("attention"), recipe == "nvfp4-ct");
  }
  const std::string flags = " --recipe nvfp4-ct --gptq --calib " + calib.string() + " --calib-samples 4 --max-shard-size 1MiB -q -t 2";
  auto r = test::run_m2("quantize " + in.string() + " " + (tmp.path / "clean").string() + flags);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const std::string point : {"calib-layer:0", "shard:0"}) {
    const fs::path out = tmp.path / ("killed-" + point.substr(0, point.find(':')));
    r = test::run_m2("quantize " + in.string() + " " + out.string() + flags, "M2_TEST_KILL_AT=" + point);
    EXPECT_EQ(r.code, 128 + SIGKILL) << r.out;
    r = test::run_m2("quantize " + in.string() + " " + out.string() + flags + " --resume");
    ASSERT_EQ(r.code, 0) << r.out;
    auto got = files_of(out), want = files_of(tmp.path / "clean");
    got.erase("quantization_run.json");
    want.erase("quantization_run.json");
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [name, bytes] : want) EXPECT_TRUE(got[name] == bytes) << point << ": " << name << " differs";
  }
}

// --gptq-sequential: layer 0 sees the same inputs either way, so its tensors are the same bytes; layer
// 1 is calibrated on layer 0's quantized outputs, so its GPTQ codes differ (while still lowering the
// output error); an interrupted sequential run resumes to the same bytes (the hidden states it
// checkpoints are the quantized layers' outputs).
TEST(Quantize, GptqSequentialCalibratesLaterLayersOnTheQuantizedOnes) {
  test::TempDir tmp;
  const fs::path in = test::kFixtures / "small-bf16", calib = gptq_calibration(tmp.path);
  std::map<bool, fs::path> out;
  for (const bool sequential : {false, true}) {
    QuantizeOptions o = options(in, tmp.path / (sequential ? "seq" : "plain"), "nvfp4-ct");
    o.calib = {calib.string()};
    o.calib_seq_len = 256;
    o.calib_samples = 16;
    o.gptq = true;
    o.gptq_sequential = sequential;
    quantize(o);
    out[sequential] = o.out_dir;
    const json rep = read_json_file(o.out_dir / "quantization_report.json");
    EXPECT_EQ(rep["gptq"]["sequential"].get<bool>(), sequential);
    for (const auto& [group, g] : rep["gptq"]["groups"].items())
      EXPECT_GT(g["mean_output_error_reduction"].get<double>(), 0.1) << group;
  }
  SafetensorsFile plain(out[false] / "model.safetensors"), seq(out[true] / "model.safetensors");
  int same0 = 0, differ1 = 0;
  for (const auto& [name, t] : plain.tensors()) {
    const TensorRef& u = seq.tensors().at(name);
    ASSERT_EQ(u.nbytes, t.nbytes) << name;
    const bool same = std::memcmp(u.data, t.data, t.nbytes) == 0;
    if (name.rfind("model.layers.0.", 0) == 0) {
      EXPECT_TRUE(same) << name << " differs in layer 0";
      same0 += same;
    } else if (name.rfind("model.layers.1.", 0) == 0) {
      differ1 += !same;
    }
  }
  EXPECT_GT(same0, 0);
  EXPECT_GT(differ1, 0) << "layer 1 was not calibrated on the quantized layer 0";

  const std::string flags = " --recipe nvfp4-ct --gptq --gptq-sequential --calib " + calib.string() +
                            " --calib-samples 16 --calib-seq-len 256 -q -t 2";
  const fs::path clean = tmp.path / "clean", killed = tmp.path / "killed";
  auto r = test::run_m2("quantize " + in.string() + " " + clean.string() + flags);
  ASSERT_EQ(r.code, 0) << r.out;
  r = test::run_m2("quantize " + in.string() + " " + killed.string() + flags, "M2_TEST_KILL_AT=calib-layer:0");
  EXPECT_EQ(r.code, 128 + SIGKILL) << r.out;
  r = test::run_m2("quantize " + in.string() + " " + killed.string() + flags + " --resume");
  ASSERT_EQ(r.code, 0) << r.out;
  auto got = files_of(killed), want = files_of(clean);
  got.erase("quantization_run.json");
  want.erase("quantization_run.json");
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, bytes] : want) EXPECT_TRUE(got[name] == bytes) << name << " differs after resume";
}

// What GPTQ is for, on the trained demo model and real text (a random-weight fixture fed random
// ids has near-isotropic activations, where GPTQ has nothing to exploit): calibrated on held-out
// prose after the scored part, GPTQ's KL divergence from BF16 on the first 1024 tokens is lower
// than round-to-nearest's with the same calibration, for NVFP4 and MXFP4.
TEST(Quantize, GptqBringsTheDemoCloserToBf16) {
  test::TempDir tmp;
  const Tokenizer tok = Tokenizer::load(test::kDemo / "tokenizer.json");
  std::ifstream f(test::kDemo / "eval-text" / "test-prose.txt");
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const std::vector<int32_t> ids = tok.encode(text, true);
  ASSERT_GT(ids.size(), 8192u + 16 * 256u);
  json seqs = json::array();
  for (size_t s = 0; s < 16; ++s) seqs.push_back(std::vector<int32_t>(ids.begin() + long(8192 + s * 256), ids.begin() + long(8192 + (s + 1) * 256)));
  const fs::path calib = tmp.path / "calib.json";
  std::ofstream(calib) << seqs.dump();
  const std::vector<int32_t> scored(ids.begin(), ids.begin() + 1024);
  const ModelWeights ref = ModelWeights::load(test::kDemo);
  CpuBackend be(2);
  EvalOptions eo;
  eo.ctx = 512;
  for (const std::string recipe : {"nvfp4-experts-only", "mxfp4-experts"}) {
    double kld[2] = {0, 0};
    for (const bool gptq : {false, true}) {
      QuantizeOptions o = options(test::kDemo, tmp.path / (recipe + (gptq ? "-gptq" : "-rtn")), recipe);
      o.calib = {calib.string()};
      o.calib_seq_len = 256;
      o.calib_samples = 16;
      o.gptq = gptq;
      quantize(o);
      const ModelWeights q = ModelWeights::load(o.out_dir);
      kld[gptq] = evaluate(q, &ref, be, scored, eo).kld_mean;
    }
    std::printf("%s KLD mean vs BF16: round-to-nearest %.5f, GPTQ %.5f (%.0f%% lower)\n", recipe.c_str(), kld[0], kld[1],
                100 * (1 - kld[1] / kld[0]));
    EXPECT_LT(kld[1], 0.9 * kld[0]) << recipe;
  }
}

// An expert the router never picks (its selection bias pushed far down) gets no calibration tokens:
// the all-expert pass rescues it with real statistics; without rescue the run stops naming it.
TEST(Quantize, ColdExpertsAreRescuedOrNamed) {
  test::EditableCheckpoint ck("tiny-bf16");
  for (int l = 0; l < 2; ++l) {
    const std::string name = "model.layers." + std::to_string(l) + ".block_sparse_moe.e_score_correction_bias";
    const TensorRef& t = ck.source->tensors().at(name);
    std::vector<uint8_t> bytes(t.data, t.data + t.nbytes);
    const float cold = -100.0f;
    std::memcpy(bytes.data() + 3 * 4, &cold, 4);  // expert 3
    ck.add(name, t.dtype, t.shape, bytes);
  }
  ck.write();
  test::TempDir tmp;
  const fs::path calib = fixture_calibration(tmp.path, 320);
  QuantizeOptions o = options(ck.dir.path, tmp.path / "out", "nvfp4-experts-only");
  o.calib = {calib.string()};
  o.min_expert_tokens = 1;
  o.rescue_cold_experts = false;
  try {
    quantize(o);
    FAIL() << "expected the cold expert to stop the run";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("experts 3 (0 tokens)"), std::string::npos) << e.what();
  }
  fs::remove_all(tmp.path / "out.m2-partial");
  o.rescue_cold_experts = true;
  quantize(o);
  const json report = read_json_file(tmp.path / "out" / "quantization_report.json");
  for (const auto& layer : report["calibration"]["layers"]) {
    EXPECT_EQ(layer["rescued"], json::array({3})) << layer.dump();
    EXPECT_EQ(layer["cold_experts"], 1);
  }
  // Every scale of every expert, the rescued one included, is finite and positive; its input
  // scale is its own calibration (the all-token MoE-input amax), not a default.
  SafetensorsFile f(tmp.path / "out" / "model.safetensors");
  for (const auto& [name, t] : f.tensors()) {
    if (ends_with(name, "weight_scale_2") || ends_with(name, "input_scale")) {
      const float v = scalar(t);
      EXPECT_TRUE(std::isfinite(v) && v > 0) << name << " = " << v;
    }
    if (ends_with(name, ".weight_scale")) {
      for (int64_t i = 0; i < t.numel(); ++i) {
        const float v = e4m3_to_f32(t.data[i]);
        ASSERT_TRUE(std::isfinite(v) && v > 0) << name << "[" << i << "]";
      }
    }
  }
  const float rescued = scalar(f.tensors().at("model.layers.0.block_sparse_moe.experts.3.w1.input_scale"));
  const float other = scalar(f.tensors().at("model.layers.0.block_sparse_moe.experts.0.w1.input_scale"));
  EXPECT_GE(rescued, other * 0.999f) << "the all-token amax is at least any routed subset's";
  test::Loaded m(tmp.path / "out");  // and it loads
}

// The weight error of plain max and of MSE search (NVFP4; MXFP4 by both exponent rules): search
// never loses, and wins where the format leaves it room (NVFP4's E4M3 block scales; MXFP4's OCP
// rule, which clips; the compressed-tensors rule is already close to the best power of two).
TEST(Quantize, MseScaleSearchLowersTheWeightError) {
  test::TempDir tmp;
  const fs::path in = test::kFixtures / "small-bf16", calib = fixture_calibration(tmp.path, 1024);
  auto error_of = [&](const std::string& recipe, ScaleSearch s, MxRule rule, const std::string& name) {
    QuantizeOptions o = options(in, tmp.path / name, recipe);
    if (recipe != "mxfp4-experts") o.calib = {calib.string()};
    o.scale_search = s;
    o.mx_rule = rule;
    quantize(o);
    return read_json_file(tmp.path / name / "quantization_report.json")["weight_error"]["experts w1/w3"]["mean_relative_error"]
        .get<double>();
  };
  const MxRule ct = MxRule::CompressedTensors, ocp = MxRule::Ocp;
  const double nv_max = error_of("nvfp4-experts-only", ScaleSearch::Max, ct, "nvmax"),
               nv_mse = error_of("nvfp4-experts-only", ScaleSearch::Mse, ct, "nvmse");
  const double ct_max = error_of("mxfp4-experts", ScaleSearch::Max, ct, "ctmax"), ct_mse = error_of("mxfp4-experts", ScaleSearch::Mse, ct, "ctmse");
  const double ocp_max = error_of("mxfp4-experts", ScaleSearch::Max, ocp, "ocpmax"),
               ocp_mse = error_of("mxfp4-experts", ScaleSearch::Mse, ocp, "ocpmse");
  std::printf("relative weight error: nvfp4 max %.5f mse %.5f; mxfp4 ct max %.5f mse %.5f; ocp max %.5f mse %.5f\n", nv_max, nv_mse,
              ct_max, ct_mse, ocp_max, ocp_mse);
  EXPECT_LT(nv_mse, nv_max * 0.95);
  EXPECT_LE(ct_mse, ct_max);
  EXPECT_LT(ocp_mse, ocp_max * 0.99);
}

// Exclusions: --keep-layers keeps whole blocks, --ignore (glob and re:) more modules; the configs
// say so in each format's own syntax, and the result loads.
TEST(Quantize, KeepLayersAndIgnoreWriteEachFormatsExclusions) {
  test::TempDir tmp;
  const fs::path in = test::kFixtures / "tiny-bf16", calib = fixture_calibration(tmp.path, 320);
  QuantizeOptions o = options(in, tmp.path / "mo", "nvfp4-experts-only");
  o.calib = {calib.string()};
  o.keep_layers = {1};
  o.ignore = {"*experts.5.*"};
  quantize(o);
  SafetensorsFile mo(tmp.path / "mo" / "model.safetensors");
  EXPECT_EQ(mo.tensors().at("model.layers.1.block_sparse_moe.experts.0.w1.weight").dtype, DType::BF16);
  EXPECT_EQ(mo.tensors().at("model.layers.0.block_sparse_moe.experts.5.w2.weight").dtype, DType::BF16);
  EXPECT_EQ(mo.tensors().at("model.layers.0.block_sparse_moe.experts.4.w2.weight").dtype, DType::U8);
  const json hq = read_json_file(tmp.path / "mo" / "hf_quant_config.json");
  const json excl = hq["quantization"]["exclude_modules"];
  EXPECT_NE(std::find(excl.begin(), excl.end(), "model.layers.1.*"), excl.end()) << excl.dump();
  EXPECT_NE(std::find(excl.begin(), excl.end(), "*experts.5.*"), excl.end()) << excl.dump();
  test::Loaded(tmp.path / "mo");

  o = options(in, tmp.path / "ct", "nvfp4-ct");
  o.calib = {calib.string()};
  o.keep_layers = {0};
  o.ignore = {"re:.*experts\\.2\\.w[13]"};
  quantize(o);
  SafetensorsFile ct(tmp.path / "ct" / "model.safetensors");
  EXPECT_TRUE(ct.tensors().count("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(ct.tensors().count("model.layers.1.self_attn.q_proj.weight_packed"));
  EXPECT_TRUE(ct.tensors().count("model.layers.1.block_sparse_moe.experts.2.w1.weight"));
  EXPECT_TRUE(ct.tensors().count("model.layers.1.block_sparse_moe.experts.2.w2.weight_packed"));
  const json ign = read_json_file(tmp.path / "ct" / "config.json")["quantization_config"]["ignore"];
  EXPECT_NE(std::find(ign.begin(), ign.end(), "re:model\\.layers\\.0\\..*"), ign.end()) << ign.dump();
  test::Loaded(tmp.path / "ct");
}

// The block-FP8 release's layout as input: dequantized tensor by tensor; unquantized FP8 modules
// come out BF16; the result tracks the FP8 model.
TEST(Quantize, BlockFp8InputQuantizesAndLoads) {
  test::TempDir tmp;
  const fs::path in = test::kFixtures / "small-fp8";
  QuantizeOptions o = options(in, tmp.path / "out", "nvfp4-experts-only");
  o.calib = {fixture_calibration(tmp.path, 1024).string()};
  quantize(o);
  SafetensorsFile f(tmp.path / "out" / "model.safetensors");
  EXPECT_EQ(f.tensors().at("model.layers.0.self_attn.q_proj.weight").dtype, DType::BF16);
  EXPECT_FALSE(f.tensors().count("model.layers.0.self_attn.q_proj.weight_scale_inv"));
  EXPECT_EQ(f.tensors().at("model.layers.0.block_sparse_moe.experts.0.w1.weight").dtype, DType::U8);
  test::Loaded q(tmp.path / "out"), ref(in);
  std::mt19937_64 rng(test::fresh_seed());
  std::vector<int32_t> ids(40);
  for (auto& t : ids) t = int32_t(rng() % 1024);
  const auto a = q.prefill(ids), b = ref.prefill(ids);
  EXPECT_LT(test::rel_err(a.data(), b.data(), a.size()), 0.2);
}

TEST(Quantize, BadInputIsAClearError) {
  test::TempDir tmp;
  const fs::path bf16 = test::kFixtures / "tiny-bf16";
  auto expect_error = [&](QuantizeOptions o, const std::string& needle) {
    try {
      quantize(o);
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(options(bf16, tmp.path / "a", "int3"), "--recipe 'int3' is unknown");
  expect_error(options(test::kFixtures / "tiny-nvfp4-ct", tmp.path / "b", "mxfp4-experts"), "is already nvfp4");
  expect_error(options(bf16, tmp.path / "c", "nvfp4-ct"), "give --calib FILE");
  QuantizeOptions o = options(bf16, tmp.path / "d", "mxfp4-experts");
  o.keep_layers = {7};
  expect_error(o, "--keep-layers 7");
  o = options(bf16, tmp.path / "e", "mxfp4-experts");
  o.ignore = {"re:(unclosed"};
  expect_error(o, "not a valid regular expression");
  o = options(bf16, bf16, "mxfp4-experts");
  expect_error(o, "already exists");
  o = options(bf16, tmp.path / "h", "mxfp4-experts");
  o.gptq = true;
  expect_error(o, "--gptq works from the calibration");
  o = options(bf16, tmp.path / "j", "mxfp4-experts");
  o.gptq_act_order = true;
  expect_error(o, "--gptq-act-order orders GPTQ's columns: add --gptq");
  o = options(bf16, tmp.path / "l", "mxfp4-experts");
  o.gptq_refine = 2;
  expect_error(o, "--gptq-refine refines GPTQ's codes: add --gptq");
  o.gptq_refine = -1;
  expect_error(o, "--gptq-refine -1: give 0-100 sweeps");
  o = options(bf16, tmp.path / "k", "mxfp4-experts");
  o.gptq_sequential = true;
  expect_error(o, "--gptq-sequential calibrates each layer on GPTQ's quantized layers before it: add --gptq");
  o = options(bf16, tmp.path / "k", "mxfp4-experts");
  o.gptq_route_weighted = true;
  expect_error(o, "--gptq-route-weighted weighs GPTQ's Hessians: add --gptq");
  o = options(bf16, tmp.path / "f", "nvfp4-ct");
  std::ofstream(tmp.path / "bad.json") << "[[1, 2, 99999]]";
  o.calib = {(tmp.path / "bad.json").string()};
  expect_error(o, "outside the vocabulary");
  o.calib = {(tmp.path / "missing.txt").string()};
  expect_error(o, "cannot read");
  // A nearly full disk is refused before anything is written.
  auto full = test::run_m2("quantize " + bf16.string() + " " + (tmp.path / "i").string() + " --recipe mxfp4-experts -q",
                           "M2_TEST_DISK_FREE=1000000");
  EXPECT_NE(full.code, 0);
  EXPECT_NE(full.out.find("free, the output needs"), std::string::npos) << full.out;
  EXPECT_FALSE(fs::exists(tmp.path / "i.m2-partial"));
  // The CLI names bad flags.
  auto r = test::run_m2("quantize " + bf16.string() + " " + (tmp.path / "g").string() + " --recipe mxfp4-experts --scale-search best");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--scale-search 'best'"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace m2
