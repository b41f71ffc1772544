// One fine-tuning budget per experiment and the FP control of fine-tuned runs (issue 21): the
// experiment's `finetune:` block maps onto each method's finetune_* parameters, every model (and
// seed) with a fine-tuned run gets exactly one "FP32 + same fine-tuning" run, a fine-tuned run's
// record names its control, and the table computes its drop and McNemar p against that control.
#include <catch2/catch.hpp>

#include "coding/bbz.h"
#include "common/error.h"
#include "test_data_helpers.h"
#include "common/fs_util.h"
#include "common/runtime.h"
#include "methods/method.h"
#include "models/registry.h"
#include "report/table.h"
#include "runner/experiment.h"
#include "runner/pipeline.h"
#include "runner/runner.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace bb;
using bbtest::TempDir;
using bbtest::error_of;
using bbtest::write_file;

TEST_CASE("finetune budget: one FP control per model and seed, the budget mapped onto each method", "[runner]") {
  TempDir t;
  auto p = write_file(t.str(), "e.yaml", R"(experiment: budget
models: [cifar_resnet20, cifar_resnet32]
finetune: {epochs: 2, images: 4096, batch: 64, lr_schedule: constant}
seeds: [0, 1]
runs:
  - method: fp32
    label: FP32 baseline
  - method: kq
    grid: {target_bpw: [1, 2]}
  - method: pq
    models: [cifar_resnet20]
    params: {regime: small}
  - method: ecsq
    models: [cifar_resnet20]
    grid: {target_bpw: [1.5]}
  - method: uniform
    finetune: false
    grid: {bits: [4]}
)");
  Experiment ex = load_experiment(p, "", t.str() + "/results");
  REQUIRE(ex.finetune_budget["epochs"] == 2.0);
  // Declared: fp32 2x2, kq 2x2x2, pq 1x2, ecsq 1x2, uniform 2x2 = 20; controls: 2 models x 2 seeds.
  REQUIRE(ex.runs.size() == 20 + 4);
  std::map<std::pair<std::string, uint64_t>, int> controls;
  for (size_t i = 0; i < ex.runs.size(); ++i) {
    const RunSpec& r = ex.runs[i];
    REQUIRE(r.index == (int)i);
    if (r.label != kFpControlLabel) continue;
    REQUIRE(r.method == "fp32");
    REQUIRE(r.control == -1);
    REQUIRE(r.params.at("finetune_epochs") == "2");
    REQUIRE(r.params.at("finetune_max_images") == "4096");
    REQUIRE(r.params.at("finetune_batch") == "64");
    REQUIRE(r.params.at("finetune_lr_step_epochs") == "0");
    REQUIRE(r.finetune_budget["epochs"] == 2.0);
    REQUIRE(controls.emplace(std::make_pair(r.model, r.seed), (int)i).second);  // exactly one per model and seed
    REQUIRE(i >= 20);  // appended after the declared runs
  }
  REQUIRE(controls.size() == 4);
  int tuned = 0;
  for (const RunSpec& r : ex.runs) {
    if (r.label == kFpControlLabel) continue;
    const bool fine_tunes = r.method == "kq" || r.method == "pq" || r.method == "ecsq";
    if (!fine_tunes) {  // the fp32 baseline and the `finetune: false` block are untouched
      REQUIRE(r.control == -1);
      REQUIRE(r.finetune_budget.is_null());
      REQUIRE(r.params.count("finetune_epochs") == 0);
      continue;
    }
    ++tuned;
    INFO(r.method << " " << r.model << " seed " << r.seed);
    REQUIRE(r.control == controls.at({r.model, r.seed}));
    REQUIRE(r.params.at("finetune_epochs") == "2");
    REQUIRE(r.params.at("finetune_max_images") == "4096");
    REQUIRE(r.params.at("finetune_batch") == "64");
    if (r.method == "pq") REQUIRE(r.params.at("finetune_lr_schedule") == "constant");
    REQUIRE(r.finetune_budget["params"]["finetune_epochs"] == "2");
  }
  REQUIRE(tuned == 8 + 2 + 2);
  // The controls are distinct runs (no ID shared with the untuned baseline).
  std::set<std::string> ids;
  for (const RunSpec& r : ex.runs) REQUIRE(ids.insert(run_id(r)).second);

  // The mapping itself: tq retrains over the whole set with its own schedule.
  FinetuneBudget b;
  b.epochs = 1;
  auto tq = finetune_budget_params("tq", b, "here");
  REQUIRE(tq == std::map<std::string, std::string>{{"finetune_epochs", "1"}, {"finetune_batch", "128"}});
  b.epochs = 0.5;
  REQUIRE(finetune_budget_params("kmeans", b, "here").at("finetune_epochs") == "0.5");
  REQUIRE(finetune_budget_params("kmeans", b, "here").count("prune_retrain_epochs") == 0);
  // Choi et al.'s pipeline prunes: half the epochs retrain the kept weights, half fine-tune the values.
  auto pruned = finetune_budget_params("ecsq", b, "here", true);
  REQUIRE(pruned.at("finetune_epochs") == "0.25");
  REQUIRE(pruned.at("prune_retrain_epochs") == "0.25");
  REQUIRE(finetune_budget_params("kq", b, "here", true).count("prune_retrain_epochs") == 0);
  // Another split: 3/4 retrains the pruned network, 1/4 the shared values.
  auto share = finetune_budget_params("uniform_ecsq", b, "here", true, 0.75);
  REQUIRE(share.at("prune_retrain_epochs") == "0.375");
  REQUIRE(share.at("finetune_epochs") == "0.125");
  REQUIRE(error_of([&] { finetune_budget_params("ecsq", b, "here", true, 1.0); }).find("strictly between") !=
          std::string::npos);
}

