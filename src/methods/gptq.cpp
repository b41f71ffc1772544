// gptq: second-order error-compensating quantization (OBQ: Frantar & Alistarh, "Optimal Brain
// Compression", NeurIPS 2022; GPTQ: Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023). See
// docs/methods/gptq.md.
//
//   1. per conv/linear layer, H = X^T X of its im2col'd calibration inputs (float64), from the
//      network whose earlier layers are already quantized (sequential, the default) or from the
//      FP network (parallel); fp_target (default, not in the papers): the layer is fitted to the FP
//      network's output, V = argmin ||X_fp W^T - X V^T||^2 (+ ridge toward W) quantized on H
//   2. per output row, the columns quantized in order (act_order: decreasing diag H), each
//      column's error propagated through the Cholesky factor of (H + damp*mean(diag H)*I)^-1 with
//      lazy block updates (quant/gptq.h)
//   3. grid: bits=B: per-channel asymmetric min-max at B bits, fixed-width levels (the paper);
//      target_bpw=R (bits=0): one step per layer, zero a level, levels rANS/Huffman coded (coder); the
//      per-layer steps come from the Lagrangian allocator (quant/rd_alloc.h) over candidate
//      steps, each with its real record bits and a measured distortion (alloc=lagrangian), or
//      one rule step = alpha * std(W) for every layer with alpha bisected (alloc=rule);
//      sequential runs then scale the steps by a common factor to land on target_bpw
#include "common/error.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/timer.h"
#include "coding/bbz.h"
#include "coding/layer_cache.h"
#include "coding/symbols.h"
#include "data/loader.h"
#include "methods/method.h"
#include "quant/activations.h"
#include "quant/gptq.h"
#include "quant/rd_alloc.h"
#include "quant/tq_curves.h"

#include <cmath>
#include <filesystem>

namespace bb {
namespace {

struct GptqParams : ParamsBase {
  int bits = 0;                 // > 0: per-channel min-max grid at `bits`, fixed-width
  double target_bpw = 2.0;      // bits = 0: bpw_core target of the entropy-coded variant
  bool act_order = true;
  double damp = 0.01;
  int64_t block_size = 128;
  int64_t calib_images = 256;
  int64_t calib_batch = 64;
  bool sequential = true;
  bool fp_target = true;
  std::string coder = "auto";
  std::string alloc = "lagrangian";
  std::string alloc_distortion = "logits";
  int steps_per_octave = 4;
  double step_min = 0.125, step_max = 8;  // candidate steps alpha * std(W), alpha in [min, max]
  int64_t logits_images = 128;
  double clamp_range = 2.0;
  double deadzone = 0;

