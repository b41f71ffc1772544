// The compression-method interface. A method is one class in one file under src/methods/,
// registered by name with BB_REGISTER_METHOD; the runner, CLI and container never name a method.
//
//   Params     a plain struct (ParamsBase) with documented defaults, filled from YAML / --set
//   compress   model (+ calibration data) -> one LayerRecord per layer it compresses; layers it
//              does not return are stored as they are
//   decode     LayerRecord -> the weight tensor that is evaluated
//
// After compress() the pipeline replaces each compressed layer's weight by decode(record) read
// back from the file; other parameters and buffers (biases, BN) are stored as the model holds
// them then, so a method that fine-tunes them leaves its fine-tuned values in the model.
#pragma once
#include "coding/record.h"
#include "data/dataset.h"
#include "methods/params.h"
#include "models/model.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace bb {

struct CompressContext {
  Model* model = nullptr;                  // FP weights loaded, eval mode
  std::shared_ptr<Dataset> calib;          // calibration / fine-tuning data (may be null)
  uint64_t seed = 0;
  std::string cache_dir;                   // for expensive intermediates ("" = no caching)
  std::string weights_hash;                // sha256 of the source weights (cache keys)
  // Phase timer: ctx.phase("hessian") at the *start* of a phase; the time until the next call (or
  // the method's return) is recorded as that phase's wall time (run records: phase_seconds).
  std::function<void(const std::string&)> phase = [](const std::string&) {};
  // Set by a rate-targeting method: how its search ended and why the rate it reached is what it
  // is (its nearest operating points, a cap it hit). The run record keeps it with the target
  // (rate_target.why), so a row off its target says why.
  std::string rate_note;
};

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string name() const = 0;
  virtual ParamsBase& params() = 0;
  // The algorithm's version: bump it in the method's file whenever the same parameters, weights,
  // calibration data and seed would give different bytes or decoded weights. Run IDs include it,
  // so records of an older version are never reused as current (`bitbench table` flags them),
  // and tests/test_golden.cpp fails when a method's bytes change without a bump.
  virtual int algorithm_version() const = 0;
  // Does compress() read ctx.calib? (The CLI only opens a calibration set when needed.)
  virtual bool needs_calibration() const { return false; }
  virtual std::vector<LayerRecord> compress(CompressContext& ctx) = 0;
  virtual torch::Tensor decode(const LayerRecord& rec) const = 0;
  // A method whose records share one payload (external: the files of one command) decodes all of
  // its records of a file at once: decode_bbz and the pipeline then call decode_together with
  // them (file order) and the file's provenance, instead of decode() per record. It returns one
  // weight per record, in that order.
  virtual bool decodes_together() const { return false; }
  virtual std::vector<torch::Tensor> decode_together(const std::vector<const LayerRecord*>& recs,
                                                     const nlohmann::json& provenance) const {
    (void)recs;
    (void)provenance;
    return {};
  }
};

using MethodFactory = std::function<std::unique_ptr<Method>()>;
bool register_method(const std::string& name, MethodFactory f);
std::unique_ptr<Method> make_method(const std::string& name);  // throws naming known methods
std::vector<std::string> method_names();
bool has_method(const std::string& name);

// Cache key (hex) of what `m` computes before it looks at target_bpw, e.g. its rate-independent
// allocation candidates: ctx's model state and calibration set, the seed, the method's name and
// algorithm version, and every parameter except target_bpw and the `also_ignored` ones (those the
// cached result does not depend on). A run at another target of the same model gets the same key.
std::string rate_independent_key(Method& m, const CompressContext& ctx, const std::vector<std::string>& also_ignored = {});

#define BB_REGISTER_METHOD(NAME, CLASS) \
  static const bool bb_registered_method_##CLASS = ::bb::register_method(NAME, [] { return std::unique_ptr<::bb::Method>(new CLASS()); })

}  // namespace bb