TEST_CASE("finetune budget: a Choi block that prunes splits the epochs; one that does not keeps them", "[runner]") {
  TempDir t;
  auto p = write_file(t.str(), "e.yaml", R"(experiment: prune
models: [cifar_resnet20]
finetune: {epochs: 1}
runs:
  - method: ecsq
    grid: {target_bpw: [1.5], prune_keep: [0.2, 1]}
)");
  Experiment ex = load_experiment(p, "", t.str() + "/results");
  REQUIRE(ex.runs.size() == 2 + 1);
  int seen = 0;
  for (const RunSpec& r : ex.runs) {
    if (r.method != "ecsq") continue;
    ++seen;
    if (r.params.at("prune_keep") == "0.2") {
      REQUIRE(r.params.at("prune_retrain_epochs") == "0.5");
      REQUIRE(r.params.at("finetune_epochs") == "0.5");
      REQUIRE(r.finetune_budget["params"]["prune_retrain_epochs"] == "0.5");
    } else {
      REQUIRE(r.params.at("prune_retrain_epochs") == "0");  // the method's default, untouched
      REQUIRE(r.params.at("finetune_epochs") == "1");
      REQUIRE(r.finetune_budget["params"].count("prune_retrain_epochs") == 0);
    }
  }
  REQUIRE(seen == 2);
  // prune_keep decides the split, so it cannot be a tuning dimension under a budget.
  auto q = write_file(t.str(), "q.yaml", R"(models: [cifar_resnet20]
finetune: {epochs: 1}
runs:
  - method: ecsq
    tune: {space: {prune_keep: [0.2, 1]}}
)");
  REQUIRE(error_of([&] { load_experiment(q, "", t.str() + "/results"); }).find("prune_keep cannot be tuned") !=
          std::string::npos);

  // prune_retrain_share moves the split; it is not a method parameter, so a run carries only the
  // epochs it maps to, and the default share's run is the run without the key (same ID).
  auto s = write_file(t.str(), "s.yaml", R"(experiment: share
models: [cifar_resnet20]
finetune: {epochs: 1}
runs:
  - method: uniform_ecsq
    params: {prune_keep: 0.2, target_bpw: 1.5}
    grid: {prune_retrain_share: [0.5, 0.75]}
  - method: uniform_ecsq
    params: {prune_keep: 0.2, target_bpw: 1.5}
)");
  Experiment se = load_experiment(s, "", t.str() + "/results");
  REQUIRE(se.runs.size() == 3 + 1);
  std::map<std::string, int> by_epochs;
  std::set<std::string> ids;
  for (const RunSpec& r : se.runs) {
    if (r.method != "uniform_ecsq") continue;
    REQUIRE(r.params.count("prune_retrain_share") == 0);
    REQUIRE(std::stod(r.params.at("prune_retrain_epochs")) + std::stod(r.params.at("finetune_epochs")) == 1.0);
    ++by_epochs[r.params.at("prune_retrain_epochs")];
    ids.insert(run_id(r));
  }
  REQUIRE(by_epochs == std::map<std::string, int>{{"0.5", 2}, {"0.75", 1}});
  REQUIRE(ids.size() == 2);
  // It is refused where it splits nothing, out of (0, 1), or as a tuning dimension.
  auto refused = [&](const std::string& runs, const std::string& budget = "finetune: {epochs: 1}\n") {
    auto p = write_file(t.str(), "r.yaml", "models: [cifar_resnet20]\n" + budget + "runs:\n" + runs);
    return error_of([&] { load_experiment(p, "", t.str() + "/results"); });
  };
  REQUIRE(refused("  - method: kq\n    params: {prune_retrain_share: 0.75}\n").find("not of the Choi family") != std::string::npos);
  REQUIRE(refused("  - method: ecsq\n    params: {prune_retrain_share: 0.75}\n").find("prune_keep < 1") !=
          std::string::npos);
  REQUIRE(refused("  - method: ecsq\n    params: {prune_keep: 0.2, prune_retrain_share: 0.75}\n", "")
              .find("needs the budget") != std::string::npos);
  REQUIRE(refused("  - method: ecsq\n    params: {prune_keep: 0.2}\n    grid: {prune_retrain_share: [0.5, 1]}\n")
              .find("strictly between") != std::string::npos);
  REQUIRE(refused("  - method: ecsq\n    params: {prune_keep: 0.2}\n    grid: {prune_retrain_share: [half]}\n")
              .find("r.yaml:6") != std::string::npos);
  REQUIRE(refused("  - method: ecsq\n    params: {prune_keep: 0.2}\n    tune: {space: {prune_retrain_share: [0.5, 0.75]}}\n")
              .find("prune_retrain_share cannot be tuned") != std::string::npos);
}

