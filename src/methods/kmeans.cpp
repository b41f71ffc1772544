// kmeans and hessian_kmeans: k-means weight sharing, one machinery and two sets of defaults.
//
// kmeans: the Deep Compression weight-sharing baseline (Han et al. 2016). Every conv/linear layer
// gets its own k = 2^bits shared values by (unweighted) scalar k-means with the paper's linear
// initialisation (or k-means++ seeding) and Lloyd iterations; per-weight indices are stored
// fixed-width (default), Huffman or rANS coded; the codebook is fp32 (or fp16).
//
// hessian_kmeans: Hessian-weighted k-means weight sharing (Choi et al., "Towards the Limit of
// Network Quantization", ICLR 2017). One codebook of k = 2^bits values for the whole network
// (scope=network), fitted by k-means on all conv/linear weights with each weight's squared error
// weighted by the diagonal of the loss Hessian, so errors in different layers are comparable;
// centre = Hessian-weighted mean of its members. Solved exactly by the 1-D DP (default) or by
// Lloyd, or both (objectives logged). Indices Huffman coded.
//
// Both have the same parameters (only their defaults differ): pruning, Hessian weighting, scope,
// a rate target and fine-tuning of the shared values come from the common weight-sharing
// parameters (quant/weight_sharing.h, methods/weight_sharing_method.h).
#include "methods/method.h"
#include "methods/weight_sharing_method.h"
#include "common/error.h"
#include "common/log.h"
#include "common/timer.h"
#include "quant/kmeans1d.h"