  void bind(ParamBinder& b) override {
    b.field("bits", bits, "> 0: per-channel asymmetric min-max grid at this many bits, levels fixed-width (the paper; sets target_bpw to 0); 0: the entropy-coded variant at target_bpw");
    b.field("target_bpw", target_bpw, "bits = 0: target bpw_core (file bits of the conv/linear weights, all side info) of the entropy-coded variant");
    b.field("act_order", act_order, "quantize the columns in order of decreasing diag H (else in storage order)");
    b.field("damp", damp, "dampening: H + damp * mean(diag H) * I before the Cholesky factorisation");
    b.field("block_size", block_size, "columns per lazy block update (speed only: the codes are those of the unblocked loop)");
    b.field("calib_images", calib_images, "calibration images for H = X^T X (every im2col row of every image)");
    b.field("calib_batch", calib_batch, "images per calibration forward pass");
    b.field("sequential", sequential, "H of each layer from the network whose earlier layers are already quantized (else all from the FP network: parallel); target_bpw runs then re-scale the allocated steps by a common factor to land on the target");
    b.field("fp_target", fp_target, "sequential: fit each layer to the FP network's layer output from the quantized network's inputs: quantize V = argmin ||X_fp W^T - X V^T||^2 + ridge(damp) ||V - W||^2 on H = X^T X, not W (not in the papers); parallel: the inputs are the FP ones, V = W, so validate() sets it false");
    b.field("coder", coder, "level coding: auto: fixed-width with bits > 0 (the paper), rans with bits = 0; fixed | huffman | rans", {"auto", "fixed", "huffman", "rans"});
    b.field("alloc", alloc, "bits = 0: lagrangian: per-layer step from the Lagrangian allocator over candidate steps; rule: step = alpha * std(W) in every layer, alpha bisected to hit target_bpw", {"lagrangian", "rule"});
    b.field("alloc_distortion", alloc_distortion, "alloc=lagrangian: distortion of a candidate: bn_output: the layer's output error scaled by the following BN, per im2col row; output: the same before BN; logits: measured MSE of the network's logits on logits_images calibration images", {"bn_output", "output", "logits"});
    b.field("steps_per_octave", steps_per_octave, "alloc=lagrangian: candidate steps alpha * std(W), alpha = 2^(k / steps_per_octave)");
    b.field("step_min", step_min, "alloc=lagrangian: smallest candidate alpha (and the lower end of alloc=rule's bisection)");
    b.field("step_max", step_max, "alloc=lagrangian: largest candidate alpha (and the upper end of alloc=rule's bisection)");
    b.field("clamp_range", clamp_range, "bits = 0: codes clamped to clamp_range x the layer's [min, max] on the step grid (1: GPTQ's min-max clamp; the coded alphabet is the range of the codes used)");
    b.field("deadzone", deadzone, "bits = 0: |w| < (0.5 + deadzone) * step rounds to 0 (a dead zone, in steps; 0 = plain rounding; not in the papers)");
    b.field("logits_images", logits_images, "alloc_distortion=logits: calibration images of the logits MSE (the first of the calib_images; at most calib_images)");
  }
  void validate() override {
    if (bits > 0) target_bpw = 0;  // fixed-width at `bits`: not rate-targeted
    BB_CHECK(bits >= 0 && bits <= 8, "gptq: bits must be in 0..8, got ", bits);
    BB_CHECK(bits > 0 || (target_bpw > 0 && target_bpw <= 16), "gptq: bits = 0 needs target_bpw in (0, 16], got ",
             target_bpw);
    BB_CHECK(damp >= 0 && damp < 10, "gptq: damp must be in [0, 10)");
    BB_CHECK(block_size >= 1, "gptq: block_size must be >= 1");
    BB_CHECK(calib_images >= 1 && calib_batch >= 1, "gptq: calib_images and calib_batch must be >= 1");
    BB_CHECK(steps_per_octave >= 1 && steps_per_octave <= 64, "gptq: steps_per_octave must be in 1..64");
    BB_CHECK(step_min > 0 && step_max > step_min, "gptq: need 0 < step_min < step_max");
    BB_CHECK(clamp_range >= 1 && clamp_range <= 64, "gptq: clamp_range must be in [1, 64]");
    BB_CHECK(deadzone >= 0 && deadzone <= 2, "gptq: deadzone must be in [0, 2]");
    BB_CHECK(logits_images >= 1, "gptq: logits_images must be >= 1");
    if (!sequential) fp_target = false;  // parallel: X = X_fp, V = W (one run ID for both values)
  }
};

// Record layout. Section "grid" (side): u8 kind, then
//   kind 0 (min-max): u8 bits, then per row a GptqRowGrid
//   kind 1 (step):    one GptqStepGrid
// Section "levels" (indices): the codes (min-max: q in [0, 2^bits); step: q - qmin) as a symbol
// stream (quant coders: fixed / huffman / rans).
struct GptqRowGrid {
  uint16_t scale_fp16;
  uint16_t zero;
};
static_assert(sizeof(GptqRowGrid) == 4, "GptqRowGrid is stored as 4 bytes");
struct GptqStepGrid {
  float step;
  int32_t qmin;
  int32_t qmax;
};
static_assert(sizeof(GptqStepGrid) == 12, "GptqStepGrid is stored as 12 bytes");
enum : uint8_t { kGridMinmax = 0, kGridStep = 1 };

LayerRecord encode_layer(const std::string& name, const std::vector<int64_t>& shape, const GptqGrid& g,
                         const torch::Tensor& codes, int bits, Coder coder) {
  LayerRecord rec;
  rec.layer = name;
  rec.method = "gptq";
  rec.shape = shape;
  ByteWriter w;
  const int64_t rows = codes.size(0);
  // Step grid: the alphabet is the range of the codes used (0 included), not the grid's clamp.
  int32_t qmin = g.qmin, qmax = g.qmax;
  if (bits == 0) {
    qmin = std::min(0, codes.min().item<int32_t>());
    qmax = std::max(0, codes.max().item<int32_t>());
  }
  if (bits > 0) {
    w.u8(kGridMinmax);
    w.u8((uint8_t)bits);
    for (int64_t r = 0; r < rows; ++r) {
      GptqRowGrid rg{float_to_half((float)g.scale[r]), (uint16_t)g.zero[r]};
      w.raw(&rg, sizeof rg);
    }
  } else {
    w.u8(kGridStep);
    GptqStepGrid sg{(float)g.scale[0], qmin, qmax};
    w.raw(&sg, sizeof sg);
  }
  rec.add("grid", Component::side, w.take());
  auto c = codes.contiguous();
  const int32_t* cp = c.data_ptr<int32_t>();
  std::vector<uint32_t> syms(c.numel());
  for (int64_t i = 0; i < c.numel(); ++i) syms[i] = (uint32_t)(cp[i] - qmin);
  const uint32_t alphabet = (uint32_t)(qmax - qmin + 1);
  rec.add("levels", Component::indices, encode_symbols(syms, alphabet, coder));
  rec.estimate.index_bits = coder == Coder::fixed ? (double)syms.size() * fixed_width_bits(alphabet) : empirical_entropy_bits(syms, alphabet);
  rec.estimate.fixed_index_bits = (double)syms.size() * fixed_width_bits(alphabet);
  rec.estimate.side_bits = bits > 0 ? 8.0 + rows * 32.0 : 8.0 + 96.0;
  return rec;
}

// Bits of one record as the container counts them for bpw_core (its header included).
double record_bits(const LayerRecord& rec) {
  BbzFile f;
  f.layers = {rec};
  BbzSizes sizes;
  serialize_bbz(f, &sizes);
  return 8.0 * (double)sizes.layers.at(0).total();
}

// The step grid of a layer at step `step` (rounded to the stored fp32). Codes are clamped to
// range_factor times the range of the layer's weights on that grid (1: the min-max range, as
// GPTQ's grids; larger: room for the error-compensated weights that leave it).
GptqGrid step_grid_for(const torch::Tensor& W, double step, double range_factor, double deadzone) {
  const float s = (float)step;
  const double lo = W.min().item<double>(), hi = W.max().item<double>();
  GptqGrid g = gptq_step_grid(W.size(0), (double)s, (int32_t)std::min(0.0, std::floor(range_factor * lo / s + 0.5)),
                              (int32_t)std::max(0.0, std::floor(range_factor * hi / s + 0.5)));
  g.deadzone = deadzone;
  return g;
}

// Collects every wanted layer's H in one pass of the calibration images (parallel mode).
struct GramTap : LayerTap {
  std::vector<GptqGram>* grams;
  double seconds = 0;  // spent in the Gram products (the rest of a pass is the forward pass)
  void on_input(int l, const torch::Tensor& x) override {
    const double t0 = now_seconds();
    (*grams)[l].add(x);
    seconds += now_seconds() - t0;
  }
};

// The allocator's candidates per layer (step, record bits, distortion) in a per-layer cache file
// (coding/layer_cache.h; entry: varint count, then per candidate three float64 step, bits, dist).
// They do not depend on target_bpw, so the rows of one model at several targets compute them once.
// read_candidates: false when the file is absent; a file written for another key or a corrupt
// one is an error naming it.
constexpr const char* kCandMagic = "bitbench-gptq-candidates-v1";

void write_candidates(const std::string& path, const std::string& key, const std::vector<std::string>& names,
                      const std::vector<std::vector<double>>& steps, const std::vector<std::vector<RdPoint>>& items) {
  write_layer_cache(path, kCandMagic, key, names, [&](ByteWriter& w, size_t l) {
    w.varint(items[l].size());
    for (size_t k = 0; k < items[l].size(); ++k) {
      const double v[3] = {steps[l][k], items[l][k].rate, items[l][k].dist};
      w.raw(v, sizeof v);
    }
  });
}

bool read_candidates(const std::string& path, const std::string& key, const std::vector<std::string>& names,
                     size_t per_layer, std::vector<std::vector<double>>& steps, std::vector<std::vector<RdPoint>>& items) {
  steps.assign(names.size(), {});
  items.assign(names.size(), {});
  return read_layer_cache(path, "gptq candidates cache", kCandMagic, key, names, [&](ByteReader& r, size_t l) {
    BB_CHECK(r.varint() == per_layer, "gptq candidates cache ", path, ": candidate count mismatch at '", names[l], "'");
    for (size_t k = 0; k < per_layer; ++k) {
      double v[3];
      r.raw(v, sizeof v);
      BB_CHECK(std::isfinite(v[0]) && v[0] > 0 && std::isfinite(v[1]) && v[1] >= 0 && std::isfinite(v[2]),
               "gptq candidates cache ", path, ": bad candidate at '", names[l], "'");
      steps[l].push_back(v[0]);
      items[l].push_back({v[1], v[2]});
    }
  });
}

struct LayerResult {
  GptqGrid grid;
  GptqResult q;
  LayerRecord rec;
  double bits = 0, dist = 0;
};

class GptqMethod : public Method {
 public:
  std::string name() const override { return "gptq"; }
  int algorithm_version() const override { return 5; }  // 2: H via oneDNN, U via one Cholesky + dtrtri; 3: H independent of the thread count; 4: sequential with fp_target by default, sequential target_bpw runs re-scaled to the target; 5: fp_target from B = X^T (X_fp - X) W^T
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override { return true; }

  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    torch::NoGradGuard ng;
    t_ = Timing{};
    const double t_start = now_seconds();
    BB_CHECK(ctx.model, "gptq: no model");
    BB_CHECK(ctx.calib, "gptq: needs a calibration dataset");
    Model& model = *ctx.model;
    const auto& layers = model.layers();
    const int L = (int)layers.size();
    ctx.phase("calibration");
    const torch::Tensor images =
        load_calibration_images(*ctx.calib, p_.calib_images, /*augment=*/false, mix_seed(ctx.seed, 0x67707471));
    GptqOptions go;
    go.damp = p_.damp;
    go.block_size = p_.block_size;
    go.act_order = p_.act_order;
    const Coder coder = p_.coder != "auto" ? parse_coder(p_.coder) : p_.bits > 0 ? Coder::fixed : Coder::rans;

