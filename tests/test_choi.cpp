// Choi et al. 2017 weight sharing: Hessian diagonal, pruning + position code, shared-value
// fine-tuning, the four methods' records and rates.
#include <catch2/catch.hpp>

#include "coding/accounting.h"
#include "coding/bbz.h"
#include "coding/bytes.h"
#include "coding/symbols.h"
#include "common/error.h"
#include "test_data_helpers.h"
#include "data/loader.h"
#include "methods/method.h"
#include "models/registry.h"
#include "quant/finetune_shared.h"
#include "quant/hessian.h"
#include "quant/kmeans1d.h"
#include "quant/prune.h"
#include "methods/weight_sharing_method.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <set>

namespace fs = std::filesystem;
using namespace bb;
using bbtest::TempDir;

namespace {

// Deterministic random images (a test stand-in for a calibration folder).
class RandomImages : public Dataset {
 public:
  RandomImages(int64_t n, int64_t c, int64_t hw, std::string family) : n_(n), c_(c), hw_(hw) {
    name_ = "random-images";
    family_ = std::move(family);
  }
  int64_t size() const override { return n_; }
  int64_t label(int64_t i) const override { return (i * 7) % 10; }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    auto g = at::detail::createCPUGenerator(1000 + i + (augment ? seed * 7919 : 0));
    return torch::randn({c_, hw_, hw_}, g);
  }
  std::string identity() const override { return name_ + ":" + std::to_string(n_); }

 private:
  int64_t n_, c_, hw_;
};

std::shared_ptr<Model> seeded_model(const std::string& name, uint64_t seed) {
  torch::manual_seed(seed);
  auto m = make_model(name);
  m->eval();
  return m;
}


// Per-image gradients by brute force: one backward per image (and per label).
std::vector<torch::Tensor> brute_force_fisher(Model& model, const Dataset& ds, int64_t n, bool exact_gn) {
  std::vector<torch::Tensor> w, H;
  for (auto& l : model.layers()) {
    w.push_back(l.weight());
    H.push_back(torch::zeros_like(l.weight()));
  }
  for (int64_t i = 0; i < n; ++i) {
    auto x = ds.image(i).unsqueeze(0);
    auto logits = model.forward(x);
    auto p = torch::softmax(logits, 1).detach();
    std::vector<std::pair<int64_t, double>> labels;
    if (exact_gn)
      for (int64_t c = 0; c < logits.size(1); ++c) labels.push_back({c, p[0][c].item<double>()});
    else
      labels.push_back({ds.label(i), 1.0});
    for (auto& lc : labels) {
      auto loss = torch::nn::functional::cross_entropy(logits, torch::tensor({lc.first}));
      auto g = torch::autograd::grad({loss}, w, {}, true);
      for (size_t l = 0; l < w.size(); ++l) H[l] += g[l].square() * lc.second / (double)n;
    }
  }
  return H;
}

void require_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b, double rtol) {
  REQUIRE(a.size() == b.size());
  for (size_t l = 0; l < a.size(); ++l) {
    double scale = b[l].abs().max().item<double>();
    double err = (a[l] - b[l]).abs().max().item<double>();
    INFO("layer " << l << " max err " << err << " scale " << scale);
    REQUIRE(err <= rtol * scale + 1e-12);
  }
}

CompressContext make_ctx(Model& m, std::shared_ptr<Dataset> calib = nullptr, uint64_t seed = 0) {
  CompressContext ctx;
  ctx.model = &m;
  ctx.calib = std::move(calib);
  ctx.seed = seed;
  return ctx;
}

std::unique_ptr<Method> method_with(const std::string& name, const std::map<std::string, std::string>& params) {
  auto m = make_method(name);
  ParamBinder::apply(m->params(), params, "test " + name);
  return m;
}

