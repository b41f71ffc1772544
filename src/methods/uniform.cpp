// `uniform` baseline: per-output-channel uniform scalar quantization at b bits, levels optionally
// entropy-coded. Two grids (docs/methods/uniform.md):
//   asymmetric (default): 2^b levels spanning the channel's [min, max], w ~ lo + q * step,
//     q in [0, 2^b), with either a float offset lo = min (zero_point=float, default: min and max
//     are levels) or an integer zero point z (zero_point=integer, PyTorch's per-channel affine
//     observer: the range widened to include 0, lo = -z * step, so 0 is a level but the grid
//     shifts by up to step/2 and clips one end of the range);
//   symmetric: mid-tread, 2^b - 1 levels in [-amax, amax] (b = 1: sign * mean |w|).
// Clipping: minmax (the range as it is) or mse (the range scaled by the ratio, of clip_steps
// candidates in [0.05, 1], that minimises the channel's weight MSE).
#include "coding/bbz.h"
#include "coding/bytes.h"
#include "coding/symbols.h"
#include "methods/method.h"

#include <cmath>

namespace bb {
namespace {

struct UniformParams : ParamsBase {
  int bits = 4;                    // bits per weight
  std::string scheme = "asymmetric";  // asymmetric (2^b levels, zero point) | symmetric (2^b - 1 levels)
  std::string clip = "minmax";     // minmax | mse
  std::string zero_point = "float";  // asymmetric: float (offset = min) | integer (PyTorch affine)
  std::string coder = "fixed";     // level stream: fixed | huffman | rans
  int clip_steps = 64;             // clip=mse: candidate clipping ratios searched per channel
  void bind(ParamBinder& b) override {
    b.field("bits", bits, "bits per weight");
    b.field("scheme", scheme,
            "asymmetric: 2^b levels over [min, max] with an integer zero point per channel (toolkit default); "
            "symmetric: mid-tread, 2^b - 1 levels in [-amax, amax] (b = 1: sign x mean|w|)",
            {"asymmetric", "symmetric"});
    b.field("clip", clip, "minmax: the channel's range; mse: the range scaled by the ratio minimising weight MSE",
            {"minmax", "mse"});
    b.field("zero_point", zero_point,
            "asymmetric: float = per-channel fp32 offset, the grid spans [min, max] exactly; integer = integer zero "
            "point with 0 on the grid (PyTorch's per-channel affine quantization)",
            {"float", "integer"});
    b.field("coder", coder, "coding of the level stream", {"fixed", "huffman", "rans"});
    b.field("clip_steps", clip_steps, "clip=mse: clipping ratios tried per channel, in [0.05, 1]");
  }
  void validate() override {
    BB_CHECK(bits >= 1 && bits <= 16, "uniform: bits must be in 1..16, got ", bits);
    BB_CHECK(clip_steps >= 1, "uniform: clip_steps must be >= 1");
  }
};

// Optional second byte of the "bits" section: the scheme. Symmetric records omit it, so they are
// byte-identical to the files written before the asymmetric grid existed.
constexpr uint8_t kSymmetric = 0, kAsymmetric = 1, kAsymmetricOffset = 2;

class UniformMethod : public Method {
 public:
  std::string name() const override { return "uniform"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }

  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    torch::NoGradGuard ng;
    std::vector<LayerRecord> out;
    const bool asym = p_.scheme == "asymmetric";
    for (const auto& l : ctx.model->layers()) {
      auto w = l.weight().detach().reshape({l.out_features(), -1}).to(torch::kFloat32);
      Grid g = asym ? quantize_asymmetric(w) : quantize_symmetric(w);
      LayerRecord rec;
      rec.layer = l.name;
      rec.method = name();
      rec.shape = l.weight().sizes().vec();
      const uint32_t alphabet = 1u << p_.bits;
      std::vector<uint32_t> syms(g.levels.data_ptr<int32_t>(), g.levels.data_ptr<int32_t>() + g.levels.numel());
      ByteWriter hdr;
      hdr.u8((uint8_t)p_.bits);
      const bool offset = asym && p_.zero_point == "float";
      if (asym) hdr.u8(offset ? kAsymmetricOffset : kAsymmetric);  // symmetric records keep the 1-byte header
      rec.add("bits", Component::side, hdr.take());
      rec.add("levels", Component::indices, encode_symbols(syms, alphabet, parse_coder(p_.coder)));
      ByteWriter sw;
      put_floats(sw, g.steps, false);
      rec.add("steps", Component::side, sw.take());
      rec.estimate.side_bits = 32.0 * g.steps.numel();
      if (offset) {
        ByteWriter ow;
        put_floats(ow, g.offsets, false);
        rec.add("offsets", Component::side, ow.take());
        rec.estimate.side_bits += 32.0 * g.offsets.numel();
      } else if (asym) {
        std::vector<uint32_t> zs(g.zeros.data_ptr<int32_t>(), g.zeros.data_ptr<int32_t>() + g.zeros.numel());
        rec.add("zeros", Component::side, encode_symbols(zs, alphabet, Coder::fixed));
        rec.estimate.side_bits += (double)p_.bits * g.zeros.numel();
      }
      rec.estimate.fixed_index_bits = (double)p_.bits * w.numel();
      rec.estimate.index_bits = p_.coder == "fixed" ? rec.estimate.fixed_index_bits
                                                    : empirical_entropy_bits(syms, alphabet);
      out.push_back(std::move(rec));
    }
    return out;
  }

