#include "quant/tq_curves.h"

#include "coding/bytes.h"
#include "common/error.h"
#include "common/fs_util.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/runtime.h"
#include "common/timer.h"
#include "data/loader.h"
#include "models/registry.h"
#include "models/weights_io.h"

#include <cmath>
#include <filesystem>
#include <memory>
#include <mutex>
#include <sstream>

namespace bb {

const char* step_search_name(StepSearch s) {
  switch (s) {
    case StepSearch::weight: return "weight";
    case StepSearch::logits_neighbours: return "logits_neighbours";
    case StepSearch::logits_descent: return "logits_descent";
    case StepSearch::logits_grid: return "logits_grid";
  }
  return "?";
}

StepSearch parse_step_search(const std::string& s) {
  if (s == "weight") return StepSearch::weight;
  if (s == "logits_neighbours" || s == "logits") return StepSearch::logits_neighbours;
  if (s == "logits_descent") return StepSearch::logits_descent;
  if (s == "logits_grid") return StepSearch::logits_grid;
  BB_THROW("tq: unknown step_search '", s, "' (weight | logits_neighbours | logits | logits_descent | logits_grid)");
}

int tq_choose_step_offset(StepSearch search, const std::function<double(int)>& d) {
  // Ties keep the offset nearer e0 (then the smaller step): candidates are visited in the order
  // 0, -1, +1, -2, +2, ... and only a strictly lower D replaces the best.
  switch (search) {
    case StepSearch::weight:
      return 0;
    case StepSearch::logits_neighbours:
    case StepSearch::logits_grid: {
      const int reach = search == StepSearch::logits_grid ? std::max(-kTqGridLo, kTqGridHi) : 1;
      int best = 0;
      double best_d = d(0);
      for (int r = 1; r <= reach; ++r)
        for (int o : {-r, r}) {
          if (o < kTqGridLo || o > kTqGridHi) continue;
          const double v = d(o);
          if (v < best_d) {
            best_d = v;
            best = o;
          }
        }
      return best;
    }
    case StepSearch::logits_descent: {
      const double d0 = d(0), dm = d(-1), dp = d(1);
      if (d0 <= dm && d0 <= dp) return 0;
      const int dir = dm <= dp ? -1 : 1;
      int at = dir;
      double cur = std::min(dm, dp);
      while (at + dir >= kTqGridLo && at + dir <= kTqGridHi) {
        const double v = d(at + dir);
        if (!(v < cur)) break;
        cur = v;
        at += dir;
      }
      return at;
    }
  }
  return 0;
}

TqBlockCurves::TqBlockCurves() {
  for (int r = 0; r <= kTqMaxBits; ++r)
    for (int i = 0; i < kTqGridSteps; ++i) t_grid[r][i] = s_grid[r][i] = NAN;
}

namespace {

namespace F = torch::nn::functional;

// Version 2: the grid D table of every point (TqBlockCurves::t_grid/s_grid) follows its curve.
constexpr char kCacheMagic[8] = {'B', 'B', 'T', 'Q', 'C', 'U', 'R', '2'};

// Mid-tread quantization of a tensor (the vectorised form of tq_level).
torch::Tensor quantize_tensor(const torch::Tensor& x, double step, int bits) {
  const double lo = -(double)(1 << (bits - 1)), hi = (double)((1 << (bits - 1)) - 1);
  return torch::clamp(torch::round(x / step), lo, hi) * step;
}

// The step exponent minimising sum_g weight[g] * e_g^T M e_g, e_g the quantization error of group
// g (len contiguous values of x). weight = null: all 1; metric M (len x len) = null: identity.
// Plain loops: thousands of candidates per layer, too small for tensor ops to pay off.
int best_step_exp(const double* x, int64_t groups, int64_t len, const double* weight, const double* metric,
                  int bits, int spo) {
  double amax = 0;
  for (int64_t i = 0; i < groups * len; ++i) amax = std::max(amax, std::abs(x[i]));
  if (amax == 0) return 0;
  const int e_hi = (int)std::ceil(spo * std::log2(amax)) + spo;  // step up to ~2*amax: all zero
  const int e_lo = e_hi - spo * (bits + 12);
  std::vector<double> err(len);
  int best = e_hi;
  double best_cost = INFINITY;
  for (int e = e_lo; e <= e_hi; ++e) {
    const double st = tq_step(e, spo);
    double cost = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const double* xg = x + g * len;
      for (int64_t i = 0; i < len; ++i) err[i] = tq_level(xg[i], st, bits) * st - xg[i];
      double c = 0;
      if (metric) {
        for (int64_t i = 0; i < len; ++i) {
          double mi = 0;
          const double* row = metric + i * len;
          for (int64_t j = 0; j < len; ++j) mi += row[j] * err[j];
          c += err[i] * mi;
        }
      } else {
        for (int64_t i = 0; i < len; ++i) c += err[i] * err[i];
      }
      cost += weight ? weight[g] * c : c;
    }
    if (cost < best_cost) {
      best_cost = cost;
      best = e;
    }
  }
  return best;
}

// Records the inputs and outputs (dense) of the layers of one stage (`want`) in one
// forward, and with `folded`, every stage's output and which stage each layer runs in. Stages
// before `want` come from `supplied` (not run), and the pass stops after stage `want`.
struct CaptureTap : LayerTap {
  bool folded = false;  // see the folded network, and record stages
  int want = -1;
  const std::vector<torch::Tensor>* supplied = nullptr;
  std::vector<torch::Tensor> x, y, stage_out;
  std::vector<int> stage_of;  // all 0 unless folded: no stage is ever skipped
  CaptureTap(size_t n, bool fold, int want_stage) : folded(fold), want(want_stage), x(n), y(n), stage_of(n, 0) {}
  bool wants_folded() const override { return folded; }
  int stage_now() const { return (int)stage_out.size(); }
  torch::Tensor precomputed_stage(int s) override {
    return supplied && s < want ? (*supplied)[s] : torch::Tensor();
  }
  void on_input(int l, const torch::Tensor& in) override {
    stage_of[l] = stage_now();
    if (stage_now() == want) x[l] = in.is_mkldnn() ? in.to_dense() : in;
  }
  torch::Tensor on_output(int l, const torch::Tensor& in, torch::Tensor out) override {
    if (stage_of[l] == want) y[l] = out.is_mkldnn() ? out.to_dense() : out;
    return out;
  }
  void on_stage_output(int s, const torch::Tensor& out) override {
    if (!folded) return;
    BB_CHECK(s == (int)stage_out.size(), "tq: model stages out of order (stage ", s, " after ", stage_out.size(), ")");
    stage_out.push_back(out);
    if (supplied && s == want) throw StopForward{};  // the rest of the network is not needed
  }
};

// Calibration activations of the BN-folded network, one entry per micro-batch: the logits and
// every stage's output, and the inputs and outputs of the layers of one stage at a time (`held`),
// captured again from the previous stage's cached output when a pass needs another stage. With
// every layer's x and y held at once, ResNet-18 at 100 images peaked at 2,935 MiB against ~1,400
// with one stage (ResNet-50: ~10 GB, estimated from the shapes); a stage's capture costs a pass
// over that stage only.
struct CalibCache {
  std::vector<torch::Tensor> images, logits;
  std::vector<std::vector<torch::Tensor>> x, y, stages;  // [batch][layer or stage]
  std::vector<int> stage_of;                             // per layer
  std::vector<torch::Tensor> scale;                      // per layer: BN scale, or undefined
  int64_t count = 0;
  int64_t classes = 0;
  Model* model = nullptr;
  bool fast = false;
  int held = -1;

