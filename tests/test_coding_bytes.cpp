// fp16 conversion against torch, the byte reader's bounds checks, and LayerRecord.
#include <catch2/catch.hpp>

#include "coding/bytes.h"
#include "coding/record.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

using namespace bb;

namespace {

uint32_t bits_of(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}
float float_of(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// torch's float -> half, as raw bits.
std::vector<uint16_t> torch_to_half(const std::vector<float>& v) {
  torch::Tensor t = torch::from_blob(const_cast<float*>(v.data()), {(int64_t)v.size()}, torch::kFloat);
  torch::Tensor h = t.to(torch::kHalf).contiguous();
  std::vector<uint16_t> out(v.size());
  std::memcpy(out.data(), h.data_ptr(), v.size() * 2);
  return out;
}

}  // namespace

TEST_CASE("half_to_float matches torch on all 65536 halves", "[coding]") {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = (uint16_t)i;
  torch::Tensor h = torch::from_blob(all.data(), {65536}, torch::kInt16).view(torch::kHalf);
  torch::Tensor f = h.to(torch::kFloat).contiguous();
  const float* ref = f.data_ptr<float>();
  int mismatches = 0;
  for (uint32_t i = 0; i < 65536; ++i)
    if (bits_of(half_to_float((uint16_t)i)) != bits_of(ref[i])) ++mismatches;
  CHECK(mismatches == 0);
  // And every half survives half -> float -> half unchanged (NaNs become the canonical NaN).
  int roundtrip_bad = 0;
  for (uint32_t i = 0; i < 65536; ++i) {
    bool nan = ((i >> 10) & 0x1f) == 0x1f && (i & 0x3ff);
    uint16_t back = float_to_half(half_to_float((uint16_t)i));
    if (!nan && back != i) ++roundtrip_bad;
  }
  CHECK(roundtrip_bad == 0);
}

TEST_CASE("float_to_half matches torch .half() bit for bit", "[coding]") {
  std::vector<float> xs;
  // Every rounding boundary: for each finite half, the exact midpoint to its successor and the
  // floats one ulp either side of it (ties-to-even, subnormal and overflow boundaries included).
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    double a = half_to_float((uint16_t)h);
    double b = h + 1 == 0x7c00 ? 65536.0 : (double)half_to_float((uint16_t)(h + 1));
    float mid = (float)((a + b) / 2);  // 12 significant bits: exact in float
    REQUIRE((double)mid == (a + b) / 2);
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f), (float)a}) {
      xs.push_back(x);
      xs.push_back(-x);
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {0.0f, -0.0f, inf, -inf, 65504.0f, 65519.996f, 65520.0f, 65536.0f, 1e10f,
                  std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                  std::numeric_limits<float>::min(), 5.9604645e-8f /* 2^-24 */, 2.9802322e-8f /* 2^-25 */,
                  std::nextafter(2.9802322e-8f, 1.0f), 1.0f / 3, 0.1f})
    xs.push_back(x);
  xs.push_back(std::numeric_limits<float>::quiet_NaN());
  xs.push_back(-std::numeric_limits<float>::quiet_NaN());
  // Random bit patterns cover every exponent, including NaNs with payloads.
  std::mt19937 rng(1234);
  for (int i = 0; i < 2000000; ++i) xs.push_back(float_of(rng()));
  // Random values in the range weights live in.
  std::normal_distribution<float> nd(0.0f, 0.05f);
  for (int i = 0; i < 500000; ++i) xs.push_back(nd(rng));

  std::vector<uint16_t> ref = torch_to_half(xs);
  size_t mismatches = 0;
  float first_bad = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (float_to_half(xs[i]) != ref[i]) {
      if (!mismatches) first_bad = xs[i];
      ++mismatches;
    }
  }
  INFO("first mismatch at float bits 0x" << std::hex << bits_of(first_bad));
  CHECK(mismatches == 0);
}

TEST_CASE("ByteWriter/ByteReader round trip and bounds checks", "[coding]") {
  ByteWriter w;
  w.u8(7);
  w.u32(0xdeadbeef);
  w.varint(0);
  w.varint(300);
  w.varint(~0ull);
  w.str("conv1");
  w.f64(-2.5);
  w.f16(0.1f);
  ByteReader r(w.data(), "test stream");
  CHECK(r.u8() == 7);
  CHECK(r.u32() == 0xdeadbeef);
  CHECK(r.varint() == 0);
  CHECK(r.varint() == 300);
  CHECK(r.varint() == ~0ull);
  CHECK(r.str() == "conv1");
  CHECK(r.f64() == -2.5);
  CHECK(r.f16() == half_to_float(float_to_half(0.1f)));
  CHECK(r.done());
  CHECK_THROWS_AS(r.u8(), bb::Error);
  CHECK_THROWS_WITH(r.u32(), Catch::Contains("test stream"));

  // A string whose length runs past the end.
  ByteWriter w2;
  w2.varint(1000);
  w2.raw("abc", 3);
  ByteReader r2(w2.data(), "s2");
  CHECK_THROWS_AS(r2.str(), bb::Error);
  // An over-long varint.
  std::vector<uint8_t> bad(11, 0xff);
  ByteReader r3(bad, "s3");
  CHECK_THROWS_WITH(r3.varint(), Catch::Contains("bad varint"));
}

TEST_CASE("LayerRecord sections", "[coding]") {
  LayerRecord rec;
  rec.layer = "layer1.0.conv1";
  rec.method = "pq";
  rec.add("idx", Component::indices, {1, 2, 3});
  rec.add("centroids", Component::codebook, {4});
  CHECK(rec.section("idx").bytes.size() == 3);
  CHECK(rec.section("centroids").component == Component::codebook);
  CHECK_THROWS_WITH(rec.section("scales"), Catch::Contains("layer1.0.conv1") && Catch::Contains("scales"));
  CHECK_THROWS_AS(rec.add("idx", Component::side, {}), bb::Error);
  CHECK(std::string(component_name(Component::indices)) == "indices");
  CHECK(std::string(component_name(Component::codebook)) == "codebook");
  CHECK(std::string(component_name(Component::side)) == "side");
}
