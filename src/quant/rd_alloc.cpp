#include "quant/rd_alloc.h"

#include "common/error.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace bb {
namespace {

void check_items(const std::vector<std::vector<RdPoint>>& items) {
  for (size_t i = 0; i < items.size(); ++i) {
    BB_CHECK(!items[i].empty(), "rate allocation: item ", i, " has no operating points");
    for (const auto& p : items[i])
      BB_CHECK(std::isfinite(p.rate) && std::isfinite(p.dist) && p.rate >= 0,
               "rate allocation: item ", i, " has a non-finite or negative point");
  }
}

void total(const std::vector<std::vector<RdPoint>>& items, RdAllocation& a) {
  a.rate = a.dist = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    a.rate += items[i][a.choice[i]].rate;
    a.dist += items[i][a.choice[i]].dist;
  }
}

}  // namespace

std::vector<int> rd_lower_hull(const std::vector<RdPoint>& pts) {
  std::vector<int> order(pts.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if (pts[a].rate != pts[b].rate) return pts[a].rate < pts[b].rate;
    return pts[a].dist < pts[b].dist;
  });
  std::vector<int> hull;
  for (int i : order) {
    // Only points that lower the distortion are useful; a higher rate never pays otherwise.
    if (!hull.empty() && pts[i].dist >= pts[hull.back()].dist) continue;
    // Pop while the last hull point lies on or above the chord from its predecessor to i.
    while (hull.size() >= 2) {
      const RdPoint& a = pts[hull[hull.size() - 2]];
      const RdPoint& b = pts[hull.back()];
      const RdPoint& c = pts[i];
      // slope(a,b) <= slope(a,c) (both negative) means b is not below the chord.
      double cross = (b.rate - a.rate) * (c.dist - a.dist) - (c.rate - a.rate) * (b.dist - a.dist);
      if (cross <= 0) hull.pop_back();
      else break;
    }
    hull.push_back(i);
  }
  return hull;
}

RdAllocation rd_solve(const std::vector<std::vector<RdPoint>>& items, double lambda) {
  check_items(items);
  BB_CHECK(lambda >= 0 && std::isfinite(lambda), "rate allocation: lambda must be finite and >= 0");
  RdAllocation a;
  a.lambda = lambda;
  a.choice.resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    int best = 0;
    for (int k = 1; k < (int)items[i].size(); ++k) {
      const RdPoint& p = items[i][k];
      const RdPoint& q = items[i][best];
      double jp = p.dist + lambda * p.rate, jq = q.dist + lambda * q.rate;
      if (jp < jq || (jp == jq && p.rate < q.rate)) best = k;
    }
    a.choice[i] = best;
  }
  total(items, a);
  return a;
}

RdAllocation rd_allocate(const std::vector<std::vector<RdPoint>>& items, double budget, bool fill) {
  check_items(items);
  struct Segment {
    double slope;  // distortion saved per unit rate (> 0)
    double drate;
    int item, step;  // step-th segment of the item's hull
  };
  std::vector<std::vector<int>> hulls(items.size());
  std::vector<Segment> segs;
  RdAllocation a;
  a.choice.resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    hulls[i] = rd_lower_hull(items[i]);
    a.choice[i] = hulls[i][0];
    for (size_t s = 1; s < hulls[i].size(); ++s) {
      const RdPoint& p = items[i][hulls[i][s - 1]];
      const RdPoint& q = items[i][hulls[i][s]];
      segs.push_back({(p.dist - q.dist) / (q.rate - p.rate), q.rate - p.rate, (int)i, (int)s});
    }
  }
  // Decreasing slope; a hull's own slopes decrease, so an item's segments keep their order
  // (ties broken by item, then step, for determinism).
  std::stable_sort(segs.begin(), segs.end(), [](const Segment& x, const Segment& y) {
    if (x.slope != y.slope) return x.slope > y.slope;
    if (x.item != y.item) return x.item < y.item;
    return x.step < y.step;
  });
  total(items, a);
  std::vector<int> at(items.size(), 0);        // hull position per item
  std::vector<bool> blocked(items.size(), false);
  double rate = a.rate;
  bool prefix = true;
  a.lambda = segs.empty() ? 0.0 : segs.front().slope;
  for (const Segment& s : segs) {
    if (blocked[s.item]) continue;
    if (rate + s.drate > budget * (1 + 1e-12)) {
      if (!fill) break;
      prefix = false;
      blocked[s.item] = true;  // later segments of this item depend on this one
      continue;
    }
    BB_CHECK(at[s.item] + 1 == s.step, "rate allocation: hull segments out of order");
    at[s.item] = s.step;
    a.choice[s.item] = hulls[s.item][s.step];
    rate += s.drate;
    if (prefix) a.lambda = s.slope;
    else a.lagrangian = false;
  }
  total(items, a);
  return a;
}

}  // namespace bb
