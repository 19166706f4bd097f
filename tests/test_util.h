// Shared helpers for the tests: fresh random inputs (seed printed), reference tensors, error norms.
#pragma once
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "backend/random_weight.h"
#include "io/safetensors.h"

namespace m2::test {

inline const std::filesystem::path kData = M2_TEST_DATA;
inline const std::filesystem::path kFixtures = kData / "fixtures";
inline const std::filesystem::path kDemo = M2_DEMO_MODEL;

// A fresh seed per test run (M2_TEST_SEED reproduces one); recorded in the test output.
inline uint64_t fresh_seed() {
  if (const char* s = std::getenv("M2_TEST_SEED")) return std::stoull(s);
  uint64_t seed = (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  std::printf("[ seed     ] M2_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

// ‖a − b‖ / ‖b‖ in double.
inline double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

inline std::vector<float> as_floats(const TensorRef& t) {
  EXPECT_EQ(t.dtype, DType::F32) << t.name;
  std::vector<float> v(size_t(t.numel()));
  std::memcpy(v.data(), t.data, v.size() * 4);
  return v;
}

inline std::vector<int32_t> as_ids(const TensorRef& t) {
  std::vector<int32_t> v;
  for (int64_t i = 0; i < t.numel(); ++i) {
    int64_t x;
    std::memcpy(&x, t.data + 8 * i, 8);
    v.push_back(int32_t(x));
  }
  return v;
}

// gtest parameter names from fixture/format names: "small-nvfp4-ct" → "small_nvfp4_ct".
struct ParamName {
  template <typename Info>
  std::string operator()(const Info& info) const {
    std::string n = info.param;
    for (auto& c : n)
      if (!std::isalnum((unsigned char)c)) c = '_';
    return n;
  }
};

// A scratch directory removed at the end of the test.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/m2test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

// The m2 binary run with `args` (a shell command line; stderr merged into out), with `env`
// (VAR=value ...) added to its environment.
struct RunResult {
  int code;
  std::string out;
};
inline RunResult run_m2(const std::string& args, const std::string& env = "") {
  const std::string cmd = (env.empty() ? "" : "env " + env + " ") + std::string(M2_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1, out};
}

}  // namespace m2::test
