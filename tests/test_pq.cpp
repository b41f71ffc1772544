#include <catch2/catch.hpp>

#include "common/error.h"
#include "common/timer.h"
#include "methods/pq.h"
#include "models/registry.h"
#include "quant/finetune_shared.h"
#include "quant/kmeans.h"

#include <cmath>
#include <map>
#include <set>

using namespace bb;

namespace {

// sum_rows ||X (w - c)||^2 in double, the objective PQ minimises.
double act_error(const torch::Tensor& X, const torch::Tensor& w, const torch::Tensor& c) {
  return X.to(torch::kFloat64).mm((w - c).to(torch::kFloat64).reshape({-1, 1})).pow(2).sum().item<double>();
}

// Anisotropic patches with correlated coordinates, like real activations.
torch::Tensor make_patches(int64_t n, int64_t d, uint64_t seed) {
  torch::manual_seed(seed);
  auto A = torch::randn({d, d}) + 2.0 * torch::eye(d);
  auto scale = torch::logspace(0, 2, d);  // two orders of magnitude between directions
  return (torch::randn({n, d}) * scale).mm(A);
}

double round2(double x) { return std::round(x * 100.0) / 100.0; }

// CIFAR-shaped test images: seeded Gaussian noise, or all zeros (then every conv of a fresh
// network sees zero input: the KL gradient of any conv weight is exactly zero).
class TestImages : public Dataset {
 public:
  TestImages(int64_t n, bool zero) : n_(n), zero_(zero) {
    name_ = "pq-test-images";
    family_ = "cifar10";
  }
  int64_t size() const override { return n_; }
  int64_t label(int64_t i) const override { return i % 10; }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    if (zero_) return torch::zeros({3, 32, 32});
    auto g = at::detail::createCPUGenerator(500 + i + (augment ? seed * 7919 : 0));
    return torch::randn({3, 32, 32}, g);
  }
  std::string identity() const override { return name_ + ":" + std::to_string(n_) + (zero_ ? ":zero" : ""); }

 private:
  int64_t n_;
  bool zero_;
};

std::shared_ptr<Model> copy_model(const Model& m) {
  torch::NoGradGuard ng;
  auto c = make_model(m.arch());
  auto src = m.state(), dst = c->state();
  for (auto& kv : dst) kv.second.copy_(src.at(kv.first));
  c->eval();
  return c;
}

// batchmean KL(softmax(teacher) || softmax(student)) on the first n images, no augmentation.
double network_kl(Model& student, Model& teacher, const Dataset& ds, int64_t n) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> xs;
  for (int64_t i = 0; i < n; ++i) xs.push_back(ds.image(i));
  auto x = torch::stack(xs);
  student.eval();
  teacher.eval();
  auto t = torch::softmax(teacher.forward(x), 1);
  auto ls = torch::log_softmax(student.forward(x), 1);
  return (t * (t.log() - ls)).sum().item<double>() / (double)n;
}

}  // namespace

TEST_CASE("pq E-step equals brute-force argmin of ||X(w - c)||^2", "[pq]") {
  const int64_t d = 9, n = 400, k = 32;
  auto X = make_patches(500, d, 11);
  torch::manual_seed(12);
  auto w = torch::randn({n, d});
  auto c = torch::randn({k, d});
  auto a = pq_assign(w, c, X, /*ridge=*/0.0);
  REQUIRE(a.size(0) == n);
  int64_t exact = 0;
  for (int64_t i = 0; i < n; ++i) {
    double best = 1e300;
    int64_t bj = -1;
    for (int64_t j = 0; j < k; ++j) {
      double e = act_error(X, w[i], c[j]);
      if (e < best) best = e, bj = j;
    }
    const int64_t got = a[i].item<int64_t>();
    exact += got == bj;
    // A different choice is only acceptable as a float32 near-tie.
    REQUIRE(act_error(X, w[i], c[got]) <= best * (1 + 1e-5) + 1e-9);
  }
  REQUIRE(exact >= n - 2);
  // The metric matters: plain Euclidean assignment disagrees on this anisotropic X.
  auto plain = assign_nearest(w, c).first;
  REQUIRE(plain.ne(a).sum().item<int64_t>() > n / 10);
}

