// Transform quantization (Young, Wang, Taubman, Girod: "Transform Quantization for CNN
// Compression", TPAMI 2021, arXiv 2009.01174). See docs/methods/tq.md.
//
//   1. per layer, M = S T with a KLT or ELT on the row side (basis across the m input channels,
//      the paper's Table 2) or the column side (across the n output channels) (quant/transform.h)
//   2. coefficient rows sorted by importance, cut into 16 blocks; per block and bit depth R = 0..8
//      the power-of-two step chosen on the logits MSE (Algorithm 2) and that MSE on ~100
//      calibration images, for the rows of T and for the block's columns of S
//      (quant/tq_curves.h; cached on disk, rate-independent)
//   3. Lagrangian allocation of (R_T, R_S) per block (quant/rd_alloc.h) so that the file's bits
//      for the weights (levels, bases, step sizes, headers: bpw_core) meet target_bpw
//   4. optional retraining at the allocated depths (straight-through estimator)
//   5. levels stored fixed-width (the paper) or entropy coded (huffman / rans)
#include "common/error.h"
#include "common/log.h"
#include "common/timer.h"
#include "coding/bbz.h"
#include "data/loader.h"
#include "methods/finetune_params.h"
#include "methods/method.h"
#include "quant/rd_alloc.h"
#include "quant/tq_core.h"
#include "quant/tq_curves.h"

#include <cmath>
#include <numeric>
#include <random>

namespace bb {
namespace {

const FinetuneDecl kTqFinetune{kFtEpochs | kFtLr | kFtMomentum | kFtBatch,
                               "by STE retraining on the calibration (training) set at the allocated depths",
                               "(SGD, cosine decay)"};

struct TqParams : ParamsBase {
  std::string transform = "elt";      // elt (default, chosen on validation: results/tq_ablation) | klt
  std::string transform_side = "row"; // row (basis across input channels, the paper's Table 2) | column
  double target_bpw = 2.0;            // bpw_core (file bits of the conv+FC weights, all side info included)
  std::string target_rate = "core";   // core | young: what target_bpw counts
  int blocks = 16;                    // coefficient blocks per layer (min(blocks, n))
  int64_t calib_images = 100;         // calibration images for D(R) and the ELT statistics
  int64_t batch_size = 100;           // micro-batch of the calibration passes
  int steps_per_octave = 1;           // step grid 2^(e / steps_per_octave); 1 = powers of two
  std::string step_search = "logits_descent"; // weight | logits_neighbours (= logits) | logits_descent | logits_grid
  double elt_ridge = 1e-3;            // ELT regularisation of the gradient covariance
  std::string coder = "fixed";        // levels: fixed-width (the paper) | huffman | rans (entropy coded)
  // STE retraining at the allocated depths: finetune_epochs (fractional allowed), finetune_lr (SGD,
  // cosine decay to 0), finetune_momentum, finetune_batch; the other settings are not used.
  FinetuneOptions finetune = default_finetune();
  bool transform_inference = false;   // also run the calibration images as y = S (T x) and report

