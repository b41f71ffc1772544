#include "quant/rd_alloc.h"

#include "common/error.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <queue>

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

// Points not dominated by another (lower-or-equal rate and lower-or-equal distortion), by
// increasing rate (so strictly decreasing distortion).
std::vector<int> pareto_front(const std::vector<RdPoint>& pts) {
  std::vector<int> order(pts.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if (pts[a].rate != pts[b].rate) return pts[a].rate < pts[b].rate;
    return pts[a].dist < pts[b].dist;
  });
  std::vector<int> front;
  for (int i : order)
    if (front.empty() || pts[i].dist < pts[front.back()].dist) front.push_back(i);
  return front;
}

}  // namespace

std::vector<int> rd_lower_hull(const std::vector<RdPoint>& pts) {
  std::vector<int> hull;
  for (int i : pareto_front(pts)) {
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

RdAllocation rd_allocate(const std::vector<std::vector<RdPoint>>& items, double budget, const RdOptions& opt) {
  check_items(items);
  BB_CHECK(opt.budget_rel_tol >= 0 && std::isfinite(opt.budget_rel_tol),
           "rate allocation: budget_rel_tol must be finite and >= 0");
  const size_t n = items.size();
  const double bound = budget * (1 + opt.budget_rel_tol);
  std::vector<std::vector<int>> hulls(n);
  std::vector<size_t> at(n, 0);  // position on the item's hull
  RdAllocation a;
  a.choice.resize(n);
  for (size_t i = 0; i < n; ++i) {
    hulls[i] = rd_lower_hull(items[i]);
    a.choice[i] = hulls[i][0];
  }
  total(items, a);
  a.min_rate = a.rate;

  // The Lagrangian walk. An item's hull slopes decrease along the hull, so a heap holding each
  // item's next segment yields the global order of decreasing slope (ties: the lower item).
  using Seg = std::pair<double, size_t>;  // (distortion saved per unit rate, item)
  auto after = [](const Seg& x, const Seg& y) { return x.first != y.first ? x.first < y.first : x.second > y.second; };
  std::priority_queue<Seg, std::vector<Seg>, decltype(after)> heap(after);
  auto push_next = [&](size_t i) {
    if (at[i] + 1 >= hulls[i].size()) return;
    const RdPoint& p = items[i][hulls[i][at[i]]];
    const RdPoint& q = items[i][hulls[i][at[i] + 1]];
    heap.push({(p.dist - q.dist) / (q.rate - p.rate), i});
  };
  for (size_t i = 0; i < n; ++i) push_next(i);
  a.lambda = heap.empty() ? 0.0 : heap.top().first;
  if (a.rate > bound) {
    a.feasible = false;  // nothing fits: every item's cheapest point, the caller reports min_rate
    return a;
  }
  double rate = a.rate;
  bool prefix = true;  // still on the Lagrangian prefix of the walk
  while (!heap.empty()) {
    const auto [slope, i] = heap.top();
    const RdPoint& p = items[i][hulls[i][at[i]]];
    const RdPoint& q = items[i][hulls[i][at[i] + 1]];
    const double drate = q.rate - p.rate;
    if (rate + drate > bound) {
      if (opt.fill != RdFill::hull_walk) break;
      heap.pop();  // freeze this item: its later segments depend on this one
      prefix = false;
      continue;
    }
    heap.pop();
    rate += drate;
    ++at[i];
    a.choice[i] = hulls[i][at[i]];
    if (prefix) {
      a.lambda = slope;
      ++a.lagrangian_steps;
    } else {
      a.lagrangian = false;
      ++a.fill_steps;
    }
    push_next(i);
  }

  if (opt.fill == RdFill::best_ratio) {
    std::vector<std::vector<int>> fronts(n);
    for (size_t i = 0; i < n; ++i) fronts[i] = pareto_front(items[i]);
    for (;;) {
      double best = 0;
      size_t bi = 0;
      int bj = -1;
      for (size_t i = 0; i < n; ++i) {
        const RdPoint& cur = items[i][a.choice[i]];
        for (int j : fronts[i]) {
          const RdPoint& q = items[i][j];
          const double dr = q.rate - cur.rate, dd = cur.dist - q.dist;
          if (dr <= 0 || dd <= 0 || rate + dr > bound) continue;
          if (dd / dr > best) {
            best = dd / dr;
            bi = i;
            bj = j;
          }
        }
      }
      if (bj < 0) break;
      rate += items[bi][bj].rate - items[bi][a.choice[bi]].rate;
      a.choice[bi] = bj;
      a.lagrangian = false;
      ++a.fill_steps;
    }
  }
  total(items, a);
  return a;
}

}  // namespace bb
