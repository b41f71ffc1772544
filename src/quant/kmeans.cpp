#include "quant/kmeans.h"
#include "common/error.h"
#include "common/log.h"
#include "common/timer.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace bb {

void ClusteringParams::validate() const {
  BB_CHECK(niter >= 0, "kmeans: niter must be >= 0");
  BB_CHECK(init == "kmeans++" || init == "random", "kmeans: init must be kmeans++ or random, got '", init, "'");
  BB_CHECK(chunk >= 0, "kmeans: chunk must be >= 0 (0 = automatic)");
  BB_CHECK(split_eps > 0, "kmeans: split_eps must be > 0");
}

int64_t distance_chunk(int64_t k) {
  return std::max<int64_t>(256, std::min<int64_t>(65536, (int64_t(1) << 21) / std::max<int64_t>(1, k)));
}

namespace {

// Scores s_j = ||c_j||^2 - 2 x.c_j of one point against every centroid, in float, added up as
// s_j = cn_j, then s_j += (-2 x_t) ct_tj for t = 0..d-1 (ct is d x k); the first minimum wins.
// The plain version: one point at a time, every score stored.
void nearest_rows_small_d_ref(const float* x, int64_t rows, int d, const float* ct, const float* cn, int64_t k,
                              int64_t* assign, float* dist) {
  std::vector<float> s(k);
  float m[kSmallD];
  for (int64_t i = 0; i < rows; ++i) {
    const float* xi = x + i * d;
    float xx = 0;
    for (int t = 0; t < d; ++t) {
      xx += xi[t] * xi[t];
      m[t] = -2.0f * xi[t];
    }
    for (int64_t j = 0; j < k; ++j) s[j] = cn[j];
    for (int t = 0; t < d; ++t)
      for (int64_t j = 0; j < k; ++j) s[j] += m[t] * ct[t * k + j];
    int64_t bj = 0;
    for (int64_t j = 1; j < k; ++j)
      if (s[j] < s[bj]) bj = j;
    assign[i] = bj;
    dist[i] = std::max(0.0f, s[bj] + xx);
  }
}

// W-lane float and int vectors (GCC vector extensions: the same source for every ISA).
template <int W>
struct Lanes;
template <>
struct Lanes<8> {
  typedef float F __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
};

// The same scores, the same order of additions (so the same floats on any ISA; this file is
// built with -ffp-contract=off, so no FMA is ever formed), for P points at a time against W centroids at a time
// held in registers: each centroid row loaded once serves P points, and no score is stored.
// Each point keeps W running minima (strict <: the first index per lane), and the lanes'
// minimum with the lowest index among equal ones is the first minimum overall. Inlined into
// each ISA's caller, so it is compiled for that ISA. (The per-point version spent d + 2 passes
// over a k-float score array per point: ~9 GFLOP/s on the 9-D k-means of KQ.)
template <int W, int P>
__attribute__((always_inline)) inline void nearest_block(const float* x, int d, const float* ct, const float* cn,
                                                         int64_t k, int64_t* assign, float* dist) {
  typedef typename Lanes<W>::F F;
  typedef typename Lanes<W>::I I;
  float m[P][kSmallD], xx[P];
  for (int p = 0; p < P; ++p) {
    xx[p] = 0;
    for (int t = 0; t < d; ++t) {
      xx[p] += x[p * d + t] * x[p * d + t];
      m[p][t] = -2.0f * x[p * d + t];
    }
  }
  F best[P];
  I arg[P];
  for (int p = 0; p < P; ++p) {
    for (int u = 0; u < W; ++u) best[p][u] = INFINITY;
    arg[p] = I{};
  }
  const int64_t kw = k / W * W;
  I jv, step;
  for (int u = 0; u < W; ++u) jv[u] = u, step[u] = W;
  for (int64_t j = 0; j < kw; j += W, jv += step) {
    // The loops over p are unrolled so that acc, best and arg stay in registers.
    F acc[P];
    F c0;
    std::memcpy(&c0, cn + j, sizeof c0);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) acc[p] = c0;
    for (int t = 0; t < d; ++t) {
      F row;
      std::memcpy(&row, ct + t * k + j, sizeof row);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) acc[p] += m[p][t] * row;
    }
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const I lt = acc[p] < best[p];
      best[p] = lt ? acc[p] : best[p];
      arg[p] = lt ? jv : arg[p];
    }
  }
  for (int p = 0; p < P; ++p) {
    float b = INFINITY;
    int64_t bj = 0;
    for (int u = 0; u < W; ++u)
      if (best[p][u] < b || (best[p][u] == b && arg[p][u] < bj)) b = best[p][u], bj = arg[p][u];
    for (int64_t j = kw; j < k; ++j) {  // the tail, in the same arithmetic
      float s = cn[j];
      for (int t = 0; t < d; ++t) s += m[p][t] * ct[t * k + j];
      if (s < b) b = s, bj = j;
    }
    assign[p] = bj;
    dist[p] = std::max(0.0f, b + xx[p]);
  }
}

