#include "common/error.h"
#include "methods/method.h"

#include <map>

namespace bb {

static std::map<std::string, MethodFactory>& methods() {
  static std::map<std::string, MethodFactory> m;
  return m;
}

bool register_method(const std::string& name, MethodFactory f) {
  methods()[name] = std::move(f);
  return true;
}

std::vector<std::string> method_names() {
  std::vector<std::string> out;
  for (auto& kv : methods()) out.push_back(kv.first);
  return out;
}

bool has_method(const std::string& name) { return methods().count(name) > 0; }

std::unique_ptr<Method> make_method(const std::string& name) {
  auto it = methods().find(name);
  if (it == methods().end()) {
    std::string known;
    for (auto& n : method_names()) known += (known.empty() ? "" : ", ") + n;
    BB_THROW("unknown method '", name, "' (known: ", known, ")");
  }
  return it->second();
}

}  // namespace bb
