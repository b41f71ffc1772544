// Diagonal of the Hessian of the training loss with respect to every conv/linear weight, estimated
// on calibration images (Choi et al. 2017 weight quantization errors by it: the loss grows by
// about 1/2 sum_i h_ii dw_i^2 around a minimum).
//
// Estimators (HessianParams::estimator):
//   gauss_newton      diagonal of the Gauss-Newton matrix (= the Fisher for softmax
//                     cross-entropy): sum_c p_c g_c^2 per image, g_c the gradient of the loss with
//                     label c and p the model's softmax; exact over classes when there are at most
//                     gn_max_classes of them, else gn_samples labels drawn from p (unbiased).
//                     Positive semi-definite; this is the default.
//   empirical_fisher  squared per-image gradients with the true labels.
//   hutchinson        E[z * Hz] with Rademacher z, Hz by double backward on the mean loss: an
//                     unbiased estimate of the true Hessian diagonal (entries can be negative).
//   adam_sqrt         Choi et al.'s alternative ("Alt-Hessian", used for AlexNet): the square root
//                     of Adam's second-moment estimate v_hat. There is no Adam state from training,
//                     so v_hat is estimated as what it tracks at the end of training: the mean over
//                     minibatches of adam_batch calibration images (true labels, no augmentation,
//                     BN in eval mode) of the squared minibatch gradient of the mean loss. Returned
//                     is sqrt(v_hat) (not a Hessian: the units of a gradient). Near a minimum
//                     v_hat ~ (1/B) * the empirical Fisher, so it is about sqrt(empirical Fisher)
//                     up to a constant: the same ranking with half the dynamic range in log.
// Per-image gradients come from one backward pass per batch: the gradient w.r.t. each layer's
// output is captured and combined with the layer's input (unfold for convs), so no per-image
// backward is needed. All estimates are of the Hessian of the MEAN loss (averaged over images).
// BN runs in eval mode (running statistics), so images do not interact.
#pragma once
#include "data/dataset.h"
#include "models/model.h"

#include <string>
#include <vector>

namespace bb {

struct HessianParams {
  std::string estimator = "gauss_newton";  // gauss_newton | empirical_fisher | hutchinson | adam_sqrt
  int64_t images = 1000;                   // calibration images (Choi et al.: 1,000 ~ 50,000)
  int64_t batch_size = 50;                 // images per backward pass
  int gn_max_classes = 32;                 // gauss_newton: exact sum over classes up to this many
  int gn_samples = 1;                      // gauss_newton: sampled labels per image otherwise
  int hutchinson_probes = 4;               // hutchinson: Rademacher probes per batch
  int64_t adam_batch = 128;                // adam_sqrt: minibatch size of the squared gradients
  uint64_t seed = 0;                       // image subset, label sampling, probes
  void validate() const;
  // Canonical text of the settings that change the result (cache keys).
  std::string key() const;
};

// One tensor per model layer (model.layers() order), shaped like its weight, float32.
std::vector<torch::Tensor> estimate_hessian_diag(Model& model, const Dataset& data, const HessianParams& p);

// estimate_hessian_diag through a file cache in cache_dir ("" = no cache), keyed by the model
// architecture, the current values of every parameter and buffer, the dataset identity and the
// parameters. The file holds the exact float32 values, so a hit gives identical results. Writes
// are atomic. `hit` (optional) tells whether the cache answered.
std::vector<torch::Tensor> hessian_diag_cached(Model& model, const Dataset& data, const HessianParams& p,
                                               const std::string& cache_dir, bool* hit = nullptr);

// sha256 of the model's architecture name and every parameter and buffer (names and bytes).
std::string model_state_hash(const Model& model);

}  // namespace bb
