// The one-of-each helpers in src/common (issue 23): ceil_log2 (common/bits.h), mix_seed
// (common/hash.h), strictly parsed runtime settings (common/runtime.h) and the one YAML reader
// (common/yaml_util.h).
#include <catch2/catch.hpp>

#include "coding/symbols.h"
#include "common/bits.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/runtime.h"
#include "common/yaml_util.h"
#include "test_data_helpers.h"

#include <cmath>
#include <cstdlib>
#include <string>

using namespace bb;

TEST_CASE("ceil_log2: index bits of v values, exact", "[common]") {
  CHECK(ceil_log2(0) == 0);
  CHECK(ceil_log2(1) == 0);
  CHECK(ceil_log2(2) == 1);
  CHECK(ceil_log2(3) == 2);
  CHECK(ceil_log2(4) == 2);
  CHECK(ceil_log2(5) == 3);
  CHECK(ceil_log2(256) == 8);
  CHECK(ceil_log2(257) == 9);
  CHECK(ceil_log2(uint64_t(1) << 40) == 40);
  CHECK(ceil_log2((uint64_t(1) << 40) + 1) == 41);
  CHECK(ceil_log2(~uint64_t(0)) == 64);
  static_assert(ceil_log2(65536) == 16, "constexpr");
  for (uint64_t v = 2; v <= 70000; ++v) {
    // The smallest b with 2^b >= v, and the fixed-width coder agrees (it is the same helper).
    const int b = ceil_log2(v);
    REQUIRE((uint64_t(1) << b) >= v);
    REQUIRE((uint64_t(1) << (b - 1)) < v);
    REQUIRE(fixed_width_bits((uint32_t)v) == b);
    // ... and equals the floating-point form the methods used before, ceil(log2 v - 1e-12).
    REQUIRE(b == (int)std::ceil(std::log2((double)v) - 1e-12));
  }
  // Codebook and layer sizes far beyond the loop (KQ's index widths of up to 2^40 kernels).
  for (int e = 17; e <= 40; ++e)
    for (int64_t d : {-1, 0, 1}) {
      const uint64_t v = (uint64_t(1) << e) + d;
      REQUIRE(ceil_log2(v) == (int)std::ceil(std::log2((double)v) - 1e-12));
    }
  CHECK(fixed_width_bits(0) == 0);
  CHECK(fixed_width_bits(1) == 0);
}

TEST_CASE("mix_seed: the data pipeline's formula, pinned", "[common]") {
  // Values of the formula that drives dataset sampling and augmentation (it was
  // data/transforms.cpp's): changing it changes every method's calibration images.
  CHECK(mix_seed(0, 0) == 0x6db6ca64564daeaaull);
  CHECK(mix_seed(1, 2) == 0x30883360cc68d7b1ull);
  CHECK(mix_seed(42, 0x5eed) == 0x400fc1b32152aa0bull);
  CHECK(mix_seed(~0ull, ~0ull) == 0xee911288b2575648ull);
  CHECK(mix_seed(7, 1) != mix_seed(7, 2));
  CHECK(mix_seed(1, 7) != mix_seed(2, 7));
}

namespace {
struct EnvGuard {
  std::string name;
  explicit EnvGuard(const char* n) : name(n) {}
  ~EnvGuard() { unsetenv(name.c_str()); }
};
}  // namespace

TEST_CASE("BITBENCH_PQ_FT_CACHE_MB is parsed strictly, with an error naming it", "[common][runtime][pq]") {
  EnvGuard g("BITBENCH_PQ_FT_CACHE_MB");
  unsetenv("BITBENCH_PQ_FT_CACHE_MB");
  CHECK(pq_finetune_cache_mb() == 2048);
  setenv("BITBENCH_PQ_FT_CACHE_MB", "", 1);
  CHECK(pq_finetune_cache_mb() == 2048);
  setenv("BITBENCH_PQ_FT_CACHE_MB", "0", 1);
  CHECK(pq_finetune_cache_mb() == 0);
  setenv("BITBENCH_PQ_FT_CACHE_MB", "512", 1);
  CHECK(pq_finetune_cache_mb() == 512);
  for (const char* bad : {"12x", "abc", "-1", "1.5", " 64", "64 ", "99999999999999999999", "1048577"}) {
    INFO("value '" << bad << "'");
    setenv("BITBENCH_PQ_FT_CACHE_MB", bad, 1);
    REQUIRE_THROWS_AS(pq_finetune_cache_mb(), Error);
    REQUIRE_THROWS_WITH(pq_finetune_cache_mb(), Catch::Contains("BITBENCH_PQ_FT_CACHE_MB='" + std::string(bad) + "'") &&
                                                    Catch::Contains("is not an integer in [0, 1048576]"));
  }
}

