#include "quant/activations.h"
#include "common/error.h"
#include "data/loader.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace bb {

PatchGeometry PatchGeometry::of(const Layer& l) {
  PatchGeometry g;
  if (!l.is_conv()) {
    g.in_channels = l.weight().size(1);
    return g;
  }
  const auto& o = l.conv.ptr()->options;
  BB_CHECK(o.groups() == 1, "layer '", l.name, "': grouped convolutions (groups=", o.groups(), ") are not supported");
  BB_CHECK(c10::get_if<torch::enumtype::kZeros>(&o.padding_mode()), "layer '", l.name,
           "': only zero padding is supported");
  const auto* pad = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  BB_CHECK(pad, "layer '", l.name, "': only numeric padding is supported (not 'same'/'valid')");
  g.conv = true;
  g.in_channels = o.in_channels();
  g.kh = (*o.kernel_size())[0];
  g.kw = (*o.kernel_size())[1];
  g.sh = (*o.stride())[0];
  g.sw = (*o.stride())[1];
  g.ph = (**pad)[0];
  g.pw = (**pad)[1];
  g.dh = (*o.dilation())[0];
  g.dw = (*o.dilation())[1];
  return g;
}

torch::Tensor im2col_rows(const torch::Tensor& x_in, const PatchGeometry& g, const torch::Tensor& pos_in) {
  auto x = x_in.to(torch::kFloat32).contiguous();
  auto pos = pos_in.to(torch::kInt64).contiguous();
  const int64_t n = pos.size(0), R = g.row_size();
  if (!g.conv) {
    BB_CHECK(x.dim() == 2 && x.size(1) == g.in_channels, "im2col_rows: linear input must be N x ", g.in_channels,
             ", got ", x.sizes());
    BB_CHECK(pos.dim() == 2 && pos.size(1) >= 1, "im2col_rows: positions must be n x 1");
    return x.index_select(0, pos.select(1, 0));
  }
  BB_CHECK(x.dim() == 4 && x.size(1) == g.in_channels, "im2col_rows: conv input must be N x ", g.in_channels,
           " x H x W, got ", x.sizes());
  BB_CHECK(pos.dim() == 2 && pos.size(1) == 3, "im2col_rows: positions must be n x 3 (image, oy, ox)");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = g.out_h(H), OW = g.out_w(W);
  auto out = torch::zeros({n, R}, torch::kFloat32);
  const float* xp = x.data_ptr<float>();
  const int64_t* pp = pos.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t img = pp[3 * i], oy = pp[3 * i + 1], ox = pp[3 * i + 2];
    BB_CHECK(img >= 0 && img < N && oy >= 0 && oy < OH && ox >= 0 && ox < OW, "im2col_rows: position (", img, ", ",
             oy, ", ", ox, ") outside ", N, " x ", OH, " x ", OW);
  }
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t img = pp[3 * i], y0 = pp[3 * i + 1] * g.sh - g.ph, x0 = pp[3 * i + 2] * g.sw - g.pw;
      float* row = op + i * R;
      for (int64_t c = 0; c < C; ++c) {
        const float* plane = xp + (img * C + c) * H * W;
        for (int64_t ky = 0; ky < g.kh; ++ky) {
          const int64_t yy = y0 + ky * g.dh;
          for (int64_t kx = 0; kx < g.kw; ++kx, ++row) {
            const int64_t xx = x0 + kx * g.dw;
            if (yy >= 0 && yy < H && xx >= 0 && xx < W) *row = plane[yy * W + xx];
          }
        }
      }
    }
  });
  return out;
}

torch::Tensor sample_patch_positions(const torch::Tensor& x, const PatchGeometry& g, int64_t rows_per_image,
                                     std::mt19937_64& rng) {
  BB_CHECK(rows_per_image >= 1, "sample_patch_positions: rows_per_image must be >= 1");
  const int64_t N = x.size(0);
  if (!g.conv) return torch::arange(N, torch::kInt64).unsqueeze(1);
  BB_CHECK(x.dim() == 4, "sample_patch_positions: conv input must be 4-D, got ", x.sizes());
  const int64_t OH = g.out_h(x.size(2)), OW = g.out_w(x.size(3));
  BB_CHECK(OH > 0 && OW > 0, "sample_patch_positions: empty output for input ", x.sizes());
  auto pos = torch::empty({N * rows_per_image, 3}, torch::kInt64);
  auto* p = pos.data_ptr<int64_t>();
  for (int64_t img = 0; img < N; ++img)
    for (int64_t r = 0; r < rows_per_image; ++r, p += 3) {
      const uint64_t cell = rng() % (uint64_t)(OH * OW);
      p[0] = img;
      p[1] = (int64_t)cell / OW;
      p[2] = (int64_t)cell % OW;
    }
  return pos;
}

namespace {
// Stops at `target`'s input; supplies stage `kept` from the kept output (and stands in for the
// stages before it, whose outputs nothing reads once `kept`'s is supplied); keeps the output of
// every later stage that completes.
struct StageCacheTap : LayerTap {
  int target = 0;
  std::function<void(const torch::Tensor&)> fn;
  torch::Tensor* out = nullptr;
  int* kept = nullptr;
  torch::Tensor precomputed_stage(int s) override { return s <= *kept ? *out : torch::Tensor(); }
  void on_stage_output(int s, const torch::Tensor& y) override {
    if (s > *kept) {
      *out = y;
      *kept = s;
    }
  }
  void on_input(int layer, const torch::Tensor& x) override {
    if (layer != target) return;
    fn(x);
    throw StopForward{};
  }
};
}  // namespace

