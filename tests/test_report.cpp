// Tables and plots from run records (src/report): the table data is built once and the JSON,
// Markdown, CSV and plot writers only format it. Records here are synthetic (no model runs).
#include <catch2/catch.hpp>

#include "common/fs_util.h"
#include "test_data_helpers.h"
#include "common/runtime.h"
#include "methods/method.h"
#include "report/plot.h"
#include "report/table.h"

#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>

namespace fs = std::filesystem;
using namespace bb;
using bbtest::TempDir;

namespace {


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
  if (method != "fp32") r["cpu_seconds"] = 2.5;  // the FP row stands for a record from before CPU time was kept
  r["identity"]["algorithm_version"] = make_method(method)->algorithm_version();
  r["context"]["cpu"] = method == "fp32" ? "Test CPU B (family 6 model 2)" : "Test CPU A (family 6 model 1)";
  for (size_t k = 0; k < kSets.size(); ++k) {
    const double t = correct[k];
    r["eval"][kSets[k]] = {{"dataset", kSets[k]}, {"n", kImages}, {"top1", t}, {"top5", std::min(100.0, t + 5)},
                           {"top1_ci95", {std::max(0.0, t - 6), std::min(100.0, t + 6)}}};
    r["hit1_hex"][kSets[k]] = hits_hex(correct[k], (int)k);
  }
  std::ofstream(runs + "/" + id + ".json") << r.dump();
}

// Gives record `id` the rate_target block a target_bpw run records (requested vs reached bpw_core).
void set_rate_target(const std::string& runs, const std::string& id, double req, double got, const char* why) {
  auto r = nlohmann::json::parse(read_file_text(runs + "/" + id + ".json"));
  r["rate_target"] = {{"requested", req}, {"reached", got}, {"measure", "bpw_core"},
                      {"relative_error", (got - req) / req}, {"within_2pct", std::fabs(got / req - 1) <= 0.02}};
  if (why) r["rate_target"]["why"] = why;
  std::ofstream(runs + "/" + id + ".json") << r.dump();
}

