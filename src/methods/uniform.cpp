// `uniform` baseline: per-output-channel symmetric uniform scalar quantization at b bits, the
// step of each channel chosen to minimise its weight MSE (a clipping search), levels optionally
// entropy-coded.
#include "coding/bbz.h"
#include "coding/bytes.h"
#include "coding/symbols.h"
#include "methods/method.h"

#include <cmath>

namespace bb {
namespace {

struct UniformParams : ParamsBase {
  int bits = 4;                  // bits per weight (1 = sign * scale; >= 2 = mid-tread, 2^b - 1 levels)
  std::string coder = "fixed";   // level stream: fixed | huffman | rans
  int clip_steps = 64;           // candidate clipping ratios searched per channel
  void bind(ParamBinder& b) override {
    b.field("bits", bits, "bits per weight");
    b.field("coder", coder, "coding of the level stream", {"fixed", "huffman", "rans"});
    b.field("clip_steps", clip_steps, "clipping ratios tried per channel for the MSE-optimal step");
  }
  void validate() override {
    BB_CHECK(bits >= 1 && bits <= 16, "uniform: bits must be in 1..16, got ", bits);
    BB_CHECK(clip_steps >= 1, "uniform: clip_steps must be >= 1");
  }
};

class UniformMethod : public Method {
 public:
  std::string name() const override { return "uniform"; }
  ParamsBase& params() override { return p_; }

  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    torch::NoGradGuard ng;
    std::vector<LayerRecord> out;
    for (const auto& l : ctx.model->layers()) {
      auto w = l.weight().detach().reshape({l.out_features(), -1}).to(torch::kFloat32);
      auto [levels, steps] = quantize(w);
      LayerRecord rec;
      rec.layer = l.name;
      rec.method = name();
      rec.shape = l.weight().sizes().vec();
      const uint32_t alphabet = 1u << p_.bits;
      std::vector<uint32_t> syms(levels.data_ptr<int32_t>(), levels.data_ptr<int32_t>() + levels.numel());
      ByteWriter hdr;
      hdr.u8((uint8_t)p_.bits);
      rec.add("bits", Component::side, hdr.take());
      rec.add("levels", Component::indices, encode_symbols(syms, alphabet, parse_coder(p_.coder)));
      ByteWriter sw;
      put_floats(sw, steps, false);
      rec.add("steps", Component::side, sw.take());
      rec.estimate.fixed_index_bits = (double)p_.bits * w.numel();
      rec.estimate.index_bits = p_.coder == "fixed" ? rec.estimate.fixed_index_bits
                                                    : empirical_entropy_bits(syms, alphabet);
      rec.estimate.side_bits = 32.0 * steps.numel();
      out.push_back(std::move(rec));
    }
    return out;
  }

  torch::Tensor decode(const LayerRecord& rec) const override {
    ByteReader hr(rec.section("bits").bytes, "layer '" + rec.layer + "' bits");
    const int bits = hr.u8();
    BB_CHECK(bits >= 1 && bits <= 16, "corrupt record for layer '", rec.layer, "': bits = ", bits);
    auto syms = decode_symbols(rec.section("levels").bytes);
    int64_t n = 1;
    for (auto s : rec.shape) n *= s;
    BB_CHECK((int64_t)syms.size() == n && !rec.shape.empty(), "corrupt record for layer '", rec.layer,
             "': ", syms.size(), " levels for ", n, " weights");
    const int64_t rows = rec.shape[0];
    ByteReader sr(rec.section("steps").bytes, "layer '" + rec.layer + "' steps");
    auto steps = get_floats(sr, rows, false);
    auto q = torch::from_blob(syms.data(), {n}, torch::kInt32).clone().to(torch::kFloat32).reshape({rows, -1});
    q = bits == 1 ? q * 2 - 1 : q - (float)((1 << (bits - 1)) - 1);
    return (q * steps.unsqueeze(1)).reshape(rec.shape);
  }

 private:
  // Returns levels (int32 codes in [0, 2^b)) and per-row steps.
  std::pair<torch::Tensor, torch::Tensor> quantize(const torch::Tensor& w) const {
    const int64_t rows = w.size(0);
    auto amax = w.abs().amax(1).clamp_min(1e-12);
    if (p_.bits == 1) {
      auto step = w.abs().mean(1);  // the MSE-optimal scale for sign quantization
      auto codes = (w >= 0).to(torch::kInt32);
      return {codes.flatten().contiguous(), step.contiguous()};
    }
    const float qmax = (float)((1 << (p_.bits - 1)) - 1);
    auto best_err = torch::full({rows}, INFINITY);
    auto best_step = amax / qmax;
    for (int i = 0; i < p_.clip_steps; ++i) {
      const float ratio = 1.0f - 0.95f * (float)i / std::max(1, p_.clip_steps);
      auto step = amax * ratio / qmax;
      auto q = torch::clamp(torch::round(w / step.unsqueeze(1)), -qmax, qmax);
      auto err = (q * step.unsqueeze(1) - w).pow(2).sum(1);
      auto better = err < best_err;
      best_err = torch::where(better, err, best_err);
      best_step = torch::where(better, step, best_step);
    }
    auto q = torch::clamp(torch::round(w / best_step.unsqueeze(1)), -qmax, qmax) + qmax;
    return {q.to(torch::kInt32).flatten().contiguous(), best_step.contiguous()};
  }

  UniformParams p_;
};

BB_REGISTER_METHOD("uniform", UniformMethod);

}  // namespace
}  // namespace bb
