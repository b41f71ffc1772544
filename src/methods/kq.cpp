// Kernel Quantization (KQ), Yu, Shi, Huang, Yu, arXiv 2003.05148. See docs/methods/kq.md.
//
// Per layer, by role:
//   kernel     conv with K > 1: the C_out*C_in kernels are K*K vectors; k-means (k-means++,
//              subsampled training, all kernels assigned) gives a codebook of min(2^b, n) kernels,
//              its entries are put on a codebook_bits uniform grid (per-layer scale), and Lloyd
//              continues on that grid so every kernel ends assigned to its nearest *quantized*
//              codeword.
//   pointwise  1x1 conv, fc: linear layer: the same with d = 1 (a scalar codebook; "weight level").
//   kept       left in float (not returned; the pipeline stores it).
// Index widths come from index_bits / pointwise_bits / fc_bits, or, with target_bpw > 0, from a
// Lagrangian allocation (quant/rd_alloc.h) over per-layer candidates whose rate is the exact
// serialised size of the candidate's record and whose distortion is the layer-output error on
// calibration inputs (or the weight MSE). With sequential (the default) every quantized layer is
// then clustered again at its width, in network order, from its FP-output target (quant/gptq.h's
// gptq_fp_target on the partially quantized network's inputs).
//
// The implementation is split by concern (src/methods/kq_internal.h): this file holds the
// parameters, the algorithm (codebook training and assignment, candidates, allocation) and the
// method; kq_format.cpp the record format, kq_calib.cpp the calibration tap, kq_finetune.cpp the
// codebook fine-tuning.
#include "methods/kq.h"

#include "coding/bbz.h"
#include "coding/bytes.h"
#include "coding/symbols.h"
#include "common/error.h"
#include "common/log.h"
#include "common/timer.h"
#include "methods/finetune_params.h"
#include "methods/kq_internal.h"
#include "methods/method.h"
#include "quant/activations.h"
#include "quant/gptq.h"
#include "quant/kmeans.h"
#include "quant/rd_alloc.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

