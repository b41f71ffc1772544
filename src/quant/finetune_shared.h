// Fine-tuning of shared (quantized) weights with their structure fixed: each compressed layer's
// weight is a differentiable function rebuild() of a few learnable leaf tensors (a codebook, the
// kept entries of a pruned weight, ...). Autograd through rebuild() gives every leaf its gradient
// (for W = C[idx], the gradient of codeword j is the sum over its members, as in Deep
// Compression / Choi et al.); the optimizer steps on the leaves only.
//
// Generic over methods: scalar weight sharing (one codebook for all layers or one per layer), KQ
// and PQ (codebooks of vectors) and mask-preserving retraining after pruning all fit.
// Modes: labels (cross-entropy with the dataset's labels) or distill (KL divergence to the
// softmax of the model as it was before fine-tuning, at a temperature). BN is either frozen
// (eval mode) or updating (train mode: batch statistics, running statistics updated); BN affine
// parameters and biases are not trained. Deterministic given the seed (image order and
// augmentation), for a fixed thread count.
//
// Optional (defaults leave KQ and Choi et al.'s runs and cache keys as they were): SGD weight
// decay on the leaves (applied after the gradient scaling, so with grad_scale = 1 / members it
// is the per-centroid form of Stock et al.'s CentroidSGD: averaged member gradient + wd * c), a
// step learning-rate schedule (lr * gamma^floor(epochs done / lr_step_epochs), as PyTorch's
// StepLR stepped once per epoch, at step granularity for fractional epochs), and a separate
// distillation teacher model (e.g. the uncompressed network while the student's earlier layers
// are already quantized).
#pragma once
#include "data/dataset.h"
#include "models/model.h"

#include <functional>
#include <string>
#include <vector>

namespace bb {

struct SharedWeights {
  // Learnable tensors (float32). Fine-tuning updates them in place.
  std::vector<torch::Tensor> leaves;
  // Optional, one per leaf (same shape, or broadcastable): multiplies the leaf's gradient before
  // the step, e.g. 1 / member count to use the average instead of the sum of member gradients.
  std::vector<torch::Tensor> grad_scale;
  // Layers (index in Model::layers()) whose weight is rebuilt from the leaves, with the function
  // that rebuilds it (must return the weight's shape and be differentiable in the leaves).
  struct Rebuild {
    int layer = -1;
    std::function<torch::Tensor()> fn;
  };
  std::vector<Rebuild> layers;

  // The common case of KQ and PQ: layer `layer`'s weight (of `shape`) is rows codebook[idx]
  // (times row_gain per row, if given). Adds a copy of the k x d codebook as a leaf whose
  // gradient is the average over the rows sharing a codeword; returns the leaf's index.
  int add_indexed(int layer, const torch::Tensor& codebook, const torch::Tensor& idx, std::vector<int64_t> shape,
                  const torch::Tensor& row_gain = {});
};

struct FinetuneOptions {
  double epochs = 0;              // passes over the (capped) image set; fractional allowed; 0 = off
  double lr = 1e-4;               // learning rate
  std::string optimizer = "adam"; // adam | sgd (momentum 0.9)
  double momentum = 0.9;          // sgd only
  double weight_decay = 0;        // sgd only: L2 weight decay on the leaves (0 = none)
  double lr_step_epochs = 0;      // lr *= lr_gamma every this many epochs (0 = constant lr); fractional allowed
  double lr_gamma = 0.1;          // the step schedule's factor
  int64_t batch_size = 128;
  int64_t max_images = 0;         // images per epoch drawn from the dataset (0 = all)
  std::string mode = "labels";    // labels | distill
  double temperature = 1.0;       // distill: softmax temperature (loss scaled by T^2)
  std::string bn = "frozen";      // frozen (eval mode) | update (train mode)
  bool augment = true;            // training augmentation (random crop + flip for CIFAR)
  uint64_t seed = 0;              // image order and augmentation
  void validate() const;
  std::string key() const;  // canonical text of every setting (cache keys)
};

struct FinetuneStats {
  int64_t steps = 0;
  int64_t images = 0;
  double first_loss = 0;  // mean loss over the first 10% of steps
  double last_loss = 0;   // mean loss over the last 10% of steps
  double seconds = 0;
  double last_lr = 0;     // learning rate of the last step
};

// The learning rate after `epochs_done` epochs (fractional) under opt's step schedule.
double finetune_lr_at(const FinetuneOptions& opt, double epochs_done);

// Trains sw.leaves. During training each listed layer's weight is the rebuilt tensor; afterwards
// the layer weights hold rebuild() of the final leaves (detached) and the model is back in eval
// mode. BN running statistics keep whatever bn="update" made of them.
// teacher (distill mode only): when given, the targets are its softmax (run in eval mode, its own
// weights and BN statistics) instead of the model's own as it was before fine-tuning.
FinetuneStats finetune_shared(Model& model, const Dataset& data, SharedWeights& sw, const FinetuneOptions& opt,
                              Model* teacher = nullptr);

}  // namespace bb
