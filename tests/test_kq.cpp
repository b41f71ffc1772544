#include <catch2/catch.hpp>

#include "coding/bbz.h"
#include "common/error.h"
#include "common/runtime.h"
#include "common/timer.h"
#include "quant/kmeans.h"
#include "methods/kq.h"
#include "methods/method.h"
#include "models/registry.h"
#include "models/weights_io.h"
#include "data/dataset.h"
#include "quant/activations.h"

#include <cmath>
#include <tuple>

using namespace bb;

namespace {

// Squared distance of every row of x to every codeword: n x k (plain loops, the reference).
torch::Tensor all_dist(const torch::Tensor& x, const torch::Tensor& cb) {
  return (x.unsqueeze(1) - cb.unsqueeze(0)).pow(2).sum(2);
}

// KQ with `set` applied. These tests check the per-layer algorithm, most without calibration
// data: sequential (the default, which needs it) is off unless `set` names it.
std::unique_ptr<Method> kq_method(std::map<std::string, std::string> set) {
  set.emplace("sequential", "false");
  auto m = make_method("kq");
  ParamBinder::apply(m->params(), set, "test");
  return m;
}

// m's records for `model` (calibrated on `calib`, may be null) and each record's bytes in a file.
std::pair<BbzFile, std::vector<int64_t>> compress_sized(Method& m, Model& model, std::shared_ptr<Dataset> calib) {
  CompressContext ctx;
  ctx.model = &model;
  ctx.calib = std::move(calib);
  BbzFile f;
  f.layers = m.compress(ctx);
  BbzSizes sizes;
  serialize_bbz(f, &sizes);
  std::vector<int64_t> bytes;
  for (auto& l : sizes.layers) bytes.push_back(l.total());
  return {std::move(f), std::move(bytes)};
}

std::shared_ptr<Model> random_model(const std::string& name, uint64_t seed) {
  torch::manual_seed(seed);
  auto m = make_model(name);
  m->eval();
  return m;
}

}  // namespace

TEST_CASE("kq: every kernel is assigned its nearest quantized codeword", "[kq]") {
  torch::manual_seed(3);
  auto x = torch::randn({3000, 9}) * 0.1;
  for (int cb_bits : {6, 32}) {
    kq::QuantOptions o;
    o.k = 64;
    o.codebook_bits = cb_bits;
    auto c = kq::quantize_vectors(x, o);
    REQUIRE(c.k == 64);
    auto d = all_dist(x, c.codebook());
    auto assigned = d.gather(1, c.idx.unsqueeze(1)).squeeze(1);
    auto best = std::get<0>(d.min(1));
    // Equal up to float rounding of the two distance formulas.
    REQUIRE((assigned - best).abs().max().item<float>() <= 1e-6f);
    if (cb_bits == 6) {
      // The codebook lies on the 6-bit grid: value = q * scale, q in [-32, 31].
      REQUIRE(c.codebook_q.min().item<int>() >= -32);
      REQUIRE(c.codebook_q.max().item<int>() <= 31);
      REQUIRE(c.codebook().equal(c.codebook_q.to(torch::kFloat32) * c.scale));
    }
  }
}

TEST_CASE("kq: gain-shape assignment is the joint nearest (codeword, gain)", "[kq]") {
  torch::manual_seed(4);
  auto x = torch::randn({1500, 9}) * torch::rand({1500, 1}) * 0.2;
  kq::QuantOptions o;
  o.k = 32;
  o.gain_shape = true;
  o.gain_bits = 2;
  auto c = kq::quantize_vectors(x, o);
  REQUIRE(c.gains.numel() == 4);
  // Every (j, g) pair as its own codeword, brute force.
  auto cb = c.codebook();
  auto pairs = (c.gains.view({1, -1, 1}) * cb.view({-1, 1, 9})).reshape({-1, 9});  // (j*G + g)
  auto d = all_dist(x, pairs);
  auto assigned = d.gather(1, (c.idx * 4 + c.gain_idx).unsqueeze(1)).squeeze(1);
  auto best = std::get<0>(d.min(1));
  REQUIRE((assigned - best).abs().max().item<float>() <= 1e-6f);
  // Reconstruction is gain * codeword.
  REQUIRE(kq::reconstruct(c).equal(cb.index_select(0, c.idx) * c.gains.index_select(0, c.gain_idx).unsqueeze(1)));
}

