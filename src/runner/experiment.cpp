#include "runner/experiment.h"

#include "common/error.h"
#include "common/runtime.h"
#include "common/yaml_util.h"
#include "data/dataset.h"
#include "methods/method.h"
#include "models/registry.h"

#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <set>

namespace fs = std::filesystem;

namespace bb {
namespace {

// "file:line" of a node.
std::string at(const std::string& file, const YAML::Node& n) { return yaml_at(file, n); }

std::string scalar(const std::string& file, const YAML::Node& n, const std::string& key) {
  BB_CHECK(n.IsScalar(), at(file, n), ": '", key, "' must be a scalar value");
  return n.Scalar();
}

std::vector<std::string> scalar_list(const std::string& file, const YAML::Node& n, const std::string& key) {
  std::vector<std::string> out;
  if (n.IsScalar()) return {n.Scalar()};
  BB_CHECK(n.IsSequence(), at(file, n), ": '", key, "' must be a list of scalars");
  for (const auto& e : n) out.push_back(scalar(file, e, key));
  return out;
}

bool as_bool(const std::string& file, const YAML::Node& n, const std::string& key) {
  std::string s = scalar(file, n, key);
  if (s == "true" || s == "yes") return true;
  if (s == "false" || s == "no") return false;
  BB_THROW(at(file, n), ": '", key, "' must be true or false, got '", s, "'");
}

int64_t as_int(const std::string& file, const YAML::Node& n, const std::string& key) {
  std::string s = scalar(file, n, key);
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  BB_CHECK(!s.empty() && end && *end == 0, at(file, n), ": '", key, "' must be an integer, got '", s, "'");
  return v;
}

ModelConfig load_model_config(const std::string& configs, const std::string& name, const std::string& where) {
  BB_CHECK(has_model(name), where, ": unknown model '", name, "'");
  const std::string path = configs + "/models/" + name + ".yaml";
  BB_CHECK(fs::exists(path), where, ": model '", name, "' has no config file '", path, "'");
  YAML::Node n = yaml_load_map(path, "config file");
  yaml_check_keys(path, n, {"model", "weights", "calibration", "eval", "description"}, "a model config");
  ModelConfig m;
  m.name = name;
  BB_CHECK(n["model"] && scalar(path, n["model"], "model") == name, path, ": 'model' must be '", name, "'");
  BB_CHECK(n["weights"], path, ": missing key 'weights'");
  m.weights_spec = scalar(path, n["weights"], "weights");
  m.weights = expand_vars(m.weights_spec);
  if (n["calibration"]) m.calibration = scalar(path, n["calibration"], "calibration");
  if (n["eval"]) m.eval = scalar_list(path, n["eval"], "eval");
  for (auto& d : m.eval) BB_CHECK(has_dataset(d), at(path, n["eval"]), ": unknown dataset '", d, "'");
  if (!m.calibration.empty())
    BB_CHECK(has_dataset(m.calibration), at(path, n["calibration"]), ": unknown dataset '", m.calibration, "'");
  return m;
}

// Method defaults from configs/methods/<method>.yaml (optional file).
std::map<std::string, std::string> load_method_defaults(const std::string& configs, const std::string& method) {
  std::map<std::string, std::string> out;
  const std::string path = configs + "/methods/" + method + ".yaml";
  if (!fs::exists(path)) return out;
  YAML::Node n = yaml_load_map(path, "config file");
  yaml_check_keys(path, n, {"method", "params", "description"}, "a method config");
  BB_CHECK(n["method"] && scalar(path, n["method"], "method") == method, path, ": 'method' must be '", method, "'");
  if (n["params"] && !n["params"].IsNull()) {
    BB_CHECK(n["params"].IsMap(), at(path, n["params"]), ": 'params' must be a mapping");
    for (auto it = n["params"].begin(); it != n["params"].end(); ++it)
      out[it->first.as<std::string>()] = scalar(path, it->second, it->first.as<std::string>());
  }
  auto m = make_method(method);
  ParamBinder::apply(m->params(), out, path);
  return out;
}

}  // namespace

std::string expand_vars(const std::string& s, std::string* missing) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t b = s.find("${", i);
    if (b == std::string::npos) {
      out += s.substr(i);
      break;
    }
    out += s.substr(i, b - i);
    size_t e = s.find('}', b);
    BB_CHECK(e != std::string::npos, "unterminated ${ in '", s, "'");
    std::string var = s.substr(b + 2, e - b - 2);
    if (var == "data") {
      out += data_root();
    } else if (var.rfind("env:", 0) == 0) {
      const char* v = std::getenv(var.substr(4).c_str());
      if (!v || !*v) {
        if (missing) *missing = var.substr(4);
        return "";
      }
      out += v;
    } else {
      BB_THROW("unknown variable ${", var, "} in '", s, "' (known: ${data}, ${env:NAME})");
    }
    i = e + 1;
  }
  return out;
}

