// KV-cache dtypes against HF's float64 logits: fp32 exact, bf16 and fp8 within named tolerances, fp8
// with the checkpoint's own k_scale/v_scale (≠ 1) better than with 1.0, and a loud notice when a
// checkpoint has none.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "model/editable_checkpoint.h"
#include "model/model_fixture.h"

namespace m2 {
namespace {

constexpr double kFp32KvTolerance = 1e-3;  // as the fp32 path everywhere (fixtures/README.md)
constexpr double kBf16KvTolerance = 1e-2;  // K/V rounded to 8 mantissa bits
constexpr double kFp8KvTolerance = 0.15;   // K/V in E4M3 (3 mantissa bits), scale 1.0 or calibrated

double worst_error(const std::filesystem::path& dir, DType kv, int block_size = 16) {
  test::LoadOptions o;
  o.kv_dtype = kv;
  o.block_size = block_size;
  test::Loaded m(dir, o);
  SafetensorsFile ref(dir / "reference.safetensors");
  double worst = 0;
  for (int s = 0; s < 3; ++s) {
    auto ids = test::as_ids(ref.tensors().at(fmt::format("ref.seq{}.input_ids", s)));
    auto want = test::as_floats(ref.tensors().at(fmt::format("ref.seq{}.logits", s)));
    auto got = m.prefill(ids);
    worst = std::max(worst, test::rel_err(got.data(), want.data(), got.size()));
  }
  return worst;
}

class KvDtypes : public ::testing::TestWithParam<std::string> {};

TEST_P(KvDtypes, LogitsWithinTheDtypesTolerance) {
  const auto dir = test::kFixtures / GetParam();
  const double f32 = worst_error(dir, DType::F32, 7), bf16 = worst_error(dir, DType::BF16), fp8 = worst_error(dir, DType::F8_E4M3);
  std::printf("%s: KV fp32 %.2e, bf16 %.2e, fp8 %.2e relative logit error\n", GetParam().c_str(), f32, bf16, fp8);
  EXPECT_LE(f32, kFp32KvTolerance);
  EXPECT_LE(bf16, kBf16KvTolerance);
  EXPECT_LE(fp8, kFp8KvTolerance);
  EXPECT_GT(bf16, f32) << "the bf16 cache was not used";
  EXPECT_GT(fp8, bf16) << "the fp8 cache was not used";
}

INSTANTIATE_TEST_SUITE_P(AllFormats, KvDtypes, ::testing::ValuesIn(test::kAllFixtures), test::ParamName());

// The largest |K| and |V| each layer stores for the reference prompts, from an fp32 cache.
std::vector<std::pair<float, float>> kv_amax(const std::filesystem::path& dir) {
  test::Loaded m(dir);
  SafetensorsFile ref(dir / "reference.safetensors");
  std::vector<std::pair<float, float>> amax(size_t(m.weights.config.num_layers), {0.0f, 0.0f});
  for (int s = 0; s < 3; ++s) {
    test::KvSeq seq;
    m.step(seq, test::as_ids(ref.tensors().at(fmt::format("ref.seq{}.input_ids", s))), LogitsFor::Last);
    const int64_t kvd = m.kv->view().kv_dim, bs = m.kv->view().block_size;
    for (size_t l = 0; l < amax.size(); ++l)
      for (int64_t p = 0; p < seq.length; ++p) {
        const int64_t slot = int64_t(seq.blocks[size_t(p / bs)]) * bs + p % bs;
        for (int64_t d = 0; d < kvd; ++d) {
          amax[l].first = std::max(amax[l].first, std::fabs(m.kv->view().layers[l].k.ptr<float>()[slot * kvd + d]));
          amax[l].second = std::max(amax[l].second, std::fabs(m.kv->view().layers[l].v.ptr<float>()[slot * kvd + d]));
        }
      }
    m.release(seq);
  }
  return amax;
}

// A copy of the ModelOpt NVFP4 fixture whose k_scale/v_scale are amax / 448 × `shrink` (ModelOpt's
// rule without its clamp to ≥ 1, so that they differ from 1).
struct ScaledCheckpoint {
  test::EditableCheckpoint ck;
  std::vector<float> scales;  // k, v per layer
  ScaledCheckpoint(const std::string& fixture, const std::vector<std::pair<float, float>>& amax, float shrink)
      : ck(fixture) {
    for (size_t l = 0; l < amax.size(); ++l)
      for (int kv = 0; kv < 2; ++kv) {
        const float s = (kv == 0 ? amax[l].first : amax[l].second) / 448.0f * shrink;
        scales.push_back(s);
        std::vector<uint8_t> bytes(4);
        std::memcpy(bytes.data(), &s, 4);
        ck.add(fmt::format("model.layers.{}.self_attn.{}", l, kv == 0 ? "k_proj.k_scale" : "v_proj.v_scale"), DType::F32,
               {}, bytes);
      }
    ck.write();
    std::filesystem::copy_file(test::kFixtures / fixture / "reference.safetensors", ck.dir.path / "reference.safetensors");
  }
};

// FP8 KV stores x / scale and reads e4m3 × scale with the checkpoint's scales: calibrated ones keep the
// logits within the fp8 tolerance; scales 20× too small clip K/V at ±448 and visibly break them (so the
// scales are really applied, on both sides).
TEST(KvFp8, CheckpointScalesAreUsedOnStoreAndRead) {
  const std::string fixture = "tiny-nvfp4-modelopt";
  auto amax = kv_amax(test::kFixtures / fixture);
  ScaledCheckpoint calibrated(fixture, amax, 1.0f), clipped(fixture, amax, 0.05f);
  for (float s : calibrated.scales) {
    ASSERT_GT(s, 0.0f);
    ASSERT_NE(s, 1.0f);
  }
  test::LoadOptions o;
  o.kv_dtype = DType::F8_E4M3;
  test::Loaded m(calibrated.ck.dir.path, o);
  for (size_t l = 0; l < amax.size(); ++l) {
    EXPECT_EQ(m.kv->view().layers[l].k_scale, calibrated.scales[2 * l]);
    EXPECT_EQ(m.kv->view().layers[l].v_scale, calibrated.scales[2 * l + 1]);
  }
  EXPECT_TRUE(m.kv->notices().empty());
  const double good = worst_error(calibrated.ck.dir.path, DType::F8_E4M3);
  const double bad = worst_error(clipped.ck.dir.path, DType::F8_E4M3);
  const double unit = worst_error(test::kFixtures / fixture, DType::F8_E4M3);
  std::printf("fp8 KV: calibrated scales %.2e, scale 1.0 %.2e, clipping scales %.2e relative logit error\n", good, unit,
              bad);
  EXPECT_LE(good, kFp8KvTolerance);
  EXPECT_GT(bad, 3 * good);
}

TEST(KvFp8, MissingScalesAreReportedNamingTheCheckpoint) {
  for (const char* fixture : {"tiny-bf16", "small-nvfp4-ct"}) {
    test::LoadOptions o;
    o.kv_dtype = DType::F8_E4M3;
    test::Loaded m(test::kFixtures / fixture, o);
    ASSERT_EQ(m.kv->notices().size(), 1u) << fixture;
    const std::string& n = m.kv->notices()[0];
    EXPECT_NE(n.find(fixture), std::string::npos) << n;
    EXPECT_NE(n.find("scales are 1.0"), std::string::npos) << n;
    for (const auto& L : m.kv->view().layers) EXPECT_EQ(L.k_scale, 1.0f);
  }
  test::LoadOptions bf16;
  bf16.kv_dtype = DType::BF16;
  EXPECT_TRUE(test::Loaded(test::kFixtures / "tiny-bf16", bf16).kv->notices().empty());  // only fp8 needs scales
}

TEST(KvCacheDtype, NamesParse) {
  EXPECT_EQ(parse_kv_cache_dtype("auto"), DType::F32);
  EXPECT_EQ(parse_kv_cache_dtype("auto", Device::Cuda), DType::BF16);
  EXPECT_EQ(parse_kv_cache_dtype("fp8"), DType::F8_E4M3);
  EXPECT_EQ(parse_kv_cache_dtype("bfloat16"), DType::BF16);
  EXPECT_THROW(parse_kv_cache_dtype("int4"), InvalidArgument);
}

}  // namespace
}  // namespace m2
