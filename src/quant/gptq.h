// GPTQ / OBQ numeric core (Frantar & Alistarh, "Optimal Brain Compression", NeurIPS 2022; Frantar,
// Ashkboos, Hoefler, Alistarh, "GPTQ", ICLR 2023): each row of a layer's weight W (rows x D, the
// conv weight viewed as C_out x (C_in*kh*kw)) is quantized one column at a time, and the error of
// column i, scaled by 1/U_ii, is propagated to the columns not yet quantized through row i of U,
// the upper Cholesky factor of (H + damp*mean(diag H)*I)^-1, H = X^T X the layer input's Gram
// matrix (float64). This minimises ||X (W - Q)^T||^2 greedily, column by column.
//
//   gptq_quantize      lazy block updates (the paper's Algorithm 1): within a block of
//                      block_size columns the updates are applied column by column, to the columns
//                      after the block once per block (one GEMM)
//   gptq_quantize_ref  the plain unblocked loop (every column updates every later column at once);
//                      the reference the blocked version is tested against (identical codes)
//
// The grid is per row: value = scale[r] * (q - zero[r]), q an integer clamped to [qmin, qmax]
// (per-channel asymmetric min-max at B bits, or one shared step per layer with zero = 0).
#pragma once
#include "quant/activations.h"

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace bb {

struct GptqGrid {
  std::vector<double> scale;  // per row, > 0
  std::vector<int32_t> zero;  // per row
  int32_t qmin = 0, qmax = 0;
  // Dead zone (in steps): |w / scale| < 0.5 + deadzone rounds to level 0 (value 0 when zero = 0;
  // 0 = plain rounding). Widens the most frequent level of an entropy-coded grid; the error is
  // compensated by the columns after it like any other.
  double deadzone = 0;
  int32_t code(int64_t r, double w) const {
    const double u = w / scale[r];
    const double q = (deadzone > 0 && std::fabs(u) < 0.5 + deadzone ? 0.0 : std::nearbyint(u)) + zero[r];
    return (int32_t)std::min<double>(qmax, std::max<double>(qmin, q));
  }
  double value(int64_t r, int32_t q) const { return scale[r] * (double)(q - zero[r]); }
};

// Per-row asymmetric min-max grid at `bits` over the rows of W (rows x D): the range [min, max]
// of each row, widened to include 0, split into 2^bits - 1 steps; zero = round(-min / scale).
// fp16_scale: scales rounded through fp16 (as stored). A constant row gets scale 1.
GptqGrid gptq_minmax_grid(const torch::Tensor& W, int bits, bool fp16_scale);

// One step for every row, zero 0, codes in [qmin, qmax].
GptqGrid gptq_step_grid(int64_t rows, double step, int32_t qmin, int32_t qmax);

struct GptqOptions {
  double damp = 0.01;          // H + damp * mean(diag H) * I
  int64_t block_size = 128;    // columns per lazy block update
  bool act_order = false;      // columns in order of decreasing diag H
};

struct GptqResult {
  torch::Tensor codes;  // int32 rows x D, original column order
  torch::Tensor Q;      // float64 rows x D: the dequantized weight
};

// What the loops need of H (depends on H, damp and act_order only, so one factor serves every
// grid tried on a layer): the column order, the dead columns (diag H = 0: never excited by the
// calibration data; quantized from 0, they propagate no error) and U, the upper Cholesky factor
// of (H + damp * mean(diag H) * I)^-1 in that order (float64). Throws bb::Error if H + damp*I
// is not positive definite.
struct GptqFactor {
  std::vector<int64_t> order;
  torch::Tensor dead;  // bool, D (original order)
  torch::Tensor U;     // float64 D x D, permuted
};
GptqFactor gptq_factor(const torch::Tensor& H, const GptqOptions& opt);

// W: rows x D (any float type), H: D x D (float64 preferred).
GptqResult gptq_quantize(const torch::Tensor& W, const GptqFactor& f, const GptqGrid& grid, const GptqOptions& opt);
GptqResult gptq_quantize_ref(const torch::Tensor& W, const GptqFactor& f, const GptqGrid& grid);
inline GptqResult gptq_quantize(const torch::Tensor& W, const torch::Tensor& H, const GptqGrid& grid,
                                const GptqOptions& opt) {
  return gptq_quantize(W, gptq_factor(H, opt), grid, opt);
}
inline GptqResult gptq_quantize_ref(const torch::Tensor& W, const torch::Tensor& H, const GptqGrid& grid,
                                    const GptqOptions& opt) {
  return gptq_quantize_ref(W, gptq_factor(H, opt), grid);
}

// Order of the columns (act_order: decreasing diag H, ties by index; else 0..D-1).
std::vector<int64_t> gptq_column_order(const torch::Tensor& H, bool act_order);

// Sum over rows r of s_r^2 * dW_r H dW_r^T (s = 1 when row_scale is undefined): the layer-output
// error on the calibration inputs (row_scale = the following BN's scale: the BN output's error).
double gptq_output_error(const torch::Tensor& dW, const torch::Tensor& H, const torch::Tensor& row_scale);

// P^T P of an n x D float32 matrix (float32, symmetric bit for bit): oneDNN's GEMM where libtorch
// has it, else gram_upper (quant/activations.h).
torch::Tensor gptq_gram_f32(const torch::Tensor& P, int64_t block = 384);

// H = X^T X over every im2col row of the inputs seen (every output position of every image),
// accumulated in float64 (each chunk's Gram in float32 via gptq_gram_f32, added in float64).
// add(x, x_ref) also accumulates B = X^T (X_ref - X) W^T (D x rows), X_ref the im2col rows of a
// second input of the same shape (the FP network's input of the layer while x is the quantized
// network's) and W = `weight` (rows x D, set before): what the layer's output on X misses of its
// FP output, correlated with X. Its cost is 2 n D rows flops (a 3x3 conv with C_in = C_out:
// 4/9 of H's n D^2 / 2).
struct GptqGram {
  PatchGeometry geom;
  torch::Tensor H;       // float64 D x D
  torch::Tensor B;       // float64 D x rows, only with add(x, x_ref)
  torch::Tensor weight;  // rows x D: the W of B
  int64_t rows = 0;      // im2col rows accumulated
  explicit GptqGram(const PatchGeometry& g) : geom(g) {}
  void add(const torch::Tensor& x);
  void add(const torch::Tensor& x, const torch::Tensor& x_ref);

 private:
  void add_impl(const torch::Tensor& x, const torch::Tensor& x_ref);
};

// The weight V that best maps the quantized network's layer inputs X to the FP layer output
// X_ref W^T: argmin ||X_ref W^T - X V^T||^2 + lambda ||V - W||^2 (least squares shrunk toward W,
// so V = W when X = X_ref), lambda = damp * mean(diag H), H = X^T X, B = X^T (X_ref - X) W^T:
// V^T = W^T + (H + lambda I)^-1 B. At lambda = 0 the residual X_ref W^T - X V^T is orthogonal
// to X, so quantizing V on H minimises ||X_ref W^T - X Q^T||^2.
torch::Tensor gptq_fp_target(const torch::Tensor& W, const torch::Tensor& H, const torch::Tensor& B, double damp);

}  // namespace bb