TEST_CASE("kq: Lloyd on the grid does not increase the error", "[kq]") {
  torch::manual_seed(5);
  auto x = torch::randn({4000, 9}) * 0.05;
  kq::QuantOptions o;
  o.k = 128;
  o.codebook_bits = 4;  // coarse grid: the re-estimation matters
  o.grid_iters = 0;
  auto err = [&](const kq::LayerCode& c) { return (kq::reconstruct(c) - x).pow(2).sum().item<double>(); };
  double e0 = err(kq::quantize_vectors(x, o));
  o.grid_iters = 5;
  double e5 = err(kq::quantize_vectors(x, o));
  REQUIRE(e5 <= e0);
}

namespace {
// A layer of `rows` x `groups` kernels of dimension d with a random metric per input group
// (correlated, of different scales, one group never excited) and random row weights.
kq::QuantOptions metric_options(int64_t rows, int64_t groups, int64_t d, uint64_t seed) {
  torch::manual_seed(seed);
  kq::QuantOptions o;
  auto A = torch::randn({groups, 4 * d, d}, torch::kFloat64) * torch::rand({groups, 1, 1}, torch::kFloat64) * 3;
  o.metric = torch::matmul(A.transpose(1, 2), A);
  o.metric[1].zero_();  // a dead input channel
  o.row_weight = torch::rand({rows}, torch::kFloat64) * 4 + 0.05;
  return o;
}
}  // namespace

TEST_CASE("kq: the metric assignment is the nearest codeword under each kernel's own metric", "[kq]") {
  const int64_t rows = 24, groups = 10, d = 9;
  kq::QuantOptions o = metric_options(rows, groups, d, 21);
  auto x = torch::randn({rows * groups, d}) * 0.1;
  auto cb = torch::randn({37, d}) * 0.1;
  auto fast = kq::metric_nearest(x, cb, o);
  auto ref = kq::metric_nearest_ref(x, cb, o);
  // The metric distance of the fast choice equals the reference's minimum (ties up to float rounding).
  int64_t differ = 0;
  for (int64_t i = 0; i < x.size(0); ++i) {
    auto dist = [&](int64_t j) {
      auto e = (x[i] - cb[j]).to(torch::kFloat64);
      return torch::dot(e, torch::mv(o.metric[i % groups], e)).item<double>();
    };
    const double a = dist(fast[i].item<int64_t>()), b = dist(ref[i].item<int64_t>());
    if (i % groups == 1) continue;  // the dead group: every codeword costs 0 (fast: Euclidean tie-break)
    if (fast[i].item<int64_t>() != ref[i].item<int64_t>()) ++differ;
    REQUIRE(a <= b * (1 + 1e-4) + 1e-12);
  }
  REQUIRE(differ <= 2);
  // Not the Euclidean nearest: the metric matters.
  REQUIRE(!fast.equal(kq::metric_nearest(x, cb, kq::QuantOptions())));
  // Without a metric both are the Euclidean nearest.
  REQUIRE(kq::metric_nearest(x, cb, kq::QuantOptions()).equal(std::get<1>(all_dist(x, cb).min(1))));
}

TEST_CASE("kq: clustering under the output metric lowers the metric error, float and on the grid", "[kq]") {
  const int64_t rows = 64, groups = 16, d = 9;
  kq::QuantOptions o = metric_options(rows, groups, d, 22);
  auto x = torch::randn({rows * groups, d}) * 0.1;
  for (int cb_bits : {32, 6}) {
    kq::QuantOptions eu;
    eu.k = o.k = 64;
    eu.codebook_bits = o.codebook_bits = cb_bits;
    auto ce = kq::quantize_vectors(x, eu);
    auto cm = kq::quantize_vectors(x, o);
    const double e_eu = kq::metric_error(x, kq::reconstruct(ce), o), e_m = kq::metric_error(x, kq::reconstruct(cm), o);
    INFO("bits " << cb_bits << ": metric error, Euclidean clustering " << e_eu << ", metric clustering " << e_m);
    REQUIRE(e_m < 0.9 * e_eu);
    // Every kernel sits at its metric-nearest codeword of the final codebook.
    auto near = kq::metric_nearest(x, cm.codebook(), o);
    REQUIRE(near.equal(cm.idx));
    if (cb_bits == 6) REQUIRE(cm.codebook().equal(cm.codebook_q.to(torch::kFloat32) * cm.scale));
  }
  // metric_error without a metric is the squared error.
  auto r = torch::zeros_like(x);
  REQUIRE(kq::metric_error(x, r, kq::QuantOptions()) == Approx(x.to(torch::kFloat64).pow(2).sum().item<double>()));
}