    std::vector<torch::Tensor> W(L);
    for (int l = 0; l < L; ++l) W[l] = layers[l].weight().detach().clone().reshape({layers[l].weight().size(0), -1});
    auto quantize_at = [&](int l, const GptqFactor& f, const GptqGrid& g) {
      LayerResult r;
      r.grid = g;
      const double t0 = now_seconds();
      r.q = gptq_quantize(W[l], f, g, go);
      const double t1 = now_seconds();
      r.rec = encode_layer(layers[l].name, layers[l].weight().sizes().vec(), g, r.q.codes, p_.bits, coder);
      r.bits = record_bits(r.rec);
      t_.loop += t1 - t0;
      t_.encode += now_seconds() - t1;
      return r;
    };
    auto set_weight = [&](int l, const LayerResult& r) {
      layers[l].weight().copy_(r.q.Q.to(torch::kFloat32).reshape(layers[l].weight().sizes()));
    };

    // fp_target: every layer's input in the FP network, per calibration batch (one forward pass).
    std::vector<std::vector<torch::Tensor>> fp_inputs(L);
    if (p_.fp_target) {
      const double t0 = now_seconds();
      fp_inputs = capture_layer_inputs(model, images, p_.calib_batch);
      t_.forward += now_seconds() - t0;
    }
    // The parallel H (each layer's input in the FP network) and its factors: what the parallel
    // quantization and the allocation's candidates quantize with. Computed when first needed, so
    // a sequential run whose candidates come from the cache skips the pass.
    std::vector<torch::Tensor> H(L);
    std::vector<GptqFactor> F(L);
    bool have_parallel = false;
    auto parallel_factors = [&] {
      if (have_parallel) return;
      ctx.phase("hessian");
      H = parallel_grams(model, images);
      for (int l = 0; l < L; ++l) F[l] = timed_factor(H[l], go);
      have_parallel = true;
    };
    if (!p_.sequential) parallel_factors();
    std::vector<double> steps(L, 0);  // bits = 0: the step of each layer
    if (p_.bits == 0) {
      if (p_.alloc == "rule") parallel_factors();
      ctx.phase("allocate");
      steps = p_.alloc == "rule" ? rule_steps(ctx, model, W, F, quantize_at)
                                  : lagrangian_steps(ctx, model, images, W, H, F,
                                                     [&] {
                                                       parallel_factors();
                                                       ctx.phase("allocate");
                                                     },
                                                     quantize_at);
    }
    ctx.phase("quantize");
    // One quantization of every layer, the steps scaled by step_scale. Sequential: each layer's H
    // (and with fp_target its FP target) from the network whose earlier layers this pass quantized.
    const std::vector<torch::Tensor> W_fp = W;  // the FP weights (fp_target replaces W[l])
    struct Pass {
      std::vector<LayerRecord> recs;
      std::vector<torch::Tensor> Q;  // the quantized weights, in the layers' shapes
      double bpw = 0, scale = 1;
    };
    SequentialInputs seq_inputs(model, images, p_.calib_batch);
    auto run_pass = [&](double step_scale) {
      seq_inputs.reset();  // every layer changes from pass to pass
      Pass P;
      P.scale = step_scale;
      double total_bits = 0;
      for (int l = 0; l < L; ++l) {
        if (p_.sequential) {
          GptqGram g(PatchGeometry::of(layers[l]));
          const double t0 = now_seconds();
          double tg = 0;
          size_t batch = 0;
          if (p_.fp_target) g.weight = W_fp[l];
          seq_inputs.for_each(l, [&](const torch::Tensor& x, int64_t) {
            const double a = now_seconds();
            if (p_.fp_target)
              g.add(x, fp_inputs.at(l).at(batch++));
            else
              g.add(x);
            tg += now_seconds() - a;
          });
          t_.gram += tg;
          t_.forward += now_seconds() - t0 - tg;
          H[l] = g.H;
          F[l] = timed_factor(H[l], go);
          if (p_.fp_target) W[l] = gptq_fp_target(W_fp[l], g.H, g.B, p_.damp).to(W_fp[l].scalar_type());
        }
        const GptqGrid grid = p_.bits > 0 ? gptq_minmax_grid(W[l], p_.bits, /*fp16_scale=*/true)
                                          : step_grid_for(W[l], steps[l] * step_scale, p_.clamp_range, p_.deadzone);
        LayerResult r = quantize_at(l, F[l], grid);
        set_weight(l, r);
        P.Q.push_back(layers[l].weight().detach().clone());
        total_bits += r.bits;
        P.recs.push_back(std::move(r.rec));
      }
      P.bpw = total_bits / (double)model.num_weights();
      return P;
    };
    Pass best = run_pass(1.0);
    if (p_.bits == 0 && p_.sequential) {
      // The allocated steps were chosen on the parallel H; re-quantized sequentially the rate
      // moves. Up to kRatePasses more passes with every step scaled by a common factor 2^x bring
      // it back to target_bpw: the first guess assumes one bit per weight less per octave of
      // step, then the secant in x; the pass closest to the target is kept.
      constexpr int kRatePasses = 4;
      auto off = [&](const Pass& q) { return q.bpw / p_.target_bpw - 1; };
      std::string passes = std::to_string(best.bpw);
      double x0 = 0, f0 = off(best), x1 = std::max(-0.5, std::min(0.5, best.bpw - p_.target_bpw));
      for (int it = 0; it < kRatePasses && std::fabs(off(best)) > 0.002; ++it) {
        Pass q = run_pass(std::exp2(x1));
        passes += " " + std::to_string(q.bpw);
        const double f1 = off(q);
        if (std::fabs(f1) < std::fabs(off(best))) best = std::move(q);
        const double x2 = f1 != f0 ? x1 - f1 * (x1 - x0) / (f1 - f0) : x1 + (f1 > 0 ? 0.1 : -0.1);
        x0 = x1;
        f0 = f1;
        x1 = std::max(-2.0, std::min(2.0, x2));
      }
      for (int l = 0; l < L; ++l) layers[l].weight().copy_(best.Q[l]);
      ctx.rate_note += std::string(" Sequential re-quantization") + (p_.fp_target ? " (FP targets)" : "") +
                       " at the allocated steps x a common factor: passes at " + passes + " bpw_core; kept factor " +
                       std::to_string(best.scale) + " -> " + std::to_string(best.bpw) + " bpw_core.";
    }
    std::vector<LayerRecord> out = std::move(best.recs);
    const double bpw = best.bpw;
    log_info("gptq: " + std::to_string(bpw) + " bpw_core over " + std::to_string(L) + " layers");
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "gptq time: %.1f s (forward passes %.1f, H %.1f, factor %.1f, column loop %.1f, encode %.1f)",
                  now_seconds() - t_start, t_.forward, t_.gram, t_.factor, t_.loop, t_.encode);
    log_info(buf);
    return out;
  }

