// The decode loop must not allocate: after one warm-up step, further steps make no heap allocation.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // malloc/free behind new/delete on purpose

#include "model/model_fixture.h"

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

TEST_P(NoAllocation, DecodeStepsAfterWarmUp) {
  test::Loaded m(test::kFixtures / GetParam());
  const auto& c = m.weights.config;
  KvCache a(c, 64), b(c, 64);
  std::vector<int32_t> prompt = {5, 9, 11, 40, 7};
  std::vector<float> logits(2 * size_t(c.vocab_size));
  std::vector<SequenceInput> batch = {{&a, prompt}, {&b, {prompt.data(), 3}}};
  m.model->forward(batch, LogitsFor::LastToken, logits.data());
  int32_t next[2] = {3, 4};
  batch = {{&a, {&next[0], 1}}, {&b, {&next[1], 1}}};
  m.model->forward(batch, LogitsFor::LastToken, logits.data());  // warm-up of the decode shape
  allocations = 0;
  counting = true;
  for (int step = 0; step < 20; ++step) m.model->forward(batch, LogitsFor::LastToken, logits.data());
  counting = false;
  EXPECT_EQ(allocations.load(), 0);
  EXPECT_EQ(a.length(), 26);
}

INSTANTIATE_TEST_SUITE_P(Formats, NoAllocation, ::testing::Values("small-bf16", "small-nvfp4-ct", "small-mxfp4-ct"),
                         test::ParamName());

}  // namespace
}  // namespace m2
