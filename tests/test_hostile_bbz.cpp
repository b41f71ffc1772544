// Hostile .bbz records for every registered method: trailing bytes in any section, control bytes
// in names, and errors that name the file and the layer. Each starts from a valid file of the
// method (tests/smoke_files.h).
#include <catch2/catch.hpp>

#include "coding/bbz.h"
#include "common/error.h"
#include "methods/method.h"
#include "runner/pipeline.h"
#include "smoke_files.h"

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
  for (const std::string& m : {"uniform", "kmeans", "kq", "pq", "tq", "ecsq"}) {
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