  torch::Tensor decode(const LayerRecord& rec) const override {
    ByteReader r(rec.section("grid").bytes, "gptq grid of " + rec.layer);
    int64_t numel = 1;
    for (int64_t s : rec.shape) {
      BB_CHECK(s >= 1 && s <= (1ll << 28), "gptq: bad shape in ", rec.layer);
      numel *= s;
      BB_CHECK(numel <= (1ll << 30), "gptq: shape too large in ", rec.layer);
    }
    BB_CHECK(!rec.shape.empty(), "gptq: empty shape in ", rec.layer);
    const int64_t rows = rec.shape[0], D = numel / rows;
    const uint8_t kind = r.u8();
    std::vector<double> scale(rows);
    std::vector<int32_t> zero(rows);
    int32_t qmin = 0;
    uint32_t alphabet = 0;
    if (kind == kGridMinmax) {
      const int bits = r.u8();
      BB_CHECK(bits >= 1 && bits <= 8, "corrupt gptq grid of ", rec.layer, ": bits ", bits);
      alphabet = 1u << bits;
      for (int64_t i = 0; i < rows; ++i) {
        GptqRowGrid rg;
        r.raw(&rg, sizeof rg);
        scale[i] = half_to_float(rg.scale_fp16);
        zero[i] = rg.zero;
        BB_CHECK(std::isfinite(scale[i]) && zero[i] < (int32_t)alphabet, "corrupt gptq grid of ", rec.layer);
      }
    } else if (kind == kGridStep) {
      GptqStepGrid sg;
      r.raw(&sg, sizeof sg);
      BB_CHECK(std::isfinite(sg.step) && sg.qmin <= 0 && sg.qmax >= 0 && (int64_t)sg.qmax - sg.qmin < (1 << 24),
               "corrupt gptq grid of ", rec.layer);
      scale.assign(rows, (double)sg.step);
      qmin = sg.qmin;
      alphabet = (uint32_t)(sg.qmax - sg.qmin + 1);
    } else {
      BB_THROW("corrupt gptq grid of ", rec.layer, ": kind ", (int)kind);
    }
    r.expect_done();
    const auto& lv = rec.section("levels").bytes;
    std::vector<uint32_t> syms = decode_symbols(lv, (uint64_t)numel);
    BB_CHECK((int64_t)syms.size() == numel, "corrupt gptq levels of ", rec.layer, ": ", syms.size(), " for ", numel);
    auto out = torch::empty({rows, D}, torch::kFloat32);
    float* op = out.data_ptr<float>();
    for (int64_t i = 0; i < numel; ++i) {
      BB_CHECK(syms[i] < alphabet, "corrupt gptq levels of ", rec.layer);
      const int64_t row = i / D;
      op[i] = (float)(scale[row] * (double)((int32_t)syms[i] + qmin - zero[row]));
    }
    return out.reshape(rec.shape);
  }

