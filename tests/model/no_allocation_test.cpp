// The decode loop must not allocate: after warm-up, further steps make no heap allocation (the model's
// forward pass alone, and a whole engine step).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // malloc/free behind new/delete on purpose

#include "model/model_fixture.h"
#include "runtime/engine.h"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

void* operator new(size_t n) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace m2 {
namespace {

class NoAllocation : public ::testing::TestWithParam<std::string> {};

TEST_P(NoAllocation, ModelDecodeStepsAfterWarmUp) {
  test::Loaded m(test::kFixtures / GetParam());
  const int bs = m.model->kv_block_size();
  test::KvSeq a, b;
  std::vector<int32_t> prompt = {5, 9, 11, 40, 7};
  m.step({{&a, prompt}, {&b, std::span<const int32_t>(prompt.data(), 3)}}, LogitsFor::Last);
  ASSERT_TRUE(m.kv->blocks().allocate(2, a.blocks));  // room for the decode steps below
  ASSERT_TRUE(m.kv->blocks().allocate(2, b.blocks));
  // A hand-built decode batch whose buffers are sized once, advanced in place.
  int32_t tokens[2] = {3, 4}, positions[2];
  int64_t slots[2];
  SequenceStep steps[2];
  std::vector<float> logits(2 * size_t(m.weights.config.vocab_size));
  auto decode = [&] {
    test::KvSeq* seqs[2] = {&a, &b};
    for (int s = 0; s < 2; ++s) {
      const int64_t pos = seqs[s]->length;
      positions[s] = int32_t(pos);
      slots[s] = int64_t(seqs[s]->blocks[size_t(pos / bs)]) * bs + pos % bs;
      steps[s] = {1, pos + 1, seqs[s]->blocks, LogitsFor::Last};
    }
    m.model->forward({tokens, positions, slots, steps}, m.kv->view(), logits.data());
    a.length++;
    b.length++;
  };
  decode();  // warm-up of the decode shape
  allocations = 0;
  counting = true;
  for (int step = 0; step < 20; ++step) decode();
  counting = false;
  EXPECT_EQ(allocations.load(), 0);
  EXPECT_EQ(a.length, 26);
}

// A whole engine step in steady-state decode: scheduling (with prefix-cache registration of every
// block that fills), the forward pass, greedy and seeded sampling, stop checks, outputs.
TEST_P(NoAllocation, EngineDecodeStepsAfterWarmUp) {
  ModelWeights w = ModelWeights::load(test::kFixtures / GetParam());
  CpuBackend be(2);
  EngineOptions o;
  o.max_num_seqs = 4;
  o.kv.dtype = DType::BF16;
  o.kv.block_size = 4;  // blocks fill (and are registered) every few steps
  o.kv.num_blocks = 256;
  Engine e(w, be, o);
  for (int i = 0; i < 4; ++i) {
    Request r;
    r.prompt = {int32_t(5 + i), 9, 11, 40, 7, 3};
    r.params.max_tokens = 200;
    r.params.ignore_eos = true;
    r.params.temperature = i % 2 ? 0.8f : 0.0f;
    r.params.top_k = i == 3 ? 10 : 0;
    r.params.seed = uint64_t(i);
    e.add_request(std::move(r));
  }
  for (int step = 0; step < 12; ++step) e.step();  // prefill, and blocks allocated and registered
  ASSERT_EQ(e.stats().running, 4);
  allocations = 0;
  counting = true;
  int64_t tokens = 0;
  for (int step = 0; step < 24; ++step)
    for (const StepOutput& out : e.step()) tokens += out.num_new;
  counting = false;
  EXPECT_EQ(allocations.load(), 0);
  EXPECT_EQ(tokens, 4 * 24);
  EXPECT_GT(e.stats().kv_blocks_cached, 12);
}

INSTANTIATE_TEST_SUITE_P(Formats, NoAllocation, ::testing::Values("small-bf16", "small-nvfp4-ct", "small-mxfp4-ct"),
                         test::ParamName());

}  // namespace
}  // namespace m2
