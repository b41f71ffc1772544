// ecsq: iterative entropy-constrained scalar quantization (Choi et al. 2017, Algorithm 1; Chou,
// Lookabaugh & Gray 1989). Each weight goes to argmin_j h_i (w_i - c_j)^2 - lambda log2 p_j; centres
// (Hessian-weighted means) and probabilities are updated and empty clusters dropped until the
// Lagrangian stops falling. Starts from a fine uniform grid of init_clusters levels. lambda is
// found by a secant search on its log so that the coded size hits target_bpw (each lambda run
// to the looser search_tol, the chosen one then resumed to tol), or given directly.
// One codebook for the network (scope=network; lambda shared) or one per layer (scope=layer, the
// same lambda for every layer: equal slopes are the optimal rate allocation). Indices Huffman
// coded by default. hessian_use=centres (the default; hessian_use=both is the paper's) runs ECSQ
// unweighted and makes each cluster's value the Hessian-weighted mean of its members: with the
// diagonal weighting in the assignment, ECSQ sends the weights the diagonal calls unimportant
// to the zero cluster wholesale and loses most of the accuracy (docs/methods/choi.md).
#include "common/error.h"
#include "common/log.h"
#include "methods/method.h"
#include "quant/kmeans1d.h"
#include "methods/weight_sharing_method.h"

#include <cmath>
#include <iomanip>
#include <map>
#include <memory>
#include <sstream>

