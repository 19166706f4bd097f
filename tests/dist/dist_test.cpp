// Tensor, expert and pipeline parallelism over MPI, as users launch it: this binary runs under
// `mpirun --oversubscribe -np 2` and `-np 4` (tests/CMakeLists.txt). Every rank runs every test;
// rank 0 also runs the model whole, in one process, and compares: every fixture's logits within
// 1e-5 relative (fp32 activations and collectives), through chunked prefill and the paged cache,
// and greedy continuations through the engine identical.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "dist/driver.h"
#include "model/model_fixture.h"
#include "runtime/engine.h"

namespace m2::test {
namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}
bool all_ranks(bool ok) {
  int v = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&v, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}
uint64_t shared_seed() {
  uint64_t seed = world_rank() == 0 ? fresh_seed() : 0;
  MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  return seed;
}

// A layout and the checkpoints it must refuse because a split cuts a scale block (the refusal is
// part of what is tested: the message names the tensor).
struct Layout {
  std::string name;
  ParallelOptions options;
  std::vector<std::string> refused;
};

ParallelOptions opts(int tp, int pp, bool ep, std::vector<int> layers = {}) {
  ParallelOptions o;
  o.tensor_parallel = tp;
  o.pipeline_parallel = pp;
  o.expert_parallel = ep;
  o.pipeline_layers = std::move(layers);
  o.microbatch_min_tokens = 1;  // every step of several sequences runs as pipeline micro-batches
  return o;
}

// FP8 fixtures keep 128×128 blocks on K projections of 32 (tiny) and 64 (small) rows: every
// tensor-parallel split cuts them. The tiny FP4 experts are 32 columns wide: 16 per rank cuts
// MXFP4's 32-column blocks, 8 per rank NVFP4's 16. Expert parallelism keeps experts whole.
std::vector<Layout> layouts(int world) {
  const std::vector<std::string> fp8 = {"tiny-fp8", "small-fp8"};
  if (world == 2)
    return {{"tp2", opts(2, 1, false), {"tiny-fp8", "small-fp8", "tiny-mxfp4-ct"}},
            {"ep2", opts(2, 1, true), fp8},
            {"pp2", opts(1, 2, false), {}}};
  if (world == 4)
    return {{"tp4", opts(4, 1, false), {"tiny-fp8", "small-fp8", "tiny-mxfp4-ct", "tiny-nvfp4-ct",
                                        "tiny-nvfp4-modelopt"}},
            {"ep4", opts(4, 1, true), fp8},
            {"tp2xpp2", opts(2, 2, false), {"tiny-fp8", "small-fp8", "tiny-mxfp4-ct"}}};
  return {};
}

// The demo model has 4 layers: pipeline splits there are uneven.
ParallelOptions for_model(ParallelOptions o, const std::filesystem::path& dir) {
  if (o.pipeline_parallel > 1 && dir == kDemo) o.pipeline_layers = o.pipeline_parallel == 2 ? std::vector<int>{1, 3}
                                                                                            : std::vector<int>{};
  return o;
}

double max_rel(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::abs(double(got[i]) - double(want[i])));
    scale = std::max(scale, std::abs(double(want[i])));
  }
  return diff / std::max(scale, 1e-30);
}

// Runs the same steps on a model: two sequences, A's prompt in two chunks (the second batched with
// B's prompt), then decode steps of both through the paged cache. Returns every step's logits.
std::vector<std::vector<float>> script(Loaded& m, std::mt19937_64& rng) {
  const int V = m.weights.config.vocab_size;
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  auto ids = [&](int n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& t : v) t = tok(rng);
    return v;
  };
  KvSeq a, b;
  const auto a1 = ids(6), a2 = ids(5), b1 = ids(7);
  std::vector<std::vector<float>> out;
  out.push_back(m.step(a, a1, LogitsFor::All));
  out.push_back(m.step({{&a, a2}, {&b, b1}}, LogitsFor::All));
  for (int i = 0; i < 3; ++i) {
    const auto da = ids(1), db = ids(1);
    out.push_back(m.step({{&a, da}, {&b, db}}, LogitsFor::Last));
  }
  return out;
}

class Sharded : public ::testing::TestWithParam<std::string> {};

void check_model(const Layout& layout, const std::filesystem::path& dir, bool refused_expected) {
  const int rank = world_rank();
  const uint64_t seed = shared_seed();
  const ParallelOptions o = for_model(layout.options, dir);
  const ModelConfig config = load_model_config(dir);
  const ShardSpec shard = shard_for_rank(config, o, rank, world_size());
  MpiCollectives comm(shard, rank);
  LoadOptions lo;
  lo.threads = 1;
  lo.num_blocks = 16;
  lo.max_tokens = 32;
  lo.shard = shard;
  lo.collectives = &comm;
  std::unique_ptr<Loaded> sharded;
  std::string refusal;
  try {
    sharded = std::make_unique<Loaded>(dir, lo);
  } catch (const InvalidArgument& e) {
    refusal = e.what();
  }
  const bool loaded = all_ranks(sharded != nullptr);
  if (refused_expected) {
    EXPECT_FALSE(loaded) << layout.name << " " << dir.filename() << " should be refused (a split cuts a block)";
    if (!sharded) {
      EXPECT_NE(refusal.find("cuts its"), std::string::npos) << refusal;
    }
    return;
  }
  ASSERT_TRUE(loaded) << layout.name << " " << dir.filename() << " refused on some rank: " << refusal;
  std::mt19937_64 rng(seed);
  const auto got = script(*sharded, rng);
  if (rank != 0) return;
  LoadOptions whole;
  whole.threads = 1;
  whole.num_blocks = 16;
  whole.max_tokens = 32;
  Loaded ref(dir, whole);
  std::mt19937_64 rng2(seed);
  const auto want = script(ref, rng2);
  ASSERT_EQ(got.size(), want.size());
  for (size_t s = 0; s < want.size(); ++s) {
    ASSERT_EQ(got[s].size(), want[s].size());
    EXPECT_LE(max_rel(got[s], want[s]), 1e-5) << layout.name << " " << dir.filename() << " step " << s;
  }
}

