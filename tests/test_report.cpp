// Tables and plots from run records (src/report): the table data is built once and the JSON,
// Markdown, CSV and plot writers only format it. Records here are synthetic (no model runs).
#include <catch2/catch.hpp>

#include "common/fs_util.h"
#include "methods/method.h"
#include "report/plot.h"
#include "report/table.h"

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using namespace bb;

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/bb-report-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

const int kImages = 100;
const std::vector<std::string> kSets = {"cifar10-jpeg-test", "cifar10-lossless-1k"};

// Hits of `correct` images out of kImages, packed 4 per hex digit like the runner's hit1_hex.
std::string hits_hex(int correct, int shift) {
  std::string hex;
  for (int i = 0; i < kImages; i += 4) {
    int v = 0;
    for (int b = 0; b < 4; ++b)
      if (((i + b + shift) % kImages) < correct) v |= 1 << b;
    hex += "0123456789abcdef"[v];
  }
  return hex;
}

// A run record with the fields the table reads; top-1 per evaluation set = `correct[k]` percent.
void write_record(const std::string& runs, const std::string& id, const std::string& model, const std::string& method,
                  const std::string& label, const nlohmann::json& params, double bpw, std::vector<int> correct) {
  nlohmann::json r = {{"run_id", id},          {"experiment", "synthetic"}, {"model", model},
                      {"method", method},      {"label", label},            {"params", params},
                      {"bpw_core", bpw},       {"bpw_total", bpw + 0.25},   {"bpw_choi", bpw + 0.1},
                      {"size_mb_stock", 0.1},  {"bpw_young", bpw},          {"bpw_yu_conv", bpw},
                      {"file_bytes", 1000},    {"wall_seconds", 1.5},       {"seed", 0}};
  r["identity"]["algorithm_version"] = make_method(method)->algorithm_version();
  for (size_t k = 0; k < kSets.size(); ++k) {
    const double t = correct[k];
    r["eval"][kSets[k]] = {{"dataset", kSets[k]}, {"n", kImages}, {"top1", t}, {"top5", std::min(100.0, t + 5)},
                           {"top1_ci95", {std::max(0.0, t - 6), std::min(100.0, t + 6)}}};
    r["hit1_hex"][kSets[k]] = hits_hex(correct[k], (int)k);
  }
  std::ofstream(runs + "/" + id + ".json") << r.dump();
}

// fp32, a short label at three rates, a long label (the kind a fixed legend box cut) at two.
std::string synthetic_results(const std::string& root) {
  const std::string dir = root + "/synthetic", runs = dir + "/runs";
  fs::create_directories(runs);
  write_record(runs, "a0", "cifar_resnet20", "fp32", "fp32", nlohmann::json::object(), 32, {90, 95});
  int id = 0;
  for (auto [bits, c1, c2] : std::vector<std::tuple<int, int, int>>{{2, 60, 70}, {3, 80, 88}, {4, 88, 93}})
    write_record(runs, "u" + std::to_string(id++), "cifar_resnet20", "uniform", "uniform",
                 {{"bits", std::to_string(bits)}}, bits + 0.01, {c1, c2});
  for (auto [bpw, c1, c2] : std::vector<std::tuple<double, int, int>>{{1.5, 70, 60}, {2.5, 84, 86}})
    write_record(runs, "h" + std::to_string(id++), "cifar_resnet20", "uniform_ecsq",
                 "uniform + Huffman (Choi), entropy-constrained, a long label", {{"target_bpw", std::to_string(bpw)}}, bpw,
                 {c1, c2});
  std::ofstream(runs + "/zz.failed.json") << "{}";
  return dir;
}

}  // namespace

TEST_CASE("table: one data structure, writers that only format it", "[report]") {
  TempDir t;
  const std::string dir = synthetic_results(t.path);
  TableOptions opt;
  opt.published_dir = t.path + "/no-published";
  const nlohmann::json table = build_table(dir, opt);

  // The data: rows per run, McNemar against fp32 on both evaluation sets, comparisons, baseline.
  const auto& m = table["models"]["cifar_resnet20"];
  REQUIRE(table["failed_runs"] == 1);
  REQUIRE(m["datasets"] == nlohmann::json(kSets));
  REQUIRE(m["rows"].size() == 6);
  REQUIRE(m["baseline"]["top1"]["cifar10-lossless-1k"] == 95.0);
  int with_p = 0;
  for (auto& row : m["rows"]) {
    REQUIRE(row["variant"].get<std::string>().find("STALE") == std::string::npos);
    if (row["method"] == "fp32") {
      REQUIRE_FALSE(row.contains("mcnemar_p_vs_fp"));
      continue;
    }
    ++with_p;
    for (auto& d : kSets) {
      const double p = row["mcnemar_p_vs_fp"][d].get<double>();
      REQUIRE(p >= 0);
      REQUIRE(p <= 1);
    }
  }
  REQUIRE(with_p == 5);
  REQUIRE(m["comparisons"].size() == 1);
  REQUIRE(m["comparisons"][0]["dataset"] == kSets[0]);

  // Each file is its writer's output, and the writers need nothing but the data: formatting the
  // table read back from table.json gives the same bytes.
  const auto back = nlohmann::json::parse(read_file_text(dir + "/table.json"));
  REQUIRE(read_file_text(dir + "/table.json") == table_json_text(back));
  REQUIRE(read_file_text(dir + "/table.md") == table_markdown(back));
  REQUIRE(read_file_text(dir + "/table.csv") == table_csv(back));
  REQUIRE(table_markdown(back) == table_markdown(table));
  // 5 measured non-fp rows + fp32, one CSV line per evaluation set, and the header.
  const std::string csv = table_csv(table);
  REQUIRE(std::count(csv.begin(), csv.end(), '\n') == 1 + 6 * 2);
  INFO(csv);
  REQUIRE(csv.find("cifar_resnet20,measured,uniform,\"uniform\",\"bits=2\",0.0,") != std::string::npos);
  REQUIRE(csv.find(",2.01,2.26,cifar10-lossless-1k,70.0,64.0,76.0,75.0,") != std::string::npos);
  const std::string md = table_markdown(table);
  REQUIRE(md.find("| uniform | bits=3 | 0 | 10.6× | 3.010 | 80.00 (74.0–86.0) | 85.00 | 88.00 (82.0–94.0) | 93.00 |") !=
          std::string::npos);

  // The data does not depend on the writers: collecting again gives the same table (context aside).
  auto again = collect_table(dir, opt);
  auto a = table, b = again;
  a.erase("context");
  b.erase("context");
  REQUIRE(a == b);
}
