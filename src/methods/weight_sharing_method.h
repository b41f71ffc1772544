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
};

// Prunes (the pruned weights of ctx.model are set to 0), retrains if asked, estimates the Hessian,
// floors it and shapes it by shape_importance.
SharingProblem prepare_sharing(CompressContext& ctx, const SharingParams& p);

// Fine-tunes the shared values (assignments fixed) on ctx.calib; updates sol.centers.
void finetune_sharing(CompressContext& ctx, const SharingProblem& prob, SharingSolution& sol, const SharingParams& p);

// k-means weight sharing (kmeans and hessian_kmeans): k = 2^bits clusters (or `clusters`),
// solved by Lloyd (k-means++), the exact DP, or both (objectives of both logged; DP kept).
// With target_bpw > 0, k is searched instead (the k whose coded rate is closest to the target;
// k is an integer, so the rate moves in steps).
struct KMeansSharingOptions {
  int bits = 4;                    // k = 2^bits
  int clusters = 0;                // > 0: k itself (overrides bits)
  std::string solver = "dp";       // dp (global optimum) | lloyd (k-means++ + Lloyd) | both
  int64_t dp_max_bins = 0;         // DP on at most this many groups of sorted values (0 = exact)
  std::string init = "kmeans++";   // Lloyd seeding: kmeans++ | linear
  int max_iter = 300;              // Lloyd iterations
  int max_search_k = 256;          // largest k tried by the target_bpw search
  void bind(ParamBinder& b);
  void validate() const;
  int k() const { return clusters > 0 ? clusters : 1 << bits; }
};
std::vector<LayerRecord> compress_kmeans_sharing(CompressContext& ctx, const SharingParams& share,
                                                 const KMeansSharingOptions& km, const std::string& method);

// Method glue: compress = prepare, quantize (method-specific; may search a rate), fine-tune,
// encode; logs what was reached.
std::vector<LayerRecord> finish_sharing(CompressContext& ctx, const SharingProblem& prob, SharingSolution sol,
                                        const SharingParams& p, const std::string& method);

}  // namespace bb
