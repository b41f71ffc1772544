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
      // lambda has the units of weighted squared error per bit: bracket it around the weights' variance.
      double m = 0, v = 0;
      for (float x : prob.x) m += x;
      m /= (double)prob.x.size();
      for (float x : prob.x) v += (x - m) * (x - m);
      v = std::max(v / (double)prob.x.size(), 1e-30);
      auto r = search_rate(v * 1e-7, v * 10, share.target_bpw, share.rate_tol, 60, [&](double l) {
        return sharing_bpw(prob, encode_sharing(prob, at(l), share, name()));
      });
      lambda = r.knob;
      log_info("ecsq: lambda " + std::to_string(lambda) + " -> " + std::to_string(r.bpw) + " bpw (target " +
               std::to_string(share.target_bpw) + ", " + std::to_string(r.evals) + " evaluations)");
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
