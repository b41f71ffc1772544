// Internal to KQ's implementation (src/methods/kq*.cpp), split by concern:
//   kq.cpp           parameters, the algorithm (codebook training and assignment, per-layer
//                    candidates, the Lagrangian allocation) and the method's compress/decode
//   kq_format.cpp    the record format: writing and reading one layer's record, file bytes
//   kq_calib.cpp     the calibration tap: Gram matrices of the layers' inputs (alloc_proxy=output)
//   kq_finetune.cpp  codebook fine-tuning with the indices fixed
#pragma once
#include "coding/record.h"
#include "coding/symbols.h"
#include "common/bits.h"
#include "data/dataset.h"
#include "methods/kq.h"
#include "quant/finetune_shared.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace bb {
namespace kq {

// Index width of a k-entry codebook: ceil(log2 k), 0 for k <= 1.
inline int index_width(int64_t k) { return ceil_log2(k <= 1 ? 1 : (uint64_t)k); }  // common/bits.h

// ---- record format (kq_format.cpp) ----
constexpr uint8_t kFormatVersion = 1;
// The record of layer `layer` (weight `shape`) holding code c; index streams coded with `coder`
// (the codebook's grid levels always fixed-width). Fills rec.estimate.
LayerRecord encode_record(const std::string& layer, const std::vector<int64_t>& shape, const LayerCode& c, Coder coder);
// Reads a record written by encode_record; every field checked against the record's shape.
LayerCode decode_record(const LayerRecord& rec);
// Bytes a record adds to a .bbz file: sections plus its own header, measured by serialising.
int64_t record_file_bytes(const LayerRecord& rec);
// Bytes a weight left in float adds to the file (stored as fp32 by default, with its header).
int64_t kept_file_bytes(const Layer& l);

// ---- calibration tap (kq_calib.cpp) ----
struct InputGrams {
  std::vector<torch::Tensor> H;  // per layer (undefined where not wanted): sum of x x^T, float64
  std::vector<int64_t> rows;     // per layer: input rows (patches) summed into H
};
// Runs `images` calibration images (a sample seeded by `seed`) through the model and, for each
// layer with wanted[i], accumulates H = sum x x^T over its input rows x (im2col patches for
// convs), so that ||X dW^T||^2 = tr(dW H dW^T).
InputGrams collect_input_grams(Model& model, const Dataset& calib, const std::vector<bool>& wanted, int64_t images,
                               uint64_t seed);

// ---- fine-tuning (kq_finetune.cpp) ----
// Trains the codebooks of codes[i] (one per model layer; null or without indices = not quantized)
// with the indices fixed, on `calib` under opt; each tuned codebook is put back on its grid.
// Leaves the layer weights at the tuned (pre-grid) reconstruction; the caller installs the final ones.
void finetune_codebooks(Model& model, const Dataset& calib, const std::vector<LayerCode*>& codes,
                        const FinetuneOptions& opt);

}  // namespace kq
}  // namespace bb
