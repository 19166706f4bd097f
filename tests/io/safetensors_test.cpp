#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace m2 {
namespace {

namespace fs = std::filesystem;

void write_raw(const fs::path& p, const std::string& header, size_t data_bytes, size_t header_len_override = 0) {
  std::ofstream out(p, std::ios::binary);
  uint64_t n = header_len_override ? header_len_override : header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  std::string data(data_bytes, '\x01');
  out << data;
}

template <typename E>
std::string error_of(const fs::path& p) {
  try {
    SafetensorsFile f(p);
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "no error";
}

TEST(Safetensors, WriteThenReadRoundTrip) {
  test::TempDir dir;
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint8_t> b = {7, 8, 9};
  write_safetensors(dir.path / "x.safetensors",
                    {{"a", DType::F32, {2, 3}, {reinterpret_cast<const uint8_t*>(a.data()), 24}},
                     {"b", DType::U8, {3}, b}},
                    {{"format", "pt"}});
  SafetensorsFile f(dir.path / "x.safetensors");
  ASSERT_EQ(f.tensors().size(), 2u);
  const TensorRef& ta = f.tensors().at("a");
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta.dtype, DType::F32);
  EXPECT_EQ(test::as_floats(ta), a);
  EXPECT_EQ(f.tensors().at("b").data[2], 9);
  EXPECT_EQ(f.metadata().at("format"), "pt");
}

TEST(Safetensors, TensorsOfWholeCacheLinesStartOnCacheLines) {
  // A 4-byte scalar first and a 6-byte vector between the weights (as in NVFP4 checkpoints' global
  // scales): written in the given order with an 8-byte header padding, the weights behind them would
  // start 4 or 10 bytes past a 64-byte boundary.
  test::TempDir dir;
  std::vector<uint8_t> scalar(4, 1), odd(6, 2), w1(128), w2(64 * 7);
  for (size_t i = 0; i < w1.size(); ++i) w1[i] = uint8_t(3 + i);
  for (size_t i = 0; i < w2.size(); ++i) w2[i] = uint8_t(5 * i + 1);
  write_safetensors(dir.path / "a.safetensors", {{"scale", DType::F32, {}, scalar},
                                                  {"w1", DType::BF16, {2, 32}, w1},
                                                  {"odd", DType::U8, {6}, odd},
                                                  {"w2", DType::U8, {7, 64}, w2}});
  SafetensorsFile f(dir.path / "a.safetensors");
  ASSERT_EQ(f.tensors().size(), 4u);
  for (const char* name : {"w1", "w2"})
    EXPECT_EQ(reinterpret_cast<uintptr_t>(f.tensors().at(name).data) % kTensorAlignment, 0u) << name;
  auto bytes = [&](const char* name) {
    const TensorRef& t = f.tensors().at(name);
    return std::vector<uint8_t>(t.data, t.data + t.nbytes);
  };
  EXPECT_EQ(bytes("scale"), scalar);
  EXPECT_EQ(bytes("w1"), w1);
  EXPECT_EQ(bytes("odd"), odd);
  EXPECT_EQ(bytes("w2"), w2);
}

TEST(Safetensors, EveryTruncationIsACleanError) {
  test::TempDir dir;
  std::vector<float> a(64, 1.5f);
  write_safetensors(dir.path / "full.safetensors", {{"w", DType::F32, {8, 8}, {reinterpret_cast<const uint8_t*>(a.data()), 256}}});
  std::ifstream in(dir.path / "full.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t cut = 0; cut < bytes.size(); cut += 3) {
    fs::path p = dir.path / "cut.safetensors";
    std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), std::streamsize(cut));
    std::string msg = error_of<FormatError>(p);
    EXPECT_NE(msg.find("cut.safetensors"), std::string::npos) << "cut " << cut << ": " << msg;
    EXPECT_EQ(msg.find("wrong exception"), std::string::npos) << msg;
  }
}

TEST(Safetensors, MalformedHeadersNameTheProblem) {
  test::TempDir dir;
  const fs::path p = dir.path / "bad.safetensors";
  struct Case {
    std::string header;
    size_t data;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"{not json", 0, "malformed header JSON"},
      {"[1,2]", 0, "not a JSON object"},
      {R"({"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1, "unsupported dtype 'F4'"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 8, "needs 8 bytes, data_offsets span 4"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4, "past the data section"},
      {R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "not a non-negative integer"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, "run backwards"},
      {R"({"w":{"dtype":"F32","shape":[2]}})", 8, "data_offsets"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       12, "overlap"},
      {R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,1]}})", 1, "too large"},
  };
  for (const auto& c : cases) {
    write_raw(p, c.header, c.data);
    std::string msg = error_of<FormatError>(p);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.header << " → " << msg;
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
  }
  write_raw(p, "{}", 0, size_t(1) << 40);
  EXPECT_NE(error_of<FormatError>(p).find("exceeds"), std::string::npos);
  EXPECT_NE(error_of<IoError>(dir.path / "missing.safetensors").find("cannot open"), std::string::npos);
}

