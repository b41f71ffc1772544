// Executes an experiment's runs: content-hashed run IDs, cached records (a finished run is
// skipped), atomic writes, failure records, and disjoint shards for clusters.
#pragma once
#include "runner/experiment.h"

#include <nlohmann/json.hpp>
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

// Run ID: sha256 (first 16 hex) of the resolved config + weights sha256 + dataset identities +
// bitbench version. Stable under YAML key order (the JSON is canonical: sorted keys).
std::string run_id(const RunSpec& r);
nlohmann::json run_identity(const RunSpec& r);

struct RunnerOptions {
  std::string shard_flag;
  bool force = false;
  bool dry_run = false;
  std::string data_root;
};

struct RunnerSummary {
  int total = 0, in_shard = 0, done = 0, cached = 0, failed = 0;
};

RunnerSummary run_experiment(const Experiment& ex, const RunnerOptions& opt);

// Where records live: <results_dir>/runs/<id>.json (and <id>.failed.json, <id>.bbz).
std::string runs_dir(const Experiment& ex);
// Shared cache of expensive intermediates: <results root>/cache.
std::string cache_dir(const Experiment& ex);

}  // namespace bb
