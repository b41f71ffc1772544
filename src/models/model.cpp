#include "models/model.h"

#include "common/error.h"

namespace bb {

int Model::layer_index(const std::string& name) const {
  for (size_t i = 0; i < layers_.size(); ++i)
    if (layers_[i].name == name) return (int)i;
  return -1;
}

int Model::add_layer(const std::string& name, torch::nn::Conv2d m) {
  Layer l;
  l.name = name;
  l.kind = LayerKind::conv;
  l.conv = m;
  layers_.push_back(l);
  return (int)layers_.size() - 1;
}

int Model::add_layer(const std::string& name, torch::nn::Linear m) {
  Layer l;
  l.name = name;
  l.kind = LayerKind::linear;
  l.linear = m;
  layers_.push_back(l);
  return (int)layers_.size() - 1;
}

void Model::pair_bn(int id, torch::nn::BatchNorm2d bn) {
  BB_CHECK(id >= 0 && id < (int)layers_.size() && layers_[id].is_conv(), "pair_bn: layer ", id, " is not a conv");
  if (bn_of_.size() < layers_.size()) bn_of_.resize(layers_.size(), torch::nn::BatchNorm2d{nullptr});
  bn_of_[id] = bn;
}

namespace {
// gamma / sqrt(var + eps) in double, so a folded conv differs from conv-then-BN by float rounding only.
torch::Tensor bn_scale_f64(const torch::nn::BatchNorm2dImpl& bn) {
  return bn.weight.to(torch::kFloat64) / (bn.running_var.to(torch::kFloat64) + bn.options.eps()).sqrt();
}
}  // namespace

torch::Tensor Model::run_bn(int id, const torch::Tensor& x) {
  torch::nn::BatchNorm2d& bn = bn_of_.at(id);
  if (fold_on_ && !is_training() && (!tap_ || tap_->wants_folded())) {
    const auto& f = folded_[id];
    const auto& o = layers_[id].conv->options;
    auto folded_conv = [&] {
      if (blocked_)
        return torch::mkldnn_convolution(x.is_mkldnn() ? x : x.to_mkldnn(), f.first, f.second,
                                         c10::get<torch::ExpandingArray<2>>(o.padding()), o.stride(), o.dilation(),
                                         o.groups());
      return torch::conv2d(dense(x), f.first, f.second, o.stride(), c10::get<torch::ExpandingArray<2>>(o.padding()),
                           o.dilation(), o.groups());
    };
    if (!tap_) return folded_conv();
    tap_->on_input(id, x);
    torch::Tensor y = tap_->precomputed_output(id, x);
    // Callers may modify run_bn's result in place (relu_, add_): a supplied tensor is copied.
    if (y.defined()) {
      y = dense(y);
      y = blocked_ ? y.to_mkldnn() : y.clone();
    } else {
      y = folded_conv();
    }
    return tap_->on_output(id, x, std::move(y));
  }
  return bn(run(id, x));
}

torch::Tensor Model::bn_scale(int id) const {
  if (id < 0 || id >= (int)bn_of_.size() || bn_of_[id].is_empty()) return {};
  return bn_scale_f64(*bn_of_[id]).to(torch::kFloat32);
}

void Model::set_fold_bn(bool on, bool blocked) {
  folded_.clear();
  fold_on_ = blocked_ = false;
  if (!on) return;
  blocked = blocked && supports_blocked_layout() && at::hasMKLDNN();
  torch::NoGradGuard ng;
  folded_.resize(layers_.size());
  for (size_t i = 0; i < bn_of_.size(); ++i) {
    if (bn_of_[i].is_empty()) continue;
    const auto& bn = *bn_of_[i];
    BB_CHECK(bn.running_mean.defined() && bn.running_var.defined(), "fold_bn: BN after '", layers_[i].name,
             "' has no running statistics");
    auto s = bn_scale_f64(bn);
    auto w = layers_[i].weight().to(torch::kFloat64) * s.view({-1, 1, 1, 1});
    auto b = bn.bias.to(torch::kFloat64) - bn.running_mean.to(torch::kFloat64) * s;
    if (layers_[i].bias().defined()) b = b + layers_[i].bias().to(torch::kFloat64) * s;
    folded_[i] = {w.to(torch::kFloat32).contiguous(), b.to(torch::kFloat32).contiguous()};
    if (blocked) {
      const auto& o = layers_[i].conv->options;
      folded_[i].first = torch::mkldnn_reorder_conv2d_weight(
          folded_[i].first.to_mkldnn(), c10::get<torch::ExpandingArray<2>>(o.padding()), o.stride(), o.dilation(),
          o.groups());
      folded_[i].second = folded_[i].second.to_mkldnn();
    }
  }
  fold_on_ = true;
  blocked_ = blocked;
}

std::map<std::string, torch::Tensor> Model::state() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : named_parameters(true)) out[p.key()] = p.value();
  for (const auto& b : named_buffers(true)) out[b.key()] = b.value();
  return out;
}

std::vector<std::string> Model::parameter_names() const {
  std::vector<std::string> out;
  for (const auto& p : named_parameters(true)) out.push_back(p.key());
  return out;
}

int64_t Model::num_weights() const {
  int64_t n = 0;
  for (const auto& l : layers_) n += l.weight().numel();
  return n;
}

int64_t Model::num_params() const {
  int64_t n = 0;
  for (const auto& p : named_parameters(true)) n += p.value().numel();
  return n;
}

}  // namespace bb
