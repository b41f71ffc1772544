// bitbench eval --model NAME --weights FILE --dataset NAME-or-FILE.yaml [--data-root DIR] [--limit N] [--json]
#include "cli/args.h"
#include "common/error.h"
#include "common/runtime.h"
#include "data/dataset.h"
#include "eval/evaluate.h"
#include "models/registry.h"
#include "models/weights_io.h"

#include <cstdio>

namespace bb {
namespace {

int cmd_eval(int argc, char** argv) {
  Args a("eval", {{"--model", true, "BITBENCH_MODEL", false, "network name (e.g. cifar_resnet20)"},
                  {"--weights", true, "BITBENCH_WEIGHTS", false, "weights file (torch.save'd plain dict)"},
                  {"--dataset", true, "BITBENCH_DATASET", false, "dataset name, or the path of a dataset YAML file (datasets/README.md)"},
                  {"--data-root", true, "", false, "data root (default $BITBENCH_DATA_ROOT or ../shared/data; for imagenet-val: the val folder)"},
                  {"--limit", true, "", false, "evaluate the first N images only"},
                  {"--batch-size", true, "", false, "batch size"},
                  {"--json", false, "", false, "print one JSON object on stdout"},
                  {"--help", false, "", false, "this help"}});
  a.parse(argc, argv);
  if (a.has("--help")) {
    std::fputs(a.usage().c_str(), stdout);
    return 0;
  }
  auto model = make_model(a.require("--model"));
  load_weights(*model, a.require("--weights"));
  auto ds = open_dataset(a.require("--dataset"), a.get("--data-root"));
  EvalOptions opt;
  opt.limit = a.get_int("--limit", 0);
  opt.batch_size = a.get_int("--batch-size", 0);
  BB_CHECK(opt.limit >= 0, "--limit must be >= 0");
  EvalResult r = evaluate(*model, *ds, opt);
  if (a.has("--json")) {
    nlohmann::json j = r.to_json();
    j["context"] = context_json();
    j["model"] = model->arch();
    j["weights"] = a.get("--weights");
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s on %s: top-1 %.2f%% (95%% CI %.2f-%.2f), top-5 %.2f%%, n=%lld, %.1f images/s\n",
                model->arch().c_str(), ds->name().c_str(), r.top1, r.top1_ci95[0], r.top1_ci95[1], r.top5,
                (long long)r.n, r.images_per_s);
  }
  return 0;
}

const bool registered = register_command("eval", cmd_eval, "evaluate top-1/top-5 of a model on a dataset");

}  // namespace
}  // namespace bb
