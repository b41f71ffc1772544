// Source layering (issue 23): the lower layers do not include the upper ones. quant/ holds the
// algorithms and knows nothing of methods/ (method glue lives in methods/, e.g.
// methods/weight_sharing_method.h); common/ is the base and includes only itself.
#include <catch2/catch.hpp>

#include "test_data_helpers.h"

#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct Include {
  std::string file;  // relative to src/
  int line = 0;
  std::string dir;   // the included path's first component ("methods" for "methods/method.h")
};

// Every project include ("dir/..." with dir a folder of src/, e.g. not <torch/...>) of every
// .h/.cpp under src/<dir>.
std::vector<Include> includes_under(const std::string& dir, int* files) {
  const fs::path src = fs::path(bb::source_dir()) / "src";
  const fs::path root = src / dir;
  REQUIRE(fs::is_directory(root));
  std::set<std::string> project;
  for (const auto& e : fs::directory_iterator(src))
    if (e.is_directory()) project.insert(e.path().filename().string());
  REQUIRE(project.count("methods"));
  static const std::regex inc(R"(^\s*#\s*include\s*["<]([A-Za-z0-9_]+)/)");
  std::vector<Include> out;
  *files = 0;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    const std::string ext = e.path().extension().string();
    if (!e.is_regular_file() || (ext != ".h" && ext != ".cpp")) continue;
    ++*files;
    std::ifstream in(e.path());
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      std::smatch m;
      if (std::regex_search(line, m, inc) && project.count(m[1])) out.push_back({fs::relative(e.path(), src).string(), n, m[1]});
    }
  }
  return out;
}

std::string offenders(const std::vector<Include>& incs, const std::function<bool(const std::string&)>& bad) {
  std::string s;
  for (const auto& i : incs)
    if (bad(i.dir)) s += "  src/" + i.file + ":" + std::to_string(i.line) + " includes " + i.dir + "/\n";
  return s;
}

}  // namespace

TEST_CASE("layering: quant/ includes nothing of methods/ (nor runner, report, cli, eval)", "[layering]") {
  int files = 0;
  auto incs = includes_under("quant", &files);
  REQUIRE(files >= 10);  // the tree was found: the check below is not vacuous
  REQUIRE(incs.size() >= 10);
  const std::set<std::string> upper = {"methods", "runner", "report", "cli", "eval"};
  const std::string bad = offenders(incs, [&](const std::string& d) { return upper.count(d) > 0; });
  INFO("quant/ must not know the layers above it; move method glue to methods/:\n" << bad);
  CHECK(bad.empty());
}

TEST_CASE("layering: common/ includes only common/", "[layering]") {
  int files = 0;
  auto incs = includes_under("common", &files);
  REQUIRE(files >= 5);
  const std::string bad = offenders(incs, [](const std::string& d) { return d != "common"; });
  INFO("common/ is the base layer:\n" << bad);
  CHECK(bad.empty());
}

TEST_CASE("layering: the scan finds a forbidden include", "[layering]") {
  // The same regex on a methods/ file (which does include methods/) finds it: the check can fail.
  int files = 0;
  auto incs = includes_under("methods", &files);
  const std::string found = offenders(incs, [](const std::string& d) { return d == "methods"; });
  CHECK(found.find("src/methods/") != std::string::npos);
  CHECK(found.find(" includes methods/") != std::string::npos);
}
