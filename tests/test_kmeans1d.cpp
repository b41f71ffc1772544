#include <catch2/catch.hpp>

#include "common/error.h"
#include "quant/kmeans1d.h"
#include "quant/weight_sharing.h"

#include <algorithm>
#include <cmath>
#include <random>

using namespace bb;

namespace {

// Minimum weighted distortion over ALL k^n assignments (not only contiguous ones), each cluster
// at the weighted mean of its members.
double brute_force(const std::vector<float>& x, const std::vector<float>& h, int k) {
  const int n = (int)x.size();
  std::vector<int> a(n, 0);
  double best = INFINITY;
  for (;;) {
    std::vector<double> W(k, 0), S(k, 0), Q(k, 0);
    for (int i = 0; i < n; ++i) {
      double w = h.empty() ? 1.0 : h[i];
      W[a[i]] += w;
      S[a[i]] += w * x[i];
      Q[a[i]] += w * x[i] * x[i];
    }
    double d = 0;
    for (int j = 0; j < k; ++j)
      if (W[j] > 0) d += Q[j] - S[j] * S[j] / W[j];
    best = std::min(best, d);
    int i = 0;
    while (i < n && ++a[i] == k) a[i++] = 0;
    if (i == n) break;
  }
  return best;
}

std::vector<float> laplace(int64_t n, uint64_t seed, double scale = 0.05) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> e(1.0 / scale);
  std::bernoulli_distribution s(0.5);
  std::vector<float> x(n);
  for (auto& v : x) v = (float)(s(rng) ? e(rng) : -e(rng));
  return x;
}

std::vector<float> positive(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> d(0.0, 1.5);
  std::vector<float> h(n);
  for (auto& v : h) v = (float)d(rng);
  return h;
}

}  // namespace

TEST_CASE("kmeans1d_dp equals brute force on small inputs", "[kmeans1d]") {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    const int n = 3 + trial % 6;      // 3..8 points
    const int k = 1 + trial % 3;      // 1..3 clusters
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> x(n), h(n);
    for (auto& v : x) v = u(rng);
    if (trial % 5 == 0) x[1] = x[0];  // ties
    for (auto& v : h) v = std::fabs(u(rng)) + 0.01f;
    const bool weighted = trial % 2 == 0;
    auto q = kmeans1d_dp(x.data(), weighted ? h.data() : nullptr, n, k);
    double ref = brute_force(x, weighted ? h : std::vector<float>{}, k);
    INFO("trial " << trial << " n=" << n << " k=" << k);
    REQUIRE(q.distortion == Approx(ref).margin(1e-12).epsilon(1e-9));
    REQUIRE(q.distortion == Approx(weighted_distortion(x.data(), weighted ? h.data() : nullptr, n, q.centers, q.assign)));
  }
}

TEST_CASE("kmeans1d_dp is never worse than Lloyd and Lloyd cannot improve it", "[kmeans1d]") {
  auto x = laplace(5000, 1);
  auto h = positive(5000, 2);
  for (int k : {2, 5, 16, 40}) {
    auto dp = kmeans1d_dp(x.data(), h.data(), (int64_t)x.size(), k);
    KMeans1DParams p;
    p.k = k;
    for (uint64_t seed = 0; seed < 3; ++seed) {
      p.seed = seed;
      auto ll = kmeans1d_lloyd(x.data(), h.data(), (int64_t)x.size(), p);
      REQUIRE(dp.distortion <= ll.distortion * (1 + 1e-12));
    }
    REQUIRE((int)dp.centers.size() == k);
    for (size_t j = 1; j < dp.centers.size(); ++j) REQUIRE(dp.centers[j] > dp.centers[j - 1]);
  }
}