TEST_CASE("kq: codebook size is capped at the number of kernels", "[kq]") {
  auto x = torch::randn({40, 9});
  kq::QuantOptions o;
  o.k = 256;
  auto c = kq::quantize_vectors(x, o);
  REQUIRE(c.k == 40);
  REQUIRE(c.idx.max().item<int64_t>() < 40);
}

TEST_CASE("kq: compress is deterministic and decode(parse(serialize)) equals the in-memory weights", "[kq]") {
  for (std::string mode : {"plain", "gain_shape"}) {
    for (std::string coder : {"fixed", "rans"}) {
      auto run = [&](std::vector<uint8_t>* bytes, std::map<std::string, torch::Tensor>* weights) {
        auto model = random_model("cifar_resnet20", 1);
        auto m = kq_method({{"index_bits", "5"}, {"kernel_mode", mode}, {"kmeans_metric", "weight"}, {"coder", coder}, {"first_conv", "kq"},
                            {"kmeans_iters", "8"}});
        CompressContext ctx;
        ctx.model = model.get();
        ctx.seed = 42;
        BbzFile f;
        f.model = "cifar_resnet20";
        f.layers = m->compress(ctx);
        REQUIRE(f.layers.size() == model->layers().size());  // all convs (first_conv=kq) + the fc
        *bytes = serialize_bbz(f);
        for (auto& l : model->layers()) (*weights)[l.name] = l.weight().detach().clone();
        auto g = parse_bbz(bytes->data(), bytes->size(), "test");
        for (auto& rec : g.layers) {
          auto w = m->decode(rec);
          INFO(mode << " " << coder << " layer " << rec.layer);
          REQUIRE(w.equal(weights->at(rec.layer)));
        }
      };
      std::vector<uint8_t> a, b;
      std::map<std::string, torch::Tensor> wa, wb;
      run(&a, &wa);
      run(&b, &wb);
      REQUIRE(a == b);
    }
  }
}

TEST_CASE("kq: nominal estimate matches the serialised bytes", "[kq]") {
  auto model = random_model("cifar_resnet20", 2);
  auto m = kq_method({{"index_bits", "6"}, {"first_conv", "kq"}, {"kmeans_iters", "5"}, {"kmeans_metric", "weight"}});
  CompressContext ctx;
  ctx.model = model.get();
  BbzFile f;
  f.layers = m->compress(ctx);
  BbzSizes sizes;
  serialize_bbz(f, &sizes);
  REQUIRE(sizes.layers.size() == f.layers.size());
  for (size_t i = 0; i < f.layers.size(); ++i) {
    const auto& rec = f.layers[i];
    const auto& sz = sizes.layers[i];
    INFO("layer " << rec.layer);
    // Fixed-width indices: exactly ceil(n*b/8) payload bytes plus the stream's small header.
    double idx_payload = std::ceil(rec.estimate.fixed_index_bits / 8);
    REQUIRE(rec.estimate.index_bits == rec.estimate.fixed_index_bits);
    REQUIRE(sz.indices >= idx_payload);
    REQUIRE(sz.indices <= idx_payload + 16);
    // Codebook: k*d entries of 6 bits packed, the scale (32 bits) lives in the meta section.
    double cb_payload = std::ceil((rec.estimate.codebook_bits - 32) / 8);
    REQUIRE(sz.codebook >= cb_payload);
    REQUIRE(sz.codebook <= cb_payload + 16);
  }
}

TEST_CASE("kq: nominal rates on ImageNet ResNet-18 and VGG-16 shapes", "[kq]") {
  // Paper anchors (bits per conv parameter): VGG-16 1.05, ResNet-18 1.62. With the defaults
  // (b = 9 for K>1 convs, 6-bit codebook, first conv and 1x1 convs kept in float) the nominal
  // arithmetic gives VGG-16 1.026 and ResNet-18 1.543 (docs/methods/kq.md).
  KqParams p;
  auto vgg = make_model("vgg16");
  auto r18 = make_model("resnet18");
  auto v = kq::nominal_model_rate(*vgg, p, true);
  auto r = kq::nominal_model_rate(*r18, p, true);
  REQUIRE(v.weights == 14710464);
  REQUIRE(r.weights == 11166912);
  double vb = v.total() / v.weights, rb = r.total() / r.weights;
  INFO("VGG-16 bits/conv param " << vb << ", ResNet-18 " << rb);
  REQUIRE(vb == Approx(1.0262).margin(5e-4));
  REQUIRE(rb == Approx(1.5433).margin(5e-4));
  REQUIRE(std::abs(vb / 1.05 - 1) < 0.025);
  REQUIRE(std::abs(rb / 1.62 - 1) < 0.05);
  // One more bit overshoots both anchors.
  p.index_bits = 10;
  double vb10 = kq::nominal_model_rate(*vgg, p, true).total() / v.weights;
  double rb10 = kq::nominal_model_rate(*r18, p, true).total() / r.weights;
  REQUIRE(vb10 > 1.05 * 1.05);
  REQUIRE(rb10 > 1.62 * 1.04);
}