  // Makes x and y hold the layers of stage s (and no other).
  void hold(int s) {
    if (s == held) return;
    torch::NoGradGuard ng;
    const size_t nl = stage_of.size();
    for (size_t b = 0; b < images.size(); ++b) {
      for (size_t l = 0; l < nl; ++l) x[b][l] = y[b][l] = torch::Tensor();  // free the old stage first
      CaptureTap tap(nl, fast, s);
      tap.supplied = &stages[b];
      {
        TapScope tg(*model, &tap);
        try {
          model->forward(images[b]);
        } catch (const StopForward&) {
        }
      }
      for (size_t l = 0; l < nl; ++l) {
        if (stage_of[l] != s) continue;
        BB_CHECK(tap.x[l].defined() && tap.stage_of[l] == s, "tq: layer ", model->layers()[l].name,
                 " was not run again in stage ", s);
        x[b][l] = std::move(tap.x[l]);
        y[b][l] = std::move(tap.y[l]);
      }
    }
    held = s;
  }
};

// The pass for a perturbation of layer `target`: the stages before the target's stage return their
// cached outputs (not run at all), layers before the target in its stage return their cached
// outputs, the target returns cached y + dy (dy scaled by the folded BN), the rest runs.
struct PerturbTap : LayerTap {
  const CalibCache* cache = nullptr;
  size_t batch = 0;
  int target = -1;
  torch::Tensor dy;
  bool folded = true;
  bool wants_folded() const override { return folded; }
  torch::Tensor precomputed_stage(int s) override {
    if (s < cache->stage_of[target]) return cache->stages[batch][s];
    return {};
  }
  torch::Tensor precomputed_output(int l, const torch::Tensor& in) override {
    if (l > target) return {};
    const auto& y = cache->y[batch][l];  // held: the layers before the target in its stage
    if (l < target) return y;
    const auto& s = cache->scale[l];
    return s.defined() ? y + dy * s.view({1, -1, 1, 1}) : y + dy;
  }
};

class DistortionMeter {
 public:
  DistortionMeter(Model& model, CalibCache& cache, bool fast) : model_(model), cache_(cache), fast_(fast) {}

  // Logits MSE with the weight of layer `l` changed by dw (float64, the layer's 2-D shape).
  double measure(int l, const torch::Tensor& dw) {
    ++count_;
    const double t0 = now_seconds();
    const Layer& layer = model_.layers()[l];
    auto w = dw.to(torch::kFloat32).reshape(layer.weight().sizes());
    c10::InferenceMode im;
    cache_.hold(cache_.stage_of[l]);
    PerturbTap tap;
    tap.cache = &cache_;
    tap.target = l;
    tap.folded = fast_;
    TapScope tg(model_, &tap);
    double sse = 0;
    for (size_t b = 0; b < cache_.images.size(); ++b) {
      tap.batch = b;
      tap.dy = tq_layer_apply(layer, cache_.x[b][l], w);
      auto out = model_.forward(cache_.images[b]);
      sse += (out - cache_.logits[b]).to(torch::kFloat64).pow(2).sum().item<double>();
    }
    seconds_ += now_seconds() - t0;
    return sse / (double)(cache_.count * cache_.classes);
  }
  int64_t count() const { return count_; }
  double seconds() const { return seconds_; }
  // Points whose D was looked up (MeasuredPoints), not measured.
  void count_reuse() { ++reused_; }
  int64_t reused() const { return reused_; }

