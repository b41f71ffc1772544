#include "methods/weight_sharing_method.h"
#include "methods/finetune_params.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/log.h"
#include "models/weights_io.h"
#include "quant/finetune_shared.h"
#include "quant/prune.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

namespace bb {

// The sharing family's fine-tuning settings (each method's defaults are in SharingParams::finetune).
static const FinetuneDecl kSharingFinetune{kFtEpochs | kFtLr | kFtOptimizer | kFtBatch | kFtMaxImages | kFtMode |
                                               kFtTemperature | kFtBn | kFtAugment,
                                           "the shared values", ""};

void SharingMethodParams::bind(ParamBinder& b) {
  b.field("scope", scope, "codebook shared by the whole network or one per layer", {"network", "layer"});
  b.field("weighting", weighting, "importance of each weight's error: Hessian diagonal or uniform", {"hessian", "none"});
  b.field("coder", coder, "index stream coder", {"fixed", "huffman", "rans"});
  b.field("codebook_fp16", codebook_fp16, "store shared values as fp16 (default fp32)");
  b.field("target_bpw", target_bpw, "rate target, bits per weight over all compressed weights, coded bytes (0 = off)");
  b.field("rate_tol", rate_tol, "rate search stops within this relative distance of target_bpw");
  b.field("hessian", hessian.estimator, "Hessian diagonal estimator (adam_sqrt: Choi et al.'s sqrt of Adam's v_hat)",
          {"gauss_newton", "empirical_fisher", "hutchinson", "adam_sqrt"});
  b.field("hessian_images", hessian.images, "calibration images for the Hessian");
  b.field("hessian_batch", hessian.batch_size, "images per backward pass in the Hessian estimate");
  b.field("hessian_gn_max_classes", hessian.gn_max_classes, "gauss_newton: exact sum over classes up to this many, else sampled labels");
  b.field("hessian_gn_samples", hessian.gn_samples, "gauss_newton: labels sampled per image when not exact");
  b.field("hessian_probes", hessian.hutchinson_probes, "hutchinson: Rademacher probes per batch");
  b.field("hessian_adam_batch", hessian.adam_batch, "adam_sqrt: minibatch size of the squared minibatch gradients");
  b.field("hessian_floor", hessian_floor, "h_i is raised to at least floor * mean(h)");
  b.field("hessian_power", hessian_power, "h_i <- h_i^power after the floor (1 = as estimated)");
  b.field("hessian_norm", hessian_norm, "layer: divide each layer's h by its mean (weighting only within layers)",
          {"none", "layer"});
  b.field("hessian_damping", hessian_damping, "h_i <- h_i + damping * mean(h) after normalisation (0 = none)");
  b.field("prune_keep", prune_keep, "fraction of weights kept by magnitude pruning (1 = no pruning)");
  b.field("prune_scope", prune_scope, "pruning threshold per layer or one for the network", {"layer", "network"});
  b.field("prune_run_alphabet", prune_run_alphabet, "alphabet of the pruned-position run code (last symbol = escape)");
  b.field("prune_retrain_epochs", prune_retrain_epochs, "epochs retraining the kept weights (mask fixed) before quantization");
  b.field("prune_retrain_lr", prune_retrain_lr, "learning rate of the retraining after pruning");
  bind_finetune(b, finetune, kSharingFinetune);
  b.field("finetune_average", finetune_average, "codeword gradient = mean of member gradients (default: sum)");
}

void SharingMethodParams::validate() {
  SharingParams::validate();
  validate_finetune(finetune, kSharingFinetune, "");
}

SharingProblem prepare_sharing(CompressContext& ctx, const SharingParams& p) {
  BB_CHECK(ctx.model, "weight sharing: no model");
  Model& model = *ctx.model;
  const auto& layers = model.layers();
  BB_CHECK(!layers.empty(), "weight sharing: model '", model.arch(), "' has no conv/linear layers");
  SharingProblem prob;
  std::vector<torch::Tensor> weights;
  for (size_t l = 0; l < layers.size(); ++l) {
    prob.layers.push_back((int)l);
    prob.names.push_back(layers[l].name);
    prob.shapes.push_back(layers[l].weight().sizes().vec());
    weights.push_back(layers[l].weight().detach());
    prob.total_weights += layers[l].weight().numel();
  }

  if (p.pruned()) {
    ctx.phase("prune");
    prob.masks = magnitude_prune_masks(weights, p.prune_keep, p.prune_scope);
    if (p.prune_retrain_epochs == 0) {
      torch::NoGradGuard ng;
      for (size_t l = 0; l < layers.size(); ++l) layers[l].weight().mul_(prob.masks[l].to(torch::kFloat32));
    } else {
      // The unpruned model stays in place until retraining ends (it is the distillation teacher);
      // retraining leaves leaf * mask in the layers.
      BB_CHECK(ctx.calib, "weight sharing: prune_retrain_epochs > 0 needs calibration data");
      FinetuneOptions fo = p.finetune;
      fo.epochs = p.prune_retrain_epochs;
      fo.lr = p.prune_retrain_lr;
      fo.seed = ctx.seed ^ 0x9a11e;
      // Retraining is the costliest step and the same for every method: cache the whole state.
      std::string path;
      if (!ctx.cache_dir.empty()) {
        std::ostringstream key;
        key.precision(17);
        key << "prune-retrain-v1 state=" << model_state_hash(model) << " keep=" << p.prune_keep << " scope=" << p.prune_scope
            << " data=" << ctx.calib->identity() << " " << fo.key();
        path = (std::filesystem::path(ctx.cache_dir) / ("pruned-" + sha256_hex(key.str()).substr(0, 32) + ".pt")).string();
      }
      if (!path.empty() && std::filesystem::exists(path)) {
        load_state_dict(model, read_state_dict(path), path);
        log_info("weight sharing: retrained pruned weights from cache " + path);
      } else {
        ctx.phase("prune_retrain");
        SharedWeights sw;
        for (size_t l = 0; l < layers.size(); ++l) {
          auto m = prob.masks[l].to(torch::kFloat32);
          auto leaf = (layers[l].weight().detach() * m).contiguous();
          sw.leaves.push_back(leaf);
          sw.layers.push_back({(int)l, [leaf, m] { return leaf * m; }});
        }
        finetune_shared(model, *ctx.calib, sw, fo);
        if (!path.empty()) {
          write_state_dict(model.state(), path);
          log_info("weight sharing: cached retrained pruned weights " + path);
        }
      }
    }
  }

  std::vector<torch::Tensor> H;
  if (p.weighting == "hessian") {
    BB_CHECK(ctx.calib, "weight sharing: weighting=hessian needs calibration data (--calib)");
    ctx.phase("hessian");
    HessianParams hp = p.hessian;
    hp.seed = ctx.seed;
    bool hit = false;
    H = hessian_diag_cached(model, *ctx.calib, hp, ctx.cache_dir, &hit);
  }

  prob.offset.push_back(0);
  for (size_t l = 0; l < layers.size(); ++l) {
    auto w = layers[l].weight().detach().contiguous().view(-1);
    torch::Tensor keep = p.pruned() ? prob.masks[l].contiguous().view(-1) : torch::Tensor();
    auto hv = H.empty() ? torch::Tensor() : H[l].contiguous().view(-1);
    const float* wp = w.data_ptr<float>();
    const bool* kp = keep.defined() ? keep.data_ptr<bool>() : nullptr;
    const float* hp = hv.defined() ? hv.data_ptr<float>() : nullptr;
    for (int64_t i = 0; i < w.numel(); ++i) {
      if (kp && !kp[i]) continue;
      prob.x.push_back(wp[i]);
      if (hp) prob.h.push_back(hp[i]);
    }
    prob.offset.push_back((int64_t)prob.x.size());
  }
  if (!prob.h.empty()) {
    // Negative (Hutchinson) and tiny entries are raised to a floor; then mean 1, so the rate
    // searches see the same scale whatever the estimator.
    double mean = 0;
    for (float v : prob.h) mean += std::max(0.0f, v);
    mean /= (double)prob.h.size();
    BB_CHECK(mean > 0, "weight sharing: the Hessian diagonal estimate is zero everywhere");
    const double floor = p.hessian_floor * mean;
    int64_t raised = 0;
    for (float& v : prob.h) {
      if (v < floor) {
        v = (float)floor;
        ++raised;
      }
    }
    if (raised) log_info("weight sharing: " + std::to_string(raised) + " of " + std::to_string(prob.h.size()) +
                         " Hessian entries raised to the floor");
    shape_importance(prob, p);
  }
  return prob;
}

void finetune_sharing(CompressContext& ctx, const SharingProblem& prob, SharingSolution& sol, const SharingParams& p) {
  BB_CHECK(ctx.calib, "weight sharing: finetune_epochs > 0 needs calibration data (--calib)");
  Model& model = *ctx.model;
  const size_t nl = prob.layers.size();
  const bool shared = p.scope == "network";
  SharedWeights sw;
  std::vector<int> leaf_of(nl);
  auto make_leaf = [&](const std::vector<double>& c, int64_t begin, int64_t end) {
    std::vector<float> v(c.begin(), c.end());
    auto leaf = torch::tensor(v, torch::kFloat32);
    auto cnt = torch::zeros({(int64_t)c.size()});
    auto cp = cnt.data_ptr<float>();
    for (int64_t i = begin; i < end; ++i) cp[sol.assign[i]] += 1;
    sw.leaves.push_back(leaf);
    sw.grad_scale.push_back(p.finetune_average ? 1.0 / cnt.clamp_min(1) : torch::Tensor());
    return (int)sw.leaves.size() - 1;
  };
  if (shared) {
    int id = make_leaf(sol.centers[0], 0, (int64_t)prob.x.size());
    for (size_t l = 0; l < nl; ++l) leaf_of[l] = id;
  } else {
    for (size_t l = 0; l < nl; ++l) leaf_of[l] = make_leaf(sol.centers[l], prob.offset[l], prob.offset[l + 1]);
  }
  for (size_t l = 0; l < nl; ++l) {
    // Full index map: kept weights -> their cluster, pruned -> an extra constant-zero slot.
    const int64_t k = (int64_t)sol.centers[l].size();
    int64_t numel = 1;
    for (auto s : prob.shapes[l]) numel *= s;
    auto full = torch::full({numel}, k, torch::kInt64);
    auto fp = full.data_ptr<int64_t>();
    const bool* mp = prob.masks.empty() ? nullptr : prob.masks[l].contiguous().view(-1).data_ptr<bool>();
    int64_t t = prob.offset[l];
    for (int64_t i = 0; i < numel; ++i) {
      if (mp && !mp[i]) continue;
      fp[i] = sol.assign[t++];
    }
    torch::Tensor leaf = sw.leaves[leaf_of[l]];
    std::vector<int64_t> shape = prob.shapes[l];
    sw.layers.push_back({prob.layers[l], [leaf, full, shape] {
                           return torch::cat({leaf, torch::zeros({1})}).index_select(0, full).view(shape);
                         }});
  }
  FinetuneOptions fo = p.finetune;
  fo.seed = ctx.seed;
  finetune_shared(model, *ctx.calib, sw, fo);
  for (size_t l = 0; l < nl; ++l) {
    auto leaf = sw.leaves[leaf_of[l]].detach();
    auto lp = leaf.data_ptr<float>();
    for (size_t j = 0; j < sol.centers[l].size(); ++j) sol.centers[l][j] = lp[j];
  }
}

std::vector<LayerRecord> finish_sharing(CompressContext& ctx, const SharingProblem& prob, SharingSolution sol,
                                        const SharingParams& p, const std::string& method) {
  size_t kmax = 0;
  for (auto& c : sol.centers) kmax = std::max(kmax, c.size());
  std::ostringstream os;
  os << method << ": " << prob.x.size() << " weights quantized (" << prob.total_weights << " in all), scope "
     << p.scope << ", " << kmax << " shared values" << (p.scope == "layer" ? " at most per layer" : "")
     << ", weighted distortion " << sol.distortion;
  if (p.finetune.epochs > 0) {
    ctx.phase("finetune");
    finetune_sharing(ctx, prob, sol, p);
  }
  ctx.phase("encode");
  auto recs = encode_sharing(prob, sol, p, method);
  os << "; coded " << sharing_bpw(prob, recs) << " bpw";
  log_info(os.str());
  return recs;
}

}  // namespace bb
