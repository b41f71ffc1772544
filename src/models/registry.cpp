#include "models/registry.h"
#include "common/error.h"

#include <map>

namespace bb {

static std::map<std::string, ModelFactory>& table() {
  static std::map<std::string, ModelFactory> t;
  return t;
}

bool register_model(const std::string& name, ModelFactory f) {
  table()[name] = std::move(f);
  return true;
}

std::vector<std::string> model_names() {
  std::vector<std::string> out;
  for (auto& kv : table()) out.push_back(kv.first);
  return out;
}

bool has_model(const std::string& name) { return table().count(name) > 0; }

std::shared_ptr<Model> make_model(const std::string& name) {
  auto it = table().find(name);
  if (it == table().end()) {
    std::string known;
    for (auto& n : model_names()) known += (known.empty() ? "" : ", ") + n;
    BB_THROW("unknown model '", name, "' (known: ", known, ")");
  }
  auto m = it->second();
  m->eval();
  return m;
}

}  // namespace bb
