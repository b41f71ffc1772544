// VGG-11/16 with and without batch norm, torchvision's layout: features.N, avgpool (7x7),
// classifier.{0,3,6}. Dropout is a no-op in evaluation, so it is not materialised.
#include "models/model.h"
#include "models/registry.h"

namespace bb {
namespace {

namespace nn = torch::nn;

class VGG : public Model {
 public:
  VGG(const std::string& arch, const std::vector<int>& cfg, bool bn)
      : Model(arch, InputSpec{"imagenet", 3, 224, 224, 1000}) {
    auto features = register_module("features", std::make_shared<Group>());
    int idx = 0;
    int64_t in = 3;
    for (int v : cfg) {
      Op op;
      if (v == 0) {  // max-pool
        op.pool = true;
        ops_.push_back(op);
        idx += 1;
        continue;
      }
      auto c = features->register_module(std::to_string(idx),
                                         nn::Conv2d(nn::Conv2dOptions(in, v, 3).padding(1)));
      op.layer = add_layer("features." + std::to_string(idx), c);
      idx += 1;
      if (bn) {
        op.bn = features->register_module(std::to_string(idx), nn::BatchNorm2d(v));
        pair_bn(op.layer, op.bn);
        idx += 1;
      }
      idx += 1;  // ReLU
      ops_.push_back(op);
      in = v;
    }
    auto cls = register_module("classifier", std::make_shared<Group>());
    fc_[0] = add_layer("classifier.0", cls->register_module("0", nn::Linear(512 * 7 * 7, 4096)));
    fc_[1] = add_layer("classifier.3", cls->register_module("3", nn::Linear(4096, 4096)));
    fc_[2] = add_layer("classifier.6", cls->register_module("6", nn::Linear(4096, 1000)));
  }

  bool supports_blocked_layout() const override { return true; }

  torch::Tensor forward(torch::Tensor x) override {
    for (auto& op : ops_) {
      if (op.pool) {
        x = torch::max_pool2d(x, 2, 2);
        continue;
      }
      x = op.bn ? run_bn(op.layer, x) : run(op.layer, x);
      x = torch::relu(x);
    }
    x = torch::adaptive_avg_pool2d(dense(x), {7, 7}).flatten(1);
    x = torch::relu(run(fc_[0], x));
    x = torch::relu(run(fc_[1], x));
    return run(fc_[2], x);
  }

 private:
  struct Op {
    bool pool = false;
    int layer = -1;
    nn::BatchNorm2d bn{nullptr};
  };
  std::vector<Op> ops_;
  int fc_[3];
};

const std::vector<int> kCfgA = {64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0};
const std::vector<int> kCfgD = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};

const bool registered = [] {
  register_model("vgg11", [] { return std::make_shared<VGG>("vgg11", kCfgA, false); });
  register_model("vgg11_bn", [] { return std::make_shared<VGG>("vgg11_bn", kCfgA, true); });
  register_model("vgg16", [] { return std::make_shared<VGG>("vgg16", kCfgD, false); });
  register_model("vgg16_bn", [] { return std::make_shared<VGG>("vgg16_bn", kCfgD, true); });
  return true;
}();

}  // namespace
}  // namespace bb
