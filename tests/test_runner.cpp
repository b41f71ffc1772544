#include <catch2/catch.hpp>

#include "common/error.h"
#include "test_data_helpers.h"
#include "common/fs_util.h"
#include "common/runtime.h"
#include "methods/method.h"
#include "report/table.h"
#include "runner/experiment.h"
#include "runner/runner.h"
#include "data/dataset.h"

#include <csignal>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <set>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace bb;
using bbtest::TempDir;
using bbtest::error_of;
using bbtest::write_file;

namespace {

const char* kSmall = R"(experiment: small
models: [cifar_resnet20]
eval: [cifar10-lossless-1k]
eval_limit: 100
runs:
  - method: fp32
  - method: uniform
    grid: {bits: [2, 4, 8]}
)";

}  // namespace

TEST_CASE("grid and zip expansion", "[runner]") {
  TempDir t;
  auto p = write_file(t.str(), "e.yaml", R"(models: [cifar_resnet20, cifar_resnet32]
seeds: [0, 1]
runs:
  - method: uniform
    grid: {bits: [2, 3, 4], clip_steps: [8, 16]}
  - method: uniform
    label: zipped
    models: [cifar_resnet20]
    zip: {bits: [2, 8], coder: [huffman, fixed]}
)");
  Experiment ex = load_experiment(p, "", t.str() + "/results");
  // 2 models x 6 points x 2 seeds + 1 model x 2 zip rows x 2 seeds
  REQUIRE(ex.runs.size() == 24 + 4);
  std::set<std::string> zipped;
  for (auto& r : ex.runs)
    if (r.label == "zipped") zipped.insert(r.params.at("bits") + "/" + r.params.at("coder"));
  REQUIRE(zipped == std::set<std::string>{"2/huffman", "8/fixed"});
  for (size_t i = 0; i < ex.runs.size(); ++i) REQUIRE(ex.runs[i].index == (int)i);
  REQUIRE(ex.name == "e");
}

TEST_CASE("run IDs are stable under YAML key order", "[runner]") {
  TempDir t;
  auto a = write_file(t.str(), "a.yaml", "experiment: x\nmodels: [cifar_resnet20]\nruns:\n  - method: uniform\n    params: {bits: 3, coder: huffman}\n");
  auto b = write_file(t.str(), "b.yaml", "runs:\n  - params: {coder: huffman, bits: 3}\n    method: uniform\nmodels: [cifar_resnet20]\nexperiment: x\n");
  auto ea = load_experiment(a, "", t.str()), eb = load_experiment(b, "", t.str());
  REQUIRE(run_id(ea.runs[0]) == run_id(eb.runs[0]));
  auto c = write_file(t.str(), "c.yaml", "experiment: x\nmodels: [cifar_resnet20]\nruns:\n  - method: uniform\n    params: {bits: 4, coder: huffman}\n");
  REQUIRE(run_id(load_experiment(c, "", t.str()).runs[0]) != run_id(ea.runs[0]));
}

TEST_CASE("a run's identity names its calibration data exactly when its parameters make it read them", "[runner]") {
  // fp32 reads training images only when it fine-tunes: the identity must then name them, so a
  // changed training set cannot reuse the cached record (the method's default does not). KQ reads
  // them for its sequential re-fit (the default) or a data-aware proxy, not with neither.
  TempDir t;
  auto p = write_file(t.str(), "e.yaml",
                      "experiment: x\nmodels: [cifar_resnet20]\ncalibration: cifar10-jpeg-train\nruns:\n"
                      "  - method: fp32\n  - method: fp32\n    params: {finetune_epochs: 1}\n"
                      "  - method: kq\n    params: {kmeans_metric: weight, alloc_proxy: mse, target_bpw: 2, sequential: false}\n"
                      "  - method: kq\n    params: {kmeans_metric: weight, alloc_proxy: output, target_bpw: 2}\n");
  auto ex = load_experiment(p, "", t.str());
  REQUIRE(ex.runs.size() == 4);
  CHECK(run_identity(ex.runs[0])["calibration"].is_null());
  CHECK(run_identity(ex.runs[1])["calibration"] == dataset_run_identity("cifar10-jpeg-train"));
  CHECK(run_identity(ex.runs[2])["calibration"].is_null());
  CHECK(run_identity(ex.runs[3])["calibration"] == dataset_run_identity("cifar10-jpeg-train"));
}

