// Lagrangian rate allocation over independent items (Shoham & Gersho 1988): every item (a block
// of weights, a layer, ...) has a few operating points (rate, distortion); choose one point per
// item to minimise total distortion subject to a total rate budget. Distortions are assumed
// additive across items, as in Young et al.'s transform quantization.
//
// For a multiplier lambda the problem separates: each item minimises D + lambda * R on its own.
// Total rate falls as lambda grows, in steps at the slopes of the items' lower convex hulls, so
// the bisection on lambda that hits a rate target can be done exactly: walk all hull segments in
// order of decreasing slope -dD/dR and take them while the budget allows. Every prefix of that
// walk is the solution of some lambda (tied items are switched one by one at the breakpoint),
// hence optimal for its own rate among *all* allocations, convex or not.
#pragma once
#include <vector>

namespace bb {

struct RdPoint {
  double rate = 0;  // e.g. bits
  double dist = 0;  // e.g. squared error; comparable across items
};

struct RdAllocation {
  std::vector<int> choice;  // per item: index into its points
  double rate = 0, dist = 0;
  double lambda = 0;        // distortion per unit rate at the last breakpoint taken
  // true: the allocation lies on a supporting line of slope lambda (optimal for its rate).
  // false: after the Lagrangian prefix, a fill step spent leftover budget on further segments
  // that fit; it only lowers distortion, but optimality for the exact rate is no longer proven.
  bool lagrangian = true;
};

// Each item independently minimises dist + lambda * rate (ties: the lower rate, then the lower
// index). Items must have at least one point.
RdAllocation rd_solve(const std::vector<std::vector<RdPoint>>& items, double lambda);

// Minimum-distortion allocation with total rate <= budget: the exact Lagrangian walk described
// above, then (fill = true) leftover budget spent greedily on segments that still fit.
// If even the lowest-rate points exceed the budget, returns them (rate > budget: caller checks).
RdAllocation rd_allocate(const std::vector<std::vector<RdPoint>>& items, double budget, bool fill = true);

// Lower convex hull of one item's points, as indices by increasing rate and strictly decreasing
// distortion, starting at its lowest-rate (then lowest-distortion) point.
std::vector<int> rd_lower_hull(const std::vector<RdPoint>& points);

}  // namespace bb
