#include <catch2/catch.hpp>

#include "common/error.h"
#include "models/registry.h"
#include "quant/activations.h"

using namespace bb;
namespace F = torch::nn::functional;

TEST_CASE("im2col_rows equals torch unfold at sampled positions", "[pq][activations]") {
  torch::manual_seed(1);
  struct Case { int64_t k, s, p, dil; };
  for (Case c : {Case{3, 1, 1, 1}, Case{3, 2, 1, 1}, Case{1, 2, 0, 1}, Case{5, 1, 2, 2}, Case{7, 2, 3, 1}}) {
    auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(5, 4, c.k).stride(c.s).padding(c.p).dilation(c.dil));
    Layer l;
    l.name = "test";
    l.kind = LayerKind::conv;
    l.conv = conv;
    auto g = PatchGeometry::of(l);
    REQUIRE(g.row_size() == 5 * c.k * c.k);
    auto x = torch::randn({3, 5, 11, 13});
    auto full = F::unfold(x, F::UnfoldFuncOptions(c.k).stride(c.s).padding(c.p).dilation(c.dil));  // N x R x L
    const int64_t OH = g.out_h(11), OW = g.out_w(13);
    REQUIRE(full.size(2) == OH * OW);
    std::mt19937_64 rng(7);
    auto pos = sample_patch_positions(x, g, 20, rng);
    REQUIRE(pos.size(0) == 60);
    auto rows = im2col_rows(x, g, pos);
    for (int64_t i = 0; i < pos.size(0); ++i) {
      auto n = pos[i][0].item<int64_t>(), oy = pos[i][1].item<int64_t>(), ox = pos[i][2].item<int64_t>();
      REQUIRE(rows[i].equal(full[n].select(1, oy * OW + ox)));
    }
    // Rows times the weight viewed as C_out x R give the conv's output at those positions.
    auto y = conv->forward(x);
    auto w = conv->weight.view({4, -1});
    auto yr = rows.mm(w.t()) + conv->bias;
    for (int64_t i = 0; i < pos.size(0); ++i) {
      auto n = pos[i][0].item<int64_t>(), oy = pos[i][1].item<int64_t>(), ox = pos[i][2].item<int64_t>();
      REQUIRE(torch::allclose(yr[i], y[n].select(1, oy).select(1, ox), 1e-4, 1e-5));
    }
  }
}

TEST_CASE("im2col_rows rejects positions outside the output", "[pq][activations]") {
  Layer l;
  l.name = "c";
  l.kind = LayerKind::conv;
  l.conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 2, 3).padding(1));
  auto g = PatchGeometry::of(l);
  auto x = torch::randn({1, 2, 4, 4});
  REQUIRE_THROWS_AS(im2col_rows(x, g, torch::tensor({0, 4, 0}, torch::kInt64).view({1, 3})), bb::Error);
  REQUIRE_THROWS_AS(im2col_rows(x, g, torch::tensor({1, 0, 0}, torch::kInt64).view({1, 3})), bb::Error);
  Layer grouped;
  grouped.name = "grouped";
  grouped.kind = LayerKind::conv;
  grouped.conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).groups(2));
  REQUIRE_THROWS_AS(PatchGeometry::of(grouped), bb::Error);
}

TEST_CASE("layer inputs are what the layer sees in a full forward", "[pq][activations]") {
  auto m = make_model("cifar_resnet20");
  m->eval();
  torch::manual_seed(2);
  auto images = torch::randn({10, 3, 32, 32});
  // Reference: record every layer's input during one full forward.
  struct Rec : LayerTap {
    std::map<int, torch::Tensor> in;
    void on_input(int l, const torch::Tensor& x) override { in[l] = x.clone(); }
  } rec;
  {
    torch::NoGradGuard ng;
    m->set_tap(&rec);
    m->forward(images);
    m->set_tap(nullptr);
  }
  for (const char* name : {"conv1", "layer2.0.conv1", "layer3.2.conv2", "linear"}) {
    const int li = m->layer_index(name);
    std::vector<torch::Tensor> got;
    for_each_layer_input(*m, li, images, 4, [&](const torch::Tensor& x, int64_t first) {
      REQUIRE(first == (int64_t)got.size() * 4);
      got.push_back(x.clone());
    });
    REQUIRE(got.size() == 3);
    REQUIRE(torch::allclose(torch::cat(got, 0), rec.in[li], 1e-5, 1e-6));
    REQUIRE(m->tap() == nullptr);  // removed after the early-stopped passes
    auto rows = sample_layer_patches(*m, li, images, 3, 5, 4);
    REQUIRE(rows.size(1) == m->layers()[li].row_size());
    REQUIRE(rows.size(0) == (m->layers()[li].is_conv() ? 30 : 10));
    REQUIRE(rows.equal(sample_layer_patches(*m, li, images, 3, 5, 4)));  // deterministic in the seed
  }
}

