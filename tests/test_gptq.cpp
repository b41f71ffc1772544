// GPTQ (src/quant/gptq.h, src/methods/gptq.cpp): the blocked loop against the plain unblocked
// reference (identical codes), error compensation against round-to-nearest on the same grid, the
// float64 input Gram against explicit im2col rows, and the method's record round trip. Its output
// bytes: [golden-methods].
#include <catch2/catch.hpp>

#include "coding/bbz.h"
#include "methods/method.h"
#include "quant/activations.h"
#include "quant/gptq.h"
#include "smoke_files.h"

#include <cmath>
#include <omp.h>
#include <cstring>

using namespace bb;

namespace {

// A random layer (rows x D) and a correlated, non-isotropic H = X^T X (float64), with `dead`
// columns never excited.
void random_layer(int64_t rows, int64_t D, int64_t dead, uint64_t seed, torch::Tensor& W, torch::Tensor& H) {
  torch::manual_seed(seed);
  W = torch::randn({rows, D}, torch::kFloat64) * 0.1;
  auto X = torch::mm(torch::randn({4 * D, D}, torch::kFloat64), torch::randn({D, D}, torch::kFloat64) * 0.3 +
                                                                       torch::eye(D, torch::kFloat64));
  X = X * torch::rand({1, D}, torch::kFloat64).mul(3).add(0.1);
  if (dead > 0) X.slice(1, D - dead, D).zero_();
  H = torch::mm(X.t(), X);
}

// Every output position of every image of x (N x C x H x W), through the project's im2col rows,
// in float64.
torch::Tensor all_rows(const torch::Tensor& x, const PatchGeometry& g) {
  std::vector<int64_t> pos;
  for (int64_t n = 0; n < x.size(0); ++n)
    for (int64_t oy = 0; oy < g.out_h(x.size(2)); ++oy)
      for (int64_t ox = 0; ox < g.out_w(x.size(3)); ++ox) pos.insert(pos.end(), {n, oy, ox});
  return im2col_rows(x, g, torch::tensor(pos, torch::kInt64).view({-1, 3})).to(torch::kFloat64);
}

double rtn_error(const torch::Tensor& W, const torch::Tensor& H, const GptqGrid& g) {
  auto Q = torch::empty_like(W);
  for (int64_t r = 0; r < W.size(0); ++r)
    for (int64_t j = 0; j < W.size(1); ++j) Q[r][j] = g.value(r, g.code(r, W[r][j].item<double>()));
  return gptq_output_error(Q - W, H, torch::Tensor());
}

}  // namespace

TEST_CASE("gptq: the blocked loop gives the codes of the unblocked reference", "[gptq]") {
  torch::Tensor W, H;
  random_layer(24, 200, 3, 11, W, H);
  for (bool act_order : {false, true})
    for (int64_t block : {1, 32, 128, 500})
      for (int grid_kind : {0, 1}) {
        INFO("act_order " << act_order << " block " << block << " grid " << grid_kind);
        GptqOptions o;
        o.act_order = act_order;
        o.block_size = block;
        o.damp = 0.01;
        const GptqGrid g = grid_kind == 0 ? gptq_minmax_grid(W, 3, true) : gptq_step_grid(W.size(0), 0.05, -20, 20);
        GptqResult a = gptq_quantize(W, H, g, o), b = gptq_quantize_ref(W, H, g, o);
        REQUIRE(torch::equal(a.codes, b.codes));
        REQUIRE(torch::allclose(a.Q, b.Q, 0, 0));
        // The codes are in range and Q is their value on the grid.
        REQUIRE(a.codes.min().item<int>() >= g.qmin);
        REQUIRE(a.codes.max().item<int>() <= g.qmax);
        REQUIRE(a.Q[5][7].item<double>() == g.value(5, a.codes[5][7].item<int>()));
        // Dead columns (diag H = 0) are quantized from 0.
        for (int64_t j = 197; j < 200; ++j) REQUIRE(a.Q[3][j].item<double>() == g.value(3, g.code(3, 0.0)));
      }
}