TEST_CASE("Hessian-weighted k-means is never worse than unweighted at the weighted distortion", "[kmeans1d]") {
  auto x = laplace(20000, 3);
  auto h = positive(20000, 4);
  // Importance that depends on the value (as real Hessians do: small weights in sensitive layers
  // matter most). With h independent of x the weighted optimum is the unweighted one in
  // expectation, and the two would tie.
  for (size_t i = 0; i < x.size(); ++i) h[i] *= (float)(1.0 + 20.0 * std::exp(-std::fabs(x[i]) / 0.02));
  const int64_t n = (int64_t)x.size();
  for (int k : {2, 4, 8, 16, 32}) {
    auto weighted = kmeans1d_dp(x.data(), h.data(), n, k);
    auto plain = kmeans1d_dp(x.data(), nullptr, n, k);
    // The unweighted solution judged by the weighted objective (its own centres).
    double plain_at_weighted = weighted_distortion(x.data(), h.data(), n, plain.centers, plain.assign);
    INFO("k=" << k);
    REQUIRE(weighted.distortion <= plain_at_weighted);
    // Heavy-tailed importance makes the difference real, not a tie.
    if (k >= 4) REQUIRE(weighted.distortion < 0.99 * plain_at_weighted);
  }
}

TEST_CASE("kmeans1d_dp with bins approximates the exact optimum from above", "[kmeans1d]") {
  auto x = laplace(50000, 5);
  auto h = positive(50000, 6);
  const int64_t n = (int64_t)x.size();
  auto exact = kmeans1d_dp(x.data(), h.data(), n, 16);
  auto binned = kmeans1d_dp(x.data(), h.data(), n, 16, 4096);
  REQUIRE(binned.distortion >= exact.distortion * (1 - 1e-12));
  REQUIRE(binned.distortion <= exact.distortion * 1.01);
  auto all_bins = kmeans1d_dp(x.data(), h.data(), n, 16, n);
  REQUIRE(all_bins.distortion == Approx(exact.distortion).epsilon(1e-12));
}

TEST_CASE("kmeans1d handles degenerate inputs", "[kmeans1d]") {
  std::vector<float> x = {0.5f, 0.5f, 0.5f, -1.f, -1.f};
  for (int k : {1, 2, 3, 8}) {
    auto dp = kmeans1d_dp(x.data(), nullptr, 5, k);
    KMeans1DParams p;
    p.k = k;
    auto ll = kmeans1d_lloyd(x.data(), nullptr, 5, p);
    REQUIRE((int)dp.centers.size() == std::min(k, 2));
    REQUIRE((int)ll.centers.size() == std::min(k, 2));
    if (k >= 2) {
      REQUIRE(dp.distortion == 0);
      REQUIRE(ll.distortion == 0);
    }
  }
  // Zero weights: those points cost nothing and join their nearest centre.
  std::vector<float> y = {0.f, 0.1f, 5.f, 5.1f, 100.f};
  std::vector<float> h = {1, 1, 1, 1, 0};
  auto dp = kmeans1d_dp(y.data(), h.data(), 5, 2);
  REQUIRE(dp.centers[0] == Approx(0.05));
  REQUIRE(dp.centers[1] == Approx(5.05));
  REQUIRE(dp.assign[4] == 1);
  std::vector<float> bad = {1.f, NAN};
  REQUIRE_THROWS_AS(kmeans1d_dp(bad.data(), nullptr, 2, 2), Error);
  std::vector<float> good = {1.f, 2.f};
  std::vector<float> negh = {1.f, -1.f};
  REQUIRE_THROWS_AS(kmeans1d_lloyd(good.data(), negh.data(), 2, KMeans1DParams{}), Error);
  REQUIRE_THROWS_AS(kmeans1d_dp(good.data(), negh.data(), 2, 2), Error);
  REQUIRE_THROWS_AS(kmeans1d_lloyd(bad.data(), nullptr, 2, KMeans1DParams{}), Error);
}

TEST_CASE("kmeans1d_lloyd is deterministic given the seed and decreases from its seeding", "[kmeans1d]") {
  auto x = laplace(10000, 8);
  KMeans1DParams p;
  p.k = 16;
  p.seed = 11;
  auto a = kmeans1d_lloyd(x.data(), nullptr, (int64_t)x.size(), p);
  auto b = kmeans1d_lloyd(x.data(), nullptr, (int64_t)x.size(), p);
  REQUIRE(a.centers == b.centers);
  REQUIRE(a.assign == b.assign);
  p.max_iter = 1;
  auto one = kmeans1d_lloyd(x.data(), nullptr, (int64_t)x.size(), p);
  REQUIRE(a.distortion <= one.distortion);
  // Every point sits at its nearest centre at convergence.
  for (size_t i = 0; i < x.size(); i += 97) {
    double d = std::fabs(x[i] - a.centers[a.assign[i]]);
    for (double c : a.centers) REQUIRE(d <= std::fabs(x[i] - c) + 1e-9);
  }
}

