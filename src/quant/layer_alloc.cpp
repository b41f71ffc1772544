#include "quant/layer_alloc.h"
#include "common/error.h"

#include <algorithm>
#include <numeric>
#include <queue>

namespace bb {
namespace {

// Points not dominated by another (lower-or-equal rate and lower-or-equal distortion), by
// increasing rate (so strictly decreasing distortion).
std::vector<int> pareto_front(const std::vector<AllocPoint>& pts) {
  std::vector<int> order(pts.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if (pts[a].rate_bits != pts[b].rate_bits) return pts[a].rate_bits < pts[b].rate_bits;
    return pts[a].distortion < pts[b].distortion;
  });
  std::vector<int> front;
  for (int i : order)
    if (front.empty() || pts[i].distortion < pts[front.back()].distortion) front.push_back(i);
  return front;
}

}  // namespace

std::vector<int> lower_convex_hull(const std::vector<AllocPoint>& pts) {
  std::vector<int> hull;
  for (int i : pareto_front(pts)) {
    // Pop the last point while it lies on or above the segment from its predecessor to i.
    while (hull.size() >= 2) {
      const AllocPoint& a = pts[hull[hull.size() - 2]];
      const AllocPoint& b = pts[hull.back()];
      const AllocPoint& c = pts[i];
      double cross = (b.rate_bits - a.rate_bits) * (c.distortion - a.distortion) -
                     (b.distortion - a.distortion) * (c.rate_bits - a.rate_bits);
      if (cross <= 0) hull.pop_back();
      else break;
    }
    hull.push_back(i);
  }
  return hull;
}

AllocResult allocate_bits(const std::vector<std::vector<AllocPoint>>& layers, double budget_bits,
                          const AllocParams& p) {
  const size_t L = layers.size();
  AllocResult r;
  r.choice.assign(L, 0);
  std::vector<std::vector<int>> hulls(L), fronts(L);
  std::vector<size_t> pos(L, 0);  // position on the hull
  double rate = 0;
  for (size_t l = 0; l < L; ++l) {
    BB_CHECK(!layers[l].empty(), "bit allocation: layer ", l, " has no operating points");
    for (auto& q : layers[l])
      BB_CHECK(q.rate_bits >= 0 && q.distortion >= 0, "bit allocation: layer ", l,
               " has a negative rate or distortion");
    hulls[l] = lower_convex_hull(layers[l]);
    fronts[l] = pareto_front(layers[l]);
    r.choice[l] = hulls[l][0];
    rate += layers[l][hulls[l][0]].rate_bits;
  }
  if (rate > budget_bits)
    BB_THROW("bit allocation: the budget of ", budget_bits, " bits is below the cheapest allocation (", rate,
             " bits)");

  // Phase 1: hull steps by steepest slope; per layer the slopes increase along its hull, so a
  // heap holding each layer's next step yields the global order.
  using Step = std::pair<double, size_t>;  // (slope dD/dR < 0, layer); smallest slope first
  auto cmp = [](const Step& a, const Step& b) { return a.first != b.first ? a.first > b.first : a.second > b.second; };
  std::priority_queue<Step, std::vector<Step>, decltype(cmp)> heap(cmp);
  auto push_next = [&](size_t l) {
    if (pos[l] + 1 >= hulls[l].size()) return;
    const AllocPoint& a = layers[l][hulls[l][pos[l]]];
    const AllocPoint& b = layers[l][hulls[l][pos[l] + 1]];
    heap.push({(b.distortion - a.distortion) / (b.rate_bits - a.rate_bits), l});
  };
  for (size_t l = 0; l < L; ++l) push_next(l);
  while (!heap.empty()) {
    auto [slope, l] = heap.top();
    const AllocPoint& a = layers[l][hulls[l][pos[l]]];
    const AllocPoint& b = layers[l][hulls[l][pos[l] + 1]];
    if (rate - a.rate_bits + b.rate_bits > budget_bits) break;  // the Lagrangian solution ends here
    heap.pop();
    rate += b.rate_bits - a.rate_bits;
    ++pos[l];
    r.choice[l] = hulls[l][pos[l]];
    r.lambda = -slope;
    ++r.lagrangian_steps;
    push_next(l);
  }

  // Phase 2: spend what is left on the best-ratio Pareto upgrades that still fit.
  while (p.greedy_fill) {
    double best = 0;
    size_t bl = 0;
    int bj = -1;
    for (size_t l = 0; l < L; ++l) {
      const AllocPoint& cur = layers[l][r.choice[l]];
      for (int j : fronts[l]) {
        const AllocPoint& q = layers[l][j];
        double dr = q.rate_bits - cur.rate_bits, dd = cur.distortion - q.distortion;
        if (dr <= 0 || dd <= 0 || rate + dr > budget_bits) continue;
        if (dd / dr > best) {
          best = dd / dr;
          bl = l;
          bj = j;
        }
      }
    }
    if (bj < 0) break;
    rate += layers[bl][bj].rate_bits - layers[bl][r.choice[bl]].rate_bits;
    r.choice[bl] = bj;
    ++r.fill_steps;
  }

  r.rate_bits = 0;
  r.distortion = 0;
  for (size_t l = 0; l < L; ++l) {
    r.rate_bits += layers[l][r.choice[l]].rate_bits;
    r.distortion += layers[l][r.choice[l]].distortion;
  }
  return r;
}

}  // namespace bb
