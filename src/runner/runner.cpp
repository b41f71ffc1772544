#include "runner/runner.h"
#include "common/error.h"
#include "common/yaml_util.h"
#include "common/fs_util.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/runtime.h"
#include "common/timer.h"
#include "data/dataset.h"
#include "methods/method.h"
#include "models/registry.h"
#include "runner/pipeline.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>

#include <cerrno>
#include <signal.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace bb {
namespace {

int env_int(const char* name, int def) { return (int)env_int_setting(name, def, 0, INT32_MAX); }

// Hashing a large weights file once per process is enough.
std::string cached_file_hash(const std::string& path) {
  static std::mutex mu;
  static std::map<std::string, std::string> memo;
  std::lock_guard<std::mutex> lk(mu);
  auto key = path + "|" + std::to_string(fs::file_size(path)) + "|" +
             std::to_string(fs::last_write_time(path).time_since_epoch().count());
  auto it = memo.find(key);
  if (it != memo.end()) return it->second;
  return memo[key] = sha256_file(path);
}

std::string dataset_identity(const std::string& name) {
  static std::map<std::string, std::string> memo;
  auto it = memo.find(name);
  if (it != memo.end()) return it->second;
  // Name and image count: stable across machines (the root path is not part of the identity);
  // for a dataset file other than the shipped ones, also the hash of its settings.
  return memo[name] = dataset_run_identity(name);
}

std::string hex_bits(const std::vector<uint8_t>& hits) {
  static const char* hexd = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < hits.size(); i += 4) {
    int v = 0;
    for (size_t j = 0; j < 4 && i + j < hits.size(); ++j) v |= (hits[i + j] ? 1 : 0) << j;
    out.push_back(hexd[v]);
  }
  return out;
}

// A process killed while writing leaves "<file>.tmp.<pid>"; remove those whose writer is gone.
void remove_stale_temporaries(const std::string& dir) {
  for (auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    auto pos = name.rfind(".tmp.");
    if (pos == std::string::npos) continue;
    int pid = std::atoi(name.c_str() + pos + 5);
    if (pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH)) continue;
    std::error_code ec;
    fs::remove(e.path(), ec);
  }
}

}  // namespace

Shard resolve_shard(const std::string& flag) {
  Shard s;
  if (!flag.empty()) {
    auto slash = flag.find('/');
    BB_CHECK(slash != std::string::npos, "--shard expects i/N, got '", flag, "'");
    s.index = std::stoi(flag.substr(0, slash));
    s.count = std::stoi(flag.substr(slash + 1));
    s.source = "flag";
  } else if (std::getenv("SLURM_ARRAY_TASK_ID")) {
    s.index = env_int("SLURM_ARRAY_TASK_ID", 0) - env_int("SLURM_ARRAY_TASK_MIN", 0);
    s.count = env_int("SLURM_ARRAY_TASK_COUNT", 1);
    s.source = "SLURM_ARRAY_TASK_ID";
  } else if (std::getenv("JOB_COMPLETION_INDEX")) {
    s.index = env_int("JOB_COMPLETION_INDEX", 0);
    s.count = env_int("BITBENCH_SHARD_COUNT", 0);
    BB_CHECK(s.count > 0, "JOB_COMPLETION_INDEX is set: set BITBENCH_SHARD_COUNT to the Job's completions");
    s.source = "JOB_COMPLETION_INDEX";
  } else if (std::getenv("PARALLEL_SEQ") && std::getenv("BITBENCH_SHARD_COUNT")) {
    s.index = env_int("PARALLEL_SEQ", 1) - 1;
    s.count = env_int("BITBENCH_SHARD_COUNT", 0);
    s.source = "PARALLEL_SEQ";
  }
  BB_CHECK(s.count >= 1 && s.index >= 0 && s.index < s.count, "shard ", s.index, "/", s.count, " (from ", s.source,
           ") is out of range");
  return s;
}

bool in_shard(const RunSpec& r, const Shard& s) { return r.index % s.count == s.index; }

namespace {
std::string filter_value(const RunSpec& r, const std::string& key) {
  if (key == "model") return r.model;
  if (key == "method") return r.method;
  return std::to_string(r.seed);  // "seed"
}
}  // namespace

