#include "quant/kmeans1d.h"
#include "common/error.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
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

ScalarQuantizer kmeans1d_dp(const float* x, const float* h, int64_t n, int k, int64_t max_bins) {
  check_inputs(x, h, n, "kmeans1d_dp");
  BB_CHECK(k >= 1, "kmeans1d_dp: k must be >= 1, got ", k);
  BB_CHECK(max_bins >= 0, "kmeans1d_dp: max_bins must be >= 0");
  Sorted s = sort_points(x, h, n);
  if (s.W[n] <= 0) return kmeans1d_dp(x, nullptr, n, k, max_bins);

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
  // Optional grouping of units into max_bins runs of near-equal count.
  int64_t m = (int64_t)unit_end.size();
  std::vector<int64_t> unit_start(m);
  for (int64_t u = 0; u < m; ++u) {
    // a unit starts after the previous one ends, skipping zero-weight points in between
    int64_t st = u == 0 ? 0 : unit_end[u - 1];
    unit_start[u] = st;
  }
  std::vector<int64_t> gstart, gend;  // sorted-position range of each group
  if (max_bins > 0 && m > max_bins) {
    for (int64_t g = 0; g < max_bins; ++g) {
      int64_t a = g * m / max_bins, b = (g + 1) * m / max_bins;
      gstart.push_back(unit_start[a]);
      gend.push_back(unit_end[b - 1]);
    }
  } else {
    gstart = unit_start;
    gend = unit_end;
  }
  // Group the trailing zero-weight points with the last group (they cost nothing).
  gend.back() = n;
  const int64_t G = (int64_t)gstart.size();
  // Prefix sums over groups: position g covers groups [0, g).
  std::vector<double> PW(G + 1, 0), PS(G + 1, 0), PQ(G + 1, 0);
  for (int64_t g = 0; g < G; ++g) {
    PW[g + 1] = PW[g] + s.seg_w(gstart[g], gend[g]);
    PS[g + 1] = PS[g] + (s.S[gend[g]] - s.S[gstart[g]]);
    PQ[g + 1] = PQ[g] + (s.Q[gend[g]] - s.Q[gstart[g]]);
  }
  auto cost = [&](int64_t a, int64_t b) {  // groups [a, b)
    double w = PW[b] - PW[a], sm = PS[b] - PS[a];
    return std::max(0.0, (PQ[b] - PQ[a]) - sm * sm / w);
  };

  const int K = (int)std::min<int64_t>(k, G);
  // dp[t][i]: best cost of groups [0, i) in t+1 clusters; arg[t][i]: start of the last cluster.
  std::vector<double> prev(G + 1), cur(G + 1);
  for (int64_t i = 1; i <= G; ++i) prev[i] = cost(0, i);
  std::vector<std::vector<int32_t>> arg(K);
  for (int t = 1; t < K; ++t) {
    arg[t].assign(G + 1, 0);
    std::vector<int32_t>& at = arg[t];
    // Divide and conquer: the optimal split point is monotone in i (the cost is Monge).
    std::function<void(int64_t, int64_t, int64_t, int64_t)> solve = [&](int64_t lo, int64_t hi, int64_t jlo, int64_t jhi) {
      if (lo > hi) return;
      int64_t mid = (lo + hi) / 2;
      int64_t best_j = jlo;
      double best = INFINITY;
      int64_t jend = std::min(jhi, mid - 1);
      for (int64_t j = jlo; j <= jend; ++j) {
        double v = prev[j] + cost(j, mid);
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
    std::swap(prev, cur);
  }

  // Backtrack the cluster boundaries (in groups).
  std::vector<int64_t> cut(K + 1);
  cut[K] = G;
  for (int t = K - 1; t >= 1; --t) cut[t] = arg[t][cut[t + 1]];
  cut[0] = 0;

  ScalarQuantizer out;
  out.centers.resize(K);
  std::vector<int32_t> group_cluster(G);
  for (int t = 0; t < K; ++t) {
    out.centers[t] = (PS[cut[t + 1]] - PS[cut[t]]) / (PW[cut[t + 1]] - PW[cut[t]]) + s.mu;
    for (int64_t g = cut[t]; g < cut[t + 1]; ++g) group_cluster[g] = t;
  }
  out.assign.assign(n, 0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t i = gstart[g]; i < gend[g]; ++i) out.assign[s.order[i]] = group_cluster[g];
  // Zero-weight points (between groups or before the first): nearest centre.
  if (h) {
    for (int64_t i = 0; i < n; ++i)
      if (h[i] == 0) out.assign[i] = nearest(out.centers, (double)x[i]);
  }
  out.distortion = weighted_distortion(x, h, n, out.centers, out.assign);
  return out;
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
  std::vector<int64_t> levels = level;
  std::sort(levels.begin(), levels.end());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  const int k = (int)levels.size();
  ScalarQuantizer out;
  out.assign.resize(n);
  std::vector<double> W(k, 0), S(k, 0), P(k, 0);
  std::vector<int64_t> C(k, 0);
  for (int64_t i = 0; i < n; ++i) {
    int j = (int)(std::lower_bound(levels.begin(), levels.end(), level[i]) - levels.begin());
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

ECSQResult ecsq1d(const float* x, const float* h, int64_t n, const std::vector<double>& init_centers,
                  const ECSQParams& p) {
  check_inputs(x, h, n, "ecsq1d");
  BB_CHECK(!init_centers.empty(), "ecsq1d: no initial centres");
  BB_CHECK(p.lambda >= 0 && std::isfinite(p.lambda), "ecsq1d: lambda must be >= 0, got ", p.lambda);
  std::vector<double> c = init_centers;
  std::sort(c.begin(), c.end());
  c.erase(std::unique(c.begin(), c.end()), c.end());
  std::vector<double> bias(c.size(), 0.0);  // -lambda log2 p_j
  std::vector<int32_t> a(n);

  // Assignment: the nearest centre bounds the search; a centre farther than
  // sqrt((best - min bias) / h) cannot win, and distances only grow moving outward.
  auto assign = [&] {
    const double bmin = *std::min_element(bias.begin(), bias.end());
    const int jbmin = (int)(std::min_element(bias.begin(), bias.end()) - bias.begin());
    const int K = (int)c.size();
    at::parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const double v = x[i], hi = hw(h, i);
        if (hi == 0) {
          a[i] = jbmin;
          continue;
        }
        int j0 = nearest(c, v);
        double best = hi * (v - c[j0]) * (v - c[j0]) + bias[j0];
        int bj = j0;
        for (int j = j0 - 1; j >= 0; --j) {
          double d = hi * (v - c[j]) * (v - c[j]);
          if (d + bmin >= best) break;
          if (d + bias[j] < best) {
            best = d + bias[j];
            bj = j;
          }
        }
        for (int j = j0 + 1; j < K; ++j) {
          double d = hi * (v - c[j]) * (v - c[j]);
          if (d + bmin >= best) break;
          if (d + bias[j] < best) {
            best = d + bias[j];
            bj = j;
          }
        }
        a[i] = bj;
      }
    });
  };
  // Update: centres = weighted means, p = counts / n, empty clusters dropped (serial sums, so
  // the result does not depend on the thread count).
  std::vector<double> prob;
  auto update = [&] {
    const int K = (int)c.size();
    std::vector<double> W(K, 0), S(K, 0), P(K, 0);
    std::vector<int64_t> C(K, 0);
    for (int64_t i = 0; i < n; ++i) {
      int j = a[i];
      W[j] += hw(h, i);
      S[j] += hw(h, i) * x[i];
      P[j] += x[i];
      ++C[j];
    }
    std::vector<int32_t> remap(K, -1);
    std::vector<std::pair<double, int>> kept;  // (centre, old id)
    for (int j = 0; j < K; ++j)
      if (C[j] > 0) kept.push_back({W[j] > 0 ? S[j] / W[j] : P[j] / (double)C[j], j});
    std::sort(kept.begin(), kept.end());
    c.clear();
    prob.clear();
    for (size_t t = 0; t < kept.size(); ++t) {
      remap[kept[t].second] = (int32_t)t;
      c.push_back(kept[t].first);
      prob.push_back((double)C[kept[t].second] / (double)n);
    }
    for (int64_t i = 0; i < n; ++i) a[i] = remap[a[i]];
    bias.resize(c.size());
    for (size_t j = 0; j < c.size(); ++j) bias[j] = -p.lambda * std::log2(prob[j]);
  };
  auto lagrangian = [&](double* dist, double* rate) {
    double d = 0, r = 0;
    for (int64_t i = 0; i < n; ++i) {
      double e = (double)x[i] - c[a[i]];
      d += hw(h, i) * e * e;
      r -= std::log2(prob[a[i]]);
    }
    *dist = d;
    *rate = r;
    return d + p.lambda * r;
  };

  assign();  // all biases 0: nearest centre
  update();
  double d = 0, r = 0;
  double J = lagrangian(&d, &r);
  ECSQResult out;
  for (int it = 0; it < p.max_iter; ++it) {
    assign();
    update();
    double d2, r2;
    double J2 = lagrangian(&d2, &r2);
    out.iterations = it + 1;
    bool stop = J - J2 <= p.tol * std::fabs(J);
    J = J2;
    d = d2;
    r = r2;
    if (stop) break;
  }
  out.centers = c;
  out.assign = std::move(a);
  out.prob = prob;
  out.distortion = d;
  out.rate_bits = r;
  out.lagrangian = J;
  return out;
}

}  // namespace bb