// Serialises the records, parses them back, decodes each, and checks the result equals decoding
// the in-memory records; returns the accounting of a file with those records (rest stored fp32).
Accounting roundtrip(Model& model, const Method& method, const std::vector<LayerRecord>& recs) {
  BbzFile f;
  f.model = model.arch();
  f.provenance = nlohmann::json::object();
  f.layers = recs;
  std::set<std::string> compressed;
  for (auto& r : recs) compressed.insert(r.layer + ".weight");
  for (auto& kv : model.state())
    if (!compressed.count(kv.first)) f.tensors.push_back({kv.first, kv.second, false});
  BbzSizes sizes;
  auto bytes = serialize_bbz(f, &sizes);
  BbzSizes sizes2;
  BbzFile g = parse_bbz(bytes.data(), bytes.size(), "test", &sizes2);
  REQUIRE(g.layers.size() == recs.size());
  for (size_t i = 0; i < recs.size(); ++i) {
    auto a = method.decode(recs[i]);
    auto b = method.decode(g.layers[i]);
    REQUIRE(a.sizes() == b.sizes());
    REQUIRE(a.equal(b));
  }
  return account(model, g, sizes2);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Hessian

TEST_CASE("Hessian diagonal: batched per-image gradients equal one backward per image", "[choi][hessian]") {
  auto model = seeded_model("cifar_resnet20", 3);
  RandomImages ds(6, 3, 32, "cifar10");
  HessianParams p;
  p.images = 6;
  p.batch_size = 4;  // two batches, the second partial
  SECTION("empirical Fisher") {
    p.estimator = "empirical_fisher";
    auto H = estimate_hessian_diag(*model, ds, p);
    require_close(H, brute_force_fisher(*model, ds, 6, false), 1e-4);
  }
  SECTION("Gauss-Newton, exact over classes") {
    p.estimator = "gauss_newton";
    auto H = estimate_hessian_diag(*model, ds, p);
    require_close(H, brute_force_fisher(*model, ds, 6, true), 1e-4);
    for (auto& h : H) REQUIRE(h.min().item<float>() >= 0);
  }
}

TEST_CASE("Hutchinson estimates the true Hessian diagonal", "[choi][hessian]") {
  auto model = seeded_model("lenet5", 5);
  RandomImages ds(8, 1, 32, "mnist");
  HessianParams p;
  p.estimator = "hutchinson";
  p.images = 8;
  p.batch_size = 8;
  p.hutchinson_probes = 200;
  auto H = estimate_hessian_diag(*model, ds, p);
  // Exact Hessian rows of the last layer's 840 weights, over every conv/linear weight (the probes
  // span all of them), by one Hessian-vector product per weight.
  const auto& layers = model->layers();
  std::vector<torch::Tensor> Ws;
  for (auto& l : layers) Ws.push_back(l.weight());
  const size_t last = Ws.size() - 1;
  auto b = load_batch(ds, {0, 1, 2, 3, 4, 5, 6, 7});
  auto loss = torch::nn::functional::cross_entropy(model->forward(b.images), b.labels);
  auto g = torch::autograd::grad({loss}, {Ws[last]}, {}, true, true)[0].view(-1);
  auto exact = torch::zeros({g.numel()}, torch::kFloat64);
  auto offdiag_sq = torch::zeros({g.numel()}, torch::kFloat64);
  for (int64_t i = 0; i < g.numel(); ++i) {
    auto rows = torch::autograd::grad({g[i]}, Ws, {}, true, false, /*allow_unused=*/true);
    double total = 0;
    for (auto& r : rows)
      if (r.defined()) total += r.to(torch::kFloat64).square().sum().item<double>();
    double d = rows[last].view(-1)[i].item<double>();
    exact[i] = d;
    offdiag_sq[i] = total - d * d;
  }
  auto est = H.back().view(-1).to(torch::kFloat64);
  // Unbiased; each entry's noise is known: with Rademacher probes z, Var(z_i (Hz)_i) =
  // sum_{j != i} H_ij^2, divided by the number of probes. The errors, scaled by that standard
  // deviation, must look like unit-variance noise (a wrong diagonal, scale or probe would not).
  double tr_exact = exact.sum().item<double>(), tr_est = est.sum().item<double>();
  INFO("trace exact " << tr_exact << " estimate " << tr_est);
  REQUIRE(std::fabs(tr_est - tr_exact) <= 0.1 * std::fabs(tr_exact));
  auto sd = (offdiag_sq / p.hutchinson_probes).sqrt().clamp_min(1e-30);
  double mean_z2 = ((est - exact) / sd).square().mean().item<double>();
  INFO("mean squared z-score " << mean_z2 << " (1 expected)");
  REQUIRE(mean_z2 > 0.5);
  REQUIRE(mean_z2 < 2.0);
}

TEST_CASE("Hessian cache: a hit gives identical values, a weight change misses", "[choi][hessian]") {
  TempDir tmp;
  auto model = seeded_model("lenet5", 6);
  RandomImages ds(10, 1, 32, "mnist");
  HessianParams p;
  p.images = 10;
  p.estimator = "empirical_fisher";
  bool hit = true;
  auto a = hessian_diag_cached(*model, ds, p, tmp.str(), &hit);
  REQUIRE_FALSE(hit);
  auto b = hessian_diag_cached(*model, ds, p, tmp.str(), &hit);
  REQUIRE(hit);
  for (size_t l = 0; l < a.size(); ++l) REQUIRE(a[l].equal(b[l]));
  {
    torch::NoGradGuard ng;
    model->layers()[0].weight()[0][0][0][0] += 0.5f;
  }
  hessian_diag_cached(*model, ds, p, tmp.str(), &hit);
  REQUIRE_FALSE(hit);
  // A corrupt cache file is an error naming it, not a silent re-use.
  for (auto& e : fs::directory_iterator(tmp.str())) fs::resize_file(e.path(), 100);
  REQUIRE_THROWS_AS(hessian_diag_cached(*model, ds, p, tmp.str()), Error);
}

TEST_CASE("adam_sqrt: sqrt of the mean squared minibatch gradient, whole minibatches only", "[choi][hessian]") {
  auto model = seeded_model("lenet5", 7);
  RandomImages ds(12, 1, 32, "mnist");
  HessianParams p;
  p.estimator = "adam_sqrt";
  p.images = 11;
  p.adam_batch = 4;  // 11 images: two whole minibatches of 4, the last 3 left out
  p.seed = 2;
  auto H = estimate_hessian_diag(*model, ds, p);
  // Brute force: the gradient of each minibatch's mean loss, in the sampled order.
  auto idx = sample_indices(ds.size(), p.images, p.seed);
  std::vector<torch::Tensor> w, ref;
  for (auto& l : model->layers()) {
    w.push_back(l.weight());
    ref.push_back(torch::zeros_like(l.weight()));
  }
  for (int b = 0; b < 2; ++b) {
    auto batch = load_batch(ds, std::vector<int64_t>(idx.begin() + 4 * b, idx.begin() + 4 * b + 4));
    auto loss = torch::nn::functional::cross_entropy(model->forward(batch.images), batch.labels);
    auto g = torch::autograd::grad({loss}, w);
    for (size_t l = 0; l < w.size(); ++l) ref[l] += g[l].square() / 2.0;
  }
  for (auto& r : ref) r.sqrt_();
  require_close(H, ref, 1e-5);
  // A different minibatch size is a different estimate and a different cache key.
  HessianParams q = p;
  q.adam_batch = 2;
  REQUIRE(q.key() != p.key());
  auto H2 = estimate_hessian_diag(*model, ds, q);
  REQUIRE_FALSE(H2[0].equal(H[0]));
  // The estimator name is accepted by the methods.
  auto m = make_method("ecsq");
  REQUIRE_NOTHROW(ParamBinder::apply(m->params(), {{"hessian", "adam_sqrt"}, {"hessian_adam_batch", "64"}}, "t"));
  REQUIRE_THROWS_AS(ParamBinder::apply(m->params(), {{"hessian_adam_batch", "0"}}, "t"), Error);
}

TEST_CASE("importance shaping: power, per-layer normalisation, damping", "[choi][hessian]") {
  // Three layers with very different Hessian scales.
  SharingProblem prob;
  prob.offset = {0, 4, 7, 10};
  prob.h = {1, 2, 3, 4, 100, 300, 500, 1e-3f, 5e-3f, 2e-3f};
  prob.x.assign(prob.h.size(), 0.f);
  const std::vector<float> raw = prob.h;
  auto shaped = [&](SharingParams sp) {
    SharingProblem q = prob;
    shape_importance(q, sp);
    double s = 0;
    for (float v : q.h) s += v;
    REQUIRE(s / q.h.size() == Approx(1.0).epsilon(1e-6));  // always mean 1
    return q.h;
  };
  SharingParams sp;
  SECTION("defaults only rescale") {
    auto h = shaped(sp);
    for (size_t i = 1; i < h.size(); ++i) REQUIRE(h[i] / h[0] == Approx(raw[i] / raw[0]).epsilon(1e-5));
  }
  SECTION("per-layer normalisation keeps each layer's relative weights and equalises the layers") {
    sp.hessian_norm = "layer";
    auto h = shaped(sp);
    for (size_t l = 0; l < 3; ++l) {
      double m = 0;
      for (int64_t i = prob.offset[l]; i < prob.offset[l + 1]; ++i) {
        m += h[i];
        REQUIRE(h[i] / h[prob.offset[l]] == Approx(raw[i] / raw[prob.offset[l]]).epsilon(1e-5));
      }
      REQUIRE(m / (double)prob.size(l) == Approx(1.0).epsilon(1e-5));
    }
  }
  SECTION("power 0.5 is the square root, up to the scale") {
    sp.hessian_power = 0.5;
    auto h = shaped(sp);
    for (size_t i = 1; i < h.size(); ++i)
      REQUIRE(h[i] / h[0] == Approx(std::sqrt((double)raw[i] / raw[0])).epsilon(1e-5));
  }
  SECTION("damping adds a multiple of the mean; a huge one makes every weight 1") {
    sp.hessian_damping = 1.0;
    auto h = shaped(sp);
    double mean = 0;
    for (float v : raw) mean += v;
    mean /= raw.size();
    for (size_t i = 0; i < h.size(); ++i) REQUIRE(h[i] == Approx((raw[i] + mean) / (2 * mean)).epsilon(1e-5));
    sp.hessian_damping = 1e12;
    for (float v : shaped(sp)) REQUIRE(v == 1.0f);
  }
  auto m = make_method("uniform_ecsq");
  REQUIRE_THROWS_AS(ParamBinder::apply(m->params(), {{"hessian_norm", "channel"}}, "t"), Error);
  REQUIRE_THROWS_AS(ParamBinder::apply(m->params(), {{"hessian_damping", "-1"}}, "t"), Error);
  REQUIRE_THROWS_AS(ParamBinder::apply(m->params(), {{"hessian_power", "0"}}, "t"), Error);
}

// ---------------------------------------------------------------------------------------------
// Pruning

TEST_CASE("magnitude pruning keeps the exact fraction, per layer or network-wide", "[choi][prune]") {
  torch::manual_seed(1);
  std::vector<torch::Tensor> w = {torch::randn({10, 20}), torch::randn({300}) * 3, torch::randn({7})};
  auto m = magnitude_prune_masks(w, 0.25, "layer");
  REQUIRE(m[0].sum().item<int64_t>() == 50);
  REQUIRE(m[1].sum().item<int64_t>() == 75);
  REQUIRE(m[2].sum().item<int64_t>() == 2);
  // kept weights are the largest
  auto kept_min = w[0].abs().masked_select(m[0]).min().item<float>();
  auto pruned_max = w[0].abs().masked_select(m[0].logical_not()).max().item<float>();
  REQUIRE(kept_min >= pruned_max);
  auto g = magnitude_prune_masks(w, 0.25, "network");
  REQUIRE(g[0].sum().item<int64_t>() + g[1].sum().item<int64_t>() + g[2].sum().item<int64_t>() == 127);
  REQUIRE(g[1].sum().item<int64_t>() > 75);  // the large-magnitude layer keeps more
  REQUIRE_THROWS_AS(magnitude_prune_masks(w, 0, "layer"), Error);
}

TEST_CASE("pruned positions: run code round trip, escapes, corruption", "[choi][prune]") {
  std::mt19937_64 rng(3);
  for (uint32_t alphabet : {2u, 3u, 16u, 256u}) {
    for (double density : {0.0, 0.01, 0.2, 0.9, 1.0}) {
      std::bernoulli_distribution keep(density);
      std::vector<uint8_t> mask(1000);
      for (auto& v : mask) v = keep(rng);
      auto runs = mask_to_runs(mask, alphabet);
      for (auto s : runs) REQUIRE(s < alphabet);
      REQUIRE(runs_to_mask(runs, 1000, alphabet) == mask);
    }
  }
  std::vector<uint8_t> mask(100, 0);
  mask[99] = 1;
  auto runs = mask_to_runs(mask, 16);  // 99 pruned: 6 escapes of 15, then 9
  REQUIRE(runs == std::vector<uint32_t>({15, 15, 15, 15, 15, 15, 9}));
  REQUIRE_THROWS_AS(runs_to_mask(runs, 99, 16), Error);
  REQUIRE_THROWS_AS(runs_to_mask({16}, 100, 16), Error);
}

// ---------------------------------------------------------------------------------------------
// Fine-tuning

TEST_CASE("finetune_shared trains codebooks only, assignments fixed, deterministically", "[choi][finetune]") {
  RandomImages ds(64, 1, 32, "mnist");
  auto run = [&](std::vector<float>* leaves_out, FinetuneStats* st) {
    auto model = seeded_model("lenet5", 9);
    auto ctx = make_ctx(*model);
    SharingParams sp;
    sp.weighting = "none";
    auto prob = prepare_sharing(ctx, sp);
    auto sol = solve_sharing(prob, sp, [](const float* x, const float* h, int64_t n, std::vector<double>& c,
                                          std::vector<int32_t>& a) {
      auto q = kmeans1d_dp(x, h, n, 4);
      c = q.centers;
      a = q.assign;
    });
    SharedWeights sw;
    auto leaf = torch::tensor(std::vector<float>(sol.centers[0].begin(), sol.centers[0].end()));
    sw.leaves.push_back(leaf);
    std::vector<torch::Tensor> idx;
    for (size_t l = 0; l < prob.layers.size(); ++l) {
      auto a = torch::tensor(std::vector<int64_t>(sol.assign.begin() + prob.offset[l], sol.assign.begin() + prob.offset[l + 1]));
      idx.push_back(a);
      auto shape = prob.shapes[l];
      sw.layers.push_back({prob.layers[l], [leaf, a, shape] { return leaf.index_select(0, a).view(shape); }});
    }
    FinetuneOptions fo;
    fo.epochs = 2;
    fo.batch_size = 16;
    fo.lr = 1e-3;
    fo.mode = "distill";
    fo.seed = 4;
    *st = finetune_shared(*model, ds, sw, fo);
    leaves_out->assign(leaf.data_ptr<float>(), leaf.data_ptr<float>() + leaf.numel());
    // Weights left in the model = rebuild() of the final codebook: only its 4 values appear, at
    // the original assignment.
    for (size_t l = 0; l < prob.layers.size(); ++l) {
      auto w = model->layers()[prob.layers[l]].weight().detach().view(-1);
      REQUIRE(w.equal(leaf.detach().index_select(0, idx[l])));
    }
    REQUIRE_FALSE(model->is_training());
    REQUIRE(model->tap() == nullptr);
  };
  std::vector<float> a, b;
  FinetuneStats sa, sb;
  run(&a, &sa);
  run(&b, &sb);
  REQUIRE(a == b);
  REQUIRE(sa.steps == 8);
  REQUIRE(sa.last_loss < sa.first_loss);
}

// ---------------------------------------------------------------------------------------------
// Methods

TEST_CASE("kmeans: per-layer 2^bits codebooks, fixed-width indices, file round trip", "[choi][methods]") {
  auto model = seeded_model("lenet5", 11);
  auto orig = model->state();
  auto m = method_with("kmeans", {{"bits", "3"}});
  auto ctx = make_ctx(*model);
  auto recs = m->compress(ctx);
  REQUIRE(recs.size() == model->layers().size());
  double index_bytes = 0;
  for (size_t l = 0; l < recs.size(); ++l) {
    auto w = m->decode(recs[l]);
    auto u = std::get<0>(at::_unique(w.view(-1)));
    REQUIRE(u.numel() <= 8);
    REQUIRE(w.sizes() == model->layers()[l].weight().sizes());
    // Lloyd: the decoded weight is within half a cluster gap of the original... at least closer
    // to its value than to any other codebook value.
    auto x = orig[recs[l].layer + ".weight"].view(-1);
    auto dist = (x.unsqueeze(1) - u.unsqueeze(0)).abs();
    auto mine = (x - w.view(-1)).abs();
    REQUIRE((mine <= std::get<0>(dist.min(1)) + 1e-6).all().item<bool>());
    index_bytes += (double)recs[l].section("idx").bytes.size();
    REQUIRE(recs[l].estimate.fixed_index_bits == 3.0 * (double)w.numel());
  }
  auto acc = roundtrip(*model, *m, recs);
  REQUIRE(acc.bpw_core * acc.n_weights == Approx(sharing_bits(recs)));
  REQUIRE(index_bytes * 8 >= 3.0 * (double)acc.n_weights);
  REQUIRE(index_bytes * 8 <= 3.0 * (double)acc.n_weights + 8 * 64 * recs.size());
}

TEST_CASE("Huffman rate = what the file holds", "[choi][methods]") {
  auto model = seeded_model("lenet5", 12);
  for (std::string coder : {"huffman", "rans"}) {
    auto m = method_with("kmeans", {{"bits", "4"}, {"coder", coder}, {"scope", "network"}, {"solver", "dp"}});
    auto ctx = make_ctx(*model);
    auto recs = m->compress(ctx);
    auto acc = roundtrip(*model, *m, recs);
    // The rate the method optimises (sharing_bits) is the file's bpw_core, to the bit.
    REQUIRE(acc.bpw_core * (double)acc.n_weights == Approx(sharing_bits(recs)).epsilon(1e-12));
    double idx_bits = 0, entropy = 0, n = 0;
    for (auto& r : recs) {
      auto syms = decode_symbols(r.section("idx").bytes);
      uint32_t k = 0;
      for (auto s : syms) k = std::max(k, s + 1);
      entropy += empirical_entropy_bits(syms, k);
      idx_bits += 8.0 * r.section("idx").bytes.size();
      n += syms.size();
    }
    INFO(coder << ": " << idx_bits / n << " bits/index, entropy " << entropy / n);
    REQUIRE(idx_bits >= entropy);
    REQUIRE(idx_bits <= entropy + (coder == "huffman" ? 0.2 * n : 0.02 * n) + 8 * 64 * recs.size());
  }
}

TEST_CASE("uniform_ecsq and ecsq hit target_bpw within 2% of the coded bytes", "[choi][methods]") {
  auto model = seeded_model("lenet5", 13);
  for (std::string method : {"uniform_ecsq", "ecsq"}) {
    for (std::string target : {"1.5", "3"}) {
      auto m = method_with(method, {{"target_bpw", target}, {"weighting", "none"}});
      auto ctx = make_ctx(*model);
      auto recs = m->compress(ctx);
      auto acc = roundtrip(*model, *m, recs);
      INFO(method << " target " << target << " got bpw_core " << acc.bpw_core);
      REQUIRE(std::fabs(acc.bpw_core - std::stod(target)) <= 0.02 * std::stod(target));
    }
  }
}

namespace {
std::vector<uint8_t> record_bytes(const std::vector<LayerRecord>& recs) {
  BbzFile f;
  f.model = "lenet5";
  f.provenance = nlohmann::json::object();
  f.layers = recs;
  return serialize_bbz(f);
}
}  // namespace

TEST_CASE("ecsq / uniform_ecsq: a huge damping gives weighting=none's result", "[choi][methods]") {
  auto calib = std::make_shared<RandomImages>(16, 1, 32, "mnist");
  for (std::string method : {"ecsq", "uniform_ecsq"}) {
    auto run = [&](std::map<std::string, std::string> params) {
      auto model = seeded_model("lenet5", 15);
      params["target_bpw"] = "2";
      params["hessian_images"] = "16";
      if (method == "ecsq") params["hessian_use"] = "both";
      auto m = method_with(method, params);
      auto ctx = make_ctx(*model, calib);
      return m->compress(ctx);
    };
    auto none = run({{"weighting", "none"}});
    // ecsq with the paper's assignment (h in the cost), where the damping matters.
    auto damped = run({{"weighting", "hessian"}, {"hessian_damping", "1e12"}});
    auto plain = run({{"weighting", "hessian"}});
    INFO(method);
    REQUIRE(record_bytes(damped) == record_bytes(none));
    REQUIRE(record_bytes(plain) != record_bytes(none));  // the weighting does change something
  }
}

TEST_CASE("ecsq hessian_use=centres: weighting=none's indices, Hessian-weighted cluster values", "[choi][methods]") {
  auto calib = std::make_shared<RandomImages>(16, 1, 32, "mnist");
  auto run = [&](std::map<std::string, std::string> params) {
    auto model = seeded_model("lenet5", 17);
    params["target_bpw"] = "2";
    params["hessian_images"] = "16";
    auto m = method_with("ecsq", params);
    auto ctx = make_ctx(*model, calib);
    return m->compress(ctx);
  };
  auto none = run({{"weighting", "none"}});
  auto cen = run({{"weighting", "hessian"}});  // the default: hessian_use=centres
  auto both = run({{"weighting", "hessian"}, {"hessian_use", "both"}});
  REQUIRE(none.size() == cen.size());
  bool values_differ = false, both_idx_differ = false;
  for (size_t l = 0; l < none.size(); ++l) {
    REQUIRE(cen[l].section("idx").bytes == none[l].section("idx").bytes);
    REQUIRE(cen[l].section("codebook").bytes.size() == none[l].section("codebook").bytes.size());
    values_differ = values_differ || cen[l].section("codebook").bytes != none[l].section("codebook").bytes;
    both_idx_differ = both_idx_differ || both[l].section("idx").bytes != none[l].section("idx").bytes;
  }
  REQUIRE(values_differ);
  REQUIRE(both_idx_differ);
  // The values are the h-weighted means of the members: recompute them from the Hessian.
  auto model = seeded_model("lenet5", 17);
  SharingParams sp;
  sp.hessian.images = 16;
  sp.hessian.gn_max_classes = 0;  // ecsq's default: sampled labels
  auto ctx = make_ctx(*model, calib);
  auto prob = prepare_sharing(ctx, sp);
  auto m = make_method("ecsq");
  std::map<float, std::pair<double, double>> sums;  // decoded value (unweighted run) -> (sum h, sum h x)
  std::vector<float> vn, vc;
  for (size_t l = 0; l < none.size(); ++l) {
    auto a = m->decode(none[l]).view(-1), b = m->decode(cen[l]).view(-1);
    vn.insert(vn.end(), a.data_ptr<float>(), a.data_ptr<float>() + a.numel());
    vc.insert(vc.end(), b.data_ptr<float>(), b.data_ptr<float>() + b.numel());
  }
  REQUIRE(vn.size() == prob.x.size());
  for (size_t i = 0; i < vn.size(); ++i) {
    sums[vn[i]].first += prob.h[i];
    sums[vn[i]].second += (double)prob.h[i] * prob.x[i];
  }
  for (size_t i = 0; i < vn.size(); ++i) {
    auto& s = sums[vn[i]];
    REQUIRE(vc[i] == Approx(s.second / s.first).margin(1e-6));
  }
}

TEST_CASE("ecsq is deterministic: the same config and seed give the same bytes", "[choi][methods]") {
  auto calib = std::make_shared<RandomImages>(24, 1, 32, "mnist");
  for (std::string est : {"gauss_newton", "adam_sqrt"}) {
    auto run = [&] {
      auto model = seeded_model("lenet5", 16);  // a fresh model, a fresh Hessian (no cache)
      auto m = method_with("ecsq", {{"target_bpw", "2"}, {"hessian", est}, {"hessian_images", "24"},
                                    {"hessian_adam_batch", "8"}, {"hessian_gn_max_classes", "0"}});
      auto ctx = make_ctx(*model, calib, 5);
      return record_bytes(m->compress(ctx));
    };
    INFO(est);
    REQUIRE(run() == run());
  }
}

TEST_CASE("hessian_kmeans: one network codebook, Hessian-weighted, pruning, fp16", "[choi][methods]") {
  auto model = seeded_model("lenet5", 14);
  auto calib = std::make_shared<RandomImages>(16, 1, 32, "mnist");
  auto m = method_with("hessian_kmeans", {{"bits", "3"}, {"hessian_images", "16"}, {"prune_keep", "0.3"},
                                          {"codebook_fp16", "true"}, {"solver", "both"}});
  REQUIRE(m->needs_calibration());
  auto ctx = make_ctx(*model, calib);
  auto recs = m->compress(ctx);
  std::set<float> all;
  int64_t kept = 0, total = 0;
  for (auto& r : recs) {
    auto w = m->decode(r).view(-1);
    total += w.numel();
    for (int64_t i = 0; i < w.numel(); ++i) {
      float v = w[i].item<float>();
      if (v == 0) continue;
      ++kept;
      all.insert(v);
      REQUIRE(half_to_float(float_to_half(v)) == v);
    }
  }
  REQUIRE(all.size() <= 8);  // one codebook for the network
  REQUIRE(std::fabs((double)kept / total - 0.3) < 0.01);
  roundtrip(*model, *m, recs);
  // Corrupt records are errors, not crashes.
  auto bad = recs[0];
  for (auto& s : bad.sections)
    if (s.name == "idx") s.bytes.resize(s.bytes.size() / 2);
  REQUIRE_THROWS_AS(m->decode(bad), Error);
  bad = recs[0];
  for (auto& s : bad.sections)
    if (s.name == "codebook") s.bytes[0] = 200;
  REQUIRE_THROWS_AS(m->decode(bad), Error);
}

TEST_CASE("weight-sharing parameters are validated", "[choi][methods]") {
  auto m = make_method("ecsq");
  REQUIRE_THROWS_AS(ParamBinder::apply(m->params(), {{"prune_keep", "0"}}, "t"), Error);
  REQUIRE_THROWS_AS(ParamBinder::apply(m->params(), {{"target_bpw", "0"}}, "t"), Error);
  REQUIRE_THROWS_AS(ParamBinder::apply(m->params(), {{"scope", "block"}}, "t"), Error);
  REQUIRE_THROWS_AS(ParamBinder::apply(m->params(), {{"hessian", "exact"}}, "t"), Error);
  auto k = make_method("kmeans");
  REQUIRE_THROWS_AS(ParamBinder::apply(k->params(), {{"bits", "17"}}, "t"), Error);
  REQUIRE_THROWS_AS(ParamBinder::apply(k->params(), {{"prune_retrain_epochs", "1"}}, "t"), Error);
}
