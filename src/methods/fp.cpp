// Baselines without quantization: `fp32` stores every weight as it is (the method returns no
// records, so the container stores the tensors); `fp16` stores conv/linear weights as IEEE half.
//
// `fp32` is also the FP control of fine-tuned runs (issue 21): with finetune_epochs > 0 it
// retrains every conv/linear weight of the float network on the calibration (training) images
// with the machinery the methods use (finetune_shared, each weight its own leaf, identity
// rebuild: the same loss modes, BN handling, augmentation, seed and step schedule), then stores
// the fine-tuned float weights (and the BN statistics as finetune_bn left them). With the default
// finetune_epochs = 0 it reads no calibration data and its output is the untouched network.
#include "coding/bbz.h"
#include "coding/bytes.h"
#include "common/log.h"
#include "methods/finetune_params.h"
#include "methods/method.h"
#include "quant/finetune_shared.h"

#include <cmath>

namespace bb {
namespace {

// Every fine-tuning setting of the shared vocabulary is a parameter of the control.
const FinetuneDecl kFp32Finetune{kFtEpochs | kFtLr | kFtOptimizer | kFtMomentum | kFtWeightDecay | kFtBatch |
                                     kFtMaxImages | kFtMode | kFtTemperature | kFtBn | kFtAugment,
                                 "every conv/linear weight of the float network (the FP control of fine-tuned runs)",
                                 ""};

struct Fp32Params : ParamsBase {
  // Defaults: full-network retraining (SGD, momentum 0.9), BN in train mode, cross-entropy on the
  // labels, CIFAR augmentation, constant learning rate 0.003: the best of 0.0003 / 0.001 / 0.003 /
  // 0.01 on cifar10-jpeg-val (91.04 / 92.38 / 93.36 / 91.80; cifar_resnet20, 1 epoch over
  // cifar10-jpeg-train, batch 128; untuned 86.30), so the control is the strongest FP network the
  // budget buys and a retrained row's drop against it is not flattered.
  FinetuneOptions finetune = default_finetune();
  void bind(ParamBinder& b) override {
    bind_finetune(b, finetune, kFp32Finetune);
    b.field("finetune_lr_step_epochs", finetune.lr_step_epochs,
            "step schedule: lr x0.1 every this many epochs (0 = constant lr)");
  }
  void validate() override {
    validate_finetune(finetune, kFp32Finetune, "fp32: ");
    BB_CHECK(finetune.lr_step_epochs >= 0 && std::isfinite(finetune.lr_step_epochs),
             "fp32: finetune_lr_step_epochs must be >= 0, got ", finetune.lr_step_epochs);
  }
  static FinetuneOptions default_finetune() {
    FinetuneOptions o;
    o.epochs = 0;
    o.lr = 0.003;
    o.optimizer = "sgd";
    o.momentum = 0.9;
    o.batch_size = 128;
    o.mode = "labels";
    o.bn = "update";
    o.augment = true;
    return o;
  }
};

class Fp32Method : public Method {
 public:
  std::string name() const override { return "fp32"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override { return p_.finetune.epochs > 0; }
  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    if (p_.finetune.epochs > 0) {
      BB_CHECK(ctx.calib, "fp32: finetune_epochs > 0 needs calibration (training) data (--calib)");
      ctx.phase("finetune");
      Model& model = *ctx.model;
      SharedWeights sw;
      {
        torch::NoGradGuard ng;
        for (size_t i = 0; i < model.layers().size(); ++i) {
          auto leaf = model.layers()[i].weight().detach().to(torch::kFloat32).clone().contiguous();
          sw.leaves.push_back(leaf);
          sw.layers.push_back({(int)i, [leaf] { return leaf; }});  // identity rebuild
        }
      }
      FinetuneOptions fo = p_.finetune;
      fo.seed = ctx.seed;
      torch::AutoGradMode grad(true);  // whatever mode the caller runs compress() in
      const FinetuneStats st = finetune_shared(model, *ctx.calib, sw, fo);
      log_info("fp32: fine-tuned " + std::to_string(sw.leaves.size()) + " weights, " + std::to_string(st.images) +
               " images, loss " + std::to_string(st.first_loss) + " -> " + std::to_string(st.last_loss));
    }
    return {};
  }
  torch::Tensor decode(const LayerRecord& rec) const override {
    BB_THROW("fp32 writes no layer records, yet layer '", rec.layer, "' names it");
  }

 private:
  Fp32Params p_;
};

class Fp16Method : public Method {
 public:
  std::string name() const override { return "fp16"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    std::vector<LayerRecord> out;
    for (const auto& l : ctx.model->layers()) {
      LayerRecord rec;
      rec.layer = l.name;
      rec.method = name();
      rec.shape = l.weight().sizes().vec();
      ByteWriter w;
      put_floats(w, l.weight(), /*fp16=*/true);
      rec.add("values", Component::indices, w.take());
      rec.estimate.index_bits = rec.estimate.fixed_index_bits = 16.0 * l.weight().numel();
      out.push_back(std::move(rec));
    }
    return out;
  }
  torch::Tensor decode(const LayerRecord& rec) const override {
    int64_t n = 1;
    for (auto s : rec.shape) n *= s;
    const auto& sec = rec.section("values");
    ByteReader r(sec.bytes, "layer '" + rec.layer + "' values");
    torch::Tensor w = get_floats(r, n, true).reshape(rec.shape);
    r.expect_done();
    return w;
  }

 private:
  NoParams p_;
};

BB_REGISTER_METHOD("fp32", Fp32Method);
BB_REGISTER_METHOD("fp16", Fp16Method);

}  // namespace
}  // namespace bb
