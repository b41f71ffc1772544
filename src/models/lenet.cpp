// LeNet-5 with batch norm, as in Deep1994/LeNet5-for-MNIST-with-PyTorch (input 32x32 grey).
#include "models/model.h"
#include "models/registry.h"

namespace bb {
namespace {

namespace nn = torch::nn;

class LeNet5 : public Model {
 public:
  LeNet5() : Model("lenet5", InputSpec{"mnist", 1, 32, 32, 10}) {
    auto convnet = register_module("convnet", std::make_shared<Group>());
    c_[0] = add_layer("convnet.0", convnet->register_module("0", nn::Conv2d(nn::Conv2dOptions(1, 6, 5))));
    bn_[0] = convnet->register_module("1", nn::BatchNorm2d(6));
    c_[1] = add_layer("convnet.4", convnet->register_module("4", nn::Conv2d(nn::Conv2dOptions(6, 16, 5))));
    bn_[1] = convnet->register_module("5", nn::BatchNorm2d(16));
    c_[2] = add_layer("convnet.8", convnet->register_module("8", nn::Conv2d(nn::Conv2dOptions(16, 120, 5))));
    bn_[2] = convnet->register_module("9", nn::BatchNorm2d(120));
    auto fc = register_module("fc", std::make_shared<Group>());
    f_[0] = add_layer("fc.0", fc->register_module("0", nn::Linear(120, 84)));
    f_[1] = add_layer("fc.2", fc->register_module("2", nn::Linear(84, 10)));
  }

  torch::Tensor forward(torch::Tensor x) override {
    x = torch::max_pool2d(torch::relu(bn_[0](run(c_[0], x))), 2);
    x = torch::max_pool2d(torch::relu(bn_[1](run(c_[1], x))), 2);
    x = torch::relu(bn_[2](run(c_[2], x))).flatten(1);
    x = torch::relu(run(f_[0], x));
    return run(f_[1], x);
  }

 private:
  int c_[3], f_[2];
  nn::BatchNorm2d bn_[3] = {nullptr, nullptr, nullptr};
};

const bool registered = register_model("lenet5", [] { return std::make_shared<LeNet5>(); });

}  // namespace
}  // namespace bb
