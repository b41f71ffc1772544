// CIFAR ResNet-20/32/44/56 (He et al. 2016), option-A shortcut, as in akamaster/pytorch_resnet_cifar10.
#include "common/error.h"
#include "models/model.h"
#include "models/registry.h"

namespace bb {
namespace {

namespace nn = torch::nn;

nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
}

class CifarResNet : public Model {
 public:
  CifarResNet(const std::string& arch, int depth) : Model(arch, InputSpec{"cifar10", 3, 32, 32, 10}) {
    const int n = (depth - 2) / 6;
    conv1_ = register_module("conv1", conv3x3(3, 16, 1));
    bn1_ = register_module("bn1", nn::BatchNorm2d(16));
    first_ = add_layer("conv1", conv1_);
    pair_bn(first_, bn1_);
    int64_t in = 16;
    const int64_t planes[3] = {16, 32, 64};
    for (int s = 0; s < 3; ++s) {
      auto stage = register_module("layer" + std::to_string(s + 1), std::make_shared<Group>());
      for (int i = 0; i < n; ++i) {
        Block b;
        b.stride = (s > 0 && i == 0) ? 2 : 1;
        b.pad = (b.stride != 1 || in != planes[s]) ? planes[s] / 4 : 0;
        if (at::hasMKLDNN() && (b.stride != 1 || b.pad > 0)) b.select_blocked = select_weight(in, b);
        auto blk = stage->register_module(std::to_string(i), std::make_shared<Group>());
        const std::string pre = "layer" + std::to_string(s + 1) + "." + std::to_string(i) + ".";
        auto c1 = blk->register_module("conv1", conv3x3(in, planes[s], b.stride));
        b.bn1 = blk->register_module("bn1", nn::BatchNorm2d(planes[s]));
        auto c2 = blk->register_module("conv2", conv3x3(planes[s], planes[s], 1));
        b.bn2 = blk->register_module("bn2", nn::BatchNorm2d(planes[s]));
        b.c1 = add_layer(pre + "conv1", c1);
        b.c2 = add_layer(pre + "conv2", c2);
        pair_bn(b.c1, b.bn1);
        pair_bn(b.c2, b.bn2);
        blocks_.push_back(b);
        in = planes[s];
      }
    }
    linear_ = register_module("linear", nn::Linear(64, 10));
    fc_ = add_layer("linear", linear_);
    for (auto& m : modules(false))
      if (auto* c = m->as<nn::Conv2d>()) nn::init::kaiming_normal_(c->weight);
  }

  bool supports_blocked_layout() const override { return true; }

  torch::Tensor forward(torch::Tensor x) override {
    // In-place relu/add on run_bn's results: they are fresh tensors (a BN output, the folded conv's,
    // or a copy of a tap-supplied one), so nothing else holds them; saves a pass over memory.
    // Stages (Model::stage): the stem, then one per residual block; a stage never modifies its input.
    x = stage(0, [&] { return run_bn(first_, x).relu_(); });
    for (size_t i = 0; i < blocks_.size(); ++i) x = stage((int)i + 1, [&] { return block(blocks_[i], x); });
    x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
    return run(fc_, x);
  }

 private:
  struct Block {
    int c1, c2;
    int64_t stride, pad;
    nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
    torch::Tensor select_blocked;  // option-A shortcut as a blocked 1x1 conv weight (with oneDNN)
  };

  torch::Tensor block(Block& b, const torch::Tensor& x) {
    auto out = run_bn(b.c1, x).relu_();
    out = run_bn(b.c2, out);
    torch::Tensor sc = x;
    if (b.stride != 1 || b.pad > 0) {
      if (x.is_mkldnn()) {
        sc = shortcut_blocked(b, x);
      } else {
        using namespace torch::indexing;
        sc = x.index({Slice(), Slice(), Slice(None, None, 2), Slice(None, None, 2)});
        sc = torch::constant_pad_nd(sc, {0, 0, 0, 0, b.pad, b.pad}, 0);
      }
    }
    return out.add_(sc).relu_();
  }

  // The option-A shortcut (every other pixel, channels zero-padded on both sides) on a blocked
  // activation: strided slicing and padding need a dense tensor, so it runs as a 1x1 stride-2
  // conv whose weight is a shifted identity (exact: each output is one input times 1, or 0).
  // Built with the model, not on first use, so concurrent forwards share it read-only.
  static torch::Tensor select_weight(int64_t cin, const Block& b) {
    auto w = torch::zeros({cin + 2 * b.pad, cin, 1, 1});
    for (int64_t c = 0; c < cin; ++c) w[b.pad + c][c][0][0] = 1.0f;
    return torch::mkldnn_reorder_conv2d_weight(w.to_mkldnn(), {0, 0}, {b.stride, b.stride}, {1, 1}, 1);
  }
  torch::Tensor shortcut_blocked(const Block& b, const torch::Tensor& x) {
    BB_CHECK(b.select_blocked.defined() && b.select_blocked.size(1) == x.size(1), "cifar_resnet: blocked shortcut for ",
             x.size(1), " input channels was not built");
    return torch::mkldnn_convolution(x, b.select_blocked, {}, {0, 0}, {b.stride, b.stride}, {1, 1}, 1);
  }
  nn::Conv2d conv1_{nullptr};
  nn::BatchNorm2d bn1_{nullptr};
  nn::Linear linear_{nullptr};
  int first_, fc_;
  std::vector<Block> blocks_;
};

const bool registered = [] {
  for (int d : {20, 32, 44, 56}) {
    std::string name = "cifar_resnet" + std::to_string(d);
    register_model(name, [name, d] { return std::make_shared<CifarResNet>(name, d); });
  }
  return true;
}();

}  // namespace
}  // namespace bb