SequentialInputs::SequentialInputs(Model& model, const torch::Tensor& images, int64_t batch_size)
    : model_(model), images_(images), batch_size_(batch_size) {
  BB_CHECK(batch_size >= 1, "layer inputs: batch_size must be >= 1");
  reset();
}

void SequentialInputs::reset() {
  const int64_t nb = (images_.size(0) + batch_size_ - 1) / batch_size_;
  out_.assign(nb, torch::Tensor());
  stage_.assign(nb, -1);
  last_layer_ = -1;
}

void SequentialInputs::for_each(int layer, const std::function<void(const torch::Tensor& x, int64_t first)>& fn) {
  BB_CHECK(layer >= 0 && layer < (int)model_.layers().size(), "layer inputs: no layer ", layer, " in ",
           model_.arch());
  BB_CHECK(layer >= last_layer_, "SequentialInputs: layer ", layer, " asked for after layer ", last_layer_,
           " (the layers must come in order; reset() first)");
  last_layer_ = layer;
  torch::NoGradGuard ng;
  const int64_t N = images_.size(0);
  StageCacheTap tap;
  tap.target = layer;
  TapScope guard(model_, &tap);
  for (int64_t s = 0, b = 0; s < N; s += batch_size_, ++b) {
    const int64_t e = std::min(N, s + batch_size_);
    tap.out = &out_[b];
    tap.kept = &stage_[b];
    bool reached = false;
    tap.fn = [&](const torch::Tensor& x) {
      reached = true;
      fn(x, s);
    };
    try {
      model_.forward(images_.slice(0, s, e));
    } catch (const StopForward&) {
    }
    BB_CHECK(reached, "layer inputs: layer '", model_.layers()[layer].name, "' was not reached by forward()");
  }
}


void for_each_layer_input(Model& model, int layer, const torch::Tensor& images, int64_t batch_size,
                          const std::function<void(const torch::Tensor& x, int64_t first)>& fn) {
  // A fresh SequentialInputs keeps nothing yet: every pass runs from the image.
  SequentialInputs(model, images, batch_size).for_each(layer, fn);
}

std::vector<std::vector<torch::Tensor>> capture_layer_inputs(Model& model, const torch::Tensor& images,
                                                             int64_t batch_size) {
  struct Tap : LayerTap {
    std::vector<std::vector<torch::Tensor>> inputs;
    void on_input(int l, const torch::Tensor& x) override { inputs[l].push_back(x.detach().clone()); }
  } tap;
  tap.inputs.resize(model.layers().size());
  torch::NoGradGuard ng;
  TapScope scope(model, &tap);
  for (int64_t s = 0; s < images.size(0); s += batch_size)
    model.forward(images.slice(0, s, std::min(images.size(0), s + batch_size)));
  return std::move(tap.inputs);
}

torch::Tensor sample_layer_patches(SequentialInputs& inputs, const Layer& layer, int index, int64_t rows_per_image,
                                   uint64_t seed) {
  const PatchGeometry g = PatchGeometry::of(layer);
  std::mt19937_64 rng(seed);
  std::vector<torch::Tensor> parts;
  inputs.for_each(index, [&](const torch::Tensor& x, int64_t) {
    parts.push_back(im2col_rows(x, g, sample_patch_positions(x, g, rows_per_image, rng)));
  });
  return torch::cat(parts, 0);
}

torch::Tensor sample_layer_patches(Model& model, int layer, const torch::Tensor& images, int64_t rows_per_image,
                                   uint64_t seed, int64_t batch_size) {
  SequentialInputs inputs(model, images, batch_size);  // nothing kept yet: every pass runs from the image
  return sample_layer_patches(inputs, model.layers()[layer], layer, rows_per_image, seed);
}

torch::Tensor load_calibration_images(const Dataset& ds, int64_t n, bool augment, uint64_t seed) {
  BB_CHECK(n >= 1, "calibration: needs at least one image");
  BB_CHECK(ds.size() > 0, "calibration: dataset '", ds.name(), "' is empty");
  return load_batch(ds, sample_indices(ds.size(), n, seed), augment, seed).images;
}

torch::Tensor gram_upper(const torch::Tensor& X) {
  torch::NoGradGuard ng;
  BB_CHECK(X.dim() == 2, "gram_upper: expects an n x D matrix, got ", X.sizes());
  const int64_t D = X.size(1), panel = std::max<int64_t>(128, (D + 7) / 8);
  auto G = torch::empty({D, D}, X.options());
  for (int64_t i = 0; i < D; i += panel) {
    const int64_t e = std::min(D, i + panel);
    // Rows i..e of G from column i on: X[:, i:e]^T X[:, i:], one GEMM on strided views.
    G.slice(0, i, e).slice(1, i, D).copy_(torch::mm(X.slice(1, i, e).t(), X.slice(1, i, D)));
  }
  // Mirror the strict upper triangle (the diagonal blocks are taken from their upper half too, so
  // the result is symmetric bit for bit).
  auto upper = G.triu();
  return upper + upper.triu(1).t();
}

}  // namespace bb