// 8 lanes, 4 points (16 registers), built for AVX2 and for the baseline ISA, chosen at load
// time. (A 16-lane, 8-point AVX-512 build measured no faster on this machine's Zen 4 cores,
// which split 512-bit operations in two: 1,388 vs 1,404 ms on the 9-D k-means benchmark.)
__attribute__((target_clones("avx2", "default"))) void nearest_rows_small_d(const float* x, int64_t rows, int d,
                                                                          const float* ct, const float* cn, int64_t k,
                                                                          int64_t* assign, float* dist) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) nearest_block<8, 4>(x + i * d, d, ct, cn, k, assign + i, dist + i);
  for (; i < rows; ++i) nearest_block<8, 1>(x + i * d, d, ct, cn, k, assign + i, dist + i);
}


}  // namespace

std::pair<torch::Tensor, torch::Tensor> assign_nearest_small_d(const torch::Tensor& x_in, const torch::Tensor& c_in,
                                                               bool reference) {
  torch::NoGradGuard ng;
  auto x = x_in.to(torch::kFloat32).contiguous(), c = c_in.to(torch::kFloat32).contiguous();
  BB_CHECK(x.dim() == 2 && c.dim() == 2 && x.size(1) == c.size(1) && c.size(0) > 0,
           "assign_nearest_small_d: expects n x d points and k x d centroids");
  BB_CHECK(x.size(1) <= kSmallD, "assign_nearest_small_d: d = ", x.size(1), " > ", kSmallD);
  const int64_t n = x.size(0), k = c.size(0);
  const int d = (int)x.size(1);
  auto assign = torch::empty({n}, torch::kInt64);
  auto dist = torch::empty({n}, torch::kFloat32);
  auto cn = c.pow(2).sum(1).contiguous();
  auto ct = c.t().contiguous();
  const float *xp = x.data_ptr<float>(), *ctp = ct.data_ptr<float>(), *cnp = cn.data_ptr<float>();
  int64_t* ap = assign.data_ptr<int64_t>();
  float* dp = dist.data_ptr<float>();
  at::parallel_for(0, n, 2048, [&](int64_t b, int64_t e) {
    if (reference) nearest_rows_small_d_ref(xp + b * d, e - b, d, ctp, cnp, k, ap + b, dp + b);
    else nearest_rows_small_d(xp + b * d, e - b, d, ctp, cnp, k, ap + b, dp + b);
  });
  return {assign, dist};
}

std::pair<torch::Tensor, torch::Tensor> assign_nearest(const torch::Tensor& x, const torch::Tensor& c, int64_t chunk) {
  // At small d a GEMM's n x k distance block costs more to write and scan than the math.
  if (x.size(1) <= kSmallD) return assign_nearest_small_d(x, c);
  return assign_nearest_gemm(x, c, chunk);
}

std::pair<torch::Tensor, torch::Tensor> assign_nearest_gemm(const torch::Tensor& x, const torch::Tensor& c, int64_t chunk) {
  torch::NoGradGuard ng;
  BB_CHECK(chunk >= 0, "assign_nearest: chunk must be >= 0");
  if (chunk == 0) chunk = distance_chunk(c.size(0));
  const int64_t n = x.size(0);
  auto assign = torch::empty({n}, torch::kInt64);
  auto dist = torch::empty({n}, torch::kFloat32);
  auto cn = c.pow(2).sum(1);  // k
  auto ct = c.t().contiguous();
  for (int64_t s = 0; s < n; s += chunk) {
    int64_t e = std::min(n, s + chunk);
    auto xs = x.slice(0, s, e);
    // ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is constant per row, added back for the distance.
    auto d = torch::addmm(cn.unsqueeze(0), xs, ct, 1.0, -2.0);
    auto mn = d.min(1);
    assign.slice(0, s, e).copy_(std::get<1>(mn));
    dist.slice(0, s, e).copy_((std::get<0>(mn) + xs.pow(2).sum(1)).clamp_min(0));
  }
  return {assign, dist};
}