// A run that asked for target_bpw = `target` and landed at `bpw` (its rate_target says so).
void write_target_record(const std::string& runs, const std::string& id, const std::string& method,
                         const std::string& label, double target, double bpw, std::vector<int> correct,
                         const char* why = nullptr) {
  char t[32];
  std::snprintf(t, sizeof t, "%g", target);
  write_record(runs, id, "cifar_resnet20", method, label, {{"target_bpw", t}}, bpw, std::move(correct));
  set_rate_target(runs, id, target, bpw, why);
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

TEST_CASE("table: a model's cost line counts its runs and the CPU time of those that record it", "[report]") {
  TempDir t;
  const std::string dir = t.str() + "/one", runs = dir + "/runs";
  fs::create_directories(runs);
  write_record(runs, "u0", "cifar_resnet20", "uniform", "uniform", {{"bits", "4"}}, 4.01, {88, 93});
  {  // 90 s of wall time and 150 s of CPU time (2 threads), so the minutes show
    auto r = nlohmann::json::parse(read_file_text(runs + "/u0.json"));
    r["wall_seconds"] = 90.0;
    r["cpu_seconds"] = 150.0;
    std::ofstream(runs + "/u0.json") << r.dump();
  }
  TableOptions opt;
  opt.published_dir = t.str() + "/no-published";
  const std::string md = table_markdown(build_table(dir, opt));
  INFO(md);
  // One run, and it records its CPU time: no "of them".
  REQUIRE(md.find("Wall time of the run above: 1.5 min") != std::string::npos);
  REQUIRE(md.find("(family 6 model 1). CPU time: 2.5 min (user + system") != std::string::npos);
  REQUIRE(md.find("of them that record it") == std::string::npos);
}

TEST_CASE("table: one data structure, writers that only format it", "[report]") {
  TempDir t;
  const std::string dir = synthetic_results(t.str());
  TableOptions opt;
  opt.published_dir = t.str() + "/no-published";
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
  // What the runs cost, summed from the records, and the CPUs they ran on.
  REQUIRE(m["runs"] == 6);
  REQUIRE(m["wall_seconds"].get<double>() == 6 * 1.5);
  REQUIRE(m["cpu_seconds"].get<double>() == 5 * 2.5);
  REQUIRE(m["runs_with_cpu_seconds"] == 5);
  REQUIRE(m["cpus"] == nlohmann::json({"Test CPU A (family 6 model 1)", "Test CPU B (family 6 model 2)"}));

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
  REQUIRE(md.find("Wall time of the 6 runs above: 0.1") != std::string::npos);
  REQUIRE(md.find("; CPU: Test CPU A (family 6 model 1), Test CPU B (family 6 model 2). CPU time of the 5 of them "
                  "that record it: 0.2 min") != std::string::npos);

  // The data does not depend on the writers: collecting again gives the same table (context aside).
  auto again = collect_table(dir, opt);
  auto a = table, b = again;
  a.erase("context");
  b.erase("context");
  REQUIRE(a == b);
}

namespace {

struct Box {
  std::string text;
  double x0, y0, x1, y1;
};

std::string unescape(std::string s) {
  for (auto [from, to] : std::vector<std::pair<std::string, std::string>>{{"&lt;", "<"}, {"&gt;", ">"}, {"&apos;", "'"}, {"&amp;", "&"}})
    for (size_t i = s.find(from); i != std::string::npos; i = s.find(from, i + to.size())) s.replace(i, from.size(), to);
  return s;
}

// The texts of an SVG as written, each with its extent estimated from its anchor, size and rotation.
std::vector<Box> svg_text_boxes(const std::string& svg, double& width, double& height) {
  std::smatch m;
  REQUIRE(std::regex_search(svg, m, std::regex("<svg [^>]*width='([0-9.]+)' height='([0-9.]+)'")));
  width = std::stod(m[1]);
  height = std::stod(m[2]);
  const std::regex text(
      "<text (?:x='([-0-9.]+)' y='([-0-9.]+)'|transform='translate\\(([-0-9.]+),([-0-9.]+)\\) rotate\\(-90\\)') "
      "text-anchor='(start|middle|end)' font-size='([0-9.]+)'>([^<]*)</text>");
  std::vector<Box> out;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), text); it != std::sregex_iterator(); ++it) {
    const auto& t = *it;
    const bool vertical = t[3].matched;
    const double x = std::stod(vertical ? t[3] : t[1]), y = std::stod(vertical ? t[4] : t[2]), px = std::stod(t[6]);
    const std::string s = unescape(t[7]);
    const double w = svg_text_width(s, px), a = svg_text_ascent(px), d = svg_text_descent(px);
    const double start = t[5] == "middle" ? -w / 2 : t[5] == "end" ? -w : 0;
    if (vertical) out.push_back({s, x - a, y - start - w, x + d, y - start});
    else out.push_back({s, x + start, y - a, x + start + w, y + d});
  }
  size_t n = 0;
  for (size_t i = svg.find("<text"); i != std::string::npos; i = svg.find("<text", i + 1)) ++n;
  REQUIRE(out.size() == n);  // every text element parsed
  return out;
}

// No two texts overlap (touching is fine) and all lie inside the canvas.
void require_clear(const std::vector<Box>& boxes, double width, double height) {
  for (auto& b : boxes) {
    INFO("'" << b.text << "' at [" << b.x0 << ", " << b.x1 << "] x [" << b.y0 << ", " << b.y1 << "] on " << width << " x " << height);
    REQUIRE(b.x0 >= 0);
    REQUIRE(b.y0 >= 0);
    REQUIRE(b.x1 <= width);
    REQUIRE(b.y1 <= height);
  }
  for (size_t i = 0; i < boxes.size(); ++i)
    for (size_t j = i + 1; j < boxes.size(); ++j) {
      const auto &a = boxes[i], &b = boxes[j];
      INFO("'" << a.text << "' [" << a.x0 << ", " << a.x1 << "] x [" << a.y0 << ", " << a.y1 << "] and '" << b.text << "' ["
               << b.x0 << ", " << b.x1 << "] x [" << b.y0 << ", " << b.y1 << "]");
      const bool overlap = a.x0 < b.x1 - 0.5 && b.x0 < a.x1 - 0.5 && a.y0 < b.y1 - 0.5 && b.y0 < a.y1 - 0.5;
      REQUIRE_FALSE(overlap);
    }
}