nlohmann::json RunSpec::resolved_params() const {
  auto inst = make_method(method);
  ParamBinder::apply(inst->params(), params, where.empty() ? "method '" + method + "'" : where);
  return ParamBinder::identity_json(inst->params());
}

nlohmann::json RunSpec::config_json() const {
  return {{"model", model},     {"method", method},   {"params", params},  {"calibration", calibration},
          {"eval", eval},       {"eval_limit", eval_limit}, {"seed", seed}};
}

nlohmann::json FinetuneBudget::to_json() const {
  nlohmann::json j = {{"epochs", epochs}, {"images", images}, {"batch", batch}, {"lr_schedule", lr_schedule}};
  if (has_seed) j["seed"] = seed;
  return j;
}

// The whole of `text` as a finite number (strtod, nothing left over).
static bool parse_finite(const std::string& text, double* out) {
  char* end = nullptr;
  *out = std::strtod(text.c_str(), &end);
  return !text.empty() && end && *end == '\0' && std::isfinite(*out);
}

// The one place a budget meets the methods. Every method that fine-tunes takes epochs, images
// and batch through its own finetune_* parameters; what differs is which stage they drive and
// which settings its mechanism lacks:
//   kmeans, hessian_kmeans, ecsq, uniform_ecsq (Choi et al.): the shared-value fine-tuning
//       (assignments fixed). A block that prunes (prune_keep < 1, the paper's pipeline) splits
//       the epochs: a share (half unless the block gives prune_retrain_share) retrains the kept
//       weights with the mask fixed before quantization (prune_retrain_epochs), the rest
//       fine-tunes the shared values. A block never sets prune_retrain_epochs itself (it would
//       train beyond the budget).
//   kq (Yu et al.): codebook fine-tuning, indices fixed.
//   pq (Stock et al.): the global stage (all codebooks, distillation, BN updating, as the
//       official code); the per-layer stage (layer_finetune_iters) stays as the block sets it.
//       lr_schedule constant -> finetune_lr_schedule=constant.
//   tq (Young et al.): STE retraining at the allocated depths over the whole calibration set
//       with the paper's cosine decay: images must be 0 and lr_schedule `method`.
//   fp32: the FP control, every conv/linear weight (constant lr by default).
//   uniform, fp16 and any other method: no fine-tuning -> an error (run its block with
//       `finetune: false`).
// The Choi family: weight sharing whose fine-tuning trains the shared values.
static bool finetune_sharing_method(const std::string& method) {
  static const std::set<std::string> sharing = {"kmeans", "hessian_kmeans", "ecsq", "uniform_ecsq"};
  return sharing.count(method) > 0;
}