TEST_CASE("schema errors name file, line and key", "[runner]") {
  TempDir t;
  auto p = write_file(t.str(), "bad.yaml", "models: [cifar_resnet20]\nruns:\n  - method: uniform\n    gird: {bits: [2]}\n");
  auto e = error_of([&] { load_experiment(p, "", t.str()); });
  REQUIRE_THAT(e, Catch::Contains("bad.yaml:4") && Catch::Contains("unknown key 'gird'"));

  p = write_file(t.str(), "m.yaml", "models: [cifar_resnet20]\nruns:\n  - method: nosuch\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("m.yaml:3") && Catch::Contains("unknown method 'nosuch'"));

  p = write_file(t.str(), "mo.yaml", "models: [resnet99]\nruns:\n  - method: fp32\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("unknown model 'resnet99'"));

  p = write_file(t.str(), "d.yaml", "models: [cifar_resnet20]\neval: [cifar11]\nruns:\n  - method: fp32\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("d.yaml:2") && Catch::Contains("unknown dataset 'cifar11'"));

  p = write_file(t.str(), "k.yaml", "models: [cifar_resnet20]\nruns:\n  - method: uniform\n    grid:\n      bitz: [2]\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("k.yaml:5") && Catch::Contains("unknown parameter 'bitz'"));

  p = write_file(t.str(), "v.yaml", "models: [cifar_resnet20]\nruns:\n  - method: uniform\n    params: {bits: many}\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("'bits' expects an integer"));

  p = write_file(t.str(), "y.yaml", "models: [cifar_resnet20\nruns: [\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("malformed YAML"));

  p = write_file(t.str(), "z.yaml", "models: [cifar_resnet20]\nruns:\n  - method: uniform\n    zip: {bits: [2, 3], coder: [fixed]}\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("z.yaml:4") && Catch::Contains("zip list"));

  // The experiment name is a folder under the results root: never a path, never empty.
  for (const char* name : {"../../x", "''", "a/b", "..", "."}) {
    p = write_file(t.str(), "n.yaml", std::string("experiment: ") + name + "\nmodels: [cifar_resnet20]\nruns:\n  - method: fp32\n");
    INFO(name);
    REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("n.yaml:1") && Catch::Contains("plain name"));
  }
  // Seeds are non-negative integers; eval_limit is >= 0; numbers are finite.
  for (const char* seeds : {"[-1]", "[1.5]", "[x]"}) {
    p = write_file(t.str(), "s.yaml", std::string("models: [cifar_resnet20]\nseeds: ") + seeds + "\nruns:\n  - method: fp32\n");
    INFO(seeds);
    REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("s.yaml:2") && Catch::Contains("non-negative integer"));
  }
  p = write_file(t.str(), "l.yaml", "models: [cifar_resnet20]\neval_limit: -5\nruns:\n  - method: fp32\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("l.yaml:2") && Catch::Contains("'eval_limit' must be >= 0"));
  for (const char* v : {"nan", ".inf", "inf", "-inf"}) {
    p = write_file(t.str(), "f.yaml", std::string("models: [cifar_resnet20]\nruns:\n  - method: ecsq\n    params: {target_bpw: ") + v + "}\n");
    INFO(v);
    REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("f.yaml:3") && (Catch::Contains("finite number") || Catch::Contains("expects a number")));
  }
}

TEST_CASE("YAML edge cases: duplicate keys, zero runs, huge grids, bad bits, directories", "[runner]") {
  TempDir t;
  // A repeated key is an error at any level, naming the line of the repeat and of the first.
  auto p = write_file(t.str(), "d1.yaml", "models: [cifar_resnet20]\nmodels: [cifar_resnet32]\nruns:\n  - method: fp32\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }),
               Catch::Contains("d1.yaml:2") && Catch::Contains("duplicate key 'models'") && Catch::Contains("line 1"));
  p = write_file(t.str(), "d2.yaml", "models: [cifar_resnet20]\nruns:\n  - method: uniform\n    method: kmeans\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("d2.yaml:4") && Catch::Contains("duplicate key 'method'"));
  p = write_file(t.str(), "d3.yaml", "models: [cifar_resnet20]\nruns:\n  - method: uniform\n    params:\n      bits: 2\n      bits: 4\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("d3.yaml:6") && Catch::Contains("duplicate key 'bits'"));
  p = write_file(t.str(), "d4.yaml", "models: [cifar_resnet20]\nruns:\n  - method: uniform\n    grid: {bits: [2], bits: [4]}\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("d4.yaml:4") && Catch::Contains("duplicate key 'bits'"));

  // bits 0 / -1 are refused by the method's parameter check, with file:line.
  for (const char* b : {"0", "-1"}) {
    p = write_file(t.str(), "b.yaml", std::string("models: [cifar_resnet20]\nruns:\n  - method: uniform\n    params: {bits: ") + b + "}\n");
    INFO(b);
    const std::string e = error_of([&] { load_experiment(p, "", t.str()); });
    REQUIRE_THAT(e, Catch::Contains("b.yaml:3") && Catch::Contains("bits"));
  }

  // Zero runs: an empty seeds or zip list is an error, not an empty experiment that "succeeds".
  p = write_file(t.str(), "z1.yaml", "models: [cifar_resnet20]\nseeds: []\nruns:\n  - method: fp32\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("zero runs"));
  p = write_file(t.str(), "z2.yaml", "models: [cifar_resnet20]\nruns:\n  - method: fp32\n  - method: uniform\n    zip: {bits: []}\n");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("z2.yaml:4") && Catch::Contains("zero runs"));

  // A grid past the limit is refused before expansion: 12 lists of 10 values = 10^12 runs would
  // never finish expanding; the refusal must come at once.
  std::string big = "models: [cifar_resnet20]\nruns:\n  - method: uniform\n    grid:\n";
  for (const char* k : {"bits", "clip_steps", "coder", "scheme", "clip", "a", "b", "c", "d", "e", "f", "g"})
    big += std::string("      ") + k + ": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n";
  p = write_file(t.str(), "big.yaml", big);
  // (Were it expanded first, this call would exhaust memory instead of returning the error.)
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }),
               Catch::Contains("big.yaml:3") && Catch::Contains("more than 10000 runs") && Catch::Contains("--max-runs"));
  // The limit is the caller's: 3 runs pass a limit of 3 and fail a limit of 2.
  p = write_file(t.str(), "three.yaml", "models: [cifar_resnet20]\nruns:\n  - method: uniform\n    grid: {bits: [2, 3, 4]}\n");
  REQUIRE(load_experiment(p, "", t.str(), 3).runs.size() == 3);
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str(), 2); }), Catch::Contains("more than 2 runs"));

  // A directory instead of a file.
  fs::create_directories(t.str() + "/dir.yaml");
  REQUIRE_THAT(error_of([&] { load_experiment(t.str() + "/dir.yaml", "", t.str()); }), Catch::Contains("is a directory"));
}

TEST_CASE("--only selects runs by model, method and seed; unknown keys and values are errors", "[runner]") {
  TempDir t;
  auto p = write_file(t.str(), "e.yaml",
                      "models: [cifar_resnet20, cifar_resnet32]\nseeds: [0, 1]\nruns:\n  - method: uniform\n    grid: {bits: [2, 3]}\n"
                      "  - method: fp32\n");
  Experiment ex = load_experiment(p, "", t.str());
  REQUIRE(ex.runs.size() == 12);
  auto count = [&](const std::string& flag) {
    RunFilter f = parse_run_filter(flag, ex);
    int n = 0;
    for (auto& r : ex.runs) n += in_filter(r, f);
    return n;
  };
  CHECK(count("") == 12);
  CHECK(count("model=cifar_resnet20") == 6);
  CHECK(count("model=cifar_resnet20,method=uniform") == 4);
  CHECK(count("model=cifar_resnet20,model=cifar_resnet32,method=fp32") == 4);
  CHECK(count("model=cifar_resnet32,seed=1,method=uniform") == 2);
  CHECK_THAT(error_of([&] { parse_run_filter("model=cifar_resnet99", ex); }),
             Catch::Contains("no run with model 'cifar_resnet99'") && Catch::Contains("cifar_resnet20, cifar_resnet32"));
  CHECK_THAT(error_of([&] { parse_run_filter("label=x", ex); }), Catch::Contains("unknown key 'label'"));
  CHECK_THAT(error_of([&] { parse_run_filter("model", ex); }), Catch::Contains("KEY=VALUE"));
  CHECK_THAT(error_of([&] { parse_run_filter("model=", ex); }), Catch::Contains("KEY=VALUE"));
}

TEST_CASE("shards partition the runs exactly once", "[runner]") {
  TempDir t;
  auto p = write_file(t.str(), "e.yaml", "models: [cifar_resnet20, cifar_resnet32, cifar_resnet44]\nruns:\n  - method: uniform\n    grid: {bits: [1, 2, 3, 4, 5, 6, 7]}\n");
  Experiment ex = load_experiment(p, "", t.str());
  for (int n : {1, 2, 3, 4, 7, 50}) {
    std::map<int, int> seen;
    for (int i = 0; i < n; ++i) {
      Shard s = resolve_shard(std::to_string(i) + "/" + std::to_string(n));
      for (auto& r : ex.runs)
        if (in_shard(r, s)) seen[r.index]++;
    }
    REQUIRE(seen.size() == ex.runs.size());
    for (auto& kv : seen) REQUIRE(kv.second == 1);
  }
  REQUIRE_THROWS_AS(resolve_shard("4/4"), bb::Error);
  setenv("SLURM_ARRAY_TASK_ID", "7", 1);
  setenv("SLURM_ARRAY_TASK_MIN", "5", 1);
  setenv("SLURM_ARRAY_TASK_COUNT", "3", 1);
  Shard s = resolve_shard("");
  unsetenv("SLURM_ARRAY_TASK_ID");
  unsetenv("SLURM_ARRAY_TASK_MIN");
  unsetenv("SLURM_ARRAY_TASK_COUNT");
  REQUIRE(s.index == 2);
  REQUIRE(s.count == 3);
  setenv("JOB_COMPLETION_INDEX", "1", 1);
  setenv("BITBENCH_SHARD_COUNT", "4", 1);
  s = resolve_shard("");
  unsetenv("JOB_COMPLETION_INDEX");
  unsetenv("BITBENCH_SHARD_COUNT");
  REQUIRE(s.index == 1);
  REQUIRE(s.source == "JOB_COMPLETION_INDEX");
}

TEST_CASE("run IDs key on the resolved parameters, the algorithm version and the calibration set", "[runner]") {
  TempDir t;
  auto exp = [&](const std::string& name, const std::string& calib, const std::string& method, const std::string& params) {
    return load_experiment(write_file(t.str(), name, "experiment: x\nmodels: [cifar_resnet20]\ncalibration: " + calib +
                                                   "\nruns:\n  - method: " + method + "\n    params: " + params + "\n"),
                           "", t.str())
        .runs.at(0);
  };
  // The same value spelled differently is one run (the method's binder resolves both to 2.0).
  const RunSpec a = exp("a.yaml", "cifar10-jpeg-train", "ecsq", "{target_bpw: 2}");
  const RunSpec b = exp("b.yaml", "cifar10-jpeg-train", "ecsq", "{target_bpw: 2.0}");
  REQUIRE(a.params.at("target_bpw") != b.params.at("target_bpw"));  // the YAML text differs
  REQUIRE(run_id(a) == run_id(b));
  REQUIRE(run_identity(a).at("params").at("target_bpw") == 2.0);
  // A calibrating method on another calibration set is another run; a method that reads no
  // calibration data is the same run whatever the set is called.
  const RunSpec c = exp("c.yaml", "cifar10-jpeg-val", "ecsq", "{target_bpw: 2}");
  REQUIRE(run_id(c) != run_id(a));
  REQUIRE(run_identity(a).at("calibration") == "cifar10-jpeg-train:45000");
  const RunSpec u1 = exp("u1.yaml", "cifar10-jpeg-train", "uniform", "{bits: 4}");
  const RunSpec u2 = exp("u2.yaml", "cifar10-jpeg-val", "uniform", "{bits: 4}");
  REQUIRE(run_id(u1) == run_id(u2));
  REQUIRE(run_identity(u1).at("calibration").is_null());
  // The algorithm's version is part of the identity.
  REQUIRE(run_identity(a).at("algorithm_version") == make_method("ecsq")->algorithm_version());
  // A parameter the method does not know is an error naming it, not a silently different run.
  auto bad = exp("d.yaml", "cifar10-jpeg-train", "uniform", "{bits: 4}");
  bad.params["no_such_key"] = "1";
  REQUIRE_THAT(error_of([&] { run_id(bad); }), Catch::Contains("no_such_key"));
}

TEST_CASE("two run blocks giving the same run under different labels are an error naming both", "[runner]") {
  TempDir t;
  // Two uniform blocks labelled "first" and "second"; the second's parameters vary.
  auto two_blocks = [&](const std::string& name, const std::string& second_params) {
    return write_file(t.str(), name,
                 "experiment: x\nmodels: [cifar_resnet20]\nruns:\n  - method: uniform\n    label: first\n"
                 "    params: {bits: 4}\n  - method: uniform\n    label: second\n    params: " + second_params + "\n");
  };
  // The same resolved parameters ("coder: fixed" is the default): an error naming both blocks.
  const std::string err = error_of([&] { load_experiment(two_blocks("dup.yaml", "{bits: 4, coder: fixed}"), "", t.str()); });
  REQUIRE_THAT(err, Catch::Contains("dup.yaml:7") && Catch::Contains("dup.yaml:4") && Catch::Contains("'second'"));
  // Different resolved parameters: two runs, both labels kept.
  REQUIRE(load_experiment(two_blocks("ok.yaml", "{bits: 3}"), "", t.str()).runs.size() == 2);
}

TEST_CASE("finished runs are cached, --force redoes them, failures leave records", "[runner]") {
  TempDir t;
  auto p = write_file(t.str(), "small.yaml", kSmall);
  Experiment ex = load_experiment(p, "", t.str() + "/results");
  RunnerOptions opt;
  auto s1 = run_experiment(ex, opt);
  REQUIRE(s1.done == 4);
  REQUIRE(s1.failed == 0);
  auto s2 = run_experiment(ex, opt);
  REQUIRE(s2.cached == 4);
  REQUIRE(s2.done == 0);
  {  // a new label reaches the cached record without re-running it
    Experiment relabelled = ex;
    relabelled.runs[0].label = "renamed";
    REQUIRE(run_experiment(relabelled, opt).cached == 4);
    auto rec = nlohmann::json::parse(read_file_text(ex.results_dir + "/runs/" + run_id(ex.runs[0]) + ".json"));
    REQUIRE(rec["label"] == "renamed");
    // The run's CPU time is kept beside its wall time (both positive: the run computed something).
    REQUIRE(rec["cpu_seconds"].get<double>() > 0);
    REQUIRE(rec["wall_seconds"].get<double>() > 0);
    REQUIRE(run_experiment(ex, opt).cached == 4);  // and back
  }
  opt.force = true;
  opt.shard_flag = "0/2";
  auto s3 = run_experiment(ex, opt);
  REQUIRE(s3.done == 2);
  // Table: one row per run, 8-bit within 0.3 points of fp32 on the same images.
  auto table = build_table(ex.results_dir, {});
  auto rows = table["models"]["cifar_resnet20"]["rows"];
  REQUIRE(rows.size() == 4);
  REQUIRE(fs::exists(ex.results_dir + "/plots/cifar_resnet20.cifar10-lossless-1k.png"));
  REQUIRE(fs::exists(ex.results_dir + "/table.md"));
  for (auto& row : rows) REQUIRE_FALSE(row.value("stale", false));
  // A record computed by another version of its method's algorithm is flagged stale in the table.
  {
    std::string rec_path;
    for (auto& e : fs::directory_iterator(ex.results_dir + "/runs")) {
      if (e.path().extension() != ".json") continue;
      auto j = nlohmann::json::parse(read_file_text(e.path().string()));
      if (j["method"] == "uniform") rec_path = e.path().string();
    }
    REQUIRE_FALSE(rec_path.empty());
    auto j = nlohmann::json::parse(read_file_text(rec_path));
    j["identity"]["algorithm_version"] = 0;
    std::ofstream(rec_path) << j.dump();
    auto t2 = build_table(ex.results_dir, {});
    int stale = 0;
    for (auto& row : t2["models"]["cifar_resnet20"]["rows"])
      if (row.value("stale", false)) {
        ++stale;
        REQUIRE(row["variant"].get<std::string>().find("STALE: algorithm v0, current v1") != std::string::npos);
      }
    REQUIRE(stale == 1);
  }
  // A run that fails writes a failure record and the others go on.
  auto bad = write_file(t.str(), "bad.yaml", R"(experiment: bad
models: [cifar_resnet20]
eval: [cifar10-lossless-1k]
eval_limit: 50
runs:
  - method: uniform
    params: {bits: 4}
  - method: fp32
)");
  Experiment eb = load_experiment(bad, "", t.str() + "/results");
  eb.runs[0].model_cfg.weights = t.str() + "/small.yaml";  // not a weights file: fails at load
  auto sb = run_experiment(eb, RunnerOptions{});
  REQUIRE(sb.failed == 1);
  REQUIRE(sb.done == 1);
  int failures = 0;
  for (auto& e : fs::directory_iterator(eb.results_dir + "/runs"))
    if (e.path().string().find(".failed.json") != std::string::npos) {
      auto j = nlohmann::json::parse(read_file_text(e.path().string()));
      REQUIRE(j.contains("error"));
      REQUIRE(j.contains("config"));
      ++failures;
    }
  REQUIRE(failures == 1);
}

TEST_CASE("a run killed mid-way leaves nothing half-written and resumes", "[runner][slow]") {
  TempDir t;
  auto p = write_file(t.str(), "small.yaml", kSmall);
  const std::string bin = binary_dir() + "/bitbench";
  const std::string results = t.str() + "/results";
  const std::string runs = results + "/small/runs";
  pid_t pid = fork();
  if (pid == 0) {
    setenv("BITBENCH_RESULTS", results.c_str(), 1);
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 2);
    execl(bin.c_str(), bin.c_str(), "run", p.c_str(), (char*)nullptr);
    _exit(127);
  }
  // Kill it as soon as the first record lands (or after a timeout).
  for (int i = 0; i < 600; ++i) {
    int n = 0;
    if (fs::exists(runs))
      for (auto& e : fs::directory_iterator(runs))
        if (e.path().extension() == ".json") ++n;
    if (n >= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  auto count = [&] {
    int n = 0;
    for (auto& e : fs::directory_iterator(runs))
      if (e.path().extension() == ".json") {
        REQUIRE_NOTHROW(nlohmann::json::parse(read_file_text(e.path().string())));
        ++n;
      }
    return n;
  };
  int before = count();
  // The killed run's .bbz never has its final name (only "<id>.bbz.tmp.<pid>").
  for (auto& e : fs::directory_iterator(runs)) REQUIRE(e.path().extension() != ".bbz");
  REQUIRE(before >= 1);
  REQUIRE(before < 4);
  Experiment ex = load_experiment(p, "", results);
  auto s = run_experiment(ex, RunnerOptions{});
  REQUIRE(s.cached == before);
  REQUIRE(s.done == 4 - before);
  REQUIRE(count() == 4);
  for (auto& e : fs::directory_iterator(runs)) REQUIRE(e.path().string().find(".tmp.") == std::string::npos);
  // keep_bbz: the finished run's file takes its final name beside its record.
  auto k = write_file(t.str(), "keep.yaml", "experiment: keep\nmodels: [cifar_resnet20]\neval: [cifar10-lossless-1k]\neval_limit: 20\nkeep_bbz: true\nruns:\n  - method: uniform\n    params: {bits: 4}\n");
  Experiment ek = load_experiment(k, "", results);
  REQUIRE(run_experiment(ek, RunnerOptions{}).done == 1);
  REQUIRE(fs::exists(results + "/keep/runs/" + run_id(ek.runs[0]) + ".bbz"));
}

TEST_CASE("Bjontegaard-style gaps and the Pareto front", "[runner][report]") {
  std::vector<std::pair<double, double>> a = {{1, 80}, {2, 90}, {4, 92}}, b = {{1, 70}, {2, 85}, {4, 91}};
  auto g = curve_gaps(a, b);
  REQUIRE(g["mean_top1_gap"].get<double>() > 0);
  REQUIRE(g["mean_bit_saving"].get<double>() > 0);
  auto g2 = curve_gaps(a, a);
  REQUIRE(g2["mean_top1_gap"].get<double>() == Approx(0).margin(1e-9));
  auto front = pareto_front({{1, 80}, {2, 79}, {3, 90}, {1.5, 85}});
  REQUIRE(front == std::vector<size_t>{0, 2, 3});
}

TEST_CASE("the shipped experiments parse and expand (a dry run of each)", "[runner]") {
  // table2_imagenet.yaml must dry-run on machines without ImageNet: its weights come from unset
  // environment variables, which a plan shows and only a real run rejects.
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(source_dir() + "/experiments"))
    if (e.path().extension() == ".yaml") names.push_back(e.path().stem().string());
  REQUIRE(names.size() >= 5);  // table2, table2_full, table2_imagenet, table2_retrain, kq_sweep, ...
  for (const std::string& name : names) {
    INFO(name);
    Experiment ex = load_experiment(source_dir() + "/experiments/" + name + ".yaml");
    REQUIRE(ex.name == name);
    REQUIRE(!ex.runs.empty());
    std::set<std::string> ids;
    size_t with_weights = 0;
    for (auto& r : ex.runs) {
      if (r.model_cfg.weights.empty()) {
        // Unset ${env:...}: the plan names the variable; IDs need the weights' hash.
        REQUIRE(r.model_cfg.weights_spec.find("${env:BITBENCH_") != std::string::npos);
        continue;
      }
      ids.insert(run_id(r));
      ++with_weights;
    }
    REQUIRE(ids.size() == with_weights);  // no two runs collide
  }
}

TEST_CASE("tune: spaces, budget and test sets are checked when the experiment loads", "[runner][tune]") {
  TempDir t;
  auto p = write_file(t.str(), "g.yaml", R"(experiment: g
models: [cifar_resnet20]
eval: [cifar10-lossless-1k]
tune_budget: 3
runs:
  - method: uniform
    tune:
      space: {scheme: [asymmetric, symmetric], clip: [minmax, mse]}
)");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }),
               Catch::Contains("g.yaml:8") && Catch::Contains("4 points, more than tune_budget 3"));
  p = write_file(t.str(), "r.yaml", R"(experiment: r
models: [cifar_resnet20]
eval: [cifar10-lossless-1k]
tune_budget: 3
runs:
  - method: uniform
    tune:
      mode: random
      space: {scheme: [asymmetric, symmetric], clip: [minmax, mse]}
)");
  auto ex = load_experiment(p, "", t.str());
  REQUIRE(ex.runs.size() == 1);
  REQUIRE(ex.runs[0].tune_points.size() == 3);
  CHECK(load_experiment(p, "", t.str()).runs[0].tune_points == ex.runs[0].tune_points);  // reproducible draw
  p = write_file(t.str(), "v.yaml", R"(experiment: v
models: [cifar_resnet20]
eval: [cifar10-lossless-1k]
runs:
  - method: uniform
    tune:
      space: {schem: [asymmetric]}
)");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("v.yaml:7") && Catch::Contains("schem"));
  p = write_file(t.str(), "ts.yaml", R"(experiment: ts
models: [cifar_resnet20]
eval: [cifar10-lossless-1k]
tune_on: cifar10-jpeg-test
runs:
  - method: uniform
)");
  REQUIRE_THAT(error_of([&] { load_experiment(p, "", t.str()); }), Catch::Contains("ts.yaml:4") && Catch::Contains("test set"));
}