TEST_CASE("kq: target_bpw lands within 2% of the target on real bytes", "[kq]") {
  auto model = random_model("cifar_resnet20", 3);
  const int64_t nweights = model->num_weights();
  for (double target : {0.8, 1.2, 1.8}) {
    auto m = kq_method({{"target_bpw", std::to_string(target)}, {"alloc_proxy", "mse"}, {"kmeans_metric", "weight"}, {"kmeans_iters", "6"},
                        {"first_conv", "kq"}, {"alloc_max_bits", "8"}});
    auto mm = random_model("cifar_resnet20", 3);
    CompressContext ctx;
    ctx.model = mm.get();
    BbzFile f;
    f.layers = m->compress(ctx);
    REQUIRE(f.layers.size() == mm->layers().size());
    BbzSizes sizes;
    serialize_bbz(f, &sizes);
    double bits = 0;
    for (auto& l : sizes.layers) bits += 8.0 * l.total();
    double bpw = bits / nweights;
    INFO("target " << target << " achieved " << bpw);
    REQUIRE(bpw <= target * 1.0 + 1e-9);
    REQUIRE(bpw >= target * 0.98);
  }
}

TEST_CASE("kq: the output proxy weighs a layer's error by the following BN's scale", "[kq]") {
  // A BN that amplifies its conv's output 30x makes that conv's error 900x costlier downstream:
  // alloc_proxy=output must give it a wider index than on the same model with the plain BN, while
  // output_prebn (the error before the BN) cannot see the difference for that layer.
  auto calib = open_dataset("cifar10-lossless-1k");
  const std::string target = "layer2.2.conv2";
  auto layer_bytes = [&](const std::string& proxy, double gamma) {
    auto mm = random_model("cifar_resnet20", 3);
    const int li = mm->layer_index(target);
    REQUIRE(li >= 0);
    REQUIRE(mm->bn_scale(li).defined());
    {
      torch::NoGradGuard ng;
      for (auto& kv : mm->named_parameters())
        if (kv.key() == "layer2.2.bn2.weight") kv.value().fill_(gamma);
    }
    auto m = kq_method({{"target_bpw", "1.2"}, {"alloc_proxy", proxy}, {"kmeans_metric", "weight"}, {"kmeans_iters", "6"}, {"calib_images", "64"},
                        {"alloc_max_bits", "8"}});
    const auto [f, bytes] = compress_sized(*m, *mm, calib);
    for (size_t i = 0; i < f.layers.size(); ++i)
      if (f.layers[i].layer == target) return bytes[i];
    FAIL("no record for " << target);
    return (int64_t)0;
  };
  const int64_t plain = layer_bytes("output", 1.0), loud = layer_bytes("output", 30.0);
  INFO("bytes of " << target << ": gamma 1 " << plain << ", gamma 30 " << loud);
  CHECK(loud > plain);
  const int64_t pre_plain = layer_bytes("output_prebn", 1.0), pre_loud = layer_bytes("output_prebn", 30.0);
  INFO("output_prebn: gamma 1 " << pre_plain << ", gamma 30 " << pre_loud);
  CHECK(pre_loud <= pre_plain);
}

