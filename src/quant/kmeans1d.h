// Weighted scalar (1-D) quantizer design on points x_i with importance weights h_i >= 0
// (h = nullptr means all ones). Every routine minimises, or reports, the weighted distortion
//   D = sum_i h_i (x_i - c[a_i])^2
// (Choi et al. 2017 use h_i = the diagonal of the loss Hessian; h = 1 is plain k-means).
//
//   kmeans1d_lloyd   k-means++ seeding + Lloyd iterations (a local optimum; Deep Compression)
//   kmeans1d_dp      the globally optimal k-clustering: optimal 1-D clusters are contiguous
//                    runs of the sorted points, so a dynamic programme over sorted points finds
//                    it; the divide-and-conquer optimisation (the cost is Monge) makes it
//                    O(k m log m) for m distinct values, optionally on m <= max_bins groups
//   uniform1d        evenly spaced thresholds (step), cluster values = weighted means
//   ecsq1d           entropy-constrained SQ (Chou, Lookabaugh & Gray 1989; Choi et al. Alg. 1):
//                    a_i = argmin_j h_i (x_i - c_j)^2 - lambda log2 p_j, alternating with centre
//                    and probability updates until the Lagrangian D + lambda R stops falling
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bb {

// A fitted scalar quantizer: cluster values and each point's cluster.
struct ScalarQuantizer {
  std::vector<double> centers;  // cluster values; no empty clusters; ascending except for ECSQ
  std::vector<int32_t> assign;  // per point, an index into centers
  double distortion = 0;        // sum_i h_i (x_i - centers[assign_i])^2
  int iterations = 0;           // Lloyd / ECSQ iterations run (0 for DP and uniform)
};

// Recomputes sum_i h_i (x_i - c[a_i])^2.
double weighted_distortion(const float* x, const float* h, int64_t n, const std::vector<double>& centers,
                           const std::vector<int32_t>& assign);

// n * H(a) in bits: the empirical entropy of an assignment over k clusters.
double assignment_entropy_bits(const std::vector<int32_t>& assign, int k);

struct KMeans1DParams {
  int k = 16;                      // clusters (fewer if there are fewer distinct values)
  int max_iter = 300;              // Lloyd iterations at most
  double tol = 1e-10;              // stop when the objective drops by less than tol (relative)
  std::string init = "kmeans++";   // kmeans++ (weighted D^2 sampling) | linear (evenly over [min, max])
  uint64_t seed = 0;               // k-means++ sampling
};
// Lloyd iteration works on the sorted points with prefix sums, so one iteration costs
// O(k log n) after an O(n log n) sort; the initial seeding is O(n k).
ScalarQuantizer kmeans1d_lloyd(const float* x, const float* h, int64_t n, const KMeans1DParams& p);

// Globally optimal weighted k-clustering. max_bins > 0 and more distinct values than that: the
// sorted distinct values are first grouped into max_bins runs of near-equal count and cluster
// boundaries may only fall between runs (an approximation; the objective reported is still the
// exact distortion of the partition found). Memory: k * min(m, max_bins) 32-bit back-pointers.
ScalarQuantizer kmeans1d_dp(const float* x, const float* h, int64_t n, int k, int64_t max_bins = 0);
// The same programme kept alive for a search over k: the optimal cost with t clusters does not
// depend on the final k, so one programme extended a cluster at a time gives the optimum for every
// k it has reached, and solve(k) for a smaller k is a backtrack. A search over k then costs one
// sort and one DP up to its largest k. x and h must outlive it; memory O(n) 64-bit sort indices
// + k * m 32-bit back-pointers.
class KMeans1DDP {
 public:
  KMeans1DDP(const float* x, const float* h, int64_t n, int64_t max_bins = 0);
  ScalarQuantizer solve(int k);   // the exact optimum with min(k, max_clusters()) clusters
  int64_t max_clusters() const;   // distinct weighted values (or max_bins groups)
  int clusters_solved() const { return (int)arg_.size(); }

 private:
  double group_cost(int64_t a, int64_t b) const;
  void extend();  // one more cluster
  const float* x_;
  const float* h_;
  int64_t n_;
  double mu_ = 0;                           // centring offset of the prefix sums
  std::vector<int64_t> order_;              // sorted position -> point
  std::vector<int64_t> gstart_, gend_;      // sorted-position range of each group
  std::vector<double> PW_, PS_, PQ_;        // prefix sums over groups
  std::vector<double> cost_;                // optimal cost of groups [0, i) in clusters_solved() clusters
  std::vector<std::vector<int32_t>> arg_;   // arg_[t][i]: start of the last of t+1 clusters
};

// Uniform scalar quantizer with thresholds at (j + 1/2) * step (a level at 0, so pruned zeros stay
// exact); cluster values are the h-weighted means of their members (plain means where the
// members' h sum to 0). Clusters are numbered by ascending level.
ScalarQuantizer uniform1d(const float* x, const float* h, int64_t n, double step);

struct ECSQParams {
  double lambda = 0;     // Lagrange multiplier: weighted distortion per bit of rate
  int max_iter = 100;
  double tol = 1e-7;     // stop when the Lagrangian drops by less than tol (relative)
};
struct ECSQResult : ScalarQuantizer {
  std::vector<double> prob;  // p_j = n_j / n
  double rate_bits = 0;      // n * H(a)
  double lagrangian = 0;     // distortion + lambda * rate_bits
  // Per iteration (the nearest-centre start first): the Lagrangian, rate and live clusters.
  struct Iteration {
    double lagrangian, rate_bits;
    int clusters;
  };
  std::vector<Iteration> history;
};
// One ECSQ assignment step, a_i = argmin_j h_i (x_i - c_j)^2 + bias_j over ascending centres c
// (ecsq1d's inner step; bias_j = -lambda log2 p_j). Exact and with the same ties (lowest j) as
// ecsq_assign_ref, the plain O(n k) loop, by comparing each point with the few clusters that
// can win anywhere in its cell of the (x, 1/h) plane.
void ecsq_assign(const float* x, const float* h, int64_t n, const std::vector<double>& c,
                 const std::vector<double>& bias, int32_t* a);
void ecsq_assign_ref(const float* x, const float* h, int64_t n, const std::vector<double>& c,
                     const std::vector<double>& bias, int32_t* a);
// Starts from the given centres (each point to its nearest; empty ones dropped).
ECSQResult ecsq1d(const float* x, const float* h, int64_t n, const std::vector<double>& init_centers,
                  const ECSQParams& p);
// Continues an ecsq1d run (same points and lambda) under p's tolerance and iteration cap. The
// iterations are those the run would have made had it started with p, so a run to a loose
// tolerance resumed to a tight one ends exactly where a run to the tight one from the start does.
void ecsq1d_resume(const float* x, const float* h, int64_t n, const ECSQParams& p, ECSQResult& r);

}  // namespace bb
