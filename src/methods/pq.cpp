// PQ (Stock et al., ICLR 2020): see methods/pq.h and docs/methods/pq.md.
#include "methods/pq.h"
#include "methods/finetune_params.h"
#include "coding/bbz.h"
#include "coding/bytes.h"
#include "coding/symbols.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/runtime.h"
#include "common/timer.h"
#include "models/registry.h"
#include "quant/activations.h"
#include "quant/finetune_shared.h"

#include <cmath>
#include <cstdlib>
#include <random>
#include <sstream>

namespace bb {

// The global stage's settings (the per-layer stage has its own layer_* parameters and shares
// finetune_momentum and finetune_batch).
static const FinetuneDecl kPqFinetune{kFtEpochs | kFtLr | kFtWeightDecay | kFtMomentum | kFtBatch | kFtMaxImages,
                                      "all codebooks at once (the global stage: distillation, BN updating)",
                                      "(SGD)"};

void PQParams::bind(ParamBinder& b) {
  b.field("regime", regime, "block sizes: small = kh*kw (9 for 3x3) / 4 (1x1) / 4 (FC); large = 2*kh*kw (18) / 8 / 4",
          {"small", "large"});
  b.field("d_conv", d_conv, "override d for non-1x1 convs (0 = regime's)");
  b.field("d_pw", d_pw, "override d for 1x1 convs (0 = regime's)");
  b.field("d_fc", d_fc, "override d for linear layers (0 = regime's)");
  b.field("k", k, "centroids per conv layer (256 = byte-aligned indices)");
  b.field("fc_k", fc_k, "centroids for linear layers (0 = k)");
  b.field("min_per_centroid", min_per_centroid, "k cap threshold (the official n_centroids_threshold)");
  b.field("k_cap", k_cap,
          "k cap: strict = largest power of two strictly below n_sub / min_per_centroid (official); "
          "at_most = n_sub / min_per_centroid (rounded down to a power of two when k_pow2)",
          {"strict", "at_most"});
  b.field("k_pow2", k_pow2, "k_cap=at_most: round a capped k down to a power of two");
  b.field("first_conv", first_conv, "the network's first conv layer", {"keep", "quantize"});
  b.field("em_iters", em_iters, "EM iterations per layer");
  b.field("calib_images", calib_images, "calibration images (training augmentation)");
  b.field("rows_per_image", rows_per_image, "im2col rows sampled per calibration image into the patch pool");
  b.field("max_pool_mb", max_pool_mb, "cap on a layer's patch pool in MB (fewer rows per image if needed)");
  b.field("patches_per_iter", patches_per_iter,
          "em_sampling=fixed: sub-patches resampled per EM iteration for G (0 = whole pool)");
  b.field("em_sampling", em_sampling,
          "sub-patches per EM iteration: fixed = patches_per_iter; official = (n_samples // C_out) patch rows "
          "unrolled into blocks, n_samples 1000 (layer1/2), 25000 (layer3/4), 5000 (linear), as kill-the-bits",
          {"fixed", "official"});
  b.field("init", init, "EM seeding: kmeans++ (D^2 sampling in the activation metric) or random sub-vectors (official)",
          {"kmeans++", "random"});
  b.identity_neutral("em_sampling", "fixed");
  b.identity_neutral("init", "kmeans++");
  b.field("gram_ridge", gram_ridge, "ridge on G normalised to mean eigenvalue 1");
  b.field("max_splits", max_splits, "empty-cluster repairs per EM iteration (-1 = k)");
  b.field("coder", coder, "index coding", {"fixed", "huffman", "rans"});
  b.field("layer_finetune_iters", layer_finetune_iters, "per-layer codeword distillation steps (0 = off)");
  b.field("layer_loss", layer_loss,
          "per-layer fine-tuning loss: kl = network softmax distilled from the FP model, fresh batches (official); "
          "mse = the layer's output error on the calibration images",
          {"kl", "mse"});
  b.field("layer_lr", layer_lr, "per-layer fine-tuning learning rate (SGD)");
  b.field("layer_weight_decay", layer_weight_decay, "per-layer fine-tuning weight decay (SGD)");
  bind_finetune(b, finetune, kPqFinetune);
  b.field("finetune_lr_schedule", finetune_lr_schedule,
          "global lr: step = x0.1 every finetune_lr_step_epochs epochs (official StepLR); "
          "scaled = x0.1 after each third of the run; constant",
          {"step", "scaled", "constant"});
  b.field("finetune_lr_step_epochs", finetune_lr_step_epochs, "finetune_lr_schedule=step: epochs between x0.1 steps");
  b.renamed("n_calib", "use calib_images");
  b.renamed("global_finetune_epochs", "use finetune_epochs");
  b.renamed("global_finetune_images", "use finetune_max_images");
  b.renamed("global_lr", "use finetune_lr");
  b.renamed("global_weight_decay", "use finetune_weight_decay");
  b.renamed("global_lr_schedule", "use finetune_lr_schedule");
  b.renamed("global_lr_step_epochs", "use finetune_lr_step_epochs");
  b.renamed("momentum", "use finetune_momentum (the SGD momentum of both the per-layer and the global stage)");
  b.field("seed", seed, "added to the run seed");
}

void PQParams::validate() {
  BB_CHECK(regime == "small" || regime == "large", "pq: regime must be small or large, got '", regime, "'");
  BB_CHECK(d_conv >= 0 && d_pw >= 0 && d_fc >= 0, "pq: d_conv, d_pw, d_fc must be >= 0 (0 = regime's)");
  BB_CHECK(k >= 1 && k <= (1 << 24), "pq: k must be in [1, 2^24], got ", k);
  BB_CHECK(fc_k >= 0 && fc_k <= (1 << 24), "pq: fc_k must be in [0, 2^24], got ", fc_k);
  BB_CHECK(min_per_centroid >= 1, "pq: min_per_centroid must be >= 1, got ", min_per_centroid);
  BB_CHECK(k_cap == "strict" || k_cap == "at_most", "pq: k_cap must be strict or at_most, got '", k_cap, "'");
  BB_CHECK(layer_loss == "kl" || layer_loss == "mse", "pq: layer_loss must be kl or mse, got '", layer_loss, "'");
  BB_CHECK(layer_weight_decay >= 0 && std::isfinite(layer_weight_decay), "pq: layer_weight_decay must be >= 0");
  BB_CHECK(finetune_lr_schedule == "step" || finetune_lr_schedule == "scaled" || finetune_lr_schedule == "constant",
           "pq: finetune_lr_schedule must be step, scaled or constant, got '", finetune_lr_schedule, "'");
  BB_CHECK(finetune_lr_step_epochs > 0 && std::isfinite(finetune_lr_step_epochs),
           "pq: finetune_lr_step_epochs must be > 0");
  BB_CHECK(first_conv == "keep" || first_conv == "quantize", "pq: first_conv must be keep or quantize");
  BB_CHECK(em_iters >= 0, "pq: em_iters must be >= 0, got ", em_iters);
  BB_CHECK(em_sampling == "fixed" || em_sampling == "official", "pq: em_sampling must be fixed or official, got '",
           em_sampling, "'");
  BB_CHECK(init == "kmeans++" || init == "random", "pq: init must be kmeans++ or random, got '", init, "'");
  BB_CHECK(calib_images >= 1, "pq: calib_images must be >= 1, got ", calib_images);
  BB_CHECK(rows_per_image >= 1, "pq: rows_per_image must be >= 1, got ", rows_per_image);
  BB_CHECK(max_pool_mb >= 1, "pq: max_pool_mb must be >= 1, got ", max_pool_mb);
  BB_CHECK(patches_per_iter >= 0, "pq: patches_per_iter must be >= 0, got ", patches_per_iter);
  BB_CHECK(gram_ridge >= 0 && std::isfinite(gram_ridge), "pq: gram_ridge must be >= 0, got ", gram_ridge);
  BB_CHECK(max_splits >= -1, "pq: max_splits must be >= -1, got ", max_splits);
  parse_coder(coder);
  BB_CHECK(layer_finetune_iters >= 0, "pq: layer_finetune_iters must be >= 0");
  BB_CHECK(layer_lr > 0, "pq: layer_lr must be > 0");
  validate_finetune(finetune, kPqFinetune, "pq: ");
}

namespace {

int64_t largest_pow2_at_most(int64_t n) {
  int64_t p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

int first_conv_index(const Model& m) {
  for (size_t i = 0; i < m.layers().size(); ++i)
    if (m.layers()[i].is_conv()) return (int)i;
  return -1;
}

torch::Tensor round_fp16(const torch::Tensor& t) { return t.to(torch::kHalf).to(torch::kFloat32); }

}  // namespace

PQLayerPlan pq_plan_layer(const Model& m, int li, const PQParams& p) {
  const Layer& l = m.layers().at(li);
  PQLayerPlan plan;
  if (p.first_conv == "keep" && li == first_conv_index(m)) {
    plan.skip_reason = "first conv kept (first_conv=keep)";
    return plan;
  }
  const bool large = p.regime == "large";
  int64_t d, k;
  if (!l.is_conv()) {
    d = p.d_fc ? p.d_fc : 4;
    k = p.fc_k ? p.fc_k : p.k;
  } else if (l.kernel_h() * l.kernel_w() == 1) {
    d = p.d_pw ? p.d_pw : (large ? 8 : 4);
    k = p.k;
  } else {
    d = p.d_conv ? p.d_conv : l.kernel_h() * l.kernel_w() * (large ? 2 : 1);
    k = p.k;
  }
  const int64_t row = l.row_size();
  BB_CHECK(row % d == 0, "pq: layer '", l.name, "': block size d=", d, " does not divide its row size ", row,
           " (C_in*kh*kw); choose another d (d_conv / d_pw / d_fc)");
  plan.quantize = true;
  plan.d = d;
  plan.n_sub = l.weight().numel() / d;
  // Few sub-vectors per centroid overfit the codebook and make empty clusters (CIFAR layers).
  plan.k = pq_capped_k(k, plan.n_sub, p.min_per_centroid, p.k_cap, p.k_pow2);
  plan.patches_per_iter = p.em_sampling == "official"
                              ? std::max<int64_t>(1, pq_official_n_samples(l) / l.weight().size(0)) * (row / d)
                              : p.patches_per_iter;
  return plan;
}

int64_t pq_official_n_samples(const Layer& l) {
  const auto has = [&](const char* s) { return l.name.find(s) != std::string::npos; };
  if (has("layer1") || has("layer2")) return 1000;
  if (has("layer3") || has("layer4")) return 25000;
  if (!l.is_conv()) return 5000;
  throw Error("pq: em_sampling=official has no sample size for layer '" + l.name +
              "' (the official rule knows ResNet stages layer1-layer4 and linear layers); use em_sampling=fixed");
}

int64_t pq_capped_k(int64_t k, int64_t n_sub, int64_t threshold, const std::string& rule, bool pow2) {
  BB_CHECK(k >= 1 && n_sub >= 1 && threshold >= 1, "pq_capped_k: k, n_sub and threshold must be >= 1");
  if (rule == "strict") {
    // The official code: powers[bisect_left(powers, n_sub / threshold) - 1], the largest power
    // of two p < n_sub / threshold, i.e. p * threshold < n_sub (1 for layers with n_sub <=
    // threshold, where the official lookup wraps around to 2^15).
    int64_t p = 1;
    while (2 * p * threshold < n_sub) p *= 2;
    return std::min(k, p);
  }
  BB_CHECK(rule == "at_most", "pq_capped_k: unknown rule '", rule, "'");
  const int64_t cap = std::max<int64_t>(1, n_sub / threshold);
  return std::min(k, pow2 && k > cap ? largest_pow2_at_most(cap) : cap);
}

double pq_global_lr_step_epochs(const PQParams& p) {
  if (p.finetune_lr_schedule == "constant") return 0;
  if (p.finetune_lr_schedule == "scaled") return p.finetune.epochs / 3.0;
  return p.finetune_lr_step_epochs;
}

torch::Tensor pq_subvectors(const torch::Tensor& w, int64_t d) {
  BB_CHECK(w.numel() % d == 0, "pq_subvectors: d=", d, " does not divide ", w.numel());
  return w.detach().to(torch::kFloat32).contiguous().reshape({-1, d});
}

torch::Tensor pq_gram_factor(const torch::Tensor& patches, double ridge) {
  torch::NoGradGuard ng;
  BB_CHECK(patches.dim() == 2 && patches.size(1) >= 1, "pq_gram_factor: patches must be n x d, got ", patches.sizes());
  const int64_t d = patches.size(1);
  auto X = patches.to(torch::kFloat64);
  auto G = X.t().mm(X);
  const double tr = G.trace().item<double>();
  auto eye = torch::eye(d, torch::kFloat64);
  // Zero input: every weight error is invisible; fall back to plain k-means.
  if (!(tr > 0) || !std::isfinite(tr)) return torch::eye(d, torch::kFloat32);
  G = G / (tr / (double)d) + ridge * eye;
  auto chol = torch::linalg_cholesky_ex(G);
  if (std::get<1>(chol).item<int64_t>() == 0) return std::get<0>(chol).to(torch::kFloat32);
  // Singular G (ridge 0 on dead inputs): T = Q sqrt(max(lambda, 0)) also gives T T^T = G.
  auto eig = torch::linalg_eigh(G);
  auto T = std::get<1>(eig) * std::get<0>(eig).clamp_min(0).sqrt().unsqueeze(0);
  return T.to(torch::kFloat32);
}

torch::Tensor pq_assign(const torch::Tensor& sub, const torch::Tensor& centroids, const torch::Tensor& patches,
                        double ridge) {
  torch::NoGradGuard ng;
  auto T = pq_gram_factor(patches, ridge);
  return assign_nearest(sub.to(torch::kFloat32).mm(T), centroids.to(torch::kFloat32).mm(T)).first;
}

ClusteringResult pq_cluster(const torch::Tensor& sub, const torch::Tensor& patches, int64_t k, const PQParams& p,
                            uint64_t seed, int64_t patches_per_iter) {
  torch::NoGradGuard ng;
  BB_CHECK(sub.dim() == 2 && patches.dim() == 2 && sub.size(1) == patches.size(1), "pq_cluster: sub-vectors ",
           sub.sizes(), " and patches ", patches.sizes(), " must both be n x d");
  BB_CHECK(patches.size(0) >= 1, "pq_cluster: no patches");
  const int64_t P = patches.size(0);
  const auto pool = patches.to(torch::kFloat32).contiguous();
  const auto full = pq_gram_factor(pool, p.gram_ridge);
  if (patches_per_iter < 0) patches_per_iter = p.patches_per_iter;
  const bool resample = patches_per_iter > 0 && patches_per_iter < P;
  ClusteringMetric metric = [&](int it) -> torch::Tensor {
    if (!resample || it >= p.em_iters) return full;
    std::mt19937_64 rng(mix_seed(seed, (uint64_t)it));
    auto idx = torch::empty({patches_per_iter}, torch::kInt64);
    auto* ip = idx.data_ptr<int64_t>();
    for (int64_t i = 0; i < patches_per_iter; ++i) ip[i] = (int64_t)(rng() % (uint64_t)P);
    return pq_gram_factor(pool.index_select(0, idx), p.gram_ridge);
  };
  ClusteringParams cp;
  cp.niter = p.em_iters;
  cp.seed = seed;
  cp.init = p.init;
  cp.max_splits_per_iter = p.max_splits;
  return kmeans(sub, k, cp, {}, metric);
}

FinetuneStats pq_finetune_layer_kl(Model& student, Model& teacher, const Dataset& data, int layer,
                                   torch::Tensor& centroids, const torch::Tensor& assign, const PQParams& p,
                                   uint64_t seed) {
  BB_CHECK(layer >= 0 && layer < (int)student.layers().size(), "pq_finetune_layer_kl: no layer ", layer);
  const Layer& l = student.layers()[layer];
  BB_CHECK(centroids.dim() == 2 && assign.dim() == 1 && assign.numel() * centroids.size(1) == l.weight().numel(),
           "pq_finetune_layer_kl: centroids ", centroids.sizes(), " and assignments ", assign.sizes(),
           " do not make layer '", l.name, "''s weight ", l.weight().sizes());
  const int64_t n = data.size();
  const int64_t want = p.layer_finetune_iters * p.finetune.batch_size;
  FinetuneOptions fo;
  // One pass over a seeded subset of `want` images (several passes if the set is smaller), i.e.
  // layer_finetune_iters batches drawn afresh from the calibration set, as the official loop
  // draws them from its shuffled training loader.
  fo.epochs = want <= n ? 1.0 : (double)want / (double)n;
  fo.max_images = want <= n ? want : 0;
  fo.lr = p.layer_lr;
  fo.optimizer = "sgd";
  fo.momentum = p.finetune.momentum;
  fo.weight_decay = p.layer_weight_decay;
  fo.batch_size = p.finetune.batch_size;
  fo.mode = "distill";
  fo.temperature = 1.0;
  fo.bn = "frozen";
  fo.augment = true;
  fo.seed = seed;
  SharedWeights sw;
  sw.add_indexed(layer, centroids, assign, l.weight().sizes().vec());
  FinetuneStats st;
  if (want == 0) return st;
  {
    torch::AutoGradMode grad(true);  // compress() runs under NoGradGuard
    st = finetune_shared(student, data, sw, fo, &teacher);
  }
  centroids = sw.leaves[0].detach().clone();
  return st;
}

double stock_size_mb(const Model& m, const PQParams& p) {
  double bits = 32.0 * (double)m.num_params();
  for (int i = 0; i < (int)m.layers().size(); ++i) {
    const PQLayerPlan plan = pq_plan_layer(m, i, p);
    if (!plan.quantize) continue;
    const double n = (double)m.layers()[i].weight().numel();
    bits += n * (std::log2((double)plan.k) / (double)plan.d - 32.0) + 16.0 * (double)(plan.k * plan.d);
  }
  return bits / 8.0 / (1024.0 * 1024.0);
}

double stock_size_mb(const Model& m, const std::string& regime, int64_t fc_k) {
  PQParams p;
  p.regime = regime;
  p.fc_k = fc_k;
  p.validate();
  return stock_size_mb(m, p);
}

namespace {

constexpr uint8_t kFormat = 1;

// One quantized layer: codebook (fp16-representable values) and assignment.
struct PQLayer {
  int layer = -1;
  PQLayerPlan plan;
  torch::Tensor centroids;  // k x d float32, fp16-rounded
  torch::Tensor assign;     // n_sub int64
};

torch::Tensor pq_weight(const torch::Tensor& centroids, const torch::Tensor& assign, at::IntArrayRef shape) {
  return centroids.index_select(0, assign).reshape(shape).contiguous();
}

// Output error of a quantized layer relative to its output, on the pool's Gram matrix:
// sum ||X (w - c)||^2 / sum ||X w||^2.
double relative_output_error(const torch::Tensor& sub, const torch::Tensor& q, const torch::Tensor& pool) {
  auto T = pq_gram_factor(pool, 0.0);
  const double num = (sub - q).mm(T).pow(2).sum().item<double>();
  const double den = sub.mm(T).pow(2).sum().item<double>();
  return den > 0 ? num / den : 0.0;
}

class PQMethod : public Method {
 public:
  std::string name() const override { return "pq"; }
  int algorithm_version() const override { return 2; }  // 2: derived seeds from common mix_seed
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override { return true; }
  std::vector<LayerRecord> compress(CompressContext& ctx) override;
  torch::Tensor decode(const LayerRecord& rec) const override;

