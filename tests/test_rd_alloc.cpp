// The one rate allocator (quant/rd_alloc.h), as KQ (best-ratio fill, exact budget) and TQ
// (hull-walk fill) use it: hulls, optimality against exhaustive search / knapsack, fill modes,
// infeasibility.
#include <catch2/catch.hpp>

#include "common/error.h"
#include "quant/rd_alloc.h"

#include <cmath>
#include <random>

using namespace bb;

namespace {

// KQ's configuration of the allocator.
RdOptions kq_options() {
  RdOptions o;
  o.fill = RdFill::best_ratio;
  o.budget_rel_tol = 0;
  return o;
}

// Exhaustive minimum distortion within the budget.
double brute_force(const std::vector<std::vector<RdPoint>>& layers, double budget) {
  double best = 1e300;
  std::vector<size_t> c(layers.size(), 0);
  for (;;) {
    double r = 0, d = 0;
    for (size_t l = 0; l < layers.size(); ++l) {
      r += layers[l][c[l]].rate;
      d += layers[l][c[l]].dist;
    }
    if (r <= budget * (1 + 1e-12)) best = std::min(best, d);  // the allocator's sums round differently
    size_t l = 0;
    while (l < layers.size() && ++c[l] == layers[l].size()) c[l++] = 0;
    if (l == layers.size()) break;
  }
  return best;
}

// Exact optimum for integer rates by dynamic programming over the budget (multiple-choice knapsack).
double knapsack(const std::vector<std::vector<RdPoint>>& layers, int64_t budget) {
  std::vector<double> best(budget + 1, 0.0), next(budget + 1);
  for (auto& l : layers) {
    std::fill(next.begin(), next.end(), 1e300);
    for (int64_t b = 0; b <= budget; ++b)
      for (auto& q : l) {
        int64_t r = (int64_t)q.rate;
        if (r <= b && best[b - r] < 1e299) next[b] = std::min(next[b], best[b - r] + q.dist);
      }
    best.swap(next);
  }
  return best[budget];
}

// Rate-distortion points of a quantizer: D ~ 2^(-2b) times a per-layer scale, rate ~ n*b + 2^b*c.
std::vector<std::vector<RdPoint>> random_layers(std::mt19937& rng, int L, int B) {
  std::uniform_real_distribution<double> U(0.5, 2.0);
  std::vector<std::vector<RdPoint>> layers(L);
  for (int l = 0; l < L; ++l) {
    double n = 100 * U(rng), s = U(rng), c = 5 * U(rng);
    for (int b = 1; b <= B; ++b)
      layers[l].push_back({std::round(n * b + c * (1 << b)), s * std::pow(2.0, -2.0 * b) * U(rng)});
  }
  return layers;
}

}  // namespace

TEST_CASE("rd_alloc: lower convex hull drops dominated and non-convex points", "[alloc][kq][tq]") {
  std::vector<RdPoint> pts = {{10, 5}, {20, 3}, {30, 2.9}, {40, 1}, {25, 6}, {50, 0.9}};
  // (25,6) is dominated by (20,3); (30,2.9) lies above the segment (20,3)-(40,1).
  REQUIRE(rd_lower_hull(pts) == std::vector<int>{0, 1, 3, 5});
  std::vector<RdPoint> pts2 = {{0, 10}, {1, 9.5}, {2, 5}, {3, 6}, {4, 1}, {4, 0.5}, {5, 0.5}};
  REQUIRE(rd_lower_hull(pts2) == std::vector<int>({0, 2, 5}));
}

