// ecsq: iterative entropy-constrained scalar quantization (Choi et al. 2017, Algorithm 1; Chou,
// Lookabaugh & Gray 1989). Each weight goes to argmin_j h_i (w_i - c_j)^2 - lambda log2 p_j; centres
// (Hessian-weighted means) and probabilities are updated and empty clusters dropped until the
// Lagrangian stops falling. Starts from a fine uniform grid of init_clusters levels. lambda is
// found by bisection (on its log) so that the coded size hits target_bpw, or given directly.
// One codebook for the network (scope=network; lambda shared) or one per layer (scope=layer, the
// same lambda for every layer: equal slopes are the optimal rate allocation). Indices Huffman
// coded by default.
#include "common/error.h"
#include "common/log.h"
#include "methods/method.h"
#include "quant/kmeans1d.h"
#include "quant/weight_sharing.h"

#include <cmath>
#include <iomanip>
#include <sstream>

namespace bb {
namespace {

struct ECSQMethodParams : ParamsBase {
  SharingParams share;
  double lambda = 0;        // Lagrange multiplier (weighted distortion per bit); 0 = search for target_bpw
  int init_clusters = 1024; // uniform grid the iteration starts from
  int max_iter = 100;       // ECSQ iterations per lambda
  double tol = 1e-7;        // stop when the Lagrangian falls by less than tol (relative)
  ECSQMethodParams() {
    share.scope = "network";
    share.weighting = "hessian";
    share.coder = "huffman";
    share.target_bpw = 2.0;
  }
  void bind(ParamBinder& b) override {
    b.field("lambda", lambda, "Lagrange multiplier, weighted distortion per bit (0 = bisection for target_bpw)");
    b.field("init_clusters", init_clusters, "levels of the uniform grid the iteration starts from");
    b.field("max_iter", max_iter, "ECSQ iterations at most per lambda");
    b.field("tol", tol, "stop when the Lagrangian falls by less than this (relative)");
    share.bind(b);
  }
  void validate() override {
    share.validate();
    BB_CHECK(lambda >= 0 && std::isfinite(lambda), "lambda must be >= 0, got ", lambda);
    BB_CHECK(lambda > 0 || share.target_bpw > 0, "ecsq: set lambda > 0 or target_bpw > 0");
    BB_CHECK(init_clusters >= 2 && init_clusters <= 65536, "init_clusters must be in [2, 65536], got ", init_clusters);
    BB_CHECK(max_iter >= 1, "max_iter must be >= 1");
    BB_CHECK(tol >= 0, "tol must be >= 0");
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

class ECSQMethod : public Method {
 public:
  std::string name() const override { return "ecsq"; }
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override {
    return p_.share.weighting == "hessian" || p_.share.finetune.epochs > 0 || p_.share.prune_retrain_epochs > 0;
  }
  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    const SharingParams& share = p_.share;
    SharingProblem prob = prepare_sharing(ctx, share);
    ctx.phase("quantize");
    int iters = 0, runs = 0;
    auto at = [&](double lambda) {
      return solve_sharing(prob, share, [&, lambda](const float* x, const float* h, int64_t n, std::vector<double>& c,
                                                    std::vector<int32_t>& a) {
        float lo = *std::min_element(x, x + n), hi = *std::max_element(x, x + n);
        std::vector<double> init = {lo};
        if (hi > lo) init = uniform1d(x, h, n, ((double)hi - lo) / p_.init_clusters).centers;
        ECSQParams ep;
        ep.lambda = lambda;
        ep.max_iter = p_.max_iter;
        ep.tol = p_.tol;
        ECSQResult r = ecsq1d(x, h, n, init, ep);
        iters += r.iterations;
        ++runs;
        c = std::move(r.centers);
        a = std::move(r.assign);
      });
    };
    double lambda = p_.lambda;
    if (lambda == 0) {
      // lambda has the units of weighted squared error per bit. At high rate D(R) ~ v 2^(-2R) per
      // weight (v the h-weighted variance), so the slope -dD/dR is ~ 2 ln2 v 4^(-R): bracket the
      // search two decades either side of that (search_rate widens it if the target is outside).
      const float* hp = prob.hptr();
      double sw = 0, m = 0, v = 0;
      for (size_t i = 0; i < prob.x.size(); ++i) sw += hp ? hp[i] : 1.0, m += (hp ? hp[i] : 1.0) * prob.x[i];
      m = sw > 0 ? m / sw : 0;
      for (size_t i = 0; i < prob.x.size(); ++i) v += (hp ? hp[i] : 1.0) * (prob.x[i] - m) * (prob.x[i] - m);
      v = std::max(v / (double)prob.x.size(), 1e-30);
      const double slope = 2 * std::log(2.0) * v * std::pow(4.0, -share.target_bpw);
      double above_lambda = 0, above_bpw = INFINITY;  // the lowest rate seen above the target
      // The solutions at the closest and at the lowest-above rates are kept, not solved again.
      double best_err = INFINITY;
      SharingSolution best_sol, above_sol;
      int best_iters = 0;
      auto r = search_rate(slope * 1e-2, slope * 1e2, share.target_bpw, share.rate_tol, 60, [&](double l) {
        iters = 0;
        SharingSolution sol = at(l);
        const double bpw = sharing_bpw(prob, encode_sharing(prob, sol, share, name()));
        std::ostringstream os;
        os << "ecsq: lambda " << std::setprecision(6) << l << " -> " << bpw << " bpw (" << iters << " iterations)";
        log_info(os.str());
        if (bpw >= share.target_bpw && bpw < above_bpw) above_bpw = bpw, above_lambda = l, above_sol = sol;
        if (std::fabs(bpw - share.target_bpw) < best_err) {
          best_err = std::fabs(bpw - share.target_bpw);
          best_sol = std::move(sol);
          best_iters = iters;
        }
        return bpw;
      });
      lambda = r.knob;
      log_info("ecsq: lambda " + std::to_string(lambda) + " -> " + std::to_string(r.bpw) + " bpw (target " +
               std::to_string(share.target_bpw) + ", " + std::to_string(r.evals) + " evaluations)");
      // The rate of converged ECSQ jumps where clusters die (a shrinking cluster's -log p grows
      // and drives its last members away at once). Past such a jump, trim the solution just above
      // the target instead: ECSQ assignments at fixed centres and probabilities move one boundary
      // point at a time as the multiplier grows, so the rate follows it closely.
      if (std::fabs(r.bpw - share.target_bpw) > share.rate_tol * share.target_bpw && above_lambda > 0) {
        const SharingSolution& above = above_sol;
        auto trimmed = [&](double mu) { return reassign_fixed(prob, above, share.scope == "network", mu); };
        auto t = search_rate(above_lambda, above_lambda * 64, share.target_bpw, share.rate_tol, 60, [&](double mu) {
          return sharing_bpw(prob, encode_sharing(prob, trimmed(mu), share, name()));
        });
        log_info("ecsq: rate jumps at lambda ~" + std::to_string(above_lambda) + "; trimming the " +
                 std::to_string(above_bpw) + " bpw solution at fixed probabilities: multiplier " +
                 std::to_string(t.knob) + " -> " + std::to_string(t.bpw) + " bpw");
        if (std::fabs(t.bpw - share.target_bpw) < std::fabs(r.bpw - share.target_bpw))
          return finish_sharing(ctx, prob, trimmed(t.knob), share, name());
      }
      log_info("ecsq: " + std::to_string(best_iters) + " iterations at the chosen lambda");
      return finish_sharing(ctx, prob, std::move(best_sol), share, name());
    }
    iters = runs = 0;
    SharingSolution sol = at(lambda);
    log_info("ecsq: " + std::to_string(iters) + " iterations over " + std::to_string(runs) + " quantizer(s)");
    return finish_sharing(ctx, prob, std::move(sol), share, name());
  }
  torch::Tensor decode(const LayerRecord& rec) const override { return decode_sharing(rec); }

 private:
  ECSQMethodParams p_;
};

}  // namespace
BB_REGISTER_METHOD("ecsq", ECSQMethod);
}  // namespace bb