 private:
  Model& model_;
  CalibCache& cache_;
  bool fast_;
  int64_t count_ = 0, reused_ = 0;
  double seconds_ = 0;
};

// `fast`: the model must be in eval mode with BN folding on (FoldBnScope); the cache holds the
// folded network's outputs and the stage outputs. Otherwise (the reference path for benchmarks)
// it holds the plain network's conv outputs, and every pass runs from the input (one stage).
// The model must outlive the cache and keep its state.
CalibCache capture(Model& model, const torch::Tensor& images, int64_t batch_size, bool fast) {
  torch::NoGradGuard ng;
  CalibCache c;
  c.model = &model;
  c.fast = fast;
  const size_t nl = model.layers().size();
  for (size_t l = 0; l < nl; ++l) c.scale.push_back(fast ? model.bn_scale((int)l) : torch::Tensor());
  for (int64_t s = 0; s < images.size(0); s += batch_size) {
    auto mb = images.slice(0, s, std::min(images.size(0), s + batch_size));
    CaptureTap tap(nl, fast, 0);  // stage 0's layers come with the full pass
    torch::Tensor out;
    {
      TapScope tg(model, &tap);
      out = model.forward(mb);
    }
    for (size_t l = 0; l < nl; ++l)
      BB_CHECK(tap.stage_of[l] > 0 || tap.x[l].defined(), "tq: layer ", model.layers()[l].name,
               " was not run by the forward pass");
    BB_CHECK(c.images.empty() || tap.stage_of == c.stage_of, "tq: stage layout differs between batches");
    c.stage_of = tap.stage_of;
    c.images.push_back(mb);
    c.logits.push_back(out);
    c.x.push_back(std::move(tap.x));
    c.y.push_back(std::move(tap.y));
    c.stages.push_back(std::move(tap.stage_out));
    c.count += mb.size(0);
    c.classes = out.size(1);
  }
  c.held = 0;
  return c;
}

// D of one oriented perturbation. One that changes nothing gets D = -0.0 without a pass (a
// measured D is a sum of squares, +0.0 at least), so the derivation can tell the two apart.
double measure_oriented(DistortionMeter& meter, const Layer& layer, int l, TransformSide side, const torch::Tensor& dwm) {
  if (dwm.abs().max().item<double>() == 0) return -0.0;
  return meter.measure(l, tq_unorient(dwm, layer.weight().sizes(), side));
}

// Searches the step of one (block, R) point: grid[] receives D of every offset measured (NaN
// elsewhere); returns the chosen offset from e0.
int search_point(StepSearch search, const std::function<double(int)>& measure, double* grid) {
  for (int i = 0; i < kTqGridSteps; ++i) grid[i] = NAN;
  grid[-kTqGridLo] = measure(0);
  if (grid[-kTqGridLo] == 0.0) return 0;  // e0 changes nothing (exactly representable): nothing to search
  return tq_choose_step_offset(search, [&](int o) {
    double& g = grid[o - kTqGridLo];
    if (std::isnan(g)) g = measure(o);
    return g;
  });
}

// The D already measured for one block's quantized T rows (or S columns), by their values: a
// step and bit depth that quantize the block to the same values as another (R and R+1 bits at
// one step when nothing clips) perturb the network identically, so D is looked up, not
// measured again (the pass is deterministic: the same D to the last bit).
struct MeasuredPoints {
  DistortionMeter& meter;
  bool enabled;
  std::vector<std::pair<torch::Tensor, double>> seen;
  MeasuredPoints(DistortionMeter& m, bool on) : meter(m), enabled(on) {}
  double get(const torch::Tensor& q, const std::function<double()>& measure) {
    if (!enabled) return measure();
    for (const auto& [t, d] : seen)
      if (torch::equal(t, q)) {
        if (!std::signbit(d)) meter.count_reuse();  // -0.0: the block unchanged, never a pass
        return d;
      }
    const double d = measure();
    seen.emplace_back(q, d);
    return d;
  }
};

// The meters of the curve search, one per worker of run_side_by_side: worker 0 measures
// on the caller's model, every other worker on a copy of it (same weights, folded the same way),
// since a pass installs a tap on its model. All share one CalibCache, read-only during the
// passes (the stage they need is held before they start).
struct MeterPool {
  std::vector<std::shared_ptr<Model>> copies;
  std::vector<DistortionMeter> meters;
  MeterPool(Model& model, CalibCache& cache, bool fast, int workers) {
    if (!has_model(model.arch())) workers = 1;  // no copy can be made
    meters.reserve(workers);
    meters.emplace_back(model, cache, fast);
    for (int w = 1; w < workers; ++w) {
      auto m = make_model(model.arch());
      load_state_dict(*m, model.state(), "tq: worker copy of " + model.arch());
      m->eval();
      if (model.fold_bn()) m->set_fold_bn(true, model.blocked_layout());
      copies.push_back(m);
      meters.emplace_back(*m, cache, fast);
    }
  }
  struct Totals {
    int64_t passes = 0, reused = 0;
    double seconds = 0;  // summed over the workers
  };
  Totals totals() const {
    Totals t;
    for (const auto& m : meters) {
      t.passes += m.count();
      t.reused += m.reused();
      t.seconds += m.seconds();
    }
    return t;
  }
};

void analyse_layer(Model& model, int l, const TqCurveOptions& opt, const torch::Tensor* grad_cov,
                   CalibCache& cache, MeterPool& pool, TqLayerCurves& out, Progress& progress) {
  const Layer& layer = model.layers()[l];
  const TransformSide side = opt.side;
  auto w = tq_orient(layer.weight().detach().to(torch::kFloat64), side);
  LayerTransform tr = opt.transform == TransformKind::klt ? klt_transform(w) : elt_transform(w, *grad_cov, opt.elt_ridge);
  torch::Tensor metric;  // undefined = identity
  if (opt.transform == TransformKind::elt) metric = regularised_grad_cov(*grad_cov, opt.elt_ridge).contiguous();
  out.layer = layer.name;
  out.n = w.size(0);
  out.d = w.size(1);
  out.S = tr.S;
  out.T = torch::mm(tr.U.t(), w).contiguous();
  out.importance = tr.importance;
  out.bounds = tq_block_bounds(out.n, opt.blocks);
  const int spo = opt.steps_per_octave;
  const size_t nb = out.bounds.size() - 1;
  out.blocks.assign(nb, TqBlockCurves());
  // The blocks are searched side by side, one single-threaded task each: every pass's D is the
  // same as one after the other on all threads (a forward's floats do not depend on its thread
  // count), and D depends on its own block only.
  cache.hold(cache.stage_of[l]);
  std::mutex progress_mutex;
  auto advance = [&] {
    std::lock_guard<std::mutex> lk(progress_mutex);
    progress.advance();
  };
  // Two tasks per block: its T rows (R = 0 included), then its S columns.
  auto search = [&](int64_t task, int worker) {
    DistortionMeter& meter = pool.meters[worker];
    const int64_t b = task / 2, r0 = out.bounds[b], r1 = out.bounds[b + 1];
    auto Sb = out.S.slice(1, r0, r1).contiguous();  // n x rows
    auto Tb = out.T.slice(0, r0, r1).contiguous();  // rows x d
    TqBlockCurves& cv = out.blocks[b];
    MeasuredPoints seen(meter, opt.reuse_repeated);
    if (task % 2 == 0) {
      // R = 0: the rows zeroed.
      cv.t_dist[0] = measure_oriented(meter, layer, l, side, torch::mm(Sb, -Tb));
      advance();
      seen.seen.emplace_back(torch::zeros_like(Tb), cv.t_dist[0]);  // a step that rounds every row to 0
      for (int bits = 1; bits <= kTqMaxBits; ++bits) {
        const int e0 = best_step_exp(Tb.data_ptr<double>(), Tb.size(0), Tb.size(1), nullptr, nullptr, bits, spo);
        const int o = search_point(opt.step_search, [&](int off) {
          auto q = quantize_tensor(Tb, tq_step(e0 + off, spo), bits);
          return seen.get(q, [&] { return measure_oriented(meter, layer, l, side, torch::mm(Sb, q - Tb)); });
        }, cv.t_grid[bits]);
        cv.t_exp0[bits] = e0;
        cv.t_exp[bits] = e0 + o;
        cv.t_dist[bits] = cv.t_grid[bits][o - kTqGridLo];
        advance();
      }
      return;
    }
    // Steps minimise tr(dW^T M dW): the weight-domain squared error (KLT: M = I) or its
    // first-order effect on the logits (ELT: M = Sigma_g). For T rows, dW = S_b E and
    // S_b^T M S_b is a multiple of I for both transforms, so this is the coefficients' squared
    // error (best_step_exp above with no weights). For S columns, dW = E T_b with T_b T_b^T
    // diagonal: column k's error weighs |t_k|^2 e_k^T M e_k.
    auto s_cols = Sb.t().contiguous();              // rows x n: column k of S_b
    auto t_energy = Tb.pow(2).sum(1).contiguous();  // |t_k|^2
    for (int bits = 1; bits <= kTqMaxBits; ++bits) {
      const int e0 = best_step_exp(s_cols.data_ptr<double>(), s_cols.size(0), s_cols.size(1), t_energy.data_ptr<double>(),
                                   metric.defined() ? metric.data_ptr<double>() : nullptr, bits, spo);
      const int o = search_point(opt.step_search, [&](int off) {
        auto q = quantize_tensor(Sb, tq_step(e0 + off, spo), bits);
        return seen.get(q, [&] { return measure_oriented(meter, layer, l, side, torch::mm(q - Sb, Tb)); });
      }, cv.s_grid[bits]);
      cv.s_exp0[bits] = e0;
      cv.s_exp[bits] = e0 + o;
      cv.s_dist[bits] = cv.s_grid[bits][o - kTqGridLo];
      advance();
    }
  };
  run_side_by_side(2 * (int64_t)nb, (int)pool.meters.size(), search);
}

std::string options_text(const TqCurveOptions& o) {
  std::ostringstream s;
  s.precision(17);
  s << "transform=" << (o.transform == TransformKind::klt ? "klt" : "elt") << "|side=" << transform_side_name(o.side)
    << "|blocks=" << o.blocks << "|calib_images=" << o.calib_images << "|seed=" << o.seed
    << "|steps_per_octave=" << o.steps_per_octave << "|step_search=" << step_search_name(o.step_search)
    << "|grid=" << kTqGridLo << ".." << kTqGridHi << "|elt_ridge=" << o.elt_ridge
    << "|batch_size=" << o.batch_size;  // D is summed per micro-batch: its last bits depend on it
  return s.str();
}

void write_tensor(ByteWriter& w, const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  w.varint((uint64_t)c.numel());
  w.raw(c.data_ptr<double>(), (size_t)c.numel() * sizeof(double));
}

torch::Tensor read_tensor(ByteReader& r, std::vector<int64_t> shape) {
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  BB_CHECK(r.varint() == (uint64_t)numel, "corrupt ", r.what(), ": tensor size mismatch");
  auto t = torch::empty(shape, torch::kFloat64);
  r.raw(t.data_ptr<double>(), (size_t)numel * sizeof(double));
  return t;
}

}  // namespace