TEST_CASE("pq with X = I reduces to plain k-means", "[pq]") {
  torch::manual_seed(3);
  auto sub = torch::randn({2000, 9});
  PQParams p;
  p.em_iters = 15;
  p.gram_ridge = 0;
  p.patches_per_iter = 0;
  ClusteringParams cp;
  cp.niter = p.em_iters;
  cp.seed = 77;
  cp.max_splits_per_iter = p.max_splits;
  auto ref = kmeans(sub, 64, cp);
  for (double s : {1.0, 3.0}) {
    auto r = pq_cluster(sub, torch::eye(9) * s, 64, p, 77);
    REQUIRE(r.centroids.equal(ref.centroids));
    REQUIRE(r.assign.equal(ref.assign));
  }
}

TEST_CASE("pq clustering beats plain k-means on the activation-weighted objective", "[pq]") {
  const int64_t d = 4, k = 16;
  auto X = make_patches(4000, d, 5);
  torch::manual_seed(6);
  auto sub = torch::randn({1024, d});
  PQParams p;
  p.em_iters = 30;
  p.patches_per_iter = 1024;  // resampled every iteration
  auto r = pq_cluster(sub, X, k, p, 9);
  ClusteringParams cp;
  cp.niter = 30;
  cp.seed = 9;
  auto plain = kmeans(sub, k, cp);
  auto err = [&](const ClusteringResult& c) {
    auto q = c.centroids.index_select(0, c.assign);
    return X.to(torch::kFloat64).mm((sub - q).to(torch::kFloat64).t()).pow(2).sum().item<double>();
  };
  const double e_pq = err(r), e_plain = err(plain);
  INFO("pq " << e_pq << " plain k-means " << e_plain);
  REQUIRE(e_pq < 0.8 * e_plain);
  // Deterministic in the seed, resampling included.
  auto r2 = pq_cluster(sub, X, k, p, 9);
  REQUIRE(r2.centroids.equal(r.centroids));
  REQUIRE(r2.assign.equal(r.assign));
}

TEST_CASE("pq empty-cluster repair terminates on degenerate inputs", "[pq]") {
  PQParams p;
  p.em_iters = 20;
  auto X = make_patches(300, 9, 8);
  SECTION("all-equal weights") {
    auto sub = torch::full({500, 9}, 0.25f);
    auto r = pq_cluster(sub, X, 256, p, 1);
    REQUIRE(r.centroids.size(0) == 256);
    REQUIRE(r.assign.max().item<int64_t>() < 256);
    auto q = r.centroids.index_select(0, r.assign);
    REQUIRE((q - sub).abs().max().item<float>() < 1e-3f);
  }
  SECTION("fewer sub-vectors than k") {
    torch::manual_seed(2);
    auto sub = torch::randn({7, 9});
    auto r = pq_cluster(sub, X, 256, p, 1);
    auto q = r.centroids.index_select(0, r.assign);
    REQUIRE((q - sub).abs().max().item<float>() < 1e-3f);
  }
  SECTION("all-zero activations fall back to plain k-means") {
    torch::manual_seed(4);
    auto sub = torch::randn({300, 9});
    auto r = pq_cluster(sub, torch::zeros({100, 9}), 8, p, 1);
    REQUIRE(r.assign.max().item<int64_t>() < 8);
    REQUIRE(std::isfinite(r.objective));
  }
}