RunFilter parse_run_filter(const std::string& flag, const Experiment& ex) {
  RunFilter f;
  size_t start = 0;
  while (start < flag.size()) {
    size_t comma = flag.find(',', start);
    if (comma == std::string::npos) comma = flag.size();
    const std::string item = flag.substr(start, comma - start);
    start = comma + 1;
    const size_t eq = item.find('=');
    BB_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < item.size(), "--only expects KEY=VALUE[,KEY=VALUE...], got '",
             flag, "'");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    BB_CHECK(key == "model" || key == "method" || key == "seed", "--only: unknown key '", key,
             "' (known: model, method, seed)");
    std::set<std::string> known;
    for (auto& r : ex.runs) known.insert(filter_value(r, key));
    if (!known.count(value)) {
      std::string list;
      for (auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw Error("--only: experiment '" + ex.name + "' has no run with " + key + " '" + value + "' (it has: " + list + ")");
    }
    f.want[key].insert(value);
  }
  return f;
}

bool in_filter(const RunSpec& r, const RunFilter& f) {
  for (auto& [key, values] : f.want)
    if (!values.count(filter_value(r, key))) return false;
  return true;
}

// The run's config with the method's parameters as the method resolves them (its ParamBinder:
// every key, typed, the code's defaults included), so "2" and "2.0" are one run and a default
// changed in code or in configs/methods gives a new ID; the algorithm's version, so records of an
// older algorithm are never reused as current; and what the method reads besides the weights:
// the calibration set's identity (null when it reads none, so the calibration name of a method
// without calibration does not split runs).
nlohmann::json resolved_config(const RunSpec& r) {
  nlohmann::json j = r.config_json();
  auto method = make_method(r.method);
  j["params"] = r.resolved_params();
  j["algorithm_version"] = method->algorithm_version();
  // Whether the run reads calibration data depends on its parameters (fine-tuning, a data-aware
  // proxy): ask the method with the run's parameters applied, as the pipeline does.
  ParamBinder::apply(method->params(), r.params, r.where.empty() ? "method '" + r.method + "'" : r.where);
  if (method->needs_calibration()) {
    const std::string calib =
        r.calibration.empty() ? default_calibration(make_model(r.model)->input_spec().family) : r.calibration;
    j["calibration"] = dataset_identity(calib);
  } else {
    j["calibration"] = nullptr;
  }
  return j;
}

nlohmann::json run_identity(const RunSpec& r) {
  nlohmann::json j = resolved_config(r);
  BB_CHECK(!r.model_cfg.weights.empty(), "model '", r.model, "': weights '", r.model_cfg.weights_spec,
           "' names an unset environment variable");
  BB_CHECK(fs::exists(r.model_cfg.weights), "model '", r.model, "': weights file '", r.model_cfg.weights,
           "' does not exist");
  j["weights_sha256"] = cached_file_hash(r.model_cfg.weights);
  nlohmann::json ds = nlohmann::json::array();
  for (auto& d : r.eval) ds.push_back(dataset_identity(d));
  j["eval_identity"] = ds;
  j["bitbench_version"] = bitbench_version();
  // The BLAS kernels move the floats (pin_blas_environment); only records computed with other kernels
  // than the canonical ones carry them, so the committed records (all computed with them) keep
  // their IDs.
  if (const std::string k = blas_kernels(); k != kCanonicalBlasKernels) j["blas_kernels"] = k;
  return j;
}

std::string run_id(const RunSpec& r) { return sha256_hex(run_identity(r).dump()).substr(0, 16); }

std::string runs_dir(const Experiment& ex) { return ex.results_dir + "/runs"; }
std::string cache_dir(const Experiment& ex) { return fs::path(ex.results_dir).parent_path().string() + "/cache"; }

