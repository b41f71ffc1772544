// Transform quantization, the calibration-driven part: per layer the transform (KLT or ELT), and
// per block of transform coefficients and per bit depth R = 0..8 the best power-of-two step and
// the distortion D(R) = mean squared error of the network's logits on the calibration images when
// only that block is quantized (Young et al., Sec. 5). The same for the block's columns of the
// basis S (R = 1..8, T left exact). The curves do not depend on the rate target, so they are
// cached on disk and re-targeting costs one Lagrangian allocation.
//
// Cost: one forward of the calibration images per (block, R) point. Only the part of the network
// downstream of the perturbed layer is computed: the layers before it return their cached
// outputs (LayerTap::precomputed_output), the layer itself returns cached y + conv(x, dW).
#pragma once
#include "data/dataset.h"
#include "models/model.h"
#include "quant/tq_core.h"
#include "quant/transform.h"

#include <functional>
#include <string>
#include <vector>

namespace bb {

struct TqCurveOptions {
  TransformKind transform = TransformKind::klt;
  int blocks = 16;               // coefficient blocks per layer (min(blocks, n) in practice)
  int64_t calib_images = 100;    // images for D(R) and for the ELT's gradient statistics
  int64_t batch_size = 100;      // micro-batch of the forward/backward passes
  uint64_t seed = 0;             // picks the calibration images
  int steps_per_octave = 1;      // step grid 2^(e/steps_per_octave); 1 = powers of two
  bool step_by_logits = false;   // false: step minimising the weight-domain squared error;
                                 // true: best of that step and its two grid neighbours by D
  double elt_ridge = 1e-3;       // ELT: Sigma_g += ridge * trace/n * I
  // Not part of the curves (nor of the cache key): with a cache directory, the layers finished so
  // far are written to "<key>.partial" at most this often (the finished search writes the full
  // curves instead), so a search killed by a time limit or preemption resumes from there.
  // 0 = after every layer.
  double checkpoint_seconds = 60;
};

struct TqBlockCurves {
  // Index = bit depth R. T rows: R = 0 is the block zeroed (exp unused). S columns: R >= 1 only.
  int t_exp[kTqMaxBits + 1] = {0};
  double t_dist[kTqMaxBits + 1] = {0};
  int s_exp[kTqMaxBits + 1] = {0};
  double s_dist[kTqMaxBits + 1] = {0};
};

struct TqLayerCurves {
  std::string layer;
  int64_t n = 0, d = 0;
  torch::Tensor S, T, importance;  // float64: n x n, n x d, n
  std::vector<int64_t> bounds;     // block row boundaries
  std::vector<TqBlockCurves> blocks;
};

struct TqCurves {
  std::string key;           // cache key (hex)
  bool from_cache = false;
  double search_seconds = 0;  // wall time of the search that produced the curves
  int64_t measurements = 0;   // forward passes (of all calibration images) it took
  size_t resumed_layers = 0;  // layers taken from a checkpoint of an interrupted search
  std::vector<TqLayerCurves> layers;  // in Model::layers() order
};

// Computes the curves for every conv/linear layer of `model` (which must hold the FP weights, in
// eval mode), or loads them from cache_dir ("" = no cache). The model is left as it was.
// A search interrupted after a checkpoint resumes from it: search_seconds and measurements then
// add up both parts. `after_layer(l)` runs once layer l is done and checkpointed (tests interrupt
// the search from it).
TqCurves tq_compute_curves(Model& model, const Dataset& calib, const TqCurveOptions& opt,
                           const std::string& cache_dir,
                           const std::function<void(size_t)>& after_layer = {});

// Cache key: model state (all parameters and buffers), architecture, calibration identity and
// the options above.
std::string tq_curves_key(const Model& model, const Dataset& calib, const TqCurveOptions& opt);

// Per layer, the second moment of gamma = d(logit_c)/dW over images i, logits c and the d input
// positions: Sigma_g = sum_{i,c} G_ic G_ic^T / (N C d), G_ic (n x d) the per-image gradient.
// Per-image gradients come from the layer's output gradient and its unfolded input.
std::vector<torch::Tensor> tq_grad_second_moments(Model& model, const torch::Tensor& images, int64_t batch_size);

// Restores every parameter's requires_grad flag on scope exit.
struct RequiresGradSaver {
  std::vector<std::pair<torch::Tensor, bool>> saved;
  explicit RequiresGradSaver(Model& m) {
    for (auto& p : m.parameters()) saved.emplace_back(p, p.requires_grad());
  }
  ~RequiresGradSaver() {
    for (auto& s : saved) s.first.set_requires_grad(s.second);
  }
};

// The curve search's measurement, exposed for tests and benchmarks: for each (layer, dW) pair
// (dW in the layer's 2-D shape n x d), the mean squared change of the logits on `images` when
// only that layer's weight changes by dW, measured as the search does (BN-folded network, cached
// activations, stages upstream of the layer skipped). fast = false: the reference path of the
// benchmark, plain network, every pass from the input (upstream convs return cached outputs).
std::vector<double> tq_measure_distortions(Model& model, const torch::Tensor& images, int64_t batch_size,
                                           const std::vector<std::pair<int, torch::Tensor>>& perturbations,
                                           bool fast = true);

// Runs `layer` with a substitute weight and no bias (conv: the layer's stride/padding/dilation/
// groups; linear: x W^T).
torch::Tensor tq_layer_apply(const Layer& layer, const torch::Tensor& x, const torch::Tensor& w);

// Transform-domain form of the same layer, y = S (T x) without bias: a conv (or linear) with the
// k rows of T_act (k x d) as filters, then a 1x1 conv (or linear) with S_act (n x k). k = 0 gives 0.
torch::Tensor tq_apply_factored(const Layer& layer, const torch::Tensor& x, const torch::Tensor& S_act,
                                const torch::Tensor& T_act);

// Serialisation of the curves cache file (atomic write; read returns false on a missing file or
// one written for another key, and throws bb::Error if the file is corrupt).
void tq_write_curves(const std::string& path, const TqCurves& c);
bool tq_read_curves(const std::string& path, const std::string& key, TqCurves& c);

}  // namespace bb
