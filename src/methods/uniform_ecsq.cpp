// uniform_ecsq: uniform quantization followed by entropy coding (Choi et al. 2017, Section 4.3:
// at high rate the uniform quantizer is close to optimal entropy-constrained SQ). Thresholds are
// evenly spaced ((j + 1/2) * step, so 0 is a level), one grid for the whole network; each level's
// value is the Hessian-weighted mean of its members (weighting=none: the plain mean) with one
// codebook for the network (scope=network) or per layer; indices Huffman coded. The step sets
// the rate: with step = 0 it is found by bisection so that the coded size hits target_bpw.
#include "common/error.h"
#include "common/log.h"
#include "methods/method.h"
#include "quant/kmeans1d.h"
#include "methods/weight_sharing_method.h"

#include <cmath>

namespace bb {
namespace {

struct UniformECSQParams : ParamsBase {
  SharingMethodParams share;
  double step = 0;  // quantizer step; 0 = search it for target_bpw
  UniformECSQParams() {
    share.set_entropy_constrained_defaults();
  }
  void bind(ParamBinder& b) override {
    b.field("step", step, "quantizer step size (0 = chosen by bisection to hit target_bpw)");
    share.bind(b);
  }
  void validate() override {
    share.validate();
    BB_CHECK(step >= 0 && std::isfinite(step), "step must be >= 0, got ", step);
    BB_CHECK(step > 0 || share.target_bpw > 0, "uniform_ecsq: set step > 0 or target_bpw > 0");
  }
};

class UniformECSQMethod : public Method {
 public:
  std::string name() const override { return "uniform_ecsq"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override { return p_.share.needs_calibration(); }
  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    const SharingParams& share = p_.share;
    SharingProblem prob = prepare_sharing(ctx, share);
    ctx.phase("quantize");
    auto at = [&](double step) {
      return solve_sharing(prob, share, [step](const float* x, const float* h, int64_t n, std::vector<double>& c,
                                               std::vector<int32_t>& a) {
        ScalarQuantizer q = uniform1d(x, h, n, step);
        c = std::move(q.centers);
        a = std::move(q.assign);
      });
    };
    double step = p_.step;
    if (step == 0) {
      double maxabs = 0;
      for (float v : prob.x) maxabs = std::max(maxabs, (double)std::fabs(v));
      BB_CHECK(maxabs > 0, "uniform_ecsq: all weights are zero");
      auto r = search_rate(maxabs / 65536, 2 * maxabs, share.target_bpw, share.rate_tol, 60, [&](double s) {
        return sharing_bpw(prob, encode_sharing(prob, at(s), share, name()));
      });
      step = r.knob;
      ctx.rate_note = "uniform_ecsq: bisection over the quantizer step (" + std::to_string(r.evals) +
                      " evaluations, rate_tol " + std::to_string(share.rate_tol) + ") ended at step " +
                      std::to_string(step) + " -> " + std::to_string(r.bpw) +
                      " bpw (the coded rate jumps where a level appears or empties)";
      log_info("uniform_ecsq: step " + std::to_string(step) + " -> " + std::to_string(r.bpw) + " bpw (target " +
               std::to_string(share.target_bpw) + ", " + std::to_string(r.evals) + " evaluations)");
    }
    return finish_sharing(ctx, prob, at(step), share, name());
  }
  torch::Tensor decode(const LayerRecord& rec) const override { return decode_sharing(rec); }

 private:
  UniformECSQParams p_;
};

}  // namespace
BB_REGISTER_METHOD("uniform_ecsq", UniformECSQMethod);
}  // namespace bb