TEST_CASE("gptq: the factor is the upper Cholesky factor of (H + damp*I)^-1", "[gptq]") {
  // gptq_factor takes one Cholesky factorisation and a triangular inverse; the construction it
  // replaced (GPTQ's reference code: Cholesky, cholesky_inverse, Cholesky) must give the same U.
  torch::Tensor W, H;
  random_layer(4, 300, 2, 17, W, H);
  for (bool act_order : {false, true}) {
    INFO("act_order " << act_order);
    GptqOptions o;
    o.act_order = act_order;
    o.damp = 0.01;
    const GptqFactor f = gptq_factor(H, o);
    // The old construction, on the same permuted, dead-patched, damped H.
    auto Hd = H.clone();
    Hd.diagonal().masked_fill_(Hd.diagonal().eq(0), 1.0);
    auto perm = torch::tensor(f.order, torch::kInt64);
    Hd = Hd.index_select(0, perm).index_select(1, perm);
    Hd.diagonal().add_(o.damp * Hd.diagonal().mean().item<double>());
    auto U_old = torch::linalg_cholesky(torch::cholesky_inverse(torch::linalg_cholesky(Hd)), /*upper=*/true);
    REQUIRE(f.U.scalar_type() == torch::kFloat64);
    REQUIRE(torch::equal(f.U, f.U.triu()));
    REQUIRE(f.U.diagonal().min().item<double>() > 0);
    const double rel = (f.U - U_old).abs().max().item<double>() / U_old.abs().max().item<double>();
    INFO("max |U - U_old| / max |U_old| = " << rel);
    REQUIRE(rel < 1e-10);
    // U^T U is the inverse of the damped H.
    REQUIRE(torch::allclose(torch::mm(torch::mm(f.U.t(), f.U), Hd), torch::eye(300, torch::kFloat64), 0, 1e-8));
  }
  // A damped H that is not positive definite is an error.
  GptqOptions o;
  o.damp = 0;
  REQUIRE_THROWS(gptq_factor(-H, o));
}

TEST_CASE("gptq: error compensation lowers the layer-output error of round-to-nearest", "[gptq]") {
  torch::Tensor W, H;
  random_layer(32, 96, 0, 5, W, H);
  for (int bits : {2, 3, 4}) {
    const GptqGrid g = gptq_minmax_grid(W, bits, true);
    GptqOptions o;
    o.act_order = true;
    GptqResult r = gptq_quantize(W, H, g, o);
    const double e_gptq = gptq_output_error(r.Q - W, H, torch::Tensor()), e_rtn = rtn_error(W, H, g);
    INFO("bits " << bits << ": GPTQ " << e_gptq << ", round-to-nearest " << e_rtn);
    REQUIRE(e_gptq < 0.8 * e_rtn);
  }
  // The row scale weights each row's error by s^2.
  auto dW = torch::randn({4, 96}, torch::kFloat64);
  auto s = torch::tensor({1.0, 2.0, 0.0, 0.5}, torch::kFloat64);
  double want = 0;
  for (int r = 0; r < 4; ++r)
    want += s[r].item<double>() * s[r].item<double>() * torch::dot(torch::mv(H, dW[r]), dW[r]).item<double>();
  REQUIRE(gptq_output_error(dW, H, s) == Approx(want).epsilon(1e-10));
}

TEST_CASE("gptq: the min-max grid spans each row's range with 0 a level", "[gptq]") {
  auto W = torch::tensor({{-1.0, 0.5, 2.0}, {0.25, 0.5, 1.0}, {0.0, 0.0, 0.0}}, torch::kFloat64);
  const GptqGrid g = gptq_minmax_grid(W, 2, false);
  REQUIRE(g.qmax == 3);
  REQUIRE(g.scale[0] == Approx(1.0));
  REQUIRE(g.zero[0] == 1);
  REQUIRE(g.scale[1] == Approx(1.0 / 3));  // range [0, 1]: 0 included
  REQUIRE(g.zero[1] == 0);
  REQUIRE(g.scale[2] == Approx(2.0 / 3));  // constant row: [-1, 1]
  REQUIRE(g.value(0, g.code(0, 2.0)) == Approx(2.0));
  REQUIRE(g.value(0, g.code(0, 0.0)) == 0.0);
  REQUIRE(g.code(0, 100.0) == 3);  // clamped
}

