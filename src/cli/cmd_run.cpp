// bitbench run E.yaml [--dry-run] [--force] [--shard i/N] [--only model=M]    execute an experiment
// bitbench plan E.yaml                                        print the stable run IDs
// bitbench tune E.yaml [--dry-run] [--force] [--shard i/N]   choose settings on the validation split
#include "cli/args.h"
#include "common/error.h"
#include "common/log.h"
#include "runner/runner.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

namespace bb {
namespace {

// Each command accepts only its own flags: `run --results-dir` used to be accepted and ignored,
// starting the whole experiment when the user wanted a path.
Args run_args(const std::string& cmd) {
  std::vector<FlagSpec> specs = {
      {"--shard", true, "BITBENCH_SHARD", false, "run the i-th of N disjoint slices (i/N)"},
      {"--only", true, "BITBENCH_ONLY", false,
       "only the runs with these values: KEY=VALUE[,KEY=VALUE...], KEY in model, method, seed"},
      {"--results", true, "BITBENCH_RESULTS", false, "results root (default <source>/results)"},
      {"--configs", true, "BITBENCH_CONFIGS", false, "configs folder (default <source>/configs)"},
      {"--data-root", true, "", false, "data root"},
      {"--max-runs", true, "BITBENCH_MAX_RUNS", false,
       "refuse an experiment that expands to more runs than this, before expanding it (default 10000)"},
      {"--help", false, "", false, "this help"}};
  if (cmd == "run" || cmd == "tune") {
    specs.push_back({"--dry-run", false, "", false, "list the runs, do nothing"});
    specs.push_back({"--force", false, "BITBENCH_FORCE", false, "redo finished runs"});
  } else {
    specs.push_back({"--json", false, "", false, "JSON output"});
    specs.push_back({"--results-dir", false, "", false, "print the experiment's results folder only"});
  }
  return Args(cmd, specs);
}

int64_t max_runs(const Args& a) {
  const std::string v = a.get("--max-runs");
  if (v.empty()) return kDefaultMaxRuns;
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  BB_CHECK(end && *end == 0 && errno == 0 && n >= 1, "--max-runs must be a positive integer, got '", v, "'");
  return n;
}

int cmd_run(int argc, char** argv) {
  Args a = run_args("run");
  a.parse(argc, argv);
  if (a.has("--help")) {
    std::printf("usage: bitbench run EXPERIMENT.yaml [flags]\n%s", a.usage().c_str());
    return 0;
  }
  BB_CHECK(a.positional().size() == 1, "run takes exactly one experiment file");
  if (a.has("--data-root")) setenv("BITBENCH_DATA_ROOT", a.get("--data-root").c_str(), 1);
  Experiment ex = load_experiment(a.positional()[0], a.get("--configs"), a.get("--results"), max_runs(a));
  if (int n = apply_tuned(ex)) log_info(std::to_string(n) + " runs use settings from " + tuned_path(ex));
  RunnerOptions opt;
  opt.force = a.has("--force");
  opt.dry_run = a.has("--dry-run");
  opt.shard_flag = a.get("--shard");
  opt.only_flag = a.get("--only");
  if (opt.dry_run) {
    Shard s = resolve_shard(opt.shard_flag);
    const RunFilter only = parse_run_filter(opt.only_flag, ex);
    int n = 0;
    for (auto& r : ex.runs) {
      if (!in_shard(r, s) || !in_filter(r, only)) continue;
      ++n;
      nlohmann::json p = r.params;
      std::string w = r.model_cfg.weights.empty() ? "<unset: " + r.model_cfg.weights_spec + ">" : r.model_cfg.weights;
      // A fine-tuned run names its FP control's index (issue 21); the label says which is which.
      const std::string ctl = r.control >= 0 ? "  control=" + std::to_string(ex.runs[r.control].index) : "";
      std::printf("%4d  %-16s %-14s seed=%llu  %s  weights=%s  eval=%s  label=\"%s\"%s\n", r.index, r.model.c_str(),
                  r.method.c_str(), (unsigned long long)r.seed, p.dump().c_str(), w.c_str(),
                  nlohmann::json(r.eval).dump().c_str(), r.label.c_str(), ctl.c_str());
    }
    std::printf("%d runs (of %zu in the experiment) -> %s\n", n, ex.runs.size(), ex.results_dir.c_str());
    return 0;
  }
  RunnerSummary s = run_experiment(ex, opt);
  return s.failed > 0 ? 3 : 0;
}

int cmd_plan(int argc, char** argv) {
  Args a = run_args("plan");
  a.parse(argc, argv);
  if (a.has("--help")) {
    std::printf("usage: bitbench plan EXPERIMENT.yaml [--shard i/N] [--json]\n%s", a.usage().c_str());
    return 0;
  }
  BB_CHECK(a.positional().size() == 1, "plan takes exactly one experiment file");
  if (a.has("--data-root")) setenv("BITBENCH_DATA_ROOT", a.get("--data-root").c_str(), 1);
  Experiment ex = load_experiment(a.positional()[0], a.get("--configs"), a.get("--results"), max_runs(a));
  apply_tuned(ex);
  if (a.has("--results-dir")) {
    std::printf("%s\n", ex.results_dir.c_str());
    return 0;
  }
  Shard s = resolve_shard(a.get("--shard"));
  const RunFilter only = parse_run_filter(a.get("--only"), ex);
  nlohmann::json out = nlohmann::json::array();
  for (auto& r : ex.runs) {
    if (!in_shard(r, s) || !in_filter(r, only)) continue;
    std::string id = run_id(r);
    bool done = std::filesystem::exists(runs_dir(ex) + "/" + id + ".json");
    if (a.has("--json")) {
      out.push_back({{"index", r.index}, {"run_id", id}, {"model", r.model}, {"method", r.method},
                     {"params", r.params}, {"seed", r.seed}, {"done", done}, {"label", r.label}});
      if (r.control >= 0) out.back()["control_run_id"] = run_id(ex.runs[r.control]);
    } else {
      std::printf("%s %d %s %s %s\n", id.c_str(), r.index, r.model.c_str(), r.method.c_str(), done ? "done" : "todo");
    }
  }
  if (a.has("--json")) std::printf("%s\n", out.dump().c_str());
  return 0;
}

int cmd_tune(int argc, char** argv) {
  Args a = run_args("tune");
  a.parse(argc, argv);
  if (a.has("--help")) {
    std::printf("usage: bitbench tune EXPERIMENT.yaml [flags]\n"
                "For every run block with a `tune:` space (grid, or random with the experiment's tune_budget),\n"
                "runs each setting on the validation split (tune_on; default cifar10-jpeg-val for CIFAR-10),\n"
                "never on a test set, and writes the best per run to results/<experiment>/tuned.yaml,\n"
                "which `bitbench run` then applies.\n%s",
                a.usage().c_str());
    return 0;
  }
  BB_CHECK(a.positional().size() == 1, "tune takes exactly one experiment file");
  if (a.has("--data-root")) setenv("BITBENCH_DATA_ROOT", a.get("--data-root").c_str(), 1);
  Experiment ex = load_experiment(a.positional()[0], a.get("--configs"), a.get("--results"), max_runs(a));
  RunnerOptions opt;
  opt.force = a.has("--force");
  opt.dry_run = a.has("--dry-run");
  opt.shard_flag = a.get("--shard");
  opt.only_flag = a.get("--only");
  TuneSummary s = tune_experiment(ex, opt);
  return s.trials.failed > 0 ? 3 : 0;
}

const bool r1 = register_command("run", cmd_run, "run an experiment (YAML) into results/<experiment>/runs");
const bool r2 = register_command("plan", cmd_plan, "print an experiment's stable run IDs");
const bool r3 = register_command("tune", cmd_tune, "choose each run's settings on the validation split -> tuned.yaml");

}  // namespace
}  // namespace bb