torch::Tensor tq_layer_apply(const Layer& layer, const torch::Tensor& x, const torch::Tensor& w) {
  if (!layer.is_conv()) return torch::linear(x, w);
  const auto& o = layer.conv->options;
  BB_CHECK(c10::get_if<torch::enumtype::kZeros>(&o.padding_mode()), "tq: layer ", layer.name,
           " uses a non-zero padding mode (unsupported)");
  const auto* pad = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  BB_CHECK(pad, "tq: layer ", layer.name, " uses 'same'/'valid' padding (unsupported)");
  return torch::conv2d(x, w, {}, o.stride(), *pad, o.dilation(), o.groups());
}

torch::Tensor tq_apply_factored(const Layer& layer, const torch::Tensor& x, const torch::Tensor& S_act,
                                const torch::Tensor& T_act, TransformSide side) {
  const auto& w = layer.weight();
  const int64_t k = T_act.size(0);
  auto [p, q] = tq_oriented_dims(w.sizes(), side);
  BB_CHECK(T_act.dim() == 2 && T_act.size(1) == q && S_act.dim() == 2 && S_act.size(0) == p && S_act.size(1) == k,
           "tq: factored weights do not fit layer ", layer.name);
  if (k == 0) return torch::zeros_like(tq_layer_apply(layer, x, torch::zeros_like(w)));
  if (side == TransformSide::column) {
    if (!layer.is_conv()) return torch::linear(torch::linear(x, T_act), S_act);
    auto z = tq_layer_apply(layer, x, T_act.reshape({k, w.size(1), w.size(2), w.size(3)}));
    return torch::conv2d(z, S_act.reshape({w.size(0), k, 1, 1}));
  }
  // Row side: M (m x n*kk) = S T, W[i, j, t] = sum_a S[j, a] T[a, (i, t)]. The basis mixes the
  // input channels (z = S^T x, no padding needed: it is linear without bias, so it commutes with
  // the conv's zero padding), then the conv runs on the k mixed channels.
  auto St = S_act.t().contiguous();  // k x m
  if (!layer.is_conv()) return torch::linear(torch::linear(x, St), T_act.t().contiguous());
  auto z = torch::conv2d(x, St.reshape({k, w.size(1), 1, 1}));
  auto Tw = T_act.reshape({k, w.size(0), w.size(2), w.size(3)}).permute({1, 0, 2, 3}).contiguous();
  return tq_layer_apply(layer, z, Tw);
}

