// kmeans: the Deep Compression weight-sharing baseline (Han et al. 2016). Every conv/linear layer
// gets its own k = 2^bits shared values by (unweighted) scalar k-means with k-means++ seeding and
// Lloyd iterations; per-weight indices are stored fixed-width (default), Huffman or rANS coded;
// the codebook is fp32 (or fp16). Pruning, Hessian weighting, a network-wide codebook and
// fine-tuning of the shared values are available through the common weight-sharing parameters
// (quant/weight_sharing.h, methods/weight_sharing_method.h); hessian_kmeans is the same machinery with Choi et al.'s defaults.
#include "methods/method.h"
#include "methods/weight_sharing_method.h"

namespace bb {
namespace {

struct KMeansParams : ParamsBase {
  KMeansSharingOptions km;
  SharingMethodParams share;
  KMeansParams() {
    km.solver = "lloyd";
    km.init = "kmeans++";
    share.scope = "layer";
    share.weighting = "none";
    share.coder = "fixed";
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
  std::string name() const override { return "kmeans"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override { return p_.share.needs_calibration(); }
  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    return compress_kmeans_sharing(ctx, p_.share, p_.km, name());
  }
  torch::Tensor decode(const LayerRecord& rec) const override { return decode_sharing(rec); }

 private:
  KMeansParams p_;
};

}  // namespace
BB_REGISTER_METHOD("kmeans", KMeansMethod);
}  // namespace bb