std::map<std::string, std::string> finetune_budget_params(const std::string& method, const FinetuneBudget& b,
                                                          const std::string& where, bool pruned,
                                                          double retrain_share) {
  auto num = [](double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return std::string(buf);
  };
  const bool sharing = finetune_sharing_method(method);
  std::map<std::string, std::string> out = {{"finetune_epochs", num(b.epochs)},
                                            {"finetune_batch", std::to_string(b.batch)}};
  BB_CHECK(retrain_share > 0 && retrain_share < 1, where, ": prune_retrain_share = ", retrain_share,
           " must lie strictly between 0 and 1 (the fraction of the budget's epochs that retrains the pruned network)");
  if (sharing && pruned) {
    out["prune_retrain_epochs"] = num(b.epochs * retrain_share);
    out["finetune_epochs"] = num(b.epochs * (1 - retrain_share));
  }
  if (sharing || method == "kq" || method == "pq" || method == "fp32") {
    out["finetune_max_images"] = std::to_string(b.images);
    if (b.lr_schedule == "constant") {
      if (method == "pq") out["finetune_lr_schedule"] = "constant";
      if (method == "fp32") out["finetune_lr_step_epochs"] = "0";
      // the sharing family and kq train at a constant learning rate already
    }
    return out;
  }
  if (method == "tq") {
    BB_CHECK(b.images == 0, where, ": the finetune budget's images = ", b.images,
             " cannot apply to tq: its retraining (Young et al.) passes over the whole calibration set and has no "
             "image cap; use images: 0 or run tq with `finetune: false`");
    BB_CHECK(b.lr_schedule == "method", where, ": the finetune budget's lr_schedule '", b.lr_schedule,
             "' cannot apply to tq: its retraining uses the paper's cosine decay; use lr_schedule: method");
    return out;
  }
  BB_THROW(where, ": method '", method, "' has no fine-tuning, so the experiment's finetune budget cannot apply to "
           "it; give its run block `finetune: false` to run it without fine-tuning");
}

// Cartesian product of a mapping of lists (`grid`, a `tune` space), in key order; `key_where`
// (optional) gets each key's file:line.
static std::vector<std::map<std::string, std::string>> cartesian(const std::string& path, const YAML::Node& map,
                                                          const std::string& what,
                                                          std::map<std::string, std::string>* key_where) {
  std::vector<std::map<std::string, std::string>> points = {{}};
  for (auto it = map.begin(); it != map.end(); ++it) {
    const std::string k = it->first.as<std::string>();
    if (key_where) (*key_where)[k] = at(path, it->first);
    auto vals = scalar_list(path, it->second, k);
    BB_CHECK(!vals.empty(), at(path, it->second), ": ", what, " '", k, "' is empty");
    std::vector<std::map<std::string, std::string>> next;
    for (auto& p : points)
      for (auto& v : vals) {
        auto q = p;
        q[k] = v;
        next.push_back(q);
      }
    points = next;
  }
  return points;
}

// Number of runs a run block expands to, from the sizes of its lists alone (saturating at
// INT64_MAX): models x seeds x grid product x zip length. Malformed blocks count 1 here; the
// expansion below reports them.
static int64_t block_run_count(const YAML::Node& rb, int64_t n_models, int64_t n_seeds) {
  auto len = [](const YAML::Node& v) -> int64_t { return v.IsSequence() ? (int64_t)v.size() : 1; };
  auto mul = [](int64_t a, int64_t b) -> int64_t {
    if (a == 0 || b == 0) return 0;
    return a > INT64_MAX / b ? INT64_MAX : a * b;
  };
  int64_t c = mul(rb["models"] ? len(rb["models"]) : n_models, n_seeds);
  if (rb["grid"] && rb["grid"].IsMap())
    for (auto it = rb["grid"].begin(); it != rb["grid"].end(); ++it) c = mul(c, len(it->second));
  if (rb["zip"] && rb["zip"].IsMap() && rb["zip"].size() > 0) c = mul(c, len(rb["zip"].begin()->second));
  return c;
}