TEST_CASE("gptq: the input Gram is X^T X of every im2col row, in float64", "[gptq]") {
  torch::manual_seed(2);
  PatchGeometry g;
  g.conv = true;
  g.in_channels = 3;
  g.kh = g.kw = 3;
  g.sh = g.sw = 2;
  g.ph = g.pw = 1;
  auto x = torch::randn({5, 3, 9, 7});
  GptqGram gram(g);
  gram.add(x.slice(0, 0, 2));
  gram.add(x.slice(0, 2, 5));
  auto P = all_rows(x, g);
  REQUIRE(gram.rows == P.size(0));
  REQUIRE(gram.H.scalar_type() == torch::kFloat64);
  REQUIRE(torch::allclose(gram.H, torch::mm(P.t(), P), 1e-5, 1e-5));
}

TEST_CASE("gptq: with a reference input the Gram also holds B = X^T (X_ref - X) W^T; the FP target fits X_ref W^T", "[gptq]") {
  torch::manual_seed(5);
  PatchGeometry g;
  g.conv = true;
  g.in_channels = 3;
  g.kh = g.kw = 3;
  g.ph = g.pw = 1;
  auto x_ref = torch::randn({6, 3, 8, 8});
  auto x = x_ref + 0.3 * torch::randn({6, 3, 8, 8});  // the quantized network's input: perturbed
  auto W = torch::randn({4, 27}, torch::kFloat64);
  GptqGram both(g), plain(g);
  REQUIRE_THROWS_AS(both.add(x, x_ref), Error);  // no weight set
  both.weight = W;
  both.add(x.slice(0, 0, 4), x_ref.slice(0, 0, 4));
  both.add(x.slice(0, 4, 6), x_ref.slice(0, 4, 6));
  plain.add(x.slice(0, 0, 4));
  plain.add(x.slice(0, 4, 6));
  REQUIRE(!plain.B.defined());
  REQUIRE(both.rows == plain.rows);
  auto P = all_rows(x, g), Pr = all_rows(x_ref, g);
  REQUIRE(torch::equal(both.H, plain.H));
  REQUIRE(torch::allclose(both.H, torch::mm(P.t(), P), 1e-5, 1e-3));
  REQUIRE(torch::allclose(both.B, torch::mm(P.t(), torch::mm(Pr - P, W.t())), 1e-5, 1e-3));
  REQUIRE_THROWS_AS(both.add(x, x_ref.slice(0, 0, 2)), Error);
  // The same bytes with any thread count.
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  GptqGram one(g);
  one.weight = W;
  one.add(x, x_ref);
  at::set_num_threads(3);
  GptqGram three(g);
  three.weight = W;
  three.add(x, x_ref);
  at::set_num_threads(threads);
  REQUIRE(torch::equal(one.B, three.B));
  REQUIRE(torch::equal(one.H, three.H));

  // No ridge: the least-squares solution, its residual orthogonal to X, its error below W's.
  auto V = gptq_fp_target(W, both.H, both.B, 0);
  auto want = torch::linalg::solve(both.H, torch::mm(torch::mm(P.t(), Pr), W.t()), true).t();
  REQUIRE(torch::allclose(V, want, 1e-6, 1e-6));
  auto R = torch::mm(Pr, W.t()) - torch::mm(P, V.t());
  REQUIRE(torch::mm(P.t(), R).abs().max().item<double>() < 1e-5 * torch::mm(P.t(), torch::mm(Pr, W.t())).abs().max().item<double>());
  const double e_v = R.pow(2).sum().item<double>(), e_w = (torch::mm(Pr, W.t()) - torch::mm(P, W.t())).pow(2).sum().item<double>();
  REQUIRE(e_v < e_w);
  // Inputs equal to the FP ones (B = 0): V = W whatever the ridge.
  GptqGram same(g);
  same.weight = W;
  same.add(x, x);
  REQUIRE(same.B.abs().max().item<double>() == 0);
  REQUIRE(torch::equal(gptq_fp_target(W, same.H, same.B, 0.01), W));
  // The ridge pulls V toward W.
  auto V1 = gptq_fp_target(W, both.H, both.B, 1.0);
  REQUIRE((V1 - W).norm().item<double>() < (V - W).norm().item<double>());
}