// Every integer setting bitbench reads from the environment goes through env_int_setting: a bad
// value stops the command with the variable named, never a silent 0.
TEST_CASE("bitbench's integer environment settings are all strict", "[common][runtime][cli]") {
  const std::string bin = bbtest::sh_quote(bbtest::bitbench_binary());
  const std::string eval = " eval --model cifar_resnet20 --weights " +
                           bbtest::sh_quote(data_root("") + "/models/cifar10_resnet20.pt") +
                           " --dataset cifar10-lossless-1k --limit 4";
  // compress evaluates through the memoized image cache (BITBENCH_IMAGE_MEMO_MB); eval does not.
  bbtest::TempDir t;
  const std::string compress = " compress --method fp16 --model cifar_resnet20 --weights " +
                               bbtest::sh_quote(data_root("") + "/models/cifar10_resnet20.pt") + " --out " +
                               bbtest::sh_quote(t / "f.bbz") + " --eval cifar10-lossless-1k --limit 4";
  for (const char* var : {"BITBENCH_THREADS", "BITBENCH_DECODE_THREADS", "BITBENCH_IMAGE_MEMO_MB"}) {
    bbtest::Proc p = bbtest::run_cmd(std::string(var) + "=4x " + bin + (std::string(var) == "BITBENCH_IMAGE_MEMO_MB" ? compress : eval));
    INFO(var << ": " << p.err);
    CHECK(p.status == 1);
    CHECK_THAT(p.err, Catch::Contains(std::string(var) + "='4x'") && Catch::Contains("is not an integer"));
  }
  bbtest::Proc ok = bbtest::run_cmd("BITBENCH_THREADS=1 BITBENCH_DECODE_THREADS=1 " + bin + eval);
  CHECK(ok.status == 0);
}

TEST_CASE("yaml_util: one reader for every YAML file, errors with file:line", "[common]") {
  bbtest::TempDir t;
  auto err = [](auto&& f) { return bbtest::error_of(f); };
  const std::string ok = bbtest::write_file(t.str(), "ok.yaml", "a: 1\nb: {c: [1, 2]}\n");
  YAML::Node n = yaml_load_map(ok, "thing file");
  CHECK(n["b"]["c"].size() == 2);
  CHECK(yaml_at(ok, n["b"]) == ok + ":2");
  CHECK(err([&] { yaml_check_keys(ok, n, {"a", "b"}, "a thing"); }).empty());
  CHECK_THAT(err([&] { yaml_check_keys(ok, n, {"a"}, "a thing"); }),
             Catch::Contains("ok.yaml:2") && Catch::Contains("unknown key 'b' in a thing (allowed: a)"));
  CHECK_THAT(err([&] { yaml_check_keys(ok, n["a"], {"a"}, "a thing"); }), Catch::Contains("a thing must be a mapping"));
  // A key repeated at any depth names both lines.
  const std::string dup = bbtest::write_file(t.str(), "dup.yaml", "a: 1\nb:\n  - {x: 1}\n  - x: 1\n    x: 2\n");
  CHECK_THAT(err([&] { yaml_load_map(dup, "thing file"); }),
             Catch::Contains("dup.yaml:5") && Catch::Contains("duplicate key 'x' (first at line 4)"));
  CHECK_THAT(err([&] { yaml_load_map(bbtest::write_file(t.str(), "bad.yaml", "a: [1, 2\n"), "thing file"); }),
             Catch::Contains("bad.yaml:") && Catch::Contains("malformed YAML"));
  CHECK_THAT(err([&] { yaml_load_map(bbtest::write_file(t.str(), "list.yaml", "- 1\n"), "thing file"); }),
             Catch::Contains("top level must be a mapping"));
  CHECK_THAT(err([&] { yaml_load_map(t.str() + "/none.yaml", "thing file"); }),
             Catch::Contains("thing file '") && Catch::Contains("does not exist"));
  CHECK_THAT(err([&] { yaml_load_map(t.str(), "thing file"); }), Catch::Contains("is a directory"));
}
