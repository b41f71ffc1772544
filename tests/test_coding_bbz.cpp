// The .bbz container: round trip, byte accounting, determinism, error messages, and fuzzing of
// truncated / bit-flipped files.
#include <catch2/catch.hpp>

#include "coding/bbz.h"
#include "coding/bytes.h"
#include "coding/symbols.h"
#include "common/error.h"
#include "common/hash.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <unistd.h>

using namespace bb;

namespace {

BbzFile sample_file() {
  torch::manual_seed(3);
  BbzFile f;
  f.model = "lenet5";
  f.provenance = {{"bitbench", "0.1.0"}, {"method", "pq"}, {"params", {{"k", 256}, {"d", 4}}}, {"seed", 7}};
  LayerRecord a;
  a.layer = "conv1";
  a.method = "pq";
  a.shape = {6, 1, 5, 5};
  a.add("idx", Component::indices, encode_symbols({1, 2, 3, 4, 5, 1, 1, 0}, 16, Coder::huffman));
  {
    ByteWriter w;
    put_floats(w, torch::randn({16, 4}), true);
    a.add("centroids", Component::codebook, w.take());
  }
  a.add("scale", Component::side, {1, 2, 3, 4});
  a.estimate.index_bits = 32;
  a.estimate.codebook_bits = 16 * 4 * 16;
  a.estimate.side_bits = 32;
  a.estimate.codebook_values = 64;
  a.estimate.fixed_index_bits = 32;
  LayerRecord b;
  b.layer = "fc3";
  b.method = "uniform";
  b.shape = {10, 84};
  b.add("levels", Component::indices, encode_symbols(std::vector<uint32_t>(840, 3), 8, Coder::rans));
  b.add("empty", Component::side, {});
  f.layers = {a, b};
  f.tensors.push_back({"conv1.bias", torch::randn({6}), false});
  f.tensors.push_back({"fc3.bias", torch::randn({10}) * 1e-3, true});
  f.tensors.push_back({"bn.num_batches_tracked", torch::tensor(12345, torch::kLong), false});
  f.tensors.push_back({"bn.running_var", torch::rand({3, 2}), false});
  f.tensors.push_back({"empty", torch::zeros({0, 4}), false});
  return f;
}

bool same_tensor_bits(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  torch::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) == 0;
}