TEST_CASE("pq gram factor reproduces X^T X", "[pq]") {
  auto X = make_patches(200, 6, 21);
  auto T = pq_gram_factor(X, 0.0).to(torch::kFloat64);
  auto G = X.to(torch::kFloat64).t().mm(X.to(torch::kFloat64));
  G = G / (G.trace() / 6);
  REQUIRE((T.mm(T.t()) - G).abs().max().item<double>() < 1e-4);
  // Rank-deficient X without ridge: the eigen fallback still factors G.
  auto Xs = torch::cat({X.slice(1, 0, 3), torch::zeros({200, 3})}, 1);
  auto Ts = pq_gram_factor(Xs, 0.0).to(torch::kFloat64);
  auto Gs = Xs.to(torch::kFloat64).t().mm(Xs.to(torch::kFloat64));
  Gs = Gs / (Gs.trace() / 6);
  REQUIRE((Ts.mm(Ts.t()) - Gs).abs().max().item<double>() < 1e-4);
}

TEST_CASE("pq layer plans: block sizes, k cap, first conv", "[pq]") {
  auto m = make_model("cifar_resnet20");
  PQParams p;
  p.validate();
  {  // Fine-tuning settings are checked (its effect: tests/test_finetune_methods.cpp).
    PQParams f = p;
    f.layer_finetune_iters = -1;
    REQUIRE_THROWS_AS(f.validate(), Error);
    f = p;
    f.finetune.epochs = -1;
    REQUIRE_THROWS_AS(f.validate(), Error);
    f = p;
    f.k_cap = "below";
    REQUIRE_THROWS_AS(f.validate(), Error);
    f = p;
    f.layer_weight_decay = -1;
    REQUIRE_THROWS_AS(f.validate(), Error);
  }
  const int conv1 = m->layer_index("conv1"), l1 = m->layer_index("layer1.0.conv1"),
            l2 = m->layer_index("layer2.0.conv1"), l2b = m->layer_index("layer2.1.conv1"),
            l3 = m->layer_index("layer3.2.conv2"), fc = m->layer_index("linear");
  REQUIRE(!pq_plan_layer(*m, conv1, p).quantize);
  // The default (official) cap: the largest power of two strictly below n_sub / 4.
  auto a = pq_plan_layer(*m, l1, p);  // 16x16x3x3: 256 sub-vectors, 256 / 4 = 64 -> 32
  REQUIRE(a.quantize);
  REQUIRE(a.d == 9);
  REQUIRE(a.n_sub == 256);
  REQUIRE(a.k == 32);
  REQUIRE(pq_plan_layer(*m, l2, p).k == 64);    // 32x16x3x3: 512 -> 128 -> 64
  REQUIRE(pq_plan_layer(*m, l2b, p).k == 128);  // 32x32x3x3: 1024 -> 256 -> 128
  REQUIRE(pq_plan_layer(*m, l3, p).k == 256);   // 64x64x3x3: 4096 -> 1024 -> 512, k = 256
  auto f = pq_plan_layer(*m, fc, p);             // 10x64: 160 sub-vectors of 4 -> 40 -> 32
  REQUIRE(f.d == 4);
  REQUIRE(f.k == 32);
  // The previous rule (at most n_sub / 4) doubles k where n_sub / 4 is a power of two.
  PQParams o = p;
  o.k_cap = "at_most";
  REQUIRE(pq_plan_layer(*m, l1, o).k == 64);
  REQUIRE(pq_plan_layer(*m, l2, o).k == 128);
  REQUIRE(pq_plan_layer(*m, l2b, o).k == 256);
  REQUIRE(pq_plan_layer(*m, fc, o).k == 32);
  o.k_pow2 = false;
  REQUIRE(pq_plan_layer(*m, fc, o).k == 40);
  p.regime = "large";
  REQUIRE(pq_plan_layer(*m, l3, p).d == 18);
  REQUIRE(pq_plan_layer(*m, l3, p).k == 256);  // 2048 sub-vectors -> 512 -> 256
  p.first_conv = "quantize";
  REQUIRE_THROWS_AS(pq_plan_layer(*m, conv1, p), bb::Error);  // 27 values per row, d = 18
  p.regime = "small";
  REQUIRE(pq_plan_layer(*m, conv1, p).k == 8);  // 48 sub-vectors -> 12 -> 8
}

