// Kernel Quantization (Yu, Shi, Huang, Yu, arXiv 2003.05148): a codebook of whole convolution
// kernels per layer, every K x K kernel replaced by a low-bit index into it, the codebook's
// entries quantized to a few bits. The method itself is src/methods/kq.cpp (registered as "kq";
// its record format, calibration tap and fine-tuning in kq_format.cpp, kq_calib.cpp and
// kq_finetune.cpp, see kq_internal.h); this header exposes its algorithm core for tests and for the nominal-rate arithmetic in
// docs/methods/kq.md.
#pragma once
#include "methods/params.h"
#include "quant/finetune_shared.h"
#include "models/model.h"

#include <torch/torch.h>

#include <string>
#include <vector>

namespace bb {

struct KqParams : ParamsBase {
  // --- rates (fixed mode) ---
  int index_bits = 9;        // kernel index width b for conv layers with K > 1: codebook of
                             // min(2^b, #kernels) kernels. 9 is the integer b nearest the paper's
                             // ImageNet shapes: VGG-16 1.026, ResNet-18 1.543 bits/conv param (paper: 1.05, 1.62)
  int codebook_bits = 6;     // bits per codebook entry (uniform grid, per-layer scale); 32 = float32
  int pointwise_bits = 0;    // weight-level index width for 1x1 convs (scalar codebook); 0 = keep float
  int fc_bits = 6;           // weight-level index width for linear layers; 0 = keep float
  std::string first_conv = "keep";  // the network's first conv: keep (float) | kq (as any other layer)
  // --- kernel clustering ---
  std::string kernel_mode = "plain";  // plain | gain_shape (cluster kernel shapes ||.||=1, plus a
                                      // per-kernel gain index into a 2^gain_bits scalar codebook)
  int gain_bits = 2;                  // gain_shape: bits of each kernel's gain index
  int kmeans_iters = 25;              // Lloyd iterations of the float k-means
  int max_points_per_centroid = 256;  // train k-means on at most k*this kernels (all are assigned)
  int grid_iters = 5;                 // Lloyd iterations on the quantized grid after codebook quantization
  // Clustering distance. weight: Euclidean in weight space (plain k-means). output: each kernel's
  // contribution to the layer-output error after the following BN, s_o^2 (w-c)^T H_c (w-c) with
  // H_c the Gram matrix of its input channel's patches on calibration images (cross-channel
  // terms dropped): k-means under that metric, started from the Euclidean solution.
  std::string kmeans_metric = "output";
  // --- storage ---
  std::string coder = "fixed";  // index streams: fixed (paper) | huffman | rans
  // --- rate target (replaces index_bits / pointwise_bits / fc_bits per layer) ---
  double target_bpw = 0;             // > 0: choose each layer's index width by Lagrangian allocation
  std::string target_scope = "all";  // all: bits per conv+linear weight | conv: per conv weight (bpw_yu_conv)
  // Allocation distortion. mse: weight MSE (default, chosen on the validation split with
  // kmeans_metric=output: docs/methods/kq.md); output: the layer's output error on calibration
  // inputs after the following BN's scale |gamma|/sigma; output_prebn: the same before the BN.
  std::string alloc_proxy = "mse";
  int alloc_min_bits = 1;            // candidate index widths per layer: [min, max]
  int alloc_max_bits = 10;
  int calib_images = 256;            // calibration images for the output proxy and statistics
  // Sequential re-fit (not in the paper; GPTQ's sequential FP target): once the widths are
  // chosen, every quantized layer is clustered again at its width, in network order, from
  // V = argmin ||X_fp W^T - X V^T||^2 + ridge ||V - W||^2 instead of W, X its inputs in the
  // network whose earlier layers are already quantized (X_fp: in the FP network), under the
  // metric of X. false: every layer from W and the FP network's statistics. Default true: chosen
  // on the validation split at every rate and model (docs/methods/kq.md, results/kq_sequential).
  bool sequential = true;
  // --- fine-tuning of the codebooks (finetune.epochs = 0: off) ---
  // Declared: finetune_epochs, finetune_lr, finetune_batch, finetune_max_images, finetune_mode,
  // finetune_temperature; fixed: Adam, BN frozen, augmentation on.
  FinetuneOptions finetune = default_finetune();

