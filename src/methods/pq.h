// PQ: "And the Bit Goes Down: Revisiting the Quantization of Neural Networks" (Stock, Joulin,
// Gribonval, Graham, Jegou; ICLR 2020, arXiv 1907.05686). Activation-aware product quantization.
//
// A weight W (C_out x C_in x kh x kw) is viewed as C_out x (C_in*kh*kw) and cut into contiguous
// sub-vectors of d values along the input dimension; one codebook of k centroids per layer is
// shared by all sub-vector positions. Layers are quantized in network order, each from input
// activations of the current student (earlier layers already quantized and fine-tuned), so
// that the layer's output error on real inputs is minimised: per sub-vector ||X (w - c)||^2, X
// the d-wide slices of the layer's im2col patches. The E-step uses the d x d Gram matrix
// G = X^T X = L L^T of freshly sampled patches (k-means on L-transformed vectors, quant/kmeans.h),
// the M-step is the members' mean. With the assignments fixed, the codewords can then be
// fine-tuned per layer (layer_finetune_iters: the layer's output on student inputs distilled from
// the uncompressed network's) and globally (finetune_epochs: the whole network distilled,
// BN updating). See docs/methods/pq.md.
//
// This header exposes the algorithm's pieces for tests; the method registers itself as "pq".
#pragma once
#include "methods/method.h"
#include "quant/finetune_shared.h"
#include "quant/kmeans.h"

#include <string>

namespace bb {

struct PQParams : ParamsBase {
  // Block sizes (sub-vector length d). small: kh*kw for kh x kw convs (one kernel: 9 for 3x3),
  // 4 for 1x1 convs, 4 for linears. large: 2*kh*kw (18 for 3x3), 8, 4.
  std::string regime = "small";
  int d_conv = 0;  // override d for non-1x1 convs (0 = regime's)
  int d_pw = 0;    // override d for 1x1 convs (0 = regime's)
  int d_fc = 0;    // override d for linear layers (0 = regime's)
  int64_t k = 256;              // centroids per conv layer (256: byte-aligned indices)
  int64_t fc_k = 0;             // centroids for linear layers (0 = k; the paper: 2048 ResNet-18, 1024 ResNet-50)
  int64_t min_per_centroid = 4; // the cap's threshold (the official --n-centroids-threshold)
  // k cap. strict (the official code): k = min(k, largest power of two strictly below
  // n_sub / min_per_centroid). at_most (bitbench before issue 20): k = min(k, n_sub /
  // min_per_centroid), rounded down to a power of two when k_pow2 (so k doubles on layers where
  // n_sub / min_per_centroid is itself a power of two, e.g. 16x16x3x3 convs: 64 instead of 32).
  std::string k_cap = "strict";
  bool k_pow2 = true;           // at_most only: round a capped k down to a power of two
  std::string first_conv = "keep";  // keep | quantize (the first conv layer of the network)
  int em_iters = 100;               // EM iterations per layer
  int64_t calib_images = 1024;      // calibration images (training augmentation, seeded)
  int64_t rows_per_image = 16;      // im2col rows sampled per calibration image into the patch pool
  int64_t max_pool_mb = 256;        // cap on the patch pool per layer (fewer rows per image if needed)
  int64_t patches_per_iter = 8192;  // sub-patches resampled from the pool to estimate G each iteration (0 = whole pool)
  // How many sub-patches each EM iteration draws for G. fixed: patches_per_iter on every layer.
  // official (kill-the-bits' dynamic_sampling): n_samples // C_out patch rows, each unrolled into
  // its row_size / d sub-patches, with n_samples = 1,000 for layers named layer1/layer2, 25,000
  // for layer3/layer4, 5,000 for linear layers (ResNet-20: 992 on layer1/2, 24,960 on layer3;
  // at least one row where C_out exceeds n_samples, where the official code would draw none);
  // other layer names are an error (the official code has no rule for them).
  std::string em_sampling = "fixed";
  // EM seeding. kmeans++: D^2 sampling in the first iteration's metric. random (the official
  // code's): k random sub-vectors (distinct ones here; the official code draws with replacement
  // and then splits the duplicates' empty clusters).
  std::string init = "kmeans++";
  double gram_ridge = 1e-4;         // ridge added to G normalised to mean eigenvalue 1 (Cholesky needs G > 0)
  int max_splits = -1;              // empty-cluster repairs per EM iteration (-1 = k); bounded, never loops
  std::string coder = "fixed";      // index coding: fixed (bytes for k = 256) | huffman | rans
  int64_t layer_finetune_iters = 0; // per-layer codeword distillation steps (0 = off; the paper: 2500 at batch 128)
  // Per-layer loss. kl (the official code): KL(teacher softmax || student log-softmax) of the
  // whole network, T = 1, batchmean; teacher = the uncompressed network, student = the current
  // network (earlier layers quantized) in eval mode; fresh augmented batches of the calibration
  // set every step. mse (bitbench before issue 20): the layer's output error on the student's
  // inputs against the uncompressed layer's output, on the calib_images calibration images.
  std::string layer_loss = "kl";
  double layer_lr = 0.05;           // per-layer fine-tuning learning rate (SGD, momentum)
  double layer_weight_decay = 1e-4; // per-layer fine-tuning weight decay (the official code: 1e-4)
  // Global fine-tuning (the paper's last step): finetune_epochs (0 = off; the paper: 9),
  // finetune_lr, finetune_weight_decay (the official code: 1e-4), finetune_max_images (images per
  // epoch, 0 = the whole calibration set); fixed: SGD, distillation from the uncompressed network
  // (T = 1), BN updating, augmentation on. finetune_momentum and finetune_batch also drive the
  // per-layer stage.
  FinetuneOptions finetune = default_finetune();
  // Global learning-rate schedule. step (the official code): lr * 0.1 every
  // finetune_lr_step_epochs epochs (StepLR, 3 of 9 epochs; constant for runs of <= 3 epochs).
  // scaled: the official 9-epoch shape compressed into the run: lr * 0.1 after each third of
  // finetune_epochs. constant: no decay.
  std::string finetune_lr_schedule = "step";
  double finetune_lr_step_epochs = 3;   // step schedule's period in epochs
  int64_t seed = 0;                 // added to the run seed

