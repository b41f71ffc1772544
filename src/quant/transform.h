// Decorrelating transforms of a layer's weights (Young et al., "Transform Quantization for CNN
// Compression", TPAMI 2021).
//
// A layer Θ has n output channels, m input channels and a kh x kw kernel (k = kh*kw; a linear
// layer is n x m with k = 1). The paper transforms it on one of two sides:
//   column  T = U^T Θ: the basis is n x n, across the output channels. Θ's m*k columns (one per
//           input channel and kernel position) are the samples of an n-vector.
//   row     T = Θ U: the basis is m x m, across the input channels. Θ's n*k rows (one per output
//           channel and kernel position) are the samples of an m-vector. The paper's Table 2 uses
//           this side ("row-KLT", "row-ELT"); its basis becomes a 1x1 conv applied to the input.
// Both are handled as one factorisation of an *oriented* matrix M (p x q):
//   column  M = Θ as n x (m*k)                         p = n, q = m*k
//   row     M[j, (i, t)] = Θ[i, j, t], i.e. m x (n*k)   p = m, q = n*k
// and M = S T with
//   T = U^T M   (p x q)   transform coefficients, one row per basis vector, by decreasing importance
//   S = U^-T    (p x p)   synthesis basis (its columns), stored with the coefficients
// Rows of T that are quantized to zero remove a column of S too, so inference can run in the
// transform domain with the zeroed rows skipped (a low-rank factorisation): column side
// y = S (T * x) (T as a conv with the kept rows as filters, S as a 1x1 conv after it); row side
// y = T' * (S^T x) (S^T as a 1x1 conv on the input, then a conv with the kept coefficients).
//
//   KLT  U = eigenvectors of Sigma_w = M M^T / q (orthonormal, S = U): T T^T is diagonal.
//   ELT  U jointly diagonalises Sigma_w and Sigma_g^-1, where Sigma_g (p x p) is the second moment
//        of gamma = d(logits)/dΘ, oriented the same way, over calibration images, logits and the
//        q samples: U^T Sigma_w U = diag, U^T Sigma_g^-1 U = diag. For high-rate scalar
//        quantization with optimal bit allocation this minimises the logits' squared error
//        (Hadamard's inequality). Solved as a symmetric-definite generalised eigenproblem via
//        Cholesky Sigma_g = L L^T: eigh(L^T Sigma_w L) = Q Lambda Q^T, U = L Q, S = L^-T Q.
//
// Second moments are not mean-centred: the mid-tread quantizer reconstructs around zero, so the
// energy it sees is E[t^2], not the variance about a mean.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace bb {

enum class TransformKind { klt, elt };
enum class TransformSide { row, column };

const char* transform_side_name(TransformSide s);  // "row" | "column"
TransformSide parse_transform_side(const std::string& s);  // throws bb::Error on anything else

// Oriented dimensions (p, q) of a weight of the given shape (n, m[, kh, kw]).
std::pair<int64_t, int64_t> tq_oriented_dims(at::IntArrayRef weight_shape, TransformSide side);
// The oriented matrix M (p x q) of a weight (any dtype; the result keeps it, contiguous).
torch::Tensor tq_orient(const torch::Tensor& weight, TransformSide side);
// Inverse of tq_orient: M (p x q) back to a tensor of `weight_shape` (exact: a permutation).
// Differentiable (used by retraining).
torch::Tensor tq_unorient(const torch::Tensor& m, at::IntArrayRef weight_shape, TransformSide side);

struct LayerTransform {
  torch::Tensor S;           // p x p float64, synthesis basis: M = S T
  torch::Tensor U;           // p x p float64, analysis: T = U^T M
  torch::Tensor importance;  // p float64, decreasing: coefficient energy times its output weight
};

// Sigma_w = M M^T / q for a 2-D (oriented) weight (p x q); any dtype in, float64 out.
torch::Tensor weight_second_moment(const torch::Tensor& w2d);

// KLT of a 2-D weight. importance = eigenvalues of Sigma_w (coefficient energies).
LayerTransform klt_transform(const torch::Tensor& w2d);

// ELT of a 2-D weight given Sigma_g (p x p, symmetric PSD). `ridge` regularises Sigma_g by
// ridge * trace(Sigma_g)/p * I so that channels with (near-)zero gradient keep a finite weight.
// The basis is scaled by one scalar per layer so that ||S||_F^2 = p (S and T of similar magnitude
// for a shared step grid and for retraining); both identities then hold up to that scalar.
// importance = generalised eigenvalues (coefficient energy x S^T Sigma_g S diagonal), scale-free.
LayerTransform elt_transform(const torch::Tensor& w2d, const torch::Tensor& grad_cov, double ridge);

// Regularised Sigma_g as used by elt_transform (for tests and diagnostics).
torch::Tensor regularised_grad_cov(const torch::Tensor& grad_cov, double ridge);

}  // namespace bb