TEST_CASE("pq em_sampling=official: kill-the-bits' per-layer sample sizes; init=random", "[pq]") {
  auto m = make_model("cifar_resnet20");
  PQParams p;
  p.validate();
  const int l1 = m->layer_index("layer1.0.conv1"), l2 = m->layer_index("layer2.0.conv1"),
            l2b = m->layer_index("layer2.1.conv1"), l3 = m->layer_index("layer3.2.conv2"),
            fc = m->layer_index("linear");
  REQUIRE(pq_plan_layer(*m, l3, p).patches_per_iter == 8192);  // fixed: the same on every layer
  p.em_sampling = "official";
  p.validate();
  // n_samples // C_out patch rows, each unrolled into C_in*kh*kw / d sub-patches.
  REQUIRE(pq_plan_layer(*m, l1, p).patches_per_iter == 1000 / 16 * 16);   // 62 rows x 16 blocks = 992
  REQUIRE(pq_plan_layer(*m, l2, p).patches_per_iter == 1000 / 32 * 16);   // 31 x 16 (C_in 16) = 496
  REQUIRE(pq_plan_layer(*m, l2b, p).patches_per_iter == 1000 / 32 * 32);  // 31 x 32 = 992
  REQUIRE(pq_plan_layer(*m, l3, p).patches_per_iter == 25000 / 64 * 64);  // 390 x 64 = 24,960
  REQUIRE(pq_plan_layer(*m, fc, p).patches_per_iter == 5000 / 10 * 16);   // 500 x 16 = 8,000
  // A layer the official rule has no size for is an error naming it, not a silent default.
  auto vgg = make_model("lenet5");
  const int v = 1;  // its second conv (the first is kept)
  REQUIRE(vgg->layers()[v].is_conv());
  try {
    pq_plan_layer(*vgg, v, p);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains(vgg->layers()[v].name));
    CHECK_THAT(std::string(e.what()), Catch::Contains("em_sampling=fixed"));
  }
  PQParams bad = p;
  bad.init = "first";
  REQUIRE_THROWS_AS(bad.validate(), Error);
  bad = p;
  bad.em_sampling = "all";
  REQUIRE_THROWS_AS(bad.validate(), Error);

  // pq_cluster: the sample size is the caller's (-1 = patches_per_iter), and init=random seeds
  // with k distinct sub-vectors, other ones than k-means++ picks from the same seed (no EM
  // iteration: the centroids are the seeds).
  auto X = make_patches(3000, 9, 3);
  torch::manual_seed(4);
  auto sub = torch::randn({64, 9});
  PQParams c;
  c.em_iters = 0;
  c.init = "random";
  auto r = pq_cluster(sub, X, 8, c, 5);
  std::set<int64_t> rows;
  for (int64_t j = 0; j < 8; ++j) {
    int64_t hit = -1;
    for (int64_t i = 0; i < 64; ++i)
      if (r.centroids[j].equal(sub[i])) hit = i;
    REQUIRE(hit >= 0);  // a sub-vector itself
    rows.insert(hit);
  }
  REQUIRE(rows.size() == 8);  // distinct
  PQParams pp = c;
  pp.init = "kmeans++";
  REQUIRE(!pq_cluster(sub, X, 8, pp, 5).centroids.equal(r.centroids));
  c.em_iters = 10;
  auto a = pq_cluster(sub, X, 8, c, 5, 100), b = pq_cluster(sub, X, 8, c, 5, 100), w = pq_cluster(sub, X, 8, c, 5, 0);
  REQUIRE(a.centroids.equal(b.centroids));     // deterministic per seed with resampling
  REQUIRE(!a.centroids.equal(w.centroids));    // 100 patches per iteration, not the whole pool
}