TEST_CASE("uniform1d: evenly spaced thresholds, weighted-mean values", "[kmeans1d]") {
  std::vector<float> x = {-0.26f, -0.24f, -0.01f, 0.02f, 0.04f, 0.11f, 0.3f};
  std::vector<float> h = {1, 3, 1, 1, 2, 1, 1};
  auto q = uniform1d(x.data(), h.data(), 7, 0.1);
  // levels: -3 (-0.26), -2 (-0.24), 0 (-0.01, 0.02, 0.04), 1 (0.11), 3 (0.3)
  REQUIRE(q.centers.size() == 5);
  REQUIRE(q.assign == std::vector<int32_t>({0, 1, 2, 2, 2, 3, 4}));
  REQUIRE(q.centers[2] == Approx((-0.01 + 0.02 + 2 * 0.04) / 4));
  REQUIRE_THROWS_AS(uniform1d(x.data(), h.data(), 7, 0), Error);
}

TEST_CASE("ecsq1d lowers its Lagrangian and trades rate for distortion", "[kmeans1d]") {
  auto x = laplace(20000, 9);
  auto h = positive(20000, 10);
  const int64_t n = (int64_t)x.size();
  auto init = uniform1d(x.data(), h.data(), n, 0.005).centers;
  ECSQParams p;
  double prev_rate = INFINITY, prev_dist = 0;
  for (double lambda : {1e-6, 1e-5, 1e-4, 1e-3}) {
    p.lambda = lambda;
    auto r = ecsq1d(x.data(), h.data(), n, init, p);
    REQUIRE(r.rate_bits == Approx(assignment_entropy_bits(r.assign, (int)r.centers.size())));
    REQUIRE(r.distortion == Approx(weighted_distortion(x.data(), h.data(), n, r.centers, r.assign)));
    // More weight on rate: lower rate, higher distortion.
    REQUIRE(r.rate_bits <= prev_rate);
    REQUIRE(r.distortion >= prev_dist);
    prev_rate = r.rate_bits;
    prev_dist = r.distortion;
    // The iteration lowers the Lagrangian from where it starts (each point at its nearest
    // initial centre) ...
    {
      std::vector<int32_t> a0(n);
      for (int64_t i = 0; i < n; ++i) {
        size_t best = 0;
        for (size_t j = 1; j < init.size(); ++j)
          if (std::fabs(x[i] - init[j]) < std::fabs(x[i] - init[best])) best = j;
        a0[i] = (int32_t)best;
      }
      std::vector<double> c0(init.size(), 0.0), w0(init.size(), 0.0);
      for (int64_t i = 0; i < n; ++i) { c0[a0[i]] += (double)h[i] * x[i]; w0[a0[i]] += h[i]; }
      for (size_t j = 0; j < init.size(); ++j) c0[j] = w0[j] > 0 ? c0[j] / w0[j] : init[j];
      double L0 = weighted_distortion(x.data(), h.data(), n, c0, a0) +
                  lambda * assignment_entropy_bits(a0, (int)init.size());
      REQUIRE(r.lagrangian <= L0);
    }
    // ... and stops at a fixed point: one more ECSQ assignment step with its own centres and
    // probabilities gains less than the stopping tolerance allows.
    std::vector<int32_t> a1(n);
    double L1 = 0;
    for (int64_t i = 0; i < n; ++i) {
      double best = INFINITY;
      for (size_t j = 0; j < r.centers.size(); ++j) {
        double d = x[i] - r.centers[j];
        double cost = h[i] * d * d - lambda * std::log2(r.prob[j]);
        if (cost < best) { best = cost; a1[i] = (int32_t)j; }
      }
      L1 += best;
    }
    REQUIRE(L1 >= r.lagrangian * (1 - 1e-5));
  }
}