TEST(Safetensors, ShardedCheckpointViaIndex) {
  test::TempDir dir;
  std::vector<float> a = {1, 2}, b = {3, 4, 5};
  write_safetensors(dir.path / "s1.safetensors", {{"a", DType::F32, {2}, {reinterpret_cast<const uint8_t*>(a.data()), 8}}});
  write_safetensors(dir.path / "s2.safetensors", {{"b", DType::F32, {3}, {reinterpret_cast<const uint8_t*>(b.data()), 12}}});
  std::ofstream(dir.path / "model.safetensors.index.json")
      << R"({"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})";
  Checkpoint ck(dir.path);
  EXPECT_EQ(ck.num_files(), 2u);
  EXPECT_EQ(test::as_floats(ck.get("b")), b);
  try {
    ck.get("c");
    FAIL() << "expected an error";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'c'"), std::string::npos);
  }
  // An index that maps a tensor to the wrong shard, or names a missing file, is refused.
  std::ofstream(dir.path / "model.safetensors.index.json", std::ios::trunc)
      << R"({"weight_map":{"a":"s2.safetensors","b":"s2.safetensors"}})";
  EXPECT_THROW(Checkpoint{dir.path}, ModelError);
  std::ofstream(dir.path / "model.safetensors.index.json", std::ios::trunc) << R"({"weight_map":{"a":"s9.safetensors"}})";
  EXPECT_THROW(Checkpoint{dir.path}, IoError);
  std::ofstream(dir.path / "model.safetensors.index.json", std::ios::trunc) << R"({"weight_map":{"a":"../x"}})";
  EXPECT_THROW(Checkpoint{dir.path}, FormatError);
  std::ofstream(dir.path / "model.safetensors.index.json", std::ios::trunc) << R"({"weight_map":)";
  EXPECT_THROW(Checkpoint{dir.path}, FormatError);
}

TEST(Safetensors, OpeningIsLazy) {
  // A 256 MiB tensor opens without its bytes being read: resident memory does not grow by its size.
  test::TempDir dir;
  const fs::path p = dir.path / "big.safetensors";
  const size_t n = size_t(256) << 20;
  std::string header = R"({"w":{"dtype":"U8","shape":[)" + std::to_string(n) + R"(],"data_offsets":[0,)" +
                       std::to_string(n) + "]}}";
  {
    std::ofstream out(p, std::ios::binary);
    uint64_t len = header.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << header;
  }
  fs::resize_file(p, 8 + header.size() + n);  // sparse: nothing written
  auto resident_bytes = [] {
    long pages = 0, resident = 0;
    std::ifstream("/proc/self/statm") >> pages >> resident;
    return resident * sysconf(_SC_PAGESIZE);
  };
  const long before = resident_bytes();
  SafetensorsFile f(p);
  const long after = resident_bytes();
  EXPECT_EQ(f.tensors().at("w").nbytes, n);
  EXPECT_LT(after - before, 16l << 20) << "opening paged in the tensor data";
  // Touching the data does page it in, which is what the check above would have caught.
  volatile uint8_t sink = 0;
  for (size_t i = 0; i < n; i += 4096) sink = sink + f.tensors().at("w").data[i];
  EXPECT_GT(resident_bytes() - before, 128l << 20);
}

// release(prefix) drops the resident pages of the named tensors only; their bytes read back the same.
TEST(Safetensors, ReleaseDropsResidentPagesAndKeepsTheData) {
  test::TempDir dir;
  const size_t n = size_t(48) << 20;
  std::mt19937_64 rng(test::fresh_seed());
  std::vector<uint8_t> big(n), small(4096 * 3);
  for (auto& b : big) b = uint8_t(rng());
  for (auto& b : small) b = uint8_t(rng());
  write_safetensors(dir.path / "model.safetensors", {{"layers.0.w", DType::U8, {int64_t(n)}, {big.data(), n}},
                                                      {"layers.1.w", DType::U8, {int64_t(small.size())}, {small.data(), small.size()}}});
  big.clear();
  big.shrink_to_fit();
  auto resident_bytes = [] {
    long pages = 0, resident = 0;
    std::ifstream("/proc/self/statm") >> pages >> resident;
    return resident * sysconf(_SC_PAGESIZE);
  };
  Checkpoint ck(dir.path);
  const TensorRef& w = ck.get("layers.0.w");
  auto checksum = [&] {
    uint64_t h = 0;
    for (size_t i = 0; i < n; ++i) h = h * 1099511628211ull + w.data[i];
    return h;
  };
  const long before = resident_bytes();
  const uint64_t sum = checksum();
  const long touched = resident_bytes();
  EXPECT_GT(touched - before, 32l << 20);
  ck.release("layers.1.");  // another tensor: nothing of layers.0 goes
  EXPECT_GT(resident_bytes() - before, 32l << 20);
  ck.release("layers.0.");
  EXPECT_LT(resident_bytes() - before, 8l << 20) << "release kept the pages";
  EXPECT_EQ(checksum(), sum);
  EXPECT_EQ(std::memcmp(ck.get("layers.1.w").data, small.data(), small.size()), 0);
}

}  // namespace
}  // namespace m2