RunnerSummary run_experiment(const Experiment& ex, const RunnerOptions& opt) {
  RunnerSummary sum;
  Shard shard = resolve_shard(opt.shard_flag);
  const RunFilter only = parse_run_filter(opt.only_flag, ex);
  const std::string dir = ex.results_dir + "/" + opt.runs_subdir;
  std::vector<const RunSpec*> mine;
  for (auto& r : ex.runs) {
    ++sum.total;
    if (in_shard(r, shard) && in_filter(r, only)) mine.push_back(&r);
  }
  sum.in_shard = (int)mine.size();
  log_info("experiment '" + ex.name + "': " + std::to_string(sum.total) + " runs, shard " +
           std::to_string(shard.index) + "/" + std::to_string(shard.count) + " (" + shard.source + ") has " +
           std::to_string(mine.size()));
  if (!opt.dry_run) {
    fs::create_directories(dir);
    remove_stale_temporaries(dir);
  }
  int k = 0;
  for (const RunSpec* r : mine) {
    ++k;
    const std::string id = run_id(*r);
    const std::string rec_path = dir + "/" + id + ".json";
    const std::string fail_path = dir + "/" + id + ".failed.json";
    nlohmann::json params = r->params;
    // A fine-tuned run names its FP control (issue 21); the control says what it is.
    const std::string control_id = r->control >= 0 ? run_id(ex.runs.at(r->control)) : "";
    std::string desc = r->model + " " + r->method + " " + params.dump();
    if (!control_id.empty()) desc += " [control " + control_id + "]";
    if (r->label == kFpControlLabel && !r->finetune_budget.is_null()) desc += " [" + std::string(kFpControlLabel) + "]";
    if (!opt.force && fs::exists(rec_path)) {
      ++sum.cached;
      // A label is presentation, not part of the run: a cached record takes the experiment's
      // current label (the loader refuses two labels for one run).
      if (!opt.dry_run) {
        nlohmann::json rec;
        try {
          rec = nlohmann::json::parse(read_file_text(rec_path));
        } catch (const nlohmann::json::exception& e) {
          BB_THROW("run record '", rec_path, "' is not valid JSON: ", e.what());
        }
        bool changed = false;
        if (rec.value("label", std::string()) != r->label) {
          rec["label"] = r->label;
          changed = true;
        }
        // Likewise the control it is compared with (the control's ID moves when fp32 changes).
        if (!control_id.empty() && rec.value("control_run_id", std::string()) != control_id) {
          rec["control_run_id"] = control_id;
          changed = true;
        }
        if (changed) write_file_atomic(rec_path, rec.dump(1) + "\n");
      }
      log_info("[" + std::to_string(k) + "/" + std::to_string(mine.size()) + "] cached " + id + " " + desc);
      continue;
    }
    log_info("[" + std::to_string(k) + "/" + std::to_string(mine.size()) + "] run " + id + " " + desc);
    if (opt.dry_run) continue;
    const double t0 = now_seconds(), cpu0 = process_cpu_seconds();
    CompressRequest req;
    req.model = r->model;
    req.weights = r->model_cfg.weights;
    req.method = r->method;
    req.params = r->params;
    req.calib_dataset = r->calibration;
    req.data_root = opt.data_root;
    req.seed = r->seed;
    req.cache_dir = cache_dir(ex);
    req.eval_datasets = r->eval;
    req.eval_limit = r->eval_limit;
    // Each run writes its own files (named by its ID): shards on a shared filesystem never collide.
    // The .bbz is written under a temporary name (removed by remove_stale_temporaries once its
    // writer is gone) and takes its final name only with the record: a killed run leaves no
    // <id>.bbz behind.
    const std::string bbz_path = dir + "/" + id + ".bbz";
    req.out_path = bbz_path + ".tmp." + std::to_string(getpid());
    std::string phase = "compress";
    try {
      CompressOutcome o = compress_model(req);
      nlohmann::json rec = o.to_json();
      rec["run_id"] = id;
      rec["experiment"] = ex.name;
      rec["label"] = r->label;
      rec["model"] = r->model;
      rec["method"] = r->method;
      rec["params"] = r->params;
      rec["config"] = r->config_json();
      rec["identity"] = run_identity(*r);
      rec["seed"] = r->seed;
      if (!r->tuned.is_null()) rec["tuned"] = r->tuned;
      if (!r->finetune_budget.is_null()) rec["finetune_budget"] = r->finetune_budget;
      if (!control_id.empty()) rec["control_run_id"] = control_id;
      rec["wall_seconds"] = now_seconds() - t0;
      rec["cpu_seconds"] = process_cpu_seconds() - cpu0;
      rec["peak_rss_bytes"] = peak_rss_bytes();
      rec["context"] = context_json();
      nlohmann::json hits = nlohmann::json::object();
      for (auto& e : o.evals) hits[e.dataset] = hex_bits(e.hit1);
      rec["hit1_hex"] = hits;
      phase = "write-record";
      if (r->keep_bbz)
        fs::rename(req.out_path, bbz_path);
      else
        fs::remove(req.out_path);
      write_file_atomic(rec_path, rec.dump(1) + "\n");
      fs::remove(fail_path);
      ++sum.done;
      std::string line = "  done in " + std::to_string((int)(now_seconds() - t0)) + " s: bpw_core " +
                         std::to_string(o.accounting.bpw_core);
      for (auto& e : o.evals) line += ", " + e.dataset + " top-1 " + std::to_string(e.top1);
      log_info(line);
    } catch (const std::exception& e) {
      ++sum.failed;
      fs::remove(req.out_path);
      nlohmann::json fail = {{"run_id", id}, {"experiment", ex.name}, {"error", e.what()}, {"phase", phase},
                             {"model", r->model}, {"method", r->method}, {"params", r->params},
                             {"config", r->config_json()}, {"where", r->where}, {"context", context_json()}};
      write_file_atomic(fail_path, fail.dump(1) + "\n");
      log_warn("run " + id + " failed (" + phase + "): " + e.what() + " -> " + fail_path);
    }
  }
  log_info("experiment '" + ex.name + "' shard " + std::to_string(shard.index) + "/" + std::to_string(shard.count) +
           ": " + std::to_string(sum.done) + " done, " + std::to_string(sum.cached) + " cached, " +
           std::to_string(sum.failed) + " failed");
  return sum;
}