TEST_CASE("rd_alloc (KQ): respects the budget and is optimal at hull budgets", "[alloc][kq]") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    auto layers = random_layers(rng, 4, 5);
    double lo = 0, hi = 0;
    for (auto& l : layers) {
      lo += l.front().rate;
      hi += l.back().rate;
    }
    for (double f : {0.0, 0.1, 0.3, 0.5, 0.8, 1.0}) {
      double budget = lo + f * (hi - lo);
      auto r = rd_allocate(layers, budget, kq_options());
      REQUIRE(r.feasible);
      REQUIRE(r.rate <= budget + 1e-9);
      double opt = brute_force(layers, budget);
      REQUIRE(r.dist >= opt - 1e-12);
      // Pure Lagrangian solutions are optimal for their own rate: check that one.
      RdOptions pl = kq_options();
      pl.fill = RdFill::none;
      auto rl = rd_allocate(layers, budget, pl);
      REQUIRE(rl.lagrangian);
      REQUIRE(rl.fill_steps == 0);
      REQUIRE(rl.dist == Approx(brute_force(layers, rl.rate)).epsilon(1e-12));
      REQUIRE(r.dist <= rl.dist + 1e-15);
      // The fill starts from the same Lagrangian prefix.
      REQUIRE(r.lagrangian_steps == rl.lagrangian_steps);
      REQUIRE(r.lagrangian == (r.fill_steps == 0));
    }
  }
}

TEST_CASE("rd_alloc (KQ): many layers land close to the budget", "[alloc][kq]") {
  std::mt19937 rng(11);
  auto layers = random_layers(rng, 40, 10);
  double lo = 0, hi = 0;
  for (auto& l : layers) {
    lo += l.front().rate;
    hi += l.back().rate;
  }
  for (double f : {0.05, 0.2, 0.5, 0.9}) {
    double budget = lo + f * (hi - lo);
    auto r = rd_allocate(layers, budget, kq_options());
    REQUIRE(r.rate <= budget);
    REQUIRE(r.rate >= 0.98 * budget);
    // Within a few percent of the exact optimum (dynamic programming on the integer rates).
    double opt = knapsack(layers, (int64_t)budget);
    INFO("budget fraction " << f << ": distortion " << r.dist << ", optimum " << opt);
    REQUIRE(r.dist >= opt * (1 - 1e-12));
    REQUIRE(r.dist <= opt * 1.05);
  }
}

TEST_CASE("rd_alloc (TQ): Lagrangian-optimal against exhaustive search", "[alloc][tq]") {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0.05, 1.0);
  for (int trial = 0; trial < 20; ++trial) {
    // 4 items, 5 operating points each, convex decreasing D(R) with item-specific sizes.
    std::vector<std::vector<RdPoint>> items(4);
    for (auto& it : items) {
      const double size = 1 + (int)(u(rng) * 4);
      double d = 10 * u(rng), drop = d * u(rng);
      for (int r = 0; r < 5; ++r) {
        it.push_back({size * r, d});
        d -= drop;
        drop *= u(rng);  // shrinking decrements: convex
      }
    }
    // Exhaustive: minimum distortion at each rate budget.
    auto best_at = [&](double budget) {
      double best = INFINITY;
      for (int c = 0; c < 625; ++c) {
        double r = 0, d = 0;
        for (int i = 0, cc = c; i < 4; ++i, cc /= 5) {
          r += items[i][cc % 5].rate;
          d += items[i][cc % 5].dist;
        }
        if (r <= budget + 1e-9) best = std::min(best, d);
      }
      return best;
    };
    for (double budget = 0; budget <= 60; budget += 1) {
      RdOptions none;
      none.fill = RdFill::none;
      RdAllocation a = rd_allocate(items, budget, none);
      REQUIRE(a.feasible);
      REQUIRE(a.rate <= budget + 1e-9);
      CHECK(a.lagrangian);
      CHECK(a.dist == Approx(best_at(a.rate)).epsilon(1e-12));
      RdAllocation f = rd_allocate(items, budget);  // TQ's configuration: the defaults
      CHECK(f.rate <= budget + 1e-9);
      CHECK(f.dist <= a.dist + 1e-12);
      CHECK(f.dist >= best_at(budget) - 1e-12);
      CHECK(f.lagrangian_steps == a.lagrangian_steps);
      CHECK(f.lagrangian == (f.fill_steps == 0));
      CHECK(f.lambda == a.lambda);
    }
    // The per-lambda solutions are optimal for their own rate as well.
    for (double lambda : {0.0, 0.01, 0.1, 0.3, 1.0, 3.0, 100.0}) {
      RdAllocation s = rd_solve(items, lambda);
      CHECK(s.dist == Approx(best_at(s.rate)).epsilon(1e-12));
    }
  }
}