torch::Tensor assign_nearest_ref(const torch::Tensor& x, const torch::Tensor& c) {
  auto xa = x.contiguous(), ca = c.contiguous();
  const int64_t n = xa.size(0), k = ca.size(0), d = xa.size(1);
  const float* xp = xa.data_ptr<float>();
  const float* cp = ca.data_ptr<float>();
  auto out = torch::empty({n}, torch::kInt64);
  auto* op = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    double best = 1e300;
    int64_t bj = 0;
    for (int64_t j = 0; j < k; ++j) {
      double s = 0;
      for (int64_t t = 0; t < d; ++t) {
        double diff = (double)xp[i * d + t] - cp[j * d + t];
        s += diff * diff;
      }
      if (s < best) {
        best = s;
        bj = j;
      }
    }
    op[i] = bj;
  }
  return out;
}

namespace {

// Picks k rows of x; k-means++ measures D^2 on xd (x itself, or x in a metric's space).
torch::Tensor init_centroids(const torch::Tensor& x, const torch::Tensor& xd, int64_t k, const ClusteringParams& p,
                             const torch::Tensor& w, std::mt19937_64& rng) {
  const int64_t n = x.size(0), d = x.size(1);
  auto c = torch::empty({k, d}, torch::kFloat32);
  if (p.init == "random") {
    std::vector<int64_t> perm(n);
    for (int64_t i = 0; i < n; ++i) perm[i] = i;
    for (int64_t i = 0; i < std::min(n, k); ++i) {
      std::swap(perm[i], perm[i + (int64_t)(rng() % (uint64_t)(n - i))]);
      c[i].copy_(x[perm[i]]);
    }
    for (int64_t i = n; i < k; ++i) c[i].copy_(x[perm[i % n]]);
    return c;
  }
  // k-means++: D^2 sampling (times the point weight for weighted k-means), as plain loops: one
  // pass per centre updates every point's D^2 (in parallel, per point) and one serial pass
  // samples by the running sum. Tensor ops cost milliseconds per centre in allocations at
  // k = 1,024 over 262,144 kernels (KQ's largest candidates).
  const auto xdc = xd.to(torch::kFloat32).contiguous();
  const float* xp = xdc.data_ptr<float>();
  const int64_t dd = xdc.size(1);
  std::vector<double> base(n, 1.0), mind(n, INFINITY);
  if (w.defined()) {
    auto w64 = w.to(torch::kFloat64).contiguous();
    std::copy(w64.data_ptr<double>(), w64.data_ptr<double>() + n, base.begin());
  }
  std::uniform_real_distribution<double> U(0.0, 1.0);
  // The first i whose running sum of weight(i) reaches U * total (uniform if all weights are 0).
  auto pick = [&](bool with_d2) -> int64_t {
    auto weight = [&](int64_t i) { return with_d2 ? mind[i] * base[i] : base[i]; };
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += weight(i);
    if (!(total > 0)) return (int64_t)(rng() % (uint64_t)n);
    const double r = U(rng) * total;
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      acc += weight(i);
      if (acc >= r) return i;
    }
    return n - 1;
  };
  auto update = [&](int64_t j) {
    const float* cj = xp + j * dd;
    at::parallel_for(0, n, 8192, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        float s = 0;
        for (int64_t t = 0; t < dd; ++t) {
          const float df = xp[i * dd + t] - cj[t];
          s += df * df;
        }
        mind[i] = std::min(mind[i], (double)s);
      }
    });
  };
  int64_t j = pick(false);
  c[0].copy_(x[j]);
  update(j);
  for (int64_t i = 1; i < k; ++i) {
    j = pick(true);
    c[i].copy_(x[j]);
    update(j);
  }
  return c;
}

}  // namespace