// The PNG as written: its size is the layout's, and a 3-pixel border is blank (nothing cut at an edge).
void require_png_whole(const std::string& path, const PlotLayout& L) {
  cv::Mat img = cv::imread(path, cv::IMREAD_COLOR);
  REQUIRE_FALSE(img.empty());
  REQUIRE(img.cols == L.width);
  REQUIRE(img.rows == L.height);
  int ink = 0;
  for (int y = 0; y < img.rows; ++y)
    for (int x = 0; x < img.cols; ++x)
      if ((x < 3 || y < 3 || x >= img.cols - 3 || y >= img.rows - 3) && img.at<cv::Vec3b>(y, x) != cv::Vec3b(255, 255, 255)) ++ink;
  REQUIRE(ink == 0);
}

std::vector<Box> boxes_of(const PlotLayout& L) {
  std::vector<Box> out;
  for (auto& t : L.texts) out.push_back({t.text, t.x0, t.y0, t.x1, t.y1});
  return out;
}

// The plot written at `stem`.{svg,png} from `spec`: each of `labels` one whole SVG text element,
// no two texts overlapping in either file's layout, the PNG whole. Returns the SVG.
std::string require_plot_whole(const std::string& stem, const PlotSpec& spec, const std::vector<std::string>& labels) {
  const std::string svg = read_file_text(stem + ".svg");
  double w = 0, h = 0;
  const auto boxes = svg_text_boxes(svg, w, h);
  for (const std::string& label : labels) {
    INFO(label);
    REQUIRE(std::count_if(boxes.begin(), boxes.end(), [&](const Box& b) { return b.text == label; }) == 1);
  }
  require_clear(boxes, w, h);
  const PlotLayout png = plot_layout(spec, PlotBackend::png);
  require_clear(boxes_of(png), png.width, png.height);
  require_png_whole(stem + ".png", png);
  return svg;
}

}  // namespace

TEST_CASE("table: every off-target row says why, in the Markdown and the JSON", "[report]") {
  TempDir t;
  const std::string dir = t.str() + "/off", runs = dir + "/runs";
  fs::create_directories(runs);
  write_record(runs, "a0", "cifar_resnet20", "fp32", "fp32", nlohmann::json::object(), 32, {90, 95});
  write_target_record(runs, "k1", "kmeans", "k-means", 2, 1.9, {80, 85},
                      "kmeans: k=6 gives 1.9 bpw, k=7 gives 2.1 bpw; the closer, k=6, is kept");
  write_target_record(runs, "k2", "kmeans", "k-means", 3, 2.99, {84, 89}, "within");
  write_target_record(runs, "k3", "kmeans", "k-means", 4, 3.8, {86, 91});
  TableOptions opt;
  opt.published_dir = t.str() + "/no-published";
  const nlohmann::json table = build_table(dir, opt);
  const std::string md = table_markdown(table);
  INFO(md);
  REQUIRE(md.find("Off-target rows") != std::string::npos);
  REQUIRE(md.find("OFF TARGET: 1.9 for 2: kmeans: k=6 gives 1.9 bpw, k=7 gives 2.1 bpw; the closer, k=6, is kept") !=
          std::string::npos);
  REQUIRE(md.find("OFF TARGET: 3.8 for 4: (the record gives no reason") != std::string::npos);
  REQUIRE(md.find(": within") == std::string::npos);  // a row on target is not listed
  int with_why = 0;
  for (auto& row : table["models"]["cifar_resnet20"]["rows"])
    if (row.contains("rate_target") && row["rate_target"].contains("why")) ++with_why;
  REQUIRE(with_why == 2);
}

