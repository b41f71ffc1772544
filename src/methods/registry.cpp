#include "common/error.h"
#include "common/hash.h"
#include "methods/method.h"
#include "quant/hessian.h"

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

std::string rate_independent_key(Method& m, const CompressContext& ctx, const std::vector<std::string>& also_ignored) {
  BB_CHECK(ctx.model, "rate_independent_key: no model");
  auto params = ParamBinder::to_json(m.params());
  params.erase("target_bpw");
  for (const auto& k : also_ignored) {
    BB_CHECK(params.contains(k), "rate_independent_key: method '", m.name(), "' has no parameter '", k, "'");
    params.erase(k);
  }
  return sha256_hex("bitbench rate-independent " + m.name() + " v" + std::to_string(m.algorithm_version()) +
                    "\nmodel=" + ctx.model->arch() + "\nstate=" + model_state_hash(*ctx.model) +
                    "\ndata=" + (ctx.calib ? ctx.calib->identity() : std::string("none")) +
                    "\nseed=" + std::to_string(ctx.seed) + "\nparams=" + params.dump());
}

}  // namespace bb
