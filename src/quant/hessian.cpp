#include "quant/hessian.h"
#include "coding/layer_cache.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/log.h"
#include "data/loader.h"

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>

namespace bb {
namespace {

namespace F = torch::nn::functional;

// Records each layer's input and output during one forward pass.
struct CaptureTap : LayerTap {
  std::vector<torch::Tensor> in, out;
  explicit CaptureTap(size_t n) : in(n), out(n) {}
  void on_input(int l, const torch::Tensor& x) override { in[l] = x.detach(); }
  torch::Tensor on_output(int l, const torch::Tensor& x, torch::Tensor y) override {
    BB_CHECK(!out[l].defined(), "hessian: layer ", l, " runs twice in one forward pass (unsupported)");
    out[l] = y;
    return y;
  }
};

// Makes the layer weights require grad for a scope.
struct RequiresGradGuard {
  std::vector<torch::Tensor> w;
  std::vector<bool> was;
  explicit RequiresGradGuard(const Model& m) {
    for (auto& l : m.layers()) {
      w.push_back(l.weight());
      was.push_back(l.weight().requires_grad());
      l.weight().requires_grad_(true);
    }
  }
  ~RequiresGradGuard() {
    for (size_t i = 0; i < w.size(); ++i) w[i].requires_grad_(was[i]);
  }
};

// sum over images n of (dL_n/dW)^2 for one layer, from its input x and the gradient gy of the
// (per-image separable) loss w.r.t. its output.
torch::Tensor per_image_sq_grad_sum(const Layer& layer, const torch::Tensor& x, const torch::Tensor& gy) {
  if (!layer.is_conv()) {
    BB_CHECK(x.dim() == 2 && gy.dim() == 2, "hessian: linear layer '", layer.name, "' with non-2-D input");
    // (g_n x_n^T)^2 summed over n = (g^2)^T (x^2)
    return gy.square().t().mm(x.square());
  }
  const auto& o = layer.conv->options;
  BB_CHECK(o.groups() == 1, "hessian: grouped conv '", layer.name, "' is not supported by per-image gradients; use estimator=hutchinson");
  const auto* pad = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  BB_CHECK(pad, "hessian: conv '", layer.name, "' uses 'same'/'valid' padding (unsupported by per-image gradients)");
  BB_CHECK(c10::get_if<torch::enumtype::kZeros>(&o.padding_mode()), "hessian: conv '", layer.name, "' uses non-zero padding mode");
  const int64_t N = x.size(0), Cout = gy.size(1);
  auto unf = F::unfold(x, F::UnfoldFuncOptions(o.kernel_size()).dilation(o.dilation()).padding(*pad).stride(o.stride()));
  const int64_t R = unf.size(1), L = unf.size(2);
  BB_CHECK(gy.size(2) * gy.size(3) == L, "hessian: conv '", layer.name, "' output size mismatch");
  auto g = gy.reshape({N, Cout, L});
  // Per-image gradients N x Cout x R, in chunks of images to bound memory.
  const int64_t chunk = std::max<int64_t>(1, (int64_t)(1 << 24) / std::max<int64_t>(1, Cout * R));
  torch::Tensor acc = torch::zeros({Cout, R});
  for (int64_t s = 0; s < N; s += chunk) {
    int64_t e = std::min(N, s + chunk);
    auto pg = torch::bmm(g.slice(0, s, e), unf.slice(0, s, e).transpose(1, 2));
    acc += pg.square().sum(0);
  }
  return acc.view(layer.weight().sizes());
}

}  // namespace

void HessianParams::validate() const {
  BB_CHECK(estimator == "gauss_newton" || estimator == "empirical_fisher" || estimator == "hutchinson" ||
               estimator == "adam_sqrt",
           "hessian: estimator must be gauss_newton, empirical_fisher, hutchinson or adam_sqrt, got '", estimator, "'");
  BB_CHECK(images >= 1, "hessian: images must be >= 1, got ", images);
  BB_CHECK(batch_size >= 1, "hessian: batch_size must be >= 1, got ", batch_size);
  BB_CHECK(gn_max_classes >= 0, "hessian: gn_max_classes must be >= 0");
  BB_CHECK(gn_samples >= 1, "hessian: gn_samples must be >= 1");
  BB_CHECK(hutchinson_probes >= 1, "hessian: hutchinson_probes must be >= 1");
  BB_CHECK(adam_batch >= 1, "hessian: adam_batch must be >= 1");
}

std::string HessianParams::key() const {
  std::string k = "hessian-v1 estimator=" + estimator + " images=" + std::to_string(images) +
                  " batch=" + std::to_string(batch_size) + " seed=" + std::to_string(seed);
  if (estimator == "gauss_newton") k += " gn_max_classes=" + std::to_string(gn_max_classes) + " gn_samples=" + std::to_string(gn_samples);
  if (estimator == "hutchinson") k += " probes=" + std::to_string(hutchinson_probes);
  if (estimator == "adam_sqrt") k += " adam_batch=" + std::to_string(adam_batch);
  return k;
}

std::vector<torch::Tensor> estimate_hessian_diag(Model& model, const Dataset& data, const HessianParams& p) {
  p.validate();
  BB_CHECK(data.size() > 0, "hessian: calibration dataset '", data.name(), "' is empty");
  const auto& layers = model.layers();
  const size_t nl = layers.size();
  std::vector<torch::Tensor> H(nl);
  for (size_t l = 0; l < nl; ++l) H[l] = torch::zeros(layers[l].weight().sizes());

  const bool was_training = model.is_training();
  model.eval();
  RequiresGradGuard rg(model);
  auto gen = at::detail::createCPUGenerator(p.seed ^ 0x4e55u);
  std::vector<int64_t> idx = sample_indices(data.size(), p.images, p.seed);

  if (p.estimator == "adam_sqrt") {
    // v_hat = mean over minibatches of g_b^2, g_b the gradient of the minibatch's mean loss; only
    // whole minibatches (a short last one would be a noisier sample), unless there is just one.
    const int64_t B = p.adam_batch;
    if ((int64_t)idx.size() > B) idx.resize(idx.size() / B * B);
    LoaderOptions lo;
    lo.batch_size = B;
    Progress prog("hessian (adam_sqrt)", (long)idx.size());
    int64_t batches = 0;
    std::vector<torch::Tensor> w;
    for (auto& l : layers) w.push_back(l.weight());
    for_each_batch(data, idx, lo, [&](const Batch& b) {
      TapScope tg(model, nullptr);
      auto loss = F::cross_entropy(model.forward(b.images), b.labels);
      auto g = torch::autograd::grad({loss}, w);
      for (size_t l = 0; l < nl; ++l) H[l] += g[l].detach().square();
      ++batches;
      prog.advance(b.images.size(0));
    });
    prog.finish();
    for (size_t l = 0; l < nl; ++l) H[l] = (H[l] / (double)batches).sqrt_();
    if (was_training) model.train();
    return H;
  }

  const int64_t n_images = (int64_t)idx.size();
  LoaderOptions lo;
  lo.batch_size = p.batch_size;
  Progress prog("hessian (" + p.estimator + ")", (long)n_images);

  for_each_batch(data, idx, lo, [&](const Batch& b) {
    const int64_t N = b.images.size(0);
    if (p.estimator == "hutchinson") {
      TapScope tg(model, nullptr);
      auto logits = model.forward(b.images);
      auto loss = F::cross_entropy(logits, b.labels);  // mean over the batch
      std::vector<torch::Tensor> w;
      for (auto& l : layers) w.push_back(l.weight());
      auto g = torch::autograd::grad({loss}, w, {}, /*retain_graph=*/true, /*create_graph=*/true);
      for (int probe = 0; probe < p.hutchinson_probes; ++probe) {
        std::vector<torch::Tensor> z(nl);
        torch::Tensor dot = torch::zeros({});
        for (size_t l = 0; l < nl; ++l) {
          z[l] = torch::randint(0, 2, w[l].sizes(), gen, torch::kFloat32) * 2 - 1;
          dot = dot + (g[l] * z[l]).sum();
        }
        auto hz = torch::autograd::grad({dot}, w, {}, /*retain_graph=*/probe + 1 < p.hutchinson_probes, false);
        // The batch's mean-loss Hessian, weighted by its share of the images.
        const double s = (double)N / (double)n_images / (double)p.hutchinson_probes;
        for (size_t l = 0; l < nl; ++l) H[l] += (z[l] * hz[l].detach()) * s;
      }
    } else {
      CaptureTap tap(nl);
      torch::Tensor logits;
      {
        TapScope tg(model, &tap);
        logits = model.forward(b.images);
      }
      std::vector<torch::Tensor> ys;
      std::vector<size_t> which;
      for (size_t l = 0; l < nl; ++l)
        if (tap.out[l].defined()) {
          ys.push_back(tap.out[l]);
          which.push_back(l);
        }
      auto prob = torch::softmax(logits.detach(), 1);
      const int64_t C = prob.size(1);
      // Gradient of the per-image loss w.r.t. the logits for label c: p - e_c; each such
      // "target" is backpropagated with a per-image scale (sqrt of its weight in the sum).
      std::vector<torch::Tensor> grad_logits;
      if (p.estimator == "empirical_fisher") {
        grad_logits.push_back(prob - F::one_hot(b.labels, C).to(torch::kFloat32));
      } else if (C <= p.gn_max_classes) {
        for (int64_t c = 0; c < C; ++c) {
          auto e = torch::zeros_like(prob);
          e.select(1, c).fill_(1);
          grad_logits.push_back((prob - e) * prob.select(1, c).sqrt().unsqueeze(1));
        }
      } else {
        auto lab = torch::multinomial(prob, p.gn_samples, /*replacement=*/true, gen);  // N x S
        for (int s = 0; s < p.gn_samples; ++s)
          grad_logits.push_back((prob - F::one_hot(lab.select(1, s), C).to(torch::kFloat32)) / std::sqrt((double)p.gn_samples));
      }
      for (size_t t = 0; t < grad_logits.size(); ++t) {
        auto gys = torch::autograd::grad({logits}, ys, {grad_logits[t]}, /*retain_graph=*/t + 1 < grad_logits.size(), false);
        for (size_t q = 0; q < ys.size(); ++q) {
          size_t l = which[q];
          H[l] += per_image_sq_grad_sum(layers[l], tap.in[l], gys[q].detach()) / (double)n_images;
        }
      }
    }
    prog.advance(N);
  });
  prog.finish();
  if (was_training) model.train();
  return H;
}

std::string model_state_hash(const Model& model) {
  Sha256 h;
  h.update(model.arch());
  for (auto& kv : model.state()) {
    h.update(kv.first);
    auto t = kv.second.detach().contiguous().cpu();
    std::string shape;
    for (auto s : t.sizes()) shape += std::to_string(s) + ",";
    h.update(shape + c10::toString(t.scalar_type()));
    h.update(t.data_ptr(), t.numel() * t.element_size());
  }
  return h.hex();
}

std::vector<torch::Tensor> hessian_diag_cached(Model& model, const Dataset& data, const HessianParams& p,
                                               const std::string& cache_dir, bool* hit) {
  p.validate();
  if (hit) *hit = false;
  if (cache_dir.empty()) return estimate_hessian_diag(model, data, p);
  const std::string key = sha256_hex(p.key() + "\nmodel=" + model.arch() + "\nstate=" + model_state_hash(model) +
                                     "\ndata=" + data.identity());
  const std::string path = (std::filesystem::path(cache_dir) / ("hessian-" + key.substr(0, 32) + ".bin")).string();
  const auto& layers = model.layers();
  std::vector<std::string> names;
  for (auto& l : layers) names.push_back(l.name);
  constexpr const char* kMagic = "bitbench-hessian-v1";
  std::vector<torch::Tensor> H;
  if (read_layer_cache(path, "hessian cache", kMagic, key, names, [&](ByteReader& r, size_t l) {
        const int64_t n = (int64_t)r.varint();
        BB_CHECK(n == layers[l].weight().numel(), "hessian cache ", path, ": size mismatch at '", names[l], "'");
        auto t = torch::empty(layers[l].weight().sizes(), torch::kFloat32);
        r.raw(t.data_ptr<float>(), (size_t)n * sizeof(float));
        H.push_back(t);
      })) {
    if (hit) *hit = true;
    log_info("hessian: cache hit " + path);
    return H;
  }
  H = estimate_hessian_diag(model, data, p);
  write_layer_cache(path, kMagic, key, names, [&](ByteWriter& w, size_t l) {
    auto t = H[l].contiguous();
    w.varint((uint64_t)t.numel());
    w.raw(t.data_ptr<float>(), (size_t)t.numel() * sizeof(float));
  });
  log_info("hessian: cached " + path);
  return H;
}

}  // namespace bb