  void bind(ParamBinder& b) override {
    b.field("transform", transform, "elt (default): also whitens the logits' gradient (generalised eigenproblem; row-ELT of the paper's Table 2); klt: eigenvectors of the weight covariance", {"klt", "elt"});
    b.field("transform_side", transform_side, "row: basis across the input channels, T = Theta U (the paper's Table 2); column: across the output channels, T = U^T Theta", {"row", "column"});
    b.field("target_bpw", target_bpw, "target rate in bits per conv+FC weight (see target_rate)");
    b.field("target_rate", target_rate, "core: target_bpw is bpw_core, the file's bits for the weights (levels, bases, step sizes, headers); young: the paper's rate (T and S levels at their bit depths only)", {"core", "young"});
    b.field("blocks", blocks, "coefficient blocks per layer (rows sorted by importance; min(blocks, n) per layer)");
    b.field("calib_images", calib_images, "calibration images for the distortion curves and the ELT gradients");
    b.field("batch_size", batch_size, "micro-batch of the calibration forward/backward passes");
    b.field("steps_per_octave", steps_per_octave, "step sizes 2^(e/steps_per_octave); 1 = powers of two as in the paper");
    b.field("step_search", step_search, "step of each (block, R) on the grid e0-4..e0+3 around the weight-error optimum e0: weight: e0 (1 pass); logits_neighbours (or logits): best of e0, e0+-1 by logits MSE (3 passes); logits_descent: walk from e0 while the logits MSE falls (3 + steps walked); logits_grid: best of all 8 by logits MSE (8 passes, Algorithm 2)", {"weight", "logits_neighbours", "logits", "logits_descent", "logits_grid"});
    b.field("elt_ridge", elt_ridge, "ELT: gradient covariance + ridge*trace/n*I");
    b.field("coder", coder, "level coding: fixed-width (the paper), or entropy coded (not in the paper); with target_rate=core the coded size meets target_bpw, with young the fixed-width rate does", {"fixed", "huffman", "rans"});
    bind_finetune(b, finetune, kTqFinetune);
    b.field("transform_inference", transform_inference, "also run the calibration images with y = S(Tx), zeroed rows skipped, and report MACs, time and agreement");
    b.renamed("entropy_coding", "use coder=fixed|huffman|rans (entropy_coding=false -> coder=fixed; true -> coder=<entropy_coder>, rans by default)");
    b.renamed("entropy_coder", "use coder=huffman|rans (coder=fixed: fixed-width levels)");
    b.renamed("retrain_epochs", "use finetune_epochs");
    b.renamed("retrain_lr", "use finetune_lr");
    b.renamed("retrain_momentum", "use finetune_momentum");
    b.renamed("retrain_batch_size", "use finetune_batch");
  }

  static FinetuneOptions default_finetune() {
    FinetuneOptions o;
    o.epochs = 0;
    o.lr = 0.001;
    o.optimizer = "sgd";
    o.momentum = 0.9;
    o.batch_size = 128;
    return o;
  }

