// GPTQ's speed (issue 24: ResNet-18 shapes at 3 bits in < 60 s on 2 cores with 128 calibration
// images). Random weights and images (the cost does not depend on the values):
//   BM_gptq_resnet18_method/<mode>  the whole `gptq bits=3` compress() of resnet18 on 128 random
//                             224x224 images: H = X^T X of every layer (every im2col row, float64
//                             accumulation) and the column loop of every layer; mode parallel:
//                             sequential=false (all H from the FP network in one pass); default:
//                             the defaults (sequential with fp_target: one partial forward per
//                             layer, H and C = X^T X_fp)
//   BM_gptq_loop/blocked/<D>    the column loop alone (factor included) on one 512 x D layer
//                               with a given H, for the ResNet-18 row sizes D = 576 .. 4608
//   BM_gptq_loop/reference/<D>  the unblocked reference loop on the same layer
//   BM_gptq_factor/<D>          gptq_factor alone (the upper Cholesky factor of H^-1), D x D
//   BM_gptq_gram/<kind>/<D>/<b> one chunk's float32 Gram P^T P (P: 16M / D x D, the chunk size of
//                               GptqGram): kind dnnl = gptq_gram_f32 with column blocks of b,
//                               blas = gram_upper (OpenBLAS)
#include <benchmark/benchmark.h>

#include "random_images.h"
#include "methods/method.h"
#include "models/registry.h"
#include "quant/activations.h"
#include "quant/gptq.h"

#include <map>

namespace {

void BM_gptq_resnet18_method(benchmark::State& st, bool parallel) {
  torch::manual_seed(1);
  auto model = bb::make_model("resnet18");
  model->eval();
  std::map<std::string, torch::Tensor> fp;
  for (auto& kv : model->named_parameters()) fp[kv.key()] = kv.value().detach().clone();
  auto method = bb::make_method("gptq");
  std::map<std::string, std::string> params = {{"bits", "3"}, {"calib_images", "128"}};
  if (parallel) params["sequential"] = "false";
  bb::ParamBinder::apply(method->params(), params, "bench");
  for (auto _ : st) {
    st.PauseTiming();
    for (auto& kv : model->named_parameters()) kv.value().detach().copy_(fp.at(kv.key()));
    bb::CompressContext ctx;
    ctx.model = model.get();
    ctx.calib = std::make_shared<bbbench::RandomImages>(128, 224, "imagenet");
    st.ResumeTiming();
    auto recs = method->compress(ctx);
    benchmark::DoNotOptimize(recs.size());
  }
}
BENCHMARK_CAPTURE(BM_gptq_resnet18_method, parallel, true)->Unit(benchmark::kSecond)->Iterations(1);
BENCHMARK_CAPTURE(BM_gptq_resnet18_method, default, false)->Unit(benchmark::kSecond)->Iterations(1);

void layer_and_hessian(int64_t D, torch::Tensor& W, torch::Tensor& H) {
  torch::manual_seed(2);
  W = torch::randn({512, D}, torch::kFloat64) * 0.02;
  auto X = torch::randn({2 * D, D}, torch::kFloat64);
  H = torch::mm(X.t(), X);
}

// ref: the unblocked reference loop instead of the blocked one.
void BM_gptq_loop(benchmark::State& st, bool ref) {
  torch::Tensor W, H;
  layer_and_hessian(st.range(0), W, H);
  const bb::GptqGrid g = bb::gptq_minmax_grid(W, 3, true);
  bb::GptqOptions o;
  o.act_order = true;
  for (auto _ : st)
    benchmark::DoNotOptimize((ref ? bb::gptq_quantize_ref(W, H, g, o) : bb::gptq_quantize(W, H, g, o)).codes.data_ptr());
}
BENCHMARK_CAPTURE(BM_gptq_loop, blocked, false)->Arg(576)->Arg(1152)->Arg(2304)->Arg(4608)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK_CAPTURE(BM_gptq_loop, reference, true)->Arg(576)->Arg(2304)->Unit(benchmark::kMillisecond)->Iterations(1);

void BM_gptq_factor(benchmark::State& st) {
  torch::Tensor W, H;
  layer_and_hessian(st.range(0), W, H);
  bb::GptqOptions o;
  o.act_order = true;
  for (auto _ : st) benchmark::DoNotOptimize(bb::gptq_factor(H, o).U.data_ptr());
  st.counters["gflop"] = 2.0 / 3.0 * std::pow((double)st.range(0), 3) * 1e-9;
}
BENCHMARK(BM_gptq_factor)->Arg(1152)->Arg(2304)->Arg(4608)->Unit(benchmark::kMillisecond)->Iterations(1);

void BM_gptq_gram(benchmark::State& st, bool dnnl) {
  const int64_t D = st.range(0), n = (16 << 20) / D;
  torch::manual_seed(3);
  auto P = torch::randn({n, D});
  for (auto _ : st) benchmark::DoNotOptimize((dnnl ? bb::gptq_gram_f32(P, st.range(1)) : bb::gram_upper(P)).data_ptr());
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * (double)n * D * D * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK_CAPTURE(BM_gptq_gram, dnnl, true)->ArgsProduct({{576, 1152, 4608}, {384, 768}})->Unit(benchmark::kMillisecond)->Iterations(2)->UseRealTime();
BENCHMARK_CAPTURE(BM_gptq_gram, blas, false)->Args({576, 0})->Args({1152, 0})->Args({4608, 0})->Unit(benchmark::kMillisecond)->Iterations(2)->UseRealTime();

}  // namespace
