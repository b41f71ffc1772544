#include "quant/kmeans1d.h"
#include "common/error.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>

namespace bb {
namespace {

inline double hw(const float* h, int64_t i) { return h ? (double)h[i] : 1.0; }

void check_inputs(const float* x, const float* h, int64_t n, const char* who) {
  BB_CHECK(n > 0, who, ": no points to quantize");
  for (int64_t i = 0; i < n; ++i) {
    BB_CHECK(std::isfinite(x[i]), who, ": point ", i, " is not finite");
    if (h) BB_CHECK(std::isfinite(h[i]) && h[i] >= 0, who, ": weight ", i, " is negative or not finite (", h[i], ")");
  }
}

// Points sorted by value (ties by index, so the order is deterministic) with prefix sums of
// h, h*x, h*x^2. Values are centred on their weighted mean first: the segment cost
// Q - S^2/W then loses far less to cancellation.
struct Sorted {
  std::vector<int64_t> order;      // sorted position -> original index
  std::vector<double> xs;          // sorted values, centred
  double mu = 0;                   // centring offset
  std::vector<double> W, S, Q;     // prefix sums, size n+1
  double seg_w(int64_t a, int64_t b) const { return W[b] - W[a]; }
  double seg_mean(int64_t a, int64_t b) const { return (S[b] - S[a]) / (W[b] - W[a]); }
  double seg_cost(int64_t a, int64_t b) const {
    double w = W[b] - W[a];
    if (w <= 0) return 0;
    double s = S[b] - S[a];
    return std::max(0.0, (Q[b] - Q[a]) - s * s / w);
  }
};

Sorted sort_points(const float* x, const float* h, int64_t n) {
  Sorted s;
  s.order.resize(n);
  std::iota(s.order.begin(), s.order.end(), 0);
  std::sort(s.order.begin(), s.order.end(), [&](int64_t a, int64_t b) { return x[a] < x[b] || (x[a] == x[b] && a < b); });
  double sw = 0, sx = 0;
  for (int64_t i = 0; i < n; ++i) {
    sw += hw(h, i);
    sx += hw(h, i) * x[i];
  }
  s.mu = sw > 0 ? sx / sw : 0;
  s.xs.resize(n);
  s.W.assign(n + 1, 0);
  s.S.assign(n + 1, 0);
  s.Q.assign(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t o = s.order[i];
    double v = (double)x[o] - s.mu, w = hw(h, o);
    s.xs[i] = v;
    s.W[i + 1] = s.W[i] + w;
    s.S[i + 1] = s.S[i] + w * v;
    s.Q[i + 1] = s.Q[i] + w * v * v;
  }
  return s;
}

// Index of the centre nearest to v in ascending `c` (ties to the lower one).
inline int nearest(const std::vector<double>& c, double v) {
  auto it = std::lower_bound(c.begin(), c.end(), v);
  if (it == c.begin()) return 0;
  if (it == c.end()) return (int)c.size() - 1;
  int j = (int)(it - c.begin());
  return (v - c[j - 1] <= c[j] - v) ? j - 1 : j;
}

}  // namespace

double weighted_distortion(const float* x, const float* h, int64_t n, const std::vector<double>& centers,
                           const std::vector<int32_t>& assign) {
  BB_CHECK((int64_t)assign.size() == n, "weighted_distortion: ", assign.size(), " assignments for ", n, " points");
  double d = 0;
  for (int64_t i = 0; i < n; ++i) {
    BB_CHECK(assign[i] >= 0 && assign[i] < (int32_t)centers.size(), "weighted_distortion: bad cluster ", assign[i]);
    double e = (double)x[i] - centers[assign[i]];
    d += hw(h, i) * e * e;
  }
  return d;
}

double assignment_entropy_bits(const std::vector<int32_t>& assign, int k) {
  std::vector<int64_t> cnt(k, 0);
  for (int32_t a : assign) {
    BB_CHECK(a >= 0 && a < k, "assignment_entropy_bits: cluster ", a, " out of range ", k);
    ++cnt[a];
  }
  const double n = (double)assign.size();
  double bits = 0;
  for (int64_t c : cnt)
    if (c > 0) bits -= (double)c * std::log2((double)c / n);
  return bits;
}

// ---------------------------------------------------------------------------------------------
// Lloyd

ScalarQuantizer kmeans1d_lloyd(const float* x, const float* h, int64_t n, const KMeans1DParams& p) {
  check_inputs(x, h, n, "kmeans1d_lloyd");
  BB_CHECK(p.k >= 1, "kmeans1d_lloyd: k must be >= 1, got ", p.k);
  BB_CHECK(p.init == "kmeans++" || p.init == "linear", "kmeans1d_lloyd: init must be kmeans++ or linear, got '", p.init, "'");
  Sorted s = sort_points(x, h, n);
  if (s.W[n] <= 0) {  // every weight zero: the weighted objective is 0 for any answer; use plain k-means
    return kmeans1d_lloyd(x, nullptr, n, p);
  }

  // Seeding.
  std::vector<double> c;
  if (p.init == "linear") {
    double lo = s.xs.front(), hi = s.xs.back();
    for (int j = 0; j < p.k; ++j) c.push_back(p.k == 1 ? 0.5 * (lo + hi) : lo + (hi - lo) * j / (p.k - 1));
  } else {
    // k-means++ with weighted D^2 sampling: P(i) ~ h_i * d_i^2 (first centre: P(i) ~ h_i).
    std::mt19937_64 rng(p.seed);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    std::vector<double> d2(n, 1.0);
    for (int j = 0; j < p.k; ++j) {
      double total = 0;
      for (int64_t i = 0; i < n; ++i) total += hw(h, s.order[i]) * d2[i];
      if (total <= 0) break;  // fewer distinct (weighted) values than k
      double u = uni(rng) * total, acc = 0;
      int64_t pick = n - 1;
      for (int64_t i = 0; i < n; ++i) {
        acc += hw(h, s.order[i]) * d2[i];
        if (acc > u) {
          pick = i;
          break;
        }
      }
      const double cj = s.xs[pick];
      c.push_back(cj);
      for (int64_t i = 0; i < n; ++i) d2[i] = std::min(j == 0 ? INFINITY : d2[i], (s.xs[i] - cj) * (s.xs[i] - cj));
    }
  }
  std::sort(c.begin(), c.end());
  c.erase(std::unique(c.begin(), c.end()), c.end());
  const int k = (int)c.size();

  // Lloyd on sorted points: cluster j is the run of points between consecutive midpoints.
  std::vector<int64_t> lo(k), hi(k);
  auto bounds = [&] {
    int64_t start = 0;
    for (int j = 0; j < k; ++j) {
      int64_t end = n;
      if (j + 1 < k) {
        double mid = 0.5 * (c[j] + c[j + 1]);
        end = std::upper_bound(s.xs.begin() + start, s.xs.end(), mid) - s.xs.begin();
      }
      lo[j] = start;
      hi[j] = end;
      start = end;
    }
  };
  auto objective = [&] {
    double d = 0;
    for (int j = 0; j < k; ++j) {
      double w = s.seg_w(lo[j], hi[j]);
      if (w <= 0) continue;
      double sum = s.S[hi[j]] - s.S[lo[j]];
      // sum h (x - c)^2 = Q - 2 c S + c^2 W
      d += std::max(0.0, (s.Q[hi[j]] - s.Q[lo[j]]) - 2 * c[j] * sum + c[j] * c[j] * w);
    }
    return d;
  };
  ScalarQuantizer out;
  bounds();
  double prev = objective();
  for (int it = 0; it < p.max_iter; ++it) {
    for (int j = 0; j < k; ++j)
      if (s.seg_w(lo[j], hi[j]) > 0) c[j] = s.seg_mean(lo[j], hi[j]);
    std::sort(c.begin(), c.end());  // weighted means of ordered runs stay ordered; guards rounding
    std::vector<int64_t> old_lo = lo;
    bounds();
    double cur = objective();
    out.iterations = it + 1;
    if (lo == old_lo || prev - cur <= p.tol * prev) {
      prev = cur;
      break;
    }
    prev = cur;
  }
  // Final centres are the means of the final runs (the objective can only fall).
  for (int j = 0; j < k; ++j)
    if (s.seg_w(lo[j], hi[j]) > 0) c[j] = s.seg_mean(lo[j], hi[j]);

  // Drop clusters with no members; write the assignment.
  out.assign.assign(n, 0);
  for (int j = 0; j < k; ++j) {
    if (hi[j] == lo[j]) continue;
    int id = (int)out.centers.size();
    double cj = c[j];
    if (s.seg_w(lo[j], hi[j]) <= 0) {  // members all of weight 0: their plain mean
      double sum = 0;
      for (int64_t i = lo[j]; i < hi[j]; ++i) sum += s.xs[i];
      cj = sum / (double)(hi[j] - lo[j]);
    }
    out.centers.push_back(cj + s.mu);
    for (int64_t i = lo[j]; i < hi[j]; ++i) out.assign[s.order[i]] = id;
  }
  out.distortion = weighted_distortion(x, h, n, out.centers, out.assign);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Exact dynamic programme

KMeans1DDP::KMeans1DDP(const float* x, const float* h, int64_t n, int64_t max_bins) : x_(x), h_(h), n_(n) {
  check_inputs(x, h, n, "kmeans1d_dp");
  BB_CHECK(max_bins >= 0, "kmeans1d_dp: max_bins must be >= 0");
  Sorted s = sort_points(x, h, n);
  if (s.W[n] <= 0) {  // all weights zero: every point counts equally
    h_ = nullptr;
    s = sort_points(x, nullptr, n);
  }
  mu_ = s.mu;
  order_ = std::move(s.order);

  // Units the DP places boundaries between: runs of equal values carrying positive weight
  // (equal values share a cluster in some optimal solution; zero-weight points cost nothing
  // anywhere and join their nearest centre afterwards). unit_end[u] = sorted position after unit u.
  std::vector<int64_t> unit_end;
  for (int64_t i = 0; i < n;) {
    int64_t j = i + 1;
    while (j < n && s.xs[j] == s.xs[i]) ++j;
    if (s.seg_w(i, j) > 0) unit_end.push_back(j);
    i = j;
  }
  // A unit starts where the previous one ends (zero-weight points in between go with it).
  const int64_t m = (int64_t)unit_end.size();
  std::vector<int64_t> unit_start(m);
  for (int64_t u = 0; u < m; ++u) unit_start[u] = u == 0 ? 0 : unit_end[u - 1];
  // Optional grouping of units into max_bins runs of near-equal count.
  if (max_bins > 0 && m > max_bins) {
    for (int64_t g = 0; g < max_bins; ++g) {
      int64_t a = g * m / max_bins, b = (g + 1) * m / max_bins;
      gstart_.push_back(unit_start[a]);
      gend_.push_back(unit_end[b - 1]);
    }
  } else {
    gstart_ = std::move(unit_start);
    gend_ = std::move(unit_end);
  }
  // Group the trailing zero-weight points with the last group (they cost nothing).
  gend_.back() = n;
  const int64_t G = (int64_t)gstart_.size();
  // Prefix sums over groups: position g covers groups [0, g). The per-point sums are dropped
  // here, so a long-lived programme holds O(G) doubles, not O(n).
  PW_.assign(G + 1, 0);
  PS_.assign(G + 1, 0);
  PQ_.assign(G + 1, 0);
  for (int64_t g = 0; g < G; ++g) {
    PW_[g + 1] = PW_[g] + s.seg_w(gstart_[g], gend_[g]);
    PS_[g + 1] = PS_[g] + (s.S[gend_[g]] - s.S[gstart_[g]]);
    PQ_[g + 1] = PQ_[g] + (s.Q[gend_[g]] - s.Q[gstart_[g]]);
  }
  cost_.resize(G + 1);
  cost_[0] = INFINITY;
  for (int64_t i = 1; i <= G; ++i) cost_[i] = group_cost(0, i);
  arg_.emplace_back();  // one cluster: no back-pointers
}

int64_t KMeans1DDP::max_clusters() const { return (int64_t)gstart_.size(); }

double KMeans1DDP::group_cost(int64_t a, int64_t b) const {  // groups [a, b)
  const double w = PW_[b] - PW_[a], sm = PS_[b] - PS_[a];
  return std::max(0.0, (PQ_[b] - PQ_[a]) - sm * sm / w);
}

void KMeans1DDP::extend() {
  const int64_t G = max_clusters();
  const int t = (int)arg_.size();  // the layer being added: t + 1 clusters
  std::vector<int32_t> at(G + 1, 0);
  std::vector<double> cur(G + 1, INFINITY);
  const std::vector<double>& prev = cost_;
  // Divide and conquer: the optimal split point is monotone in i (the cost is Monge).
  std::function<void(int64_t, int64_t, int64_t, int64_t)> solve = [&](int64_t lo, int64_t hi, int64_t jlo, int64_t jhi) {
    if (lo > hi) return;
    const int64_t mid = (lo + hi) / 2;
    int64_t best_j = jlo;
    double best = INFINITY;
    const int64_t jend = std::min(jhi, mid - 1);
    for (int64_t j = jlo; j <= jend; ++j) {
      const double v = prev[j] + group_cost(j, mid);
      if (v < best) {
        best = v;
        best_j = j;
      }
    }
    cur[mid] = best;
    at[mid] = (int32_t)best_j;
    solve(lo, mid - 1, jlo, best_j);
    solve(mid + 1, hi, best_j, jhi);
  };
  solve(t + 1, G, t, G - 1);
  cost_ = std::move(cur);
  arg_.push_back(std::move(at));
}

ScalarQuantizer KMeans1DDP::solve(int k) {
  BB_CHECK(k >= 1, "kmeans1d_dp: k must be >= 1, got ", k);
  const int64_t G = max_clusters();
  const int K = (int)std::min<int64_t>(k, G);
  while ((int)arg_.size() < K) extend();

  // Backtrack the cluster boundaries (in groups).
  std::vector<int64_t> cut(K + 1);
  cut[K] = G;
  for (int t = K - 1; t >= 1; --t) cut[t] = arg_[t][cut[t + 1]];
  cut[0] = 0;

  ScalarQuantizer out;
  out.centers.resize(K);
  std::vector<int32_t> group_cluster(G);
  for (int t = 0; t < K; ++t) {
    out.centers[t] = (PS_[cut[t + 1]] - PS_[cut[t]]) / (PW_[cut[t + 1]] - PW_[cut[t]]) + mu_;
    for (int64_t g = cut[t]; g < cut[t + 1]; ++g) group_cluster[g] = t;
  }
  out.assign.assign(n_, 0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t i = gstart_[g]; i < gend_[g]; ++i) out.assign[order_[i]] = group_cluster[g];
  // Zero-weight points (between groups or before the first): nearest centre.
  if (h_) {
    for (int64_t i = 0; i < n_; ++i)
      if (h_[i] == 0) out.assign[i] = nearest(out.centers, (double)x_[i]);
  }
  out.distortion = weighted_distortion(x_, h_, n_, out.centers, out.assign);
  return out;
}

ScalarQuantizer kmeans1d_dp(const float* x, const float* h, int64_t n, int k, int64_t max_bins) {
  BB_CHECK(k >= 1, "kmeans1d_dp: k must be >= 1, got ", k);
  return KMeans1DDP(x, h, n, max_bins).solve(k);
}

// ---------------------------------------------------------------------------------------------
// Uniform

ScalarQuantizer uniform1d(const float* x, const float* h, int64_t n, double step) {
  check_inputs(x, h, n, "uniform1d");
  BB_CHECK(step > 0 && std::isfinite(step), "uniform1d: step must be positive, got ", step);
  std::vector<int64_t> level(n);
  for (int64_t i = 0; i < n; ++i) {
    double q = std::floor((double)x[i] / step + 0.5);
    BB_CHECK(std::fabs(q) < 4e18, "uniform1d: step ", step, " too small for value ", x[i]);
    level[i] = (int64_t)q;
  }
  // The levels in use, ascending, and each point's rank among them. Usually the level range is
  // short: a table over it replaces sorting n levels and a binary search per point.
  const auto [lmin_it, lmax_it] = std::minmax_element(level.begin(), level.end());
  const int64_t lmin = *lmin_it, range = *lmax_it - lmin + 1;
  std::vector<int64_t> levels;
  std::vector<int32_t> rank;  // level - lmin -> index into levels
  if (range <= std::max<int64_t>(n, 1 << 20)) {
    rank.assign(range, -1);
    for (int64_t i = 0; i < n; ++i) rank[level[i] - lmin] = 0;
    for (int64_t l = 0; l < range; ++l)
      if (rank[l] == 0) rank[l] = (int32_t)levels.size(), levels.push_back(lmin + l);
  } else {
    levels = level;
    std::sort(levels.begin(), levels.end());
    levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  }
  const int k = (int)levels.size();
  ScalarQuantizer out;
  out.assign.resize(n);
  std::vector<double> W(k, 0), S(k, 0), P(k, 0);
  std::vector<int64_t> C(k, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int j = !rank.empty() ? rank[level[i] - lmin]
                                : (int)(std::lower_bound(levels.begin(), levels.end(), level[i]) - levels.begin());
    out.assign[i] = j;
    W[j] += hw(h, i);
    S[j] += hw(h, i) * x[i];
    P[j] += x[i];
    ++C[j];
  }
  out.centers.resize(k);
  for (int j = 0; j < k; ++j) out.centers[j] = W[j] > 0 ? S[j] / W[j] : P[j] / (double)C[j];
  out.distortion = weighted_distortion(x, h, n, out.centers, out.assign);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Entropy-constrained SQ

// ECSQ assignment. The (x, h) plane is cut into cells: equal slices of the points' x range
// times quarter-octaves of h (read off the float's exponent and top two mantissa bits). With
// x = x_c + delta around a cell's centre, the cost less h delta^2 (common to every j) is
// M_j = h ((x_c - c_j)^2 + 2 delta (x_c - c_j)) + b_j: bilinear in (delta, h), so its extremes
// over the cell are at the corners. j can win somewhere in the cell only if min_cell M_j <=
// U = min_k max_cell M_k (the winner's M is below every other's there, so below U's k), so each
// cell keeps that short list (1.1 - 3.2 clusters per point on ResNet-18), and a point compares
// only its cell's candidates with the exact cost, in ascending j with strict <: the same answer,
// ties included, as the plain loop over every cluster. Cells are built only where points fall.
// (perf, ResNet-18 at 280 clusters: the earlier walk along record chains took ~90% of an ECSQ
// iteration; the iteration went 0.42 -> 0.135 s.)
namespace {

// The cells of the (x, h) plane. They depend on the points alone, so an ECSQ run lays them out
// once and only the candidate lists are rebuilt per iteration (the centres and biases change).
struct ECSQCells {
  // Row of a point: the bits of its positive float h above kShift (the exponent and the top two
  // mantissa bits: quarter-octaves), monotone in h. h == 0 (cost = bias: the most probable
  // cluster) and h == nullptr (h = 1 everywhere: one row) are special.
  static constexpr int kShift = 21;
  static int hkey(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return (int)(u >> kShift);
  }
  const float* x;
  const float* h;
  int64_t n;
  int cols;
  int kmin = 0, rows = 0;  // rows == 0: every h is 0
  double x0 = 0, span = 0, vscale = 0;
  std::vector<uint8_t> used;  // rows x cols: which cells hold points

  int col_of(double v) const {
    const double u = (v - x0) * vscale;
    return u <= 0 ? 0 : u >= cols ? cols - 1 : (int)u;
  }
  int row_of(int64_t i) const { return h ? hkey(h[i]) - kmin : 0; }

  ECSQCells(const float* x_, const float* h_, int64_t n_, int cols_) : x(x_), h(h_), n(n_), cols(cols_) {
    if (n <= 0) return;
    // Ranges of x and of the row keys, per fixed chunk in parallel (min/max: order-free).
    constexpr int64_t kChunk = 1 << 18;
    const int64_t nchunks = (n + kChunk - 1) / kChunk;
    std::vector<float> cxmin(nchunks), cxmax(nchunks);
    std::vector<int> ckmin(nchunks, 1 << 30), ckmax(nchunks, -1);
    at::parallel_for(0, nchunks, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        float lo = x[q * kChunk], hi = lo;
        int klo = 1 << 30, khi = -1;
        for (int64_t i = q * kChunk, e = std::min(n, i + kChunk); i < e; ++i) {
          lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
          if (h && h[i] > 0) klo = std::min(klo, hkey(h[i])), khi = std::max(khi, hkey(h[i]));
        }
        cxmin[q] = lo, cxmax[q] = hi, ckmin[q] = klo, ckmax[q] = khi;
      }
    });
    const float xmin = *std::min_element(cxmin.begin(), cxmin.end());
    const float xmax = *std::max_element(cxmax.begin(), cxmax.end());
    kmin = *std::min_element(ckmin.begin(), ckmin.end());
    int kmax = *std::max_element(ckmax.begin(), ckmax.end());
    if (!h) kmin = kmax = 0;
    if (kmax < 0) return;  // every h is 0
    rows = kmax - kmin + 1;
    x0 = xmin, span = (double)xmax - xmin, vscale = span > 0 ? cols / span : 0;
    // Marked per thread (one shared array would bounce cache lines between cores), then merged.
    const size_t ncells = (size_t)rows * cols;
    std::vector<std::vector<uint8_t>> marks(at::get_num_threads());
    at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
      auto& m = marks[at::get_thread_num()];
      if (m.empty()) m.assign(ncells, 0);
      for (int64_t i = b; i < e; ++i)
        if (!h || h[i] > 0) m[(size_t)row_of(i) * cols + col_of(x[i])] = 1;
    });
    used.assign(ncells, 0);
    for (auto& m : marks)
      if (!m.empty())
        for (size_t q = 0; q < ncells; ++q) used[q] |= m[q];
  }
};