std::string tuned_path(const Experiment& ex) { return ex.results_dir + "/tuned.yaml"; }

namespace {

// Key of a run in tuned.yaml: its resolved config and weights, not its evaluation sets' contents
// (identifying those would open the test sets, which tuning never touches).
std::string tune_key(const RunSpec& r) {
  nlohmann::json j = resolved_config(r);
  j["weights_sha256"] = cached_file_hash(r.model_cfg.weights);
  j["purpose"] = "tune";
  return sha256_hex(j.dump()).substr(0, 16);
}

std::string tune_set_for(const Experiment& ex, const RunSpec& r) {
  std::string v = ex.tune_on;
  if (v.empty()) v = validation_set_for_family(dataset_family(r.calibration));
  BB_CHECK(!v.empty(), r.where, ": no validation split is known for model '", r.model,
           "' (calibration '", r.calibration, "'): set 'tune_on' in the experiment");
  BB_CHECK(!is_test_set(v), r.where, ": '", v, "' is a test set; tuning reads validation data only");
  for (auto& e : r.eval)
    BB_CHECK(e != v, r.where, ": the run reports on '", v, "', the set it would be tuned on");
  return v;
}

}  // namespace

TuneSummary tune_experiment(const Experiment& ex, const RunnerOptions& opt) {
  TuneSummary sum;
  Experiment tx = ex;
  tx.runs.clear();
  struct Job {
    const RunSpec* base;
    std::string id, tune_on;
    std::vector<std::string> trial_ids;
  };
  std::vector<Job> jobs;
  for (const RunSpec& r : ex.runs) {
    if (r.tune_points.empty()) continue;
    Job j{&r, tune_key(r), tune_set_for(ex, r), {}};
    for (const auto& pt : r.tune_points) {
      RunSpec t = r;
      for (auto& kv : pt) t.params[kv.first] = kv.second;
      t.eval = {j.tune_on};
      t.eval_limit = ex.tune_eval_limit;
      t.tune_points.clear();
      t.control = -1;  // the trials are evaluated on the validation split only, without controls
      t.index = (int)tx.runs.size();
      t.label = r.label + " [tune trial]";
      j.trial_ids.push_back(run_id(t));
      tx.runs.push_back(std::move(t));
    }
    jobs.push_back(std::move(j));
  }
  BB_CHECK(!jobs.empty(), ex.path, ": no run block has a 'tune:' block, nothing to tune");
  sum.runs = (int)jobs.size();
  RunnerOptions o = opt;
  o.runs_subdir = "tune";
  sum.trials = run_experiment(tx, o);
  if (opt.dry_run) return sum;

  // Merge every trial record present into tuned.yaml.
  const std::string tdir = ex.results_dir + "/tune";
  YAML::Emitter y;
  y << YAML::Comment("written by `bitbench tune` (settings chosen on validation data; `bitbench run` applies them)");
  y << YAML::BeginMap;
  y << YAML::Key << "experiment" << YAML::Value << ex.name;
  y << YAML::Key << "tune_budget" << YAML::Value << ex.tune_budget;
  y << YAML::Key << "runs" << YAML::Value << YAML::BeginMap;
  for (const Job& j : jobs) {
    std::vector<nlohmann::json> recs;
    for (auto& tid : j.trial_ids) {
      const std::string p = tdir + "/" + tid + ".json";
      if (!fs::exists(p)) break;
      recs.push_back(nlohmann::json::parse(read_file_text(p)));
    }
    if (recs.size() != j.trial_ids.size()) continue;  // not all trials done (another shard, or failed)
    size_t best = 0;
    for (size_t i = 1; i < recs.size(); ++i)
      if (recs[i].at("top1").get<double>() > recs[best].at("top1").get<double>()) best = i;
    const RunSpec& r = *j.base;
    y << YAML::Key << j.id << YAML::Value << YAML::BeginMap;
    y << YAML::Key << "model" << YAML::Value << r.model;
    y << YAML::Key << "method" << YAML::Value << r.method;
    y << YAML::Key << "label" << YAML::Value << r.label;
    y << YAML::Key << "tune_on" << YAML::Value << j.tune_on;
    y << YAML::Key << "chosen" << YAML::Value << YAML::Flow << YAML::BeginMap;
    for (auto& kv : r.tune_points[best]) y << YAML::Key << kv.first << YAML::Value << kv.second;
    y << YAML::EndMap;
    y << YAML::Key << "val_top1" << YAML::Value << recs[best].at("top1").get<double>();
    y << YAML::Key << "trials" << YAML::Value << YAML::BeginSeq;
    for (size_t i = 0; i < recs.size(); ++i) {
      y << YAML::Flow << YAML::BeginMap;
      for (auto& kv : r.tune_points[i]) y << YAML::Key << kv.first << YAML::Value << kv.second;
      y << YAML::Key << "val_top1" << YAML::Value << recs[i].at("top1").get<double>();
      y << YAML::Key << "bpw_core" << YAML::Value << recs[i].at("bpw_core").get<double>();
      y << YAML::Key << "run_id" << YAML::Value << j.trial_ids[i];
      y << YAML::EndMap;
    }
    y << YAML::EndSeq << YAML::EndMap;
    ++sum.chosen;
    std::string choice;
    for (auto& kv : r.tune_points[best]) choice += " " + kv.first + "=" + kv.second;
    log_info("tuned " + r.model + " " + r.method + " (" + r.label + "):" + choice + ", " + j.tune_on + " top-1 " +
             std::to_string(recs[best].at("top1").get<double>()));
  }
  y << YAML::EndMap << YAML::EndMap;
  BB_CHECK(y.good(), "tune: cannot write tuned.yaml: ", y.GetLastError());
  write_file_atomic(tuned_path(ex), std::string(y.c_str()) + "\n");
  log_info("tune '" + ex.name + "': " + std::to_string(sum.chosen) + " of " + std::to_string(sum.runs) +
           " runs chosen -> " + tuned_path(ex));
  return sum;
}