TEST_CASE("pq k cap: largest power of two strictly below n_sub / threshold", "[pq]") {
  // The official rule: powers = 2^0..2^15, k = min(k, powers[bisect_left(powers, n / t) - 1]),
  // bisect_left giving the first power >= n / t (real division).
  auto official = [](int64_t k, int64_t n, int64_t t) {
    const double x = (double)n / (double)t;
    int64_t idx = 0;
    while (idx < 16 && (double)(int64_t(1) << idx) < x) ++idx;  // bisect_left
    REQUIRE(idx >= 1);  // (idx 0 would wrap around to 2^15 in Python: not reproduced, see below)
    return std::min<int64_t>(k, int64_t(1) << (idx - 1));
  };
  for (int64_t t : {1, 2, 4, 8})
    for (int64_t n = t + 1; n <= 20000; n += (n < 300 ? 1 : 37)) {
      INFO("n_sub " << n << " threshold " << t);
      REQUIRE(pq_capped_k(256, n, t, "strict", true) == official(256, n, t));
      REQUIRE(pq_capped_k(4096, n, t, "strict", true) == official(4096, n, t));
      const int64_t c = pq_capped_k(1 << 20, n, t, "strict", true);
      REQUIRE(c * t < n);        // strictly below
      REQUIRE(2 * c * t >= n);   // the largest such power of two
      REQUIRE((c & (c - 1)) == 0);
    }
  // n_sub / t exactly a power of two: strictly below, so half of it; at_most keeps it.
  REQUIRE(pq_capped_k(256, 256, 4, "strict", true) == 32);
  REQUIRE(pq_capped_k(256, 256, 4, "at_most", true) == 64);
  REQUIRE(pq_capped_k(256, 257, 4, "strict", true) == 64);
  REQUIRE(pq_capped_k(16, 256, 4, "strict", true) == 16);  // the requested k when below the cap
  // n_sub <= t: 1 centroid (the official lookup wraps around to 2^15 there, i.e. no cap).
  REQUIRE(pq_capped_k(256, 4, 4, "strict", true) == 1);
  REQUIRE(pq_capped_k(256, 1, 4, "strict", true) == 1);
  REQUIRE_THROWS_AS(pq_capped_k(256, 100, 4, "nearest", true), Error);
}

TEST_CASE("pq size_mb_stock reproduces the published ResNet-18/50 sizes", "[pq]") {
  // Stock et al., Table 1 (k = 256; FC k 2048 / 1024): 1.54 / 1.03 MB (ResNet-18 small / large),
  // 5.09 / 3.19 MB (ResNet-50). The published ResNet-18 large used d = 4 for its 1x1 convs.
  auto r18 = make_model("resnet18");
  REQUIRE(round2(stock_size_mb(*r18, "small", 2048)) == Approx(1.54));
  PQParams p;
  p.regime = "large";
  p.fc_k = 2048;
  p.d_pw = 4;
  p.validate();
  REQUIRE(round2(stock_size_mb(*r18, p)) == Approx(1.03));
  auto r50 = make_model("resnet50");
  REQUIRE(round2(stock_size_mb(*r50, "small", 1024)) == Approx(5.09));
  // ResNet-50 large with the official k cap (strictly below n_sub / 4: k = 64 for layer1.0.conv1,
  // 64x64x1x1 in 512 blocks of 8) gives 3.184 MB; the README prints 3.19, which the previous
  // cap (at most n_sub / 4: k = 128 there) reproduces (3.185).
  REQUIRE(std::round(stock_size_mb(*r50, "large", 1024) * 1000) == 3184);
  {
    PQParams q;
    q.regime = "large";
    q.fc_k = 1024;
    q.k_cap = "at_most";
    REQUIRE(round2(stock_size_mb(*r50, q)) == Approx(3.19));
  }
  // As bits per parameter: 1.106 / 0.739 / 1.671 (the notes' 1.045 for ResNet-50 large is
  // 3.19 MB over 25.6e6 rounded parameters; over the exact 25,557,032 it is 1.046).
  auto bpp = [](double mb, const Model& m) { return mb * 8.0 * 1048576.0 / (double)m.num_params(); };
  REQUIRE(std::round(bpp(stock_size_mb(*r18, "small", 2048), *r18) * 1000) == 1106);
  REQUIRE(std::round(bpp(stock_size_mb(*r18, p), *r18) * 1000) == 739);
  REQUIRE(std::round(bpp(stock_size_mb(*r50, "small", 1024), *r50) * 1000) == 1671);
}

