#include "quant/weight_sharing.h"
#include "coding/bbz.h"
#include "coding/bytes.h"
#include "coding/symbols.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/timer.h"
#include "methods/finetune_params.h"
#include "models/weights_io.h"
#include "quant/kmeans1d.h"
#include "quant/prune.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>

namespace bb {

// The sharing family's fine-tuning settings (each method's defaults are in SharingParams::finetune).
static const FinetuneDecl kSharingFinetune{kFtEpochs | kFtLr | kFtOptimizer | kFtBatch | kFtMaxImages | kFtMode |
                                               kFtTemperature | kFtBn | kFtAugment,
                                           "the shared values", ""};

void SharingParams::bind(ParamBinder& b) {
  b.field("scope", scope, "codebook shared by the whole network or one per layer", {"network", "layer"});
  b.field("weighting", weighting, "importance of each weight's error: Hessian diagonal or uniform", {"hessian", "none"});
  b.field("coder", coder, "index stream coder", {"fixed", "huffman", "rans"});
  b.field("codebook_fp16", codebook_fp16, "store shared values as fp16 (default fp32)");
  b.field("target_bpw", target_bpw, "rate target, bits per weight over all compressed weights, coded bytes (0 = off)");
  b.field("rate_tol", rate_tol, "rate search stops within this relative distance of target_bpw");
  b.field("hessian", hessian.estimator, "Hessian diagonal estimator (adam_sqrt: Choi et al.'s sqrt of Adam's v_hat)",
          {"gauss_newton", "empirical_fisher", "hutchinson", "adam_sqrt"});
  b.field("hessian_images", hessian.images, "calibration images for the Hessian");
  b.field("hessian_batch", hessian.batch_size, "images per backward pass in the Hessian estimate");
  b.field("hessian_gn_max_classes", hessian.gn_max_classes, "gauss_newton: exact sum over classes up to this many, else sampled labels");
  b.field("hessian_gn_samples", hessian.gn_samples, "gauss_newton: labels sampled per image when not exact");
  b.field("hessian_probes", hessian.hutchinson_probes, "hutchinson: Rademacher probes per batch");
  b.field("hessian_adam_batch", hessian.adam_batch, "adam_sqrt: minibatch size of the squared minibatch gradients");
  b.field("hessian_floor", hessian_floor, "h_i is raised to at least floor * mean(h)");
  b.field("hessian_power", hessian_power, "h_i <- h_i^power after the floor (1 = as estimated)");
  b.field("hessian_norm", hessian_norm, "layer: divide each layer's h by its mean (weighting only within layers)",
          {"none", "layer"});
  b.field("hessian_damping", hessian_damping, "h_i <- h_i + damping * mean(h) after normalisation (0 = none)");
  b.field("prune_keep", prune_keep, "fraction of weights kept by magnitude pruning (1 = no pruning)");
  b.field("prune_scope", prune_scope, "pruning threshold per layer or one for the network", {"layer", "network"});
  b.field("prune_run_alphabet", prune_run_alphabet, "alphabet of the pruned-position run code (last symbol = escape)");
  b.field("prune_retrain_epochs", prune_retrain_epochs, "epochs retraining the kept weights (mask fixed) before quantization");
  b.field("prune_retrain_lr", prune_retrain_lr, "learning rate of the retraining after pruning");
  bind_finetune(b, finetune, kSharingFinetune);
  b.field("finetune_average", finetune_average, "codeword gradient = mean of member gradients (default: sum)");
}

void SharingParams::validate() {
  BB_CHECK(target_bpw >= 0 && std::isfinite(target_bpw), "target_bpw must be >= 0, got ", target_bpw);
  BB_CHECK(rate_tol > 0 && rate_tol < 0.5, "rate_tol must be in (0, 0.5), got ", rate_tol);
  BB_CHECK(hessian_floor >= 0 && hessian_floor < 1, "hessian_floor must be in [0, 1), got ", hessian_floor);
  BB_CHECK(hessian_power > 0 && hessian_power <= 4, "hessian_power must be in (0, 4], got ", hessian_power);
  BB_CHECK(hessian_damping >= 0 && std::isfinite(hessian_damping), "hessian_damping must be >= 0, got ", hessian_damping);
  BB_CHECK(prune_keep > 0 && prune_keep <= 1, "prune_keep must be in (0, 1], got ", prune_keep);
  BB_CHECK(prune_run_alphabet >= 2 && prune_run_alphabet <= 65536, "prune_run_alphabet must be in [2, 65536], got ", prune_run_alphabet);
  BB_CHECK(prune_retrain_epochs >= 0, "prune_retrain_epochs must be >= 0, got ", prune_retrain_epochs);
  BB_CHECK(prune_retrain_lr > 0, "prune_retrain_lr must be > 0, got ", prune_retrain_lr);
  BB_CHECK(prune_retrain_epochs == 0 || pruned(), "prune_retrain_epochs needs prune_keep < 1");
  hessian.validate();
  validate_finetune(finetune, kSharingFinetune, "");
}

// ---------------------------------------------------------------------------------------------

void shape_importance(SharingProblem& prob, const SharingParams& p) {
  if (prob.h.empty()) return;
  std::vector<double> h(prob.h.begin(), prob.h.end());
  if (p.hessian_power != 1.0)
    for (double& v : h) v = std::pow(std::max(v, 0.0), p.hessian_power);
  if (p.hessian_norm == "layer") {
    for (size_t l = 0; l + 1 < prob.offset.size(); ++l) {
      const int64_t b = prob.offset[l], e = prob.offset[l + 1];
      double m = 0;
      for (int64_t i = b; i < e; ++i) m += h[i];
      if (e > b && m > 0)
        for (int64_t i = b; i < e; ++i) h[i] *= (double)(e - b) / m;
    }
  }
  double sum = 0;
  for (double v : h) sum += v;
  BB_CHECK(sum > 0 && std::isfinite(sum), "weight sharing: the importance weights sum to ", sum);
  if (p.hessian_damping > 0) {
    const double add = p.hessian_damping * sum / (double)h.size();
    for (double& v : h) v += add;
    sum += add * (double)h.size();
  }
  // Mean 1, so the rate searches see the same scale whatever the estimator and options.
  const double scale = (double)h.size() / sum;
  for (size_t i = 0; i < h.size(); ++i) prob.h[i] = (float)(h[i] * scale);
}

SharingProblem prepare_sharing(CompressContext& ctx, const SharingParams& p) {
  BB_CHECK(ctx.model, "weight sharing: no model");
  Model& model = *ctx.model;
  const auto& layers = model.layers();
  BB_CHECK(!layers.empty(), "weight sharing: model '", model.arch(), "' has no conv/linear layers");
  SharingProblem prob;
  std::vector<torch::Tensor> weights;
  for (size_t l = 0; l < layers.size(); ++l) {
    prob.layers.push_back((int)l);
    prob.names.push_back(layers[l].name);
    prob.shapes.push_back(layers[l].weight().sizes().vec());
    weights.push_back(layers[l].weight().detach());
    prob.total_weights += layers[l].weight().numel();
  }

  if (p.pruned()) {
    ctx.phase("prune");
    prob.masks = magnitude_prune_masks(weights, p.prune_keep, p.prune_scope);
    if (p.prune_retrain_epochs == 0) {
      torch::NoGradGuard ng;
      for (size_t l = 0; l < layers.size(); ++l) layers[l].weight().mul_(prob.masks[l].to(torch::kFloat32));
    } else {
      // The unpruned model stays in place until retraining ends (it is the distillation teacher);
      // retraining leaves leaf * mask in the layers.
      BB_CHECK(ctx.calib, "weight sharing: prune_retrain_epochs > 0 needs calibration data");
      FinetuneOptions fo = p.finetune;
      fo.epochs = p.prune_retrain_epochs;
      fo.lr = p.prune_retrain_lr;
      fo.seed = ctx.seed ^ 0x9a11e;
      // Retraining is the costliest step and the same for every method: cache the whole state.
      std::string path;
      if (!ctx.cache_dir.empty()) {
        std::ostringstream key;
        key.precision(17);
        key << "prune-retrain-v1 state=" << model_state_hash(model) << " keep=" << p.prune_keep << " scope=" << p.prune_scope
            << " data=" << ctx.calib->identity() << " " << fo.key();
        path = (std::filesystem::path(ctx.cache_dir) / ("pruned-" + sha256_hex(key.str()).substr(0, 32) + ".pt")).string();
      }
      if (!path.empty() && std::filesystem::exists(path)) {
        load_state_dict(model, read_state_dict(path), path);
        log_info("weight sharing: retrained pruned weights from cache " + path);
      } else {
        ctx.phase("prune_retrain");
        SharedWeights sw;
        for (size_t l = 0; l < layers.size(); ++l) {
          auto m = prob.masks[l].to(torch::kFloat32);
          auto leaf = (layers[l].weight().detach() * m).contiguous();
          sw.leaves.push_back(leaf);
          sw.layers.push_back({(int)l, [leaf, m] { return leaf * m; }});
        }
        finetune_shared(model, *ctx.calib, sw, fo);
        if (!path.empty()) {
          write_state_dict(model.state(), path);
          log_info("weight sharing: cached retrained pruned weights " + path);
        }
      }
    }
  }

  std::vector<torch::Tensor> H;
  if (p.weighting == "hessian") {
    BB_CHECK(ctx.calib, "weight sharing: weighting=hessian needs calibration data (--calib)");
    ctx.phase("hessian");
    HessianParams hp = p.hessian;
    hp.seed = ctx.seed;
    bool hit = false;
    H = hessian_diag_cached(model, *ctx.calib, hp, ctx.cache_dir, &hit);
  }

  prob.offset.push_back(0);
  for (size_t l = 0; l < layers.size(); ++l) {
    auto w = layers[l].weight().detach().contiguous().view(-1);
    torch::Tensor keep = p.pruned() ? prob.masks[l].contiguous().view(-1) : torch::Tensor();
    auto hv = H.empty() ? torch::Tensor() : H[l].contiguous().view(-1);
    const float* wp = w.data_ptr<float>();
    const bool* kp = keep.defined() ? keep.data_ptr<bool>() : nullptr;
    const float* hp = hv.defined() ? hv.data_ptr<float>() : nullptr;
    for (int64_t i = 0; i < w.numel(); ++i) {
      if (kp && !kp[i]) continue;
      prob.x.push_back(wp[i]);
      if (hp) prob.h.push_back(hp[i]);
    }
    prob.offset.push_back((int64_t)prob.x.size());
  }
  if (!prob.h.empty()) {
    // Negative (Hutchinson) and tiny entries are raised to a floor; then mean 1, so the rate
    // searches see the same scale whatever the estimator.
    double mean = 0;
    for (float v : prob.h) mean += std::max(0.0f, v);
    mean /= (double)prob.h.size();
    BB_CHECK(mean > 0, "weight sharing: the Hessian diagonal estimate is zero everywhere");
    const double floor = p.hessian_floor * mean;
    int64_t raised = 0;
    for (float& v : prob.h) {
      if (v < floor) {
        v = (float)floor;
        ++raised;
      }
    }
    if (raised) log_info("weight sharing: " + std::to_string(raised) + " of " + std::to_string(prob.h.size()) +
                         " Hessian entries raised to the floor");
    shape_importance(prob, p);
  }
  return prob;
}

// ---------------------------------------------------------------------------------------------

SharingSolution solve_sharing(const SharingProblem& prob, const SharingParams& p, const ScalarQuantizeFn& quantize) {
  SharingSolution sol;
  const size_t nl = prob.layers.size();
  sol.centers.resize(nl);
  sol.assign.assign(prob.x.size(), 0);
  const float* h = prob.hptr();
  if (p.scope == "network") {
    std::vector<double> c;
    std::vector<int32_t> a;
    quantize(prob.x.data(), h, (int64_t)prob.x.size(), c, a);
    BB_CHECK(a.size() == prob.x.size(), "weight sharing: quantizer returned ", a.size(), " assignments");
    for (size_t l = 0; l < nl; ++l) sol.centers[l] = c;
    sol.assign = std::move(a);
  } else {
    for (size_t l = 0; l < nl; ++l) {
      const int64_t n = prob.size(l);
      if (n == 0) continue;
      std::vector<int32_t> a;
      quantize(prob.x.data() + prob.offset[l], h ? h + prob.offset[l] : nullptr, n, sol.centers[l], a);
      BB_CHECK((int64_t)a.size() == n, "weight sharing: quantizer returned ", a.size(), " assignments for layer ", prob.names[l]);
      std::copy(a.begin(), a.end(), sol.assign.begin() + prob.offset[l]);
    }
  }
  for (size_t l = 0; l < nl; ++l)
    for (int64_t i = prob.offset[l]; i < prob.offset[l + 1]; ++i) {
      double e = prob.x[i] - sol.centers[l][sol.assign[i]];
      sol.distortion += (h ? h[i] : 1.0) * e * e;
    }
  return sol;
}

// ---------------------------------------------------------------------------------------------

std::vector<LayerRecord> encode_sharing(const SharingProblem& prob, const SharingSolution& sol, const SharingParams& p,
                                        const std::string& method) {
  const Coder coder = parse_coder(p.coder);
  std::vector<LayerRecord> recs;
  for (size_t l = 0; l < prob.layers.size(); ++l) {
    LayerRecord rec;
    rec.layer = prob.names[l];
    rec.method = method;
    rec.shape = prob.shapes[l];
    const auto& c = sol.centers[l];
    // The codebook entries this layer uses, ascending by value.
    std::vector<int64_t> used_count(c.size(), 0);
    for (int64_t i = prob.offset[l]; i < prob.offset[l + 1]; ++i) ++used_count[sol.assign[i]];
    std::vector<int> used;
    for (size_t j = 0; j < c.size(); ++j)
      if (used_count[j] > 0) used.push_back((int)j);
    std::stable_sort(used.begin(), used.end(), [&](int a, int b) { return c[a] < c[b]; });
    std::vector<int32_t> local(c.size(), -1);
    for (size_t t = 0; t < used.size(); ++t) local[used[t]] = (int32_t)t;
    const uint32_t k = (uint32_t)used.size();

    ByteWriter cb;
    cb.varint(k);
    cb.u8(p.codebook_fp16 ? 1 : 0);
    for (int j : used) {
      if (p.codebook_fp16) cb.f16((float)c[j]);
      else cb.f32((float)c[j]);
    }
    rec.add("codebook", Component::codebook, cb.take());

    std::vector<uint32_t> syms;
    syms.reserve(prob.size(l));
    for (int64_t i = prob.offset[l]; i < prob.offset[l + 1]; ++i) syms.push_back((uint32_t)local[sol.assign[i]]);
    rec.add("idx", Component::indices, encode_symbols(syms, std::max<uint32_t>(k, 1), coder));

    double pos_bits = 0;
    if (!prob.masks.empty()) {
      auto m = prob.masks[l].contiguous().view(-1).to(torch::kUInt8);
      std::vector<uint8_t> flags(m.data_ptr<uint8_t>(), m.data_ptr<uint8_t>() + m.numel());
      auto runs = mask_to_runs(flags, (uint32_t)p.prune_run_alphabet);
      ByteWriter pw;
      pw.varint((uint64_t)p.prune_run_alphabet);
      auto stream = encode_symbols(runs, (uint32_t)p.prune_run_alphabet, Coder::huffman);
      pw.raw(stream.data(), stream.size());
      rec.add("pos", Component::indices, pw.take());
      pos_bits = empirical_entropy_bits(runs, (uint32_t)p.prune_run_alphabet);
    }

    const double n = (double)syms.size();
    const int fixed_bits = fixed_width_bits(std::max<uint32_t>(k, 1));
    rec.estimate.fixed_index_bits = n * fixed_bits + pos_bits;
    rec.estimate.index_bits =
        (coder == Coder::fixed ? n * fixed_bits : empirical_entropy_bits(syms, std::max<uint32_t>(k, 1))) + pos_bits;
    rec.estimate.codebook_bits = (double)k * (p.codebook_fp16 ? 16 : 32);
    rec.estimate.codebook_values = k;
    recs.push_back(std::move(rec));
  }
  return recs;
}

torch::Tensor decode_sharing(const LayerRecord& rec) {
  int64_t numel = 1;
  for (auto s : rec.shape) {
    BB_CHECK(s >= 0, "layer '", rec.layer, "': negative dimension in shape");
    numel *= s;
  }
  const Section& cs = rec.section("codebook");
  ByteReader cr(cs.bytes, "codebook of layer '" + rec.layer + "'");
  const uint64_t k = cr.varint();
  const uint8_t fp16 = cr.u8();
  BB_CHECK(fp16 <= 1, "layer '", rec.layer, "': bad codebook format flag ", (int)fp16);
  BB_CHECK(k <= cr.remaining(), "layer '", rec.layer, "': codebook size ", k, " exceeds its section");
  std::vector<float> values(k);
  for (auto& v : values) v = fp16 ? cr.f16() : cr.f32();
  BB_CHECK(cr.done(), "layer '", rec.layer, "': trailing bytes in codebook section");

  const Section& is = rec.section("idx");
  std::vector<uint32_t> idx = decode_symbols(is.bytes, (uint64_t)numel);

  std::vector<uint8_t> mask;
  bool pruned = false;
  for (auto& s : rec.sections)
    if (s.name == "pos") pruned = true;
  if (pruned) {
    const Section& ps = rec.section("pos");
    ByteReader pr(ps.bytes, "positions of layer '" + rec.layer + "'");
    const uint64_t alphabet = pr.varint();
    BB_CHECK(alphabet >= 2 && alphabet <= 65536, "layer '", rec.layer, "': bad run alphabet ", alphabet);
    auto runs = decode_symbols(pr.ptr(), pr.remaining(), (uint64_t)numel + 1);
    mask = runs_to_mask(runs, numel, (uint32_t)alphabet);
  }
  int64_t kept = numel;
  if (pruned) kept = std::count(mask.begin(), mask.end(), 1);
  BB_CHECK((int64_t)idx.size() == kept, "layer '", rec.layer, "': ", idx.size(), " indices for ", kept, " weights");
  torch::Tensor w = torch::zeros({numel}, torch::kFloat32);
  float* wp = w.data_ptr<float>();
  int64_t t = 0;
  for (int64_t i = 0; i < numel; ++i) {
    if (pruned && !mask[i]) continue;
    uint32_t j = idx[t++];
    BB_CHECK(j < k, "layer '", rec.layer, "': index ", j, " outside codebook of ", k);
    wp[i] = values[j];
  }
  return w.view(rec.shape);
}

double sharing_bits(const std::vector<LayerRecord>& recs) {
  // Exactly what the container's accounting counts for these layers (bpw_core): each record as
  // serialised, its header (names, shape, estimate, section headers) included.
  BbzFile f;
  f.layers = recs;
  BbzSizes sizes;
  serialize_bbz(f, &sizes);
  double bytes = 0;
  for (auto& l : sizes.layers) bytes += (double)l.total();
  return 8.0 * bytes;
}

// ---------------------------------------------------------------------------------------------

void finetune_sharing(CompressContext& ctx, const SharingProblem& prob, SharingSolution& sol, const SharingParams& p) {
  BB_CHECK(ctx.calib, "weight sharing: finetune_epochs > 0 needs calibration data (--calib)");
  Model& model = *ctx.model;
  const size_t nl = prob.layers.size();
  const bool shared = p.scope == "network";
  SharedWeights sw;
  std::vector<int> leaf_of(nl);
  auto make_leaf = [&](const std::vector<double>& c, int64_t begin, int64_t end) {
    std::vector<float> v(c.begin(), c.end());
    auto leaf = torch::tensor(v, torch::kFloat32);
    auto cnt = torch::zeros({(int64_t)c.size()});
    auto cp = cnt.data_ptr<float>();
    for (int64_t i = begin; i < end; ++i) cp[sol.assign[i]] += 1;
    sw.leaves.push_back(leaf);
    sw.grad_scale.push_back(p.finetune_average ? 1.0 / cnt.clamp_min(1) : torch::Tensor());
    return (int)sw.leaves.size() - 1;
  };
  if (shared) {
    int id = make_leaf(sol.centers[0], 0, (int64_t)prob.x.size());
    for (size_t l = 0; l < nl; ++l) leaf_of[l] = id;
  } else {
    for (size_t l = 0; l < nl; ++l) leaf_of[l] = make_leaf(sol.centers[l], prob.offset[l], prob.offset[l + 1]);
  }
  for (size_t l = 0; l < nl; ++l) {
    // Full index map: kept weights -> their cluster, pruned -> an extra constant-zero slot.
    const int64_t k = (int64_t)sol.centers[l].size();
    int64_t numel = 1;
    for (auto s : prob.shapes[l]) numel *= s;
    auto full = torch::full({numel}, k, torch::kInt64);
    auto fp = full.data_ptr<int64_t>();
    const bool* mp = prob.masks.empty() ? nullptr : prob.masks[l].contiguous().view(-1).data_ptr<bool>();
    int64_t t = prob.offset[l];
    for (int64_t i = 0; i < numel; ++i) {
      if (mp && !mp[i]) continue;
      fp[i] = sol.assign[t++];
    }
    torch::Tensor leaf = sw.leaves[leaf_of[l]];
    std::vector<int64_t> shape = prob.shapes[l];
    sw.layers.push_back({prob.layers[l], [leaf, full, shape] {
                           return torch::cat({leaf, torch::zeros({1})}).index_select(0, full).view(shape);
                         }});
  }
  FinetuneOptions fo = p.finetune;
  fo.seed = ctx.seed;
  finetune_shared(model, *ctx.calib, sw, fo);
  for (size_t l = 0; l < nl; ++l) {
    auto leaf = sw.leaves[leaf_of[l]].detach();
    auto lp = leaf.data_ptr<float>();
    for (size_t j = 0; j < sol.centers[l].size(); ++j) sol.centers[l][j] = lp[j];
  }
}

// ---------------------------------------------------------------------------------------------

namespace {
// Both searches' bookkeeping: evaluates the knob, counts and logs the evaluation, and keeps the
// one whose rate is closest to the target.
struct RateProbe {
  const std::function<double(double)>& eval;
  double target;
  RateSearchResult best;
  double best_err = INFINITY;
  double operator()(double t) {
    const double r = eval(t);
    ++best.evals;
    log_debug("rate search: knob " + std::to_string(t) + " -> " + std::to_string(r) + " bpw");
    if (std::fabs(r - target) < best_err) best_err = std::fabs(r - target), best.knob = t, best.bpw = r;
    return r;
  }
};
}  // namespace

RateSearchResult search_rate(double lo, double hi, double target, double rel_tol, int max_evals,
                             const std::function<double(double)>& eval) {
  BB_CHECK(lo > 0 && hi > lo, "rate search: bad bracket [", lo, ", ", hi, "]");
  BB_CHECK(target > 0, "rate search: target must be > 0");
  RateProbe run{eval, target};
  double rlo = run(lo);
  for (int i = 0; i < 20 && rlo < target && run.best.evals < max_evals; ++i) rlo = run(lo /= 8);
  double rhi = run(hi);
  for (int i = 0; i < 20 && rhi > target && run.best.evals < max_evals; ++i) rhi = run(hi *= 8);
  while (run.best.evals < max_evals && run.best_err > rel_tol * target && hi / lo > 1 + 1e-9) {
    double mid = std::sqrt(lo * hi);
    double r = run(mid);
    if (r > target) lo = mid;
    else hi = mid;
  }
  return run.best;
}

RateSearchResult search_rate_secant(double guess, double dbpw_dlog, double target, double rel_tol, int max_evals,
                                    const std::function<double(double)>& eval) {
  BB_CHECK(guess > 0 && std::isfinite(guess), "rate search: bad starting knob ", guess);
  BB_CHECK(dbpw_dlog < 0, "rate search: the expected slope must be < 0, got ", dbpw_dlog);
  BB_CHECK(target > 0, "rate search: target must be > 0");
  BB_CHECK(max_evals >= 1, "rate search: max_evals must be >= 1");
  RateProbe run{eval, target};
  auto f = [&](double u) { return run(std::exp(u)) - target; };  // rate - target at knob e^u
  auto done = [&] { return run.best_err <= rel_tol * target || run.best.evals >= max_evals; };
  constexpr double kMaxStep = 6.9;  // ln(1000): one step never moves the knob more than 1000x
  // Bracket: a (rate above target, smaller knob) and b (rate below target).
  double u = std::log(guess), fu = f(u);
  bool have_a = fu > 0, have_b = fu <= 0;
  double ua = u, fa = fu, ub = u, fb = fu;
  double slope = dbpw_dlog;
  while (!done() && !(have_a && have_b)) {
    const double step = std::clamp(-fu / slope, -kMaxStep, kMaxStep);
    const double u2 = u + (step > 0 ? std::max(step, 1e-6) : std::min(step, -1e-6)), f2 = f(u2);
    if (f2 != fu && (f2 - fu) / (u2 - u) < 0) slope = (f2 - fu) / (u2 - u);  // keep the hint if not decreasing
    u = u2, fu = f2;
    if (fu > 0) have_a = true, ua = u, fa = fu;
    else have_b = true, ub = u, fb = fu;
  }
  int side = 0;  // which end was replaced last (-1 a, +1 b): the Illinois rule halves the other
  // A bracket narrower than 1e-4 in ln t (0.01% in t) that still straddles the target is a jump
  // in the rate: searching on would only pin down where it jumps.
  while (!done() && have_a && have_b && ub - ua > 1e-4) {
    double u2 = ub - fb * (ub - ua) / (fb - fa);
    if (!(u2 > ua && u2 < ub)) u2 = 0.5 * (ua + ub);
    const double f2 = f(u2);
    if (f2 > 0) {
      ua = u2, fa = f2;
      if (side == -1) fb *= 0.5;
      side = -1;
    } else {
      ub = u2, fb = f2;
      if (side == +1) fa *= 0.5;
      side = +1;
    }
  }
  return run.best;
}

std::vector<LayerRecord> finish_sharing(CompressContext& ctx, const SharingProblem& prob, SharingSolution sol,
                                        const SharingParams& p, const std::string& method) {
  size_t kmax = 0;
  for (auto& c : sol.centers) kmax = std::max(kmax, c.size());
  std::ostringstream os;
  os << method << ": " << prob.x.size() << " weights quantized (" << prob.total_weights << " in all), scope "
     << p.scope << ", " << kmax << " shared values" << (p.scope == "layer" ? " at most per layer" : "")
     << ", weighted distortion " << sol.distortion;
  if (p.finetune.epochs > 0) {
    ctx.phase("finetune");
    finetune_sharing(ctx, prob, sol, p);
  }
  ctx.phase("encode");
  auto recs = encode_sharing(prob, sol, p, method);
  os << "; coded " << sharing_bpw(prob, recs) << " bpw";
  log_info(os.str());
  return recs;
}


// ---------------------------------------------------------------------------------------------
// k-means weight sharing

void KMeansSharingOptions::bind(ParamBinder& b) {
  b.field("bits", bits, "k = 2^bits shared values");
  b.field("clusters", clusters, "number of shared values k (> 0 overrides bits)");
  b.field("solver", solver, "dp: exact weighted 1-D k-means; lloyd: k-means++ then Lloyd; both: run both, keep dp",
          {"dp", "lloyd", "both"});
  b.field("dp_max_bins", dp_max_bins, "DP over at most this many groups of sorted values (0 = exact)");
  b.field("init", init, "Lloyd seeding", {"kmeans++", "linear"});
  b.field("max_iter", max_iter, "Lloyd iterations at most");
  b.field("max_search_k", max_search_k, "largest k tried when searching k for target_bpw");
}

void KMeansSharingOptions::validate() const {
  BB_CHECK(bits >= 0 && bits <= 16, "bits must be in [0, 16], got ", bits);
  BB_CHECK(clusters >= 0 && clusters <= 65536, "clusters must be in [0, 65536], got ", clusters);
  BB_CHECK(dp_max_bins >= 0, "dp_max_bins must be >= 0");
  BB_CHECK(max_iter >= 1, "max_iter must be >= 1");
  BB_CHECK(max_search_k >= 2 && max_search_k <= 65536, "max_search_k must be in [2, 65536]");
}

std::vector<LayerRecord> compress_kmeans_sharing(CompressContext& ctx, const SharingParams& share,
                                                 const KMeansSharingOptions& km, const std::string& method) {
  SharingProblem prob = prepare_sharing(ctx, share);
  ctx.phase("quantize");
  double obj_lloyd = 0, obj_dp = 0, sec_lloyd = 0, sec_dp = 0, sec_dp_all = 0;
  // One DP per quantizer group (the network, or each layer), kept for the whole k search: every
  // k it tries reuses the sort and the clusters already solved.
  std::map<const float*, std::unique_ptr<KMeans1DDP>> dps;
  auto quantizer = [&](int k) -> ScalarQuantizeFn {
    return [&, k](const float* x, const float* h, int64_t n, std::vector<double>& c, std::vector<int32_t>& a) {
      ScalarQuantizer q;
      if (km.solver != "dp") {
        KMeans1DParams kp;
        kp.k = k;
        kp.max_iter = km.max_iter;
        kp.init = km.init;
        kp.seed = ctx.seed;
        double t = now_seconds();
        q = kmeans1d_lloyd(x, h, n, kp);
        sec_lloyd += now_seconds() - t;
        obj_lloyd += q.distortion;
      }
      if (km.solver != "lloyd") {
        double t = now_seconds();
        auto& dp = dps[x];
        if (!dp) dp = std::make_unique<KMeans1DDP>(x, h, n, km.dp_max_bins);
        q = dp->solve(k);
        sec_dp += now_seconds() - t;
        sec_dp_all += now_seconds() - t;
        obj_dp += q.distortion;
      }
      c = std::move(q.centers);
      a = std::move(q.assign);
    };
  };
  int k = km.k();
  if (share.target_bpw > 0) {
    // Rate grows with k: double k until the target is passed, then bisect; keep the closest.
    std::map<int, double> rate;
    auto bpw_at = [&](int kk) {
      auto it = rate.find(kk);
      if (it != rate.end()) return it->second;
      auto s = solve_sharing(prob, share, quantizer(kk));
      double r = sharing_bpw(prob, encode_sharing(prob, s, share, method));
      log_debug(method + ": k=" + std::to_string(kk) + " -> " + std::to_string(r) + " bpw");
      return rate[kk] = r;
    };
    int lo = 1, hi = 2;
    while (hi < km.max_search_k && bpw_at(hi) < share.target_bpw) {
      lo = hi;
      hi = std::min(2 * hi, km.max_search_k);
    }
    while (hi - lo > 1) {
      int mid = (lo + hi) / 2;
      if (bpw_at(mid) < share.target_bpw) lo = mid;
      else hi = mid;
    }
    k = std::fabs(bpw_at(lo) - share.target_bpw) <= std::fabs(bpw_at(hi) - share.target_bpw) ? lo : hi;
    log_info(method + ": k=" + std::to_string(k) + " is closest to target_bpw " + std::to_string(share.target_bpw) +
             " (" + std::to_string(bpw_at(k)) + " bpw)");
  }
  obj_lloyd = obj_dp = sec_lloyd = sec_dp = 0;
  SharingSolution sol = solve_sharing(prob, share, quantizer(k));
  dps.clear();
  std::ostringstream os;
  os << method << ": k=" << k << ", weighted distortion";
  if (km.solver != "dp") os << " lloyd " << obj_lloyd << " (" << sec_lloyd << " s)";
  if (km.solver != "lloyd")
    os << " dp " << obj_dp << " (" << sec_dp << " s; " << sec_dp_all << " s of DP in the whole k search)";
  if (km.solver == "both") os << ", lloyd/dp - 1 = " << (obj_lloyd / obj_dp - 1);
  log_info(os.str());
  return finish_sharing(ctx, prob, std::move(sol), share, method);
}

}  // namespace bb