  void validate() override {
    BB_CHECK(target_bpw > 0 && target_bpw <= kTqMaxBits, "tq: target_bpw must be in (0, 8], got ", target_bpw);
    BB_CHECK(blocks >= 1 && blocks <= 4096, "tq: blocks must be in 1..4096, got ", blocks);
    BB_CHECK(calib_images >= 1, "tq: calib_images must be >= 1");
    BB_CHECK(batch_size >= 1, "tq: batch_size must be >= 1");
    BB_CHECK(steps_per_octave >= 1 && steps_per_octave <= 64, "tq: steps_per_octave must be in 1..64");
    BB_CHECK(elt_ridge > 0 && elt_ridge < 1, "tq: elt_ridge must be in (0, 1)");
    parse_coder(coder);
    validate_finetune(finetune, kTqFinetune, "tq: ");
    BB_CHECK(finetune.epochs <= 100, "tq: finetune_epochs must be in [0, 100]");
  }
};

// Per block, the operating points the allocator chooses from: rows zeroed (no basis columns
// either), or (R_T, R_S) in 1..8 x 1..8 with additive distortions.
struct BlockOptions {
  std::vector<RdPoint> points;
  std::vector<std::pair<int, int>> bits;  // (R_T, R_S) per point
};

double varint_bits(uint64_t v) {
  double bytes = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++bytes;
  }
  return 8 * bytes;
}
double zigzag_bits(int64_t v) { return varint_bits(((uint64_t)v << 1) ^ (uint64_t)(v >> 63)); }

// side_info: also count the block's bytes in tq.side (bit depths and step exponents).
BlockOptions block_options(const TqLayerCurves& L, size_t b, bool side_info) {
  BlockOptions o;
  const TqBlockCurves& cv = L.blocks[b];
  const double nt = (double)((L.bounds[b + 1] - L.bounds[b]) * L.d), ns = (double)((L.bounds[b + 1] - L.bounds[b]) * L.n);
  o.points.push_back({side_info ? 8.0 : 0.0, cv.t_dist[0]});
  o.bits.push_back({0, 0});
  for (int rt = 1; rt <= kTqMaxBits; ++rt)
    for (int rs = 1; rs <= kTqMaxBits; ++rs) {
      const double side = side_info ? 16.0 + zigzag_bits(cv.t_exp[rt]) + zigzag_bits(cv.s_exp[rs]) : 0.0;
      o.points.push_back({nt * rt + ns * rs + side, cv.t_dist[rt] + cv.s_dist[rs]});
      o.bits.push_back({rt, rs});
    }
  return o;
}

// Latent S and T of one layer trained through the quantizer (straight-through estimator: the
// forward uses the quantized values, the gradient passes where the latent is inside the
// quantizer's range).
struct LatentLayer {
  torch::Tensor S, T;                    // float32 latents, n x n and n x d
  torch::Tensor t_step, t_lo, t_hi;      // per row of T (n x 1)
  torch::Tensor s_step, s_lo, s_hi;      // per column of S (1 x n)
  torch::Tensor row_on;                  // n x 1: 1 for rows kept, 0 for zeroed
};

torch::Tensor ste_quantize(const torch::Tensor& x, const torch::Tensor& step, const torch::Tensor& lo,
                           const torch::Tensor& hi) {
  auto u = x / step;
  auto q = torch::min(torch::max(torch::round(u), lo), hi) * step;
  auto inside = ((u >= lo - 0.5) & (u <= hi + 0.5)).to(x.scalar_type());
  return q.detach() + (x - x.detach()) * inside;
}

LatentLayer make_latent(const TqLayerCurves& L, const TqLayerCode& code) {
  LatentLayer z;
  const int64_t n = L.n;
  std::vector<float> ts(n, 1), tlo(n, 0), thi(n, 0), on(n, 0), ss(n, 1), slo(n, 0), shi(n, 0);
  for (size_t b = 0; b < code.blocks.size(); ++b) {
    const TqBlockCode& k = code.blocks[b];
    if (k.t_bits == 0) continue;
    for (int64_t r = code.bounds[b]; r < code.bounds[b + 1]; ++r) {
      on[r] = 1;
      ts[r] = (float)tq_step(k.t_exp, code.steps_per_octave);
      tlo[r] = -(float)(1 << (k.t_bits - 1));
      thi[r] = (float)((1 << (k.t_bits - 1)) - 1);
      ss[r] = (float)tq_step(k.s_exp, code.steps_per_octave);
      slo[r] = -(float)(1 << (k.s_bits - 1));
      shi[r] = (float)((1 << (k.s_bits - 1)) - 1);
    }
  }
  auto col = [&](const std::vector<float>& v) { return torch::tensor(v).view({n, 1}); };
  auto row = [&](const std::vector<float>& v) { return torch::tensor(v).view({1, n}); };
  z.S = L.S.to(torch::kFloat32).clone().set_requires_grad(true);
  z.T = L.T.to(torch::kFloat32).clone().set_requires_grad(true);
  z.t_step = col(ts);
  z.t_lo = col(tlo);
  z.t_hi = col(thi);
  z.s_step = row(ss);
  z.s_lo = row(slo);
  z.s_hi = row(shi);
  z.row_on = col(on);
  return z;
}

torch::Tensor add_bias(const Layer& layer, const torch::Tensor& y) {
  if (!layer.bias().defined()) return y;
  return y + (layer.is_conv() ? layer.bias().view({1, -1, 1, 1}) : layer.bias());
}

// Runs each compressed layer with W = unorient(Q(S) Q(T)) (differentiable through the STE).
struct LatentTap : LayerTap {
  Model* model = nullptr;
  std::vector<LatentLayer>* latents = nullptr;
  TransformSide side = TransformSide::row;
  torch::Tensor precomputed_output(int l, const torch::Tensor& x) override {
    const Layer& layer = model->layers()[l];
    LatentLayer& z = (*latents)[l];
    auto tq = ste_quantize(z.T, z.t_step, z.t_lo, z.t_hi) * z.row_on;
    auto sq = ste_quantize(z.S, z.s_step, z.s_lo, z.s_hi) * z.row_on.t();
    auto w = tq_unorient(torch::mm(sq, tq), layer.weight().sizes(), side);
    return add_bias(layer, tq_layer_apply(layer, x, w));
  }
};

// Runs each layer in the transform domain with the zeroed rows of T (and columns of S) skipped.
struct TransformDomainTap : LayerTap {
  Model* model = nullptr;
  TransformSide side = TransformSide::row;
  std::vector<torch::Tensor> S_act, T_act;  // per layer: p x k and k x q (float32)
  torch::Tensor precomputed_output(int l, const torch::Tensor& x) override {
    const Layer& layer = model->layers()[l];
    return add_bias(layer, tq_apply_factored(layer, x, S_act[l], T_act[l], side));
  }
};

class TqMethod : public Method {
 public:
  std::string name() const override { return "tq"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override { return true; }

  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    BB_CHECK(ctx.model, "tq: no model");
    BB_CHECK(ctx.calib, "tq: needs a calibration set (--calib)");
    Model& model = *ctx.model;
    const auto& layers = model.layers();

    ctx.phase("curves");
    TqCurveOptions co;
    co.transform = p_.transform == "elt" ? TransformKind::elt : TransformKind::klt;
    co.side = parse_transform_side(p_.transform_side);
    co.blocks = p_.blocks;
    co.calib_images = p_.calib_images;
    co.batch_size = p_.batch_size;
    co.seed = ctx.seed;
    co.steps_per_octave = p_.steps_per_octave;
    co.step_search = parse_step_search(p_.step_search);
    co.elt_ridge = p_.elt_ridge;
    const double t_curves = now_seconds();
    TqCurves curves = tq_compute_curves(model, *ctx.calib, co, ctx.cache_dir);
    last_.curves_from_cache = curves.from_cache;
    last_.curves_seconds = now_seconds() - t_curves;
    last_.search_seconds = curves.search_seconds;
    BB_CHECK(curves.layers.size() == layers.size(), "tq: curves cover ", curves.layers.size(), " layers, model has ",
             layers.size());

    ctx.phase("allocate");
    const double t_alloc = now_seconds();
    const Coder coder = parse_coder(p_.coder);
    std::vector<TqLayerCode> codes = p_.target_rate == "core" ? allocate_core(curves, model, coder)
                                                              : allocate_young(curves, model);
    last_.allocate_seconds = now_seconds() - t_alloc;

    if (p_.finetune.epochs > 0) {
      ctx.phase("retrain");
      retrain(ctx, curves, codes);
    }

    ctx.phase("encode");
    std::vector<TqLevels> levels;
    std::vector<LayerRecord> records = encode_all(curves, codes, coder, model, &levels);
    latent_S_.clear();
    latent_T_.clear();
    double t_bits = 0, s_bits = 0;
    for (size_t l = 0; l < layers.size(); ++l) {
      t_bits += records[l].estimate.fixed_index_bits;
      s_bits += records[l].estimate.codebook_bits;
      torch::NoGradGuard ng;
      layers[l].weight().copy_(tq_reconstruct_weight(codes[l], levels[l], layers[l].weight().sizes()));
    }
    const double nw = (double)model.num_weights();
    last_.bpw_fixed = (t_bits + s_bits) / nw;
    last_.bpw_coded = record_bits(records) / nw;
    log_info("tq: " + label() + " rate " + std::to_string(last_.bpw_fixed) + " bpw fixed-width levels (coefficients " +
             std::to_string(t_bits / nw) + " + bases " + std::to_string(s_bits / nw) + "), bpw_core " +
             std::to_string(last_.bpw_coded) + " (" + p_.coder +
             " levels, side info and record headers included), target " + std::to_string(p_.target_bpw) + " (" +
             p_.target_rate + ")");
    report_macs(model, codes, levels, *ctx.calib, ctx.seed);
    return records;
  }