TEST_CASE("finetune budget: what cannot take it is an error naming the block", "[runner]") {
  TempDir t;
  auto load = [&](const std::string& runs, const std::string& budget = "{epochs: 1}") {
    auto p = write_file(t.str(), "e.yaml", "models: [cifar_resnet20]\nfinetune: " + budget + "\nruns:\n" + runs);
    return error_of([&] { load_experiment(p, "", t.str() + "/results"); });
  };
  // A method without fine-tuning.
  REQUIRE(load("  - method: uniform\n").find("has no fine-tuning") != std::string::npos);
  REQUIRE(load("  - method: uniform\n    finetune: false\n").empty());
  // A block that sets what the budget sets.
  auto e = load("  - method: kq\n    params: {finetune_epochs: 3}\n");
  REQUIRE(e.find("sets 'finetune_epochs'") != std::string::npos);
  REQUIRE(e.find("e.yaml:4") != std::string::npos);
  REQUIRE(load("  - method: kq\n    grid: {finetune_batch: [32, 64]}\n").find("finetune_batch") != std::string::npos);
  // tq has no image cap and keeps the paper's cosine decay.
  REQUIRE(load("  - method: tq\n", "{epochs: 1, images: 1000}").find("no image cap") != std::string::npos);
  REQUIRE(load("  - method: tq\n", "{epochs: 1, lr_schedule: constant}").find("cosine") != std::string::npos);
  REQUIRE(load("  - method: tq\n", "{epochs: 1}").empty());
  // Choi's pruning retraining would train beyond the budget.
  REQUIRE(load("  - method: ecsq\n    params: {prune_retrain_epochs: 1}\n").find("beyond") != std::string::npos);
  // The budget's own keys and values.
  REQUIRE(load("  - method: kq\n", "{epochs: 0}").find("epochs") != std::string::npos);
  REQUIRE(load("  - method: kq\n", "{images: 10}").find("needs 'epochs'") != std::string::npos);
  REQUIRE(load("  - method: kq\n", "{epochs: 1, optimiser: sgd}").find("unknown key 'optimiser'") != std::string::npos);
  REQUIRE(load("  - method: kq\n", "{epochs: 1, lr_schedule: cosine}").find("lr_schedule") != std::string::npos);
  // `finetune` in a block needs a budget; an fp32 block is the untuned baseline.
  {
    auto p = write_file(t.str(), "n.yaml", "models: [cifar_resnet20]\nruns:\n  - method: kq\n    finetune: false\n");
    REQUIRE(error_of([&] { load_experiment(p, "", t.str() + "/results"); }).find("needs the experiment's finetune budget") !=
            std::string::npos);
  }
  REQUIRE(load("  - method: fp32\n    finetune: true\n").find("untuned FP baseline") != std::string::npos);
  // A budget seed replaces `seeds`, never both.
  {
    auto p = write_file(t.str(), "s.yaml", "models: [cifar_resnet20]\nseeds: [0]\nfinetune: {epochs: 1, seed: 3}\nruns:\n  - method: kq\n");
    REQUIRE(error_of([&] { load_experiment(p, "", t.str() + "/results"); }).find("not both") != std::string::npos);
    auto q = write_file(t.str(), "s2.yaml", "models: [cifar_resnet20]\nfinetune: {epochs: 1, seed: 3}\nruns:\n  - method: kq\n");
    Experiment ex = load_experiment(q, "", t.str() + "/results");
    REQUIRE(ex.runs.size() == 2);
    for (auto& r : ex.runs) REQUIRE(r.seed == 3);
  }
}

