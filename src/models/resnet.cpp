// ImageNet ResNet-18/34/50 with torchvision's architecture (v1.5: stride on the 3x3 conv of a
// bottleneck) and torchvision's parameter names, so its state dicts load unchanged.
#include "models/model.h"
#include "models/registry.h"

namespace bb {
namespace {

namespace nn = torch::nn;

nn::Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding(pad).bias(false));
}

class ResNet : public Model {
 public:
  ResNet(const std::string& arch, bool bottleneck, std::vector<int> counts)
      : Model(arch, InputSpec{"imagenet", 3, 224, 224, 1000}), bottleneck_(bottleneck) {
    const int64_t expansion = bottleneck ? 4 : 1;
    stem_conv_ = add_layer("conv1", register_module("conv1", conv(3, 64, 7, 2, 3)));
    bn1_ = register_module("bn1", nn::BatchNorm2d(64));
    pair_bn(stem_conv_, bn1_);
    int64_t in = 64;
    for (int s = 0; s < 4; ++s) {
      const int64_t planes = 64 << s;
      const std::string lname = "layer" + std::to_string(s + 1);
      auto stage = register_module(lname, std::make_shared<Group>());
      for (int i = 0; i < counts[s]; ++i) {
        const int64_t stride = (s > 0 && i == 0) ? 2 : 1;
        auto blk = stage->register_module(std::to_string(i), std::make_shared<Group>());
        const std::string pre = lname + "." + std::to_string(i) + ".";
        Block b;
        if (bottleneck) {
          b.convs.push_back(add_layer(pre + "conv1", blk->register_module("conv1", conv(in, planes, 1, 1, 0))));
          b.bns.push_back(blk->register_module("bn1", nn::BatchNorm2d(planes)));
          b.convs.push_back(add_layer(pre + "conv2", blk->register_module("conv2", conv(planes, planes, 3, stride, 1))));
          b.bns.push_back(blk->register_module("bn2", nn::BatchNorm2d(planes)));
          b.convs.push_back(add_layer(pre + "conv3", blk->register_module("conv3", conv(planes, planes * 4, 1, 1, 0))));
          b.bns.push_back(blk->register_module("bn3", nn::BatchNorm2d(planes * 4)));
        } else {
          b.convs.push_back(add_layer(pre + "conv1", blk->register_module("conv1", conv(in, planes, 3, stride, 1))));
          b.bns.push_back(blk->register_module("bn1", nn::BatchNorm2d(planes)));
          b.convs.push_back(add_layer(pre + "conv2", blk->register_module("conv2", conv(planes, planes, 3, 1, 1))));
          b.bns.push_back(blk->register_module("bn2", nn::BatchNorm2d(planes)));
        }
        if (stride != 1 || in != planes * expansion) {
          auto ds = blk->register_module("downsample", std::make_shared<Group>());
          b.down = add_layer(pre + "downsample.0", ds->register_module("0", conv(in, planes * expansion, 1, stride, 0)));
          b.down_bn = ds->register_module("1", nn::BatchNorm2d(planes * expansion));
          pair_bn(b.down, b.down_bn);
        }
        for (size_t j = 0; j < b.convs.size(); ++j) pair_bn(b.convs[j], b.bns[j]);
        blocks_.push_back(b);
        in = planes * expansion;
      }
    }
    fc_ = add_layer("fc", register_module("fc", nn::Linear(512 * expansion, 1000)));
    for (auto& m : modules(false)) {
      if (auto* c = m->as<nn::Conv2d>())
        nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
    }
  }

  bool supports_blocked_layout() const override { return true; }

  torch::Tensor forward(torch::Tensor x) override {
    // In-place relu/add on run_bn's results: fresh tensors nothing else holds (see cifar_resnet.cpp).
    // Stages (Model::stage): the stem with its max-pool, then one per residual block; a stage never
    // modifies its input.
    x = stage(0, [&] { return torch::max_pool2d(run_bn(stem_conv_, x).relu_(), 3, 2, 1); });
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const Block& b = blocks_[i];
      x = stage((int)i + 1, [&] {
        torch::Tensor out = x;
        const size_t n = b.convs.size();
        for (size_t j = 0; j < n; ++j) {
          out = run_bn(b.convs[j], out);
          if (j + 1 < n) out.relu_();
        }
        torch::Tensor identity = b.down >= 0 ? run_bn(b.down, x) : x;
        return out.add_(identity).relu_();
      });
    }
    x = torch::adaptive_avg_pool2d(dense(x), {1, 1}).flatten(1);
    return run(fc_, x);
  }

 private:
  struct Block {
    std::vector<int> convs;
    std::vector<nn::BatchNorm2d> bns;
    int down = -1;
    nn::BatchNorm2d down_bn{nullptr};
  };
  bool bottleneck_;
  int stem_conv_, fc_;
  nn::BatchNorm2d bn1_{nullptr};
  std::vector<Block> blocks_;
};

const bool registered = [] {
  register_model("resnet18", [] { return std::make_shared<ResNet>("resnet18", false, std::vector<int>{2, 2, 2, 2}); });
  register_model("resnet34", [] { return std::make_shared<ResNet>("resnet34", false, std::vector<int>{3, 4, 6, 3}); });
  register_model("resnet50", [] { return std::make_shared<ResNet>("resnet50", true, std::vector<int>{3, 4, 6, 3}); });
  return true;
}();

}  // namespace
}  // namespace bb