TEST_CASE("table: the best row per rate target counts only rows on target, by drop, ties to fewer bits", "[report]") {
  TempDir t;
  const std::string dir = t.str() + "/best", runs = dir + "/runs";
  fs::create_directories(runs);
  write_record(runs, "a0", "cifar_resnet20", "fp32", "fp32", nlohmann::json::object(), 32, {90, 95});
  // Target 2: an off-target row with the highest top-1 (not a candidate), two rows tied at 85 on
  // the first evaluation set (the one with fewer bits wins), one lower.
  write_target_record(runs, "k1", "kmeans", "k-means", 2, 2.2, {89, 94}, "why");
  write_target_record(runs, "u1", "uniform_ecsq", "uniform + Huffman", 2, 2.01, {85, 80});
  write_target_record(runs, "e1", "ecsq", "ECSQ", 2, 1.99, {85, 70});
  write_target_record(runs, "q1", "kq", "KQ", 2, 1.995, {80, 93});
  // Target 1.5: a lower row beside; a fixed-width row without a target never counts.
  write_target_record(runs, "q2", "kq", "KQ", 1.5, 1.49, {70, 75});
  write_target_record(runs, "u2", "uniform_ecsq", "uniform + Huffman", 1.5, 1.51, {60, 65});
  write_record(runs, "x1", "cifar_resnet20", "uniform", "uniform", {{"bits", "2"}}, 2.0, {88, 90});
  TableOptions opt;
  opt.published_dir = t.str() + "/no-published";
  const nlohmann::json table = build_table(dir, opt);
  const auto& best = table["models"]["cifar_resnet20"]["best_per_target"];
  INFO(best.dump(1));
  REQUIRE(best.size() == 2);
  REQUIRE(best[0]["target_bpw"] == 1.5);
  REQUIRE(best[0]["label"] == "KQ");
  REQUIRE(best[0]["candidates"] == 2);
  REQUIRE(best[1]["target_bpw"] == 2.0);
  REQUIRE(best[1]["label"] == "ECSQ");  // 85 at 1.99 beats 85 at 2.01; 89 at 2.2 is off target
  REQUIRE(best[1]["candidates"] == 3);
  REQUIRE(best[1]["ranked_by"] == "drop");
  REQUIRE(best[1]["drop"].get<double>() == Approx(5.0));
  const std::string md = table_markdown(table);
  INFO(md);
  REQUIRE(md.find("Best row per rate target on cifar10-jpeg-test") != std::string::npos);
  REQUIRE(md.find("| 2 | ECSQ |  | 1.990 | 85.00 | 5.00 | FP | 3 |") != std::string::npos);
  REQUIRE(md.find("| 1.5 | KQ | target_bpw=1.5 | 1.490 | 70.00 | 20.00 | FP | 2 |") != std::string::npos);

  // Curve comparisons: the Markdown lists the pairs that share a range and counts the others.
  size_t listed = 0, empty = 0;
  for (auto& c : table["models"]["cifar_resnet20"]["comparisons"]) {
    const bool none = c["mean_top1_gap"].is_null() && c["mean_bit_saving"].is_null();
    const std::string line = "| " + c["a"].get<std::string>() + " | " + c["b"].get<std::string>() + " |";
    REQUIRE((md.find(line) != std::string::npos) == !none);
    (none ? empty : listed) += 1;
  }
  REQUIRE(listed >= 1);
  REQUIRE(empty >= 1);
  REQUIRE(md.find(std::to_string(empty) + " of the " + std::to_string(listed + empty) +
                  " pairs share neither range and are not listed") != std::string::npos);
}