 private:
  LayerRecord encode(const Model& m, const PQLayer& q) const;
  void finetune_layer(CompressContext& ctx, Model& teacher, int li, PQLayer& q, const torch::Tensor& images,
                      uint64_t seed) const;
  void finetune_layer_mse(Model& student, Model& teacher, int li, PQLayer& q, const torch::Tensor& images,
                          uint64_t seed) const;
  void finetune_global(CompressContext& ctx, const std::vector<torch::Tensor>& fp_weights, std::vector<PQLayer>& done,
                       uint64_t seed) const;
  PQParams p_;
};

std::vector<LayerRecord> PQMethod::compress(CompressContext& ctx) {
  BB_CHECK(ctx.model, "pq: no model");
  BB_CHECK(ctx.calib, "pq: needs calibration data (--calib)");
  Model& model = *ctx.model;
  torch::NoGradGuard ng;
  model.eval();
  const auto& layers = model.layers();
  const uint64_t seed = mix_seed(ctx.seed, (uint64_t)p_.seed);
  std::vector<PQLayerPlan> plans;
  for (int i = 0; i < (int)layers.size(); ++i) plans.push_back(pq_plan_layer(model, i, p_));

  ctx.phase("calibration");
  const torch::Tensor images = load_calibration_images(*ctx.calib, p_.calib_images, /*augment=*/true, seed);
  const int64_t n_img = images.size(0);
  if (n_img < p_.calib_images)
    log_warn("pq: calibration set '" + ctx.calib->name() + "' has only " + std::to_string(n_img) + " images (calib_images=" +
             std::to_string(p_.calib_images) + ")");

  std::vector<torch::Tensor> fp_weights;  // the uncompressed weights (quantization targets, teacher)
  for (auto& l : layers) fp_weights.push_back(l.weight().detach().clone());
  // Per-layer fine-tuning distils each layer from the uncompressed network: keep a copy of it.
  std::shared_ptr<Model> teacher;
  if (p_.layer_finetune_iters > 0) {
    teacher = make_model(model.arch());
    auto src = model.state(), dst = teacher->state();
    for (auto& kv : dst) kv.second.copy_(src.at(kv.first));
    teacher->eval();
    // layer_loss=kl runs the teacher's full forward every step: BN folded into its convs (the
    // same function up to float rounding; eval mode, no tap, weights fixed). Taps, as the mse
    // path's captures, still see the plain network.
    if (p_.layer_loss == "kl") teacher->set_fold_bn(true, teacher->supports_blocked_layout());
  }

  std::vector<PQLayer> done;
  // Each layer's input in the student, the layers before it quantized: a layer changes only in its
  // own step below, so the stage outputs kept while sampling earlier layers stay valid.
  SequentialInputs student_inputs(model, images, 128);
  for (int li = 0; li < (int)layers.size(); ++li) {
    const PQLayerPlan& plan = plans[li];
    const Layer& l = layers[li];
    if (!plan.quantize) {
      log_info("pq: " + l.name + ": " + plan.skip_reason);
      continue;
    }
    const double t0 = now_seconds();
    // Patches from the current student: all earlier layers already quantized (and fine-tuned).
    ctx.phase("patches");
    const int64_t row = l.row_size();
    const int64_t pool_rows_cap = std::max<int64_t>(1, p_.max_pool_mb * (1 << 20) / 4 / row);
    const int64_t rpi = std::max<int64_t>(1, std::min(p_.rows_per_image, pool_rows_cap / n_img));
    auto pool = sample_layer_patches(student_inputs, l, li, rpi, mix_seed(seed, 1000 + li)).reshape({-1, plan.d});

    ctx.phase("em");
    const auto sub = pq_subvectors(fp_weights[li], plan.d);
    ClusteringResult r = pq_cluster(sub, pool, plan.k, p_, mix_seed(seed, 2000 + li), plan.patches_per_iter);
    PQLayer q;
    q.layer = li;
    q.plan = plan;
    q.centroids = round_fp16(r.centroids);
    q.assign = r.assign;
    if (teacher) {
      ctx.phase("layer_finetune");
      finetune_layer(ctx, *teacher, li, q, images, mix_seed(seed, 3000 + li));
    }
    ctx.phase("layer_stats");  // the layer's output/weight errors, for the log
    l.weight().copy_(pq_weight(q.centroids, q.assign, l.weight().sizes()));
    const auto qsub = q.centroids.index_select(0, q.assign);
    const double out_err = relative_output_error(sub, qsub, pool);
    const double w_err = (sub - qsub).pow(2).sum().item<double>() / std::max(1e-30, sub.pow(2).sum().item<double>());
    std::ostringstream msg;
    msg.precision(4);
    msg << "pq: " << l.name << " d=" << plan.d << " k=" << plan.k << " n_sub=" << plan.n_sub << " pool=" << pool.size(0)
        << " em_sample=" << (plan.patches_per_iter > 0 ? std::min<int64_t>(plan.patches_per_iter, pool.size(0)) : pool.size(0))
        << " rel_out_err=" << out_err << " rel_w_err=" << w_err << " splits=" << r.total_splits << " "
        << (now_seconds() - t0) << " s";
    log_info(msg.str());
    done.push_back(q);
  }

  if (p_.finetune.epochs > 0 && !done.empty()) {
    ctx.phase("finetune");
    finetune_global(ctx, fp_weights, done, seed);
  }
  ctx.phase("encode");

  std::vector<LayerRecord> records;
  for (auto& q : done) records.push_back(encode(model, q));
  return records;
}

// Captures one layer's input (or output) and stops the forward pass there.
struct CaptureTap : LayerTap {
  int layer = -1;
  bool output = false;
  torch::Tensor got;
  void on_input(int l, const torch::Tensor& x) override {
    if (!output && l == layer) {
      got = x.detach();
      throw StopForward{};
    }
  }
  torch::Tensor on_output(int l, const torch::Tensor& x, torch::Tensor y) override {
    if (output && l == layer) {
      got = y.detach();
      throw StopForward{};
    }
    return y;
  }
};

torch::Tensor capture(Model& m, int layer, bool output, const torch::Tensor& x) {
  CaptureTap tap;
  tap.layer = layer;
  tap.output = output;
  m.set_tap(&tap);
  try {
    m.forward(x);
  } catch (const StopForward&) {
  } catch (...) {
    m.set_tap(nullptr);
    throw;
  }
  m.set_tap(nullptr);
  BB_CHECK(tap.got.defined(), "pq: layer ", layer, " was not reached in forward()");
  return tap.got;
}

// The layer's own computation with a given weight (differentiable in it).
torch::Tensor apply_layer(const Layer& l, const torch::Tensor& x, const torch::Tensor& w) {
  const torch::Tensor b = l.bias().defined() ? l.bias().detach() : torch::Tensor();  // not trained
  if (!l.is_conv()) return torch::linear(x, w, b);
  const auto& o = l.conv->options;
  const auto& pad = c10::get<torch::ExpandingArray<2>>(o.padding());
  return torch::conv2d(x, w, b, o.stride(), pad, o.dilation(), o.groups());
}

// Per-layer fine-tuning (the paper's layer-wise distillation), layer_loss=kl as in the official
// code: with the assignments fixed, only this layer's codewords are trained, on
// KL(teacher softmax || student log-softmax) of the whole network (T = 1, batchmean), the teacher
// being the uncompressed network and the student the current one (earlier layers quantized and
// tuned, later ones still uncompressed), in eval mode (BN frozen). CentroidSGD: a codeword's
// gradient is the average over its sub-vectors, then weight decay and momentum (so all members
// stay identical); layer_finetune_iters steps of finetune_batch fresh augmented images of the
// calibration set. layer_loss=mse: finetune_layer_mse.
void PQMethod::finetune_layer(CompressContext& ctx, Model& teacher, int li, PQLayer& q, const torch::Tensor& images,
                              uint64_t seed) const {
  Model& student = *ctx.model;
  if (p_.layer_loss == "mse") return finetune_layer_mse(student, teacher, li, q, images, seed);
  const Layer& l = student.layers()[li];
  auto c = q.centroids;
  const FinetuneStats st = pq_finetune_layer_kl(student, teacher, *ctx.calib, li, c, q.assign, p_, seed);
  q.centroids = round_fp16(c);
  log_info("pq: " + l.name + " layer fine-tuning: " + std::to_string(st.steps) + " steps, KL " +
           std::to_string(st.first_loss) + " -> " + std::to_string(st.last_loss));
}

// layer_loss=mse (bitbench before issue 20): with the assignments fixed, the layer's codewords
// are trained so that the layer, fed by the student (earlier layers already quantized),
// reproduces the uncompressed network's output of the same layer on the same images: loss =
// mean ||y_teacher - layer(x_student; C[assign])||^2. A codeword's gradient is the average over
// its sub-vectors; SGD with momentum (no weight decay); batches drawn from the calib_images
// calibration images.
void PQMethod::finetune_layer_mse(Model& student, Model& teacher, int li, PQLayer& q, const torch::Tensor& images,
                                  uint64_t seed) const {
  const Layer& l = student.layers()[li];
  const int64_t n = images.size(0), bs = std::min<int64_t>(p_.finetune.batch_size, n);
  const auto shape = l.weight().sizes().vec();
  auto leaf = q.centroids.clone().contiguous();
  const auto inv_count = 1.0 / torch::bincount(q.assign, {}, q.plan.k).to(torch::kFloat32).clamp_min(1).unsqueeze(1);
  torch::optim::SGD opt({leaf}, torch::optim::SGDOptions(p_.layer_lr).momentum(p_.finetune.momentum));
  std::mt19937_64 rng(seed);
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  // The student's input to this layer and the teacher's output of it depend on the image only
  // (earlier layers are final, BN frozen), so they are computed once for all calibration images
  // rather than by two partial forward passes per step (~6x fewer forwards at 100 steps of 64 on
  // 1,024 images), unless they would take more than BITBENCH_PQ_FT_CACHE_MB (default 2048;
  // common/runtime.h); then per step. Both give the same batches.
  const int64_t kCacheBytes = pq_finetune_cache_mb() << 20;
  torch::Tensor all_x, all_y;
  {
    torch::NoGradGuard ng;
    auto one = images.slice(0, 0, 1);
    const int64_t per_image = (capture(student, li, false, one).numel() + capture(teacher, li, true, one).numel()) * 4;
    if (per_image * n <= kCacheBytes) {
      std::vector<torch::Tensor> xs, ys;
      for (int64_t s0 = 0; s0 < n; s0 += bs) {
        auto chunk = images.slice(0, s0, std::min(n, s0 + bs));
        xs.push_back(capture(student, li, false, chunk));
        ys.push_back(capture(teacher, li, true, chunk));
      }
      all_x = torch::cat(xs);
      all_y = torch::cat(ys);
    }
  }
  double first = 0, last = 0;
  const int64_t window = std::max<int64_t>(1, p_.layer_finetune_iters / 10);
  int64_t pos = n;
  for (int64_t it = 0; it < p_.layer_finetune_iters; ++it) {
    if (pos + bs > n) {
      std::shuffle(order.begin(), order.end(), rng);
      pos = 0;
    }
    auto idx = torch::from_blob(order.data() + pos, {bs}, torch::kInt64).clone();
    pos += bs;
    torch::Tensor x_s, y_t;
    if (all_x.defined()) {
      x_s = all_x.index_select(0, idx);
      y_t = all_y.index_select(0, idx);
    } else {
      torch::NoGradGuard ng;
      auto batch = images.index_select(0, idx);
      x_s = capture(student, li, false, batch);
      y_t = capture(teacher, li, true, batch);
    }
    torch::AutoGradMode grad(true);
    leaf.requires_grad_(true);
    auto y_s = apply_layer(l, x_s, leaf.index_select(0, q.assign).view(shape));
    auto loss = (y_s - y_t).pow(2).mean();
    opt.zero_grad();
    loss.backward();
    leaf.mutable_grad().mul_(inv_count);
    opt.step();
    const double v = loss.item<double>();
    if (it < window) first += v / (double)window;
    if (it >= p_.layer_finetune_iters - window) last += v / (double)window;
  }
  leaf.requires_grad_(false);
  q.centroids = round_fp16(leaf.detach());
  log_info("pq: " + l.name + " layer fine-tuning: " + std::to_string(p_.layer_finetune_iters) + " steps, output MSE " +
           std::to_string(first) + " -> " + std::to_string(last));
}

// Global fine-tuning (the paper's last step): every quantized layer's codebook is a learnable
// leaf, its weight is rebuilt as centroids[assign]; a codeword's gradient is the average over
// the sub-vectors assigned to it; SGD with momentum; BN statistics update; distillation from the
// uncompressed network. Assignments stay fixed, so the rate does not change; the tuned codewords
// are rounded to fp16 again, as stored.
void PQMethod::finetune_global(CompressContext& ctx, const std::vector<torch::Tensor>& fp_weights,
                               std::vector<PQLayer>& done, uint64_t seed) const {
  Model& model = *ctx.model;
  const auto& layers = model.layers();
  SharedWeights sw;
  for (const PQLayer& q : done) sw.add_indexed(q.layer, q.centroids, q.assign, layers[q.layer].weight().sizes().vec());
  // The teacher is the model as finetune_shared finds it: put the uncompressed weights back.
  for (const PQLayer& q : done) layers[q.layer].weight().copy_(fp_weights[q.layer]);
  FinetuneOptions fo = p_.finetune;  // SGD, distillation, BN updating (PQParams::default_finetune)
  fo.lr_step_epochs = pq_global_lr_step_epochs(p_);
  fo.seed = mix_seed(seed, 0xf17e);
  fo.validate();
  {
    torch::AutoGradMode grad(true);  // compress() runs under NoGradGuard
    finetune_shared(model, *ctx.calib, sw, fo);
  }
  torch::NoGradGuard ng;
  for (size_t a = 0; a < done.size(); ++a) {
    PQLayer& q = done[a];
    q.centroids = round_fp16(sw.leaves[a].detach());
    layers[q.layer].weight().copy_(pq_weight(q.centroids, q.assign, layers[q.layer].weight().sizes()));
  }
}

LayerRecord PQMethod::encode(const Model& m, const PQLayer& q) const {
  const Layer& l = m.layers()[q.layer];
  LayerRecord rec;
  rec.layer = l.name;
  rec.method = name();
  rec.shape = l.weight().sizes().vec();
  const int64_t k = q.plan.k, d = q.plan.d, n = q.plan.n_sub;
  ByteWriter meta;
  meta.u8(kFormat);
  meta.varint((uint64_t)d);
  meta.varint((uint64_t)k);
  rec.add("meta", Component::side, meta.take());
  ByteWriter cb;
  put_floats(cb, q.centroids, /*fp16=*/true);
  rec.add("centroids", Component::codebook, cb.take());
  std::vector<uint32_t> syms(n);
  auto a = q.assign.contiguous();
  const int64_t* ap = a.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) syms[i] = (uint32_t)ap[i];
  const Coder coder = parse_coder(p_.coder);
  rec.add("idx", Component::indices, encode_symbols(syms, (uint32_t)k, coder));
  rec.estimate.fixed_index_bits = (double)n * std::log2((double)k);
  rec.estimate.index_bits = coder == Coder::fixed ? (double)n * fixed_width_bits((uint32_t)k)
                                                  : empirical_entropy_bits(syms, (uint32_t)k);
  rec.estimate.codebook_values = k * d;
  rec.estimate.codebook_bits = 16.0 * (double)(k * d);
  return rec;
}

torch::Tensor PQMethod::decode(const LayerRecord& rec) const {
  const std::string what = "pq layer '" + rec.layer + "'";
  ByteReader meta(rec.section("meta").bytes, what + " meta");
  const uint8_t fmt = meta.u8();
  BB_CHECK(fmt == kFormat, what, ": unknown format version ", (int)fmt);
  const uint64_t d = meta.varint(), k = meta.varint();
  BB_CHECK(meta.done(), what, ": trailing bytes in meta");
  int64_t numel = 1;
  for (int64_t s : rec.shape) {
    BB_CHECK(s >= 1 && s <= (int64_t(1) << 40), what, ": bad shape");
    numel *= s;
    BB_CHECK(numel <= (int64_t(1) << 40), what, ": bad shape");
  }
  BB_CHECK(!rec.shape.empty() && d >= 1 && d <= (uint64_t)numel && numel % (int64_t)d == 0, what, ": block size ", d,
           " does not divide the weight's ", numel, " values");
  BB_CHECK(k >= 1 && k <= (1u << 24), what, ": bad codebook size ", k);
  const int64_t n = numel / (int64_t)d;
  const auto& cbs = rec.section("centroids").bytes;
  BB_CHECK(cbs.size() == 2 * k * d, what, ": centroids section has ", cbs.size(), " bytes, expected ", 2 * k * d);
  ByteReader cr(cbs, what + " centroids");
  auto centroids = get_floats(cr, (int64_t)(k * d), /*fp16=*/true).reshape({(int64_t)k, (int64_t)d});
  const auto syms = decode_symbols(rec.section("idx").bytes, (uint64_t)n);
  BB_CHECK((int64_t)syms.size() == n, what, ": ", syms.size(), " indices for ", n, " sub-vectors");
  auto assign = torch::empty({n}, torch::kInt64);
  int64_t* ap = assign.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    BB_CHECK(syms[i] < k, what, ": index ", syms[i], " >= k = ", k);
    ap[i] = syms[i];
  }
  return pq_weight(centroids, assign, rec.shape);
}

}  // namespace

BB_REGISTER_METHOD("pq", PQMethod);

}  // namespace bb