 private:
  GptqParams p_;
  // Wall seconds of compress()'s parts (logged at its end: where the time goes).
  struct Timing {
    double forward = 0, gram = 0, factor = 0, loop = 0, encode = 0;
  } t_;

  GptqFactor timed_factor(const torch::Tensor& H, const GptqOptions& go) {
    const double t0 = now_seconds();
    GptqFactor f = gptq_factor(H, go);
    t_.factor += now_seconds() - t0;
    return f;
  }

  std::vector<int64_t> grams_rows_;  // im2col rows behind each H of parallel_grams

  // One forward pass over the calibration images in batches of calib_batch with `tap` installed;
  // its wall seconds.
  double forward_all(Model& model, const torch::Tensor& images, LayerTap& tap) const {
    TapScope scope(model, &tap);
    const double t0 = now_seconds();
    for (int64_t s = 0; s < images.size(0); s += p_.calib_batch)
      model.forward(images.slice(0, s, std::min(images.size(0), s + p_.calib_batch)));
    return now_seconds() - t0;
  }

  std::vector<torch::Tensor> parallel_grams(Model& model, const torch::Tensor& images) {
    std::vector<GptqGram> grams;
    for (const auto& l : model.layers()) grams.emplace_back(PatchGeometry::of(l));
    GramTap tap;
    tap.grams = &grams;
    const double seconds = forward_all(model, images, tap);
    t_.gram += tap.seconds;
    t_.forward += seconds - tap.seconds;
    std::vector<torch::Tensor> H;
    grams_rows_.clear();
    for (auto& g : grams) {
      H.push_back(g.H);
      grams_rows_.push_back(g.rows);
    }
    return H;
  }

