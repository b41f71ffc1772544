// Layer inputs and im2col patches for activation-aware methods (PQ's ||X(w - c)||^2, Gram or
// Hessian matrices X^T X): a layer's input is observed through a LayerTap on a forward pass that
// stops as soon as the layer is reached, and im2col rows are sampled at chosen output positions,
// never materialised in full.
//
// An im2col row is what one output position multiplies with the weight viewed as
// C_out x (C_in*kh*kw): entry (c, ky, kx), in that order (the order of weight.view(C_out, -1)),
// is x[c, oy*sh - ph + ky*dh, ox*sw - pw + kx*dw], zero outside the image. For a linear layer the
// row is the input vector itself.
#pragma once
#include "data/dataset.h"
#include "models/model.h"

#include <functional>
#include <random>

namespace bb {

// How a layer turns its input into rows (see above).
struct PatchGeometry {
  bool conv = false;
  int64_t in_channels = 0;  // C_in (linear: in_features)
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;

  // Throws bb::Error naming the layer for grouped convs and non-numeric ("same") padding.
  static PatchGeometry of(const Layer& l);
  int64_t row_size() const { return in_channels * kh * kw; }
  int64_t out_h(int64_t h) const { return (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1; }
  int64_t out_w(int64_t w) const { return (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1; }
};

// Rows of im2col(x) at the given positions. Convs: x is N x C_in x H x W and pos is n x 3 int64
// (image, oy, ox). Linears: x is N x in_features and pos is n x 1 (image). Returns n x row_size
// float32.
torch::Tensor im2col_rows(const torch::Tensor& x, const PatchGeometry& g, const torch::Tensor& pos);

// rows_per_image output positions of every image, uniform with replacement (linears: each image's
// single row, once). Returns the positions for im2col_rows.
torch::Tensor sample_patch_positions(const torch::Tensor& x, const PatchGeometry& g, int64_t rows_per_image,
                                     std::mt19937_64& rng);

// Runs the model (no grad, as it is: the caller sets eval/train) over `images` in batches and
// calls fn(input of layer `layer`, index of the batch's first image); each forward pass stops at
// the layer. The tap is removed again on every exit path.
void for_each_layer_input(Model& model, int layer, const torch::Tensor& images, int64_t batch_size,
                          const std::function<void(const torch::Tensor& x, int64_t first)>& fn);

// Every layer's input on `images`, batch by batch (one forward pass, no grad, the model as it
// is): inputs[l][b] is layer l's input in batch b of batch_size images (empty for a layer the
// pass does not run). The FP inputs that sequential methods fit each layer's output to.
std::vector<std::vector<torch::Tensor>> capture_layer_inputs(Model& model, const torch::Tensor& images,
                                                             int64_t batch_size);

// for_each_layer_input for a network whose layers are changed in order (sequential
// quantization: ask for layer l's inputs, change layer l, ask for a later layer's, ...). Per batch
// it keeps the output of the last residual stage (LayerTap::precomputed_stage) completed before
// the layer asked for, so a later layer's pass starts there instead of at the image: the inputs
// are those for_each_layer_input computes (the stages are run the same way), at about the cost of
// one forward pass per stage instead of one per layer. Valid while no layer before the last one
// asked for changes (the layers are asked for in increasing order: checked); reset() forgets
// the kept outputs. Models without stages run every pass from the image.
class SequentialInputs {
 public:
  SequentialInputs(Model& model, const torch::Tensor& images, int64_t batch_size);
  void for_each(int layer, const std::function<void(const torch::Tensor& x, int64_t first)>& fn);
  void reset();

 private:
  Model& model_;
  torch::Tensor images_;
  int64_t batch_size_;
  int last_layer_ = -1;
  std::vector<torch::Tensor> out_;  // per batch: the output of stage stage_[b]
  std::vector<int> stage_;          // per batch: -1 = none kept
};

// rows_per_image sampled im2col rows of layer `layer`'s input for every image, as the model
// computes it now: (N * rows_per_image) x row_size (linears: N x in_features). Deterministic in
// seed.
torch::Tensor sample_layer_patches(Model& model, int layer, const torch::Tensor& images, int64_t rows_per_image,
                                   uint64_t seed, int64_t batch_size = 128);
// The same from `inputs` (layer `index` of its model, `layer` = that layer): the layers asked for
// in increasing order reuse the stage outputs it keeps (the same rows, fewer forward passes).
torch::Tensor sample_layer_patches(SequentialInputs& inputs, const Layer& layer, int index, int64_t rows_per_image,
                                   uint64_t seed);

// n images of ds (a seeded subset; all of them if n >= size), as one N x C x H x W tensor, with
// training augmentation when asked (seeded per image).
torch::Tensor load_calibration_images(const Dataset& ds, int64_t n, bool augment, uint64_t seed);

// X^T X of an n x D matrix (D x D, exactly symmetric). Only the column panels on and above the
// diagonal are multiplied (panels of max(128, D/8) columns) and mirrored: about 56% of a full
// GEMM's work at D = 4608, where KQ's per-layer input statistics are ~9x the layer's own
// forward pass.
torch::Tensor gram_upper(const torch::Tensor& X);

}  // namespace bb