TEST_CASE("SequentialInputs gives for_each_layer_input's inputs while the layers change in order", "[activations]") {
  // Two copies of one network: a changes its layers in order, inputs through SequentialInputs
  // (kept stage outputs); b makes the same changes, inputs through for_each_layer_input (every
  // pass from the image). The inputs must be identical, and fewer convs must run in a.
  auto a = make_model("cifar_resnet20"), b = make_model("cifar_resnet20");
  a->eval();
  b->eval();
  {
    torch::NoGradGuard ng;
    for (size_t l = 0; l < a->layers().size(); ++l) b->layers()[l].weight().copy_(a->layers()[l].weight());
  }
  torch::manual_seed(3);
  auto images = torch::randn({10, 3, 32, 32});
  SequentialInputs seq(*a, images, 4);
  const int L = (int)a->layers().size();
  for (int l = 0; l < L; ++l) {
    std::vector<torch::Tensor> got, want;
    seq.for_each(l, [&](const torch::Tensor& x, int64_t first) {
      REQUIRE(first == (int64_t)got.size() * 4);
      got.push_back(x.clone());
    });
    for_each_layer_input(*b, l, images, 4, [&](const torch::Tensor& x, int64_t) { want.push_back(x.clone()); });
    INFO(a->layers()[l].name);
    REQUIRE(got.size() == 3);
    REQUIRE(torch::equal(torch::cat(got, 0), torch::cat(want, 0)));
    REQUIRE(a->tap() == nullptr);
    torch::NoGradGuard ng;
    auto noise = 0.05 * torch::randn_like(a->layers()[l].weight());
    a->layers()[l].weight().add_(noise);
    b->layers()[l].weight().add_(noise);
  }
  // Out of order is an error until reset().
  REQUIRE_THROWS_WITH(seq.for_each(3, [](const torch::Tensor&, int64_t) {}), Catch::Contains("must come in order"));
  seq.reset();
  std::vector<torch::Tensor> got, want;
  seq.for_each(3, [&](const torch::Tensor& x, int64_t) { got.push_back(x.clone()); });
  for_each_layer_input(*b, 3, images, 4, [&](const torch::Tensor& x, int64_t) { want.push_back(x.clone()); });
  REQUIRE(torch::equal(torch::cat(got, 0), torch::cat(want, 0)));

  // The kept stages are really skipped: after the layers up to L-2 were asked for, a change to
  // layer 0 (against the contract, on purpose) does not reach the last layer's inputs.
  SequentialInputs seq2(*a, images, 10);
  for (int l = 0; l < L - 1; ++l) seq2.for_each(l, [](const torch::Tensor&, int64_t) {});
  {
    torch::NoGradGuard ng;
    a->layers()[0].weight().mul_(-3);
  }
  std::vector<torch::Tensor> last, last_b;
  seq2.for_each(L - 1, [&](const torch::Tensor& x, int64_t) { last.push_back(x.clone()); });
  for_each_layer_input(*b, L - 1, images, 10, [&](const torch::Tensor& x, int64_t) { last_b.push_back(x.clone()); });
  REQUIRE(torch::equal(last[0], last_b[0]));
}

TEST_CASE("gram_upper equals X^T X and is exactly symmetric", "[activations]") {
  torch::manual_seed(11);
  for (int64_t D : {5, 128, 300, 1100}) {
    INFO("D " << D);
    auto X = torch::randn({700, D});
    auto G = gram_upper(X);
    REQUIRE(G.sizes() == torch::IntArrayRef({D, D}));
    CHECK(G.equal(G.t()));
    auto ref = torch::mm(X.to(torch::kFloat64).t(), X.to(torch::kFloat64));
    // float32 GEMM over 700 rows: a relative error budget of 1e-5 of the largest entry
    CHECK((G.to(torch::kFloat64) - ref).abs().max().item<double>() <= 1e-5 * ref.abs().max().item<double>());
  }
}
