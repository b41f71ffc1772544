// Method parameters in the faiss ClusteringParameters style: one plain struct per method with
// documented defaults. A struct lists its fields once, in bind(); the same list parses
// `--set key=value` / YAML values (strict: unknown key or bad value is an error naming the key),
// writes the resolved parameters into run records and .bbz provenance, and prints --help.
#pragma once
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace bb {

class ParamBinder;

struct ParamsBase {
  virtual ~ParamsBase() = default;
  virtual void bind(ParamBinder& b) = 0;
  // Called after values are applied: check ranges, derive dependent fields. Throw bb::Error.
  virtual void validate() {}
};

class ParamBinder {
 public:
  enum class Mode { apply, to_json, describe };
  void field(const std::string& key, int& v, const std::string& doc);
  void field(const std::string& key, int64_t& v, const std::string& doc);
  void field(const std::string& key, double& v, const std::string& doc);
  void field(const std::string& key, bool& v, const std::string& doc);
  // choices: allowed values ({} = any string)
  void field(const std::string& key, std::string& v, const std::string& doc,
             const std::vector<std::string>& choices = {});
  // A parameter that was renamed or replaced: giving `old_key` is an error that names the new
  // parameter (`hint`, e.g. "use finetune_mode=labels|distill (ce -> labels, kd -> distill)").
  // Declared in bind() beside the fields; not a parameter itself (not in to_json or describe).
  void renamed(const std::string& old_key, const std::string& hint);
  // A parameter added after run records existed: while it holds `neutral` (the value that does
  // what the method did before the parameter existed) it is left out of identity_json, so the
  // cached runs and tuned choices made before it was added keep their IDs. Declared in bind()
  // after the field itself. to_json and describe still list it.
  void identity_neutral(const std::string& key, const nlohmann::json& neutral);

  // Applies `values` (key -> textual value) to p, then p.validate(). `where` prefixes errors
  // (e.g. "method 'kq'" or "experiments/x.yaml:12").
  static void apply(ParamsBase& p, const std::map<std::string, std::string>& values, const std::string& where);
  static nlohmann::json to_json(ParamsBase& p);
  // to_json without the identity_neutral parameters that hold their neutral value: what run IDs,
  // tune keys and duplicate checks hash.
  static nlohmann::json identity_json(ParamsBase& p);
  static std::string describe(ParamsBase& p);  // one line per key: name, default, doc

 private:
  Mode mode_ = Mode::apply;
  const std::map<std::string, std::string>* values_ = nullptr;
  std::map<std::string, bool> used_;
  std::string where_;
  nlohmann::json json_;
  std::map<std::string, nlohmann::json> neutral_;
  std::string text_;
  static ParamBinder bound_json(ParamsBase& p);  // p bound in to_json mode (json_ and neutral_ filled)
  template <typename T>
  void handle(const std::string& key, T& v, const std::string& doc, const std::vector<std::string>& choices);
};

// The parameters of a method that has none (fp32, fp16, test probes).
struct NoParams : ParamsBase {
  void bind(ParamBinder&) override {}
};

}  // namespace bb
