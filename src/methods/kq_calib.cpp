// KQ's calibration tap (alloc_proxy=output|output_prebn): the Gram matrix of each allocated
// layer's inputs on calibration images, from which a candidate's layer-output error is
// tr(dW H dW^T) / rows. The BN scale the output proxy applies is read from the model
// (Model::bn_scale) where the distortion is computed (kq.cpp).
#include "methods/kq_internal.h"

#include "common/error.h"
#include "data/loader.h"
#include "quant/activations.h"

namespace bb {
namespace kq {
namespace {

// Layer-output error statistics: H = sum over calibration positions of x x^T, x the layer's
// input patch (im2col row for convs), so ||X dW^T||^2 = tr(dW H dW^T).
struct InputGramTap : LayerTap {
  const Model* model;
  std::vector<bool> wanted;
  std::vector<torch::Tensor> H;  // float64
  std::vector<int64_t> rows;
  InputGramTap(const Model& m, std::vector<bool> w) : model(&m), wanted(std::move(w)), H(wanted.size()), rows(wanted.size(), 0) {}
  void on_input(int li, const torch::Tensor& x) override {
    if (!wanted[li]) return;
    const Layer& l = model->layers()[li];
    torch::Tensor P;
    if (l.is_conv()) {
      const auto& o = l.conv->options;
      auto ks = o.kernel_size();
      auto st = o.stride();
      auto dl = o.dilation();
      BB_CHECK(c10::holds_alternative<torch::ExpandingArray<2>>(o.padding()), "kq: layer '", l.name,
               "' uses symbolic padding, not supported by the output proxy");
      auto pd = c10::get<torch::ExpandingArray<2>>(o.padding());
      auto cols = torch::nn::functional::unfold(
          x, torch::nn::functional::UnfoldFuncOptions(torch::ExpandingArray<2>({ks->at(0), ks->at(1)}))
                 .dilation(torch::ExpandingArray<2>({dl->at(0), dl->at(1)}))
                 .padding(torch::ExpandingArray<2>({pd->at(0), pd->at(1)}))
                 .stride(torch::ExpandingArray<2>({st->at(0), st->at(1)})));  // N x D x L
      P = cols.transpose(1, 2).reshape({-1, cols.size(1)});
    } else {
      P = x.reshape({-1, x.size(-1)});
    }
    auto h = gram_upper(P).to(torch::kFloat64);
    H[li] = H[li].defined() ? H[li] + h : h;
    rows[li] += P.size(0);
  }
};

}  // namespace

InputGrams collect_input_grams(Model& model, const Dataset& calib, const std::vector<bool>& wanted, int64_t images,
                               uint64_t seed) {
  InputGramTap st(model, wanted);
  auto idx = sample_indices(calib.size(), images, seed);
  LoaderOptions lo;
  lo.batch_size = 64;
  model.set_tap(&st);
  try {
    for_each_batch(calib, idx, lo, [&](const Batch& b) { model.forward(b.images); });
  } catch (...) {
    model.set_tap(nullptr);
    throw;
  }
  model.set_tap(nullptr);
  InputGrams g;
  g.H = std::move(st.H);
  g.rows = std::move(st.rows);
  return g;
}

}  // namespace kq
}  // namespace bb