  torch::Tensor decode(const LayerRecord& rec) const override {
    ByteReader hr(rec.section("bits").bytes, "layer '" + rec.layer + "' bits");
    const int bits = hr.u8();
    BB_CHECK(bits >= 1 && bits <= 16, "corrupt record for layer '", rec.layer, "': bits = ", bits);
    const uint8_t scheme = hr.done() ? kSymmetric : hr.u8();
    BB_CHECK(scheme == kSymmetric || scheme == kAsymmetric || scheme == kAsymmetricOffset, "corrupt record for layer '", rec.layer,
             "': unknown uniform scheme ", (int)scheme);
    BB_CHECK(hr.done(), "corrupt record for layer '", rec.layer, "': trailing bytes in its 'bits' section");
    int64_t n = 1;
    for (auto s : rec.shape) n *= s;
    auto syms = decode_symbols(rec.section("levels").bytes, (uint64_t)n);
    BB_CHECK((int64_t)syms.size() == n && !rec.shape.empty(), "corrupt record for layer '", rec.layer,
             "': ", syms.size(), " levels for ", n, " weights");
    const int64_t rows = rec.shape[0];
    ByteReader sr(rec.section("steps").bytes, "layer '" + rec.layer + "' steps");
    auto steps = get_floats(sr, rows, false);
    BB_CHECK(sr.done(), "corrupt record for layer '", rec.layer, "': trailing bytes in its 'steps' section");
    auto q = torch::from_blob(syms.data(), {n}, torch::kInt32).clone().to(torch::kFloat32).reshape({rows, -1});
    if (scheme == kAsymmetricOffset) {
      ByteReader orr(rec.section("offsets").bytes, "layer '" + rec.layer + "' offsets");
      auto lo = get_floats(orr, rows, false);
      BB_CHECK(orr.done(), "corrupt record for layer '", rec.layer, "': trailing bytes in its 'offsets' section");
      return (lo.unsqueeze(1) + q * steps.unsqueeze(1)).reshape(rec.shape);
    }
    if (scheme == kAsymmetric) {
      auto zs = decode_symbols(rec.section("zeros").bytes, (uint64_t)rows);
      BB_CHECK((int64_t)zs.size() == rows, "corrupt record for layer '", rec.layer, "': ", zs.size(),
               " zero points for ", rows, " channels");
      auto z = torch::from_blob(zs.data(), {rows}, torch::kInt32).to(torch::kFloat32);
      q = q - z.unsqueeze(1);
    } else {
      q = bits == 1 ? q * 2 - 1 : q - (float)((1 << (bits - 1)) - 1);
    }
    return (q * steps.unsqueeze(1)).reshape(rec.shape);
  }

 private:
  struct Grid {
    torch::Tensor levels;  // int32 codes in [0, 2^b), row-major
    torch::Tensor steps;   // per row
    torch::Tensor zeros;   // per row, int32 zero points (asymmetric, zero_point=integer)
    torch::Tensor offsets; // per row, float32 lowest level (asymmetric, zero_point=float)
  };