int apply_tuned(Experiment& ex) {
  const std::string p = tuned_path(ex);
  if (!fs::exists(p)) return 0;
  YAML::Node n = yaml_load_map(p, "tuned settings file");
  BB_CHECK(n["runs"] && n["runs"].IsMap(), p, ": expected a mapping with 'runs' (written by bitbench tune)");
  const int budget = n["tune_budget"] ? n["tune_budget"].as<int>() : 0;
  int applied = 0;
  for (RunSpec& r : ex.runs) {
    if (r.tune_points.empty()) continue;
    const std::string key = tune_key(r);
    const YAML::Node e = n["runs"][key];
    if (!e) continue;  // the run changed since it was tuned, or was not tuned yet
    BB_CHECK(e.IsMap() && e["chosen"] && e["chosen"].IsMap(), p, ": entry for run ", key, " has no 'chosen' map");
    nlohmann::json chosen = nlohmann::json::object();
    for (auto it = e["chosen"].begin(); it != e["chosen"].end(); ++it) {
      const std::string k = it->first.as<std::string>();
      BB_CHECK(r.params.count(k), p, ": run ", key, " chose unknown parameter '", k, "'");
      r.params[k] = it->second.as<std::string>();
      chosen[k] = r.params[k];
    }
    const std::string on = e["tune_on"] ? e["tune_on"].as<std::string>() : "";
    r.tuned = {{"chosen", chosen}, {"tune_on", on}, {"tune_budget", budget},
               {"val_top1", e["val_top1"] ? e["val_top1"].as<double>() : 0.0}};
    r.label += " [tuned on " + on + ", budget " + std::to_string(budget) + "]";
    ++applied;
  }
  return applied;
}

}  // namespace bb
