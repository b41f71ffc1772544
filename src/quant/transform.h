// Decorrelating transforms of a layer's weights across its output channels (Young et al.,
// "Transform Quantization for CNN Compression", TPAMI 2021).
//
// A layer's weight is viewed as W (n output rows x d = C_in*kh*kw inputs). Each of the d columns is
// one sample of an n-vector, so the weight "covariance" is the n x n matrix Sigma_w = W W^T / d.
// A transform factors W = S T with
//   T = U^T W   (n x d)   transform coefficients, one row per basis vector, by decreasing importance
//   S = U^-T    (n x n)   synthesis basis (its columns), stored with the coefficients
// Rows of T that are quantized to zero remove a column of S too, so inference can run as
// y = S (T * x) with the zeroed rows skipped (a low-rank factorisation).
//
//   KLT  U = eigenvectors of Sigma_w (orthonormal, S = U): T T^T is diagonal.
//   ELT  U jointly diagonalises Sigma_w and Sigma_g^-1, where Sigma_g (n x n) is the second moment
//        of gamma = d(logits)/dW over calibration images, logits and input positions:
//        U^T Sigma_w U = diag, U^T Sigma_g^-1 U = diag. For high-rate scalar quantization with
//        optimal bit allocation this minimises the logits' squared error (Hadamard's inequality).
//        Solved as a symmetric-definite generalised eigenproblem via Cholesky Sigma_g = L L^T:
//        eigh(L^T Sigma_w L) = Q Lambda Q^T, U = L Q, S = L^-T Q.
//
// Second moments are not mean-centred: the mid-tread quantizer reconstructs around zero, so the
// energy it sees is E[t^2], not the variance about a mean.
#pragma once
#include <torch/torch.h>

namespace bb {

enum class TransformKind { klt, elt };

struct RowTransform {
  torch::Tensor S;           // n x n float64, synthesis basis: W = S T
  torch::Tensor U;           // n x n float64, analysis: T = U^T W
  torch::Tensor importance;  // n float64, decreasing: coefficient energy times its output weight
};

// Sigma_w = W W^T / d for a 2-D weight (n x d); any dtype in, float64 out.
torch::Tensor weight_second_moment(const torch::Tensor& w2d);

// KLT of a 2-D weight. importance = eigenvalues of Sigma_w (coefficient energies).
RowTransform klt_transform(const torch::Tensor& w2d);

// ELT of a 2-D weight given Sigma_g (n x n, symmetric PSD). `ridge` regularises Sigma_g by
// ridge * trace(Sigma_g)/n * I so that channels with (near-)zero gradient keep a finite weight.
// The basis is scaled by one scalar per layer so that ||S||_F^2 = n (S and T of similar magnitude
// for a shared step grid and for retraining); both identities then hold up to that scalar.
// importance = generalised eigenvalues (coefficient energy x S^T Sigma_g S diagonal), scale-free.
RowTransform elt_transform(const torch::Tensor& w2d, const torch::Tensor& grad_cov, double ridge);

// Regularised Sigma_g as used by elt_transform (for tests and diagnostics).
torch::Tensor regularised_grad_cov(const torch::Tensor& grad_cov, double ridge);

}  // namespace bb
