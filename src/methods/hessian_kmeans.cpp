// hessian_kmeans: Hessian-weighted k-means weight sharing (Choi et al., "Towards the Limit of
// Network Quantization", ICLR 2017). One codebook of k = 2^bits values for the whole network
// (scope=network), fitted by k-means on all conv/linear weights with each weight's squared error
// weighted by the diagonal of the loss Hessian, so errors in different layers are comparable;
// centre = Hessian-weighted mean of its members. Solved exactly by the 1-D DP (default) or by
// Lloyd, or both (objectives logged). Indices Huffman coded. See quant/weight_sharing.h for the
// shared parameters (pruning, fine-tuning, per-layer scope, rate target).
#include "methods/method.h"
#include "methods/weight_sharing_method.h"

namespace bb {
namespace {

struct HessianKMeansParams : ParamsBase {
  KMeansSharingOptions km;
  SharingMethodParams share;
  HessianKMeansParams() {
    km.solver = "dp";
    share.scope = "network";
    share.weighting = "hessian";
    share.coder = "huffman";
    // Sampled labels (one per image), validated: on cifar10-jpeg-val at 2 bpw the exact class sum
    // gives the same top-1 (ResNet-20 ecsq 69.30 vs 69.14, uniform_ecsq 76.04 vs 76.06) at 10x
    // the cost (1,523 s vs ~150 s on 2 busy cores).
    share.hessian.gn_max_classes = 0;
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

class HessianKMeansMethod : public Method {
 public:
  std::string name() const override { return "hessian_kmeans"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override { return p_.share.needs_calibration(); }
  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    return compress_kmeans_sharing(ctx, p_.share, p_.km, name());
  }
  torch::Tensor decode(const LayerRecord& rec) const override { return decode_sharing(rec); }

 private:
  HessianKMeansParams p_;
};

}  // namespace
BB_REGISTER_METHOD("hessian_kmeans", HessianKMeansMethod);
}  // namespace bb