TEST_CASE("gptq: the float32 Gram is P^T P, symmetric, and the same with any thread count", "[gptq]") {
  torch::manual_seed(4);
  auto P = torch::randn({20000, 800});  // > 1 row slab (8192), > 1 column block (384)
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  auto G1 = gptq_gram_f32(P);
  at::set_num_threads(3);
  auto G3 = gptq_gram_f32(P);
  at::set_num_threads(threads);
  auto G = gptq_gram_f32(P);
  // Its tasks set a team size of 1 for their own nested regions only: the caller keeps its threads.
  REQUIRE(at::get_num_threads() == threads);
  REQUIRE(at::get_num_threads() == omp_get_max_threads());
  REQUIRE(torch::equal(G1, G3));
  REQUIRE(torch::equal(G1, G));
  REQUIRE(torch::equal(G, G.t()));
  auto P64 = P.to(torch::kFloat64);
  REQUIRE(torch::allclose(G.to(torch::kFloat64), torch::mm(P64.t(), P64), 1e-4, 1e-2));
}

TEST_CASE("gptq: decode rebuilds the weights the method quantized, from the record's bytes", "[gptq]") {
  const BbzFile& f = bbtest::smoke_file("gptq");
  auto m = make_method("gptq");
  REQUIRE(!f.layers.empty());
  for (const auto& rec : f.layers) {
    INFO(rec.layer);
    auto w = m->decode(rec);
    REQUIRE(w.sizes().vec() == rec.shape);
    // The smoke settings use the step grid: every value is an integer multiple of the stored step.
    const auto& grid = rec.section("grid").bytes;
    REQUIRE(grid.size() == 13);
    REQUIRE(grid[0] == 1);
    float step;
    std::memcpy(&step, grid.data() + 1, 4);
    REQUIRE(step > 0);
    auto k = w.to(torch::kFloat64) / step;
    REQUIRE(torch::allclose(k, k.round(), 0, 1e-4));
    // Truncated levels are an error, not a crash.
    LayerRecord bad = rec;
    for (auto& s : bad.sections)
      if (s.name == "levels") s.bytes.resize(s.bytes.size() / 2);
    REQUIRE_THROWS(m->decode(bad));
  }
}

TEST_CASE("gptq: a sequential target_bpw run is brought back to its target; parallel runs drop fp_target", "[gptq]") {
  // The allocation chooses the steps on the parallel H; re-quantized on the sequential H with FP
  // targets the rate moves (R32 at 1.5: -2.1%), and the common step factor brings it back. The
  // smoke settings (target_bpw=2) run the default sequential, fp_target path.
  const bbtest::SmokeRun& run = bbtest::smoke_run("gptq");
  const std::string why = run.outcome.rate_target.at("why").get<std::string>();
  INFO(why);
  REQUIRE(why.find("Sequential re-quantization (FP targets)") != std::string::npos);
  REQUIRE(std::fabs(run.outcome.rate_target.at("relative_error").get<double>()) < 0.002);

  // Parallel: the inputs are the FP ones (V = W), so fp_target is dropped and both spellings are
  // one run.
  auto a = make_method("gptq"), b = make_method("gptq");
  ParamBinder::apply(a->params(), {{"sequential", "false"}}, "gptq");
  ParamBinder::apply(b->params(), {{"sequential", "false"}, {"fp_target", "false"}}, "gptq");
  REQUIRE(ParamBinder::to_json(a->params()) == ParamBinder::to_json(b->params()));
  REQUIRE(ParamBinder::to_json(a->params()).at("fp_target") == false);
}