Experiment load_experiment(const std::string& path, const std::string& configs_dir, const std::string& results_root,
                           int64_t max_runs) {
  const std::string configs = configs_dir.empty() ? source_dir() + "/configs" : configs_dir;
  YAML::Node n = yaml_load_map(path, "config file");
  yaml_check_keys(path, n,
             {"experiment", "description", "models", "eval", "eval_limit", "calibration", "seeds", "keep_bbz", "runs",
              "tune_on", "tune_budget", "tune_eval_limit", "finetune"},
             "an experiment");
  Experiment ex;
  ex.path = path;
  ex.name = n["experiment"] ? scalar(path, n["experiment"], "experiment") : fs::path(path).stem().string();
  {
    // The name becomes a folder under the results root: a plain name only, never a path.
    bool plain = !ex.name.empty() && ex.name != "." && ex.name != ".." && ex.name.size() <= 200;
    for (char c : ex.name)
      if (!(std::isalnum((unsigned char)c) || c == '_' || c == '-' || c == '.')) plain = false;
    BB_CHECK(plain, n["experiment"] ? at(path, n["experiment"]) : path, ": experiment name '", ex.name,
             "' must be a plain name (letters, digits, '_', '-', '.'; not '.' or '..'): it names the folder "
             "results/<name>");
  }
  ex.results_dir = (results_root.empty() ? source_dir() + "/results" : results_root) + "/" + ex.name;
  BB_CHECK(n["models"], path, ": missing key 'models'");
  auto models = scalar_list(path, n["models"], "models");
  std::vector<std::string> eval;
  if (n["eval"]) eval = scalar_list(path, n["eval"], "eval");
  for (auto& d : eval) BB_CHECK(has_dataset(d), at(path, n["eval"]), ": unknown dataset '", d, "'");
  int64_t eval_limit = n["eval_limit"] ? as_int(path, n["eval_limit"], "eval_limit") : 0;
  BB_CHECK(eval_limit >= 0, at(path, n["eval_limit"]), ": 'eval_limit' must be >= 0 (0 = all images)");
  std::string calibration = n["calibration"] ? scalar(path, n["calibration"], "calibration") : "";
  if (!calibration.empty()) BB_CHECK(has_dataset(calibration), at(path, n["calibration"]), ": unknown dataset '", calibration, "'");
  std::vector<uint64_t> seeds = {0};
  if (n["seeds"]) {
    seeds.clear();
    for (auto& s : scalar_list(path, n["seeds"], "seeds")) {
      bool digits = !s.empty() && s.size() <= 19;
      for (char c : s) digits = digits && std::isdigit((unsigned char)c);
      BB_CHECK(digits, at(path, n["seeds"]), ": seed '", s, "' is not a non-negative integer");
      seeds.push_back(std::stoull(s));
    }
  }
  // The fine-tuning budget: declared once, applied to every run block (see finetune_budget_params).
  bool has_budget = false;
  FinetuneBudget budget;
  if (n["finetune"]) {
    const YAML::Node& f = n["finetune"];
    yaml_check_keys(path, f, {"epochs", "images", "batch", "lr_schedule", "seed"}, "the finetune budget");
    BB_CHECK(f["epochs"], at(path, f), ": the finetune budget needs 'epochs'");
    {
      const std::string e = scalar(path, f["epochs"], "epochs");
      BB_CHECK(parse_finite(e, &budget.epochs) && budget.epochs > 0, at(path, f["epochs"]),
               ": finetune 'epochs' must be a number > 0, got '", e, "'");
    }
    if (f["images"]) {
      budget.images = as_int(path, f["images"], "images");
      BB_CHECK(budget.images >= 0, at(path, f["images"]), ": finetune 'images' must be >= 0 (0 = the whole set)");
    }
    if (f["batch"]) {
      budget.batch = as_int(path, f["batch"], "batch");
      BB_CHECK(budget.batch >= 1, at(path, f["batch"]), ": finetune 'batch' must be >= 1");
    }
    if (f["lr_schedule"]) {
      budget.lr_schedule = scalar(path, f["lr_schedule"], "lr_schedule");
      BB_CHECK(budget.lr_schedule == "method" || budget.lr_schedule == "constant", at(path, f["lr_schedule"]),
               ": finetune 'lr_schedule' must be method (each method's own) or constant, got '", budget.lr_schedule, "'");
    }
    if (f["seed"]) {
      BB_CHECK(!n["seeds"], at(path, f["seed"]), ": give either the finetune budget's 'seed' or the experiment's "
               "'seeds', not both");
      const int64_t sd = as_int(path, f["seed"], "seed");
      BB_CHECK(sd >= 0, at(path, f["seed"]), ": finetune 'seed' must be a non-negative integer");
      budget.has_seed = true;
      budget.seed = (uint64_t)sd;
      seeds = {budget.seed};
    }
    has_budget = true;
    ex.finetune_budget = budget.to_json();
  }
  const std::string budget_where = has_budget ? at(path, n["finetune"]) : path;
  bool keep_bbz = n["keep_bbz"] ? as_bool(path, n["keep_bbz"], "keep_bbz") : false;
  if (n["tune_on"]) {
    ex.tune_on = scalar(path, n["tune_on"], "tune_on");
    BB_CHECK(has_dataset(ex.tune_on), at(path, n["tune_on"]), ": unknown dataset '", ex.tune_on, "'");
    BB_CHECK(!is_test_set(ex.tune_on), at(path, n["tune_on"]), ": '", ex.tune_on,
             "' is a test set; settings are chosen on a validation split (e.g. cifar10-jpeg-val)");
  }
  if (n["tune_budget"]) {
    ex.tune_budget = (int)as_int(path, n["tune_budget"], "tune_budget");
    BB_CHECK(ex.tune_budget >= 1 && ex.tune_budget <= 10000, at(path, n["tune_budget"]),
             ": 'tune_budget' must be in 1..10000");
  }
  if (n["tune_eval_limit"]) {
    ex.tune_eval_limit = as_int(path, n["tune_eval_limit"], "tune_eval_limit");
    BB_CHECK(ex.tune_eval_limit >= 0, at(path, n["tune_eval_limit"]), ": 'tune_eval_limit' must be >= 0");
  }
  std::map<std::string, ModelConfig> model_cfgs;
  for (auto& m : models) model_cfgs[m] = load_model_config(configs, m, at(path, n["models"]));

  BB_CHECK(n["runs"] && n["runs"].IsSequence() && n["runs"].size() > 0, at(path, n), ": 'runs' must be a non-empty list");
  {
    BB_CHECK(max_runs >= 1, "--max-runs must be >= 1, got ", max_runs);
    int64_t total = 0;
    for (const auto& rb : n["runs"]) {
      const int64_t c = block_run_count(rb, (int64_t)models.size(), (int64_t)seeds.size());
      total = c > INT64_MAX - total ? INT64_MAX : total + c;
      BB_CHECK(total <= max_runs, at(path, rb), ": the experiment expands to more than ", max_runs,
               " runs (this block alone: ", c == INT64_MAX ? std::string("more than 2^63") : std::to_string(c),
               "); refused before expanding it. Narrow the grid, or raise the limit with --max-runs N");
    }
  }
  int index = 0;
  for (const auto& rb : n["runs"]) {
    const std::string where = at(path, rb);
    const size_t runs_before = ex.runs.size();
    yaml_check_keys(path, rb, {"method", "label", "models", "params", "grid", "zip", "tune", "finetune"}, "a run block");
    BB_CHECK(rb["method"], where, ": run block without 'method'");
    const std::string method = scalar(path, rb["method"], "method");
    BB_CHECK(has_method(method), at(path, rb["method"]), ": unknown method '", method, "' (see `bitbench methods`)");
    auto base = load_method_defaults(configs, method);
    std::map<std::string, std::string> fixed;
    if (rb["params"]) {
      BB_CHECK(rb["params"].IsMap(), at(path, rb["params"]), ": 'params' must be a mapping");
      for (auto it = rb["params"].begin(); it != rb["params"].end(); ++it)
        fixed[it->first.as<std::string>()] = scalar(path, it->second, it->first.as<std::string>());
    }
    // Points: Cartesian product over grid keys, then each zip row.
    std::vector<std::map<std::string, std::string>> points = {{}};
    std::map<std::string, std::string> key_where;
    if (rb["grid"]) {
      BB_CHECK(rb["grid"].IsMap(), at(path, rb["grid"]), ": 'grid' must be a mapping of lists");
      points = cartesian(path, rb["grid"], "grid", &key_where);
    }
    if (rb["zip"]) {
      BB_CHECK(rb["zip"].IsMap(), at(path, rb["zip"]), ": 'zip' must be a mapping of equal-length lists");
      size_t len = 0;
      std::vector<std::pair<std::string, std::vector<std::string>>> cols;
      for (auto it = rb["zip"].begin(); it != rb["zip"].end(); ++it) {
        const std::string k = it->first.as<std::string>();
        key_where[k] = at(path, it->first);
        auto vals = scalar_list(path, it->second, k);
        if (cols.empty()) len = vals.size();
        BB_CHECK(vals.size() == len, at(path, it->second), ": zip list '", k, "' has ", vals.size(),
                 " values, the others ", len);
        cols.push_back({k, vals});
      }
      std::vector<std::map<std::string, std::string>> next;
      for (auto& p : points)
        for (size_t r = 0; r < len; ++r) {
          auto q = p;
          for (auto& c : cols) q[c.first] = c.second[r];
          next.push_back(q);
        }
      points = next;
    }
    // Tuning space: grid (every point, at most tune_budget of them) or random (tune_budget points
    // drawn without replacement from the grid, seeded by the block's position: reproducible).
    std::vector<std::map<std::string, std::string>> tune_points;
    std::string tune_where = where;
    if (rb["tune"]) {
      const YAML::Node& t = rb["tune"];
      tune_where = at(path, t);
      BB_CHECK(t.IsMap(), tune_where, ": 'tune' must be a mapping with 'space' (and 'mode')");
      yaml_check_keys(path, t, {"mode", "space"}, "a tune block");
      const std::string mode = t["mode"] ? scalar(path, t["mode"], "mode") : "grid";
      BB_CHECK(mode == "grid" || mode == "random", at(path, t["mode"]), ": tune mode must be grid or random, got '",
               mode, "'");
      BB_CHECK(t["space"] && t["space"].IsMap() && t["space"].size() > 0, tune_where,
               ": 'tune' needs a non-empty 'space' mapping of parameter lists");
      tune_points = cartesian(path, t["space"], "tune space", nullptr);
      if (mode == "grid") {
        BB_CHECK((int)tune_points.size() <= ex.tune_budget, tune_where, ": the tune grid has ", tune_points.size(),
                 " points, more than tune_budget ", ex.tune_budget, " (raise tune_budget or use mode: random)");
      } else if ((int)tune_points.size() > ex.tune_budget) {
        std::mt19937_64 rng(0x7e57ULL + (uint64_t)index);
        for (size_t i = 0; i < (size_t)ex.tune_budget; ++i) {
          size_t j = i + (size_t)(rng() % (uint64_t)(tune_points.size() - i));
          std::swap(tune_points[i], tune_points[j]);
        }
        tune_points.resize(ex.tune_budget);
      }
    }
    // The budget: mapped onto this method's parameters; a block that sets one of them itself
    // (params, grid, zip, tune) is refused. fp32 blocks stay the untuned FP baseline (the
    // controls are added below); `finetune: false` runs a block without the budget.
    std::map<std::string, std::string> budget_params;
    if (rb["finetune"]) {
      BB_CHECK(has_budget, at(path, rb["finetune"]), ": 'finetune' in a run block needs the experiment's finetune budget");
      BB_CHECK(!as_bool(path, rb["finetune"], "finetune") || method != "fp32", at(path, rb["finetune"]),
               ": an fp32 block is the untuned FP baseline; the FP control with the budget is added automatically");
    }
    const bool apply_budget =
        has_budget && method != "fp32" && (!rb["finetune"] || as_bool(path, rb["finetune"], "finetune"));
    if (apply_budget) {
      budget_params = finetune_budget_params(method, budget, where + " (method '" + method + "', budget at " +
                                                                  budget_where + ")");
      std::vector<std::map<std::string, std::string>> own = {fixed};
      for (auto& pt : points) own.push_back(pt);
      for (auto& tp : tune_points) own.push_back(tp);
      for (auto& m : own)
        for (auto& kv : budget_params)
          BB_CHECK(!m.count(kv.first), where, ": the run block sets '", kv.first, "', which the experiment's finetune "
                   "budget (", budget_where, ") sets for every run; remove it from the block, or give the block "
                   "`finetune: false`");
      for (auto& tp : tune_points)
        for (const char* k : {"prune_keep", "prune_retrain_share"})
          BB_CHECK(!tp.count(k), tune_where, ": ", k, " cannot be tuned under the experiment's finetune budget (it "
                   "decides how the budget is split); give it in params or grid");
    }
    auto block_models = rb["models"] ? scalar_list(path, rb["models"], "models") : models;
    for (auto& m : block_models)
      if (!model_cfgs.count(m)) model_cfgs[m] = load_model_config(configs, m, at(path, rb["models"]));
    const std::string label = rb["label"] ? scalar(path, rb["label"], "label") : method;
    for (auto& m : block_models) {
      for (auto& pt : points) {
        auto params = base;
        for (auto& kv : fixed) params[kv.first] = kv.second;
        for (auto& kv : pt) params[kv.first] = kv.second;
        std::map<std::string, std::string> point_budget;
        // prune_retrain_share is not a method parameter: it says how the budget is split, and
        // leaves the run as the prune_retrain_epochs / finetune_epochs it maps to.
        double retrain_share = kDefaultPruneRetrainShare;
        const bool has_share = params.count("prune_retrain_share") > 0;
        if (has_share) {
          const std::string swhere = pt.count("prune_retrain_share") ? key_where["prune_retrain_share"] : where;
          const std::string& text = params.at("prune_retrain_share");
          BB_CHECK(parse_finite(text, &retrain_share), swhere, ": prune_retrain_share '", text, "' is not a number");
          params.erase("prune_retrain_share");
        }
        const bool pruned = params.count("prune_keep") && std::strtod(params.at("prune_keep").c_str(), nullptr) < 1;
        if (has_share) {
          const std::string what = ": prune_retrain_share splits the experiment's finetune budget between Choi's "
                                   "masked retraining and the shared-value fine-tuning; ";
          BB_CHECK(finetune_sharing_method(method), where, what, "method '", method,
                   "' is not of the Choi family (kmeans, hessian_kmeans, ecsq, uniform_ecsq)");
          BB_CHECK(apply_budget, where, what, "it needs the budget (the experiment's `finetune` block, and not "
                   "`finetune: false`)");
          BB_CHECK(pruned, where, what, "without pruning (prune_keep < 1) there is no masked retraining to split off");
        }
        if (apply_budget) {
          if (params.count("prune_retrain_epochs"))
            BB_CHECK(std::strtod(params.at("prune_retrain_epochs").c_str(), nullptr) == 0, where,
                     ": prune_retrain_epochs > 0 would retrain beyond the experiment's finetune budget (a block "
                     "that prunes gets a share of the budget's epochs for it, prune_retrain_share); remove it or "
                     "give the block `finetune: false`");
          // Pruning (Choi et al.'s pipeline) takes a share of the budget for the masked retraining.
          point_budget = finetune_budget_params(method, budget, where + " (method '" + method + "', budget at " +
                                                                    budget_where + ")", pruned, retrain_share);
        }
        for (auto& kv : point_budget) params[kv.first] = kv.second;
        // Validate now (unknown key / bad value -> file:line), before any work.
        auto inst = make_method(method);
        std::string pwhere = where;
        for (auto& kv : pt) pwhere = key_where[kv.first];
        ParamBinder::apply(inst->params(), params, pwhere + " (method '" + method + "')");
        for (auto& tp : tune_points) {
          auto tuned = params;
          for (auto& kv : tp) tuned[kv.first] = kv.second;
          auto ti = make_method(method);
          ParamBinder::apply(ti->params(), tuned, tune_where + " (tune space of method '" + method + "')");
        }
        for (auto s : seeds) {
          RunSpec r;
          r.experiment = ex.name;
          r.index = index++;
          r.label = label;
          r.model = m;
          r.model_cfg = model_cfgs[m];
          r.method = method;
          r.params = params;
          r.calibration = !calibration.empty() ? calibration : r.model_cfg.calibration;
          r.eval = !eval.empty() ? eval : r.model_cfg.eval;
          r.eval_limit = eval_limit;
          r.seed = s;
          r.keep_bbz = keep_bbz;
          r.where = where;
          r.tune_points = tune_points;
          if (apply_budget) {
            r.finetune_budget = budget.to_json();
            r.finetune_budget["params"] = point_budget;
          }
          BB_CHECK(!r.eval.empty(), where, ": no evaluation dataset for model '", m, "' (set 'eval')");
          ex.runs.push_back(r);
        }
      }
    }
    BB_CHECK(ex.runs.size() > runs_before, where, ": this run block expands to zero runs (an empty 'models', 'seeds' or "
             "'zip' list?)");
  }
  // One FP control per model and seed that has a fine-tuned run: fp32 with the same budget
  // ("FP32 + same fine-tuning"), appended after the declared runs (their indices do not move).
  if (has_budget) {
    std::map<std::pair<std::string, uint64_t>, int> control_of;
    const size_t declared = ex.runs.size();
    for (size_t i = 0; i < declared; ++i) {
      if (ex.runs[i].finetune_budget.is_null()) continue;
      const auto key = std::make_pair(ex.runs[i].model, ex.runs[i].seed);
      auto it = control_of.find(key);
      if (it == control_of.end()) {
        const RunSpec& src = ex.runs[i];
        RunSpec c;
        c.experiment = ex.name;
        c.index = index++;
        c.label = kFpControlLabel;
        c.model = src.model;
        c.model_cfg = src.model_cfg;
        c.method = "fp32";
        c.params = load_method_defaults(configs, "fp32");
        const auto bp = finetune_budget_params("fp32", budget, budget_where);
        for (auto& kv : bp) c.params[kv.first] = kv.second;
        {
          auto inst = make_method("fp32");
          ParamBinder::apply(inst->params(), c.params, budget_where + " (the FP control, method 'fp32')");
        }
        c.calibration = src.calibration;
        c.eval = src.eval;
        c.eval_limit = src.eval_limit;
        c.seed = src.seed;
        c.keep_bbz = src.keep_bbz;
        c.where = budget_where;
        c.finetune_budget = budget.to_json();
        c.finetune_budget["params"] = bp;
        ex.runs.push_back(c);
        it = control_of.emplace(key, (int)ex.runs.size() - 1).first;
      }
      ex.runs[i].control = it->second;
    }
  }
  BB_CHECK(!ex.runs.empty(), path, ": the experiment expands to zero runs (an empty 'models', 'seeds' or 'zip' list?)");
  // Two run blocks that expand to the same run (same model, method, resolved parameters, data,
  // seed) under different labels would share one record and one table row: refuse, naming both.
  {
    std::map<std::string, const RunSpec*> seen;
    for (const auto& r : ex.runs) {
      nlohmann::json key = r.config_json();
      key["params"] = r.resolved_params();
      auto [it, fresh] = seen.emplace(key.dump(), &r);
      if (fresh) continue;
      const RunSpec& o = *it->second;
      BB_CHECK(o.label == r.label, r.where, ": this run block repeats the run of ", o.where, " (", r.model, " ",
               r.method, ", the same resolved parameters) under another label ('", r.label, "' vs '", o.label,
               "'): one record cannot carry both labels; remove one block or change a parameter");
    }
  }
  return ex;
}

}  // namespace bb
