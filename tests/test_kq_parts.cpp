// KQ's implementation split by concern (src/methods/kq_internal.h): the record format
// (kq_format.cpp), the calibration tap (kq_calib.cpp) and the codebook fine-tuning
// (kq_finetune.cpp), each tested on its own. The method as a whole: tests/test_kq.cpp; its output
// bytes: [golden-methods].
#include <catch2/catch.hpp>

#include "coding/bbz.h"
#include "common/error.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "methods/kq_internal.h"
#include "models/registry.h"

using namespace bb;

namespace {

std::shared_ptr<Model> random_model(uint64_t seed) {
  torch::manual_seed(seed);
  auto m = make_model("cifar_resnet20");
  m->eval();
  return m;
}

void require_same_code(const kq::LayerCode& a, const kq::LayerCode& b) {
  REQUIRE(a.d == b.d);
  REQUIRE(a.k == b.k);
  REQUIRE(a.codebook_bits == b.codebook_bits);
  REQUIRE(a.gain_bits == b.gain_bits);
  REQUIRE(a.scale == b.scale);
  REQUIRE(torch::equal(a.idx, b.idx));
  REQUIRE(torch::equal(a.codebook(), b.codebook()));
  if (a.gain_bits > 0) {
    REQUIRE(torch::equal(a.gains, b.gains));
    REQUIRE(torch::equal(a.gain_idx, b.gain_idx));
  }
  REQUIRE(torch::equal(kq::reconstruct(a), kq::reconstruct(b)));
}

}  // namespace

TEST_CASE("kq format: records round-trip, their file bytes are measured, bad versions rejected", "[kq]") {
  torch::manual_seed(11);
  const std::vector<int64_t> shape = {16, 16, 3, 3};
  auto x = torch::randn({256, 9}) * 0.1;
  for (bool gain_shape : {false, true})
    for (int cb_bits : {6, 32})
      for (const char* coder : {"fixed", "huffman", "rans"}) {
        INFO("gain_shape " << gain_shape << " codebook_bits " << cb_bits << " coder " << coder);
        kq::QuantOptions o;
        o.k = 32;
        o.codebook_bits = cb_bits;
        o.gain_shape = gain_shape;
        o.kmeans_iters = 5;
        o.grid_iters = 2;
        const kq::LayerCode c = kq::quantize_vectors(x, o);
        const LayerRecord rec = kq::encode_record("conv", shape, c, parse_coder(coder));
        REQUIRE(rec.method == "kq");
        REQUIRE(rec.shape == shape);
        require_same_code(c, kq::decode_record(rec));
        // Through a whole file too.
        BbzFile f;
        f.layers.push_back(rec);
        const std::vector<uint8_t> bytes = serialize_bbz(f);
        require_same_code(c, kq::decode_record(parse_bbz(bytes.data(), bytes.size(), "test").layers.at(0)));
        REQUIRE(kq::record_file_bytes(rec) == (int64_t)bytes.size() - (int64_t)serialize_bbz(BbzFile{}).size());
        // Estimates: fixed-width index bits n * ceil(log2 k) (+ gain bits).
        REQUIRE(rec.estimate.fixed_index_bits == 256.0 * (kq::index_width(c.k) + c.gain_bits));
      }
  kq::QuantOptions o;
  o.k = 8;
  LayerRecord rec = kq::encode_record("conv", shape, kq::quantize_vectors(x, o), Coder::fixed);
  for (auto& s : rec.sections)
    if (s.name == "meta") s.bytes[0] = kq::kFormatVersion + 1;
  REQUIRE_THROWS_WITH(kq::decode_record(rec), Catch::Contains("unsupported format version"));
}