  torch::Tensor decode(const LayerRecord& rec) const override {
    TqLayerCode code;
    TqLevels lv;
    tq_decode(rec, code, lv);
    return tq_reconstruct_weight(code, lv, rec.shape);
  }

 private:
  std::string label() const {
    return p_.transform_side + "-" + (p_.transform == "elt" ? std::string("ELT") : std::string("KLT"));
  }

  // One record per layer (levels from the curves' S and T, or the retrained latents).
  std::vector<LayerRecord> encode_all(const TqCurves& curves, const std::vector<TqLayerCode>& codes, Coder coder,
                                      const Model& model, std::vector<TqLevels>* levels_out) const {
    const auto& layers = model.layers();
    std::vector<LayerRecord> records;
    if (levels_out) levels_out->assign(layers.size(), TqLevels());
    for (size_t l = 0; l < layers.size(); ++l) {
      const TqLayerCurves& L = curves.layers[l];
      BB_CHECK(L.layer == layers[l].name, "tq: curves are for layer ", L.layer, ", model has ", layers[l].name);
      TqLevels lv = tq_quantize(codes[l], latent_S_.empty() ? L.S : latent_S_[l], latent_T_.empty() ? L.T : latent_T_[l]);
      LayerRecord rec;
      rec.layer = layers[l].name;
      rec.method = "tq";
      rec.shape = layers[l].weight().sizes().vec();
      tq_encode(codes[l], lv, coder, rec);
      records.push_back(std::move(rec));
      if (levels_out) (*levels_out)[l] = std::move(lv);
    }
    return records;
  }