TEST_CASE("pq layer fine-tuning (kl): members stay identical, network KL decreases", "[pq][finetune]") {
  torch::manual_seed(31);
  auto teacher = make_model("cifar_resnet20");
  teacher->eval();
  auto student = copy_model(*teacher);
  TestImages ds(96, /*zero=*/false);
  const int li = student->layer_index("layer2.1.conv1");  // 32x32x3x3: 1024 sub-vectors of 9
  const auto sub = pq_subvectors(student->layers()[li].weight(), 9);
  PQParams p;
  p.em_iters = 10;
  auto r = pq_cluster(sub, torch::eye(9), 8, p, 5);  // coarse: 8 centroids, a visible KL
  auto& w = student->layers()[li].weight();
  {
    torch::NoGradGuard ng;
    w.copy_(r.centroids.index_select(0, r.assign).view(w.sizes()));
  }
  std::map<std::string, torch::Tensor> before;
  for (auto& kv : student->state()) before[kv.first] = kv.second.clone();
  const double kl0 = network_kl(*student, *teacher, ds, 64);
  REQUIRE(kl0 > 1e-4);
  p.layer_finetune_iters = 20;
  p.finetune.batch_size = 12;
  p.layer_lr = 0.05;
  auto c = r.centroids.clone();
  auto st = pq_finetune_layer_kl(*student, *teacher, ds, li, c, r.assign, p, 7);
  REQUIRE(st.steps == 20);
  const double kl1 = network_kl(*student, *teacher, ds, 64);
  INFO("network KL " << kl0 << " -> " << kl1 << "; training loss " << st.first_loss << " -> " << st.last_loss);
  REQUIRE(kl1 < 0.7 * kl0);
  REQUIRE(st.last_loss < st.first_loss);
  REQUIRE_FALSE(c.equal(r.centroids));
  // The layer's weight is exactly the tuned centroids at the fixed assignments: every member of a
  // cluster holds the same sub-vector.
  const auto got = pq_subvectors(w, 9);
  REQUIRE(got.equal(c.index_select(0, r.assign)));
  for (int64_t j = 0; j < 8; ++j) {
    auto members = got.index_select(0, (r.assign == j).nonzero().view(-1));
    if (members.size(0) > 0) REQUIRE(members.eq(members[0].unsqueeze(0)).all().item<bool>());
  }
  // Nothing else changed: other weights, biases, BN parameters and running statistics.
  const std::string wname = student->layers()[li].name + ".weight";
  for (auto& kv : student->state())
    if (kv.first != wname) {
      INFO(kv.first);
      REQUIRE(kv.second.equal(before.at(kv.first)));
    }
  REQUIRE_FALSE(student->is_training());
  // Deterministic in the seed.
  auto student2 = copy_model(*teacher);
  {
    torch::NoGradGuard ng;
    student2->layers()[li].weight().copy_(r.centroids.index_select(0, r.assign).view(w.sizes()));
  }
  auto c2 = r.centroids.clone();
  pq_finetune_layer_kl(*student2, *teacher, ds, li, c2, r.assign, p, 7);
  REQUIRE(c2.equal(c));
}