TEST_CASE("fp32 fine-tunes every conv/linear weight only when asked, and reads calibration data only then",
          "[finetune]") {
  auto m = make_method("fp32");
  REQUIRE_FALSE(m->needs_calibration());
  ParamBinder::apply(m->params(), {{"finetune_epochs", "1"}}, "test");
  REQUIRE(m->needs_calibration());

  const std::string weights = data_root() + "/models/cifar10_resnet20.pt";
  auto compress = [&](std::map<std::string, std::string> params, const std::string& tag) {
    CompressRequest r;
    r.model = "cifar_resnet20";
    r.weights = weights;
    r.method = "fp32";
    r.params = std::move(params);
    r.calib_dataset = "cifar10-jpeg-train";
    r.seed = 0;
    r.out_path = (fs::temp_directory_path() / ("bb-fp32ft-" + std::to_string(getpid()) + "-" + tag + ".bbz")).string();
    r.eval_datasets = {"cifar10-lossless-1k"};
    r.eval_limit = 200;
    CompressOutcome out = compress_model(r);
    BbzFile f = read_bbz(r.out_path);
    std::remove(r.out_path.c_str());
    return std::make_pair(out, f);
  };
  // 256 images, 4 steps of 64: cheap, and enough to move every weight.
  const std::map<std::string, std::string> tiny = {
      {"finetune_epochs", "1"}, {"finetune_max_images", "256"}, {"finetune_batch", "64"}};
  auto [plain_out, plain] = compress({}, "plain");
  auto [tuned_out, tuned] = compress(tiny, "tuned");
  auto [again_out, again] = compress(tiny, "again");
  REQUIRE(plain.layers.empty());  // fp32 stores the tensors, no layer records
  REQUIRE(tuned.layers.empty());
  REQUIRE(plain_out.accounting.bpw_core == tuned_out.accounting.bpw_core);
  // Every conv/linear weight moved; the same settings and seed give the same weights.
  auto tensor = [](const BbzFile& f, const std::string& name) {
    for (const auto& st : f.tensors)
      if (st.name == name) return st.value;
    FAIL("no stored tensor " << name);
    return torch::Tensor();
  };
  auto model = make_model("cifar_resnet20");
  int layers = 0, moved = 0;
  for (const auto& l : model->layers()) {
    const std::string key = l.name + ".weight";
    ++layers;
    if (!torch::equal(tensor(plain, key), tensor(tuned, key))) ++moved;
    REQUIRE(torch::equal(tensor(tuned, key), tensor(again, key)));
  }
  REQUIRE(layers > 0);
  REQUIRE(moved == layers);
  REQUIRE(tuned_out.evals[0].top1 == again_out.evals[0].top1);
}