  // Bits of the records as the container counts them for bpw_core (headers included).
  static double record_bits(const std::vector<LayerRecord>& recs) {
    BbzFile f;
    f.layers = recs;
    BbzSizes sizes;
    serialize_bbz(f, &sizes);
    double bytes = 0;
    for (const auto& l : sizes.layers) bytes += (double)l.total();
    return 8.0 * bytes;
  }

  // target_rate=young: the paper's rate (levels of T and S) meets target_bpw.
  std::vector<TqLayerCode> allocate_young(const TqCurves& curves, const Model& model) {
    const double nw = (double)model.num_weights();
    const double budget = p_.target_bpw * nw;
    bool feasible = true;
    auto codes = allocate(curves, budget, /*side_info=*/false, &feasible);
    if (!feasible) BB_THROW("tq: target_bpw ", p_.target_bpw, " is below the smallest achievable rate");
    return codes;
  }

  // target_rate=core: bpw_core (every byte of the records) meets target_bpw. The allocation counts
  // the levels and each block's side bytes; the rest (record, section and stream headers, entropy
  // coding) is measured by encoding, and the budget is corrected by the difference until the
  // measured rate lies within 0.2% below the target (at most 12 rounds; the best one at or under
  // the target is kept).
  std::vector<TqLayerCode> allocate_core(const TqCurves& curves, const Model& model, Coder coder) {
    const double nw = (double)model.num_weights();
    const double target = p_.target_bpw * nw;
    double budget = target;
    std::vector<TqLayerCode> best;
    double best_bits = -1, prev_bits = -1;
    int rounds = 0, stalled = 0;
    for (; rounds < 12; ++rounds) {
      bool feasible = true;
      auto codes = allocate(curves, budget, /*side_info=*/true, &feasible);
      const double bits = record_bits(encode_all(curves, codes, coder, model, nullptr));
      log_info("tq: rate round " + std::to_string(rounds + 1) + ": allocation budget " + std::to_string(budget / nw) +
               " bpw -> bpw_core " + std::to_string(bits / nw));
      if (feasible && bits <= target && bits > best_bits) {
        best_bits = bits;
        best = codes;
      }
      if (best_bits >= 0.998 * target) break;
      if (bits == prev_bits) {
        // The allocation did not change. At or under the target, or with a round at or under it
        // already kept, stop (as before). Above it with none kept (coarse hulls: e.g. one block
        // per layer) the correction was smaller than the next hull step down, so it is doubled
        // each round until the allocation moves.
        if (bits <= target || best_bits >= 0) break;
        ++stalled;
      } else {
        stalled = 0;
      }
      prev_bits = bits;
      budget -= (bits - target) * (bits > target ? std::ldexp(1.0, stalled) : 1.0);
      if (budget <= 0) break;
    }
    if (best_bits < 0)
      BB_THROW("tq: target_bpw ", p_.target_bpw, " is below the smallest achievable bpw_core (side info included)");
    last_.rate_rounds = rounds + 1;
    if (best_bits < 0.98 * target)
      log_warn("tq: bpw_core " + std::to_string(best_bits / nw) + " is more than 2% below the target " +
               std::to_string(p_.target_bpw) + " after " + std::to_string(rounds + 1) +
               " rounds (the allocation's steps are too coarse to come closer)");
    else
      log_info("tq: bpw_core " + std::to_string(best_bits / nw) + " for target " + std::to_string(p_.target_bpw) +
               " after " + std::to_string(rounds + 1) + " allocation rounds");
    return best;
  }