  template <class QuantizeAt>
  std::vector<double> rule_steps(CompressContext& ctx, Model& model, const std::vector<torch::Tensor>& W,
                                 const std::vector<GptqFactor>& F, QuantizeAt& quantize_at) const {
    const int L = (int)W.size();
    const double budget = p_.target_bpw * (double)model.num_weights();
    auto rate = [&](double alpha) {
      double bits = 0;
      for (int l = 0; l < L; ++l)
        bits += quantize_at(l, F[l], step_grid_for(W[l], alpha * W[l].std().item<double>(), p_.clamp_range, p_.deadzone)).bits;
      return bits;
    };
    // The rate falls as alpha grows: bisection in log alpha.
    double lo = std::log(p_.step_min), hi = std::log(p_.step_max);
    double best = hi, best_bits = rate(std::exp(hi));
    int evals = 1;
    for (int it = 0; it < 40; ++it, ++evals) {
      const double mid = 0.5 * (lo + hi);
      const double b = rate(std::exp(mid));
      if (b <= budget) {
        hi = mid;
        best = mid;
        best_bits = b;
      } else {
        lo = mid;
      }
      if (std::fabs(b / budget - 1) < 0.002 && b <= budget) break;
    }
    const double alpha = std::exp(best);
    ctx.rate_note = "gptq alloc=rule: step = " + std::to_string(alpha) + " * std(W) in every layer (bisection, " +
                    std::to_string(evals) + " evaluations) -> " +
                    std::to_string(best_bits / (double)model.num_weights()) + " bpw_core";
    log_info(ctx.rate_note);
    std::vector<double> steps(L);
    for (int l = 0; l < L; ++l) steps[l] = alpha * W[l].std().item<double>();
    return steps;
  }

