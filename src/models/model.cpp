#include "models/model.h"

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
