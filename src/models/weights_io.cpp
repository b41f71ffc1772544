#include "models/weights_io.h"
#include "common/error.h"
#include "common/fs_util.h"

#include <torch/serialize.h>

#include <fstream>
#include <iterator>
#include <sstream>

namespace bb {

StateDict read_state_dict(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  BB_CHECK(f.good(), "weights file '", path, "' cannot be opened");
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  BB_CHECK(!bytes.empty(), "weights file '", path, "' is empty");
  c10::IValue iv;
  try {
    iv = torch::pickle_load(bytes);
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    // libtorch's unpickler lacks SETITEM, which Python's pickle uses for a one-entry dict.
    const std::string hint = what.find("0x73") != std::string::npos
                                 ? "libtorch cannot read a dict with exactly one entry"
                                 : "an OrderedDict state_dict must be saved as dict(sd)";
    BB_THROW("weights file '", path, "' is not a torch.save'd plain dict of tensors (", what, "); ", hint);
  }
  BB_CHECK(iv.isGenericDict(), "weights file '", path, "' holds a ", iv.tagKind(),
           ", expected a plain dict {name: tensor}");
  StateDict sd;
  for (const auto& kv : iv.toGenericDict()) {
    BB_CHECK(kv.key().isString(), "weights file '", path, "': a key is not a string");
    const std::string name = kv.key().toStringRef();
    BB_CHECK(kv.value().isTensor(), "weights file '", path, "': entry '", name, "' is not a tensor");
    sd[name] = kv.value().toTensor();
  }
  return sd;
}

void write_state_dict(const StateDict& sd, const std::string& path) {
  c10::Dict<std::string, torch::Tensor> d;
  for (const auto& kv : sd) d.insert(kv.first, kv.second.detach().contiguous());
  std::vector<char> bytes = torch::pickle_save(c10::IValue(d));
  write_file_atomic(path, bytes.data(), bytes.size());
}

static bool tolerated_missing(const std::string& key) {
  const std::string suffix = "num_batches_tracked";
  return key.size() >= suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void load_state_dict(Model& model, const StateDict& sd, const std::string& origin) {
  torch::NoGradGuard ng;
  auto state = model.state();
  // Every problem is collected first and reported together; nothing is copied unless all fit.
  std::vector<std::string> missing, extra, misshaped;
  for (auto& kv : state) {
    auto it = sd.find(kv.first);
    if (it == sd.end()) {
      if (!tolerated_missing(kv.first)) missing.push_back(kv.first);
    } else if (it->second.sizes() != kv.second.sizes()) {
      std::ostringstream os;
      os << kv.first << " (file " << it->second.sizes() << ", model " << kv.second.sizes() << ")";
      misshaped.push_back(os.str());
    }
  }
  for (auto& kv : sd)
    if (!state.count(kv.first)) extra.push_back(kv.first);
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 8) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  std::string problems;
  if (!misshaped.empty()) problems += "; tensors of the wrong shape: " + join(misshaped);
  if (!missing.empty()) problems += "; missing tensors: " + join(missing);
  if (!extra.empty()) problems += "; unexpected tensors: " + join(extra);
  if (!problems.empty()) BB_THROW(origin, " does not fit model '", model.arch(), "'", problems);
  for (auto& kv : state) {
    auto it = sd.find(kv.first);
    if (it != sd.end()) kv.second.copy_(it->second.to(kv.second.dtype()));
  }
}

void load_weights(Model& model, const std::string& path) {
  load_state_dict(model, read_state_dict(path), "weights file '" + path + "'");
}

}  // namespace bb
