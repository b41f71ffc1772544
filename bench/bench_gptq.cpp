// GPTQ's speed (issue 24: ResNet-18 shapes at 3 bits in < 60 s on 2 cores with 128 calibration
// images). Random weights and images (the cost does not depend on the values):
//   BM_gptq_resnet18_method   the whole `gptq bits=3` compress() of resnet18 on 128 random
//                             224x224 images: H = X^T X of every layer (every im2col row, float64
//                             accumulation, parallel mode) and the column loop of every layer
//   BM_gptq_loop/blocked/<D>    the column loop alone (factor included) on one 512 x D layer
//                               with a given H, for the ResNet-18 row sizes D = 576 .. 4608
//   BM_gptq_loop/reference/<D>  the unblocked reference loop on the same layer
#include <benchmark/benchmark.h>

#include "data/dataset.h"
#include "methods/method.h"
#include "models/registry.h"
#include "quant/gptq.h"

#include <map>

namespace {

class RandomImages : public bb::Dataset {
 public:
  RandomImages(int64_t n, int64_t hw) : n_(n), hw_(hw) {
    name_ = "bench-random-images";
    family_ = "imagenet";
  }
  int64_t size() const override { return n_; }
  int64_t label(int64_t i) const override { return i % 10; }
  torch::Tensor image(int64_t i, bool, uint64_t) const override {
    auto g = at::detail::createCPUGenerator(100 + i);
    return torch::randn({3, hw_, hw_}, g);
  }
  std::string identity() const override { return name_; }

 private:
  int64_t n_, hw_;
};

void BM_gptq_resnet18_method(benchmark::State& st) {
  torch::manual_seed(1);
  auto model = bb::make_model("resnet18");
  model->eval();
  std::map<std::string, torch::Tensor> fp;
  for (auto& kv : model->named_parameters()) fp[kv.key()] = kv.value().detach().clone();
  auto method = bb::make_method("gptq");
  bb::ParamBinder::apply(method->params(), {{"bits", "3"}, {"calib_images", "128"}}, "bench");
  for (auto _ : st) {
    st.PauseTiming();
    for (auto& kv : model->named_parameters()) kv.value().detach().copy_(fp.at(kv.key()));
    bb::CompressContext ctx;
    ctx.model = model.get();
    ctx.calib = std::make_shared<RandomImages>(128, 224);
    st.ResumeTiming();
    auto recs = method->compress(ctx);
    benchmark::DoNotOptimize(recs.size());
  }
}
BENCHMARK(BM_gptq_resnet18_method)->Unit(benchmark::kSecond)->Iterations(1);

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

}  // namespace