  // `prepare` fills H and F (and grams_rows_); called only when the candidates are not cached.
  template <class QuantizeAt>
  std::vector<double> lagrangian_steps(CompressContext& ctx, Model& model, const torch::Tensor& images,
                                       const std::vector<torch::Tensor>& W, const std::vector<torch::Tensor>& H,
                                       const std::vector<GptqFactor>& F, const std::function<void()>& prepare,
                                       QuantizeAt& quantize_at) {
    const int L = (int)W.size();
    const auto& layers = model.layers();
    const int k0 = (int)std::ceil(std::log2(p_.step_min) * p_.steps_per_octave - 1e-9);
    const int k1 = (int)std::floor(std::log2(p_.step_max) * p_.steps_per_octave + 1e-9);
    std::vector<std::vector<RdPoint>> items(L);
    std::vector<std::vector<double>> cand_steps(L);
    // The candidates depend on the FP model, the calibration images and every parameter except
    // target_bpw: cached, a re-targeted run skips their quantization and logits passes.
    std::string cache_path, key;
    std::vector<std::string> names(L);
    for (int l = 0; l < L; ++l) names[l] = layers[l].name;
    if (!ctx.cache_dir.empty()) {
      key = rate_independent_key(*this, ctx);
      cache_path = (std::filesystem::path(ctx.cache_dir) / ("gptq-candidates-" + key.substr(0, 32) + ".bin")).string();
      if (read_candidates(cache_path, key, names, (size_t)(k1 - k0 + 1), cand_steps, items)) {
        log_info("gptq: allocation candidates from cache " + cache_path);
        return allocate_steps(ctx, model, items, cand_steps);
      }
    }
    prepare();
    std::vector<std::pair<int, torch::Tensor>> perts;  // alloc_distortion=logits
    for (int l = 0; l < L; ++l) {
      const double sd = W[l].std().item<double>();
      torch::Tensor bn = p_.alloc_distortion == "bn_output" ? model.bn_scale(l) : torch::Tensor();
      const double rows = (double)std::max<int64_t>(1, grams_rows_[l]);
      for (int k = k0; k <= k1; ++k) {
        const double step = sd * std::pow(2.0, (double)k / p_.steps_per_octave);
        LayerResult r = quantize_at(l, F[l], step_grid_for(W[l], step, p_.clamp_range, p_.deadzone));
        auto dW = r.q.Q - W[l].to(torch::kFloat64);
        double dist = 0;
        if (p_.alloc_distortion == "logits")
          perts.emplace_back(l, dW.to(torch::kFloat32));
        else
          dist = gptq_output_error(dW, H[l], bn) / rows;
        items[l].push_back({r.bits, dist});
        cand_steps[l].push_back(step);
      }
    }
    if (p_.alloc_distortion == "logits") {
      auto d = tq_measure_distortions(model, images.slice(0, 0, std::min(p_.logits_images, images.size(0))), p_.calib_batch, perts, true);
      size_t i = 0;
      for (int l = 0; l < L; ++l)
        for (auto& pt : items[l]) pt.dist = d.at(i++);
    }
    if (!cache_path.empty()) {
      write_candidates(cache_path, key, names, cand_steps, items);
      log_info("gptq: cached allocation candidates " + cache_path);
    }
    return allocate_steps(ctx, model, items, cand_steps);
  }

