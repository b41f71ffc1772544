// bitbench decompress F.bbz --out W.pt      rebuild a plain-dict weights file
// bitbench inspect F.bbz [--json]           per-layer breakdown of a .bbz
// bitbench methods                          registered methods and their parameters
// bitbench tq-curves FILE                   step-search statistics of a TQ curves file
#include "cli/args.h"
#include "coding/accounting.h"
#include "common/error.h"
#include "models/registry.h"
#include "quant/tq_curves.h"
#include "runner/pipeline.h"

#include <cstdio>

namespace bb {
namespace {

int cmd_decompress(int argc, char** argv) {
  Args a("decompress", {{"--out", true, "", false, "output weights file (.pt plain dict)"},
                        {"--help", false, "", false, "this help"}});
  a.parse(argc, argv);
  if (a.has("--help")) {
    std::printf("usage: bitbench decompress F.bbz --out W.pt\n%s", a.usage().c_str());
    return 0;
  }
  BB_CHECK(a.positional().size() == 1, "decompress takes exactly one .bbz file");
  BbzFile f = read_bbz(a.positional()[0]);
  StateDict sd = decode_bbz(f, a.positional()[0]);
  auto model = make_model(f.model);
  load_state_dict(*model, sd, "compressed file '" + a.positional()[0] + "'");  // strict check
  write_state_dict(model->state(), a.require("--out"));
  std::fprintf(stderr, "[bitbench] wrote %s (%s, %zu tensors)\n", a.get("--out").c_str(), f.model.c_str(),
               model->state().size());
  return 0;
}

int cmd_inspect(int argc, char** argv) {
  Args a("inspect", {{"--json", false, "", false, "one JSON object on stdout"},
                     {"--help", false, "", false, "this help"}});
  a.parse(argc, argv);
  if (a.has("--help")) {
    std::printf("usage: bitbench inspect F.bbz [--json]\n%s", a.usage().c_str());
    return 0;
  }
  BB_CHECK(a.positional().size() == 1, "inspect takes exactly one .bbz file");
  BbzSizes sizes;
  BbzFile f = read_bbz(a.positional()[0], &sizes);
  auto model = make_model(f.model);
  Accounting acc = account(*model, f, sizes);
  if (a.has("--json")) {
    nlohmann::json j = acc.to_json();
    j["model"] = f.model;
    j["provenance"] = f.provenance;
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("%s  model %s  method %s  %lld bytes\n", a.positional()[0].c_str(), f.model.c_str(),
              f.provenance.value("method", "?").c_str(), (long long)sizes.total);
  std::printf("%-28s %-7s %10s %-12s %10s %10s %10s %8s %8s\n", "layer", "kind", "weights", "method", "indices",
              "codebook", "side/raw", "bits/w", "est b/w");
  for (auto& l : acc.breakdown["layers"]) {
    const auto& b = l["bytes"];
    double est = -1;
    if (l.contains("estimate_bits")) {
      const auto& e = l["estimate_bits"];
      est = (e["index"].get<double>() + e["codebook"].get<double>() + e["side"].get<double>()) / l["numel"].get<double>();
    }
    std::printf("%-28s %-7s %10lld %-12s %10lld %10lld %10lld %8.3f %8.3f\n", l["layer"].get<std::string>().c_str(),
                l["kind"].get<std::string>().c_str(), (long long)l["numel"].get<int64_t>(),
                l["method"].get<std::string>().c_str(), (long long)b.value("indices", 0LL),
                (long long)b.value("codebook", 0LL), (long long)(b.value("side", 0LL) + b.value("stored", 0LL)),
                l["bits_per_weight"].get<double>(), est);
  }
  std::printf("bpw_core %.4f (estimate %.4f)  bpw_total %.4f  bpw_choi %.4f  size_mb_stock %.4f  bpw_young %.4f  "
              "bpw_yu_conv %.4f\n",
              acc.bpw_core, acc.est_bpw_core, acc.bpw_total, acc.bpw_choi, acc.size_mb_stock, acc.bpw_young,
              acc.bpw_yu_conv);
  std::printf("components (bytes): %s\n", acc.breakdown["components_bytes"].dump().c_str());
  return 0;
}

int cmd_methods(int argc, char** argv) {
  for (auto& n : method_names()) {
    auto m = make_method(n);
    std::printf("%s%s\n%s", n.c_str(), m->needs_calibration() ? " (uses calibration data)" : "",
                ParamBinder::describe(m->params()).c_str());
  }
  return 0;
}

// Step-search statistics of a TQ curves file (a finished logits_grid search or a search's
// checkpoint): how often the cheaper searches would pick the grid's step (docs/methods/tq.md).
int cmd_tq_curves(int argc, char** argv) {
  Args a("tq-curves", {{"--help", false, "", false, "this help"}});
  a.parse(argc, argv);
  if (a.has("--help")) {
    std::printf("usage: bitbench tq-curves <cache>/tq/<key>.curves|.partial\n%s", a.usage().c_str());
    return 0;
  }
  BB_CHECK(a.positional().size() == 1, "tq-curves takes exactly one curves file");
  const std::string path = a.positional()[0];
  std::string key = path.substr(path.find_last_of('/') + 1);
  key = key.substr(0, key.find('.'));
  TqCurves c;
  BB_CHECK(tq_read_curves(path, key, c), "'", path, "' is not a readable TQ curves file for key ", key);
  std::printf("%zu layers: %s\n", c.layers.size(), tq_grid_agreement(c).c_str());
  return 0;
}

const bool r1 = register_command("decompress", cmd_decompress, "rebuild a weights file from a .bbz");
const bool r2 = register_command("inspect", cmd_inspect, "per-layer bit breakdown of a .bbz");
const bool r3 = register_command("methods", cmd_methods, "list compression methods and their parameters");
const bool r4 = register_command("tq-curves", cmd_tq_curves, "step-search statistics of a TQ curves file");

}  // namespace
}  // namespace bb