std::vector<torch::Tensor> tq_grad_second_moments(Model& model, const torch::Tensor& images, int64_t batch_size,
                                                  TransformSide side) {
  const auto& layers = model.layers();
  const size_t nl = layers.size();
  std::vector<torch::Tensor> acc(nl);
  for (size_t l = 0; l < nl; ++l) {
    const int64_t p = tq_oriented_dims(layers[l].weight().sizes(), side).first;
    acc[l] = torch::zeros({p, p}, torch::kFloat64);
  }
  RequiresGradSaver rg(model);  // gradients w.r.t. activations only
  for (auto& p : model.parameters()) p.set_requires_grad(false);
  int64_t count = 0, classes = 0;
  for (int64_t s = 0; s < images.size(0); s += batch_size) {
    auto mb = images.slice(0, s, std::min(images.size(0), s + batch_size)).clone().set_requires_grad(true);
    CaptureTap tap(nl, false, 0);  // plain network: one stage, every layer recorded
    torch::Tensor logits;
    {
      TapScope tg(model, &tap);
      logits = model.forward(mb);
    }
    classes = logits.size(1);
    const int64_t B = mb.size(0);
    count += B;
    // Unfolded inputs (B x d x P) per layer, computed once per micro-batch.
    std::vector<torch::Tensor> xu(nl);
    for (size_t l = 0; l < nl; ++l) {
      const Layer& L = layers[l];
      auto x = tap.x[l].detach();
      if (L.is_conv()) {
        const auto& o = L.conv->options;
        BB_CHECK(o.groups() == 1, "tq ELT: grouped convolution ", L.name, " is not supported");
        const auto* pad = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
        BB_CHECK(pad, "tq ELT: layer ", L.name, " uses 'same'/'valid' padding (unsupported)");
        xu[l] = F::unfold(x, F::UnfoldFuncOptions({L.kernel_h(), L.kernel_w()}).dilation(o.dilation()).padding(*pad).stride(o.stride()));
      } else {
        xu[l] = x.unsqueeze(2);  // B x d x 1
      }
    }
    std::vector<torch::Tensor> outs(tap.y.begin(), tap.y.end());
    for (int64_t c = 0; c < classes; ++c) {
      auto grads = torch::autograd::grad({logits.select(1, c).sum()}, outs, {}, /*retain_graph=*/true,
                                         /*create_graph=*/false, /*allow_unused=*/true);
      torch::NoGradGuard ng;
      for (size_t l = 0; l < nl; ++l) {
        if (!grads[l].defined()) continue;
        const int64_t n = layers[l].out_features();
        auto delta = grads[l].reshape({B, n, -1});                 // B x n x P
        auto g = torch::bmm(delta, xu[l].transpose(1, 2));        // B x n x d: per-image dlogit/dW
        torch::Tensor gm;
        if (side == TransformSide::column) {
          gm = g.permute({1, 0, 2}).reshape({n, -1}).to(torch::kFloat64);  // n x (B d)
        } else {
          const int64_t m = layers[l].weight().size(1);
          gm = g.reshape({B, n, m, -1}).permute({2, 0, 1, 3}).reshape({m, -1}).to(torch::kFloat64);  // m x (B n kk)
        }
        acc[l] += torch::mm(gm, gm.t());
      }
    }
  }
  for (size_t l = 0; l < nl; ++l)
    acc[l] /= (double)(count * classes * tq_oriented_dims(layers[l].weight().sizes(), side).second);
  return acc;
}