int ecsq_cell_cols(size_t k) { return (int)std::clamp<size_t>(2 * k, 16, 8192); }

void ecsq_assign_cells(const ECSQCells& cl, const std::vector<double>& c, const std::vector<double>& bias, int32_t* a) {
  BB_CHECK(!c.empty() && bias.size() == c.size(), "ecsq_assign: ", c.size(), " centres and ", bias.size(), " biases");
  const int K = (int)c.size();
  const float *x = cl.x, *h = cl.h;
  const int64_t n = cl.n;
  if (n <= 0) return;
  const int jmode = (int)(std::min_element(bias.begin(), bias.end()) - bias.begin());  // first minimum
  if (cl.rows == 0) {  // every h is 0: the most probable cluster everywhere
    for (int64_t i = 0; i < n; ++i) a[i] = jmode;
    return;
  }
  const int rows = cl.rows, cols = cl.cols, kmin = cl.kmin;
  const double x0 = cl.x0, span = cl.span;
  double cmax = 0, bmax = 0;
  for (int j = 0; j < K; ++j) cmax = std::max(cmax, std::fabs(c[j])), bmax = std::max(bmax, std::fabs(bias[j]));
  // Candidate lists per cell, rows built in parallel and joined in row order (deterministic).
  std::vector<std::vector<int32_t>> row_list(rows), row_off(rows);
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<double> lo(K), hi(K);  // a cell's bounds on M_j
    for (int64_t r = r0; r < r1; ++r) {
      double h0 = 1, h1 = 1;
      if (h) {  // this row's h lie in [h0, h1) exactly
        const uint32_t ul = (uint32_t)(r + kmin) << ECSQCells::kShift, uh = (uint32_t)(r + kmin + 1) << ECSQCells::kShift;
        float hl, hh;
        std::memcpy(&hl, &ul, 4);
        std::memcpy(&hh, &uh, 4);
        h0 = hl, h1 = hh;
      }
      auto& list = row_list[r];
      auto& off = row_off[r];
      off.assign(cols + 1, 0);
      const double w = span > 0 ? span / cols : 0, pad = 1e-9 * std::max(span, 1e-30);
      const double hd = 0.5 * w + pad;  // half-width of a cell, widened a hair for rounding
      for (int g = 0; g < cols; ++g) {
        off[g] = (int32_t)list.size();
        if (!cl.used[(size_t)r * cols + g]) continue;
        const double vc = x0 + (g + 0.5) * w;
        double U = INFINITY;
        for (int j = 0; j < K; ++j) {
          const double e = vc - c[j], E = e * e, S = 2 * e * hd;  // M_j = h (E + 2 delta e) + b_j
          const double m00 = h0 * (E - S), m01 = h0 * (E + S), m10 = h1 * (E - S), m11 = h1 * (E + S);
          lo[j] = std::min(std::min(m00, m01), std::min(m10, m11)) + bias[j];
          hi[j] = std::max(std::max(m00, m01), std::max(m10, m11)) + bias[j];
          U = std::min(U, hi[j]);
        }
        // Rounding in M is ~1e-16 of its terms; the margin is far above that.
        const double reach = std::fabs(vc) + cmax + hd;
        const double margin = 1e-9 * (h1 * reach * reach + bmax);
        for (int j = 0; j < K; ++j)
          if (lo[j] <= U + margin) list.push_back(j);
      }
      off[cols] = (int32_t)list.size();
    }
  });
  std::vector<int64_t> base(rows + 1, 0);
  for (int r = 0; r < rows; ++r) base[r + 1] = base[r] + (int64_t)row_list[r].size();
  std::vector<int32_t> cand(base[rows]);
  std::vector<int64_t> start((size_t)rows * cols + 1);
  for (int r = 0; r < rows; ++r) {
    std::copy(row_list[r].begin(), row_list[r].end(), cand.begin() + base[r]);
    for (int g = 0; g < cols; ++g) start[(size_t)r * cols + g] = base[r] + row_off[r][g];
  }
  start[(size_t)rows * cols] = base[rows];
  at::parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const double hi = hw(h, i);
      if (hi == 0) {
        a[i] = jmode;
        continue;
      }
      const size_t cell = (size_t)cl.row_of(i) * cols + cl.col_of(x[i]);
      const int32_t* p = cand.data() + start[cell];
      const int32_t* q = cand.data() + start[cell + 1];
      double best = INFINITY;
      int32_t arg = *p;
      for (; p < q; ++p) {  // the reference's expression and order, so ties go the same way
        const int32_t j = *p;
        const double v = hi * ((double)x[i] - c[j]) * ((double)x[i] - c[j]) + bias[j];
        if (v < best) best = v, arg = j;
      }
      a[i] = arg;
    }
  });
}

}  // namespace

