// Method parameters: the renamed-parameter list of ParamBinder and the one fine-tuning vocabulary
// (src/methods/finetune_params.h) across methods (issue 23, "one way to do each thing").
#include <catch2/catch.hpp>

#include "common/error.h"
#include "methods/finetune_params.h"
#include "methods/method.h"
#include "methods/params.h"

#include <set>
#include <string>

using namespace bb;

namespace {

struct Toy : ParamsBase {
  int calib_images = 7;
  void bind(ParamBinder& b) override {
    b.field("calib_images", calib_images, "calibration images");
    b.renamed("n_calib", "use calib_images");
  }
};

std::string error_of(ParamsBase& p, const std::map<std::string, std::string>& v, const std::string& where) {
  try {
    ParamBinder::apply(p, v, where);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("params: a renamed parameter is rejected with a hint naming the new one", "[params]") {
  Toy t;
  const std::string e = error_of(t, {{"n_calib", "3"}}, "method 'toy'");
  CHECK_THAT(e, Catch::Contains("method 'toy': parameter 'n_calib' was renamed: use calib_images"));
  CHECK(t.calib_images == 7);  // nothing applied
  // The new name works; the old one is neither a resolved parameter nor listed in the help.
  ParamBinder::apply(t, {{"calib_images", "3"}}, "method 'toy'");
  CHECK(t.calib_images == 3);
  CHECK(ParamBinder::to_json(t) == nlohmann::json{{"calib_images", 3}});
  CHECK(ParamBinder::describe(t).find("n_calib") == std::string::npos);
  // An unknown name is still "unknown", not "renamed".
  CHECK_THAT(error_of(t, {{"n_calibration", "3"}}, "t"), Catch::Contains("unknown parameter 'n_calibration'"));
}

namespace {
struct Grown : ParamsBase {
  int k = 8;
  std::string mode = "old";
  void bind(ParamBinder& b) override {
    b.field("k", k, "k");
    b.field("mode", mode, "added later; old = what the method did before", {"old", "new"});
    b.identity_neutral("mode", "old");
  }
};
}  // namespace

TEST_CASE("params: a parameter added at its neutral value leaves the identity as it was", "[params]") {
  Grown g;
  // Records list every parameter; the identity omits the added one while it does what the
  // method did before it existed, so cached runs keep their IDs.
  CHECK(ParamBinder::to_json(g) == nlohmann::json{{"k", 8}, {"mode", "old"}});
  CHECK(ParamBinder::identity_json(g) == nlohmann::json{{"k", 8}});
  ParamBinder::apply(g, {{"mode", "new"}}, "g");
  CHECK(ParamBinder::identity_json(g) == nlohmann::json{{"k", 8}, {"mode", "new"}});
  ParamBinder::apply(g, {{"mode", "old"}, {"k", "9"}}, "g");
  CHECK(ParamBinder::identity_json(g) == nlohmann::json{{"k", 9}});
}

TEST_CASE("params: every method's old fine-tuning, calibration and coder names are rejected with the new name",
          "[params]") {
  struct Old {
    std::string method, key, value, hint;
  };
  const std::vector<Old> old = {
      {"kq", "finetune_loss", "kd", "use finetune_mode=labels|distill (ce -> labels, kd -> distill)"},
      {"kq", "finetune_kd_temperature", "4", "use finetune_temperature"},
      {"pq", "n_calib", "16", "use calib_images"},
      {"pq", "global_finetune_epochs", "1", "use finetune_epochs"},
      {"pq", "global_finetune_images", "100", "use finetune_max_images"},
      {"pq", "global_lr", "0.01", "use finetune_lr"},
      {"pq", "global_weight_decay", "0", "use finetune_weight_decay"},
      {"pq", "global_lr_schedule", "step", "use finetune_lr_schedule"},
      {"pq", "global_lr_step_epochs", "3", "use finetune_lr_step_epochs"},
      {"pq", "momentum", "0.9", "use finetune_momentum"},
      {"tq", "entropy_coding", "true", "use coder=fixed|huffman|rans"},
      {"tq", "entropy_coder", "rans", "use coder=huffman|rans"},
      {"tq", "retrain_epochs", "1", "use finetune_epochs"},
      {"tq", "retrain_lr", "0.001", "use finetune_lr"},
      {"tq", "retrain_momentum", "0.9", "use finetune_momentum"},
      {"tq", "retrain_batch_size", "64", "use finetune_batch"},
  };
  for (const Old& o : old) {
    INFO(o.method << " " << o.key);
    auto m = make_method(o.method);
    const std::string e = error_of(m->params(), {{o.key, o.value}}, "method '" + o.method + "'");
    CHECK_THAT(e, Catch::Contains("method '" + o.method + "': parameter '" + o.key + "' was renamed: " + o.hint));
    CHECK(!ParamBinder::to_json(m->params()).contains(o.key));
  }
}

TEST_CASE("params: one fine-tuning vocabulary, each method's own defaults", "[params]") {
  const std::set<std::string> vocabulary = {
      "finetune_epochs", "finetune_lr",  "finetune_optimizer",  "finetune_momentum",    "finetune_weight_decay",
      "finetune_batch",  "finetune_max_images", "finetune_mode", "finetune_temperature", "finetune_bn",
      "finetune_augment",
      // method-specific settings under the same prefix
      "finetune_average",        // sharing family: codeword gradient averaged
      "finetune_lr_schedule",    // pq: step | scaled | constant
      "finetune_lr_step_epochs"  // pq: the step schedule's period
  };
  std::map<std::string, nlohmann::json> resolved;
  for (const std::string& name : method_names()) {
    if (name.rfind("test_", 0) == 0) continue;
    auto m = make_method(name);
    const nlohmann::json j = ParamBinder::to_json(m->params());
    resolved[name] = j;
    for (auto it = j.begin(); it != j.end(); ++it) {
      INFO(name << ": " << it.key());
      if (it.key().rfind("finetune", 0) == 0 || it.key().find("retrain") != std::string::npos) {
        const bool prune_retrain = it.key().rfind("prune_retrain_", 0) == 0;  // Choi et al.'s pruning stage
        CHECK((vocabulary.count(it.key()) || prune_retrain));
      }
      CHECK(it.key() != "n_calib");
      CHECK(it.key() != "entropy_coding");
    }
    if (j.contains("coder")) {
      // one coder choice in every method (values checked by applying each)
      for (const char* c : {"fixed", "huffman", "rans"}) {
        auto m2 = make_method(name);
        CHECK_NOTHROW(ParamBinder::apply(m2->params(), {{"coder", c}}, name));
      }
    }
  }
  // Every method that fine-tunes declares finetune_epochs, and the methods keep their defaults.
  for (const char* m : {"kq", "pq", "tq", "kmeans", "hessian_kmeans", "uniform_ecsq", "ecsq"}) {
    INFO(m);
    REQUIRE(resolved.count(m));
    CHECK(resolved[m]["finetune_epochs"] == 0.0);
  }
  for (const char* m : {"kq", "pq", "tq"}) CHECK(resolved[m].contains("coder"));
  CHECK(resolved["tq"]["coder"] == "fixed");
  CHECK(resolved["kq"]["finetune_lr"] == 1e-4);
  CHECK(resolved["kq"]["finetune_mode"] == "labels");
  CHECK(resolved["kq"]["finetune_temperature"] == 4.0);
  CHECK(resolved["kq"]["calib_images"] == 256);
  CHECK(resolved["pq"]["finetune_lr"] == 0.01);
  CHECK(resolved["pq"]["finetune_weight_decay"] == 1e-4);
  CHECK(resolved["pq"]["finetune_momentum"] == 0.9);
  CHECK(resolved["pq"]["finetune_lr_step_epochs"] == 3.0);
  CHECK(resolved["pq"]["calib_images"] == 1024);
  CHECK(resolved["tq"]["finetune_lr"] == 0.001);
  CHECK(resolved["tq"]["finetune_momentum"] == 0.9);
  CHECK(resolved["tq"]["finetune_batch"] == 128);
  CHECK(resolved["tq"]["calib_images"] == 100);
  // The sharing family's fine-tuning keys are exactly those it had (its run IDs are unchanged).
  std::set<std::string> ft;
  for (auto it = resolved["kmeans"].begin(); it != resolved["kmeans"].end(); ++it)
    if (it.key().rfind("finetune_", 0) == 0) ft.insert(it.key());
  CHECK(ft == std::set<std::string>{"finetune_epochs", "finetune_lr", "finetune_optimizer", "finetune_batch",
                                    "finetune_max_images", "finetune_mode", "finetune_temperature", "finetune_bn",
                                    "finetune_augment", "finetune_average"});
  // Declared settings are range-checked under their parameter names.
  auto kq = make_method("kq");
  CHECK_THAT(error_of(kq->params(), {{"finetune_temperature", "0"}}, "method 'kq'"),
             Catch::Contains("finetune_temperature must be > 0"));
  auto tq = make_method("tq");
  CHECK_THAT(error_of(tq->params(), {{"finetune_momentum", "1"}}, "method 'tq'"),
             Catch::Contains("finetune_momentum must be in [0, 1)"));
}
