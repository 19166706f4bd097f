// How --calib files are mixed (load_calibration): shares in proportion to the weights, a file that
// runs out first reused from its start, every sequence of every file taken at least once, the
// sample cap and the sequence length; bad weights are clear errors.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <random>

#include "core/error.h"
#include "quant/calibration.h"
#include "test_util.h"

namespace m2 {
namespace {

using Seqs = std::vector<std::vector<int32_t>>;

// n random sequences of 3-9 token ids below 1000, written as a .json array of arrays.
Seqs write_ids(const std::filesystem::path& p, int n, std::mt19937_64& rng) {
  Seqs seqs;
  std::uniform_int_distribution<int32_t> id(0, 999), len(3, 9);
  std::ofstream out(p);
  out << "[";
  for (int i = 0; i < n; ++i) {
    seqs.emplace_back();
    out << (i ? ",[" : "[");
    for (int k = 0, l = len(rng); k < l; ++k) {
      seqs.back().push_back(id(rng));
      out << (k ? "," : "") << seqs.back().back();
    }
    out << "]";
  }
  out << "]";
  return seqs;
}

TEST(Calibration, FilesMixInProportionAndTheShorterIsReused) {
  std::mt19937_64 rng(test::fresh_seed());
  test::TempDir tmp;
  const auto a = write_ids(tmp.path / "a.json", 7, rng), b = write_ids(tmp.path / "b.json", 2, rng);
  const std::string fa = (tmp.path / "a.json").string(), fb = (tmp.path / "b.json").string();

  // One file: its sequences in order, capped by the sample count.
  EXPECT_EQ(load_calibration({fa}, 1000, 512, nullptr, nullptr, 1000), a);
  EXPECT_EQ(load_calibration({fa}, 3, 512, nullptr, nullptr, 1000), Seqs(a.begin(), a.begin() + 3));

  // Equal weights: the files alternate, b's two taken again in turn, until a's last: 7 of a, 6 of b.
  const Seqs equal = load_calibration({fa, fb}, 1000, 512, nullptr, nullptr, 1000);
  ASSERT_EQ(equal.size(), 13u);
  for (size_t i = 0; i < 7; ++i) EXPECT_EQ(equal[2 * i], a[i]) << i;
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(equal[2 * i + 1], b[i % 2]) << i;

  // b:3 against a:1: b's share is 3/4, so b is reused while a gives its 7 (7 of a, ~20 of b).
  const Seqs weighted = load_calibration({fa, fb + ":3"}, 1000, 512, nullptr, nullptr, 1000);
  std::map<std::vector<int32_t>, int> count;
  for (const auto& s : weighted) ++count[s];
  int from_a = 0, from_b = 0;
  for (const auto& s : a) from_a += count[s];
  for (const auto& s : b) from_b += count[s];
  EXPECT_EQ(from_a, 7);
  EXPECT_EQ(from_a + from_b, int(weighted.size()));
  EXPECT_NEAR(double(from_b) / double(weighted.size()), 0.75, 1.0 / double(weighted.size()) + 1e-9);
  EXPECT_GE(from_b, 3 * from_a - 3);
  EXPECT_LE(std::abs(count[b[0]] - count[b[1]]), 1);  // reused in turn

  // The longer file with the larger weight: nothing is reused (a:3 gives its 7, b:1 its 2).
  const Seqs heavy_long = load_calibration({fa + ":3", fb}, 1000, 512, nullptr, nullptr, 1000);
  count.clear();
  for (const auto& s : heavy_long) ++count[s];
  for (const auto& s : a) EXPECT_EQ(count[s], 1);
  EXPECT_EQ(heavy_long.size(), 7u + 2u);

  // The sample cap applies to the mixture; the sequence length cuts each sequence.
  EXPECT_EQ(load_calibration({fa, fb}, 5, 512, nullptr, nullptr, 1000).size(), 5u);
  for (const auto& s : load_calibration({fa, fb}, 1000, 2, nullptr, nullptr, 1000)) EXPECT_EQ(s.size(), 2u);
}

TEST(Calibration, BadWeightsAndIdsAreClearErrors) {
  std::mt19937_64 rng(test::fresh_seed());
  test::TempDir tmp;
  write_ids(tmp.path / "a.json", 3, rng);
  const std::string fa = (tmp.path / "a.json").string();
  try {
    load_calibration({fa + ":0"}, 10, 512, nullptr, nullptr, 1000);
    FAIL() << "a zero weight was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("weight must be positive"), std::string::npos) << e.what();
  }
  try {
    load_calibration({fa}, 10, 512, nullptr, nullptr, 10);  // ids up to 999 against a vocabulary of 10
    FAIL() << "ids outside the vocabulary were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace m2
