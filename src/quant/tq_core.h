// Transform quantization (Young et al., TPAMI 2021): the parts that need no calibration data.
//
//   quantizer   uniform mid-tread with 2^R levels, q = clamp(round(x / step), -2^(R-1), 2^(R-1)-1),
//               R in 0..8 (R = 0: the block is zeroed), step = 2^(e / steps_per_octave)
//   layout      the layer's oriented matrix M (p x q, quant/transform.h: column side p = n
//               outputs, row side p = m inputs) = S T, S p x p, T p x q
//   blocks      the p coefficient rows of T (by decreasing importance) are cut into
//               min(blocks, p) groups of consecutive rows; block b also owns the columns of S
//               that multiply its rows
//   layer code  per block: bits and step of its T rows, bits and step of its S columns (absent
//               when the rows are zeroed: those basis vectors are never used)
//   record      sections tq.side (side), tq.coef (indices: T levels), tq.basis (codebook: S
//               levels); level streams grouped by bit depth, fixed-width or entropy coded
//   decode      M = S_hat T_hat summed in float64 in a fixed order, then un-oriented (a
//               permutation), so the weight is bit-identical wherever it is decoded
#pragma once
#include "coding/record.h"
#include "coding/symbols.h"
#include "quant/transform.h"

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace bb {

constexpr int kTqMaxBits = 8;

// Step size 2^(exp / steps_per_octave).
double tq_step(int exp, int steps_per_octave);
// Level of x for a quantizer with 2^bits levels (bits >= 1).
inline int32_t tq_level(double x, double step, int bits) {
  const double lo = -(double)(1 << (bits - 1)), hi = (double)((1 << (bits - 1)) - 1);
  double q = std::nearbyint(x / step);
  return (int32_t)(q < lo ? lo : (q > hi ? hi : q));
}

// Row boundaries of min(blocks, n) near-equal groups of consecutive rows (size nb + 1).
std::vector<int64_t> tq_block_bounds(int64_t n, int blocks);

struct TqBlockCode {
  int t_bits = 0;  // 0: rows zeroed (and the block's S columns dropped)
  int t_exp = 0;
  int s_bits = 0;  // 1..8 when t_bits > 0
  int s_exp = 0;
};

// One layer, everything decode needs besides the levels.
struct TqLayerCode {
  TransformSide side = TransformSide::column;  // orientation of M (stored from format version 2)
  int64_t n = 0, d = 0;  // M is n x d (the oriented p x q of quant/transform.h)
  int steps_per_octave = 1;
  std::vector<int64_t> bounds;     // block row boundaries, size nb + 1
  std::vector<TqBlockCode> blocks;  // size nb
  int64_t t_numel(size_t b) const { return (bounds[b + 1] - bounds[b]) * d; }
  int64_t s_numel(size_t b) const { return (bounds[b + 1] - bounds[b]) * n; }
  double t_bits_total() const;  // sum over blocks of numel * bits (the paper's bit count)
  double s_bits_total() const;
  int64_t s_values() const;     // basis entries stored (columns of non-zeroed blocks)
  int64_t active_rows() const;  // rows of T not zeroed
};

// Quantized levels of one layer: T levels row-major n x d, S levels column-major (n per column);
// rows / columns of zeroed blocks are 0.
struct TqLevels {
  std::vector<int32_t> t, s;
};

// Quantizes T (n x d) and S (n x n), float64, with the code's bit depths and steps.
TqLevels tq_quantize(const TqLayerCode& code, const torch::Tensor& S, const torch::Tensor& T);

// Reconstructs M = S_hat T_hat as float32 (n x d, oriented), deterministically.
torch::Tensor tq_reconstruct(const TqLayerCode& code, const TqLevels& lv);
// The layer's weight of `shape`: tq_reconstruct un-oriented by the code's side.
torch::Tensor tq_reconstruct_weight(const TqLayerCode& code, const TqLevels& lv, at::IntArrayRef shape);

// Dequantized T_hat (n x d) and S_hat (n x n) as float64 tensors (zeroed blocks are 0).
void tq_dequantize(const TqLayerCode& code, const TqLevels& lv, torch::Tensor& S_hat, torch::Tensor& T_hat);

// Serialises code + levels into rec's sections and fills rec.estimate.
//   fixed_index_bits = T bits (sum numel * bits), codebook_bits = S bits, codebook_values = S
//   entries kept, index_bits = what the chosen coder is expected to spend on T (the empirical
//   entropy for huffman/rans, the fixed width otherwise), side_bits = the tq.side bytes.
void tq_encode(const TqLayerCode& code, const TqLevels& lv, Coder coder, LayerRecord& rec);

// Inverse of tq_encode; throws bb::Error naming the layer on any inconsistency.
void tq_decode(const LayerRecord& rec, TqLayerCode& code, TqLevels& lv);

// Multiply-accumulates per output position: direct (n*d) vs in the transform domain with the
// zeroed rows of T and columns of S skipped (k*d + n*k, k = active rows). On the row side the
// 1x1 basis conv runs on the input, so for a strided conv its k*n part is per input position.
struct TqMacs {
  int64_t direct = 0, transform = 0;
};
TqMacs tq_macs_per_position(const TqLayerCode& code);

}  // namespace bb
