#include "methods/finetune_params.h"
#include "common/error.h"

#include <cmath>

namespace bb {

void bind_finetune(ParamBinder& b, FinetuneOptions& o, const FinetuneDecl& d) {
  const unsigned f = d.fields;
  if (f & kFtEpochs) b.field("finetune_epochs", o.epochs, "epochs fine-tuning " + d.what + " (0 = off); fractional allowed");
  if (f & kFtLr) b.field("finetune_lr", o.lr, "fine-tuning learning rate" + (d.lr_note.empty() ? "" : " " + d.lr_note));
  if (f & kFtOptimizer) b.field("finetune_optimizer", o.optimizer, "fine-tuning optimizer", {"adam", "sgd"});
  if (f & kFtMomentum) b.field("finetune_momentum", o.momentum, "fine-tuning SGD momentum");
  if (f & kFtWeightDecay) b.field("finetune_weight_decay", o.weight_decay, "fine-tuning SGD weight decay");
  if (f & kFtBatch) b.field("finetune_batch", o.batch_size, "fine-tuning batch size");
  if (f & kFtMaxImages)
    b.field("finetune_max_images", o.max_images, "images per fine-tuning epoch (0 = the whole calibration set)");
  if (f & kFtMode)
    b.field("finetune_mode", o.mode, "fine-tuning loss: labels (cross-entropy) or distill (KL to the FP model)",
            {"labels", "distill"});
  if (f & kFtTemperature) b.field("finetune_temperature", o.temperature, "distillation temperature");
  if (f & kFtBn)
    b.field("finetune_bn", o.bn, "BN during fine-tuning: frozen (eval mode) or update (train mode)", {"frozen", "update"});
  if (f & kFtAugment) b.field("finetune_augment", o.augment, "training augmentation while fine-tuning");
}

void validate_finetune(const FinetuneOptions& o, const FinetuneDecl& d, const std::string& where) {
  const unsigned f = d.fields;
  if (f & kFtEpochs)
    BB_CHECK(o.epochs >= 0 && std::isfinite(o.epochs), where, "finetune_epochs must be >= 0, got ", o.epochs);
  if (f & kFtLr) BB_CHECK(o.lr > 0 && std::isfinite(o.lr), where, "finetune_lr must be > 0, got ", o.lr);
  if (f & kFtMomentum)
    BB_CHECK(o.momentum >= 0 && o.momentum < 1, where, "finetune_momentum must be in [0, 1), got ", o.momentum);
  if (f & kFtWeightDecay)
    BB_CHECK(o.weight_decay >= 0 && std::isfinite(o.weight_decay), where, "finetune_weight_decay must be >= 0, got ",
             o.weight_decay);
  if (f & kFtBatch) BB_CHECK(o.batch_size >= 1, where, "finetune_batch must be >= 1, got ", o.batch_size);
  if (f & kFtMaxImages) BB_CHECK(o.max_images >= 0, where, "finetune_max_images must be >= 0, got ", o.max_images);
  if (f & kFtTemperature)
    BB_CHECK(o.temperature > 0 && std::isfinite(o.temperature), where, "finetune_temperature must be > 0, got ",
             o.temperature);
  o.validate();
}

}  // namespace bb