TEST_P(Sharded, LogitsEqualOneProcess) {
  for (const Layout& layout : layouts(world_size())) {
    SCOPED_TRACE(layout.name);
    const auto& r = layout.refused;
    check_model(layout, kFixtures / GetParam(), std::find(r.begin(), r.end(), GetParam()) != r.end());
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Sharded, ::testing::ValuesIn(kAllFixtures), ParamName());

TEST(Distributed, DemoModelLogitsEqualOneProcess) {
  for (const Layout& layout : layouts(world_size())) {
    SCOPED_TRACE(layout.name);
    check_model(layout, kDemo, false);
  }
}

// The real MiniMax-M2 widths (48 heads, 8 KV heads, 1536-wide experts, 128×128 FP8 blocks), one
// layer and 8 experts, written by `m2 synth` on rank 0: block-FP8 splits cleanly at TP 2 (the
// 2-rank job), NVFP4 at TP 4 (the 4-rank job; every rank is a tensor-parallel rank).
TEST(Distributed, RealWidthModelTensorParallel) {
  const int tp = world_size();
  const std::filesystem::path base = std::filesystem::temp_directory_path() / fmt::format("m2-dist-{}", getppid());
  for (const std::string format : {tp == 2 ? "fp8" : "nvfp4-modelopt"}) {
    const auto dir = base / format;
    if (world_rank() == 0) {
      const std::string cmd = fmt::format("{} synth {} --preset minimax-m2 --format {} --layers 1 --experts 8 --vocab 2048 "
                                          ">/dev/null", M2_BINARY, dir.string(), format);
      EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    check_model({fmt::format("tp{}", tp), opts(tp, 1, false), {}}, dir, false);
    MPI_Barrier(MPI_COMM_WORLD);
  }
  if (world_rank() == 0) std::filesystem::remove_all(base);
}

// The engine as m2 serve and m2 run drive it: rank 0 schedules (chunked prefill, several
// sequences, the paged cache) and broadcasts each step; the other ranks follow.
std::vector<std::vector<int32_t>> generate(Engine& engine, const std::vector<std::vector<int32_t>>& prompts,
                                           std::vector<float>* prompt_logits) {
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    Request r;
    r.prompt = prompts[i];
    r.params.temperature = 0;
    r.params.max_tokens = 12;
    r.params.ignore_eos = true;
    r.prompt_logits = i == 0;
    ids.push_back(engine.add_request(std::move(r)));
  }
  std::vector<std::vector<int32_t>> out(prompts.size());
  while (engine.has_work())
    for (const StepOutput& s : engine.step())
      for (size_t i = 0; i < ids.size(); ++i)
        if (s.id() == ids[i]) {
          for (int32_t t : s.new_tokens()) out[i].push_back(t);
          if (s.finished && i == 0) *prompt_logits = s.seq->prompt_logits;
        }
  return out;
}

EngineOptions engine_options() {
  EngineOptions o;
  o.max_num_seqs = 4;
  o.max_num_batched_tokens = 16;  // the 29-token prompt is prefilled in chunks
  o.max_model_len = 64;
  o.max_prompt_logit_rows = 16;
  o.kv.num_blocks = 32;
  o.kv.block_size = 8;
  return o;
}

TEST(Distributed, EngineGreedyContinuationsIdentical) {
  for (const std::filesystem::path& dir : {kDemo, kFixtures / "small-nvfp4-modelopt"}) {
    for (const Layout& layout : layouts(world_size())) {
      SCOPED_TRACE(layout.name + " " + dir.filename().string());
      const uint64_t seed = shared_seed();
      DistributedRun run(for_model(layout.options, dir), dir.string());
      const ModelWeights weights = ModelWeights::load(dir);
      CpuBackend backend(1);
      if (!run.root()) {
        EXPECT_EQ(run.follow(weights, backend), 0);
        continue;
      }
      std::mt19937_64 rng(seed);
      std::uniform_int_distribution<int32_t> tok(0, weights.config.vocab_size - 1);
      std::vector<std::vector<int32_t>> prompts;
      for (int n : {29, 5, 13}) {
        prompts.emplace_back(size_t(n));
        for (auto& t : prompts.back()) t = tok(rng);
      }
      EngineOptions o = engine_options();
      run.configure_root(o);
      std::vector<float> got_logits, want_logits;
      std::vector<std::vector<int32_t>> got;
      {
        Engine engine(weights, backend, o);
        run.attach(engine);
        got = generate(engine, prompts, &got_logits);
      }
      run.finish();
      Engine whole(weights, backend, engine_options());
      const auto want = generate(whole, prompts, &want_logits);
      EXPECT_EQ(got, want);
      ASSERT_EQ(got_logits.size(), want_logits.size());
      EXPECT_LE(max_rel(got_logits, want_logits), 1e-5);
    }
  }
}

}  // namespace
}  // namespace m2::test

int main(int argc, char** argv) {
  m2::MpiJob job(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();  // any rank's failure fails the job (mpirun's exit code)
}
