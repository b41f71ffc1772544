// Top-1/top-5 evaluation with confidence intervals; per-image correctness is kept so two runs on
// the same images can be compared with a paired test.
#pragma once
#include "data/dataset.h"
#include "models/model.h"

#include <nlohmann/json.hpp>

namespace bb {

struct EvalOptions {
  int64_t limit = 0;        // first N images (0 = all)
  int64_t batch_size = 0;   // 0 = 100 for 32x32 inputs, 25 for ImageNet
  bool progress = true;
  // Fold each BN into the conv before it for the duration (Model::set_fold_bn): same top-1 up to
  // float rounding, fewer memory passes. BITBENCH_FOLD_BN=0 turns it off.
  bool fold_bn = true;
  // With fold_bn, run the folded convs on oneDNN's blocked layout where the model supports it
  // (CIFAR and ImageNet ResNets, VGGs; Model::set_fold_bn). BITBENCH_BLOCKED_LAYOUT=0 turns it off.
  bool blocked_layout = true;
  // Batches run side by side, one single-threaded forward each, on this many threads
  // (run_side_by_side; the same logits with any value); 0 = side_by_side_workers().
  int workers = 0;
};

struct EvalResult {
  std::string dataset;
  int64_t n = 0;
  int64_t correct1 = 0, correct5 = 0;
  double top1 = 0, top5 = 0;      // percent
  double top1_ci95[2] = {0, 0};   // Wilson score interval, percent
  double seconds = 0, images_per_s = 0;
  std::vector<uint8_t> hit1;      // per image: 1 if top-1 correct
  nlohmann::json to_json() const;  // without hit1
};

// Checks that the dataset suits the model's input (family, classes); throws otherwise.
void check_model_dataset(const Model& model, const Dataset& ds);

EvalResult evaluate(Model& model, const Dataset& ds, const EvalOptions& opt = {});

// Wilson score interval for k successes of n at 95%, in percent.
void wilson_ci95(int64_t k, int64_t n, double out[2]);

// McNemar's exact test on paired per-image correctness; two-sided p-value.
double mcnemar_p(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b);

}  // namespace bb
