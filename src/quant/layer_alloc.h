// Per-layer rate allocation under a total bit budget (Lagrangian / convex-hull method).
//
// Each layer offers a few operating points (e.g. one per index width b), each with a rate in bits
// and a distortion (any additive proxy: weight MSE, layer-output error on calibration inputs).
// The allocation minimises sum(distortion) subject to sum(rate) <= budget:
//   1. Lagrangian solution: per layer keep the lower convex hull of its (rate, distortion) points;
//      starting from every layer's cheapest point, take hull steps in order of steepest distortion
//      decrease per bit while they fit. This is exactly the sequence of solutions of
//      min sum D + lambda * R as lambda decreases (Shoham & Gersho 1988; Everett 1963).
//   2. Greedy fill: the Lagrangian solution can leave part of the budget unused when the next hull
//      step is large; spend the rest on the best remaining (any-point) upgrades that still fit, so
//      the achieved rate lands close to the budget.
// Generic: no knowledge of what an operating point means; callers keep their own payload by index.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bb {

struct AllocPoint {
  double rate_bits = 0;   // what choosing this point costs
  double distortion = 0;  // additive across layers, >= 0
};

struct AllocParams {
  bool greedy_fill = true;  // phase 2 above (off = pure Lagrangian solution)
};

struct AllocResult {
  std::vector<int> choice;     // per layer, index into its points
  double rate_bits = 0;        // sum of the chosen rates (<= budget)
  double distortion = 0;       // sum of the chosen distortions
  double lambda = 0;           // slope (-dD/dR) of the last Lagrangian step taken (0 if none)
  int64_t lagrangian_steps = 0, fill_steps = 0;
};

// layers[l] = the points of layer l (non-empty). Throws bb::Error if even the cheapest point of
// every layer exceeds the budget (the message gives the minimum achievable rate).
AllocResult allocate_bits(const std::vector<std::vector<AllocPoint>>& layers, double budget_bits,
                          const AllocParams& p = {});

// Indices of the lower convex hull of one layer's points, by increasing rate (dominated and
// non-convex points removed). Exposed for tests.
std::vector<int> lower_convex_hull(const std::vector<AllocPoint>& pts);

}  // namespace bb
