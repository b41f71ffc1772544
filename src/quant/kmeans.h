// Vector k-means (Lloyd) with k-means++ initialisation, in the faiss Clustering style: all knobs
// in ClusteringParams with documented defaults, per-iteration statistics kept, empty clusters
// split from the most populated cluster and counted (with a cap, so degenerate inputs terminate).
//
// Used by KQ (kernels as K*K vectors) and PQ (sub-vectors; PQ's activation-weighted E-step
// ||X(w-c)||^2 = ||L^T (w-c)||^2 with G = X^T X = L L^T is plain k-means on L^T-transformed
// vectors, so it runs through the same code). PQ re-estimates G from fresh patches every
// iteration; the optional `metric` argument supplies that per-iteration transform.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace bb {

struct ClusteringParams {
  int niter = 25;                 // Lloyd iterations
  double tol = 0.0;               // stop when the relative objective decrease is below tol (0 = never)
  uint64_t seed = 1234;           // init and tie-breaking randomness
  std::string init = "kmeans++";  // "kmeans++" | "random" (k distinct random points)
  int64_t chunk = 0;              // points per distance block (chunk * k floats); 0 = distance_chunk(k)
  int max_splits_per_iter = -1;   // empty-cluster repairs per iteration (-1 = k)
  double split_eps = 1e-4;        // relative perturbation of a split centroid
  bool verbose = false;
  void validate() const;
};

struct ClusteringIterationStats {
  int iter;
  double objective;     // sum of (weighted) squared distances after the assignment step
  int64_t splits;       // empty clusters repaired in this iteration
  double seconds;       // wall time since the start
};

struct ClusteringResult {
  torch::Tensor centroids;  // k x d float32
  torch::Tensor assign;     // n int64
  double objective = 0;     // final (weighted) SSE with the final centroids and assignment
  int64_t total_splits = 0;
  std::vector<ClusteringIterationStats> stats;
};

// Per-iteration metric: metric(it) returns a d x d matrix T, and iteration `it` assigns each
// point to argmin_c ||(x - c) T||^2 (T = L of G = L L^T gives (x-c)^T G (x-c)). It is called
// with it = 0 (also used by k-means++ seeding) .. niter (the final assignment), possibly more
// than once per it, so it must be a function of it (seed any sampling by it). The M-step stays
// the plain (weighted) mean in the original space: with one T shared by all points it is the
// minimiser in the metric too. Objectives in the stats are measured in that iteration's metric.
using ClusteringMetric = std::function<torch::Tensor(int iter)>;

// x: n x d float32. weights: optional n (>= 0) for weighted k-means (M-step = weighted mean,
// k-means++ sampling proportional to weight * D^2). k may exceed the number of distinct points;
// the surplus centroids then duplicate points (counted as splits).
ClusteringResult kmeans(const torch::Tensor& x, int64_t k, const ClusteringParams& p,
                        const torch::Tensor& weights = {}, const ClusteringMetric& metric = {});

// Rows per distance block for k centroids: keeps the rows x k block near 8 MB, inside the L3 cache
// and small enough to be reused by the allocator instead of mapped and unmapped on every call
// (both cost more than the math at small d).
int64_t distance_chunk(int64_t k);

// Nearest centroid of every row of x (squared Euclidean): returns (assign n int64, squared
// distance n float32). d <= kSmallD: assign_nearest_small_d; else the GEMM path in chunks
// (0 = distance_chunk(k)). Both compare ||c||^2 - 2 x.c in float; ties go to the lower index.
constexpr int64_t kSmallD = 16;
std::pair<torch::Tensor, torch::Tensor> assign_nearest(const torch::Tensor& x, const torch::Tensor& centroids,
                                                       int64_t chunk = 0);
// Blocks of rows x k distances by one GEMM each, then a row minimum.
std::pair<torch::Tensor, torch::Tensor> assign_nearest_gemm(const torch::Tensor& x, const torch::Tensor& centroids,
                                                            int64_t chunk = 0);
// Blocks of 4 points against 8 centroids at a time held transposed (d x k) in registers, no
// distance block: at d = 9 the GEMM's block traffic, not the arithmetic, is the cost.
// reference = true: the plain one-point-at-a-time loop, which gives the same floats and picks.
std::pair<torch::Tensor, torch::Tensor> assign_nearest_small_d(const torch::Tensor& x, const torch::Tensor& centroids,
                                                               bool reference = false);

// Members' (weighted by w, when given) mean per cluster, summed in float64, returned as float32
// (rows of empty clusters are finite garbage), and which clusters have members (total weight > 0).
std::pair<torch::Tensor, torch::Tensor> cluster_means(const torch::Tensor& x, const torch::Tensor& assign, int64_t k,
                                                      const torch::Tensor& w = {});

// Plain loop reference for tests: nearest centroid by brute force.
torch::Tensor assign_nearest_ref(const torch::Tensor& x, const torch::Tensor& centroids);

}  // namespace bb