  void bind(ParamBinder& b) override;
  void validate() override;
  static FinetuneOptions default_finetune() {
    FinetuneOptions o;
    o.epochs = 0;
    o.lr = 0.01;
    o.optimizer = "sgd";
    o.momentum = 0.9;
    o.weight_decay = 1e-4;
    o.lr_gamma = 0.1;
    o.batch_size = 128;
    o.max_images = 0;
    o.mode = "distill";
    o.temperature = 1.0;
    o.bn = "update";
    o.augment = true;
    return o;
  }
};

// What PQ does with one layer: d, the (capped) k and the number of sub-vectors.
struct PQLayerPlan {
  bool quantize = false;
  int64_t d = 0, k = 0, n_sub = 0;
  int64_t patches_per_iter = 0;  // sub-patches per EM iteration for G (0 = the whole pool), from em_sampling
  std::string skip_reason;  // when !quantize
};
// Throws bb::Error naming the layer when d does not divide the layer's row size.
PQLayerPlan pq_plan_layer(const Model& m, int layer, const PQParams& p);

// k for a layer with n_sub sub-vectors when k centroids are asked for (see PQParams::k_cap).
// strict: min(k, the largest power of two p with p * threshold < n_sub, at least 1). at_most:
// min(k, n_sub / threshold (at least 1)), the cap rounded down to a power of two when pow2 and k
// exceeds it.
int64_t pq_capped_k(int64_t k, int64_t n_sub, int64_t threshold, const std::string& rule, bool pow2);

// The learning-rate schedule of the global fine-tuning as finetune_shared's step period in
// epochs (0 = constant), from finetune_lr_schedule, finetune_lr_step_epochs and finetune_epochs.
double pq_global_lr_step_epochs(const PQParams& p);

// n_sub x d sub-vectors of a weight (contiguous d-blocks of the rows of W viewed as C_out x rest).
torch::Tensor pq_subvectors(const torch::Tensor& w, int64_t d);

// Lower-triangular T with T T^T = G / (tr G / d) + ridge I, G = X^T X of patches X (n x d): then
// ||(w - c) T||^2 is ||X (w - c)||^2 up to the normalisation (and the ridge). Identity when X is
// all zero; falls back to an eigen-factor when G is singular and ridge = 0.
torch::Tensor pq_gram_factor(const torch::Tensor& patches, double ridge);

// E-step: for each row w of sub, argmin over centroids c of ||X (w - c)||^2 (X = patches).
torch::Tensor pq_assign(const torch::Tensor& sub, const torch::Tensor& centroids, const torch::Tensor& patches,
                        double ridge);

// The official code's activation sample size for a layer (dynamic_sampling): 1,000 for names
// containing layer1/layer2, 25,000 for layer3/layer4, 5,000 for linear layers; bb::Error naming
// the layer otherwise.
int64_t pq_official_n_samples(const Layer& l);

// EM of one layer: sub (n_sub x d) against a pool of sub-patches (P x d). Each iteration's G comes
// from patches_per_iter pool rows drawn afresh with replacement (seeded by seed and the
// iteration; 0 or >= P = the whole pool; -1 = p.patches_per_iter); the final assignment uses the whole pool. Seeding by
// p.init (k-means++ in the first iteration's metric, or random sub-vectors).
ClusteringResult pq_cluster(const torch::Tensor& sub, const torch::Tensor& patches, int64_t k, const PQParams& p,
                            uint64_t seed, int64_t patches_per_iter = -1);

// Per-layer fine-tuning with layer_loss=kl (the official code's): only layer `layer`'s codewords
// train, its weight being centroids[assign] (k x d, n_sub); loss KL(teacher softmax || student
// log-softmax), T = 1, batchmean, both in eval mode (BN frozen), the teacher a separate model
// (the uncompressed network). SGD on the centroids with the member-averaged gradient (CentroidSGD),
// p.finetune.momentum, p.layer_weight_decay, p.layer_lr; p.layer_finetune_iters batches of
// p.finetune.batch_size augmented images drawn afresh from `data`. Replaces `centroids` by the tuned
// float32 values; the student's layer weight is left at centroids[assign].
FinetuneStats pq_finetune_layer_kl(Model& student, Model& teacher, const Dataset& data, int layer,
                                   torch::Tensor& centroids, const torch::Tensor& assign, const PQParams& p,
                                   uint64_t seed);

// Model size in MB (2^20 bytes) in the convention of Stock et al.'s tables: log2(k)/d bits per
// quantized weight, k*d fp16 values per codebook, and every other learnable parameter (the
// unquantized first conv, BN weight and bias, biases) at 32 bits; BN running statistics are not
// counted. Pure function of the shapes and the plan.
double stock_size_mb(const Model& m, const PQParams& p);
double stock_size_mb(const Model& m, const std::string& regime, int64_t fc_k);

}  // namespace bb