  std::vector<TqLayerCode> allocate(const TqCurves& curves, double budget, bool side_info, bool* feasible) {
    std::vector<std::vector<RdPoint>> items;
    std::vector<BlockOptions> opts;
    for (const auto& L : curves.layers)
      for (size_t b = 0; b + 1 < L.bounds.size(); ++b) {
        opts.push_back(block_options(L, b, side_info));
        items.push_back(opts.back().points);
      }
    RdAllocation a = rd_allocate(items, budget);
    last_.lambda = a.lambda;
    last_.lagrangian = a.lagrangian;
    *feasible = a.rate <= budget * 1.0000001;
    if (!side_info && a.rate < 0.98 * budget)
      log_warn("tq: allocation reaches " + std::to_string(a.rate / budget * p_.target_bpw) +
               " bpw, more than 2% below the target " + std::to_string(p_.target_bpw));
    const TransformSide side = parse_transform_side(p_.transform_side);
    std::vector<TqLayerCode> codes;
    size_t item = 0;
    for (const auto& L : curves.layers) {
      TqLayerCode c;
      c.side = side;
      c.n = L.n;
      c.d = L.d;
      c.steps_per_octave = p_.steps_per_octave;
      c.bounds = L.bounds;
      for (size_t b = 0; b + 1 < L.bounds.size(); ++b, ++item) {
        auto [rt, rs] = opts[item].bits[a.choice[item]];
        TqBlockCode k;
        k.t_bits = rt;
        if (rt > 0) {
          k.t_exp = L.blocks[b].t_exp[rt];
          k.s_bits = rs;
          k.s_exp = L.blocks[b].s_exp[rs];
        }
        c.blocks.push_back(k);
      }
      codes.push_back(std::move(c));
    }
    log_debug("tq: allocation " + std::to_string(a.rate) + " bits for budget " + std::to_string(budget) + " (lambda " +
              std::to_string(a.lambda) + (a.lagrangian ? "" : ", with fill") + "), predicted logits MSE " +
              std::to_string(a.dist));
    return codes;
  }