std::vector<double> tq_measure_distortions(Model& model, const torch::Tensor& images, int64_t batch_size,
                                           const std::vector<std::pair<int, torch::Tensor>>& perturbations,
                                           bool fast, int workers) {
  for (const auto& p : perturbations)
    BB_CHECK(p.first >= 0 && p.first < (int)model.layers().size(), "tq: no layer ", p.first);
  model.eval();
  FoldBnScope fold(model, fast, true);
  CalibCache cache = capture(model, images, batch_size, fast);
  MeterPool pool(model, cache, fast, workers > 0 ? workers : side_by_side_workers());
  std::vector<double> out(perturbations.size());
  // Each run of consecutive perturbations in one stage goes side by side: their passes read the
  // held stage's activations, which holding another stage would replace.
  for (size_t i = 0; i < perturbations.size();) {
    const int s = cache.stage_of[perturbations[i].first];
    size_t j = i + 1;
    while (j < perturbations.size() && cache.stage_of[perturbations[j].first] == s) ++j;
    cache.hold(s);
    run_side_by_side((int64_t)(j - i), (int)pool.meters.size(), [&](int64_t t, int worker) {
      const auto& p = perturbations[i + t];
      out[i + t] = pool.meters[worker].measure(p.first, p.second.to(torch::kFloat64));
    });
    i = j;
  }
  return out;
}

std::string tq_curves_key(const Model& model, const Dataset& calib, const TqCurveOptions& opt) {
  Sha256 h;
  h.update("bitbench tq curves v2\n");  // v2: folded-network passes
  h.update("model=" + model.arch() + "\n");
  for (const auto& kv : model.state()) {
    auto t = kv.second.detach().to(torch::kFloat32).contiguous();
    h.update(kv.first + "\n");
    h.update(t.data_ptr(), (size_t)t.numel() * sizeof(float));
  }
  h.update("calib=" + calib.identity() + "\n");
  h.update(options_text(opt));
  return h.hex();
}

void tq_write_curves(const std::string& path, const TqCurves& c) {
  ByteWriter w;
  w.raw(kCacheMagic, sizeof(kCacheMagic));
  w.str(c.key);
  w.raw(&c.search_seconds, sizeof(double));
  w.varint((uint64_t)c.measurements);
  w.varint(c.layers.size());
  for (const auto& L : c.layers) {
    w.str(L.layer);
    w.varint((uint64_t)L.n);
    w.varint((uint64_t)L.d);
    w.varint(L.bounds.size());
    for (int64_t b : L.bounds) w.varint((uint64_t)b);
    write_tensor(w, L.S);
    write_tensor(w, L.T);
    write_tensor(w, L.importance);
    for (const auto& cv : L.blocks) {
      for (int r = 0; r <= kTqMaxBits; ++r) {
        w.i64(cv.t_exp[r]);
        w.raw(&cv.t_dist[r], sizeof(double));
        w.i64(cv.s_exp[r]);
        w.raw(&cv.s_dist[r], sizeof(double));
        w.i64(cv.t_exp0[r]);
        w.i64(cv.s_exp0[r]);
        w.raw(cv.t_grid[r], sizeof(cv.t_grid[r]));
        w.raw(cv.s_grid[r], sizeof(cv.s_grid[r]));
      }
    }
  }
  write_file_atomic(path, w.data().data(), w.size());
}

bool tq_read_curves(const std::string& path, const std::string& key, TqCurves& c) {
  if (!std::filesystem::exists(path)) return false;
  auto bytes = read_file_bytes(path);
  ByteReader r(bytes.data(), bytes.size(), "tq curves cache " + path);
  char magic[8];
  r.raw(magic, sizeof(magic));
  BB_CHECK(std::equal(magic, magic + 8, kCacheMagic), "tq curves cache ", path, ": bad magic");
  if (r.str() != key) return false;
  c = TqCurves();
  c.key = key;
  r.raw(&c.search_seconds, sizeof(double));
  c.measurements = (int64_t)r.varint();
  const uint64_t nl = r.varint();
  BB_CHECK(nl < (1u << 20), "tq curves cache ", path, ": implausible layer count");
  c.layers.resize(nl);
  for (auto& L : c.layers) {
    L.layer = r.str();
    L.n = (int64_t)r.varint();
    L.d = (int64_t)r.varint();
    BB_CHECK(L.n > 0 && L.d > 0 && L.n <= (1 << 24) && L.d <= (1 << 28), "tq curves cache ", path, ": bad layer size");
    const uint64_t nbnd = r.varint();
    BB_CHECK(nbnd >= 2 && nbnd <= (uint64_t)L.n + 1, "tq curves cache ", path, ": bad block count");
    L.bounds.resize(nbnd);
    for (auto& b : L.bounds) b = (int64_t)r.varint();
    BB_CHECK(L.bounds == tq_block_bounds(L.n, (int)nbnd - 1), "tq curves cache ", path, ": bad block layout");
    L.S = read_tensor(r, {L.n, L.n});
    L.T = read_tensor(r, {L.n, L.d});
    L.importance = read_tensor(r, {L.n});
    L.blocks.resize(nbnd - 1);
    for (auto& cv : L.blocks) {
      for (int k = 0; k <= kTqMaxBits; ++k) {
        cv.t_exp[k] = (int)r.i64();
        r.raw(&cv.t_dist[k], sizeof(double));
        cv.s_exp[k] = (int)r.i64();
        r.raw(&cv.s_dist[k], sizeof(double));
        cv.t_exp0[k] = (int)r.i64();
        cv.s_exp0[k] = (int)r.i64();
        r.raw(cv.t_grid[k], sizeof(cv.t_grid[k]));
        r.raw(cv.s_grid[k], sizeof(cv.s_grid[k]));
      }
    }
  }
  BB_CHECK(r.done(), "tq curves cache ", path, ": trailing bytes");
  c.from_cache = true;
  return true;
}

