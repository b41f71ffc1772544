// Executes an experiment's runs: content-hashed run IDs, cached records (a finished run is
// skipped), atomic writes, failure records, and disjoint shards for clusters.
#pragma once
#include "runner/experiment.h"

#include <nlohmann/json.hpp>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace bb {

struct Shard {
  int index = 0, count = 1;
  std::string source = "none";  // "flag", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "PARALLEL_SEQ", "none"
};

// "--shard i/N" if given, else the environment of the common engines: Slurm job arrays
// (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT), Kubernetes Indexed Jobs
// (JOB_COMPLETION_INDEX with BITBENCH_SHARD_COUNT), GNU parallel (PARALLEL_SEQ, 1-based, with
// BITBENCH_SHARD_COUNT). No sharding when none is set.
Shard resolve_shard(const std::string& flag);
bool in_shard(const RunSpec& r, const Shard& s);  // round-robin over the stable run index

// "--only KEY=VALUE[,KEY=VALUE...]" with KEY in model, method, seed: the runs matching every key
// (a key given twice matches either value), e.g. one model's rows of a long grid first. Values
// must occur in the experiment (a typo is an error naming the known ones). Empty: every run.
struct RunFilter {
  std::map<std::string, std::set<std::string>> want;
};
RunFilter parse_run_filter(const std::string& flag, const Experiment& ex);
bool in_filter(const RunSpec& r, const RunFilter& f);

// Run ID: sha256 (first 16 hex) of the resolved config + weights sha256 + dataset identities +
// bitbench version. Stable under YAML key order (the JSON is canonical: sorted keys).
std::string run_id(const RunSpec& r);
nlohmann::json run_identity(const RunSpec& r);

struct RunnerOptions {
  std::string shard_flag;
  std::string only_flag;  // RunFilter (parse_run_filter)
  bool force = false;
  bool dry_run = false;
  std::string data_root;
  std::string runs_subdir = "runs";  // records go to <results_dir>/<runs_subdir> ("tune" for trials)
};

struct RunnerSummary {
  int total = 0, in_shard = 0, done = 0, cached = 0, failed = 0;
};

RunnerSummary run_experiment(const Experiment& ex, const RunnerOptions& opt);

// `bitbench tune`: for every run whose block has a `tune:` space, each candidate setting is run
// as a trial (compress + evaluate on the validation split only: ex.tune_on, else the family's
// validation set; test sets are refused), cached like runs under <results_dir>/tune/. Once all
// trials of a run exist its best setting (highest validation top-1; ties: the earlier point) goes
// to <results_dir>/tuned.yaml, written atomically from every trial record present (so shards
// merge). Returns the trial runner's summary.
struct TuneSummary {
  RunnerSummary trials;
  int runs = 0, chosen = 0;
};
TuneSummary tune_experiment(const Experiment& ex, const RunnerOptions& opt);
std::string tuned_path(const Experiment& ex);
// Applies tuned.yaml (if present) to the runs it covers: their parameters become the chosen ones
// (hence a new run ID), r.tuned holds the choice and the label says "tuned". Returns how many.
int apply_tuned(Experiment& ex);

// Where records live: <results_dir>/runs/<id>.json (and <id>.failed.json, <id>.bbz).
std::string runs_dir(const Experiment& ex);
// Shared cache of expensive intermediates: <results root>/cache.
std::string cache_dir(const Experiment& ex);

}  // namespace bb