  void retrain(CompressContext& ctx, const TqCurves& curves, const std::vector<TqLayerCode>& codes) {
    Model& model = *ctx.model;
    const Dataset& ds = *ctx.calib;
    const auto& layers = model.layers();
    std::vector<LatentLayer> latents;
    for (size_t l = 0; l < layers.size(); ++l) latents.push_back(make_latent(curves.layers[l], codes[l]));

    // Trainable: the latents and every model parameter except the conv/linear weights (BN affine
    // and biases), which the tap replaces.
    RequiresGradSaver saved(model);
    std::vector<torch::Tensor> train;
    for (auto& z : latents) {
      train.push_back(z.S);
      train.push_back(z.T);
    }
    for (const auto& L : layers) L.weight().set_requires_grad(false);
    for (auto& p : model.parameters())
      if (p.requires_grad()) train.push_back(p);

    const int64_t n = ds.size();
    const int64_t steps = std::max<int64_t>(1, (int64_t)std::llround(p_.finetune.epochs * (double)n / (double)p_.finetune.batch_size));
    torch::optim::SGD opt(train, torch::optim::SGDOptions(p_.finetune.lr).momentum(p_.finetune.momentum));
    LatentTap tap;
    tap.model = &model;
    tap.latents = &latents;
    tap.side = parse_transform_side(p_.transform_side);
    struct TrainMode {  // eval mode again on every exit
      Model& m;
      explicit TrainMode(Model& model) : m(model) { m.train(); }
      ~TrainMode() { m.eval(); }
    };
    TapScope scope(model, &tap);
    TrainMode mode(model);
    log_info("tq: retraining " + std::to_string(steps) + " steps of " + std::to_string(p_.finetune.batch_size) +
             " images (" + std::to_string(p_.finetune.epochs) + " epochs of " + ds.name() + ")");
    const double t0 = now_seconds();
    Progress progress("tq retrain", steps);
    int64_t step = 0;
    double loss_acc = 0;
    int64_t correct = 0, seen = 0;
    for (int64_t epoch = 0; step < steps; ++epoch) {
        std::vector<int64_t> order(n);
        std::iota(order.begin(), order.end(), 0);
        std::mt19937_64 rng(ctx.seed * 1000003 + (uint64_t)epoch);
        std::shuffle(order.begin(), order.end(), rng);
        const int64_t need = std::min<int64_t>(n, (steps - step) * p_.finetune.batch_size);
        order.resize(need);
        LoaderOptions lo;
        lo.batch_size = p_.finetune.batch_size;
        lo.augment = true;
        lo.seed = ctx.seed + (uint64_t)epoch * 7919;
        for_each_batch(ds, order, lo, [&](const Batch& b) {
          if (step >= steps) return;
          const double lr = 0.5 * p_.finetune.lr * (1 + std::cos(std::acos(-1.0) * (double)step / (double)steps));
          for (auto& g : opt.param_groups()) static_cast<torch::optim::SGDOptions&>(g.options()).lr(lr);
          opt.zero_grad();
          auto logits = model.forward(b.images);
          auto loss = torch::nn::functional::cross_entropy(logits, b.labels);
          loss.backward();
          opt.step();
          loss_acc += loss.item<double>();
          correct += logits.argmax(1).eq(b.labels).sum().item<int64_t>();
          seen += b.labels.size(0);
          ++step;
          progress.advance();
          if (step % 100 == 0 || step == steps) {
            log_info("tq retrain step " + std::to_string(step) + "/" + std::to_string(steps) + ": loss " +
                     std::to_string(loss_acc / 100.0) + ", train top-1 " + std::to_string(100.0 * correct / std::max<int64_t>(1, seen)));
            loss_acc = 0;
            correct = seen = 0;
          }
        });
    }
    progress.finish();
    log_info("tq: retraining took " + std::to_string(now_seconds() - t0) + " s");
    for (auto& z : latents) {
      latent_S_.push_back(z.S.detach().to(torch::kFloat64));
      latent_T_.push_back(z.T.detach().to(torch::kFloat64));
    }
  }