TEST_CASE("finetune budget: a fine-tuned run's record names its control, the table compares them",
          "[runner][finetune]") {
  TempDir t;
  auto p = write_file(t.str(), "e.yaml", R"(experiment: budget_run
models: [cifar_resnet20]
eval: [cifar10-lossless-1k]
eval_limit: 100
calibration: cifar10-jpeg-train
finetune: {epochs: 0.5, images: 256, batch: 64}
runs:
  - method: fp32
    label: FP32 baseline
  - method: kmeans
    grid: {bits: [3]}
)");
  Experiment ex = load_experiment(p, "", t.str() + "/results");
  REQUIRE(ex.runs.size() == 3);
  const RunSpec& km = ex.runs[1];
  REQUIRE(km.method == "kmeans");
  REQUIRE(km.control == 2);
  const std::string control_id = run_id(ex.runs[2]);

  RunnerOptions opt;
  opt.dry_run = true;
  REQUIRE(run_experiment(ex, opt).total == 3);
  REQUIRE_FALSE(fs::exists(ex.results_dir + "/runs"));  // a dry run writes nothing
  opt.dry_run = false;
  auto s = run_experiment(ex, opt);
  REQUIRE(s.done == 3);
  REQUIRE(s.failed == 0);
  auto rec = nlohmann::json::parse(read_file_text(ex.results_dir + "/runs/" + run_id(km) + ".json"));
  REQUIRE(rec["control_run_id"] == control_id);
  REQUIRE(rec["finetune_budget"]["epochs"] == 0.5);
  auto crec = nlohmann::json::parse(read_file_text(ex.results_dir + "/runs/" + control_id + ".json"));
  REQUIRE(crec["label"] == kFpControlLabel);
  REQUIRE_FALSE(crec.contains("control_run_id"));
  auto base = nlohmann::json::parse(read_file_text(ex.results_dir + "/runs/" + run_id(ex.runs[0]) + ".json"));
  REQUIRE_FALSE(base.contains("finetune_budget"));

  auto table = build_table(ex.results_dir, {});
  const auto& rows = table["models"]["cifar_resnet20"]["rows"];
  REQUIRE(rows.size() == 3);
  const std::string d = "cifar10-lossless-1k";
  for (auto& row : rows) {
    INFO(row.dump());
    if (row["run_id"] == run_id(km)) {
      REQUIRE(row["reference"]["kind"] == "control");
      REQUIRE(row["reference"]["run_id"] == control_id);
      REQUIRE(row["drop"][d].get<double>() ==
              Approx(crec["eval"][d]["top1"].get<double>() - rec["eval"][d]["top1"].get<double>()));
      REQUIRE(row["epochs"] == 0.5);
    } else if (row["run_id"] == control_id) {
      REQUIRE(row["reference"]["kind"] == "fp");  // the control's own drop is against the untuned FP
      REQUIRE(row["epochs"] == 0.5);
    } else {
      REQUIRE(row["method"] == "fp32");
      REQUIRE_FALSE(row.contains("reference"));
      REQUIRE(row["epochs"] == 0.0);
    }
  }
  REQUIRE(table["models"]["cifar_resnet20"]["baseline"]["top1"][d] == base["eval"][d]["top1"]);
}

namespace {

const int kImages = 100;
const std::string kSet = "cifar10-jpeg-test";

std::string hits_hex(int correct) {
  std::string hex;
  for (int i = 0; i < kImages; i += 4) {
    int v = 0;
    for (int b = 0; b < 4; ++b)
      if (i + b < correct) v |= 1 << b;
    hex += "0123456789abcdef"[v];
  }
  return hex;
}

void write_record(const std::string& runs, const std::string& id, const std::string& method, const std::string& label,
                  const nlohmann::json& params, double bpw, int correct, const nlohmann::json& extra = {}) {
  nlohmann::json r = {{"run_id", id},         {"experiment", "synthetic"}, {"model", "cifar_resnet20"},
                      {"method", method},     {"label", label},            {"params", params},
                      {"bpw_core", bpw},      {"bpw_total", bpw + 0.25},   {"bpw_choi", bpw},
                      {"size_mb_stock", 0.1}, {"bpw_young", bpw},          {"bpw_yu_conv", bpw},
                      {"file_bytes", 1000},   {"wall_seconds", 1.5},       {"seed", 0}};
  r["identity"]["algorithm_version"] = make_method(method)->algorithm_version();
  r["eval"][kSet] = {{"dataset", kSet}, {"n", kImages}, {"top1", (double)correct}, {"top5", 99.0},
                     {"top1_ci95", {correct - 6.0, correct + 6.0}}};
  r["hit1_hex"][kSet] = hits_hex(correct);
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) r[it.key()] = it.value();
  std::ofstream(runs + "/" + id + ".json") << r.dump();
}

}  // namespace