TEST_CASE("rd_alloc: the fill modes differ as documented", "[alloc][kq][tq]") {
  // Item 0: a steep first step (10 bits saves 100) then a big one (100 bits saves 50).
  // Item 1: one flat step (20 bits saves 10). Item 2: cheaper Pareto point off the hull.
  std::vector<std::vector<RdPoint>> items = {
      {{0, 200}, {10, 100}, {110, 50}},
      {{0, 30}, {20, 20}},
      {{0, 10}, {5, 9.9}, {30, 0}},
  };
  // Budget 45: the walk takes item 0's first step (slope 10, 10 bits); next in slope order is item
  // 0's second step (slope 0.5, tied with item 1 and first by index), 100 bits: it does not fit.
  RdOptions none;
  none.fill = RdFill::none;
  auto a = rd_allocate(items, 45, none);
  CHECK(a.choice == std::vector<int>{1, 0, 0});
  CHECK(a.lambda == 10);
  CHECK(a.lagrangian_steps == 1);
  // hull_walk: freezes item 0 (100 bits do not fit) and goes on: item 1 (slope 0.5) fits (30 bits),
  // item 2 (slope 1/3, 30 bits) no longer does.
  auto h = rd_allocate(items, 45);
  CHECK(h.choice == std::vector<int>{1, 1, 0});
  CHECK(!h.lagrangian);
  CHECK(h.fill_steps == 1);
  CHECK(h.lambda == 10);  // the last Lagrangian breakpoint, not the fill's
  // best_ratio: from {1, 0, 0} (35 bits left) the best ratio that fits is item 1's 10/20, then
  // item 2's off-hull point (0.1 saved for 5 bits) still fits.
  auto b = rd_allocate(items, 45, kq_options());
  CHECK(b.choice == std::vector<int>{1, 1, 1});
  CHECK(b.fill_steps == 2);
  CHECK(b.rate == 35);
}

TEST_CASE("rd_alloc: infeasible budgets return the cheapest points, flagged, for every caller", "[alloc][kq][tq]") {
  std::vector<std::vector<RdPoint>> layers = {{{20, 0.5}, {10, 1}}, {{5, 2}}};
  for (const RdOptions& o : {RdOptions{}, kq_options()}) {
    auto r = rd_allocate(layers, 14, o);
    CHECK(!r.feasible);
    CHECK(r.min_rate == 15);
    CHECK(r.rate == 15);
    CHECK(r.choice == std::vector<int>{1, 0});
    r = rd_allocate(layers, 15, o);
    CHECK(r.feasible);
    CHECK(r.min_rate == 15);
    CHECK(r.choice == std::vector<int>{1, 0});
    r = rd_allocate(layers, 1000, o);
    CHECK(r.feasible);
    CHECK(r.choice == std::vector<int>{0, 0});
    CHECK(r.rate == 25);
  }
  // A budget below zero is infeasible as well (KQ: fixed bits above the target).
  CHECK(!rd_allocate(layers, -1, kq_options()).feasible);
  // Bad items are errors, not allocations.
  using Items = std::vector<std::vector<RdPoint>>;
  CHECK_THROWS_AS(rd_allocate(Items(1), 10), Error);
  CHECK_THROWS_AS(rd_allocate(Items(1, std::vector<RdPoint>{RdPoint{-1, 0}}), 10), Error);
  CHECK_THROWS_AS(rd_allocate(Items(1, std::vector<RdPoint>{RdPoint{1, NAN}}), 10), Error);
}