  // MACs of direct vs transform-domain inference; with transform_inference=true also runs the
  // calibration images both ways and reports agreement and time.
  void report_macs(Model& model, const std::vector<TqLayerCode>& codes, const std::vector<TqLevels>& levels,
                   const Dataset& calib, uint64_t seed) {
    const auto& layers = model.layers();
    Batch one = load_batch(calib, sample_indices(calib.size(), 1, seed));
    struct Shapes : LayerTap {
      std::vector<int64_t> positions;
      torch::Tensor on_output(int l, const torch::Tensor& x, torch::Tensor y) override {
        if ((size_t)l >= positions.size()) positions.resize(l + 1, 1);
        positions[l] = y.dim() == 4 ? y.size(2) * y.size(3) : 1;
        return y;
      }
    } shapes;
    {
      torch::NoGradGuard ng;
      TapScope scope(model, &shapes);
      model.forward(one.images);
    }
    double direct = 0, transform = 0;
    for (size_t l = 0; l < layers.size(); ++l) {
      TqMacs m = tq_macs_per_position(codes[l]);
      direct += (double)m.direct * (double)shapes.positions[l];
      transform += (double)m.transform * (double)shapes.positions[l];
    }
    last_.macs_direct = direct;
    last_.macs_transform = transform;
    log_info("tq: conv/FC MACs per image: direct " + std::to_string(direct / 1e6) + " M, transform domain " +
             std::to_string(transform / 1e6) + " M (" + std::to_string(transform / direct) + "x)");
    if (!p_.transform_inference) return;

    TransformDomainTap tap;
    tap.model = &model;
    tap.side = parse_transform_side(p_.transform_side);
    for (size_t l = 0; l < layers.size(); ++l) {
      torch::Tensor S_hat, T_hat;
      tq_dequantize(codes[l], levels[l], S_hat, T_hat);
      std::vector<int64_t> rows;
      for (size_t b = 0; b + 1 < codes[l].bounds.size(); ++b)
        if (codes[l].blocks[b].t_bits > 0)
          for (int64_t r = codes[l].bounds[b]; r < codes[l].bounds[b + 1]; ++r) rows.push_back(r);
      auto idx = torch::tensor(rows, torch::kInt64);
      tap.T_act.push_back(T_hat.index_select(0, idx).to(torch::kFloat32).contiguous());
      tap.S_act.push_back(S_hat.index_select(1, idx).to(torch::kFloat32).contiguous());
    }
    Batch cal = load_batch(calib, sample_indices(calib.size(), std::min<int64_t>(p_.calib_images, calib.size()), seed));
    torch::NoGradGuard ng;
    torch::Tensor ref, out;
    double t_direct, t_transform;
    {
      TapScope scope(model, nullptr);
      double t0 = now_seconds();
      ref = model.forward(cal.images);
      t_direct = now_seconds() - t0;
    }
    {
      TapScope scope(model, &tap);
      double t0 = now_seconds();
      out = model.forward(cal.images);
      t_transform = now_seconds() - t0;
    }
    const double maxdiff = (out - ref).abs().max().item<double>();
    const double agree = out.argmax(1).eq(ref.argmax(1)).to(torch::kFloat64).mean().item<double>();
    last_.transform_max_logit_diff = maxdiff;
    log_info("tq: transform-domain inference on " + std::to_string(cal.images.size(0)) + " images: " +
             std::to_string(t_transform) + " s vs direct " + std::to_string(t_direct) + " s, max |logit diff| " +
             std::to_string(maxdiff) + ", top-1 agreement " + std::to_string(100 * agree) + "%");
  }

  TqParams p_;
  // Figures of the last compress(), for its log lines.
  struct {
    bool curves_from_cache = false;
    double curves_seconds = 0, search_seconds = 0, allocate_seconds = 0;
    double bpw_fixed = 0, bpw_coded = 0, lambda = 0;
    bool lagrangian = true;
    int rate_rounds = 0;
    double macs_direct = 0, macs_transform = 0, transform_max_logit_diff = -1;
  } last_;
  std::vector<torch::Tensor> latent_S_, latent_T_;  // retrained latents (float64), consumed by compress
};

BB_REGISTER_METHOD("tq", TqMethod);

}  // namespace
}  // namespace bb
