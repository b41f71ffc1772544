#include "quant/finetune_shared.h"
#include "common/error.h"
#include "common/log.h"
#include "common/timer.h"
#include "data/loader.h"

#include <cmath>
#include <numeric>
#include <random>
#include <sstream>

namespace bb {
namespace {

namespace F = torch::nn::functional;

// While alive: listed layers' weights are the rebuilt tensors, every model parameter is frozen
// (requires_grad false) so autograd only reaches the leaves. On exit the modules get their own
// parameter tensors back and the previous flags.
struct Swap {
  Model& model;
  SharedWeights& sw;
  std::vector<torch::Tensor> orig;  // module parameter tensors of the rebuilt layers
  std::vector<std::pair<torch::Tensor, bool>> flags;
  Swap(Model& m, SharedWeights& s) : model(m), sw(s) {
    for (auto& p : model.parameters()) {
      flags.push_back({p, p.requires_grad()});
      p.requires_grad_(false);
    }
    for (auto& r : sw.layers) orig.push_back(model.layers()[r.layer].weight());
  }
  void install() {
    for (auto& r : sw.layers) {
      auto w = r.fn();
      const auto& want = orig[&r - &sw.layers[0]];
      BB_CHECK(w.sizes() == want.sizes(), "finetune: rebuild() of layer '", model.layers()[r.layer].name, "' gives shape ",
               w.sizes(), ", expected ", want.sizes());
      model.layers()[r.layer].weight() = w;
    }
  }
  void restore() {
    for (size_t i = 0; i < sw.layers.size(); ++i) model.layers()[sw.layers[i].layer].weight() = orig[i];
  }
  ~Swap() {
    restore();
    for (auto& f : flags) f.first.requires_grad_(f.second);
  }
};

}  // namespace

void FinetuneOptions::validate() const {
  BB_CHECK(epochs >= 0 && std::isfinite(epochs), "finetune: epochs must be >= 0, got ", epochs);
  BB_CHECK(lr > 0 && std::isfinite(lr), "finetune: lr must be > 0, got ", lr);
  BB_CHECK(optimizer == "adam" || optimizer == "sgd", "finetune: optimizer must be adam or sgd, got '", optimizer, "'");
  BB_CHECK(momentum >= 0 && momentum < 1, "finetune: momentum must be in [0, 1), got ", momentum);
  BB_CHECK(weight_decay >= 0 && std::isfinite(weight_decay), "finetune: weight_decay must be >= 0, got ", weight_decay);
  BB_CHECK(weight_decay == 0 || optimizer == "sgd", "finetune: weight_decay is implemented for sgd only");
  BB_CHECK(lr_step_epochs >= 0 && std::isfinite(lr_step_epochs), "finetune: lr_step_epochs must be >= 0, got ",
           lr_step_epochs);
  BB_CHECK(lr_gamma > 0 && lr_gamma <= 1, "finetune: lr_gamma must be in (0, 1], got ", lr_gamma);
  BB_CHECK(batch_size >= 1, "finetune: batch_size must be >= 1, got ", batch_size);
  BB_CHECK(max_images >= 0, "finetune: max_images must be >= 0, got ", max_images);
  BB_CHECK(mode == "labels" || mode == "distill", "finetune: mode must be labels or distill, got '", mode, "'");
  BB_CHECK(temperature > 0, "finetune: temperature must be > 0, got ", temperature);
  BB_CHECK(bn == "frozen" || bn == "update", "finetune: bn must be frozen or update, got '", bn, "'");
}

std::string FinetuneOptions::key() const {
  std::ostringstream os;
  os.precision(17);
  os << "finetune-v1 epochs=" << epochs << " lr=" << lr << " optimizer=" << optimizer << " momentum=" << momentum
     << " batch=" << batch_size << " max_images=" << max_images << " mode=" << mode << " T=" << temperature
     << " bn=" << bn << " augment=" << augment << " seed=" << seed;
  // Only when set, so that the keys of runs without them are unchanged.
  if (weight_decay != 0) os << " wd=" << weight_decay;
  if (lr_step_epochs != 0) os << " lr_step_epochs=" << lr_step_epochs << " lr_gamma=" << lr_gamma;
  return os.str();
}

double finetune_lr_at(const FinetuneOptions& opt, double epochs_done) {
  if (opt.lr_step_epochs <= 0) return opt.lr;
  // A small tolerance so that a boundary reached by summing batch fractions counts as reached.
  const double steps = std::floor(epochs_done / opt.lr_step_epochs + 1e-9);
  return opt.lr * std::pow(opt.lr_gamma, steps);
}

int SharedWeights::add_indexed(int layer, const torch::Tensor& codebook, const torch::Tensor& idx,
                               std::vector<int64_t> shape, const torch::Tensor& row_gain) {
  torch::NoGradGuard ng;
  auto leaf = codebook.to(torch::kFloat32).clone().contiguous();
  const auto members = torch::bincount(idx, {}, leaf.size(0)).to(torch::kFloat32).clamp_min(1);
  leaves.push_back(leaf);
  grad_scale.push_back((1.0 / members).view({-1, 1}));
  auto gain = row_gain.defined() ? row_gain.unsqueeze(1) : torch::Tensor();
  layers.push_back({layer, [leaf, idx, gain, shape] {
                      auto w = leaf.index_select(0, idx);
                      if (gain.defined()) w = w * gain;
                      return w.view(shape);
                    }});
  return (int)leaves.size() - 1;
}

FinetuneStats finetune_shared(Model& model, const Dataset& data, SharedWeights& sw, const FinetuneOptions& opt,
                              Model* teacher) {
  opt.validate();
  BB_CHECK(!teacher || opt.mode == "distill", "finetune: a teacher model needs mode=distill");
  BB_CHECK(teacher != &model, "finetune: the teacher must be another model instance");
  FinetuneStats st;
  BB_CHECK(!sw.leaves.empty(), "finetune: no learnable tensors");
  BB_CHECK(sw.grad_scale.empty() || sw.grad_scale.size() == sw.leaves.size(), "finetune: grad_scale must be empty or one per leaf");
  const int nl = (int)model.layers().size();
  for (auto& r : sw.layers) BB_CHECK(r.layer >= 0 && r.layer < nl && r.fn, "finetune: bad layer entry ", r.layer);
  if (opt.epochs == 0) return st;
  BB_CHECK(data.size() > 0, "finetune: dataset '", data.name(), "' is empty");
  const double t0 = now_seconds();

  std::vector<int64_t> pool = opt.max_images > 0 ? sample_indices(data.size(), opt.max_images, opt.seed)
                                                 : sample_indices(data.size(), data.size(), opt.seed);
  const int64_t per_epoch = (int64_t)pool.size();
  const int64_t total_images = (int64_t)std::ceil(opt.epochs * (double)per_epoch);
  const int64_t total_steps = (total_images + opt.batch_size - 1) / opt.batch_size;

  for (auto& l : sw.leaves) {
    BB_CHECK(l.is_leaf() && l.scalar_type() == torch::kFloat32, "finetune: leaves must be float32 leaf tensors");
    l.requires_grad_(true);
  }
  std::unique_ptr<torch::optim::Optimizer> optim;
  if (opt.optimizer == "adam")
    optim.reset(new torch::optim::Adam(sw.leaves, torch::optim::AdamOptions(opt.lr)));
  else
    optim.reset(new torch::optim::SGD(
        sw.leaves, torch::optim::SGDOptions(opt.lr).momentum(opt.momentum).weight_decay(opt.weight_decay)));
  auto set_lr = [&](double lr) {
    for (auto& g : optim->param_groups()) {
      if (opt.optimizer == "adam") static_cast<torch::optim::AdamOptions&>(g.options()).lr(lr);
      else static_cast<torch::optim::SGDOptions&>(g.options()).lr(lr);
    }
  };

  // Distillation teacher: the model as it is now (its own weights, BN statistics as of now).
  std::vector<torch::Tensor> buffers;
  for (auto& b : model.buffers()) buffers.push_back(b);
  std::vector<torch::Tensor> teacher_buffers;
  for (auto& b : buffers) teacher_buffers.push_back(b.detach().clone());

  std::vector<double> losses;
  {
    Swap swap(model, sw);
    Progress prog("finetune", (long)total_steps);
    int64_t done_images = 0;
    for (int64_t epoch = 0; done_images < total_images; ++epoch) {
      std::vector<int64_t> order = pool;
      std::mt19937_64 rng(opt.seed * 0x9E3779B97F4A7C15ull + (uint64_t)epoch + 1);
      std::shuffle(order.begin(), order.end(), rng);
      if ((int64_t)order.size() > total_images - done_images) order.resize(total_images - done_images);
      LoaderOptions lo;
      lo.batch_size = opt.batch_size;
      lo.augment = opt.augment;
      lo.seed = opt.seed * 1000003ull + (uint64_t)epoch;
      for_each_batch(data, order, lo, [&](const Batch& b) {
        torch::Tensor target;
        if (teacher) {
          torch::NoGradGuard ng;
          teacher->eval();
          target = torch::softmax(teacher->forward(b.images) / opt.temperature, 1);
        } else if (opt.mode == "distill") {
          torch::NoGradGuard ng;
          swap.restore();
          std::vector<torch::Tensor> cur;
          if (opt.bn == "update")
            for (size_t i = 0; i < buffers.size(); ++i) {
              cur.push_back(buffers[i].clone());
              buffers[i].copy_(teacher_buffers[i]);
            }
          model.eval();
          target = torch::softmax(model.forward(b.images) / opt.temperature, 1);
          for (size_t i = 0; i < cur.size(); ++i) buffers[i].copy_(cur[i]);
        }
        if (opt.bn == "update") model.train();
        else model.eval();
        swap.install();
        auto logits = model.forward(b.images);
        torch::Tensor loss;
        if (opt.mode == "labels") {
          loss = F::cross_entropy(logits, b.labels);
        } else {
          loss = F::kl_div(torch::log_softmax(logits / opt.temperature, 1), target,
                           F::KLDivFuncOptions().reduction(torch::kBatchMean)) *
                 (opt.temperature * opt.temperature);
        }
        st.last_lr = finetune_lr_at(opt, (double)done_images / (double)per_epoch);
        if (opt.lr_step_epochs > 0) set_lr(st.last_lr);
        optim->zero_grad();
        loss.backward();
        for (size_t i = 0; i < sw.grad_scale.size(); ++i)
          if (sw.grad_scale[i].defined() && sw.leaves[i].grad().defined()) sw.leaves[i].mutable_grad().mul_(sw.grad_scale[i]);
        optim->step();
        losses.push_back(loss.item<double>());
        done_images += b.images.size(0);
        ++st.steps;
        prog.advance(1);
        if (st.steps % 50 == 0 || st.steps == total_steps) {
          double m = 0;
          int64_t c = 0;
          for (size_t i = losses.size() > 50 ? losses.size() - 50 : 0; i < losses.size(); ++i, ++c) m += losses[i];
          log_debug("finetune: step " + std::to_string(st.steps) + "/" + std::to_string(total_steps) +
                    " loss " + std::to_string(m / (double)c));
        }
      });
    }
    prog.finish();
    // Leave the final rebuilt weights in the modules' own parameter tensors.
    torch::NoGradGuard ng;
    std::vector<torch::Tensor> final_w;
    for (auto& r : sw.layers) final_w.push_back(r.fn().detach().clone());
    swap.restore();
    for (size_t i = 0; i < sw.layers.size(); ++i) swap.orig[i].copy_(final_w[i]);
  }
  for (auto& l : sw.leaves) {
    l.requires_grad_(false);
    l.mutable_grad() = torch::Tensor();
  }
  model.eval();
  st.images = total_images;
  const size_t w = std::max<size_t>(1, losses.size() / 10);
  for (size_t i = 0; i < w && i < losses.size(); ++i) st.first_loss += losses[i] / (double)w;
  for (size_t i = losses.size() - std::min(w, losses.size()); i < losses.size(); ++i) st.last_loss += losses[i] / (double)w;
  st.seconds = now_seconds() - t0;
  log_info("finetune: " + std::to_string(st.steps) + " steps, loss " + std::to_string(st.first_loss) + " -> " +
           std::to_string(st.last_loss) + ", " + std::to_string(st.seconds) + " s");
  return st;
}

}  // namespace bb
