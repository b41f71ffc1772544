// Lagrangian rate allocation over independent items (Shoham & Gersho 1988; Everett 1963): every
// item (a layer, a block of weights, ...) has a few operating points (rate, distortion); choose one
// point per item to minimise total distortion subject to a total rate budget. Distortions are
// assumed additive across items (weight MSE, a layer-output proxy, Young et al.'s logits MSE).
// The one allocator of the project: KQ (per-layer index widths) and TQ (per-block bit depths) use it.
//
// For a multiplier lambda the problem separates: each item minimises D + lambda * R on its own.
// Total rate falls as lambda grows, in steps at the slopes of the items' lower convex hulls, so
// the bisection on lambda that hits a rate target can be done exactly: starting from every item's
// cheapest point, walk the hull segments in order of decreasing slope -dD/dR (ties: the lower item
// index, then the item's own order) and take them while the budget allows. Every prefix of that
// walk is the solution of some lambda (tied items are switched one by one at the breakpoint),
// hence optimal for its own rate among *all* allocations, convex or not.
//
// The Lagrangian solution can leave part of the budget unused when the next hull step is large;
// RdFill chooses how the rest is spent (RdOptions::fill).
//
// Infeasibility (one behaviour for every caller): when even the cheapest point of every item
// exceeds the budget, rd_allocate does not throw; it returns those cheapest points with
// feasible = false and min_rate = their total rate, and the caller words its own error.
#pragma once
#include <cstdint>
#include <vector>

namespace bb {

struct RdPoint {
  double rate = 0;  // e.g. bits; finite, >= 0
  double dist = 0;  // e.g. squared error; finite, comparable across items
};

enum class RdFill {
  none,        // the pure Lagrangian solution: the walk stops at the first segment that does not fit
  hull_walk,   // keep walking: an item whose next hull segment does not fit is frozen, the walk
               // goes on with the (flatter) segments of the other items that still fit (TQ)
  best_ratio,  // stop the walk at the first segment that does not fit, then repeatedly take the
               // single upgrade to any Pareto point (not only the next hull point) with the most
               // distortion saved per unit rate that still fits (KQ)
};

struct RdOptions {
  RdFill fill = RdFill::hull_walk;
  // A step fits while rate <= budget * (1 + budget_rel_tol) (absorbs the rounding of a budget
  // computed as bpw x weights). The feasibility test uses the same bound.
  double budget_rel_tol = 1e-12;
};

struct RdAllocation {
  std::vector<int> choice;  // per item: index into its points
  double rate = 0, dist = 0;  // totals of the chosen points (summed in item order)
  // Distortion saved per unit rate at the last Lagrangian breakpoint taken (before any fill); if
  // none was taken, the steepest slope on offer (0 when no item has a second hull point).
  double lambda = 0;
  // true: the allocation lies on a supporting line of slope lambda (optimal for its rate).
  // false: a fill step spent leftover budget beyond the Lagrangian prefix; it only lowers
  // distortion, but optimality for the exact rate is no longer proven.
  bool lagrangian = true;
  int64_t lagrangian_steps = 0, fill_steps = 0;
  // false when the cheapest allocation (min_rate) exceeds the budget; choice then holds it.
  bool feasible = true;
  double min_rate = 0;  // total rate of every item's cheapest point
};

// Minimum-distortion allocation with total rate <= budget (see above). Items must have at least
// one point; a bad item (no points, non-finite value, negative rate) throws bb::Error.
RdAllocation rd_allocate(const std::vector<std::vector<RdPoint>>& items, double budget, const RdOptions& opt = {});

// Each item independently minimises dist + lambda * rate (ties: the lower rate, then the lower
// index).
RdAllocation rd_solve(const std::vector<std::vector<RdPoint>>& items, double lambda);

// Lower convex hull of one item's points, as indices by increasing rate and strictly decreasing
// distortion, starting at its lowest-rate (then lowest-distortion) point.
std::vector<int> rd_lower_hull(const std::vector<RdPoint>& points);

}  // namespace bb
