// Hostile .bbz records for every registered method: trailing bytes in any section, control bytes
// in names, and errors that name the file and the layer. Each starts from a valid file of the
// method (tests/smoke_files.h).
#include <catch2/catch.hpp>

#include "coding/bbz.h"
#include "common/error.h"
#include "methods/method.h"
#include "runner/pipeline.h"
#include "smoke_files.h"
#include "test_data_helpers.h"

#include <nlohmann/json.hpp>

#include <string>

using namespace bb;

namespace {

std::string decode_error(const BbzFile& f, const std::string& what) {
  try {
    decode_bbz(f, what);
  } catch (const bb::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("hostile: a byte appended to any section of any method's record is rejected, naming file and layer",
          "[coding][hostile]") {
  int sections = 0;
  for (const std::string& m : method_names()) {
    if (m.rfind("test_", 0) == 0) continue;
    const BbzFile& good = bbtest::smoke_file(m);
    REQUIRE_NOTHROW(decode_bbz(good, "good.bbz"));
    for (size_t li = 0; li < good.layers.size(); ++li) {
      for (size_t si = 0; si < good.layers[li].sections.size(); ++si) {
        BbzFile f = good;
        f.layers[li].sections[si].bytes.push_back(0);
        // Through the container as well: serialised and parsed again (CRC and sizes valid).
        const std::vector<uint8_t> bytes = serialize_bbz(f);
        const BbzFile g = parse_bbz(bytes.data(), bytes.size(), "forged.bbz");
        const std::string e = decode_error(g, "forged.bbz");
        INFO("method " << m << ", layer " << good.layers[li].layer << ", section " << good.layers[li].sections[si].name);
        CHECK_THAT(e, Catch::Contains("forged.bbz") && Catch::Contains(good.layers[li].layer));
        ++sections;
      }
    }
  }
  CHECK(sections > 100);  // every method has records with sections (fp16 and the quantizers)
}

TEST_CASE("hostile: control bytes in names are escaped in every message", "[coding][hostile]") {
  const BbzFile& good = bbtest::smoke_file("uniform");
  const std::string evil = "conv1\x1b[2J\nFAKE: all good\x07";
  auto check = [&](const std::string& e) {
    INFO(e);
    CHECK(!e.empty());
    CHECK(e.find('\x1b') == std::string::npos);
    CHECK(e.find('\x07') == std::string::npos);
    CHECK(e.find("\nFAKE") == std::string::npos);  // no forged line
    CHECK_THAT(e, Catch::Contains("\\x1b[2J\\x0aFAKE"));
  };
  {  // a layer name the model does not have
    BbzFile f = good;
    f.layers[0].layer = evil;
    check(decode_error(f, "evil.bbz"));
  }
  {  // a method name nobody registered
    BbzFile f = good;
    f.layers[0].method = evil;
    check(decode_error(f, "evil.bbz"));
  }
  {  // a tensor stored twice, through the parser
    BbzFile f = good;
    f.tensors[0].name = evil;
    f.tensors.push_back(f.tensors[0]);
    std::string e;
    try {
      serialize_bbz(f);
    } catch (const bb::Error& x) {
      e = x.what();
    }
    check(e);
  }
  {  // a missing section: the record's own names are listed
    BbzFile f = good;
    f.layers[0].sections[0].name = evil;
    check(decode_error(f, "evil.bbz"));
  }
  // Messages keep their own line breaks; other control bytes in any message are escaped.
  CHECK(std::string(bb::Error("a\nb\x1b").what()) == "a\nb\\x1b");
}

TEST_CASE("hostile: a corrupt symbol stream names the file and the layer", "[coding][hostile]") {
  for (const std::string m : {"uniform", "kmeans", "kq", "pq", "tq", "ecsq"}) {
    const BbzFile& good = bbtest::smoke_file(m);
    BbzFile f = good;
    // The biggest indices section of the second record: cut it in half.
    auto& rec = f.layers.at(1);
    Section* idx = nullptr;
    for (auto& s : rec.sections)
      if (s.component == Component::indices && (!idx || s.bytes.size() > idx->bytes.size())) idx = &s;
    REQUIRE(idx != nullptr);
    idx->bytes.resize(idx->bytes.size() / 2);
    const std::string e = decode_error(f, "cut.bbz");
    INFO("method " << m << ": " << e);
    CHECK_THAT(e, Catch::Contains("cut.bbz") && Catch::Contains("layer '" + rec.layer + "'") &&
                      Catch::Contains("method '" + m + "'"));
  }
}

TEST_CASE("hostile: fuzz-bbz over every method's file finds no crash, hang or memory blow-up", "[coding][hostile][cli]") {
  bbtest::TempDir t;
  std::string files;
  for (const std::string& m : method_names()) {
    if (m.rfind("test_", 0) == 0) continue;
    write_bbz(t / (m + ".bbz"), bbtest::smoke_file(m));
    files += " " + bbtest::sh_quote(t / (m + ".bbz"));
  }
  const std::string bin = bbtest::sh_quote(bbtest::bitbench_binary());
  // 1,500 mutants here (seconds); `make fuzz` runs 11,000 (results/fuzz/report.json).
  bbtest::Proc p = bbtest::run_cmd(bin + " fuzz-bbz" + files + " --mutants 1500 --seed 7 --json " +
                                   bbtest::sh_quote(t / "r.json"));
  INFO(p.out << p.err);
  REQUIRE(p.status == 0);
  const auto r = nlohmann::json::parse(bbtest::slurp(t / "r.json"));
  CHECK(r["crashes"].empty());
  CHECK(r["hangs"].empty());
  CHECK(r["foreign_exceptions"] == 0);
  CHECK(r["peak_memory_ratio"].get<double>() <= 4.0);
  CHECK(r["accepted"].get<int64_t>() + r["rejected_with_error"].get<int64_t>() == 1500);
  CHECK(r["rejected_with_error"].get<int64_t>() > 750);  // most mutants are damage, and are caught

  // The harness itself: an injected crash and an injected hang are found, counted and named,
  // and the run goes on past them.
  p = bbtest::run_cmd(bin + " fuzz-bbz" + files + " --mutants 200 --batch 50 --timeout-s 2 --inject-crash-at 60 "
                      "--inject-hang-at 130 --json " + bbtest::sh_quote(t / "s.json"));
  CHECK(p.status == 1);
  const auto s = nlohmann::json::parse(bbtest::slurp(t / "s.json"));
  REQUIRE(s["crashes"].size() == 1);
  CHECK(s["crashes"][0]["mutant"] == 60);
  REQUIRE(s["hangs"].size() == 1);
  CHECK(s["hangs"][0]["mutant"] == 130);
  CHECK(s["accepted"].get<int64_t>() + s["rejected_with_error"].get<int64_t>() == 198);
}
