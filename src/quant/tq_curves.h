// Transform quantization, the calibration-driven part: per layer the transform (KLT or ELT, on the
// row or column side), and per block of transform coefficients and per bit depth R = 0..8 the
// best power-of-two step and the distortion D(R) = mean squared error of the network's logits on
// the calibration images when only that block is quantized (Young et al., Sec. 5, Algorithm 2).
// The same for the block's columns of the basis S (R = 1..8, T left exact). The curves do not
// depend on the rate target, so they are cached on disk and re-targeting costs one Lagrangian
// allocation.
//
// Step search per (block, R) point, on the grid of step exponents e0-4 .. e0+3 around e0, the
// step minimising the weight-domain squared error (ELT: the Sigma_g-weighted error):
//   weight             e0 only (1 pass)
//   logits_neighbours  best by D of e0, e0-1, e0+1 (3 passes; the former `logits`)
//   logits_descent     from e0, walk on the grid in the direction that lowers D until D rises
//                      (3 passes + one per step walked; the grid minimum when D is unimodal)
//   logits_grid        best by D of all 8 grid steps (8 passes; Algorithm 2's exhaustive grid)
// Each point stores the D of every grid step it measured, so the curves of a logits_grid search
// hold what the other searches would measure: a search whose own curves are not cached but whose
// logits_grid twin is derives its curves from them, exactly and without a pass.
//
// Cost: one forward of the calibration images per (block, R, step) measured, except where the
// quantized block equals one already measured for the same block (R and R+1 bits at one step
// when nothing clips at R bits): its D is reused, which the pass would reproduce to the last bit
// (ResNet-20, the table's settings: 15% of the D values). Only the part of the network
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

enum class StepSearch { weight, logits_neighbours, logits_descent, logits_grid };
const char* step_search_name(StepSearch s);
// "weight", "logits_neighbours" (also "logits", its former name), "logits_descent", "logits_grid".
StepSearch parse_step_search(const std::string& s);

constexpr int kTqGridLo = -4;  // step grid offsets kTqGridLo .. kTqGridHi around e0
constexpr int kTqGridHi = 3;
constexpr int kTqGridSteps = kTqGridHi - kTqGridLo + 1;

// The offset from e0 that `search` picks given D at each grid offset (d(o) is called only for the
// offsets the search measures, each at most once per call).
int tq_choose_step_offset(StepSearch search, const std::function<double(int)>& d);

struct TqCurveOptions {
  TransformKind transform = TransformKind::klt;
  TransformSide side = TransformSide::row;
  int blocks = 16;               // coefficient blocks per layer (min(blocks, n) in practice)
  int64_t calib_images = 100;    // images for D(R) and for the ELT's gradient statistics
  int64_t batch_size = 100;      // micro-batch of the forward/backward passes
  uint64_t seed = 0;             // picks the calibration images
  int steps_per_octave = 1;      // step grid 2^(e/steps_per_octave); 1 = powers of two
  StepSearch step_search = StepSearch::logits_descent;
  double elt_ridge = 1e-3;       // ELT: Sigma_g += ridge * trace/n * I
  // Not part of the curves (nor of the cache key): a point whose quantized block repeats one
  // already measured for the same block reuses its D (false: every point runs its pass; the
  // curves are the same to the last bit, which a test checks).
  bool reuse_repeated = true;
  // Not part of the curves (nor of the cache key): with a cache directory, the layers finished so
  // far are written to "<key>.partial" at most this often (the finished search writes the full
  // curves instead), so a search killed by a time limit or preemption resumes from there.
  // 0 = after every layer.
  double checkpoint_seconds = 60;
  // Not part of the curves (nor of the cache key): a layer's blocks are searched side by side on
  // this many single-threaded workers (run_side_by_side), each on its own copy of the model; the
  // curves are the same to the last bit with any value (a test checks). 0 = side_by_side_workers().
  int workers = 0;
};