namespace {

// A checkpoint is usable if its layers are a proper prefix of the model's (same names and shapes).
bool checkpoint_matches(const TqCurves& part, const std::vector<Layer>& layers, int blocks, TransformSide side) {
  if (part.layers.size() >= layers.size()) return false;
  for (size_t l = 0; l < part.layers.size(); ++l) {
    const auto& L = part.layers[l];
    auto [p, q] = tq_oriented_dims(layers[l].weight().sizes(), side);
    if (L.layer != layers[l].name || L.n != p || L.d != q ||
        L.bounds != tq_block_bounds(L.n, blocks))
      return false;
  }
  return true;
}

}  // namespace

TqCurves tq_derive_curves(const TqCurves& grid, StepSearch search) {
  TqCurves c = grid;
  c.measurements = 0;
  for (auto& L : c.layers) {
    for (auto& cv : L.blocks) {
      c.measurements += std::signbit(cv.t_dist[0]) ? 0 : 1;  // -0.0: no pass (measure_oriented)
      for (int r = 1; r <= kTqMaxBits; ++r) {
        for (int pass = 0; pass < 2; ++pass) {
          double* g = pass == 0 ? cv.t_grid[r] : cv.s_grid[r];
          const int e0 = pass == 0 ? cv.t_exp0[r] : cv.s_exp0[r];
          std::vector<bool> seen(kTqGridSteps, false);
          auto look = [&](int o) {
            const double v = g[o - kTqGridLo];
            BB_CHECK(!std::isnan(v), "tq: curves lack the grid D needed to derive step_search=", step_search_name(search));
            if (!seen[o - kTqGridLo] && !std::signbit(v)) ++c.measurements;  // -0.0: nothing changed, no pass
            seen[o - kTqGridLo] = true;
            return v;
          };
          int o = 0;
          if (look(0) != 0.0) o = tq_choose_step_offset(search, look);
          // Keep only what this search measures, as its own run would store.
          for (int i = 0; i < kTqGridSteps; ++i)
            if (!seen[i]) g[i] = NAN;
          (pass == 0 ? cv.t_exp[r] : cv.s_exp[r]) = e0 + o;
          (pass == 0 ? cv.t_dist[r] : cv.s_dist[r]) = g[o - kTqGridLo];
        }
      }
    }
  }
  c.derived_from_grid = true;
  return c;
}

std::string tq_grid_agreement(const TqCurves& grid) {
  const std::string names[3] = {"weight", "logits_neighbours", "logits_descent"};
  const StepSearch ss[3] = {StepSearch::weight, StepSearch::logits_neighbours, StepSearch::logits_descent};
  long edge = 0, points = 0, hist[kTqGridSteps] = {0};
  for (const auto& L : grid.layers)
    for (const auto& cv : L.blocks)
      for (int r = 1; r <= kTqMaxBits; ++r)
        for (int o : {cv.t_exp[r] - cv.t_exp0[r], cv.s_exp[r] - cv.s_exp0[r]}) {
          ++points;
          ++hist[o - kTqGridLo];
          edge += o == kTqGridLo || o == kTqGridHi;
        }
  std::string msg = "grid step offsets from e0 over " + std::to_string(points) + " points:";
  for (int i = 0; i < kTqGridSteps; ++i) msg += " " + std::to_string(i + kTqGridLo) + ":" + std::to_string(hist[i]);
  msg += " (" + std::to_string(edge) + " at the grid's edges); " + std::to_string(grid.measurements) +
         " passes | choices equal to the grid's";
  for (int k = 0; k < 3; ++k) {
    TqCurves d = tq_derive_curves(grid, ss[k]);
    long same = 0, total = 0;
    double excess = 0, dsum = 0;
    for (size_t l = 0; l < d.layers.size(); ++l)
      for (size_t b = 0; b < d.layers[l].blocks.size(); ++b)
        for (int r = 1; r <= kTqMaxBits; ++r) {
          const auto& a = d.layers[l].blocks[b];
          const auto& g = grid.layers[l].blocks[b];
          total += 2;
          same += (a.t_exp[r] == g.t_exp[r]) + (a.s_exp[r] == g.s_exp[r]);
          excess += (a.t_dist[r] - g.t_dist[r]) + (a.s_dist[r] - g.s_dist[r]);
          dsum += g.t_dist[r] + g.s_dist[r];
        }
    msg += " | " + names[k] + ": " + std::to_string(same) + " of " + std::to_string(total) + " points, " +
           std::to_string(d.measurements) + " passes, summed D +" + std::to_string(dsum > 0 ? 100.0 * excess / dsum : 0.0) + "%";
  }
  return msg;
}