TEST_CASE("plots: one per model and evaluation set, every legend label whole, no text overlapping another", "[report]") {
  TempDir t;
  const std::string dir = synthetic_results(t.str());
  fs::create_directories(dir + "/plots");
  std::ofstream(dir + "/plots/cifar_resnet20.png") << "old name";
  TableOptions opt;
  opt.published_dir = t.str() + "/no-published";
  std::vector<std::string> written;
  const nlohmann::json table = build_table(dir, opt, &written);

  // One plot per evaluation set, each drawn from its own set's numbers; the old name is gone.
  const auto plots = table_plots(table);
  REQUIRE(plots.size() == 2);
  REQUIRE(written.size() == 4);
  REQUIRE_FALSE(fs::exists(dir + "/plots/cifar_resnet20.png"));
  for (size_t k = 0; k < plots.size(); ++k) {
    const auto& p = plots[k];
    REQUIRE(p.dataset == kSets[k]);
    REQUIRE(p.spec.title == "cifar_resnet20 on " + kSets[k]);
    REQUIRE(p.spec.baseline == (k == 0 ? 90.0 : 95.0));
    REQUIRE(p.spec.series.size() == 2);  // fp32 is the baseline, not a curve
    const auto& uni = p.spec.series[0];  // series in label order
    REQUIRE(uni.name == "uniform");
    REQUIRE(uni.points.size() == 3);
    REQUIRE(uni.points[0].top1 == (k == 0 ? 60.0 : 70.0));
    // Pareto front per set: on jpeg-test the long-label curve's 1.5-bpw point (70) beats uniform's
    // 2-bpw point (60); on lossless-1k it (60) does not dominate uniform at 2 bpw (70).
    REQUIRE(uni.points[0].pareto == (k == 1));
    REQUIRE(p.spec.series[1].points[0].pareto);
  }

  for (const std::string& set : kSets) {
    const std::string stem = dir + "/plots/cifar_resnet20." + set;
    REQUIRE(std::find(written.begin(), written.end(), stem + ".svg") != written.end());
    // Every legend label and the title are one whole text element each.
    require_plot_whole(stem, plots[set == kSets[0] ? 0 : 1].spec,
                       {"FP baseline", "uniform", "uniform + Huffman (Choi), entropy-constrained, a long label",
                        "Pareto front", "95% interval", "cifar_resnet20 on " + set});
  }

  // Plots need only table.json: `bitbench table --replot` redraws the same bytes without records.
  std::map<std::string, std::string> before;
  for (auto& p : written) before[p] = read_file_text(p);
  fs::remove_all(dir + "/plots");
  fs::remove_all(dir + "/runs");
  const std::string cmd = binary_dir() + "/bitbench table --replot " + dir + " > /dev/null";
  REQUIRE(std::system(cmd.c_str()) == 0);
  for (auto& [p, bytes] : before) {
    INFO(p);
    REQUIRE(read_file_text(p) == bytes);
  }
}

TEST_CASE("plots: a fine-tuning control is drawn as its own reference line beside the FP baseline", "[report]") {
  TempDir t;
  const std::string dir = t.str() + "/retrain", runs = dir + "/runs";
  fs::create_directories(runs);
  write_record(runs, "a0", "cifar_resnet20", "fp32", "fp32", nlohmann::json::object(), 32, {80, 95});
  write_record(runs, "c0", "cifar_resnet20", "fp32", "FP32 + same fine-tuning", {{"finetune_epochs", "1"}}, 32, {88, 93});
  for (auto [id, bpw, c1, c2] : std::vector<std::tuple<std::string, double, int, int>>{{"k1", 1.0, 84, 90}, {"k2", 2.0, 86, 91}}) {
    write_record(runs, id, "cifar_resnet20", "kq", "KQ + fine-tune", {{"finetune_epochs", "1"}}, bpw, {c1, c2});
    auto r = nlohmann::json::parse(read_file_text(runs + "/" + id + ".json"));
    r["control_run_id"] = "c0";
    std::ofstream(runs + "/" + id + ".json") << r.dump();
  }
  TableOptions opt;
  opt.published_dir = t.str() + "/no-published";
  const auto plots = table_plots(build_table(dir, opt));
  REQUIRE(plots.size() == 2);
  for (size_t k = 0; k < plots.size(); ++k) {
    const PlotSpec& spec = plots[k].spec;
    REQUIRE(spec.baseline == (k == 0 ? 80.0 : 95.0));
    REQUIRE(spec.references.size() == 1);
    REQUIRE(spec.references[0].name == "FP32 + same fine-tuning");
    REQUIRE(spec.references[0].top1 == (k == 0 ? 88.0 : 93.0));
    REQUIRE(spec.series.size() == 1);  // neither fp32 run is a curve
    const std::string svg = require_plot_whole(dir + "/plots/cifar_resnet20." + kSets[k], spec,
                                               {"FP baseline", "FP32 + same fine-tuning", "KQ + fine-tune"});
    // The reference line and its legend swatch dash-dotted, the FP line and its swatch dashed.
    auto count = [&](const std::string& s) {
      size_t n = 0;
      for (size_t at = svg.find(s); at != std::string::npos; at = svg.find(s, at + 1)) ++n;
      return n;
    };
    REQUIRE(count("stroke-dasharray='10,3,2,3'") == 2);
    REQUIRE(count("stroke-dasharray='6,4'") == 2);
  }
  // A table without a control draws no reference line.
  const std::string plain = synthetic_results(t.str());
  for (const auto& p : table_plots(build_table(plain, opt))) REQUIRE(p.spec.references.empty());
}

