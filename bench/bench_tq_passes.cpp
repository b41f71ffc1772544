// TQ's distortion curves cost one network pass per (block, bit depth) point. This times the passes
// for one perturbation of every layer of a network on 100 calibration-sized inputs (random
// weights and inputs; the cost does not depend on the values), two ways in the same run:
//   reference: the plain network from the input, upstream convs returning cached outputs;
//   fast:      what the curve search does, BN folded into the convs (oneDNN blocked layout), the
//              stages upstream of the perturbed layer skipped.
// Counter passes_per_s; the ratio fast/reference is the speed-up of the curve search.
//
// BM_tq_curve_search/<arch>_<reuse|every_point> runs a whole curve search (row-KLT, 16 blocks,
// logits_descent, 10 random images in one batch, random weights) with and without the reuse of a
// repeated quantized block's D (TqCurveOptions::reuse_repeated; the curves are the same to the
// last bit). Counters: passes run, D values, and the share of them looked up.
#include <benchmark/benchmark.h>

#include "models/registry.h"
#include "quant/tq_curves.h"
#include "random_images.h"

namespace {

void BM_tq_passes(benchmark::State& st, const std::string& arch, int64_t n_images, int64_t hw, bool fast) {
  torch::manual_seed(3);
  auto model = bb::make_model(arch);
  auto images = torch::randn({n_images, model->input_spec().channels, hw, hw});
  std::vector<std::pair<int, torch::Tensor>> perts;
  for (int l = 0; l < (int)model->layers().size(); ++l) {
    auto w = model->layers()[l].weight().detach();
    perts.emplace_back(l, (torch::randn_like(w) * 1e-3).reshape({w.size(0), -1}));
  }
  double checksum = 0;
  for (auto _ : st)
    for (double d : bb::tq_measure_distortions(*model, images, n_images, perts, fast)) checksum += d;
  benchmark::DoNotOptimize(checksum);
  st.counters["passes_per_s"] =
      benchmark::Counter((double)st.iterations() * (double)perts.size(), benchmark::Counter::kIsRate);
}

BENCHMARK_CAPTURE(BM_tq_passes, cifar_resnet20_reference, std::string("cifar_resnet20"), 100, 32, false)
    ->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_tq_passes, cifar_resnet20_fast, std::string("cifar_resnet20"), 100, 32, true)
    ->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_tq_passes, cifar_resnet56_reference, std::string("cifar_resnet56"), 100, 32, false)
    ->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_tq_passes, cifar_resnet56_fast, std::string("cifar_resnet56"), 100, 32, true)
    ->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_tq_passes, resnet18_reference, std::string("resnet18"), 25, 224, false)
    ->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK_CAPTURE(BM_tq_passes, resnet18_fast, std::string("resnet18"), 25, 224, true)
    ->Unit(benchmark::kMillisecond)->Iterations(1);

void BM_tq_curve_search(benchmark::State& st, const std::string& arch, bool reuse) {
  torch::manual_seed(3);
  auto model = bb::make_model(arch);
  model->eval();
  bbbench::RandomImages calib(10, 32, "cifar10");
  bb::TqCurveOptions o;
  o.side = bb::TransformSide::row;
  o.calib_images = 10;
  o.batch_size = 10;
  o.reuse_repeated = reuse;
  bb::TqCurves c;
  for (auto _ : st) c = bb::tq_compute_curves(*model, calib, o, "");
  st.counters["passes"] = (double)c.passes;
  st.counters["d_values"] = (double)c.measurements;
  st.counters["looked_up"] = 1.0 - (double)c.passes / (double)c.measurements;
}
BENCHMARK_CAPTURE(BM_tq_curve_search, cifar_resnet20_every_point, std::string("cifar_resnet20"), false)
    ->Unit(benchmark::kSecond)->Iterations(1);
BENCHMARK_CAPTURE(BM_tq_curve_search, cifar_resnet20_reuse, std::string("cifar_resnet20"), true)
    ->Unit(benchmark::kSecond)->Iterations(1);

}  // namespace