namespace bb {

static const FinetuneDecl kKqFinetune{kFtEpochs | kFtLr | kFtBatch | kFtMaxImages | kFtMode | kFtTemperature,
                                      "the codebooks", "(Adam)"};

void KqParams::bind(ParamBinder& b) {
  b.field("index_bits", index_bits, "kernel index width b for conv layers with K>1 (codebook of min(2^b, #kernels) kernels)");
  b.field("codebook_bits", codebook_bits, "bits per codebook entry on a uniform per-layer grid (2..16; 32 = float32)");
  b.field("pointwise_bits", pointwise_bits, "weight-level index width for 1x1 convs (0 = keep float)");
  b.field("fc_bits", fc_bits, "weight-level index width for linear layers (0 = keep float)");
  b.field("first_conv", first_conv, "the network's first conv", {"keep", "kq"});
  b.field("kernel_mode", kernel_mode, "plain k-means on kernels, or gain_shape (unit-norm shapes + per-kernel gain index)",
          {"plain", "gain_shape"});
  b.field("gain_bits", gain_bits, "gain_shape: bits of the per-kernel gain index (1..8)");
  b.field("kmeans_iters", kmeans_iters, "Lloyd iterations of the float k-means");
  b.field("max_points_per_centroid", max_points_per_centroid, "k-means trains on at most k*this vectors (all are assigned)");
  b.field("grid_iters", grid_iters, "Lloyd iterations on the quantized codebook grid");
  b.field("kmeans_metric", kmeans_metric,
          "clustering distance: weight = Euclidean (plain k-means); output = each kernel's layer-output error after "
          "the following BN on calibration inputs, s^2 (w-c)^T H_c (w-c), Lloyd iterations from the Euclidean "
          "solution (plain kernel_mode only)",
          {"weight", "output"});
  b.field("coder", coder, "index stream coder", {"fixed", "huffman", "rans"});
  b.field("target_bpw", target_bpw, "if > 0: choose per-layer index widths by Lagrangian allocation to hit this rate");
  b.field("target_scope", target_scope, "what target_bpw counts: all conv+linear weights, or conv weights only",
          {"all", "conv"});
  b.field("alloc_proxy", alloc_proxy,
          "allocation distortion: mse = weight MSE; output = layer-output error on calibration inputs after the "
          "following BN's scale |gamma|/sigma; output_prebn = the same before the BN",
          {"output", "output_prebn", "mse"});
  b.field("alloc_min_bits", alloc_min_bits, "smallest candidate index width in the allocation");
  b.field("alloc_max_bits", alloc_max_bits, "largest candidate index width in the allocation");
  b.field("calib_images", calib_images, "calibration images for the output proxy, the k-means metric and sequential");
  b.field("sequential", sequential,
          "after the widths are chosen, re-cluster every quantized layer at its width in network order, fitted to the "
          "FP network's layer output from the inputs of the network whose earlier layers are quantized: V = argmin "
          "||X_fp W^T - X V^T||^2 + ridge ||V - W||^2 clustered under X's metric (not in the paper)");
  b.identity_neutral("sequential", false);
  bind_finetune(b, finetune, kKqFinetune);
  b.renamed("finetune_loss", "use finetune_mode=labels|distill (ce -> labels, kd -> distill)");
  b.renamed("finetune_kd_temperature", "use finetune_temperature");
}

void KqParams::validate() {
  auto where = std::string("method 'kq': ");
  BB_CHECK(index_bits >= 1 && index_bits <= 16, where, "index_bits must be in 1..16, got ", index_bits);
  BB_CHECK((codebook_bits >= 2 && codebook_bits <= 16) || codebook_bits == 32, where,
           "codebook_bits must be in 2..16 or 32 (float), got ", codebook_bits);
  BB_CHECK(pointwise_bits >= 0 && pointwise_bits <= 16, where, "pointwise_bits must be in 0..16, got ", pointwise_bits);
  BB_CHECK(fc_bits >= 0 && fc_bits <= 16, where, "fc_bits must be in 0..16, got ", fc_bits);
  BB_CHECK(gain_bits >= 1 && gain_bits <= 8, where, "gain_bits must be in 1..8, got ", gain_bits);
  BB_CHECK(kmeans_iters >= 0, where, "kmeans_iters must be >= 0");
  BB_CHECK(max_points_per_centroid >= 1, where, "max_points_per_centroid must be >= 1");
  BB_CHECK(grid_iters >= 0, where, "grid_iters must be >= 0");
  BB_CHECK(target_bpw >= 0, where, "target_bpw must be >= 0");
  BB_CHECK(alloc_min_bits >= 1 && alloc_min_bits <= alloc_max_bits && alloc_max_bits <= 16, where,
           "need 1 <= alloc_min_bits <= alloc_max_bits <= 16, got ", alloc_min_bits, "..", alloc_max_bits);
  BB_CHECK(calib_images >= 1, where, "calib_images must be >= 1");
  BB_CHECK(kmeans_metric == "weight" || kernel_mode == "plain", where,
           "kmeans_metric=output needs kernel_mode=plain (gain_shape clusters unit-norm shapes)");
  validate_finetune(finetune, kKqFinetune, where);
}

namespace kq {

// ---------------------------------------------------------------------------------------------
// Codebook grid

static int grid_lo(int bits) { return -(1 << (bits - 1)); }
static int grid_hi(int bits) { return (1 << (bits - 1)) - 1; }

torch::Tensor to_grid(const torch::Tensor& v, float scale, int bits) {
  return torch::round(v / scale).clamp(grid_lo(bits), grid_hi(bits)).to(torch::kInt32);
}

static torch::Tensor from_grid(const torch::Tensor& q, float scale) { return q.to(torch::kFloat32) * scale; }

float grid_scale(const torch::Tensor& cb, const torch::Tensor& counts, int bits) {
  torch::NoGradGuard ng;
  const double lo = cb.min().item<double>(), hi = cb.max().item<double>();
  // The scale at which the extreme entries just reach the ends of the grid.
  double s0 = std::max(-lo / -grid_lo(bits), hi / grid_hi(bits));
  if (!(s0 > 0)) return 1.0f;  // all-zero codebook: any scale represents it
  auto w = counts.to(torch::kFloat32).reshape({-1, 1});
  float best_s = (float)s0;
  double best_e = 1e300;
  // Clipping the few largest entries can pay for a finer step for all others.
  for (double r : {1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5}) {
    float s = (float)(s0 * r);
    double e = ((from_grid(to_grid(cb, s, bits), s) - cb).pow(2) * w).sum().item<double>();
    if (e < best_e) {
      best_e = e;
      best_s = s;
    }
  }
  return best_s;
}

torch::Tensor LayerCode::codebook() const {
  return codebook_bits == 32 ? codebook_f : from_grid(codebook_q, scale);
}

torch::Tensor reconstruct(const LayerCode& c) {
  torch::NoGradGuard ng;
  auto w = c.codebook().index_select(0, c.idx);
  if (c.gain_bits > 0) w = w * c.gains.index_select(0, c.gain_idx).unsqueeze(1);
  return w;
}

// ---------------------------------------------------------------------------------------------
// Quantization of one layer's vectors

namespace {

float round_fp16(float v) { return half_to_float(float_to_half(v)); }

// Nearest codeword; scalar codebooks (d = 1) by binary search, which is exact and O(n log k).
torch::Tensor nearest(const torch::Tensor& x, const torch::Tensor& cb) {
  if (cb.size(1) != 1) return assign_nearest(x, cb).first;
  auto flat = cb.flatten();
  auto sorted = flat.sort();
  auto vals = std::get<0>(sorted), order = std::get<1>(sorted);
  if (vals.numel() == 1) return torch::zeros({x.size(0)}, torch::kInt64);
  auto mids = (vals.slice(0, 1) + vals.slice(0, 0, -1)) * 0.5f;
  auto pos = torch::bucketize(x.flatten(), mids);
  return order.index_select(0, pos);
}

// Deterministic training subset of at most m rows.
torch::Tensor subsample(const torch::Tensor& x, int64_t m, uint64_t seed) {
  const int64_t n = x.size(0);
  if (n <= m) return x;
  std::vector<int64_t> idx = sample_indices(n, m, seed);
  return x.index_select(0, torch::tensor(idx, torch::kInt64));
}

ClusteringResult float_kmeans(const torch::Tensor& x, int64_t k, const QuantOptions& o) {
  ClusteringParams cp;
  cp.niter = o.kmeans_iters;
  cp.seed = o.seed;
  cp.max_splits_per_iter = (int)std::min<int64_t>(k, 1 << 16);  // bounded repair per iteration
  auto train = subsample(x, k * (int64_t)o.max_points_per_centroid, o.seed ^ 0x9e3779b97f4a7c15ULL);
  return kmeans(train, k, cp);
}

// ---- output-aware clustering (QuantOptions::metric) ----

struct MetricShape {
  int64_t groups = 0, rows = 0, d = 0;
};

MetricShape metric_shape(const torch::Tensor& x, const QuantOptions& o) {
  MetricShape m;
  m.d = x.size(1);
  m.groups = o.metric.size(0);
  BB_CHECK(o.metric.dim() == 3 && o.metric.size(1) == m.d && o.metric.size(2) == m.d, "kq: metric must be groups x ",
           m.d, " x ", m.d, ", got ", o.metric.sizes());
  BB_CHECK(m.groups > 0 && x.size(0) % m.groups == 0, "kq: ", x.size(0), " vectors are not rows x ", m.groups, " groups");
  m.rows = x.size(0) / m.groups;
  BB_CHECK(o.row_weight.defined() && o.row_weight.numel() == m.rows, "kq: row_weight must have ", m.rows, " entries");
  return m;
}

// Per-group lower factor L_c (float32) with metric[c] + eps I = L_c L_c^T, so e^T M_c e = |e^T L_c|^2.
// eps (1e-6 of the mean diagonal over all groups) keeps groups the calibration inputs never excite
// (M_c = 0) positive definite; their vectors then go to the Euclidean-nearest codeword.
torch::Tensor metric_factors(const torch::Tensor& M) {
  const int64_t d = M.size(1);
  const double eps = std::max(M.diagonal(0, 1, 2).mean().item<double>(), 1e-30) * 1e-6;
  auto res = torch::linalg_cholesky_ex(M.to(torch::kFloat64) + eps * torch::eye(d, torch::kFloat64));
  BB_CHECK(std::get<1>(res).max().item<int64_t>() == 0, "kq: a metric block is not positive semi-definite");
  return std::get<0>(res).to(torch::kFloat32).contiguous();
}

// The metric-weighted centre of each codeword's members, argmin_c sum_i r_o(i) (w_i - c)^T M_c(i) (w_i - c)
// = (sum r M)^-1 (sum r M w); a small ridge towards `prev` keeps the directions no member's metric sees.
std::pair<torch::Tensor, torch::Tensor> metric_means(const torch::Tensor& x, const torch::Tensor& assign, int64_t k,
                                                     const QuantOptions& o, const torch::Tensor& prev) {
  const MetricShape s = metric_shape(x, o);
  auto M = o.metric.to(torch::kFloat64);
  auto r = o.row_weight.to(torch::kFloat64);
  auto X = x.to(torch::kFloat64).reshape({s.rows, s.groups, 1, s.d});
  auto Y = torch::matmul(X, M).reshape({-1, s.d}) * r.repeat_interleave(s.groups).unsqueeze(1);  // r M w per vector
  auto num = torch::zeros({k, s.d}, torch::kFloat64).index_add_(0, assign, Y);
  auto group = torch::arange(s.groups, torch::kInt64).repeat({s.rows});
  auto wkc = torch::zeros({k * s.groups}, torch::kFloat64)
                 .index_add_(0, assign * s.groups + group, r.repeat_interleave(s.groups))
                 .reshape({k, s.groups});
  auto den = torch::mm(wkc, M.reshape({s.groups, s.d * s.d})).reshape({k, s.d, s.d});  // sum r M per codeword
  auto nonempty = torch::bincount(assign, {}, k) > 0;
  auto lam = den.diagonal(0, 1, 2).mean(1) * 1e-9 + 1e-200;  // k
  auto eye = torch::eye(s.d, torch::kFloat64);
  auto A = den + lam.view({k, 1, 1}) * eye;
  auto b = num + lam.unsqueeze(1) * prev.to(torch::kFloat64);
  auto c = torch::linalg_solve(A, b.unsqueeze(2)).squeeze(2);
  return {c.to(torch::kFloat32), nonempty};
}

void quantize_plain_metric(const torch::Tensor& x, const QuantOptions& o, LayerCode& c) {
  auto cb = float_kmeans(x, c.k, o).centroids.contiguous();
  torch::Tensor a = metric_nearest(x, cb, o);
  for (int it = 0; it < o.kmeans_iters; ++it) {
    auto [mean, nonempty] = metric_means(x, a, c.k, o, cb);
    cb = torch::where(nonempty.unsqueeze(1), mean, cb);
    auto a2 = metric_nearest(x, cb, o);
    const bool same = a2.equal(a);
    a = a2;
    if (same) break;
  }
  if (o.codebook_bits == 32) {
    c.codebook_f = cb;
    c.idx = a;
    return;
  }
  c.scale = grid_scale(cb, torch::bincount(a, {}, c.k), o.codebook_bits);
  c.codebook_q = to_grid(cb, c.scale, o.codebook_bits);
  // Lloyd on the grid under the metric: the rounded metric centre is not always the best grid
  // point, so an iteration is kept only when it lowers the metric error.
  a = metric_nearest(x, c.codebook(), o);
  double err = metric_error(x, c.codebook().index_select(0, a), o);
  for (int it = 0; it < o.grid_iters; ++it) {
    auto [mean, nonempty] = metric_means(x, a, c.k, o, c.codebook());
    auto q2 = torch::where(nonempty.unsqueeze(1), to_grid(mean, c.scale, o.codebook_bits), c.codebook_q);
    auto cb2 = from_grid(q2, c.scale);
    auto a2 = metric_nearest(x, cb2, o);
    const double e2 = metric_error(x, cb2.index_select(0, a2), o);
    if (!(e2 < err)) break;
    c.codebook_q = q2;
    a = a2;
    err = e2;
  }
  c.idx = a;
}

void quantize_plain(const torch::Tensor& x, const QuantOptions& o, LayerCode& c) {
  if (o.metric.defined()) return quantize_plain_metric(x, o, c);
  auto km = float_kmeans(x, c.k, o);
  if (o.codebook_bits == 32) {
    c.codebook_f = km.centroids.contiguous();
    c.idx = nearest(x, c.codebook_f);
    return;
  }
  auto counts = torch::bincount(nearest(x, km.centroids), {}, c.k);
  c.scale = grid_scale(km.centroids, counts, o.codebook_bits);
  c.codebook_q = to_grid(km.centroids, c.scale, o.codebook_bits);
  // Lloyd on the grid: for a fixed assignment, the grid point nearest to the members' mean is
  // the best grid point per coordinate, so the error never increases.
  for (int it = 0; it < o.grid_iters; ++it) {
    auto a = nearest(x, c.codebook());
    auto [mean, nonempty] = cluster_means(x, a, c.k);
    c.codebook_q = torch::where(nonempty.unsqueeze(1), to_grid(mean, c.scale, o.codebook_bits), c.codebook_q);
  }
  c.idx = nearest(x, c.codebook());
}

// Joint nearest (codeword j, gain g) for w ~ g * c_j: for each j the best gain on the sorted gain
// list is the one nearest to <w,c_j>/||c_j||^2 (the error is a parabola in g).
std::pair<torch::Tensor, torch::Tensor> nearest_gain_shape(const torch::Tensor& x, const torch::Tensor& cb,
                                                           const torch::Tensor& gains_sorted) {
  const int64_t chunk = distance_chunk(cb.size(0) * 4);  // a few m x k temporaries per block
  const int64_t n = x.size(0);
  auto idx = torch::empty({n}, torch::kInt64), gidx = torch::empty({n}, torch::kInt64);
  auto cn = cb.pow(2).sum(1);                      // k
  auto inv = torch::where(cn > 0, 1.0f / cn.clamp_min(1e-30f), torch::zeros_like(cn));
  auto cbt = cb.t().contiguous();
  const int64_t G = gains_sorted.numel();
  auto mids = G > 1 ? ((gains_sorted.slice(0, 1) + gains_sorted.slice(0, 0, -1)) * 0.5f).contiguous() : torch::Tensor();
  for (int64_t s = 0; s < n; s += chunk) {
    int64_t e = std::min(n, s + chunk);
    auto dots = torch::mm(x.slice(0, s, e), cbt);  // m x k
    auto gi = G > 1 ? torch::bucketize(dots * inv, mids) : torch::zeros_like(dots, torch::kInt64);
    auto g = gains_sorted.index({gi});
    auto err = g * g * cn - 2.0f * g * dots;  // + ||w||^2, constant per row
    auto mn = err.min(1);
    auto j = std::get<1>(mn);
    idx.slice(0, s, e).copy_(j);
    gidx.slice(0, s, e).copy_(gi.gather(1, j.unsqueeze(1)).squeeze(1));
  }
  return {idx, gidx};
}

void quantize_gain_shape(const torch::Tensor& x, const QuantOptions& o, LayerCode& c) {
  const int64_t G = int64_t(1) << o.gain_bits;
  auto norms = x.norm(2, 1);
  auto shapes = x / norms.clamp_min(1e-30f).unsqueeze(1);  // zero kernels stay zero
  auto km = float_kmeans(shapes, c.k, o);
  auto quantize_cb = [&](const torch::Tensor& cbf, const torch::Tensor& counts) {
    if (o.codebook_bits == 32) {
      c.codebook_f = cbf.contiguous();
    } else {
      c.scale = grid_scale(cbf, counts, o.codebook_bits);
      c.codebook_q = to_grid(cbf, c.scale, o.codebook_bits);
    }
  };
  auto a0 = nearest(shapes, km.centroids);
  quantize_cb(km.centroids, torch::bincount(a0, {}, c.k));
  // Initial gains: optimal per-kernel gain for its nearest shape, clustered into G scalars.
  auto cbq = c.codebook();
  auto cj = cbq.index_select(0, a0);
  auto gstar = (x * cj).sum(1) / cj.pow(2).sum(1).clamp_min(1e-30f);
  ClusteringParams gp;
  gp.niter = o.kmeans_iters;
  gp.seed = o.seed + 17;
  auto gk = kmeans(subsample(gstar.unsqueeze(1), G * (int64_t)o.max_points_per_centroid, o.seed + 18), G, gp);
  auto set_gains = [&](const torch::Tensor& g) {
    auto gs = std::get<0>(g.flatten().sort()).contiguous();
    auto acc = gs.accessor<float, 1>();
    for (int64_t i = 0; i < gs.numel(); ++i) acc[i] = round_fp16(acc[i]);  // stored as fp16
    c.gains = gs;
  };
  set_gains(gk.centroids);
  for (int it = 0; it <= o.grid_iters; ++it) {
    auto [idx, gidx] = nearest_gain_shape(x, c.codebook(), c.gains);
    c.idx = idx;
    c.gain_idx = gidx;
    if (it == o.grid_iters) break;
    // Shapes: argmin_c sum ||w_i - g_i c||^2 = sum g_i w_i / sum g_i^2, rounded to the grid.
    auto g = c.gains.index_select(0, gidx).to(torch::kFloat64);
    auto num = torch::zeros({c.k, c.d}, torch::kFloat64).index_add_(0, idx, x.to(torch::kFloat64) * g.unsqueeze(1));
    auto den = torch::zeros({c.k}, torch::kFloat64).index_add_(0, idx, g * g);
    auto nonempty = (den > 0).unsqueeze(1);
    auto shape_new = (num / den.clamp_min(1e-300).unsqueeze(1)).to(torch::kFloat32);
    if (o.codebook_bits == 32) {
      c.codebook_f = torch::where(nonempty, shape_new, c.codebook_f);
    } else {
      c.codebook_q = torch::where(nonempty, to_grid(shape_new, c.scale, o.codebook_bits), c.codebook_q);
    }
    // Gains: argmin_g sum ||w_i - g c_i||^2 = sum <w_i,c_i> / sum ||c_i||^2 over the gain's members.
    auto cbn = c.codebook().index_select(0, idx);
    auto num_g = torch::zeros({G}, torch::kFloat64).index_add_(0, gidx, (x * cbn).sum(1).to(torch::kFloat64));
    auto den_g = torch::zeros({G}, torch::kFloat64).index_add_(0, gidx, cbn.pow(2).sum(1).to(torch::kFloat64));
    auto newg = torch::where(den_g > 0, num_g / den_g.clamp_min(1e-300), c.gains.to(torch::kFloat64)).to(torch::kFloat32);
    set_gains(newg);
  }
}

}  // namespace

double metric_error(const torch::Tensor& x, const torch::Tensor& rec, const QuantOptions& o) {
  torch::NoGradGuard ng;
  auto e = (x.to(torch::kFloat64) - rec.to(torch::kFloat64));
  if (!o.metric.defined()) return e.pow(2).sum().item<double>();
  const MetricShape s = metric_shape(x, o);
  auto E = e.reshape({s.rows, s.groups, 1, s.d});
  auto q = (torch::matmul(E, o.metric.to(torch::kFloat64)) * E).sum({2, 3});  // rows x groups
  return (q * o.row_weight.to(torch::kFloat64).unsqueeze(1)).sum().item<double>();
}

torch::Tensor metric_nearest_ref(const torch::Tensor& x_in, const torch::Tensor& cb_in, const QuantOptions& o) {
  torch::NoGradGuard ng;
  auto x = x_in.to(torch::kFloat64).contiguous(), cb = cb_in.to(torch::kFloat64).contiguous();
  const int64_t n = x.size(0), d = x.size(1), k = cb.size(0);
  const int64_t groups = o.metric.defined() ? metric_shape(x_in, o).groups : 1;
  auto M = o.metric.defined() ? o.metric.to(torch::kFloat64).contiguous() : torch::eye(d, torch::kFloat64).unsqueeze(0);
  auto out = torch::empty({n}, torch::kInt64);
  const double* xp = x.data_ptr<double>();
  const double* cp = cb.data_ptr<double>();
  const double* mp = M.data_ptr<double>();
  std::vector<double> e(d);
  for (int64_t i = 0; i < n; ++i) {
    const double* m = mp + (o.metric.defined() ? (i % groups) : 0) * d * d;
    double best = 1e300;
    int64_t arg = 0;
    for (int64_t j = 0; j < k; ++j) {
      for (int64_t a = 0; a < d; ++a) e[a] = xp[i * d + a] - cp[j * d + a];
      double v = 0;
      for (int64_t a = 0; a < d; ++a)
        for (int64_t b = 0; b < d; ++b) v += e[a] * m[a * d + b] * e[b];
      if (v < best) {
        best = v;
        arg = j;
      }
    }
    out[i] = arg;
  }
  return out;
}

torch::Tensor metric_nearest(const torch::Tensor& x, const torch::Tensor& cb, const QuantOptions& o) {
  torch::NoGradGuard ng;
  // Without a metric, or for scalars (a positive weight does not move the nearest scalar): Euclidean.
  if (!o.metric.defined() || x.size(1) == 1) return nearest(x, cb);
  const MetricShape s = metric_shape(x, o);
  const int64_t k = cb.size(0);
  auto L = metric_factors(o.metric);
  auto P = x.to(torch::kFloat32).reshape({s.rows, s.groups, s.d}).transpose(0, 1);  // groups x rows x d
  auto out = torch::empty({s.rows, s.groups}, torch::kInt64);
  const int64_t chunk = std::max<int64_t>(1, (int64_t)(8 << 20) / std::max<int64_t>(1, s.rows * k));
  auto cb3 = cb.to(torch::kFloat32).unsqueeze(0);
  for (int64_t g0 = 0; g0 < s.groups; g0 += chunk) {
    const int64_t g1 = std::min(s.groups, g0 + chunk);
    auto Lg = L.slice(0, g0, g1);
    auto T = torch::bmm(P.slice(0, g0, g1), Lg);  // transformed vectors, g x rows x d
    auto C = torch::matmul(cb3, Lg);              // transformed codewords, g x k x d
    auto dist = C.pow(2).sum(2).unsqueeze(1) - 2.0f * torch::bmm(T, C.transpose(1, 2));  // + |T|^2, constant
    out.slice(1, g0, g1).copy_(std::get<1>(dist.min(2)).t());
  }
  return out.reshape({-1});
}

LayerCode quantize_vectors(const torch::Tensor& x_in, const QuantOptions& o) {
  torch::NoGradGuard ng;
  BB_CHECK(x_in.dim() == 2 && x_in.size(0) > 0, "kq: expects a non-empty n x d matrix");
  BB_CHECK(o.k >= 1, "kq: codebook size must be >= 1");
  auto x = x_in.to(torch::kFloat32).contiguous();
  LayerCode c;
  c.d = x.size(1);
  c.k = std::min<int64_t>(o.k, x.size(0));  // more codewords than vectors buys nothing
  c.codebook_bits = o.codebook_bits;
  if (o.gain_shape) {
    c.gain_bits = o.gain_bits;
    quantize_gain_shape(x, o, c);
  } else {
    quantize_plain(x, o, c);
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Layer roles and the nominal (paper-convention) rate

LayerRole layer_role(const Model& m, int li, const KqParams& p) {
  const Layer& l = m.layers()[li];
  if (!l.is_conv()) return p.fc_bits > 0 ? LayerRole::fc : LayerRole::kept;
  bool first = true;
  for (int j = 0; j < li; ++j) first &= !m.layers()[j].is_conv();
  if (first && p.first_conv == "keep") return LayerRole::first_conv_kept;
  if (l.kernel_h() * l.kernel_w() == 1) return p.pointwise_bits > 0 ? LayerRole::pointwise : LayerRole::kept;
  return LayerRole::kernel;
}

static int64_t vec_dim(const std::vector<int64_t>& shape, LayerRole role) {
  return role == LayerRole::kernel ? shape[2] * shape[3] : 1;
}

NominalRate nominal_layer_rate(const std::vector<int64_t>& shape, LayerRole role, int bits, const KqParams& p) {
  NominalRate r;
  r.weights = 1;
  for (auto s : shape) r.weights *= s;
  if (role == LayerRole::kept || role == LayerRole::first_conv_kept) {
    r.codebook_bits = 0;
    r.index_bits = 32.0 * r.weights;  // float32, the paper's full-precision convention
    return r;
  }
  const int64_t d = vec_dim(shape, role), n = r.weights / d;
  const int64_t k = std::min<int64_t>(int64_t(1) << bits, n);
  const bool gs = role == LayerRole::kernel && p.kernel_mode == "gain_shape";
  r.index_bits = (double)n * (index_width(k) + (gs ? p.gain_bits : 0));
  r.codebook_bits = (double)k * d * p.codebook_bits + (p.codebook_bits == 32 ? 0 : 32) + (gs ? 16.0 * (1 << p.gain_bits) : 0);
  return r;
}

static int fixed_bits_for(LayerRole role, const KqParams& p) {
  switch (role) {
    case LayerRole::kernel: return p.index_bits;
    case LayerRole::pointwise: return p.pointwise_bits;
    case LayerRole::fc: return p.fc_bits;
    default: return 0;
  }
}

NominalRate nominal_model_rate(const Model& m, const KqParams& p, bool conv_only) {
  NominalRate t;
  for (int i = 0; i < (int)m.layers().size(); ++i) {
    const Layer& l = m.layers()[i];
    if (conv_only && !l.is_conv()) continue;
    auto role = layer_role(m, i, p);
    auto r = nominal_layer_rate(l.weight().sizes().vec(), role, fixed_bits_for(role, p), p);
    t.weights += r.weights;
    t.index_bits += r.index_bits;
    t.codebook_bits += r.codebook_bits;
  }
  return t;
}

}  // namespace kq

// =============================================================================================
// The method: layer roles -> each quantized layer's code (fixed widths, or candidates and a
// Lagrangian allocation for target_bpw) -> optional codebook fine-tuning -> records.

namespace {

uint64_t layer_seed(uint64_t seed, const std::string& name, int bits) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a of the layer name: seeds independent of layer order
  for (char ch : name) h = (h ^ (uint8_t)ch) * 1099511628211ULL;
  return seed * 0x9e3779b97f4a7c15ULL + h + (uint64_t)bits * 7919;
}

bool is_quantized(kq::LayerRole r) {
  return r == kq::LayerRole::kernel || r == kq::LayerRole::pointwise || r == kq::LayerRole::fc;
}

// One layer's code at one index width, its record, and (for the allocation) its rate and distortion.
struct Candidate {
  int bits = 0;
  kq::LayerCode code;
  LayerRecord rec;
  double rate_bits = 0, distortion = 0;
};

class KqMethod : public Method {
 public:
  std::string name() const override { return "kq"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override {
    return (p_.target_bpw > 0 && p_.alloc_proxy != "mse") || p_.kmeans_metric == "output" || p_.finetune.epochs > 0 ||
           p_.sequential;
  }

  std::vector<LayerRecord> compress(CompressContext& ctx) override;

  torch::Tensor decode(const LayerRecord& rec) const override {
    return kq::reconstruct(kq::decode_record(rec)).reshape(rec.shape);
  }

 private:
  KqParams p_;

  // kmeans_metric=output: layer i's metric (the diagonal d x d blocks of its input Gram H, one per
  // input channel) and row weights (the following BN's scale squared; 1 without a BN).
  void set_metric(const Model& model, int i, kq::LayerRole role, const torch::Tensor& H, kq::QuantOptions& o) const {
    if (p_.kmeans_metric != "output") return;
    const Layer& l = model.layers()[i];
    BB_CHECK(H.defined(), "kq: no calibration statistics for layer '", l.name, "' (kmeans_metric=output)");
    const int64_t d = role == kq::LayerRole::kernel ? l.kernel_h() * l.kernel_w() : 1;
    const int64_t D = H.size(0), G = D / d;
    BB_CHECK(G * d == D && G * d * l.out_features() == l.weight().numel(), "kq: layer '", l.name,
             "': input Gram of size ", D, " does not match its weight");
    o.metric = H.to(torch::kFloat64).reshape({G, d, G, d}).diagonal(0, 0, 2).permute({2, 0, 1}).contiguous();
    auto s = model.bn_scale(i);
    o.row_weight = s.defined() ? s.to(torch::kFloat64).pow(2).contiguous()
                               : torch::ones({l.out_features()}, torch::kFloat64);
  }

  Candidate make_candidate(const Model& model, int i, kq::LayerRole role, int bits, uint64_t seed,
                           const torch::Tensor& H = {}) const {
    const Layer& l = model.layers()[i];
    auto W = l.weight().detach().to(torch::kFloat32);
    auto shape = W.sizes().vec();
    const int64_t d = role == kq::LayerRole::kernel ? shape[2] * shape[3] : 1;
    kq::QuantOptions o;
    o.k = int64_t(1) << bits;
    o.codebook_bits = p_.codebook_bits;
    o.gain_shape = role == kq::LayerRole::kernel && p_.kernel_mode == "gain_shape";
    o.gain_bits = p_.gain_bits;
    o.kmeans_iters = p_.kmeans_iters;
    o.max_points_per_centroid = p_.max_points_per_centroid;
    o.grid_iters = p_.grid_iters;
    o.seed = layer_seed(seed, l.name, bits);
    set_metric(model, i, role, H, o);
    Candidate c;
    c.bits = bits;
    c.code = kq::quantize_vectors(W.reshape({-1, d}), o);
    c.rec = kq::encode_record(l.name, shape, c.code, parse_coder(p_.coder));
    return c;
  }

  // Fixed index widths (index_bits / pointwise_bits / fc_bits) for every quantized layer.
  void choose_fixed(CompressContext& ctx, const std::vector<kq::LayerRole>& roles, std::vector<Candidate>& chosen) const;
  // target_bpw: candidates per layer, Lagrangian allocation on their exact record sizes.
  void choose_for_target(CompressContext& ctx, const std::vector<kq::LayerRole>& roles,
                         std::vector<Candidate>& chosen);
  // The index widths lo..hi the allocation may give layer i (alloc_min_bits..alloc_max_bits,
  // capped by the layer's size and, for weight-level layers, by codebook_bits).
  std::pair<int, int> candidate_widths(const Model& model, int i, kq::LayerRole role) const;
  // Layer i's candidates at the given index widths, each with its rate (file bits) and its
  // distortion under alloc_proxy (H, rows: the layer's input Gram matrix, for the output proxies).
  std::vector<Candidate> layer_candidates(Model& model, int i, kq::LayerRole role, const torch::Tensor& H, int64_t rows,
                                          uint64_t seed, const std::vector<int>& widths) const;
  // The candidates cache of choose_for_target: its key and file (ctx.cache_dir; "" = none).
  std::pair<std::string, std::string> candidates_cache(const CompressContext& ctx);
  // sequential: each quantized layer's code again at its chosen width, in network order, fitted
  // to the FP layer output from the partially quantized network's inputs.
  void refit_sequential(CompressContext& ctx, const std::vector<kq::LayerRole>& roles, std::vector<Candidate>& chosen) const;
  // Codebook fine-tuning (kq_finetune.cpp) of the chosen codes, records re-encoded.
  void finetune(CompressContext& ctx, std::vector<Candidate>& chosen) const;
};

std::vector<LayerRecord> KqMethod::compress(CompressContext& ctx) {
  torch::NoGradGuard ng;
  BB_CHECK(ctx.model, "kq: no model");
  Model& model = *ctx.model;
  const auto& layers = model.layers();
  const int L = (int)layers.size();
  std::vector<kq::LayerRole> roles(L);
  for (int i = 0; i < L; ++i) roles[i] = kq::layer_role(model, i, p_);

  std::vector<Candidate> chosen(L);
  if (p_.target_bpw <= 0) {
    choose_fixed(ctx, roles, chosen);
  } else {
    choose_for_target(ctx, roles, chosen);
  }
  if (p_.sequential) {
    ctx.phase("sequential");
    refit_sequential(ctx, roles, chosen);
  }
  if (p_.finetune.epochs > 0) {
    ctx.phase("finetune");
    finetune(ctx, chosen);
  }
  ctx.phase("encode");

  std::vector<LayerRecord> out;
  for (int i = 0; i < L; ++i) {
    if (!is_quantized(roles[i])) continue;
    layers[i].weight().copy_(kq::reconstruct(chosen[i].code).reshape(layers[i].weight().sizes()));
    out.push_back(std::move(chosen[i].rec));
  }
  return out;
}

void KqMethod::choose_fixed(CompressContext& ctx, const std::vector<kq::LayerRole>& roles,
                            std::vector<Candidate>& chosen) const {
  const auto& layers = ctx.model->layers();
  kq::InputGrams grams;
  grams.H.resize(layers.size());
  if (p_.kmeans_metric == "output") {
    BB_CHECK(ctx.calib, "kq: kmeans_metric=output needs a calibration set (--calib)");
    ctx.phase("calibration");
    std::vector<bool> wanted(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) wanted[i] = is_quantized(roles[i]);
    grams = kq::collect_input_grams(*ctx.model, *ctx.calib, wanted, p_.calib_images, ctx.seed ^ 0xca11b);
  }
  ctx.phase("kmeans");
  for (int i = 0; i < (int)layers.size(); ++i) {
    if (!is_quantized(roles[i])) continue;
    double t0 = now_seconds();
    chosen[i] = make_candidate(*ctx.model, i, roles[i], kq::fixed_bits_for(roles[i], p_), ctx.seed, grams.H[i]);
    log_debug("kq: " + layers[i].name + " k=" + std::to_string(chosen[i].code.k) + " in " +
              std::to_string(now_seconds() - t0) + " s");
  }
}

std::pair<int, int> KqMethod::candidate_widths(const Model& model, int i, kq::LayerRole role) const {
  const Layer& l = model.layers()[i];
  const int64_t d = role == kq::LayerRole::kernel ? l.kernel_h() * l.kernel_w() : 1;
  const int64_t n = l.weight().numel() / d;
  int hi = std::min(p_.alloc_max_bits, std::max(1, kq::index_width(n)));
  if (role != kq::LayerRole::kernel && p_.codebook_bits != 32) hi = std::min(hi, p_.codebook_bits);
  return {std::min(p_.alloc_min_bits, hi), hi};
}

std::vector<Candidate> KqMethod::layer_candidates(Model& model, int i, kq::LayerRole role, const torch::Tensor& H,
                                                  int64_t rows, uint64_t seed, const std::vector<int>& widths) const {
  const Layer& l = model.layers()[i];
  const bool output_proxy = p_.alloc_proxy != "mse";
  auto W = l.weight().detach().to(torch::kFloat32).reshape({l.out_features(), -1});
  // The proxy tr(dW H dW^T) in float32 (H accumulated in float64): half the cost of a double
  // GEMM, at 512 x 4608 x 4608 per candidate the largest cost here; adjacent widths differ
  // by far more than float rounding.
  torch::Tensor Hf, row_scale;
  if (output_proxy) {
    BB_CHECK(H.defined(), "kq: no calibration statistics for layer '", l.name, "'");
    Hf = H.to(torch::kFloat32);
    // After the following BN an output channel's error is scaled by s = gamma / sigma: its
    // squared error by s^2 (undefined when no BN follows: the output as it is).
    if (p_.alloc_proxy == "output") row_scale = model.bn_scale(i);
  }
  std::vector<Candidate> out;
  for (int b : widths) {
    Candidate c = make_candidate(model, i, role, b, seed, H);
    auto dW = kq::reconstruct(c.code).reshape(W.sizes()) - W;
    if (row_scale.defined()) dW = dW * row_scale.abs().unsqueeze(1);
    if (output_proxy) {
      c.distortion = (torch::mm(dW, Hf) * dW).sum(torch::kFloat64).item<double>() / (double)rows;
    } else {
      c.distortion = dW.pow(2).sum().item<double>();
    }
    c.rate_bits = 8.0 * kq::record_file_bytes(c.rec);
    out.push_back(std::move(c));
  }
  return out;
}

namespace {

// The candidates of the allocated layers as one .bbz: every candidate record in layer order, named
// "<layer>@<width>" (a file holds one record per name), and in the provenance the key and per
// record its layer index, index width and distortion (rates are the records' sizes). The widths
// are those computed so far under the key (runs with other alloc_min_bits / alloc_max_bits add
// theirs). read_candidates: false when the file is absent; a file for another key, of other layers
// or a corrupt one is an error naming it.
void write_candidates(const std::string& path, const std::string& key, const Model& model,
                      const std::vector<std::vector<Candidate>>& cands) {
  BbzFile f;
  f.model = model.arch();
  f.provenance = {{"kq_candidates_key", key}, {"candidates", nlohmann::json::array()}};
  for (size_t i = 0; i < cands.size(); ++i)
    for (const Candidate& c : cands[i]) {
      f.provenance["candidates"].push_back({(int64_t)i, c.bits, c.distortion});
      f.layers.push_back(c.rec);
      f.layers.back().layer += "@" + std::to_string(c.bits);
    }
  write_bbz(path, f);
}

bool read_candidates(const std::string& path, const std::string& key, const Model& model, const std::vector<bool>& alloc,
                     std::vector<std::vector<Candidate>>& cands) {
  if (!std::filesystem::exists(path)) return false;
  const BbzFile f = read_bbz(path);
  const std::string what = "kq candidates cache " + path;
  BB_CHECK(f.model == model.arch() && f.provenance.value("kq_candidates_key", "") == key, what, ": key mismatch");
  const auto& list = f.provenance.at("candidates");
  BB_CHECK(list.is_array() && list.size() == f.layers.size(), what, ": candidate list does not match its records");
  const auto& layers = model.layers();
  cands.assign(layers.size(), {});
  for (size_t j = 0; j < list.size(); ++j) {
    const int64_t i = list[j].at(0).get<int64_t>();
    Candidate c;
    c.bits = list[j].at(1).get<int>();
    BB_CHECK(i >= 0 && i < (int64_t)layers.size() && alloc[i] &&
                 f.layers[j].layer == layers[i].name + "@" + std::to_string(c.bits),
             what, ": candidate ", j, " names no allocated layer");
    for (const Candidate& o : cands[i])
      BB_CHECK(o.bits != c.bits, what, ": two candidates for layer '", layers[i].name, "' at width ", c.bits);
    c.distortion = list[j].at(2).get<double>();
    c.rec = f.layers[j];
    c.rec.layer = layers[i].name;
    c.code = kq::decode_record(c.rec);
    c.rate_bits = 8.0 * kq::record_file_bytes(c.rec);
    cands[i].push_back(std::move(c));
  }
  return true;
}

}  // namespace

std::pair<std::string, std::string> KqMethod::candidates_cache(const CompressContext& ctx) {
  if (ctx.cache_dir.empty()) return {};
  // The candidates do not depend on the width range (a run computes the widths the cache lacks),
  // on the re-fit or on fine-tuning, which come after them.
  std::vector<std::string> ignored{"alloc_min_bits", "alloc_max_bits", "sequential"};
  const nlohmann::json params = ParamBinder::to_json(p_);
  for (const auto& kv : params.items())
    if (kv.key().rfind("finetune_", 0) == 0) ignored.push_back(kv.key());
  const std::string key = rate_independent_key(*this, ctx, ignored);
  return {key, (std::filesystem::path(ctx.cache_dir) / ("kq-candidates-" + key.substr(0, 32) + ".bbz")).string()};
}

void KqMethod::choose_for_target(CompressContext& ctx, const std::vector<kq::LayerRole>& roles,
                                 std::vector<Candidate>& chosen) {
  Model& model = *ctx.model;
  const auto& layers = model.layers();
  const int L = (int)layers.size();
  const bool conv_scope = p_.target_scope == "conv";
  auto in_scope = [&](int i) { return !conv_scope || layers[i].is_conv(); };
  std::vector<bool> alloc(L);
  for (int i = 0; i < L; ++i) alloc[i] = is_quantized(roles[i]) && in_scope(i);
  // The candidates depend on the FP model, the calibration images and every parameter except
  // target_bpw, the width range, the re-fit and fine-tuning: cached per (layer, index width), a
  // run at another target skips the calibration and the k-means, and one with another width range
  // computes only the widths the cache lacks (a candidate is the same whichever run computes it).
  const auto [key, cache_path] = candidates_cache(ctx);
  std::vector<std::vector<Candidate>> cands(L);  // per layer, every width known, ascending
  const bool cached = !cache_path.empty() && read_candidates(cache_path, key, model, alloc, cands);
  std::vector<std::vector<int>> missing(L);  // per allocated layer, the widths to compute
  bool any_missing = false;
  for (int i = 0; i < L; ++i) {
    if (!alloc[i]) continue;
    const auto [lo, hi] = candidate_widths(model, i, roles[i]);
    for (int b = lo; b <= hi; ++b)
      if (std::none_of(cands[i].begin(), cands[i].end(), [&](const Candidate& c) { return c.bits == b; }))
        missing[i].push_back(b);
    any_missing |= !missing[i].empty();
  }
  if (cached)
    log_info("kq: candidates from cache " + cache_path + (any_missing ? " (computing the widths it lacks)" : ""));
  bool fixed_need_grams = false;  // quantized layers outside the allocation use their fixed width
  for (int i = 0; i < L; ++i) fixed_need_grams |= is_quantized(roles[i]) && !alloc[i] && p_.kmeans_metric == "output";
  kq::InputGrams grams;
  grams.H.resize(L);
  grams.rows.assign(L, 0);
  if ((any_missing && (p_.alloc_proxy != "mse" || p_.kmeans_metric == "output")) || fixed_need_grams) {
    BB_CHECK(ctx.calib, "kq: target_bpw with alloc_proxy=", p_.alloc_proxy, " kmeans_metric=", p_.kmeans_metric,
             " needs a calibration set (--calib), or use alloc_proxy=mse kmeans_metric=weight");
    ctx.phase("calibration");
    // The candidates to compute need their layers' statistics; the metric also needs the
    // quantized layers outside the scope.
    std::vector<bool> wanted(L);
    for (int i = 0; i < L; ++i)
      wanted[i] = !missing[i].empty() || (is_quantized(roles[i]) && !alloc[i] && p_.kmeans_metric == "output");
    grams = kq::collect_input_grams(model, *ctx.calib, wanted, p_.calib_images, ctx.seed ^ 0xca11b);
  }
  ctx.phase("candidates");
  double fixed_bits = 0;
  int64_t scope_weights = 0;
  std::vector<std::vector<RdPoint>> points;
  std::vector<int> alloc_layers;
  for (int i = 0; i < L; ++i) {
    const Layer& l = layers[i];
    if (!in_scope(i)) continue;
    scope_weights += l.weight().numel();
    if (!alloc[i]) {
      if (is_quantized(roles[i])) {  // not reachable today (scope covers every quantized layer it counts)
        chosen[i] = make_candidate(model, i, roles[i], kq::fixed_bits_for(roles[i], p_), ctx.seed, grams.H[i]);
        fixed_bits += 8.0 * kq::record_file_bytes(chosen[i].rec);
      } else {
        fixed_bits += 8.0 * kq::kept_file_bytes(l);
      }
      continue;
    }
    if (!missing[i].empty()) {
      for (Candidate& c : layer_candidates(model, i, roles[i], grams.H[i], grams.rows[i], ctx.seed, missing[i]))
        cands[i].push_back(std::move(c));
      std::sort(cands[i].begin(), cands[i].end(), [](const Candidate& a, const Candidate& b) { return a.bits < b.bits; });
    }
    alloc_layers.push_back(i);
  }
  if (any_missing && !cache_path.empty()) {
    write_candidates(cache_path, key, model, cands);
    log_info("kq: cached candidates " + cache_path);
  }
  // The allocation sees each layer's widths lo..hi only, ascending.
  for (int i : alloc_layers) {
    const auto [lo, hi] = candidate_widths(model, i, roles[i]);
    cands[i].erase(std::remove_if(cands[i].begin(), cands[i].end(),
                                  [lo = lo, hi = hi](const Candidate& c) { return c.bits < lo || c.bits > hi; }),
                   cands[i].end());
    std::vector<RdPoint> pts;
    for (const Candidate& c : cands[i]) pts.push_back({c.rate_bits, c.distortion});
    points.push_back(std::move(pts));
  }
  ctx.phase("allocation");
  const double budget = p_.target_bpw * (double)scope_weights - fixed_bits;
  RdOptions ro;
  ro.fill = RdFill::best_ratio;
  ro.budget_rel_tol = 0;  // rates are whole bytes: a budget is met exactly or not at all
  const RdAllocation ar = rd_allocate(points, budget, ro);
  if (!ar.feasible) {
    const double min_bits = fixed_bits + ar.min_rate;
    BB_THROW("method 'kq': target_bpw=", p_.target_bpw, " is below the lowest rate reachable with these settings (",
             min_bits / scope_weights, " bits per ", conv_scope ? "conv" : "conv+linear", " weight)");
  }
  for (size_t a = 0; a < alloc_layers.size(); ++a) {
    int i = alloc_layers[a];
    chosen[i] = std::move(cands[i][ar.choice[a]]);
  }
  // Out-of-scope quantized layers (linear layers under target_scope=conv) use their fixed width.
  for (int i = 0; i < L; ++i)
    if (is_quantized(roles[i]) && !in_scope(i))
      chosen[i] = make_candidate(model, i, roles[i], kq::fixed_bits_for(roles[i], p_), ctx.seed, grams.H[i]);
  double achieved = (ar.rate + fixed_bits) / (double)scope_weights;
  double max_bits = fixed_bits;
  for (const auto& pts : points) {
    double m = 0;
    for (const RdPoint& q : pts) m = std::max(m, q.rate);
    max_bits += m;
  }
  const std::string unit = conv_scope ? "bpw_yu_conv" : "bpw_core";
  if (budget + fixed_bits >= max_bits)
    ctx.rate_note = "kq: the target is at or above the highest rate these settings reach, " +
                    std::to_string(max_bits / scope_weights) + " " + unit + " (every allocated layer at its widest " +
                    "candidate, alloc_max_bits=" + std::to_string(p_.alloc_max_bits) +
                    "; 1x1 convs and FC at their fixed widths); raise alloc_max_bits to go higher";
  else
    ctx.rate_note = "kq: Lagrangian allocation over per-layer index widths " + std::to_string(p_.alloc_min_bits) + ".." +
                    std::to_string(p_.alloc_max_bits) + " allocated " + std::to_string(achieved) + " " + unit +
                    " within the budget (reachable range up to " + std::to_string(max_bits / scope_weights) + ")";
  std::string widths;
  for (int i : alloc_layers) widths += " " + layers[i].name + ":" + std::to_string(chosen[i].bits);
  log_info("kq: target " + std::to_string(p_.target_bpw) + " bpw, allocated " + std::to_string(achieved) +
           " bpw (" + std::to_string(ar.lagrangian_steps) + " Lagrangian + " + std::to_string(ar.fill_steps) +
           " fill steps); widths" + widths);
}

void KqMethod::refit_sequential(CompressContext& ctx, const std::vector<kq::LayerRole>& roles,
                                std::vector<Candidate>& chosen) const {
  BB_CHECK(ctx.calib, "kq: sequential=true needs a calibration set (--calib)");
  Model& model = *ctx.model;
  const auto& layers = model.layers();
  constexpr int64_t kBatch = 64;
  constexpr double kDamp = 0.01;  // the ridge: kDamp * mean(diag H), GPTQ's default damp
  model.eval();
  const torch::Tensor images = load_calibration_images(*ctx.calib, p_.calib_images, false, ctx.seed ^ 0xca11b);
  const auto fp_inputs = capture_layer_inputs(model, images, kBatch);  // before any layer changes
  SequentialInputs inputs(model, images, kBatch);
  std::vector<torch::Tensor> fp_weights(layers.size());
  for (int i = 0; i < (int)layers.size(); ++i) {
    if (!is_quantized(roles[i])) continue;
    const Layer& l = layers[i];
    const double t0 = now_seconds();
    const torch::Tensor W = fp_weights[i] = l.weight().detach().clone();
    GptqGram g(PatchGeometry::of(l));
    g.weight = W.reshape({l.out_features(), -1});
    size_t b = 0;
    inputs.for_each(i, [&](const torch::Tensor& x, int64_t) { g.add(x, fp_inputs[i].at(b++)); });
    // Clustered from V (make_candidate reads the layer's weight), then the layer holds its
    // reconstruction for the layers after it.
    l.weight().copy_(gptq_fp_target(g.weight, g.H, g.B, kDamp).to(torch::kFloat32).reshape(W.sizes()));
    chosen[i] = make_candidate(model, i, roles[i], chosen[i].bits, ctx.seed, g.H);
    l.weight().copy_(kq::reconstruct(chosen[i].code).reshape(W.sizes()));
    log_debug("kq: sequential " + l.name + " k=" + std::to_string(chosen[i].code.k) + " in " +
              std::to_string(now_seconds() - t0) + " s");
  }
  // The model goes on holding its FP weights (fine-tuning distils from them; compress() installs
  // the reconstructions last).
  for (size_t i = 0; i < layers.size(); ++i)
    if (fp_weights[i].defined()) layers[i].weight().copy_(fp_weights[i]);
}

void KqMethod::finetune(CompressContext& ctx, std::vector<Candidate>& chosen) const {
  BB_CHECK(ctx.calib, "kq: finetune_epochs > 0 needs a calibration set (--calib)");
  std::vector<kq::LayerCode*> codes(chosen.size());
  for (size_t i = 0; i < chosen.size(); ++i) codes[i] = &chosen[i].code;
  FinetuneOptions fo = p_.finetune;
  fo.seed = ctx.seed ^ 0xf17e;
  kq::finetune_codebooks(*ctx.model, *ctx.calib, codes, fo);
  const Coder coder = parse_coder(p_.coder);
  const auto& layers = ctx.model->layers();
  for (size_t i = 0; i < chosen.size(); ++i)
    if (chosen[i].code.idx.defined())
      chosen[i].rec = kq::encode_record(layers[i].name, layers[i].weight().sizes().vec(), chosen[i].code, coder);
}

}  // namespace

BB_REGISTER_METHOD("kq", KqMethod);

}  // namespace bb
