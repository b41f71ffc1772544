#include "quant/weight_sharing.h"
#include "coding/bbz.h"
#include "coding/bytes.h"
#include "coding/symbols.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/timer.h"
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
  finetune.validate();
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

}  // namespace bb