  void bind(ParamBinder& b) override;
  void validate() override;
  static FinetuneOptions default_finetune() {
    FinetuneOptions o;
    o.lr = 1e-4;
    o.batch_size = 128;
    o.mode = "labels";
    o.temperature = 4;
    return o;
  }
};

namespace kq {

// One layer's code: n vectors of dimension d (a kernel: d = K*K; weight level: d = 1) as indices
// into a k-entry codebook of integers on a uniform grid, entry value = q * scale. In gain_shape
// mode each vector also has a gain index: w_i = gains[gain_idx_i] * codeword[idx_i].
struct LayerCode {
  int64_t d = 0, k = 0;
  int codebook_bits = 6;     // 32: codebook_f holds float32 entries, codebook_q unused
  float scale = 0;
  torch::Tensor codebook_q;  // k x d int32
  torch::Tensor codebook_f;  // k x d float32 (codebook_bits == 32 only)
  torch::Tensor idx;         // n int64
  int gain_bits = 0;         // 0 = plain
  torch::Tensor gains;       // 2^gain_bits float32 (fp16-representable)
  torch::Tensor gain_idx;    // n int64
  torch::Tensor codebook() const;  // k x d float32 as decoded
};

struct QuantOptions {
  int64_t k = 256;
  int codebook_bits = 6;
  bool gain_shape = false;
  int gain_bits = 2;
  int kmeans_iters = 25;
  int max_points_per_centroid = 256;
  int grid_iters = 5;
  uint64_t seed = 1;
  // Output-aware clustering (kmeans_metric=output; plain mode only). The n vectors are the rows
  // of a (rows x groups x d) weight: vector i belongs to row o = i / groups and input group
  // c = i % groups, and its error e costs row_weight[o] * e^T metric[c] e. Undefined: Euclidean.
  torch::Tensor metric;      // groups x d x d float64, symmetric positive semi-definite
  torch::Tensor row_weight;  // rows float64, > 0
};

// x: n x d float32 (one row per kernel). Float k-means (k-means++ init, subsampled training),
// codebook quantization to the grid, then Lloyd on the grid: every vector assigned to its nearest
// quantized codeword (jointly with the gain in gain_shape mode), codewords re-estimated and rounded.
// With o.metric: after the Euclidean k-means, Lloyd iterations under the metric (assignment by
// the metric distance, codeword = the metric-weighted least-squares centre of its members).
LayerCode quantize_vectors(const torch::Tensor& x, const QuantOptions& o);

// The metric error sum_i row_weight[o(i)] * e_i^T metric[c(i)] e_i of reconstructing x by rec
// (both n x d); the Euclidean squared error without a metric.
double metric_error(const torch::Tensor& x, const torch::Tensor& rec, const QuantOptions& o);
// Nearest codeword of every vector under o's metric (Euclidean without one); plain loop over
// vectors and codewords, the reference the fast path is tested against.
torch::Tensor metric_nearest_ref(const torch::Tensor& x, const torch::Tensor& cb, const QuantOptions& o);
torch::Tensor metric_nearest(const torch::Tensor& x, const torch::Tensor& cb, const QuantOptions& o);

// n x d float32 reconstruction; the one function both compress() and decode() use.
torch::Tensor reconstruct(const LayerCode& c);

// Uniform grid of `bits` signed levels [-2^(bits-1), 2^(bits-1)-1] with the scale (from a few
// clipping ratios) that minimises the count-weighted squared error of the codewords.
float grid_scale(const torch::Tensor& codebook, const torch::Tensor& counts, int bits);
torch::Tensor to_grid(const torch::Tensor& v, float scale, int bits);  // int32

// How a layer is quantized under given parameters.
enum class LayerRole { kernel, pointwise, fc, first_conv_kept, kept };
LayerRole layer_role(const Model& m, int layer_index, const KqParams& p);

// The paper-convention nominal size of one layer with index width b (fixed-width indices):
// index bits n*ceil(log2 k), codebook k*d*codebook_bits + 32 (scale); kept layers 32 bits/weight.
struct NominalRate {
  int64_t weights = 0;
  double index_bits = 0, codebook_bits = 0;
  double total() const { return index_bits + codebook_bits; }
};
NominalRate nominal_layer_rate(const std::vector<int64_t>& weight_shape, LayerRole role, int bits,
                               const KqParams& p);
// Sum over a model's layers with the fixed (index_bits/pointwise_bits/fc_bits) widths.
// conv_only: the paper's bits-per-conv-parameter convention (linear layers excluded).
NominalRate nominal_model_rate(const Model& m, const KqParams& p, bool conv_only);

}  // namespace kq
}  // namespace bb
