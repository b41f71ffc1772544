#include "eval/evaluate.h"
#include "common/error.h"
#include "common/log.h"
#include "common/runtime.h"
#include "common/timer.h"
#include "data/loader.h"

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

namespace bb {

void wilson_ci95(int64_t k, int64_t n, double out[2]) {
  if (n == 0) {
    out[0] = out[1] = 0;
    return;
  }
  const double z = 1.959963984540054, p = (double)k / n;
  const double denom = 1 + z * z / n;
  const double centre = (p + z * z / (2.0 * n)) / denom;
  const double half = z * std::sqrt(p * (1 - p) / n + z * z / (4.0 * n * n)) / denom;
  out[0] = 100.0 * std::max(0.0, centre - half);
  out[1] = 100.0 * std::min(1.0, centre + half);
}

double mcnemar_p(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  BB_CHECK(a.size() == b.size(), "paired test needs results on the same images");
  int64_t n01 = 0, n10 = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] && !b[i]) ++n10;
    if (!a[i] && b[i]) ++n01;
  }
  const int64_t n = n01 + n10;
  if (n == 0) return 1.0;
  const int64_t k = std::min(n01, n10);
  // Exact binomial tail, in log space for large n.
  double tail = 0;
  for (int64_t i = 0; i <= k; ++i)
    tail += std::exp(std::lgamma(n + 1.0) - std::lgamma(i + 1.0) - std::lgamma(n - i + 1.0) - n * std::log(2.0));
  return std::min(1.0, 2 * tail);
}

nlohmann::json EvalResult::to_json() const {
  return {{"dataset", dataset},
          {"n", n},
          {"top1", top1},
          {"top5", top5},
          {"top1_ci95", {top1_ci95[0], top1_ci95[1]}},
          {"seconds", seconds},
          {"images_per_s", images_per_s}};
}

void check_model_dataset(const Model& model, const Dataset& ds) {
  BB_CHECK(model.input_spec().family == ds.family(), "model '", model.arch(), "' takes ",
           model.input_spec().family, " inputs but dataset '", ds.name(), "' is ", ds.family());
  BB_CHECK(model.input_spec().num_classes == ds.num_classes(), "model '", model.arch(), "' has ",
           model.input_spec().num_classes, " classes but dataset '", ds.name(), "' has ", ds.num_classes());
}

namespace {
// The environment can turn folding / the blocked layout off (to compare, or to rule them out).
bool env_off(const char* name) {
  const char* e = std::getenv(name);
  return e && std::string(e) == "0";
}
}  // namespace

EvalResult evaluate(Model& model, const Dataset& ds, const EvalOptions& opt) {
  check_model_dataset(model, ds);
  torch::NoGradGuard ng;
  model.eval();
  FoldBnScope fold(model, opt.fold_bn && !env_off("BITBENCH_FOLD_BN"),
                   opt.blocked_layout && !env_off("BITBENCH_BLOCKED_LAYOUT"));
  int64_t n = ds.size();
  if (opt.limit > 0) n = std::min(n, opt.limit);
  std::vector<int64_t> idx(n);
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  LoaderOptions lo;
  lo.batch_size = opt.batch_size > 0 ? opt.batch_size : (model.input_spec().height > 64 ? 25 : 100);
  EvalResult r;
  r.dataset = ds.name();
  r.hit1.resize(n);
  Progress prog("eval " + ds.name(), n);
  // Batches run side by side, one single-threaded forward each (run_side_by_side): the same
  // logits as one multi-threaded forward after the other (a forward's floats do not depend on its
  // thread count; tests [models], [cli]), and faster on small inputs (docs/PERFORMANCE.md). Results are
  // accumulated in batch order.
  const int workers = opt.workers > 0 ? opt.workers : side_by_side_workers();
  std::vector<Batch> pending;
  std::vector<torch::Tensor> logits;
  auto run_pending = [&] {
    logits.assign(pending.size(), torch::Tensor());
    run_side_by_side((int64_t)pending.size(), workers, [&](int64_t t, int) { logits[t] = model.forward(pending[t].images); });
    for (size_t i = 0; i < pending.size(); ++i) {
      const Batch& b = pending[i];
      auto top5 = std::get<1>(logits[i].topk(std::min<int64_t>(5, logits[i].size(1)), 1));
      auto hit = top5.eq(b.labels.unsqueeze(1));
      auto h1 = hit.select(1, 0).to(torch::kUInt8);
      auto h5 = hit.any(1);
      r.correct1 += h1.sum().item<int64_t>();
      r.correct5 += h5.sum().item<int64_t>();
      auto acc = h1.accessor<uint8_t, 1>();
      for (size_t j = 0; j < b.indices.size(); ++j) r.hit1[r.n + j] = acc[j];
      r.n += (int64_t)b.indices.size();
      if (opt.progress) prog.advance((long)b.indices.size());
    }
    pending.clear();
  };
  double t0 = now_seconds();
  for_each_batch(ds, idx, lo, [&](const Batch& b) {
    pending.push_back(b);
    if ((int)pending.size() == workers) run_pending();
  });
  run_pending();
  if (opt.progress) prog.finish();
  r.seconds = now_seconds() - t0;
  r.images_per_s = r.n / std::max(1e-9, r.seconds);
  r.top1 = r.n ? 100.0 * r.correct1 / r.n : 0;
  r.top5 = r.n ? 100.0 * r.correct5 / r.n : 0;
  wilson_ci95(r.correct1, r.n, r.top1_ci95);
  return r;
}

}  // namespace bb