TEST_CASE("kq: bad parameters and corrupt records are clear errors", "[kq]") {
  REQUIRE_THROWS_AS(kq_method({{"index_bits", "0"}}), Error);
  REQUIRE_THROWS_AS(kq_method({{"codebook_bits", "20"}}), Error);
  REQUIRE_THROWS_AS(kq_method({{"kernel_mode", "bogus"}}), Error);
  REQUIRE_THROWS_AS(kq_method({{"alloc_min_bits", "6"}, {"alloc_max_bits", "4"}}), Error);
  REQUIRE_THROWS_AS(kq_method({{"finetune_epochs", "-1"}}), Error);
  REQUIRE_THROWS_AS(kq_method({{"finetune_mode", "mse"}}), Error);
  REQUIRE_THROWS_AS(kq_method({{"kmeans_metric", "cosine"}}), Error);
  REQUIRE_THROWS_AS(kq_method({{"kmeans_metric", "output"}, {"kernel_mode", "gain_shape"}}), Error);
  {
    // The output metric needs calibration images: a clear error without them.
    auto model = random_model("cifar_resnet20", 4);
    auto m = kq_method({{"kmeans_metric", "output"}, {"index_bits", "4"}});
    REQUIRE(m->needs_calibration());
    CompressContext ctx;
    ctx.model = model.get();
    REQUIRE_THROWS_AS(m->compress(ctx), Error);
  }
  {
    // So does the sequential re-fit (KQ's default), even with the Euclidean clustering.
    auto model = random_model("cifar_resnet20", 4);
    auto m = kq_method({{"kmeans_metric", "weight"}, {"index_bits", "4"}, {"sequential", "true"}});
    REQUIRE(m->needs_calibration());
    CompressContext ctx;
    ctx.model = model.get();
    REQUIRE_THROWS_WITH(m->compress(ctx), Catch::Contains("sequential=true needs a calibration set"));
  }

  auto model = random_model("cifar_resnet20", 4);
  auto m = kq_method({{"index_bits", "4"}, {"kmeans_iters", "3"}, {"kmeans_metric", "weight"}});
  CompressContext ctx;
  ctx.model = model.get();
  auto recs = m->compress(ctx);
  REQUIRE(!recs.empty());
  auto bad = recs[0];
  bad.section("idx");  // exists
  SECTION("truncated index stream") {
    auto& s = const_cast<Section&>(bad.section("idx"));
    s.bytes.resize(s.bytes.size() / 2);
    REQUIRE_THROWS_AS(m->decode(bad), Error);
  }
  SECTION("wrong shape") {
    bad.shape = {7, 7, 3, 3};
    REQUIRE_THROWS_AS(m->decode(bad), Error);
  }
  SECTION("missing section") {
    bad.sections.erase(bad.sections.begin());
    REQUIRE_THROWS_AS(m->decode(bad), Error);
  }
  SECTION("target below the reachable rate") {
    auto t = kq_method({{"target_bpw", "0.01"}, {"alloc_proxy", "mse"}, {"kmeans_metric", "weight"}, {"kmeans_iters", "2"}, {"alloc_max_bits", "2"}});
    auto mm = random_model("cifar_resnet20", 4);
    CompressContext c2;
    c2.model = mm.get();
    // The allocator reports infeasibility (rd_alloc: feasible = false); KQ words it with the minimum.
    REQUIRE_THROWS_WITH(t->compress(c2), Catch::Contains("target_bpw=0.01 is below the lowest rate reachable") &&
                                             Catch::Contains("bits per conv+linear weight)"));
  }
}

TEST_CASE("kq: sequential re-fits each layer to the FP output at the same widths and lowers the network's error", "[kq]") {
  // Trained ResNet-20, fixed 5-bit kernel indices (32 codewords per layer: far from exact), the
  // output metric on 64 calibration images. sequential=true clusters each layer again from its FP
  // target V in network order: the same record sizes (the widths do not change), each record
  // decodes to the weight the model holds, and the logits move less from the FP network's.
  auto calib = open_dataset("cifar10-lossless-1k");
  const std::string weights = data_root("") + "/models/cifar10_resnet20.pt";
  auto fp = make_model("cifar_resnet20");
  load_weights(*fp, weights);
  fp->eval();
  const torch::Tensor images = load_calibration_images(*calib, 128, false, 99);
  torch::Tensor fp_logits;
  {
    torch::NoGradGuard ng;
    fp_logits = fp->forward(images);
  }
  auto run = [&](bool sequential, std::vector<int64_t>& sizes) {
    auto mm = make_model("cifar_resnet20");
    load_weights(*mm, weights);
    mm->eval();
    auto m = kq_method({{"index_bits", "5"}, {"calib_images", "64"}, {"kmeans_iters", "8"},
                        {"sequential", sequential ? "true" : "false"}});
    BbzFile f;
    std::tie(f, sizes) = compress_sized(*m, *mm, calib);
    for (const auto& rec : f.layers) {
      INFO("sequential " << sequential << ", layer " << rec.layer);
      const int li = mm->layer_index(rec.layer);
      REQUIRE(li >= 0);
      REQUIRE(torch::equal(m->decode(rec), mm->layers()[li].weight()));
    }
    torch::NoGradGuard ng;
    return (mm->forward(images) - fp_logits).pow(2).mean().item<double>();
  };
  std::vector<int64_t> sizes_par, sizes_seq;
  const double err_par = run(false, sizes_par), err_seq = run(true, sizes_seq);
  INFO("logits MSE against FP on 128 images: parallel " << err_par << ", sequential " << err_seq);
  CHECK(sizes_seq == sizes_par);
  CHECK(err_seq < 0.8 * err_par);
}