TEST_CASE("table: a fine-tuned row's drop and McNemar p are against its control, the epochs its budget", "[report]") {
  TempDir t;
  const std::string dir = t.str() + "/synthetic", runs = dir + "/runs";
  fs::create_directories(runs);
  const nlohmann::json budget = {{"epochs", 3.0}, {"images", 0}, {"batch", 128}, {"lr_schedule", "method"}};
  // Untuned FP 80/100; the control (FP + the same fine-tuning) 90/100; a fine-tuned kq run 85/100
  // that names the control; an untuned kq run 70/100; a fine-tuned run whose control is missing.
  write_record(runs, "fp", "fp32", "FP32", nlohmann::json::object(), 32, 80);
  write_record(runs, "ctl", "fp32", kFpControlLabel, {{"finetune_epochs", "3"}}, 32, 90,
               {{"finetune_budget", budget}});
  write_record(runs, "kqft", "kq", "KQ + ft", {{"finetune_epochs", "3"}}, 2, 85,
               {{"finetune_budget", budget}, {"control_run_id", "ctl"}});
  write_record(runs, "kq0", "kq", "KQ", {{"finetune_epochs", "0"}}, 2, 70);
  write_record(runs, "kqlost", "kq", "KQ + ft lost", {{"finetune_epochs", "3"}}, 2, 84,
               {{"finetune_budget", budget}, {"control_run_id", "gone"}});
  TableOptions opt;
  opt.published_dir = t.str() + "/no-published";
  const nlohmann::json table = build_table(dir, opt);
  const auto& m = table["models"]["cifar_resnet20"];
  REQUIRE(m["baseline"]["top1"][kSet] == 80.0);  // the untuned FP, not the control
  std::map<std::string, nlohmann::json> by;
  for (auto& row : m["rows"]) by[row["run_id"].get<std::string>()] = row;
  REQUIRE(by.size() == 5);
  // Against the control: drop 90 - 85 = 5; 5 discordant images, all one way: p = 2 * 0.5^5.
  REQUIRE(by["kqft"]["reference"]["kind"] == "control");
  REQUIRE(by["kqft"]["reference"]["run_id"] == "ctl");
  REQUIRE(by["kqft"]["drop"][kSet] == 5.0);
  REQUIRE(by["kqft"]["mcnemar_p_vs_ref"][kSet].get<double>() == Approx(0.0625));
  // ... while against the untuned FP it would have gained 5 points.
  REQUIRE(by["kqft"]["mcnemar_p_vs_fp"][kSet].get<double>() == Approx(0.0625));
  REQUIRE(by["kqft"]["epochs"] == 3.0);
  // Untuned rows, the control itself, and a row whose control is missing: against the FP run.
  REQUIRE(by["kq0"]["reference"]["kind"] == "fp");
  REQUIRE(by["kq0"]["drop"][kSet] == 10.0);
  REQUIRE(by["kq0"]["epochs"] == 0.0);
  REQUIRE(by["ctl"]["reference"]["kind"] == "fp");
  REQUIRE(by["ctl"]["drop"][kSet] == -10.0);
  REQUIRE(by["ctl"]["epochs"] == 3.0);
  REQUIRE(by["kqlost"]["reference"]["missing_control"] == "gone");
  REQUIRE(by["kqlost"]["drop"][kSet] == -4.0);
  REQUIRE_FALSE(by["fp"].contains("reference"));
  // The Markdown row shows the drop, p and which reference.
  const std::string md = table_markdown(table);
  INFO(md);
  REQUIRE(md.find("| KQ + ft |  | 3 | 16.0× | 2.000 | 85.00 (79.0–91.0) | 99.00 | 5.00 | 0.062 | control ctl |") !=
          std::string::npos);
  REQUIRE(md.find("| KQ |  | 0 | 16.0× | 2.000 | 70.00 (64.0–76.0) | 99.00 | 10.00 | 0.002 | FP |") != std::string::npos);
  REQUIRE(md.find("FP (control gone missing)") != std::string::npos);
  const std::string csv = table_csv(table);
  REQUIRE(csv.find(",5.0,0.0625,ctl,kqft,") != std::string::npos);
}
