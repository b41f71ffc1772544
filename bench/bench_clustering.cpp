// Clustering kernels on the shapes the methods see, against faiss on the same data, the same k
// and the same number of Lloyd iterations (faiss::Clustering with max_points_per_centroid raised
// so it trains on every point, as bitbench does). Counters: `objective` = sum of squared
// distances of every point to its nearest final centroid, computed by the same code for both
// sides (so the two are comparable), and `n`. scripts/bench.sh prints the time and objective
// ratios (bitbench / faiss) from the JSON.
//
//   1-D, 300k and 11M weights, k = 16 (scalar weight sharing: k-means / Hessian k-means)
//   9-D, 262,144 kernels, k = 256 (KQ on ResNet-18-sized 3x3 layers)
//   the PQ E-step: 65,536 9-D sub-vectors against 256 centroids in the activation metric
//   ||X (w - c)||^2 (bitbench: pq_assign; faiss: the same Gram factor, then IndexFlatL2 search)
#include <benchmark/benchmark.h>

#include "methods/kq.h"
#include "methods/pq.h"
#include "quant/kmeans.h"
#include "quant/kmeans1d.h"

#ifdef BITBENCH_HAVE_FAISS
#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>
#endif

#include <random>

namespace {

constexpr int kIters = 25;

// Weights: Laplacian-like (heavy-tailed as trained conv weights are), deterministic.
torch::Tensor weights_1d(int64_t n) {
  torch::manual_seed(7);
  auto u = torch::rand({n, 1}) - 0.5;
  return (-u.sign() * (1 - 2 * u.abs()).clamp_min(1e-7).log() * 0.02).to(torch::kFloat32).contiguous();
}

// Kernels: 9-D vectors with correlated coordinates (smooth 3x3 kernels) plus noise.
torch::Tensor kernels_9d(int64_t n) {
  torch::manual_seed(9);
  auto base = torch::randn({n, 1}) * 0.05;
  return (base.expand({n, 9}) + torch::randn({n, 9}) * 0.02).to(torch::kFloat32).contiguous();
}

double sse(const torch::Tensor& x, const torch::Tensor& c) {
  auto [a, d] = bb::assign_nearest(x, c);
  return d.to(torch::kFloat64).sum().item<double>();
}

const torch::Tensor& data(int which) {
  static const torch::Tensor d300k = weights_1d(300000), d11m = weights_1d(11000000), k262 = kernels_9d(262144);
  return which == 0 ? d300k : which == 1 ? d11m : k262;
}

int64_t k_of(int which) { return which == 2 ? 256 : 16; }

// bitbench's vector k-means (quant/kmeans.h: KQ, PQ), any d.
void BM_kmeans_bitbench(benchmark::State& st) {
  const auto& x = data((int)st.range(0));
  bb::ClusteringParams p;
  p.niter = kIters;
  p.seed = 1;
  torch::Tensor c;
  for (auto _ : st) c = bb::kmeans(x, k_of((int)st.range(0)), p).centroids;
  st.counters["objective"] = sse(x, c);
  st.counters["n"] = (double)x.size(0);
}
BENCHMARK(BM_kmeans_bitbench)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->Iterations(1)->Repetitions(3)->ReportAggregatesOnly(false);

// bitbench's 1-D Lloyd (quant/kmeans1d.h: the scalar weight-sharing methods): sorted points and
// prefix sums make an iteration O(k log n).
void BM_kmeans1d_bitbench(benchmark::State& st) {
  const auto& x = data((int)st.range(0));
  bb::KMeans1DParams p;
  p.k = 16;
  p.max_iter = kIters;
  p.tol = 0;
  p.seed = 1;
  torch::Tensor c;
  for (auto _ : st) {
    auto q = bb::kmeans1d_lloyd(x.data_ptr<float>(), nullptr, x.size(0), p);
    std::vector<float> cf(q.centers.begin(), q.centers.end());
    c = torch::tensor(cf).reshape({-1, 1});
  }
  st.counters["objective"] = sse(x, c);
  st.counters["n"] = (double)x.size(0);
}
BENCHMARK(BM_kmeans1d_bitbench)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->Iterations(1)->Repetitions(3);

// PQ E-step in the activation metric.
struct PqProblem {
  torch::Tensor sub, centroids, patches;
  PqProblem() {
    torch::manual_seed(11);
    sub = kernels_9d(65536);
    centroids = sub.index_select(0, torch::randperm(65536).slice(0, 0, 256)).contiguous();
    patches = (torch::randn({8192, 9}) + torch::randn({8192, 1})).contiguous();  // correlated inputs
  }
};
const PqProblem& pq_problem() {
  static const PqProblem p;
  return p;
}

void BM_pq_estep_bitbench(benchmark::State& st) {
  const auto& p = pq_problem();
  torch::Tensor a;
  for (auto _ : st) a = bb::pq_assign(p.sub, p.centroids, p.patches, 1e-4);
  st.counters["n"] = (double)p.sub.size(0);
  st.counters["checksum"] = (double)a.sum().item<int64_t>();
}
BENCHMARK(BM_pq_estep_bitbench)->Unit(benchmark::kMillisecond)->Iterations(10)->Repetitions(5);

// KQ's kernel quantizer on the largest ResNet-18 layer (512x512 3x3: 262,144 kernels), k = 512,
// its default iterations (codebook training, assignment, 6-bit codebook grid).
void BM_kq_quantize_vectors_bitbench(benchmark::State& st) {
  bb::kq::QuantOptions o;
  o.k = 512;
  const torch::Tensor& x = data(2);
  double n = 0;
  for (auto _ : st) n = (double)bb::kq::quantize_vectors(x, o).codebook().size(0);
  st.counters["n"] = (double)x.size(0);
  st.counters["k"] = n;
}
BENCHMARK(BM_kq_quantize_vectors_bitbench)->Unit(benchmark::kMillisecond)->Iterations(1)->Repetitions(1);

// One layer's whole PQ EM (pq_cluster at its defaults) at CIFAR layer3 (4,096 sub-vectors) and
// ResNet-18 layer4 (262,144) sizes, k = 256, 2^20 activation patches.
void BM_pq_cluster_bitbench(benchmark::State& st) {
  static const torch::Tensor patches = [] {
    torch::manual_seed(1);
    return (torch::randn({1 << 20, 9}) + torch::randn({1 << 20, 1})).contiguous();
  }();
  torch::manual_seed(2);
  const torch::Tensor sub = torch::randn({st.range(0), 9});
  bb::PQParams p;
  double err = 0;
  for (auto _ : st) err = bb::pq_cluster(sub, patches, 256, p, 1).objective;
  st.counters["n"] = (double)sub.size(0);
  st.counters["em_iters"] = p.em_iters;
  st.counters["objective"] = err;
}
BENCHMARK(BM_pq_cluster_bitbench)->Arg(4096)->Arg(262144)->Unit(benchmark::kMillisecond)->Iterations(1)->Repetitions(1);

#ifdef BITBENCH_HAVE_FAISS
void BM_kmeans_faiss(benchmark::State& st) {
  const auto& x = data((int)st.range(0));
  const int64_t n = x.size(0), d = x.size(1), k = k_of((int)st.range(0));
  faiss::ClusteringParameters cp;
  cp.niter = kIters;
  cp.seed = 1;
  cp.max_points_per_centroid = (int)(n / k + 1);  // train on every point, as bitbench does
  torch::Tensor c;
  for (auto _ : st) {
    faiss::Clustering clus((int)d, (int)k, cp);
    faiss::IndexFlatL2 index(d);
    clus.train(n, x.data_ptr<float>(), index);
    c = torch::from_blob(clus.centroids.data(), {k, d}, torch::kFloat32).clone();
  }
  st.counters["objective"] = sse(x, c);
  st.counters["n"] = (double)n;
}
BENCHMARK(BM_kmeans_faiss)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->Iterations(1)->Repetitions(3);

void BM_pq_estep_faiss(benchmark::State& st) {
  const auto& p = pq_problem();
  torch::Tensor a;
  for (auto _ : st) {
    auto T = bb::pq_gram_factor(p.patches, 1e-4);  // the same metric as bitbench's E-step
    auto xs = p.sub.mm(T).contiguous(), cs = p.centroids.mm(T).contiguous();
    faiss::IndexFlatL2 index(cs.size(1));
    index.add(cs.size(0), cs.data_ptr<float>());
    std::vector<float> dist(xs.size(0));
    std::vector<faiss::Index::idx_t> lab(xs.size(0));
    index.search(xs.size(0), xs.data_ptr<float>(), 1, dist.data(), lab.data());
    a = torch::from_blob(lab.data(), {(int64_t)lab.size()}, torch::kInt64).clone();
  }
  st.counters["n"] = (double)p.sub.size(0);
  st.counters["checksum"] = (double)a.sum().item<int64_t>();
}
BENCHMARK(BM_pq_estep_faiss)->Unit(benchmark::kMillisecond)->Iterations(10)->Repetitions(5);
#endif

}  // namespace
