#include "quant/transform.h"

#include "common/error.h"

#include <cmath>

namespace bb {
namespace {

// Eigen-decomposition of a symmetric matrix, eigenvalues decreasing. Eigenvectors are defined up
// to sign; each column is flipped so that its largest-magnitude entry is positive, so the basis
// (and the bytes built from it) do not depend on the LAPACK build's sign convention.
void sorted_eigh(const torch::Tensor& a, torch::Tensor& values, torch::Tensor& vectors) {
  auto sym = (a + a.t()) * 0.5;
  auto [ev, q] = torch::linalg::eigh(sym, "L");
  values = ev.flip(0).contiguous();
  vectors = q.flip(1).contiguous();
  auto idx = vectors.abs().argmax(0);
  auto pick = vectors.gather(0, idx.unsqueeze(0)).squeeze(0);
  auto sign = 1.0 - 2.0 * (pick < 0).to(torch::kFloat64);
  vectors = vectors * sign.unsqueeze(0);
}

torch::Tensor as_2d_double(const torch::Tensor& w2d) {
  BB_CHECK(w2d.dim() == 2, "transform: expected a 2-D weight matrix, got ", w2d.dim(), " dims");
  BB_CHECK(w2d.size(0) > 0 && w2d.size(1) > 0, "transform: empty weight matrix");
  return w2d.to(torch::kFloat64).contiguous();
}

}  // namespace

const char* transform_side_name(TransformSide s) { return s == TransformSide::row ? "row" : "column"; }

TransformSide parse_transform_side(const std::string& s) {
  if (s == "row") return TransformSide::row;
  if (s == "column") return TransformSide::column;
  BB_THROW("tq: transform_side must be 'row' or 'column', got '", s, "'");
}

std::pair<int64_t, int64_t> tq_oriented_dims(at::IntArrayRef shape, TransformSide side) {
  BB_CHECK(shape.size() == 2 || shape.size() == 4, "transform: expected a 2-D or 4-D weight, got ", shape.size(), " dims");
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  BB_CHECK(numel > 0, "transform: empty weight");
  const int64_t p = side == TransformSide::row ? shape[1] : shape[0];
  return {p, numel / p};
}

torch::Tensor tq_orient(const torch::Tensor& w, TransformSide side) {
  auto [p, q] = tq_oriented_dims(w.sizes(), side);
  if (side == TransformSide::column) return w.reshape({p, q}).contiguous();
  // Theta (n, m, k) -> (m, n, k) -> m x (n*k)
  const int64_t n = w.size(0);
  return w.reshape({n, p, -1}).permute({1, 0, 2}).reshape({p, q}).contiguous();
}

torch::Tensor tq_unorient(const torch::Tensor& m, at::IntArrayRef shape, TransformSide side) {
  auto [p, q] = tq_oriented_dims(shape, side);
  BB_CHECK(m.dim() == 2 && m.size(0) == p && m.size(1) == q, "transform: oriented matrix is ", m.size(0), "x",
           m.size(1), ", expected ", p, "x", q);
  if (side == TransformSide::column) return m.reshape(shape);
  const int64_t n = shape[0];
  return m.reshape({p, n, -1}).permute({1, 0, 2}).contiguous().reshape(shape);
}

torch::Tensor weight_second_moment(const torch::Tensor& w2d) {
  auto w = as_2d_double(w2d);
  return torch::mm(w, w.t()) / (double)w.size(1);
}

LayerTransform klt_transform(const torch::Tensor& w2d) {
  LayerTransform t;
  torch::Tensor values, vectors;
  sorted_eigh(weight_second_moment(w2d), values, vectors);
  t.U = vectors;
  t.S = vectors;  // orthonormal: U^-T = U
  t.importance = values.clamp_min(0.0);
  return t;
}

torch::Tensor regularised_grad_cov(const torch::Tensor& grad_cov, double ridge) {
  BB_CHECK(grad_cov.dim() == 2 && grad_cov.size(0) == grad_cov.size(1), "ELT: gradient covariance must be square");
  BB_CHECK(ridge > 0, "ELT: ridge must be > 0 (got ", ridge, ")");
  auto g = grad_cov.to(torch::kFloat64);
  g = (g + g.t()) * 0.5;
  const int64_t n = g.size(0);
  double tr = g.trace().item<double>();
  BB_CHECK(std::isfinite(tr), "ELT: gradient covariance is not finite");
  if (tr <= 0) tr = 1.0;  // no gradient signal at all: the ELT degenerates to the KLT
  return g + torch::eye(n, torch::kFloat64) * (ridge * tr / (double)n);
}

LayerTransform elt_transform(const torch::Tensor& w2d, const torch::Tensor& grad_cov, double ridge) {
  auto w = as_2d_double(w2d);
  const int64_t n = w.size(0);
  BB_CHECK(grad_cov.size(0) == n, "ELT: gradient covariance is ", grad_cov.size(0), "x", grad_cov.size(0),
           " but the weight has ", n, " rows");
  auto g = regularised_grad_cov(grad_cov, ridge);
  auto L = torch::linalg::cholesky(g);  // Sigma_g = L L^T
  auto m = torch::mm(torch::mm(L.t(), weight_second_moment(w)), L);
  torch::Tensor values, q;
  sorted_eigh(m, values, q);
  LayerTransform t;
  t.U = torch::mm(L, q);
  // S = U^-T = L^-T Q: solve L^T S = Q.
  t.S = torch::linalg::solve_triangular(L.t().contiguous(), q, /*upper=*/true, /*left=*/true, /*unitriangular=*/false);
  // One scalar per layer so that ||S||_F^2 = n: keeps S and T near unit scale whatever the
  // gradients' magnitude, without changing either identity's diagonal form.
  const double scale = std::sqrt((double)n / t.S.pow(2).sum().item<double>());
  t.S = t.S * scale;
  t.U = t.U / scale;
  t.importance = values.clamp_min(0.0);
  return t;
}

}  // namespace bb