#include <cmath>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace bb {
namespace {

// k-means weight sharing (kmeans and hessian_kmeans): k = 2^bits clusters (or `clusters`),
// solved by Lloyd (k-means++), the exact DP, or both (objectives of both logged; DP kept).
// With target_bpw > 0, k is searched instead (the k whose coded rate is closest to the target;
// k is an integer, so the rate moves in steps).
struct KMeansSharingOptions {
  int bits = 4;                    // k = 2^bits
  int clusters = 0;                // > 0: k itself (overrides bits)
  std::string solver = "dp";       // dp (global optimum) | lloyd (k-means++ + Lloyd) | both
  int64_t dp_max_bins = 0;         // DP on at most this many groups of sorted values (0 = exact)
  std::string init = "kmeans++";   // Lloyd seeding: kmeans++ | linear
  int max_iter = 300;              // Lloyd iterations
  int max_search_k = 256;          // largest k tried by the target_bpw search
  void bind(ParamBinder& b);
  void validate() const;
  int k() const { return clusters > 0 ? clusters : 1 << bits; }
};

void KMeansSharingOptions::bind(ParamBinder& b) {
  b.field("bits", bits, "k = 2^bits shared values");
  b.field("clusters", clusters, "number of shared values k (> 0 overrides bits)");
  b.field("solver", solver, "dp: exact weighted 1-D k-means; lloyd: seeding (init) then Lloyd; both: run both, keep dp",
          {"dp", "lloyd", "both"});
  b.field("dp_max_bins", dp_max_bins, "DP over at most this many groups of sorted values (0 = exact)");
  b.field("init", init, "Lloyd seeding", {"kmeans++", "linear"});
  b.field("max_iter", max_iter, "Lloyd iterations at most");
  b.field("max_search_k", max_search_k, "largest k tried when searching k for target_bpw");
}

void KMeansSharingOptions::validate() const {
  BB_CHECK(bits >= 0 && bits <= 16, "bits must be in [0, 16], got ", bits);
  BB_CHECK(clusters >= 0 && clusters <= 65536, "clusters must be in [0, 65536], got ", clusters);
  BB_CHECK(dp_max_bins >= 0, "dp_max_bins must be >= 0");
  BB_CHECK(max_iter >= 1, "max_iter must be >= 1");
  BB_CHECK(max_search_k >= 2 && max_search_k <= 65536, "max_search_k must be in [2, 65536]");
}

std::vector<LayerRecord> compress_kmeans_sharing(CompressContext& ctx, const SharingParams& share,
                                                 const KMeansSharingOptions& km, const std::string& method) {
  SharingProblem prob = prepare_sharing(ctx, share);
  ctx.phase("quantize");
  double obj_lloyd = 0, obj_dp = 0, sec_lloyd = 0, sec_dp = 0, sec_dp_all = 0;
  // One DP per quantizer group (the network, or each layer), kept for the whole k search: every
  // k it tries reuses the sort and the clusters already solved.
  std::map<const float*, std::unique_ptr<KMeans1DDP>> dps;
  auto quantizer = [&](int k) -> ScalarQuantizeFn {
    return [&, k](const float* x, const float* h, int64_t n, std::vector<double>& c, std::vector<int32_t>& a) {
      ScalarQuantizer q;
      if (km.solver != "dp") {
        KMeans1DParams kp;
        kp.k = k;
        kp.max_iter = km.max_iter;
        kp.init = km.init;
        kp.seed = ctx.seed;
        double t = now_seconds();
        q = kmeans1d_lloyd(x, h, n, kp);
        sec_lloyd += now_seconds() - t;
        obj_lloyd += q.distortion;
      }
      if (km.solver != "lloyd") {
        double t = now_seconds();
        auto& dp = dps[x];
        if (!dp) dp = std::make_unique<KMeans1DDP>(x, h, n, km.dp_max_bins);
        q = dp->solve(k);
        sec_dp += now_seconds() - t;
        sec_dp_all += now_seconds() - t;
        obj_dp += q.distortion;
      }
      c = std::move(q.centers);
      a = std::move(q.assign);
    };
  };
  int k = km.k();
  if (share.target_bpw > 0) {
    // Rate grows with k: double k until the target is passed, then bisect; keep the closest.
    std::map<int, double> rate;
    auto bpw_at = [&](int kk) {
      auto it = rate.find(kk);
      if (it != rate.end()) return it->second;
      auto s = solve_sharing(prob, share, quantizer(kk));
      double r = sharing_bpw(prob, encode_sharing(prob, s, share, method));
      log_debug(method + ": k=" + std::to_string(kk) + " -> " + std::to_string(r) + " bpw");
      return rate[kk] = r;
    };
    int lo = 1, hi = 2;
    while (hi < km.max_search_k && bpw_at(hi) < share.target_bpw) {
      lo = hi;
      hi = std::min(2 * hi, km.max_search_k);
    }
    while (hi - lo > 1) {
      int mid = (lo + hi) / 2;
      if (bpw_at(mid) < share.target_bpw) lo = mid;
      else hi = mid;
    }
    k = std::fabs(bpw_at(lo) - share.target_bpw) <= std::fabs(bpw_at(hi) - share.target_bpw) ? lo : hi;
    std::ostringstream note;
    note << method << ": the rate moves in steps of k (an integer number of shared values): ";
    if (bpw_at(hi) < share.target_bpw)
      note << "the largest k searched, max_search_k=" << hi << ", reaches only " << bpw_at(hi) << " bpw";
    else
      note << "k=" << lo << " gives " << bpw_at(lo) << " bpw, k=" << hi << " gives " << bpw_at(hi)
           << " bpw; the closer, k=" << k << ", is kept";
    ctx.rate_note = note.str();
    log_info(method + ": k=" + std::to_string(k) + " is closest to target_bpw " + std::to_string(share.target_bpw) +
             " (" + std::to_string(bpw_at(k)) + " bpw)");
  }
  obj_lloyd = obj_dp = sec_lloyd = sec_dp = 0;
  SharingSolution sol = solve_sharing(prob, share, quantizer(k));
  dps.clear();
  std::ostringstream os;
  os << method << ": k=" << k << ", weighted distortion";
  if (km.solver != "dp") os << " lloyd " << obj_lloyd << " (" << sec_lloyd << " s)";
  if (km.solver != "lloyd")
    os << " dp " << obj_dp << " (" << sec_dp << " s; " << sec_dp_all << " s of DP in the whole k search)";
  if (km.solver == "both") os << ", lloyd/dp - 1 = " << (obj_lloyd / obj_dp - 1);
  log_info(os.str());
  return finish_sharing(ctx, prob, std::move(sol), share, method);
}

enum class KMeansDefaults { han, choi };

struct KMeansParams : ParamsBase {
  KMeansSharingOptions km;
  SharingMethodParams share;
  explicit KMeansParams(KMeansDefaults d) {
    if (d == KMeansDefaults::han) {  // kmeans
      km.solver = "lloyd";
      // Han et al.'s linear initialisation (their section 3.1 finds it best); chosen on
      // cifar10-jpeg-val over k-means++ seeding and the exact DP (docs/methods/choi.md).
      km.init = "linear";
      share.scope = "layer";
      share.weighting = "none";
      share.coder = "fixed";
    } else {  // hessian_kmeans
      km.solver = "dp";
      share.scope = "network";
      share.weighting = "hessian";
      share.coder = "huffman";
      // Sampled labels (one per image), validated: on cifar10-jpeg-val at 2 bpw the exact class
      // sum gives the same top-1 (ResNet-20 ecsq 69.30 vs 69.14, uniform_ecsq 76.04 vs 76.06) at
      // 10x the cost (1,523 s vs ~150 s on 2 busy cores).
      share.hessian.gn_max_classes = 0;
    }
  }
  void bind(ParamBinder& b) override {
    km.bind(b);
    share.bind(b);
  }
  void validate() override {
    km.validate();
    share.validate();
  }
};

class KMeansMethod : public Method {
 public:
  KMeansMethod(std::string name, KMeansDefaults d) : name_(std::move(name)), p_(d) {}
  std::string name() const override { return name_; }
  // One version for both names (the same code): a change of either's bytes bumps both.
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override { return p_.share.needs_calibration(); }
  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    return compress_kmeans_sharing(ctx, p_.share, p_.km, name());
  }
  torch::Tensor decode(const LayerRecord& rec) const override { return decode_sharing(rec); }

 private:
  std::string name_;
  KMeansParams p_;
};

const bool registered_kmeans = register_method(
    "kmeans", [] { return std::unique_ptr<Method>(new KMeansMethod("kmeans", KMeansDefaults::han)); });
const bool registered_hessian_kmeans = register_method("hessian_kmeans", [] {
  return std::unique_ptr<Method>(new KMeansMethod("hessian_kmeans", KMeansDefaults::choi));
});

}  // namespace
}  // namespace bb