// With zero images every conv input of a fresh network is zero (BN at its defaults maps 0 to 0),
// so the KL gradient of a conv weight is exactly 0 and only weight decay moves the centroids:
// c <- c - lr_t * buf, buf <- m * buf + wd * c (buf = wd * c at the first step), lr_t by the
// schedule. Checks weight decay as in CentroidSGD and the step schedule step by step.
TEST_CASE("pq fine-tuning weight decay and learning-rate schedule", "[pq][finetune]") {
  SECTION("schedule arithmetic") {
    FinetuneOptions fo;
    fo.lr = 0.01;
    REQUIRE(finetune_lr_at(fo, 7.5) == 0.01);  // constant
    fo.lr_step_epochs = 3;                     // the official StepLR(step_size=3, gamma=0.1)
    REQUIRE(finetune_lr_at(fo, 0) == Approx(0.01));
    REQUIRE(finetune_lr_at(fo, 2.999) == Approx(0.01));
    REQUIRE(finetune_lr_at(fo, 3) == Approx(0.001));
    REQUIRE(finetune_lr_at(fo, 5.5) == Approx(0.001));
    REQUIRE(finetune_lr_at(fo, 8.9) == Approx(0.0001));
    PQParams p;
    p.finetune.epochs = 9;
    REQUIRE(pq_global_lr_step_epochs(p) == 3);  // step (official): x0.1 after epochs 3 and 6 of 9
    p.finetune.epochs = 1;
    REQUIRE(pq_global_lr_step_epochs(p) == 3);  // a 1-epoch run keeps lr 0.01 throughout
    p.finetune_lr_schedule = "scaled";
    REQUIRE(pq_global_lr_step_epochs(p) == Approx(1.0 / 3.0));  // x0.1 after each third
    p.finetune.epochs = 9;
    REQUIRE(pq_global_lr_step_epochs(p) == Approx(3.0));  // the same as step for 9 epochs
    p.finetune_lr_schedule = "constant";
    REQUIRE(pq_global_lr_step_epochs(p) == 0);
  }
  SECTION("weight decay and step schedule, step by step") {
    torch::manual_seed(41);
    auto model = make_model("cifar_resnet20");
    model->eval();
    TestImages ds(32, /*zero=*/true);
    const int li = model->layer_index("layer1.1.conv2");
    auto& w = model->layers()[li].weight();
    const auto sub = pq_subvectors(w, 9);
    PQParams pc;
    pc.em_iters = 5;
    auto r = pq_cluster(sub, torch::eye(9), 16, pc, 3);
    {
      torch::NoGradGuard ng;
      w.copy_(r.centroids.index_select(0, r.assign).view(w.sizes()));
    }
    SharedWeights sw;
    sw.add_indexed(li, r.centroids, r.assign, w.sizes().vec());
    FinetuneOptions fo;
    fo.epochs = 1;
    fo.batch_size = 4;  // 8 steps
    fo.optimizer = "sgd";
    fo.lr = 0.5;
    fo.momentum = 0.9;
    fo.weight_decay = 0.1;
    fo.lr_step_epochs = 0.5;  // steps 0-3 at 0.5, steps 4-7 at 0.05
    fo.mode = "distill";
    auto teacher = copy_model(*model);
    auto st = finetune_shared(*model, ds, sw, fo, teacher.get());
    REQUIRE(st.steps == 8);
    REQUIRE(st.last_lr == Approx(0.05));
    double c = 1, buf = 0;
    for (int t = 0; t < 8; ++t) {
      const double lr = t < 4 ? 0.5 : 0.05;
      buf = t == 0 ? 0.1 * c : 0.9 * buf + 0.1 * c;
      c -= lr * buf;
    }
    INFO("expected factor " << c);
    REQUIRE(c < 0.6);  // the decay is visible
    auto want = r.centroids * c;
    REQUIRE((sw.leaves[0] - want).abs().max().item<float>() <= 1e-5f * (1 + want.abs().max().item<float>()));
    REQUIRE(pq_subvectors(w, 9).equal(sw.leaves[0].index_select(0, r.assign)));
    // Without the schedule the factor is the constant-lr one.
    FinetuneOptions f2 = fo;
    f2.lr_step_epochs = 0;
    SharedWeights s2;
    s2.add_indexed(li, r.centroids, r.assign, w.sizes().vec());
    finetune_shared(*model, ds, s2, f2, teacher.get());
    double c2 = 1;
    buf = 0;
    for (int t = 0; t < 8; ++t) {
      buf = t == 0 ? 0.1 * c2 : 0.9 * buf + 0.1 * c2;
      c2 -= 0.5 * buf;
    }
    REQUIRE((s2.leaves[0] - r.centroids * c2).abs().max().item<float>() <= 1e-5f * (1 + r.centroids.abs().max().item<float>()));
  }
}
