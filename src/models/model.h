// A classification network as a native libtorch module whose parameter/buffer names equal the
// reference implementation's (torchvision, akamaster), so their state dicts load as they are.
//
// Every conv/linear layer is listed in execution order in layers(); compression methods address
// weights through that list. A LayerTap, when installed, sees each layer's input and output
// (methods need inputs for activation statistics and outputs for gradients). With no tap installed
// the cost is one null-pointer test per layer.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace bb {

enum class LayerKind { conv, linear };

struct Layer {
  std::string name;  // state-dict prefix, e.g. "layer1.0.conv1" ("<name>.weight" is the weight)
  LayerKind kind;
  torch::nn::Conv2d conv{nullptr};
  torch::nn::Linear linear{nullptr};

  torch::Tensor& weight() const { return kind == LayerKind::conv ? conv.ptr()->weight : linear.ptr()->weight; }
  torch::Tensor& bias() const { return kind == LayerKind::conv ? conv.ptr()->bias : linear.ptr()->bias; }
  bool is_conv() const { return kind == LayerKind::conv; }
  int64_t kernel_h() const { return is_conv() ? weight().size(2) : 1; }
  int64_t kernel_w() const { return is_conv() ? weight().size(3) : 1; }
  int64_t out_features() const { return weight().size(0); }
  // Input dimension of one output row: C_in*K*K for convs, in_features for linears.
  int64_t row_size() const { return weight().numel() / weight().size(0); }
};

// Observer of layer inputs/outputs during forward, given the layer's index in Model::layers().
// on_output may return a replacement output (e.g. y + conv(x, dW) to measure the effect of a
// weight perturbation without touching the weights). To stop a forward pass early (all that was
// needed was an early layer's input), throw StopForward from a tap and catch it around forward().
struct LayerTap {
  virtual ~LayerTap() = default;
  virtual void on_input(int layer, const torch::Tensor& x) {}
  // A defined result is used as the layer's output and the layer is not computed (e.g. cached
  // outputs of layers upstream of a perturbed one, to measure it at the cost of the downstream
  // part only). on_output still sees it.
  virtual torch::Tensor precomputed_output(int layer, const torch::Tensor& x) { return {}; }
  virtual torch::Tensor on_output(int layer, const torch::Tensor& x, torch::Tensor y) { return y; }

  // Stages: models that split forward() into a chain of stages (stem, residual blocks; each stage's
  // output is all the rest of the network reads) ask the tap before running one. A defined result
  // is used as the stage's output and its layers are not run, so a pass that perturbs a late layer
  // skips the early part of the network entirely (not only its convs). on_stage_output sees every
  // stage's output, run or supplied.
  virtual torch::Tensor precomputed_stage(int stage) { return {}; }
  virtual void on_stage_output(int stage, const torch::Tensor& y) {}

  // A tap that returns true runs on the BN-folded network when Model::set_fold_bn is on: for a conv
  // paired with BN, the layer hooks then see the BN output (the folded conv's) instead of the
  // conv's, and x and y may be blocked (mkldnn) tensors. A y returned by precomputed_output may be
  // dense either way. Other taps always see the plain network.
  virtual bool wants_folded() const { return false; }
};
struct StopForward {};

// What a network expects as input; chooses the dataset family and preprocessing.
struct InputSpec {
  std::string family;  // "cifar10", "imagenet", "mnist"
  int64_t channels = 3, height = 32, width = 32;
  int64_t num_classes = 10;
};