TEST_CASE("ECSQ hits a requested entropy within 2% by bisection on lambda", "[kmeans1d]") {
  auto x = laplace(30000, 12);
  auto h = positive(30000, 13);
  const int64_t n = (int64_t)x.size();
  auto init = uniform1d(x.data(), h.data(), n, 0.002).centers;
  for (double target : {0.5, 1.0, 2.0, 3.0, 4.0}) {
    auto entropy_at = [&](double lambda) {
      ECSQParams p;
      p.lambda = lambda;
      return ecsq1d(x.data(), h.data(), n, init, p).rate_bits / (double)n;
    };
    auto r = search_rate(1e-8, 1e-2, target, 0.005, 60, entropy_at);
    INFO("target " << target << " reached " << r.bpw << " after " << r.evals << " evaluations");
    REQUIRE(std::fabs(r.bpw - target) <= 0.02 * target);
    REQUIRE(entropy_at(r.knob) == r.bpw);  // reproducible
  }
}

TEST_CASE("search_rate_secant reaches ECSQ targets in fewer evaluations than bisection", "[kmeans1d]") {
  auto x = laplace(30000, 12);
  auto h = positive(30000, 13);
  const int64_t n = (int64_t)x.size();
  auto init = uniform1d(x.data(), h.data(), n, 0.002).centers;
  auto entropy_at = [&](double lambda) {
    ECSQParams p;
    p.lambda = lambda;
    return ecsq1d(x.data(), h.data(), n, init, p).rate_bits / (double)n;
  };
  int secant_evals = 0, bisection_evals = 0;
  for (double target : {0.5, 1.0, 2.0, 3.0, 4.0}) {
    // Started 100x away from the answer on purpose (the real start is a high-rate estimate).
    auto r = search_rate_secant(1e-3, -1 / (2 * std::log(2.0)), target, 0.005, 60, entropy_at);
    auto b = search_rate(1e-8, 1e-2, target, 0.005, 60, entropy_at);
    INFO("target " << target << ": secant " << r.bpw << " in " << r.evals << ", bisection " << b.bpw << " in " << b.evals);
    REQUIRE(std::fabs(r.bpw - target) <= 0.02 * target);
    REQUIRE(entropy_at(r.knob) == r.bpw);
    secant_evals += r.evals;
    bisection_evals += b.evals;
  }
  INFO("secant " << secant_evals << " evaluations, bisection " << bisection_evals);
  CHECK(secant_evals < bisection_evals);
}

TEST_CASE("search_rate_secant: linear, far-off start, a jump, a flat rate", "[kmeans1d]") {
  // Exactly linear in log t: the second evaluation lands on the target.
  auto lin = [](double t) { return 3.0 - 0.5 * std::log(t); };
  auto r = search_rate_secant(1.0, -0.5, 2.0, 1e-6, 60, lin);
  REQUIRE(r.evals == 2);
  REQUIRE(std::fabs(r.bpw - 2.0) < 1e-9);
  // A wrong slope and a start 10^8 away: still bracketed and solved.
  r = search_rate_secant(1e-8, -5.0, 2.0, 1e-4, 60, lin);
  REQUIRE(std::fabs(r.bpw - 2.0) <= 2e-4);
  REQUIRE(r.evals <= 12);
  // A jump over the target: the search ends at one side of it, within max_evals.
  auto step = [](double t) { return t < 1.0 ? 3.0 : 1.0; };
  // It stops on the bracket-width rule (20 evaluations when written), long before max_evals = 40.
  r = search_rate_secant(0.01, -0.7, 2.0, 1e-3, 40, step);
  REQUIRE(r.evals <= 25);
  REQUIRE(std::fabs(r.bpw - 2.0) == 1.0);
  // A rate that never reaches the target: max_evals bounds the work.
  r = search_rate_secant(1.0, -0.7, 2.0, 1e-3, 15, [](double) { return 5.0; });
  REQUIRE(r.evals == 15);
  REQUIRE_THROWS(search_rate_secant(1.0, 0.5, 2.0, 1e-3, 10, lin));  // slope must be < 0
}

