// Method glue of the scalar weight-sharing family (kmeans, hessian_kmeans, uniform_ecsq, ecsq):
// the parameter names, and the steps that run on a method's CompressContext (prepare: prune,
// retrain, Hessian; fine-tune the shared values; finish: fine-tune, encode, log). The algorithms
// (SharingParams, solve_sharing, the records, the rate searches) are quant/weight_sharing.h, which
// knows nothing of methods/.
#pragma once
#include "methods/method.h"
#include "methods/params.h"
#include "quant/weight_sharing.h"

#include <string>
#include <vector>

namespace bb {

// SharingParams with the family's parameter names; a method holds one (its defaults set before
// binding) and passes it wherever a SharingParams is expected.
struct SharingMethodParams : SharingParams {
  void bind(ParamBinder& b);
  void validate();  // SharingParams::validate() plus the fine-tuning settings
  // Does compress() read the calibration set? The family's one answer: for the Hessian weighting,
  // fine-tuning the shared values, or retraining after pruning (Method::needs_calibration).
  bool needs_calibration() const {
    return weighting == "hessian" || finetune.epochs > 0 || prune_retrain_epochs > 0;
  }
  // The defaults of the two entropy-constrained methods of Choi et al. (ecsq, uniform_ecsq): one
  // network-wide Hessian-weighted quantizer, Huffman-coded, at 2 bpw. The Hessian takes one sampled
  // label per image, validated: on cifar10-jpeg-val at 2 bpw the exact class sum gives the same
  // top-1 (ResNet-20 ecsq 69.30 vs 69.14, uniform_ecsq 76.04 vs 76.06) at 10x the cost (1,523 s vs
  // ~150 s on 2 busy cores).
  void set_entropy_constrained_defaults() {
    scope = "network";
    weighting = "hessian";
    coder = "huffman";
    target_bpw = 2.0;
    hessian.gn_max_classes = 0;
  }
};

// Prunes (the pruned weights of ctx.model are set to 0), retrains if asked, estimates the Hessian,
// floors it and shapes it by shape_importance.
SharingProblem prepare_sharing(CompressContext& ctx, const SharingParams& p);

// Fine-tunes the shared values (assignments fixed) on ctx.calib; updates sol.centers.
void finetune_sharing(CompressContext& ctx, const SharingProblem& prob, SharingSolution& sol, const SharingParams& p);

// Method glue: compress = prepare, quantize (method-specific; may search a rate), fine-tune,
// encode; logs what was reached.
std::vector<LayerRecord> finish_sharing(CompressContext& ctx, const SharingProblem& prob, SharingSolution sol,
                                        const SharingParams& p, const std::string& method);

}  // namespace bb
