// The one direction data flows: model -> calibration -> method -> codes -> file -> decode -> eval.
// compress_model() writes the .bbz, reads it back, decodes it, checks the decoded weights are
// bit-identical to what the method produced in memory, and evaluates the decoded model.
#pragma once
#include "coding/accounting.h"
#include "coding/bbz.h"
#include "eval/evaluate.h"
#include "methods/method.h"
#include "models/weights_io.h"

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace bb {

struct CompressRequest {
  std::string model;                           // registry name
  std::string weights;                         // plain-dict weights file
  std::string method;                          // registry name
  std::map<std::string, std::string> params;   // method parameters (strings, validated)
  std::string calib_dataset;                   // "" = default for the model's family
  std::string data_root;                       // "" = default
  std::string out_path;                        // .bbz
  std::string rest_dtype = "fp32";             // uncompressed tensors: fp32 | fp16
  uint64_t seed = 0;
  std::string cache_dir;                       // "" = no caching of intermediates
  std::vector<std::string> eval_datasets;
  int64_t eval_limit = 0;
};

struct CompressOutcome {
  Accounting accounting;
  std::vector<EvalResult> evals;
  std::map<std::string, double> phase_seconds;  // load, calibration/method phases, write, decode, eval
  nlohmann::json provenance;
  // Equal rates: for a method with target_bpw > 0, {requested, reached, measure, relative_error,
  // within_2pct}; the measure is bpw_core (side information included) except kq with
  // target_scope=conv (bpw_yu_conv). Null when the method targets no rate.
  nlohmann::json rate_target;
  nlohmann::json to_json() const;  // accounting fields at top level, evals under "eval"
};

// Default calibration set for a model family (cifar10 -> cifar10-jpeg-train).
std::string default_calibration(const std::string& family);

CompressOutcome compress_model(const CompressRequest& req);

// Compresses cifar_resnet20 (its weights under the data root) with the method's smoke settings
// (methods/smoke.h: seconds, every code path of the method), calibrating on cifar10-jpeg-train
// with seed 0, into `out_path`; no evaluation. Golden bytes, hostile-input tests and
// `bitbench fuzz-bbz` all start from these files.
CompressOutcome compress_smoke(const std::string& method, const std::string& out_path);

// Rebuilds every parameter and buffer from a .bbz (methods decode their records). Every error
// names `what` (the file) and, for a record, its layer and method.
StateDict decode_bbz(const BbzFile& f, const std::string& what = "the .bbz file");

}  // namespace bb