TEST_CASE("tune: chooses on the validation split without reading any test set; run applies the choice", "[runner][tune]") {
  // A data root that has the JPEG train folder (train + validation splits) and the weights, but
  // no test set at all: tuning must succeed there, so it cannot have read one.
  TempDir t;
  const std::string real = data_root();
  fs::create_directories(t.str() + "/data/cifar10/jpeg");
  fs::create_directory_symlink(real + "/cifar10/jpeg/train", t.str() + "/data/cifar10/jpeg/train");
  fs::create_directory_symlink(real + "/models", t.str() + "/data/models");
  const char* prev = std::getenv("BITBENCH_DATA_ROOT");
  const std::string prev_root = prev ? prev : "";
  setenv("BITBENCH_DATA_ROOT", (t.str() + "/data").c_str(), 1);
  struct Restore {
    std::string v;
    bool had;
    ~Restore() { had ? setenv("BITBENCH_DATA_ROOT", v.c_str(), 1) : unsetenv("BITBENCH_DATA_ROOT"); }
  } restore{prev_root, prev != nullptr};

  auto p = write_file(t.str(), "tu.yaml", R"(experiment: tu
models: [cifar_resnet20]
eval: [cifar10-lossless-1k]
tune_budget: 2
tune_eval_limit: 300
runs:
  - method: uniform
    label: uniform 2 bits
    params: {bits: 2}
    tune:
      space: {scheme: [symmetric, asymmetric]}
)");
  Experiment ex = load_experiment(p, "", t.str() + "/results");
  REQUIRE_FALSE(fs::exists(t.str() + "/data/cifar10/test_lossless_1k.bin"));
  RunnerOptions opt;
  TuneSummary s = tune_experiment(ex, opt);
  REQUIRE(s.trials.failed == 0);
  REQUIRE(s.trials.done == 2);
  REQUIRE(s.chosen == 1);
  REQUIRE(fs::exists(tuned_path(ex)));
  // The choice is the trial with the higher validation top-1.
  double top[2];
  int i = 0;
  for (auto& e : fs::directory_iterator(ex.results_dir + "/tune")) {
    if (e.path().extension() != ".json") continue;
    auto j = nlohmann::json::parse(read_file_text(e.path().string()));
    CHECK(j.at("eval").contains("cifar10-jpeg-val"));
    CHECK(j.at("eval").size() == 1);
    top[j.at("params").at("scheme") == "asymmetric" ? 1 : 0] = j.at("top1").get<double>();
    ++i;
  }
  REQUIRE(i == 2);
  const std::string want = top[1] > top[0] ? "asymmetric" : "symmetric";
  // A second tune finds every trial cached.
  TuneSummary again = tune_experiment(load_experiment(p, "", t.str() + "/results"), opt);
  CHECK(again.trials.cached == 2);
  CHECK(again.trials.done == 0);

  Experiment run = load_experiment(p, "", t.str() + "/results");
  const nlohmann::json untuned = run.runs[0].config_json();  // (run_id would identify the test set: absent here)
  REQUIRE(apply_tuned(run) == 1);
  CHECK(run.runs[0].params.at("scheme") == want);
  CHECK(run.runs[0].label.find("tuned on cifar10-jpeg-val, budget 2") != std::string::npos);
  CHECK(run.runs[0].config_json() != untuned);  // other parameters, hence another run ID
  CHECK(run.runs[0].tuned.at("chosen").at("scheme") == want);
}