ClusteringResult kmeans(const torch::Tensor& x_in, int64_t k, const ClusteringParams& p, const torch::Tensor& weights,
                        const ClusteringMetric& metric) {
  p.validate();
  torch::NoGradGuard ng;
  BB_CHECK(x_in.dim() == 2 && x_in.size(0) > 0, "kmeans: expects a non-empty n x d matrix, got ", x_in.sizes());
  BB_CHECK(k >= 1, "kmeans: k must be >= 1");
  auto x = x_in.to(torch::kFloat32).contiguous();
  const int64_t n = x.size(0), d = x.size(1);
  torch::Tensor w;
  if (weights.defined()) {
    BB_CHECK(weights.numel() == n, "kmeans: weights has ", weights.numel(), " entries for ", n, " points");
    w = weights.to(torch::kFloat32).reshape({n}).contiguous();
    BB_CHECK(w.min().item<float>() >= 0, "kmeans: weights must be >= 0");
  }
  ClusteringResult r;
  // Iteration it's transform, shape-checked (without a metric, plain squared distances).
  auto metric_at = [&](int it) {
    auto T = metric(it).to(torch::kFloat32).contiguous();
    BB_CHECK(T.dim() == 2 && T.size(0) == d && T.size(1) == d, "kmeans: metric(", it, ") must be ", d, " x ", d,
             ", got ", T.sizes());
    return T;
  };
  auto assign_step = [&](int it) {
    if (!metric) return assign_nearest(x, r.centroids, p.chunk);
    auto T = metric_at(it);
    return assign_nearest(x.mm(T), r.centroids.mm(T), p.chunk);
  };
  std::mt19937_64 rng(p.seed);
  r.centroids = init_centroids(x, metric ? x.mm(metric_at(0)) : x, k, p, w, rng);
  const double t0 = now_seconds();
  const int max_splits = p.max_splits_per_iter < 0 ? (int)k : p.max_splits_per_iter;
  double prev = 1e300;
  auto wcol = w.defined() ? w.unsqueeze(1) : torch::Tensor();
  for (int it = 0; it < p.niter; ++it) {
    auto [assign, dist] = assign_step(it);
    r.assign = assign;
    double obj = (w.defined() ? (dist * w).sum() : dist.sum()).item<double>();
    // M-step: (weighted) means of the members.
    auto [newc, nonempty] = cluster_means(x, assign, k, w);
    auto members = torch::bincount(assign, {}, k);
    r.centroids = torch::where(nonempty.unsqueeze(1), newc, r.centroids);
    // Empty clusters: split the most populated cluster in two, perturbing both copies.
    int64_t splits = 0;
    auto mem = members.clone();
    auto empty_idx = (members == 0).nonzero().flatten();
    for (int64_t e = 0; e < empty_idx.size(0) && splits < max_splits; ++e) {
      int64_t ci = empty_idx[e].item<int64_t>();
      int64_t cj = mem.argmax().item<int64_t>();
      if (mem[cj].item<int64_t>() < 2) break;  // nothing left to split
      auto src = r.centroids[cj].clone();
      auto delta = src.abs().clamp_min(1e-8) * p.split_eps;
      r.centroids[ci].copy_(src + delta);
      r.centroids[cj].copy_(src - delta);
      int64_t half = mem[cj].item<int64_t>() / 2;
      mem[ci] = half;
      mem[cj] -= half;
      ++splits;
    }
    r.total_splits += splits;
    r.stats.push_back({it, obj, splits, now_seconds() - t0});
    if (p.verbose)
      log_info("kmeans iter " + std::to_string(it) + " obj " + std::to_string(obj) + " splits " + std::to_string(splits));
    if (p.tol > 0 && splits == 0 && prev < 1e300 && (prev - obj) <= p.tol * prev) break;
    prev = obj;
  }
  auto [assign, dist] = assign_step(p.niter);
  r.assign = assign;
  r.objective = (w.defined() ? (dist * w).sum() : dist.sum()).item<double>();
  return r;
}

std::pair<torch::Tensor, torch::Tensor> cluster_means(const torch::Tensor& x, const torch::Tensor& assign, int64_t k,
                                                      const torch::Tensor& w) {
  auto x64 = x.to(torch::kFloat64);
  auto sums = torch::zeros({k, x.size(1)}, torch::kFloat64);
  auto cnt = torch::zeros({k}, torch::kFloat64);
  if (w.defined()) {
    auto w64 = w.to(torch::kFloat64);
    sums.index_add_(0, assign, x64 * w64.unsqueeze(1));
    cnt.index_add_(0, assign, w64);
  } else {
    sums.index_add_(0, assign, x64);
    cnt.index_add_(0, assign, torch::ones({x.size(0)}, torch::kFloat64));
  }
  return {(sums / cnt.clamp_min(1e-300).unsqueeze(1)).to(torch::kFloat32), cnt > 0};
}

}  // namespace bb
