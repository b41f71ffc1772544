// Bit accounting: every figure comes from the bytes of a serialised .bbz (BbzSizes), plus the
// methods' own estimates shown beside them. Conventions of the four papers are computed from
// the same file (formulas in docs/ACCOUNTING.md).
#pragma once
#include "coding/bbz.h"
#include "models/model.h"

#include <nlohmann/json.hpp>

namespace bb {

struct Accounting {
  int64_t n_weights = 0;   // conv + linear weights
  int64_t n_params = 0;    // all learnable parameters (weights, biases, BN affine)
  int64_t file_bytes = 0;
  double bpw_core = 0;     // bits to rebuild the conv/linear weights / n_weights
  double bpw_total = 0;    // file bits / n_params
  double est_bpw_core = 0; // the methods' own estimate of bpw_core
  double bpw_choi = 0;     // Choi et al.: (weight bits + 32 * other learnable params) / n_params
  double size_mb_stock = 0;// Stock et al.: fixed-width index bits + fp16 codebooks + fp32 rest, MiB
  double bpw_young = 0;    // Young et al.: fixed-width bit depth incl. bases over conv+FC weights
  double bpw_yu_conv = 0;  // Yu et al.: real bits of conv layers / conv weights
  nlohmann::json breakdown;  // per layer and per component
  nlohmann::json to_json() const;
};

Accounting account(const Model& model, const BbzFile& file, const BbzSizes& sizes);

}  // namespace bb