TEST_CASE("table --reformat: table.{json,md,csv} rewritten from table.json alone, derived parts recomputed", "[report]") {
  TempDir t;
  const std::string dir = synthetic_results(t.str());
  set_rate_target(dir + "/runs", "h3", 1.5, 1.5, nullptr);
  set_rate_target(dir + "/runs", "h4", 2.5, 2.5, nullptr);
  TableOptions opt;
  opt.published_dir = t.str() + "/no-published";
  const nlohmann::json table = build_table(dir, opt);
  const std::string md = read_file_text(dir + "/table.md"), csv = read_file_text(dir + "/table.csv"),
                    json = read_file_text(dir + "/table.json");
  REQUIRE(md.find("Best row per rate target") != std::string::npos);
  // A table written before best_per_target existed and before rows had a reference (drop and p
  // against it), its records gone: the same files come back.
  auto old = table;
  int upgraded = 0;
  for (auto mt = old["models"].begin(); mt != old["models"].end(); ++mt) {
    mt.value().erase("best_per_target");
    for (auto& row : mt.value()["rows"]) {
      upgraded += row.contains("reference");
      for (const char* k : {"reference", "drop", "mcnemar_p_vs_ref"}) row.erase(k);
    }
  }
  REQUIRE(upgraded == 5);
  write_file_atomic(dir + "/table.json", table_json_text(old));
  fs::remove(dir + "/table.md");
  fs::remove_all(dir + "/runs");
  const std::string cmd = binary_dir() + "/bitbench table --reformat --quiet " + dir + " > /dev/null";
  REQUIRE(std::system(cmd.c_str()) == 0);
  REQUIRE(read_file_text(dir + "/table.md") == md);
  REQUIRE(read_file_text(dir + "/table.csv") == csv);
  REQUIRE(read_file_text(dir + "/table.json") == json);
  // Bad input: no table.json, or one that is not a table, fails with a message and leaves nothing.
  const std::string empty = t.str() + "/empty";
  fs::create_directories(empty);
  REQUIRE(std::system((binary_dir() + "/bitbench table --reformat " + empty + " > /dev/null 2>&1").c_str()) != 0);
  REQUIRE_FALSE(fs::exists(empty + "/table.md"));
  std::ofstream(empty + "/table.json") << "{\"experiment\": \"x\"}";
  REQUIRE(std::system((binary_dir() + "/bitbench table --reformat " + empty + " > /dev/null 2>&1").c_str()) != 0);
  REQUIRE_FALSE(fs::exists(empty + "/table.md"));
}

TEST_CASE("plots: the canvas grows with long labels and titles instead of cutting them", "[report]") {
  TempDir t;
  PlotSpec p;
  p.title = "a title far longer than the plot area is wide, so that the canvas itself has to grow to hold it whole";
  p.baseline = 91.5;
  const std::string longest(120, 'W');
  for (int i = 0; i < 30; ++i) {  // more legend rows than the plot area is tall
    PlotSeries s;
    s.name = i == 7 ? longest : "series <" + std::to_string(i) + "> & 'quoted'";
    s.points = {{1.0 + i * 0.1, 50.0 + i, 45.0 + i, 55.0 + i}, {3.0, 80.0, 78.0, 82.0, true}};
    p.series.push_back(s);
  }
  write_plot_svg(p, t.str() + "/p.svg");
  write_plot_png(p, t.str() + "/p.png");
  double w = 0, h = 0;
  const auto boxes = svg_text_boxes(read_file_text(t.str() + "/p.svg"), w, h);
  REQUIRE(std::count_if(boxes.begin(), boxes.end(), [&](const Box& b) { return b.text == longest; }) == 1);
  REQUIRE(std::count_if(boxes.begin(), boxes.end(), [&](const Box& b) { return b.text == "series <3> & 'quoted'"; }) == 1);
  REQUIRE(w > svg_text_width(longest, 12));
  require_clear(boxes, w, h);
  const PlotLayout png = plot_layout(p, PlotBackend::png);
  require_clear(boxes_of(png), png.width, png.height);
  require_png_whole(t.str() + "/p.png", png);
  // The estimate is no narrower than a real sans-serif: rendered by rsvg-convert in DejaVu Sans (the
  // widest common fallback, and what "sans-serif" gives on Debian), "uniform + Huffman (Choi)" at
  // 12 px inks 154.7 px from its start.
  REQUIRE(svg_text_width("uniform + Huffman (Choi)", 12) >= 155);
}

