// The one fine-tuning vocabulary of every method: FinetuneOptions' settings as parameters under
// one set of names. A method keeps a FinetuneOptions holding its own defaults, and declares the
// subset of settings its mechanism supports with bind_finetune(); the settings it does not
// declare keep the method's values and are not parameters.
//
//   finetune_epochs        epochs (0 = off; fractional allowed)
//   finetune_lr            learning rate
//   finetune_optimizer     adam | sgd
//   finetune_momentum      SGD momentum
//   finetune_weight_decay  SGD weight decay
//   finetune_batch         batch size
//   finetune_max_images    images per epoch (0 = the whole calibration set)
//   finetune_mode          labels (cross-entropy) | distill (KL to the FP model)
//   finetune_temperature   distillation temperature
//   finetune_bn            frozen | update
//   finetune_augment       training augmentation
//
// Beside these, a calibration image count is `calib_images` and the choice of index/level coder
// is `coder` {fixed|huffman|rans} in every method.
#pragma once
#include "methods/params.h"
#include "quant/finetune_shared.h"

#include <string>

namespace bb {

enum FinetuneField : unsigned {
  kFtEpochs = 1u << 0,
  kFtLr = 1u << 1,
  kFtOptimizer = 1u << 2,
  kFtMomentum = 1u << 3,
  kFtWeightDecay = 1u << 4,
  kFtBatch = 1u << 5,
  kFtMaxImages = 1u << 6,
  kFtMode = 1u << 7,
  kFtTemperature = 1u << 8,
  kFtBn = 1u << 9,
  kFtAugment = 1u << 10,
};

struct FinetuneDecl {
  unsigned fields = 0;  // FinetuneField bits: the settings this method exposes
  std::string what = "the compressed weights";  // finetune_epochs doc: "epochs fine-tuning <what> ..."
  std::string lr_note;  // appended to finetune_lr's doc (a fixed optimizer or schedule), e.g. "(Adam)"
};

// Declares decl.fields of o under the names above; the values in o are the defaults.
void bind_finetune(ParamBinder& b, FinetuneOptions& o, const FinetuneDecl& decl);

// Range checks of the declared settings, errors naming the parameter ("<where>finetune_lr must be
// > 0, got ..."), then FinetuneOptions::validate() for the combination.
void validate_finetune(const FinetuneOptions& o, const FinetuneDecl& decl, const std::string& where);

}  // namespace bb