  // The Lagrangian allocation over the candidates: each layer's step.
  std::vector<double> allocate_steps(CompressContext& ctx, const Model& model, const std::vector<std::vector<RdPoint>>& items,
                                     const std::vector<std::vector<double>>& cand_steps) {
    const int L = (int)items.size();
    const auto& layers = model.layers();
    const double budget = p_.target_bpw * (double)model.num_weights();
    RdAllocation a = rd_allocate(items, budget);
    BB_CHECK(a.feasible, "gptq: target_bpw ", p_.target_bpw, " is below the lowest rate of the candidate steps (",
             a.min_rate / (double)model.num_weights(), " bpw_core at step_max ", p_.step_max, " * std(W))");
    std::vector<double> steps(L);
    std::string per_layer;
    for (int l = 0; l < L; ++l) {
      steps[l] = cand_steps[l][a.choice[l]];
      per_layer += (l ? " " : "") + std::to_string(items[l][a.choice[l]].rate / (double)layers[l].weight().numel()).substr(0, 5);
    }
    ctx.rate_note = "gptq alloc=lagrangian: " + std::to_string(items.empty() ? 0 : items[0].size()) + " candidate steps per layer, " +
                    std::to_string(a.rate / (double)model.num_weights()) + " bpw_core allocated (budget " +
                    std::to_string(p_.target_bpw) + "; the next candidate of any layer would exceed it); per-layer bpw: " +
                    per_layer;
    log_info(ctx.rate_note);
    return steps;
  }
};

}  // namespace
BB_REGISTER_METHOD("gptq", GptqMethod);
}  // namespace bb