TEST_CASE("ecsq1d resumed to a tighter tol equals a run to that tol from the start", "[kmeans1d]") {
  auto x = laplace(20000, 14);
  auto h = positive(20000, 15);
  const int64_t n = (int64_t)x.size();
  auto init = uniform1d(x.data(), h.data(), n, 0.002).centers;
  for (double lambda : {1e-4, 1e-3}) {
    ECSQParams loose, tight;
    loose.lambda = tight.lambda = lambda;
    loose.tol = 1e-3;
    tight.tol = 1e-9;
    tight.max_iter = loose.max_iter = 60;
    ECSQResult a = ecsq1d(x.data(), h.data(), n, init, loose);
    const int loose_iters = a.iterations;
    ecsq1d_resume(x.data(), h.data(), n, tight, a);
    ECSQResult b = ecsq1d(x.data(), h.data(), n, init, tight);
    INFO("lambda " << lambda << ": loose " << loose_iters << ", resumed to " << a.iterations << ", fresh " << b.iterations);
    REQUIRE(loose_iters < b.iterations);  // the loose run really stopped earlier
    REQUIRE(a.iterations == b.iterations);
    REQUIRE(a.assign == b.assign);
    REQUIRE(a.centers == b.centers);
    REQUIRE(a.lagrangian == b.lagrangian);
    REQUIRE(a.history.size() == b.history.size());
    // Resuming a finished run under the same tol does nothing.
    ecsq1d_resume(x.data(), h.data(), n, tight, b);
    REQUIRE(b.iterations == a.iterations);
  }
  ECSQResult bad;
  REQUIRE_THROWS(ecsq1d_resume(x.data(), h.data(), n, ECSQParams{}, bad));
}

TEST_CASE("ecsq_assign picks exactly the reference's cluster", "[kmeans1d]") {
  std::mt19937_64 rng(21);
  std::normal_distribution<double> N(0.0, 1.0);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  for (int K : {1, 2, 7, 300, 1024}) {
    for (double lambda : {0.0, 1e-4, 1e-2, 1.0, 100.0}) {
      INFO("K " << K << " lambda " << lambda);
      const int64_t n = 20000;
      std::vector<float> x(n), h(n);
      for (int64_t i = 0; i < n; ++i) {
        x[i] = (float)(i % 97 == 0 ? 8 * N(rng) : N(rng));  // a few outliers
        const double u = U(rng);
        h[i] = (float)(i % 13 == 0 ? 0.0 : u < 0.1 ? 1e-9 * u : std::exp(3 * N(rng)));  // zeros, tiny, heavy-tailed
      }
      std::vector<double> c(K), bias(K);
      for (int j = 0; j < K; ++j) c[j] = 4 * N(rng);
      std::sort(c.begin(), c.end());
      c.erase(std::unique(c.begin(), c.end()), c.end());
      bias.resize(c.size());
      for (size_t j = 0; j < c.size(); ++j)  // -lambda log2 p with some equal probabilities
        bias[j] = -lambda * std::log2(j % 5 == 0 ? 0.01 : 0.001 + U(rng));
      std::vector<float> zeros(n, 0.0f);
      for (const float* hp : {(const float*)h.data(), (const float*)nullptr, (const float*)zeros.data()}) {
        INFO((hp == h.data() ? "weighted" : hp ? "all h = 0" : "h = nullptr"));
        std::vector<int32_t> fast(n, -1), ref(n, -1);
        ecsq_assign(x.data(), hp, n, c, bias, fast.data());
        ecsq_assign_ref(x.data(), hp, n, c, bias, ref.data());
        for (int64_t i = 0; i < n; ++i) {
          INFO("point " << i << " x " << x[i] << " h " << (hp ? hp[i] : 1.0f));
          REQUIRE(fast[i] == ref[i]);  // the same minimum, and the same one of tied minima
        }
      }
    }
  }
}

TEST_CASE("KMeans1DDP kept alive over a k search equals a fresh DP for every k", "[kmeans1d]") {
  std::mt19937_64 rng(31);
  std::normal_distribution<double> N(0.0, 1.0);
  const int64_t n = 3000;
  std::vector<float> x(n), h(n);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = (float)N(rng);
    h[i] = (float)std::exp(N(rng));
  }
  KMeans1DDP dp(x.data(), h.data(), n);
  // The order a doubling-then-bisection search visits: later, smaller k are backtracks only.
  for (int k : {2, 4, 8, 16, 12, 10, 11, 1}) {
    INFO("k " << k);
    const ScalarQuantizer kept = dp.solve(k), fresh = kmeans1d_dp(x.data(), h.data(), n, k);
    CHECK(kept.centers == fresh.centers);
    CHECK(kept.assign == fresh.assign);
    CHECK(kept.distortion == fresh.distortion);
  }
  CHECK(dp.clusters_solved() == 16);  // the DP was extended only up to the largest k asked for
}
