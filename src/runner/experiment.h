// Experiments: YAML files in experiments/ that reference reusable defaults in configs/
// (configs/models/<model>.yaml, configs/methods/<method>.yaml, configs/datasets/<dataset>.yaml)
// and expand into runs: models x run blocks x parameter grid (lists: Cartesian product; `zip`:
// paired lists) x seeds. Parsing is strict: an unknown key, a wrong type or an unknown
// method/model/dataset is an error naming file:line and key, before any work starts.
#pragma once
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace bb {

struct ModelConfig {
  std::string name;          // registry name
  std::string weights;       // path after ${data} / ${env:VAR} substitution ("" if an env var is unset)
  std::string weights_spec;  // as written
  std::string calibration;   // dataset name
  std::vector<std::string> eval;
};

struct RunSpec {
  std::string experiment;
  int index = 0;                              // position in the expanded experiment (stable)
  std::string label;                          // run block label (method variant)
  std::string model;
  ModelConfig model_cfg;
  std::string method;
  std::map<std::string, std::string> params;  // fully resolved (method defaults + overrides), as text
  std::string calibration;
  std::vector<std::string> eval;
  int64_t eval_limit = 0;
  uint64_t seed = 0;
  bool keep_bbz = false;
  std::string where;                          // file:line of the run block, for errors
  // Tuning (`bitbench tune`): the candidate settings of the run block's `tune:` block (each a
  // set of parameter overrides, already validated), empty when the block has none.
  std::vector<std::map<std::string, std::string>> tune_points;
  nlohmann::json tuned;                       // non-null once tuned.yaml's choice is applied
  // The experiment's fine-tuning budget (`finetune:` block) as applied to this run: null when the
  // run does not fine-tune under one. `control`: index in Experiment::runs of the run's FP control
  // ("FP32 + same fine-tuning": fp32 with the same budget), -1 when it has none (the control
  // itself, and every run of an experiment without a budget).
  nlohmann::json finetune_budget;
  int control = -1;
  nlohmann::json config_json() const;         // what the run ID hashes (with weights/dataset identity)
  // The parameters as the method's ParamBinder resolves them for the run's identity (every key,
  // typed, code defaults included, except identity_neutral keys at their neutral value); throws
  // naming `where` on an unknown key or a bad value.
  nlohmann::json resolved_params() const;
};

// One fine-tuning budget per experiment (issue 21), declared once as the experiment's
// `finetune:` block and mapped onto each method's own finetune_* parameters by
// finetune_budget_params (the one place that maps it; docs/EXPERIMENTS.md lists the mapping).
struct FinetuneBudget {
  double epochs = 0;                   // epochs (> 0; fractional allowed)
  int64_t images = 0;                  // images per epoch (0 = the whole calibration set)
  int64_t batch = 128;                 // batch size
  std::string lr_schedule = "method";  // method (each method's own schedule) | constant
  bool has_seed = false;               // seed: the run seed of every run (instead of `seeds`)
  uint64_t seed = 0;
  nlohmann::json to_json() const;
};

// The parameters a budget sets for `method` (as text, e.g. finetune_epochs=1). Throws, naming
// `where`, for a method that cannot take the budget in its paper's form (no fine-tuning; a
// setting its mechanism does not have). `pruned`: a Choi-family run that prunes (prune_keep < 1);
// its budget is split between the masked retraining (the fraction `retrain_share`, in (0, 1);
// a run block sets it with the key prune_retrain_share) and the shared-value fine-tuning.
inline constexpr double kDefaultPruneRetrainShare = 0.5;
std::map<std::string, std::string> finetune_budget_params(const std::string& method, const FinetuneBudget& b,
                                                          const std::string& where, bool pruned = false,
                                                          double retrain_share = kDefaultPruneRetrainShare);

// The label of the expanded FP controls.
inline constexpr const char* kFpControlLabel = "FP32 + same fine-tuning";

struct Experiment {
  std::string name;
  std::string path;
  std::string results_dir;   // results/<name>
  std::vector<RunSpec> runs;
  // `bitbench tune`: the validation set the settings are chosen on (default: the model family's
  // validation split, cifar10-jpeg-val), the number of settings tried per run, the same for every
  // method (a grid larger than it is an error; a random search draws this many), and an optional
  // cap on validation images per trial.
  std::string tune_on;
  int tune_budget = 8;
  int64_t tune_eval_limit = 0;
  nlohmann::json finetune_budget;  // the `finetune:` block (FinetuneBudget::to_json), null when none
};

// Loads and validates; `configs_dir` defaults to <source>/configs. Throws bb::Error "file:line: ...".
// An experiment that would expand to more than `max_runs` runs (models x seeds x grid x zip, over
// every run block) is refused before anything is expanded (`--max-runs`, env BITBENCH_MAX_RUNS).
constexpr int64_t kDefaultMaxRuns = 10000;
Experiment load_experiment(const std::string& path, const std::string& configs_dir = "",
                           const std::string& results_root = "", int64_t max_runs = kDefaultMaxRuns);

// Expands ${data} and ${env:VAR}; unset variables leave "" (and `missing` names them).
std::string expand_vars(const std::string& s, std::string* missing = nullptr);

}  // namespace bb