TEST_CASE("context: names the CPU model the results were measured on", "[report]") {
  // oneDNN picks kernels by CPU, so a run's floats can differ between CPU models: the context says
  // which one produced them, read from /proc/cpuinfo (the same first processor's lines).
  std::ifstream in("/proc/cpuinfo");
  std::string line, name;
  while (std::getline(in, line) && !line.empty())
    if (line.rfind("model name", 0) == 0) name = line.substr(line.find_first_not_of(" \t", line.find(':') + 1));
  const std::string cpu = bb::context_json().at("cpu").get<std::string>();
  if (name.empty()) {
    REQUIRE(cpu.empty());
  } else {
    REQUIRE(cpu.rfind(name, 0) == 0);
    REQUIRE(cpu.find(" (family ") != std::string::npos);
  }
}

// `bitbench --version` under the environment settings `env` (an `env ...` prefix) with OpenBLAS's
// load messages (OPENBLAS_VERBOSE=2 prints "Core: <name>" each time it loads): its output.
static std::string bitbench_version_loads(const std::string& env) {
  bbtest::Proc p = bbtest::run_cmd(env + " OPENBLAS_VERBOSE=2 " + bbtest::sh_quote(bbtest::bitbench_binary()) + " --version");
  const std::string out = p.out + p.err;
  INFO(out);
  REQUIRE(p.status == 0);
  REQUIRE(out.find("bitbench ") != std::string::npos);
  return out;
}

TEST_CASE("context: OpenBLAS runs the kernels bitbench pinned, whatever the CPU model", "[report]") {
  // tests/main.cpp pins like bitbench's main: the variable is set and OpenBLAS runs what it names.
  const char* pinned = std::getenv("OPENBLAS_CORETYPE");
  REQUIRE(pinned != nullptr);
  const std::string kernels = bb::context_json().at("blas_kernels").get<std::string>();
  auto lower = [](std::string s) {
    for (auto& c : s) c = (char)std::tolower((unsigned char)c);
    return s;
  };
  REQUIRE(lower(kernels) == lower(pinned));
  // A bitbench started without the variable re-executes itself with it: OpenBLAS reports the
  // same kernels as in this process (OPENBLAS_VERBOSE=2 prints "Core: <name>" as it loads; twice
  // here, once per execution, the second being the pinned one).
  const std::string out = bitbench_version_loads("env -u OPENBLAS_CORETYPE");
  INFO(out);
  const size_t last = out.rfind("Core: ");
  REQUIRE(last != std::string::npos);
  REQUIRE(lower(out.substr(last + 6, out.find('\n', last) - last - 6)) == lower(kernels));
}

TEST_CASE("context: OpenBLAS's idle threads sleep at once unless the environment says otherwise", "[report]") {
  // tests/main.cpp pins like bitbench's main: the timeout is set, and the context records it.
  const char* timeout = std::getenv("OPENBLAS_THREAD_TIMEOUT");
  REQUIRE(timeout != nullptr);
  REQUIRE(bb::context_json().at("openblas_thread_timeout").get<std::string>() == timeout);
  // A bitbench started with the kernels pinned but no timeout re-executes itself (two loads of
  // OpenBLAS); with both, it does not.
  auto loads = [](const std::string& env) {
    const std::string out = bitbench_version_loads(env + " OPENBLAS_CORETYPE=Haswell");
    int n = 0;
    for (size_t at = out.find("Core: "); at != std::string::npos; at = out.find("Core: ", at + 1)) ++n;
    return n;
  };
  REQUIRE(loads("env -u OPENBLAS_THREAD_TIMEOUT") == 2);
  REQUIRE(loads(std::string("env OPENBLAS_THREAD_TIMEOUT=") + bb::kBlasThreadTimeout) == 1);
}