std::string temp_path(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("bitbench_test_coding_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

// Rewrites the size field and CRC so that a mutation reaches the body parser.
void reseal(std::vector<uint8_t>& b) {
  if (b.size() < 20) return;
  uint64_t n = b.size();
  std::memcpy(b.data() + 8, &n, 8);
  uint32_t crc = crc32(b.data(), b.size() - 4);
  std::memcpy(b.data() + b.size() - 4, &crc, 4);
}

}  // namespace

TEST_CASE("bbz round trip is exact and deterministic", "[coding]") {
  BbzFile f = sample_file();
  BbzSizes ws;
  std::vector<uint8_t> bytes = serialize_bbz(f, &ws);
  CHECK(serialize_bbz(f) == bytes);
  CHECK(serialize_bbz(sample_file()) == bytes);

  BbzSizes rs;
  BbzFile g = parse_bbz(bytes.data(), bytes.size(), "mem.bbz", &rs);
  CHECK(g.model == "lenet5");
  CHECK(g.provenance == f.provenance);
  REQUIRE(g.layers.size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    const LayerRecord &x = f.layers[i], &y = g.layers[i];
    CHECK(x.layer == y.layer);
    CHECK(x.method == y.method);
    CHECK(x.shape == y.shape);
    REQUIRE(x.sections.size() == y.sections.size());
    for (size_t s = 0; s < x.sections.size(); ++s) {
      CHECK(x.sections[s].name == y.sections[s].name);
      CHECK(x.sections[s].component == y.sections[s].component);
      CHECK(x.sections[s].bytes == y.sections[s].bytes);
    }
    CHECK(x.estimate.index_bits == y.estimate.index_bits);
    CHECK(x.estimate.codebook_bits == y.estimate.codebook_bits);
    CHECK(x.estimate.side_bits == y.estimate.side_bits);
    CHECK(x.estimate.codebook_values == y.estimate.codebook_values);
    CHECK(x.estimate.fixed_index_bits == y.estimate.fixed_index_bits);
  }
  REQUIRE(g.tensors.size() == f.tensors.size());
  for (size_t i = 0; i < f.tensors.size(); ++i) {
    const StoredTensor &x = f.tensors[i], &y = g.tensors[i];
    INFO(x.name);
    CHECK(x.name == y.name);
    CHECK(x.fp16 == y.fp16);
    // fp16 tensors come back exactly as torch's .half().float(); others bit-exact.
    torch::Tensor expect = x.fp16 ? x.value.to(torch::kHalf).to(torch::kFloat) : x.value;
    CHECK(same_tensor_bits(expect, y.value));
  }
  CHECK(serialize_bbz(g) == bytes);  // re-serialising the parsed file gives the same bytes

  // The sizes seen when reading are the ones measured when writing, and they add up.
  CHECK(rs.header == ws.header);
  CHECK(rs.checksum == 4);
  CHECK(rs.total == (int64_t)bytes.size());
  CHECK(ws.total == (int64_t)bytes.size());
  CHECK(rs.tensors == ws.tensors);
  REQUIRE(rs.layers.size() == ws.layers.size());
  int64_t sum = ws.header + ws.checksum;
  for (size_t i = 0; i < ws.layers.size(); ++i) {
    CHECK(rs.layers[i].layer == ws.layers[i].layer);
    CHECK(rs.layers[i].method == ws.layers[i].method);
    CHECK(rs.layers[i].indices == ws.layers[i].indices);
    CHECK(rs.layers[i].codebook == ws.layers[i].codebook);
    CHECK(rs.layers[i].side == ws.layers[i].side);
    sum += ws.layers[i].total();
  }
  for (auto& kv : ws.tensors) sum += kv.second;
  CHECK(sum == ws.total);
  // Section payloads go to their component; the record's own bytes are side.
  CHECK(ws.layers[0].indices == (int64_t)f.layers[0].section("idx").bytes.size());
  CHECK(ws.layers[0].codebook == 16 * 4 * 2);
  CHECK(ws.layers[0].side > 4);
  CHECK(ws.tensors.at("conv1.bias") > 6 * 4);
  CHECK(ws.tensors.at("fc3.bias") < 10 * 4);
}

TEST_CASE("put_floats / get_floats", "[coding]") {
  torch::Tensor t = torch::randn({5, 7});
  for (bool fp16 : {false, true}) {
    ByteWriter w;
    put_floats(w, t, fp16);
    CHECK(w.size() == 35u * (fp16 ? 2 : 4));
    ByteReader r(w.data(), "floats");
    torch::Tensor back = get_floats(r, 35, fp16).reshape({5, 7});
    CHECK(r.done());
    CHECK(same_tensor_bits(back, fp16 ? t.to(torch::kHalf).to(torch::kFloat) : t));
    ByteReader r2(w.data(), "floats");
    CHECK_THROWS_AS(get_floats(r2, 36, fp16), bb::Error);
  }
}

TEST_CASE("bbz files on disk and their errors", "[coding]") {
  const std::string path = temp_path("model.bbz");
  BbzFile f = sample_file();
  BbzSizes ws, rs;
  write_bbz(path, f, &ws);
  CHECK((int64_t)std::filesystem::file_size(path) == ws.total);
  BbzFile g = read_bbz(path, &rs);
  CHECK(serialize_bbz(g) == serialize_bbz(f));
  CHECK(rs.total == ws.total);

  std::vector<uint8_t> good = serialize_bbz(f);
  auto write_raw = [&](const std::vector<uint8_t>& b) {
    std::ofstream o(path, std::ios::binary | std::ios::trunc);
    o.write(reinterpret_cast<const char*>(b.data()), b.size());
  };

  {  // valid JSON that is not an object: a clear error naming the file
    BbzFile p = sample_file();
    p.provenance = nlohmann::json::array({1, 2});
    write_raw(serialize_bbz(p));
    CHECK_THROWS_WITH(read_bbz(path), Catch::Contains("provenance is array JSON, not an object") && Catch::Contains(path));
  }
  write_raw(std::vector<uint8_t>{'P', 'K', 3, 4, 0, 0, 0, 0, 0, 0});
  CHECK_THROWS_WITH(read_bbz(path), Catch::Contains("not a bitbench .bbz file (bad magic)") && Catch::Contains(path));

  std::vector<uint8_t> b = good;
  b[4] = 2;  // format version 2
  write_raw(b);
  CHECK_THROWS_WITH(read_bbz(path), Catch::Contains("newer") && Catch::Contains(path));

  b = good;
  b.resize(b.size() - 10);
  write_raw(b);
  CHECK_THROWS_WITH(read_bbz(path), Catch::Contains("truncated") && Catch::Contains(path));
  b.resize(2);
  write_raw(b);
  CHECK_THROWS_WITH(read_bbz(path), Catch::Contains("truncated") && Catch::Contains(path));

  b = good;
  b[b.size() / 2] ^= 0x10;
  write_raw(b);
  CHECK_THROWS_WITH(read_bbz(path), Catch::Contains("checksum") && Catch::Contains(path));

  CHECK_THROWS_WITH(read_bbz(path + ".missing"), Catch::Contains(path + ".missing"));

  // Invalid content is refused at write time.
  BbzFile dup = f;
  dup.tensors.push_back(dup.tensors[0]);
  CHECK_THROWS_WITH(serialize_bbz(dup), Catch::Contains("conv1.bias"));
  BbzFile bad_dtype = f;
  bad_dtype.tensors.push_back({"mask", torch::ones({3}, torch::kBool), false});
  CHECK_THROWS_WITH(serialize_bbz(bad_dtype), Catch::Contains("mask"));
  std::filesystem::remove_all(std::filesystem::path(path).parent_path());
}

TEST_CASE("bbz fuzz: truncations and bit flips never crash", "[coding]") {
  const std::vector<uint8_t> good = serialize_bbz(sample_file());
  std::mt19937_64 rng(2024);
  int same = 0, rejected = 0, resealed_ok = 0, rejected_sealed = 0;
  for (int it = 0; it < 4000; ++it) {
    std::vector<uint8_t> b = good;
    const int mode = it % 4;
    if (mode == 0) {
      b.resize(rng() % b.size());
    } else {
      const int flips = 1 + (int)(rng() % 4);
      for (int k = 0; k < flips; ++k) b[rng() % b.size()] ^= (uint8_t)(1u << (rng() % 8));
      // Half of the flipped files get a valid size and CRC, so the body parser sees the damage.
      if (mode >= 2) reseal(b);
    }
    try {
      BbzFile g = parse_bbz(b.data(), b.size(), "fuzz.bbz");
      if (mode < 2) {
        // Without resealing, only an unchanged file may parse, and it must parse identically.
        REQUIRE(serialize_bbz(g) == good);
        ++same;
      } else {
        ++resealed_ok;  // a valid file with different content (e.g. a changed byte in a payload)
        std::vector<uint8_t> again = serialize_bbz(g);
        BbzFile h = parse_bbz(again.data(), again.size(), "again");
        REQUIRE(serialize_bbz(h) == again);
      }
    } catch (const bb::Error& e) {
      ++(mode < 2 ? rejected : rejected_sealed);
      REQUIRE(std::string(e.what()).find("fuzz.bbz") != std::string::npos);
    }
  }
  // Every truncation and every unsealed flip is caught (a flip may only cancel itself out).
  CHECK(same <= 5);
  CHECK(same + rejected == 2000);
  CHECK(rejected_sealed > 0);
  CHECK(rejected_sealed + resealed_ok == 2000);
}