void ecsq_assign(const float* x, const float* h, int64_t n, const std::vector<double>& c,
                 const std::vector<double>& bias, int32_t* a) {
  BB_CHECK(!c.empty() && bias.size() == c.size(), "ecsq_assign: ", c.size(), " centres and ", bias.size(), " biases");
  if (n <= 0) return;
  ecsq_assign_cells(ECSQCells(x, h, n, ecsq_cell_cols(c.size())), c, bias, a);
}

void ecsq_assign_ref(const float* x, const float* h, int64_t n, const std::vector<double>& c,
                     const std::vector<double>& bias, int32_t* a) {
  for (int64_t i = 0; i < n; ++i) {
    const double hi = hw(h, i);
    double best = INFINITY;
    for (size_t j = 0; j < c.size(); ++j) {
      const double v = hi * ((double)x[i] - c[j]) * ((double)x[i] - c[j]) + bias[j];
      if (v < best) best = v, a[i] = (int32_t)j;
    }
  }
}

namespace {

// The ECSQ iteration, from the state in `out` (centres, probabilities and assignment of the last
// update) until the Lagrangian falls by less than p.tol or out.iterations reaches p.max_iter.
// With first = true, out.centers are only the starting centres: every point goes to its nearest.
void ecsq_iterate(const float* x, const float* h, int64_t n, const ECSQParams& p, bool first, ECSQResult& out) {
  std::vector<double>& c = out.centers;
  std::vector<double>& prob = out.prob;
  std::vector<int32_t>& a = out.assign;
  std::vector<double> bias(c.size(), 0.0);  // -lambda log2 p_j
  if (!first)
    for (size_t j = 0; j < c.size(); ++j) bias[j] = -p.lambda * std::log2(prob[j]);
  a.resize(n);

  const ECSQCells cells(x, h, n, ecsq_cell_cols(c.size()));  // the column count stays that of the start
  auto assign = [&] { ecsq_assign_cells(cells, c, bias, a.data()); };

  // Update: centres = weighted means, p = counts / n, empty clusters dropped; returns the
  // Lagrangian of the current assignment at the new centres and probabilities. Per-cluster sums
  // of the offsets from the old centre (small, so Q - S^2/W keeps its precision) give the
  // distortion without another pass. Sums run over fixed blocks of points in parallel and are
  // added in block order, so the result does not depend on the thread count.
  constexpr int64_t kBlock = 1 << 16;
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  auto update = [&] {
    const int K = (int)c.size();
    std::vector<double> part((size_t)nblocks * K * 4, 0.0);  // per block: W, S, Q, P per cluster
    std::vector<int64_t> cpart((size_t)nblocks * K, 0);
    at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        double* W = &part[(size_t)b * K * 4];
        double *S = W + K, *Q = S + K, *P = Q + K;
        int64_t* C = &cpart[(size_t)b * K];
        for (int64_t i = b * kBlock, e = std::min(n, i + kBlock); i < e; ++i) {
          const int j = a[i];
          const double w = hw(h, i), d = (double)x[i] - c[j];
          W[j] += w;
          S[j] += w * d;
          Q[j] += w * d * d;
          P[j] += d;
          ++C[j];
        }
      }
    });
    std::vector<double> W(K, 0), S(K, 0), Q(K, 0), P(K, 0);
    std::vector<int64_t> C(K, 0);
    for (int64_t b = 0; b < nblocks; ++b) {
      const double* pb = &part[(size_t)b * K * 4];
      for (int j = 0; j < K; ++j) {
        W[j] += pb[j];
        S[j] += pb[K + j];
        Q[j] += pb[2 * K + j];
        P[j] += pb[3 * K + j];
        C[j] += cpart[(size_t)b * K + j];
      }
    }
    std::vector<int32_t> remap(K, -1);
    std::vector<std::pair<double, int>> kept;  // (centre, old id)
    double d = 0, r = 0;
    for (int j = 0; j < K; ++j) {
      if (C[j] == 0) continue;
      kept.push_back({c[j] + (W[j] > 0 ? S[j] / W[j] : P[j] / (double)C[j]), j});
      if (W[j] > 0) d += std::max(0.0, Q[j] - S[j] * S[j] / W[j]);
      r -= (double)C[j] * std::log2((double)C[j] / (double)n);
    }
    std::sort(kept.begin(), kept.end());
    c.clear();
    prob.clear();
    bool identity = kept.size() == (size_t)K;
    for (size_t t = 0; t < kept.size(); ++t) {
      remap[kept[t].second] = (int32_t)t;
      identity = identity && kept[t].second == (int)t;
      c.push_back(kept[t].first);
      prob.push_back((double)C[kept[t].second] / (double)n);
    }
    if (!identity) {
      at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) a[i] = remap[a[i]];
      });
    }
    bias.resize(c.size());
    for (size_t j = 0; j < c.size(); ++j) bias[j] = -p.lambda * std::log2(prob[j]);
    out.distortion = d;
    out.rate_bits = r;
    out.lagrangian = d + p.lambda * r;
    out.history.push_back({out.lagrangian, r, (int)c.size()});
  };

  if (first) {
    assign();  // all biases 0: nearest centre
    update();
  } else {
    // A resumed run first asks whether the last step already met this tolerance.
    const size_t m = out.history.size();
    if (m >= 2 && out.history[m - 2].lagrangian - out.history[m - 1].lagrangian <= p.tol * std::fabs(out.history[m - 2].lagrangian))
      return;
  }
  while (out.iterations < p.max_iter) {
    const double J = out.lagrangian;
    assign();
    update();
    ++out.iterations;
    if (J - out.lagrangian <= p.tol * std::fabs(J)) break;
  }
}

}  // namespace

ECSQResult ecsq1d(const float* x, const float* h, int64_t n, const std::vector<double>& init_centers,
                  const ECSQParams& p) {
  check_inputs(x, h, n, "ecsq1d");
  BB_CHECK(!init_centers.empty(), "ecsq1d: no initial centres");
  BB_CHECK(p.lambda >= 0 && std::isfinite(p.lambda), "ecsq1d: lambda must be >= 0, got ", p.lambda);
  ECSQResult out;
  out.centers = init_centers;
  std::sort(out.centers.begin(), out.centers.end());
  out.centers.erase(std::unique(out.centers.begin(), out.centers.end()), out.centers.end());
  ecsq_iterate(x, h, n, p, true, out);
  return out;
}

void ecsq1d_resume(const float* x, const float* h, int64_t n, const ECSQParams& p, ECSQResult& r) {
  check_inputs(x, h, n, "ecsq1d_resume");
  BB_CHECK((int64_t)r.assign.size() == n && !r.centers.empty() && r.prob.size() == r.centers.size() &&
               !r.history.empty(),
           "ecsq1d_resume: the state is not an ecsq1d result for these ", n, " points");
  ecsq_iterate(x, h, n, p, false, r);
}

}  // namespace bb