class Model : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor x) = 0;

  const std::string& arch() const { return arch_; }
  const InputSpec& input_spec() const { return input_; }
  const std::vector<Layer>& layers() const { return layers_; }
  int layer_index(const std::string& name) const;  // -1 if absent

  void set_tap(LayerTap* tap) { tap_ = tap; }
  LayerTap* tap() const { return tap_; }

  // Full state (parameters and buffers) by dotted name, the torch.save'd plain-dict layout.
  std::map<std::string, torch::Tensor> state() const;
  // Names of learnable parameters (weights, biases, BN affine).
  std::vector<std::string> parameter_names() const;

  // conv+linear weight count, and all learnable parameters.
  int64_t num_weights() const;
  int64_t num_params() const;

  // Inference with BatchNorm folded into the conv before it: one conv with weight w*s and bias
  // beta - mean*s (s = gamma / sqrt(var + eps)) instead of a conv and a memory-bound BN pass.
  // set_fold_bn(true) builds the folded tensors from the current weights and BN statistics (call
  // it again after they change); it takes effect in eval mode with no tap installed, so methods
  // that observe layers always see the plain conv. Evaluation turns it on for its duration.
  //
  // With `blocked` (and a model that supports it), the folded convs run on oneDNN's blocked
  // tensor layout (weights reordered once, activations stay blocked between convs); in NCHW every
  // conv reorders its input and output. Measured on this 2-core machine: ResNet-18 at 224x224, a
  // PyTorch eager forward 20.6 -> 32.4 images/s, `bitbench eval` on imagenet-sample 22.2-25.1 ->
  // 25.6-29.1 (decoding included); CIFAR ResNet-20 on the 10k JPEG test folder 803-919 -> 1,106-1,180.
  // Non-BN layers take dense tensors as before.
  void set_fold_bn(bool on, bool blocked = false);
  // The per-channel scale gamma / sqrt(var + eps) of the BN after conv layer `id` (float, n), or an
  // undefined tensor if none: in the folded network a change dy of the conv output is s * dy.
  torch::Tensor bn_scale(int id) const;
  bool fold_bn() const { return fold_on_; }
  bool blocked_layout() const { return blocked_; }
  // Whether forward() copes with blocked (mkldnn) activations between BN-folded convs: only
  // relu, add, max-pool between them, and dense() before anything else.
  virtual bool supports_blocked_layout() const { return false; }

 protected:
  Model(std::string arch, InputSpec input) : arch_(std::move(arch)), input_(input) {}

  // Register a conv/linear in execution order; call run() with the returned index in forward().
  int add_layer(const std::string& name, torch::nn::Conv2d m);
  int add_layer(const std::string& name, torch::nn::Linear m);
  // Declares that conv layer `id` is followed directly by `bn`; forward() then calls run_bn(id, x).
  void pair_bn(int id, torch::nn::BatchNorm2d bn);
  torch::Tensor run_bn(int id, const torch::Tensor& x);
  // A blocked-layout activation back to a plain strided tensor (a no-op for plain ones).
  static torch::Tensor dense(const torch::Tensor& x) { return x.is_mkldnn() ? x.to_dense() : x; }

  // Runs stage `s` (see LayerTap::precomputed_stage) unless the tap supplies its output.
  template <class Body>
  torch::Tensor stage(int s, Body&& body) {
    torch::Tensor y;
    if (tap_) y = tap_->precomputed_stage(s);
    if (!y.defined()) y = body();
    if (tap_) tap_->on_stage_output(s, y);
    return y;
  }

  torch::Tensor run(int id, const torch::Tensor& x) {
    if (x.is_mkldnn()) return run(id, x.to_dense());
    Layer& l = layers_[id];
    if (!tap_) return l.is_conv() ? l.conv->forward(x) : l.linear->forward(x);
    tap_->on_input(id, x);
    torch::Tensor y = tap_->precomputed_output(id, x);
    if (!y.defined()) y = l.is_conv() ? l.conv->forward(x) : l.linear->forward(x);
    return tap_->on_output(id, x, std::move(y));
  }

 private:
  std::string arch_;
  InputSpec input_;
  std::vector<Layer> layers_;
  LayerTap* tap_ = nullptr;
  std::vector<torch::nn::BatchNorm2d> bn_of_;                    // per layer; null if none
  std::vector<std::pair<torch::Tensor, torch::Tensor>> folded_;  // per layer: weight, bias
  bool fold_on_ = false;
  bool blocked_ = false;  // folded_ holds oneDNN-reordered weights; run_bn returns blocked tensors
};

// Installs a tap for a scope and restores the previous one (also when an exception passes).
struct TapScope {
  Model& model;
  LayerTap* prev;
  TapScope(Model& m, LayerTap* t) : model(m), prev(m.tap()) { m.set_tap(t); }
  ~TapScope() { model.set_tap(prev); }
  TapScope(const TapScope&) = delete;
  TapScope& operator=(const TapScope&) = delete;
};

// BN folding on for a scope, off again however it ends (the model's weights may change next).
struct FoldBnScope {
  Model& model;
  FoldBnScope(Model& m, bool on, bool blocked) : model(m) { m.set_fold_bn(on, blocked); }
  ~FoldBnScope() { model.set_fold_bn(false); }
  FoldBnScope(const FoldBnScope&) = delete;
  FoldBnScope& operator=(const FoldBnScope&) = delete;
};

// A named group of child modules, so dotted names like "layer1.0.conv1" or "features.3" can be
// built to match a reference state dict exactly.
struct Group : torch::nn::Module {};

}  // namespace bb