struct TqBlockCurves {
  // Index = bit depth R. T rows: R = 0 is the block zeroed (exp unused). S columns: R >= 1 only.
  int t_exp[kTqMaxBits + 1] = {0};
  double t_dist[kTqMaxBits + 1] = {0};
  int s_exp[kTqMaxBits + 1] = {0};
  double s_dist[kTqMaxBits + 1] = {0};
  // Per R >= 1: the weight-domain optimum e0 and D at each grid offset (index o - kTqGridLo),
  // NaN where the search did not measure it (-0.0 where the step changes nothing: no pass).
  int t_exp0[kTqMaxBits + 1] = {0};
  int s_exp0[kTqMaxBits + 1] = {0};
  double t_grid[kTqMaxBits + 1][kTqGridSteps];
  double s_grid[kTqMaxBits + 1][kTqGridSteps];
  TqBlockCurves();
};

struct TqLayerCurves {
  std::string layer;
  int64_t n = 0, d = 0;            // the oriented matrix M is n x d (p x q of quant/transform.h)
  torch::Tensor S, T, importance;  // float64: n x n, n x d, n
  std::vector<int64_t> bounds;     // block row boundaries
  std::vector<TqBlockCurves> blocks;
};

struct TqCurves {
  std::string key;           // cache key (hex)
  bool from_cache = false;
  bool derived_from_grid = false;  // derived from the cached logits_grid curves (no pass run)
  double search_seconds = 0;  // wall time of the search that produced the curves
  int64_t measurements = 0;   // D values it measured: a forward pass (of all calibration images)
                              // each, but a point whose quantized block repeats an earlier point's
                              // of the same block reuses that D; derived curves: the D values
                              // their own search would have measured
  int64_t passes = 0;         // forward passes this call ran (0 when loaded or derived; not stored)
  int workers = 0;            // side-by-side workers this call's passes ran on (0 when none ran; not stored)
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

// Per layer, the second moment of gamma = d(logit_c)/dΘ over images i, logits c and the q samples
// of the oriented gradient (quant/transform.h): Sigma_g = sum_{i,c} G_ic G_ic^T / (N C q), G_ic
// (p x q) the per-image gradient oriented like M (column side: n x n; row side: m x m).
// Per-image gradients come from the layer's output gradient and its unfolded input.
std::vector<torch::Tensor> tq_grad_second_moments(Model& model, const torch::Tensor& images, int64_t batch_size,
                                                  TransformSide side = TransformSide::column);

// Exact curves of `search` from curves measured with logits_grid (every grid D present);
// measurements = the passes `search` itself would have run.
TqCurves tq_derive_curves(const TqCurves& grid, StepSearch search);

// Summary of logits_grid curves: where the grid's choices lie relative to e0, and for weight,
// logits_neighbours and logits_descent how many points pick the grid's step, their passes and
// their summed D over the grid's (logged by a logits_grid search).
std::string tq_grid_agreement(const TqCurves& grid);

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
// The passes run side by side on `workers` single-threaded workers (0 = side_by_side_workers();
// the same D with any value), each on its own copy of the model.
std::vector<double> tq_measure_distortions(Model& model, const torch::Tensor& images, int64_t batch_size,
                                           const std::vector<std::pair<int, torch::Tensor>>& perturbations,
                                           bool fast = true, int workers = 0);

// Runs `layer` with a substitute weight and no bias (conv: the layer's stride/padding/dilation/
// groups; linear: x W^T).
torch::Tensor tq_layer_apply(const Layer& layer, const torch::Tensor& x, const torch::Tensor& w);

// Transform-domain form of the same layer, without bias, for S_act (p x k) and T_act (k x q), the
// kept columns of S and rows of T of the oriented M = S T. Column side: y = S (T x), a conv (or
// linear) with the k rows of T_act as filters, then a 1x1 conv (or linear) with S_act. Row side:
// y = T' (S^T x), a 1x1 conv (or linear) with S_act^T on the input, then a conv with T_act's rows
// as input channels. k = 0 gives 0.
torch::Tensor tq_apply_factored(const Layer& layer, const torch::Tensor& x, const torch::Tensor& S_act,
                                const torch::Tensor& T_act, TransformSide side = TransformSide::column);

// Serialisation of the curves cache file (atomic write; read returns false on a missing file or
// one written for another key, and throws bb::Error if the file is corrupt).
void tq_write_curves(const std::string& path, const TqCurves& c);
bool tq_read_curves(const std::string& path, const std::string& key, TqCurves& c);

}  // namespace bb
