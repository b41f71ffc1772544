// Experiment driver (hidden: run explicitly with `bitbench_tests "[.tq-sweep]"`): top-1 vs bpw of
// tq on a pretrained CIFAR ResNet, one curve search then one re-target per rate.
//   TQ_MODEL=cifar_resnet20  TQ_TRANSFORM=klt|elt  TQ_RATES="fp,1,2,3,4"  TQ_EVAL="cifar10-lossless-1k"
//   TQ_CACHE=/tmp/tq-cache  TQ_SET="finetune_epochs=0.2,finetune_lr=0.01"  (extra params, optional)
#include <catch2/catch.hpp>

#include "common/runtime.h"
#include "common/timer.h"
#include "data/dataset.h"
#include "eval/evaluate.h"
#include "methods/method.h"
#include "models/registry.h"
#include "models/weights_io.h"
#include "quant/tq_curves.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>

using namespace bb;

namespace {
std::string env(const char* k, const std::string& def) {
  const char* v = std::getenv(k);
  return v && *v ? std::string(v) : def;
}
std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}
}  // namespace

TEST_CASE("tq sweep: top-1 vs bpw", "[.tq-sweep]") {
  const std::string arch = env("TQ_MODEL", "cifar_resnet20");
  const std::string depth = arch.substr(std::string("cifar_resnet").size());
  const std::string weights = data_root() + "/models/cifar10_resnet" + depth + ".pt";
  const std::string transform = env("TQ_TRANSFORM", "klt");
  auto calib = open_dataset("cifar10-jpeg-train");
  std::vector<std::shared_ptr<Dataset>> evals;
  for (auto& n : split(env("TQ_EVAL", "cifar10-lossless-1k"), ',')) evals.push_back(open_dataset(n));
  std::map<std::string, std::string> extra;
  for (auto& kv : split(env("TQ_SET", ""), ',')) {
    auto eq = kv.find('=');
    REQUIRE(eq != std::string::npos);
    extra[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (auto& rate : split(env("TQ_RATES", "1,2,3,4"), ',')) {
    auto model = make_model(arch);
    load_weights(*model, weights);
    model->eval();
    if (rate == "fp") {  // the uncompressed baseline
      std::string line = arch + " fp32";
      for (auto& ds : evals) {
        EvalOptions eo;
        eo.progress = false;
        line += ", " + ds->name() + " top-1 " + std::to_string(evaluate(*model, *ds, eo).top1);
      }
      std::printf("TQSWEEP %s\n", line.c_str());
      continue;
    }
    auto m = make_method("tq");
    std::map<std::string, std::string> set = extra;
    set["transform"] = transform;
    set["target_bpw"] = rate;
    ParamBinder::apply(m->params(), set, "sweep");
    CompressContext ctx;
    ctx.model = model.get();
    ctx.calib = calib;
    ctx.cache_dir = env("TQ_CACHE", "/tmp/bb-tq-cache");
    const double t0 = now_seconds();
    auto recs = m->compress(ctx);
    const double secs = now_seconds() - t0;
    double tbits = 0, sbits = 0, stored = 0;
    for (auto& r : recs) {
      tbits += r.estimate.fixed_index_bits;
      sbits += r.estimate.codebook_bits;
      for (auto& s : r.sections) stored += 8.0 * (double)s.bytes.size();
      // The evaluated weight is what decode gives.
      auto w = m->decode(r);
      model->layers()[model->layer_index(r.layer)].weight().detach().copy_(w);
    }
    const double nw = (double)model->num_weights();
    std::string line = arch + " " + transform + " target " + rate + ": bpw_young " + std::to_string((tbits + sbits) / nw) +
                       " (bases " + std::to_string(sbits / nw) + "), stored sections " + std::to_string(stored / nw) +
                       " bpw, compress " + std::to_string(secs) + " s";
    for (auto& ds : evals) {
      EvalOptions eo;
      eo.progress = false;
      EvalResult r = evaluate(*model, *ds, eo);
      line += ", " + ds->name() + " top-1 " + std::to_string(r.top1);
    }
    std::printf("TQSWEEP %s\n", line.c_str());
    std::fflush(stdout);
  }
}

// Step-search statistics of a logits_grid curves file, finished or a search's checkpoint
// (hidden: TQ_CURVES=<cache>/tq/<key>.curves|.partial bitbench_tests "[.tq-grid-stats]").
TEST_CASE("tq grid stats: step choices of the cheaper searches", "[.tq-grid-stats]") {
  const std::string path = env("TQ_CURVES", "");
  REQUIRE(!path.empty());
  std::string key = path.substr(path.find_last_of('/') + 1);
  key = key.substr(0, key.find('.'));
  TqCurves c;
  REQUIRE(tq_read_curves(path, key, c));
  std::printf("%zu layers: %s\n", c.layers.size(), tq_grid_agreement(c).c_str());
}