TEST_CASE("kq calibration tap: ||X dW^T||^2 = tr(dW H dW^T) on the layers' own inputs", "[kq]") {
  auto model = random_model(5);
  auto calib = open_dataset("cifar10-lossless-1k");
  const int L = (int)model->layers().size();
  // A 3x3 conv with stride 1, one with stride 2, and the linear layer.
  std::vector<int> check;
  for (const char* name : {"layer1.0.conv1", "layer2.0.conv1", "linear"}) {
    const int li = model->layer_index(name);
    REQUIRE(li >= 0);
    check.push_back(li);
  }
  std::vector<bool> wanted(L, false);
  for (int li : check) wanted[li] = true;
  const int64_t images = 6;
  const uint64_t seed = 77;
  kq::InputGrams g;
  {
    torch::NoGradGuard ng;
    g = kq::collect_input_grams(*model, *calib, wanted, images, seed);
  }
  REQUIRE((int)g.H.size() == L);
  for (int i = 0; i < L; ++i) REQUIRE(g.H[i].defined() == wanted[i]);

  // The same images' inputs to the checked layers, captured independently.
  struct Capture : LayerTap {
    std::map<int, std::vector<torch::Tensor>> x;
    void on_input(int li, const torch::Tensor& t) override { x[li].push_back(t.clone()); }
  } cap;
  {
    torch::NoGradGuard ng;
    LoaderOptions lo;
    lo.batch_size = 64;
    model->set_tap(&cap);
    for_each_batch(*calib, sample_indices(calib->size(), images, seed), lo, [&](const Batch& b) { model->forward(b.images); });
    model->set_tap(nullptr);
  }
  torch::manual_seed(9);
  for (int li : check) {
    const Layer& l = model->layers()[li];
    INFO(l.name);
    auto dW = torch::randn(l.weight().sizes()) * 0.01;
    double direct = 0;
    int64_t rows = 0;
    for (const auto& x : cap.x.at(li)) {
      torch::Tensor y;
      if (l.is_conv()) {
        const auto& o = l.conv->options;
        y = torch::conv2d(x, dW, {}, *o.stride(), *c10::get<torch::ExpandingArray<2>>(o.padding()), *o.dilation());
        rows += y.size(0) * y.size(2) * y.size(3);
      } else {
        y = torch::mm(x.reshape({-1, x.size(-1)}), dW.t());
        rows += y.size(0);
      }
      direct += y.to(torch::kFloat64).pow(2).sum().item<double>();
    }
    REQUIRE(g.rows[li] == rows);
    auto d2 = dW.reshape({l.out_features(), -1}).to(torch::kFloat64);
    const double via_h = (torch::mm(d2, g.H[li]) * d2).sum().item<double>();
    REQUIRE(via_h == Approx(direct).epsilon(1e-6));
  }
}

TEST_CASE("kq fine-tuning: indices fixed, codebooks trained and back on their grid", "[kq]") {
  auto model = random_model(6);
  auto calib = open_dataset("cifar10-lossless-1k");
  const auto& layers = model->layers();
  std::vector<kq::LayerCode> codes(layers.size());
  std::vector<kq::LayerCode*> ptrs(layers.size(), nullptr);
  std::vector<kq::LayerCode> before;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i].is_conv() || layers[i].kernel_h() != 3 || i == 0) continue;
    kq::QuantOptions o;
    o.k = 16;
    o.kmeans_iters = 3;
    o.grid_iters = 1;
    o.gain_shape = i % 2 == 1;  // both kinds of code
    codes[i] = kq::quantize_vectors(layers[i].weight().detach().reshape({-1, 9}), o);
    ptrs[i] = &codes[i];
  }
  for (auto& c : codes) before.push_back(c);
  FinetuneOptions fo;
  fo.epochs = 1;
  fo.max_images = 64;
  fo.batch_size = 32;
  fo.lr = 1e-3;
  fo.seed = 3;
  {
    torch::NoGradGuard ng;  // as in compress()
    kq::finetune_codebooks(*model, *calib, ptrs, fo);
  }
  int changed = 0;
  for (size_t i = 0; i < codes.size(); ++i) {
    if (!ptrs[i]) continue;
    INFO(layers[i].name);
    const kq::LayerCode& a = before[i];
    const kq::LayerCode& b = codes[i];
    REQUIRE(torch::equal(a.idx, b.idx));  // indices, hence the index streams and the rate, unchanged
    if (a.gain_bits > 0) {
      REQUIRE(torch::equal(a.gain_idx, b.gain_idx));
      REQUIRE(torch::equal(a.gains, b.gains));
    }
    REQUIRE(b.codebook_q.scalar_type() == torch::kInt32);
    REQUIRE(b.codebook_q.min().item<int>() >= -(1 << (b.codebook_bits - 1)));
    REQUIRE(b.codebook_q.max().item<int>() <= (1 << (b.codebook_bits - 1)) - 1);
    changed += !torch::equal(a.codebook(), b.codebook());
    const Coder fixed = Coder::fixed;
    REQUIRE(kq::encode_record(layers[i].name, layers[i].weight().sizes().vec(), b, fixed).section("idx").bytes ==
            kq::encode_record(layers[i].name, layers[i].weight().sizes().vec(), a, fixed).section("idx").bytes);
  }
  CHECK(changed > 0);
  // Nothing quantized: an error, not a silent no-op.
  std::vector<kq::LayerCode*> none(layers.size(), nullptr);
  REQUIRE_THROWS_WITH(kq::finetune_codebooks(*model, *calib, none, fo), Catch::Contains("no layer is quantized"));
}