namespace bb {
namespace {

struct ECSQMethodParams : ParamsBase {
  SharingMethodParams share;
  double lambda = 0;        // Lagrange multiplier (weighted distortion per bit); 0 = search for target_bpw
  int init_clusters = 1024; // uniform grid the iteration starts from
  int max_iter = 100;       // ECSQ iterations per lambda
  double tol = 1e-7;        // stop when the Lagrangian falls by less than tol (relative)
  double search_tol = 1e-4; // the same, for the runs of the lambda search (the chosen one is resumed to tol)
  // both: h in the assignment and the centres (the paper) | centres (validated default, issue 20:
  // ResNet-20/32 on cifar10-jpeg-val at 2 bpw 69.1/77.6 top-1 where both gives 34.9/30.8)
  std::string hessian_use = "centres";
  ECSQMethodParams() {
    share.set_entropy_constrained_defaults();
  }
  void bind(ParamBinder& b) override {
    b.field("lambda", lambda, "Lagrange multiplier, weighted distortion per bit (0 = bisection for target_bpw)");
    b.field("init_clusters", init_clusters, "levels of the uniform grid the iteration starts from");
    b.field("max_iter", max_iter, "ECSQ iterations at most per lambda");
    b.field("tol", tol, "stop when the Lagrangian falls by less than this (relative)");
    b.field("search_tol", search_tol, "tol for the runs of the lambda search; the chosen run is then resumed to tol");
    b.field("hessian_use", hessian_use,
            "where the importance h enters: both (paper: assignment cost h_i (w_i - c_j)^2 and weighted-mean centres) | "
            "centres (ECSQ run unweighted, then each cluster's value = the h-weighted mean of its members)",
            {"both", "centres"});
    share.bind(b);
  }
  void validate() override {
    share.validate();
    BB_CHECK(lambda >= 0 && std::isfinite(lambda), "lambda must be >= 0, got ", lambda);
    BB_CHECK(lambda > 0 || share.target_bpw > 0, "ecsq: set lambda > 0 or target_bpw > 0");
    BB_CHECK(init_clusters >= 2 && init_clusters <= 65536, "init_clusters must be in [2, 65536], got ", init_clusters);
    BB_CHECK(max_iter >= 1, "max_iter must be >= 1");
    BB_CHECK(tol >= 0, "tol must be >= 0");
    BB_CHECK(search_tol >= tol, "search_tol must be >= tol (", tol, "), got ", search_tol);
  }
};

// One ECSQ assignment step with the centres and cluster probabilities of `sol` held fixed:
// a_i = argmin_j h_i (x_i - c_j)^2 - mu log2 p_j. Clusters may empty (they keep their value;
// the coder stores only what is used). `network`: one quantizer over all layers.
SharingSolution reassign_fixed(const SharingProblem& prob, const SharingSolution& sol, bool network, double mu) {
  SharingSolution out = sol;
  out.distortion = 0;
  const float* h = prob.hptr();
  const size_t nl = prob.layers.size(), groups = network ? 1 : nl;
  for (size_t g = 0; g < groups; ++g) {
    // The weights sharing one quantizer: all layers (network scope) or layer g alone.
    const int64_t begin = prob.offset[g], end = network ? prob.offset[nl] : prob.offset[g + 1];
    const auto& c = sol.centers[g];
    std::vector<double> count(c.size(), 0.0);
    for (int64_t i = begin; i < end; ++i) count[sol.assign[i]] += 1;
    std::vector<double> cost(c.size());
    for (size_t j = 0; j < c.size(); ++j)
      cost[j] = count[j] > 0 ? -mu * std::log2(count[j] / (double)(end - begin)) : INFINITY;
    // Reassign, accumulating the members' weighted sums for the centre update.
    std::vector<double> sw(c.size(), 0.0), swx(c.size(), 0.0);
    for (int64_t i = begin; i < end; ++i) {
      const double hi = h ? h[i] : 1.0;
      double best = INFINITY;
      int32_t arg = sol.assign[i];
      for (size_t j = 0; j < c.size(); ++j) {
        const double d = hi * (prob.x[i] - c[j]) * (prob.x[i] - c[j]);
        if (d + cost[j] < best) best = d + cost[j], arg = (int32_t)j;
      }
      out.assign[i] = arg;
      sw[arg] += hi;
      swx[arg] += hi * prob.x[i];
    }
    // Then the centres move to their members' weighted means (the rate does not change).
    std::vector<double> nc = c;
    for (size_t j = 0; j < c.size(); ++j)
      if (sw[j] > 0) nc[j] = swx[j] / sw[j];
    for (int64_t i = begin; i < end; ++i) {
      const double d = prob.x[i] - nc[out.assign[i]];
      out.distortion += (h ? h[i] : 1.0) * d * d;
    }
    if (network) out.centers.assign(nl, nc);
    else out.centers[g] = nc;
  }
  return out;
}

// The same assignment with every cluster's value moved to the h-weighted mean of its members
// (hessian_use=centres); the rate does not change. Distortion: sum h (x - c)^2.
SharingSolution reweight_centres(const SharingProblem& prob, SharingSolution sol, bool network) {
  const float* h = prob.hptr();
  if (!h) return sol;
  const size_t nl = prob.layers.size(), groups = network ? 1 : nl;
  sol.distortion = 0;
  for (size_t g = 0; g < groups; ++g) {
    const int64_t begin = prob.offset[g], end = network ? prob.offset[nl] : prob.offset[g + 1];
    std::vector<double> c = sol.centers[g], sw(c.size(), 0.0), swx(c.size(), 0.0);
    for (int64_t i = begin; i < end; ++i) {
      sw[sol.assign[i]] += h[i];
      swx[sol.assign[i]] += (double)h[i] * prob.x[i];
    }
    for (size_t j = 0; j < c.size(); ++j)
      if (sw[j] > 0) c[j] = swx[j] / sw[j];
    for (int64_t i = begin; i < end; ++i) {
      const double d = prob.x[i] - c[sol.assign[i]];
      sol.distortion += h[i] * d * d;
    }
    if (network) sol.centers.assign(nl, c);
    else sol.centers[g] = c;
  }
  return sol;
}

class ECSQMethod : public Method {
 public:
  std::string name() const override { return "ecsq"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override { return p_.share.needs_calibration(); }
  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    const SharingParams& share = p_.share;
    SharingProblem weighted = prepare_sharing(ctx, share);
    ctx.phase("quantize");
    // hessian_use=centres: the ECSQ runs (and the rate search) see h = 1; the importance only sets
    // the final cluster values.
    const bool centres_only = p_.hessian_use == "centres" && !weighted.h.empty();
    SharingProblem unweighted;
    if (centres_only) {
      unweighted = weighted;
      unweighted.h.clear();
    }
    const SharingProblem& prob = centres_only ? unweighted : weighted;
    auto finish = [&](SharingSolution sol) {
      if (centres_only) sol = reweight_centres(weighted, std::move(sol), share.scope == "network");
      return finish_sharing(ctx, weighted, std::move(sol), share, name());
    };
    // Each quantizer's ECSQ run (keyed by the offset of its first weight), kept so that a run
    // can be resumed under a tighter tolerance.
    using Runs = std::map<int64_t, ECSQResult>;
    std::map<int64_t, std::vector<double>> init_centres;
    int iters = 0;
    auto at = [&](double lambda, double tol, Runs& runs) {
      iters = 0;
      return solve_sharing(prob, share, [&](const float* x, const float* h, int64_t n, std::vector<double>& c,
                                            std::vector<int32_t>& a) {
        ECSQParams ep;
        ep.lambda = lambda;
        ep.max_iter = p_.max_iter;
        ep.tol = tol;
        const int64_t key = x - prob.x.data();
        auto it = runs.find(key);
        if (it != runs.end()) {
          ecsq1d_resume(x, h, n, ep, it->second);
        } else {
          auto& init = init_centres[key];  // the same start for every lambda: computed once
          if (init.empty()) {
            float lo = *std::min_element(x, x + n), hi = *std::max_element(x, x + n);
            init = {lo};
            if (hi > lo) init = uniform1d(x, h, n, ((double)hi - lo) / p_.init_clusters).centers;
          }
          it = runs.emplace(key, ecsq1d(x, h, n, init, ep)).first;
        }
        const ECSQResult& r = it->second;
        if (log_level() >= LogLevel::debug) {
          std::ostringstream os;
          os << "ecsq1d: lambda " << std::setprecision(6) << lambda << ", n " << n
             << "; iteration: Lagrangian, bits per weight, clusters";
          for (size_t t = 0; t < r.history.size(); ++t)
            if (t < 8 || t % 8 == 0 || t + 1 == r.history.size())
              os << "\n  " << t << ": " << std::setprecision(10) << r.history[t].lagrangian << ", "
                 << std::setprecision(6) << r.history[t].rate_bits / (double)n << ", " << r.history[t].clusters;
          log_debug(os.str());
        }
        iters += r.iterations;
        c = r.centers;
        a = r.assign;
      });
    };
    auto bpw_of = [&](const SharingSolution& sol) { return sharing_bpw(prob, encode_sharing(prob, sol, share, name())); };
    if (p_.lambda > 0) {
      Runs runs;
      SharingSolution sol = at(p_.lambda, p_.tol, runs);
      log_info("ecsq: " + std::to_string(iters) + " iterations over " + std::to_string(runs.size()) + " quantizer(s)");
      return finish(std::move(sol));
    }
    // lambda has the units of weighted squared error per bit. At high rate D(R) ~ v 2^(-2R) per
    // weight (v the h-weighted variance), so the slope -dD/dR is ~ 2 ln2 v 4^(-R) and R falls by
    // 1/(2 ln2) bits per unit of ln(lambda): the search starts there with that slope.
    const float* hp = prob.hptr();
    double sw = 0, m = 0, v = 0;
    for (size_t i = 0; i < prob.x.size(); ++i) sw += hp ? hp[i] : 1.0, m += (hp ? hp[i] : 1.0) * prob.x[i];
    m = sw > 0 ? m / sw : 0;
    for (size_t i = 0; i < prob.x.size(); ++i) v += (hp ? hp[i] : 1.0) * (prob.x[i] - m) * (prob.x[i] - m);
    v = std::max(v / (double)prob.x.size(), 1e-30);
    const double slope = 2 * std::log(2.0) * v * std::pow(4.0, -share.target_bpw);
    // The search runs each lambda only to search_tol. The runs at the closest rate and at the
    // lowest rate above the target are kept, to be resumed to tol rather than solved again.
    auto best = std::make_shared<Runs>(), above = std::make_shared<Runs>();
    double best_lambda = 0, best_err = INFINITY, above_lambda = 0, above_bpw = INFINITY;
    SharingSolution above_sol;  // the run above the target as the search left it
    auto r = search_rate_secant(slope, -1 / (2 * std::log(2.0)), share.target_bpw, share.rate_tol, 60, [&](double l) {
      auto runs = std::make_shared<Runs>();
      SharingSolution sol = at(l, p_.search_tol, *runs);
      const double bpw = bpw_of(sol);
      std::ostringstream os;
      os << "ecsq: lambda " << std::setprecision(6) << l << " -> " << bpw << " bpw (" << iters
         << " iterations, search_tol " << p_.search_tol << ")";
      log_info(os.str());
      if (bpw >= share.target_bpw && bpw < above_bpw) above_bpw = bpw, above_lambda = l, above = runs, above_sol = std::move(sol);
      if (std::fabs(bpw - share.target_bpw) < best_err) best_err = std::fabs(bpw - share.target_bpw), best_lambda = l, best = runs;
      return bpw;
    });
    const int search_evals = r.evals;
    // Resumed to tol, the chosen run is exactly the one a run to tol from the start gives.
    SharingSolution sol = at(best_lambda, p_.tol, *best);
    double bpw = bpw_of(sol);
    {
      std::ostringstream os;
      os << "ecsq: lambda " << std::setprecision(6) << best_lambda << " -> " << bpw << " bpw at tol " << p_.tol << " ("
         << iters << " iterations; target " << share.target_bpw << ", " << search_evals << " search evaluations)";
      log_info(os.str());
    }
    {
      std::ostringstream note;
      note << "ecsq: secant search over the Lagrange multiplier (" << search_evals << " evaluations) chose lambda "
           << best_lambda << " -> " << bpw << " bpw at tol " << p_.tol
           << " (the converged rate jumps where a cluster dies)";
      ctx.rate_note = note.str();
    }
    // The rate of converged ECSQ jumps where clusters die (a shrinking cluster's -log p grows and
    // drives its last members away at once), and the search ran at a looser tolerance. If the
    // rate is still off, trim a solution above the target instead: ECSQ assignments at fixed
    // centres and probabilities move one boundary point at a time as the multiplier grows, so
    // the rate follows it closely.
    if (std::fabs(bpw - share.target_bpw) > share.rate_tol * share.target_bpw) {
      SharingSolution from;
      double from_lambda = 0;
      if (bpw > share.target_bpw) {
        from = sol, from_lambda = best_lambda;
      } else if (above_lambda > 0) {
        // Resumed to tol the run above may fall below the target too (a cluster dies on the
        // way); then the search's own solution is trimmed.
        from_lambda = above_lambda;
        if (above != best) from = at(above_lambda, p_.tol, *above);
        if (above == best || bpw_of(from) < share.target_bpw) {
          from = std::move(above_sol);
          log_info("ecsq: no solution at tol above the target; trimming the search's run at lambda " +
                   std::to_string(above_lambda) + " (search_tol " + std::to_string(p_.search_tol) + ")");
        }
      }
      if (from_lambda > 0) {
        auto trimmed = [&](double mu) { return reassign_fixed(prob, from, share.scope == "network", mu); };
        auto t = search_rate(from_lambda, from_lambda * 64, share.target_bpw, share.rate_tol, 60,
                             [&](double mu) { return bpw_of(trimmed(mu)); });
        log_info("ecsq: trimming the solution at lambda " + std::to_string(from_lambda) +
                 " at fixed probabilities: multiplier " + std::to_string(t.knob) + " -> " + std::to_string(t.bpw) + " bpw");
        if (std::fabs(t.bpw - share.target_bpw) < std::fabs(bpw - share.target_bpw)) {
          ctx.rate_note += "; then trimmed at fixed centres and probabilities (multiplier " + std::to_string(t.knob) +
                           ") -> " + std::to_string(t.bpw) + " bpw";
          return finish(trimmed(t.knob));
        }
      }
    }
    return finish(std::move(sol));
  }
  torch::Tensor decode(const LayerRecord& rec) const override { return decode_sharing(rec); }

 private:
  ECSQMethodParams p_;
};

}  // namespace
BB_REGISTER_METHOD("ecsq", ECSQMethod);
}  // namespace bb
