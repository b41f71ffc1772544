// Networks by name: cifar_resnet{20,32,44,56}, resnet{18,34,50}, vgg{11,16}[_bn], lenet5.
#pragma once
#include "models/model.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace bb {

using ModelFactory = std::function<std::shared_ptr<Model>()>;

// Called from each architecture's file at static-init time.
bool register_model(const std::string& name, ModelFactory f);

// Throws bb::Error naming the known models if `name` is unknown.
std::shared_ptr<Model> make_model(const std::string& name);
std::vector<std::string> model_names();
bool has_model(const std::string& name);

}  // namespace bb