  // Clipping ratios tried: {1} for minmax, else clip_steps ratios from 1 down to 0.05.
  std::vector<float> ratios() const {
    if (p_.clip == "minmax") return {1.0f};
    std::vector<float> r;
    for (int i = 0; i < p_.clip_steps; ++i) r.push_back(1.0f - 0.95f * (float)i / std::max(1, p_.clip_steps));
    return r;
  }

  Grid quantize_symmetric(const torch::Tensor& w) const {
    const int64_t rows = w.size(0);
    auto amax = w.abs().amax(1).clamp_min(1e-12);
    if (p_.bits == 1) {
      auto step = w.abs().mean(1);  // the MSE-optimal scale for sign quantization
      auto codes = (w >= 0).to(torch::kInt32);
      return {codes.flatten().contiguous(), step.contiguous(), {}};
    }
    const float qmax = (float)((1 << (p_.bits - 1)) - 1);
    auto best_err = torch::full({rows}, INFINITY);
    auto best_step = amax / qmax;
    for (float ratio : ratios()) {
      auto step = amax * ratio / qmax;
      auto q = torch::clamp(torch::round(w / step.unsqueeze(1)), -qmax, qmax);
      auto err = (q * step.unsqueeze(1) - w).pow(2).sum(1);
      auto better = err < best_err;
      best_err = torch::where(better, err, best_err);
      best_step = torch::where(better, step, best_step);
    }
    auto q = torch::clamp(torch::round(w / best_step.unsqueeze(1)), -qmax, qmax) + qmax;
    return {q.to(torch::kInt32).flatten().contiguous(), best_step.contiguous(), {}};
  }

  // zero_point=integer: the affine grid as PyTorch's per-channel MinMax observer computes it
  // (quint8-style, qmin = 0): the range is widened to include 0, step = (max - min) / (2^b - 1),
  // z = clamp(round(-min / step), 0, 2^b - 1), q = clamp(round(w / step) + z, 0, 2^b - 1).
  // zero_point=float: step = (max - min) / (2^b - 1), q = clamp(round((w - min) / step), 0, 2^b - 1),
  // w ~ min + q * step. clip=mse scales the range [min, max] by the best ratio.
  Grid quantize_asymmetric(const torch::Tensor& w) const {
    const int64_t rows = w.size(0);
    const float qmax = (float)((1 << p_.bits) - 1);
    const bool integer = p_.zero_point == "integer";
    auto lo0 = w.amin(1), hi0 = w.amax(1);
    if (integer) {
      lo0 = lo0.clamp_max(0.0f);
      hi0 = hi0.clamp_min(0.0f);
    }
    struct G {
      torch::Tensor step, lo, z, q, deq;
    };
    auto grid = [&](const torch::Tensor& ratio) {
      G g;
      auto lo = lo0 * ratio, hi = hi0 * ratio;
      g.step = ((hi - lo) / qmax).clamp_min(1e-12f);
      if (integer) {
        g.z = torch::clamp(torch::round(-lo / g.step), 0.0f, qmax);
        g.q = torch::clamp(torch::round(w / g.step.unsqueeze(1)) + g.z.unsqueeze(1), 0.0f, qmax);
        g.deq = (g.q - g.z.unsqueeze(1)) * g.step.unsqueeze(1);
      } else {
        g.lo = lo;
        g.q = torch::clamp(torch::round((w - lo.unsqueeze(1)) / g.step.unsqueeze(1)), 0.0f, qmax);
        g.deq = lo.unsqueeze(1) + g.q * g.step.unsqueeze(1);
      }
      return g;
    };
    auto best_err = torch::full({rows}, INFINITY);
    auto best_ratio = torch::ones({rows});
    for (float ratio : ratios()) {
      auto r = torch::full({rows}, ratio);
      auto err = (grid(r).deq - w).pow(2).sum(1);
      auto better = err < best_err;
      best_err = torch::where(better, err, best_err);
      best_ratio = torch::where(better, r, best_ratio);
    }
    G g = grid(best_ratio);
    Grid out;
    out.levels = g.q.to(torch::kInt32).flatten().contiguous();
    out.steps = g.step.contiguous();
    if (integer) out.zeros = g.z.to(torch::kInt32).contiguous();
    else out.offsets = g.lo.contiguous();
    return out;
  }

  UniformParams p_;
};

BB_REGISTER_METHOD("uniform", UniformMethod);

}  // namespace
}  // namespace bb