TqCurves tq_compute_curves(Model& model, const Dataset& calib, const TqCurveOptions& opt,
                           const std::string& cache_dir, const std::function<void(size_t)>& after_layer) {
  BB_CHECK(opt.blocks >= 1, "tq: blocks must be >= 1");
  BB_CHECK(opt.calib_images >= 1 && opt.batch_size >= 1, "tq: calib_images and batch_size must be >= 1");
  BB_CHECK(opt.steps_per_octave >= 1 && opt.steps_per_octave <= 64, "tq: steps_per_octave must be in 1..64");
  BB_CHECK(opt.checkpoint_seconds >= 0, "tq: checkpoint_seconds must be >= 0");
  TqCurves c;
  c.key = tq_curves_key(model, calib, opt);
  std::string path, partial;
  if (!cache_dir.empty()) {
    const auto dir = std::filesystem::path(cache_dir) / "tq";
    path = (dir / (c.key + ".curves")).string();
    partial = (dir / (c.key + ".partial")).string();
    try {
      if (tq_read_curves(path, c.key, c)) {
        log_info("tq: curves loaded from cache " + path);
        return c;
      }
    } catch (const Error& e) {
      log_warn(std::string("tq: ignoring unreadable curves cache: ") + e.what());
    }
    if (opt.step_search != StepSearch::logits_grid) {
      // The logits_grid twin holds every D this search would measure: derive, exactly.
      TqCurveOptions go = opt;
      go.step_search = StepSearch::logits_grid;
      const std::string gkey = tq_curves_key(model, calib, go);
      const std::string gpath = (dir / (gkey + ".curves")).string();
      TqCurves g;
      try {
        if (tq_read_curves(gpath, gkey, g)) {
          TqCurves d = tq_derive_curves(g, opt.step_search);
          d.key = c.key;
          d.from_cache = true;
          log_info("tq: curves of step_search=" + std::string(step_search_name(opt.step_search)) +
                   " derived from the logits_grid curves " + gpath + " (" + std::to_string(d.measurements) +
                   " passes would have been run)");
          return d;
        }
      } catch (const Error& e) {
        log_warn(std::string("tq: ignoring unreadable grid curves: ") + e.what());
      }
    }
  }
  const auto& layers = model.layers();
  double seconds_before = 0;
  int64_t passes_before = 0;
  if (!partial.empty()) {
    TqCurves part;
    try {
      if (tq_read_curves(partial, c.key, part)) {
        if (checkpoint_matches(part, layers, opt.blocks, opt.side)) {
          c.layers = std::move(part.layers);
          c.resumed_layers = c.layers.size();
          seconds_before = part.search_seconds;
          passes_before = part.measurements;
          log_info("tq: resuming the curve search from " + partial + " (" + std::to_string(c.resumed_layers) + " of " +
                   std::to_string(layers.size()) + " layers done)");
        } else {
          log_warn("tq: ignoring checkpoint " + partial + ": its layers do not match the model");
        }
      }
    } catch (const Error& e) {
      log_warn(std::string("tq: ignoring unreadable checkpoint: ") + e.what());
    }
  }
  const double t0 = now_seconds();
  const int64_t n_img = std::min<int64_t>(opt.calib_images, calib.size());
  BB_CHECK(n_img > 0, "tq: calibration set ", calib.name(), " is empty");
  Batch batch = load_batch(calib, sample_indices(calib.size(), n_img, opt.seed));
  std::vector<torch::Tensor> grad_cov;
  if (opt.transform == TransformKind::elt)
    grad_cov = tq_grad_second_moments(model, batch.images, opt.batch_size, opt.side);
  // The curve passes run the BN-folded network (on oneDNN's blocked layout where the model has
  // it), as evaluation does: the same D up to float rounding, fewer memory passes.
  model.eval();
  FoldBnScope fold(model, true, true);
  CalibCache cache = capture(model, batch.images, opt.batch_size, /*fast=*/true);
  MeterPool pool(model, cache, /*fast=*/true, opt.workers > 0 ? opt.workers : side_by_side_workers());

  const size_t first = c.resumed_layers;
  long total_points = 0;
  for (size_t l = first; l < layers.size(); ++l)
    total_points += (long)(tq_block_bounds(tq_oriented_dims(layers[l].weight().sizes(), opt.side).first, opt.blocks).size() - 1) *
                    (2 * kTqMaxBits + 1);
  Progress progress("tq curves", total_points);
  c.layers.resize(layers.size());
  double last_checkpoint = now_seconds();
  for (size_t l = first; l < layers.size(); ++l) {
    analyse_layer(model, (int)l, opt, grad_cov.empty() ? nullptr : &grad_cov[l], cache, pool, c.layers[l], progress);
    const bool last = l + 1 == layers.size();
    if (!partial.empty() && !last && now_seconds() - last_checkpoint >= opt.checkpoint_seconds) {
      // The checkpoint holds layers [0, l]; written atomically, so a kill mid-write keeps the old one.
      TqCurves part;
      part.key = c.key;
      part.search_seconds = seconds_before + (now_seconds() - t0);
      const auto t = pool.totals();
      part.measurements = passes_before + t.passes + t.reused;
      part.layers.assign(c.layers.begin(), c.layers.begin() + (long)l + 1);
      tq_write_curves(partial, part);
      last_checkpoint = now_seconds();
    }
    if (after_layer) after_layer(l);
  }
  progress.finish();
  c.search_seconds = seconds_before + (now_seconds() - t0);
  const auto totals = pool.totals();
  c.measurements = passes_before + totals.passes + totals.reused;
  c.passes = totals.passes;
  c.workers = (int)pool.meters.size();  // a resumed search still runs its last layer (checkpoint_matches)
  log_info("tq: curve search (" + std::string(transform_side_name(opt.side)) + "-" +
           (opt.transform == TransformKind::klt ? "KLT" : "ELT") + ", step_search=" + step_search_name(opt.step_search) +
           ") took " + std::to_string(c.search_seconds) + " s (" + std::to_string(c.measurements) + " D values; this call " +
           std::to_string(totals.passes) + " forward passes of " + std::to_string(n_img) + " images: " +
           std::to_string(totals.seconds) + " s summed over " + std::to_string(pool.meters.size()) +
           " side-by-side workers, and " + std::to_string(totals.reused) +
           " looked up: the quantized block repeated an earlier point's" +
           (first ? "; " + std::to_string(first) + " layers from a checkpoint" : std::string()) + ")");
  if (opt.step_search == StepSearch::logits_grid) log_info("tq: " + tq_grid_agreement(c));
  if (!path.empty()) {
    tq_write_curves(path, c);  // write_file_atomic creates the directory
    std::error_code ec;
    std::filesystem::remove(partial, ec);
  }
  return c;
}

}  // namespace bb
