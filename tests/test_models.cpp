// [models]: architectures and weight files against torchvision (the /usr/bin/python3 oracle):
// same parameter/buffer names and shapes, same logits from the same random weights, and weight
// files that PyTorch and bitbench read both ways; strict loading with errors naming the tensor.
#include <catch2/catch.hpp>

#include "common/error.h"
#include "common/runtime.h"
#include "models/registry.h"
#include "models/weights_io.h"
#include "test_data_helpers.h"

#include <cstdio>

using namespace bbtest;

namespace {

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// torchvision builds the model with a fixed seed and random BN statistics, saves its state dict
// and the logits of a random input; bitbench loads both and must give the same logits.
void check_parity(const std::string& arch, int batch) {
  BB_REQUIRE_ORACLE("torch, torchvision");
  TempDir tmp;
  Proc p = run_python("scripts/oracle/model_parity.py",
                      "make --arch " + arch + " --out " + sh_quote(tmp.path.string()) + " --batch " +
                          std::to_string(batch));
  INFO(p.err);
  REQUIRE(p.status == 0);
  auto model = bb::make_model(arch);
  bb::load_weights(*model, tmp / "weights.pt");
  bb::StateDict io = bb::read_state_dict(tmp / "io.pt");
  torch::NoGradGuard ng;
  torch::Tensor logits = model->forward(io.at("input"));
  const torch::Tensor& ref = io.at("logits");
  REQUIRE(logits.sizes() == ref.sizes());
  const double diff = max_abs_diff(logits, ref);
  std::printf("[models] %s vs torchvision, %d images: max |logit diff| %.3g (logits max |.| %.3g)\n", arch.c_str(),
              batch, diff, ref.abs().max().item<double>());
  CHECK(diff <= 1e-4);
  CHECK(torch::equal(logits.argmax(1), ref.argmax(1)));

  // Evaluation folds each BN into its conv: the same logits up to float rounding.
  REQUIRE(!model->is_training());
  model->set_fold_bn(true);
  torch::Tensor folded = model->forward(io.at("input"));
  model->set_fold_bn(false);
  const double fdiff = max_abs_diff(folded, ref);
  std::printf("[models] %s with BN folded: max |logit diff| %.3g\n", arch.c_str(), fdiff);
  CHECK(fdiff <= 1e-4);
  CHECK(torch::equal(folded.argmax(1), ref.argmax(1)));
  CHECK(max_abs_diff(model->forward(io.at("input")), logits) == 0);  // off again: the plain path

  // Folded convs on oneDNN's blocked layout (evaluation's default where the model supports it).
  model->set_fold_bn(true, /*blocked=*/true);
  CHECK(model->blocked_layout() == (model->supports_blocked_layout() && at::hasMKLDNN()));
  torch::Tensor blocked = model->forward(io.at("input"));
  model->set_fold_bn(false);
  CHECK(!blocked.is_mkldnn());
  const double bdiff = max_abs_diff(blocked, ref);
  std::printf("[models] %s with BN folded, blocked layout %d: max |logit diff| %.3g\n", arch.c_str(),
              (int)model->supports_blocked_layout(), bdiff);
  CHECK(bdiff <= 1e-4);
  CHECK(torch::equal(blocked.argmax(1), ref.argmax(1)));
}

// akamaster's trained CIFAR ResNet of this depth, in eval mode.
std::shared_ptr<bb::Model> trained_cifar_resnet(int depth) {
  auto model = bb::make_model("cifar_resnet" + std::to_string(depth));
  bb::load_weights(*model, bb::data_root() + "/models/cifar10_resnet" + std::to_string(depth) + ".pt");
  model->eval();
  return model;
}

std::string shape_str(at::IntArrayRef s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out;
}

}  // namespace

TEST_CASE("resnet18 logits equal torchvision's", "[models]") { check_parity("resnet18", 2); }
TEST_CASE("resnet50 logits equal torchvision's", "[models]") { check_parity("resnet50", 2); }
TEST_CASE("vgg16_bn logits equal torchvision's", "[models][slow]") { check_parity("vgg16_bn", 1); }

TEST_CASE("CIFAR ResNets: BN folded, in NCHW and on the blocked layout, give the plain logits", "[models]") {
  for (int depth : {20, 56}) {
    auto model = trained_cifar_resnet(depth);
    torch::NoGradGuard ng;
    torch::manual_seed(depth);
    torch::Tensor x = torch::randn({8, 3, 32, 32});
    torch::Tensor ref = model->forward(x);
    for (bool blocked : {false, true}) {
      model->set_fold_bn(true, blocked);
      CHECK(model->blocked_layout() == (blocked && at::hasMKLDNN()));
      torch::Tensor y = model->forward(x);
      model->set_fold_bn(false);
      CHECK(!y.is_mkldnn());
      const double diff = max_abs_diff(y, ref);
      std::printf("[models] cifar_resnet%d BN folded, blocked %d: max |logit diff| %.3g (logits max |.| %.3g)\n", depth,
                  (int)blocked, diff, ref.abs().max().item<double>());
      CHECK(diff <= 1e-4);
      CHECK(torch::equal(y.argmax(1), ref.argmax(1)));
    }
    CHECK(max_abs_diff(model->forward(x), ref) == 0);  // the plain path again
  }
}

// Evaluation and TQ's curve search run forwards side by side, one single-threaded forward per
// core on one model (run_side_by_side): that must give the logits of one forward after the other
// on all threads, to the last bit, in every layout, for every family evaluation runs.
TEST_CASE("models: forwards side by side on one model give the logits of one after the other", "[models]") {
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  struct Case {
    std::string arch;
    int64_t hw;
  };
  for (const Case& cs : {Case{"cifar_resnet20", 32}, Case{"cifar_resnet56", 32}, Case{"resnet18", 64},
                         Case{"lenet5", 32}}) {
    torch::manual_seed(5);
    const std::string cifar = "cifar_resnet";
    auto model = cs.arch.rfind(cifar, 0) == 0 ? trained_cifar_resnet(std::stoi(cs.arch.substr(cifar.size())))
                                              : bb::make_model(cs.arch);
    model->eval();
    torch::NoGradGuard ng;
    std::vector<torch::Tensor> x;
    for (int b = 0; b < 4; ++b) x.push_back(torch::randn({b == 3 ? 7 : 12, model->input_spec().channels, cs.hw, cs.hw}));
    for (int mode = 0; mode < 3; ++mode) {  // plain, BN folded (NCHW), BN folded (blocked where supported)
      INFO(cs.arch << " mode " << mode);
      if (mode > 0) model->set_fold_bn(true, mode == 2);
      std::vector<torch::Tensor> ref, side(x.size());
      for (const auto& b : x) ref.push_back(model->forward(b));
      bb::run_side_by_side((int64_t)x.size(), 2, [&](int64_t t, int) { side[t] = model->forward(x[t]); });
      for (size_t b = 0; b < x.size(); ++b) CHECK(torch::equal(side[b], ref[b]));
      model->set_fold_bn(false);
    }
  }
  at::set_num_threads(threads);
}

TEST_CASE("ImageNet architectures have torchvision's tensor names and shapes", "[models]") {
  BB_REQUIRE_ORACLE("torch, torchvision");
  // torchvision's names/shapes for all seven, printed "<arch> <name> <d0,d1,...>", in one process
  // (importing torch dominates). The init functions become no-ops: random-filling VGG's 138M
  // parameters would take longer than everything else.
  const char* code =
      "import torch, torchvision\n"
      "for f in ('kaiming_normal_', 'normal_', 'constant_', 'uniform_', 'kaiming_uniform_'):\n"
      "    setattr(torch.nn.init, f, lambda t, *a, **k: t)\n"
      "for arch in ('resnet18', 'resnet34', 'resnet50', 'vgg11', 'vgg11_bn', 'vgg16', 'vgg16_bn'):\n"
      "    m = getattr(torchvision.models, arch)()\n"
      "    for k, v in m.state_dict().items():\n"
      "        print(arch, k, ','.join(str(d) for d in v.shape))\n";
  TempDir tmp;
  write_text(tmp / "names.py", code);
  Proc p = run_cmd(std::string(python()) + " " + sh_quote(tmp / "names.py"));
  INFO(p.err);
  REQUIRE(p.status == 0);
  std::map<std::string, std::map<std::string, std::string>> ref;
  std::map<std::string, std::vector<std::string>> ref_layers;  // >= 2-d weights in definition order
  std::istringstream in(p.out);
  std::string arch, name, shape;
  while (in >> arch >> name) {
    std::getline(in, shape);
    shape.erase(0, shape.find_first_not_of(' '));
    ref[arch][name] = shape;
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 && shape.find(',') != std::string::npos)
      ref_layers[arch].push_back(name.substr(0, name.size() - 7));
  }
  REQUIRE(ref.size() == 7);
  for (auto& [a, names] : ref) {
    INFO("model " << a);
    auto model = bb::make_model(a);
    std::map<std::string, std::string> mine;
    for (auto& [k, v] : model->state()) mine[k] = shape_str(v.sizes());
    CHECK(mine == names);
    // layers() lists every conv/linear, in torchvision's definition order (= execution order).
    std::vector<std::string> layers;
    for (auto& l : model->layers()) layers.push_back(l.name);
    CHECK(layers == ref_layers[a]);
  }
}

TEST_CASE("write_state_dict output is read by torch.load and fits torchvision's resnet18", "[models]") {
  BB_REQUIRE_ORACLE("torch, torchvision");
  // bitbench's own random weights, with random BN statistics.
  torch::manual_seed(7);
  auto model = bb::make_model("resnet18");
  {
    torch::NoGradGuard ng;
    for (auto& [k, v] : model->state()) {
      if (k.find("running_mean") != std::string::npos) v.normal_(0, 0.1);
      if (k.find("running_var") != std::string::npos) v.uniform_(0.5, 1.5);
      if (k.find("bn") != std::string::npos && k.find(".weight") != std::string::npos) v.uniform_(0.5, 1.5);
    }
  }
  TempDir tmp;
  bb::write_state_dict(model->state(), tmp / "mine.pt");
  torch::Tensor x = torch::randn({2, 3, 64, 64});
  bb::write_state_dict({{"input", x}}, tmp / "input.pt");
  Proc p = run_python("scripts/oracle/model_parity.py",
                      "load --arch resnet18 --weights " + sh_quote(tmp / "mine.pt") + " --input " +
                          sh_quote(tmp / "input.pt") + " --out " + sh_quote(tmp / "out.pt"));
  INFO(p.err);
  REQUIRE(p.status == 0);
  torch::NoGradGuard ng;
  torch::Tensor mine = model->forward(x);
  torch::Tensor theirs = bb::read_state_dict(tmp / "out.pt").at("logits");
  const double diff = max_abs_diff(mine, theirs);
  std::printf("[models] resnet18 weights written by bitbench, run by torchvision: max |logit diff| %.3g\n", diff);
  CHECK(diff <= 1e-4);
}

TEST_CASE("scripts/export_torchvision.py --checkpoint writes a file bitbench loads", "[models]") {
  BB_REQUIRE_ORACLE("torch, torchvision");
  TempDir tmp;
  // A DataParallel-style checkpoint (OrderedDict, "module." prefix), as found in the wild.
  const std::string code = "import torch, torchvision, collections\n"
                           "torch.manual_seed(1)\n"
                           "sd = torchvision.models.resnet18().state_dict()\n"
                           "torch.save({'state_dict': collections.OrderedDict(('module.' + k, v) for k, v in sd.items())}, '" +
                           tmp / "ckpt.pth" + "')\n"
                           "torch.save(dict(sd), '" + tmp / "ref.pt" + "')\n";
  write_text(tmp / "mk.py", code);
  Proc p = run_cmd(std::string(python()) + " " + sh_quote(tmp / "mk.py"));
  INFO(p.err);
  REQUIRE(p.status == 0);
  p = run_python("scripts/export_torchvision.py",
                 "resnet18 " + sh_quote(tmp / "out.pt") + " --checkpoint " + sh_quote(tmp / "ckpt.pth"));
  INFO(p.err);
  REQUIRE(p.status == 0);
  auto model = bb::make_model("resnet18");
  bb::load_weights(*model, tmp / "out.pt");
  bb::StateDict ref = bb::read_state_dict(tmp / "ref.pt");
  for (auto& [k, v] : model->state()) CHECK(torch::equal(v, ref.at(k)));

  // A checkpoint of another network is refused, and nothing is written.
  p = run_python("scripts/export_torchvision.py",
                 "resnet34 " + sh_quote(tmp / "y.pt") + " --checkpoint " + sh_quote(tmp / "ref.pt"));
  CHECK(p.status != 0);
  CHECK_THAT(p.err, Catch::Contains("Missing key(s)"));
  CHECK(!fs::exists(tmp.path / "y.pt"));
}

// ---- strict loading (no oracle needed) ----

namespace {

std::string load_error(const std::string& arch, const bb::StateDict& sd) {
  auto m = bb::make_model(arch);
  try {
    bb::load_state_dict(*m, sd, "test dict");
  } catch (const bb::Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("strict loading names the missing, extra or mis-shaped tensor", "[models]") {
  auto src = bb::make_model("cifar_resnet20");
  bb::StateDict sd;
  for (auto& [k, v] : src->state()) sd[k] = v.clone();
  CHECK(load_error("cifar_resnet20", sd) == "no error");

  SECTION("num_batches_tracked may be absent (akamaster's files omit it)") {
    for (auto it = sd.begin(); it != sd.end();)
      it = it->first.find("num_batches_tracked") != std::string::npos ? sd.erase(it) : std::next(it);
    CHECK(load_error("cifar_resnet20", sd) == "no error");
  }
  SECTION("missing") {
    sd.erase("layer2.1.bn2.running_var");
    CHECK_THAT(load_error("cifar_resnet20", sd), Catch::Contains("missing") && Catch::Contains("layer2.1.bn2.running_var"));
  }
  SECTION("extra") {
    sd["layer9.0.conv1.weight"] = torch::zeros({1});
    CHECK_THAT(load_error("cifar_resnet20", sd), Catch::Contains("unexpected") && Catch::Contains("layer9.0.conv1.weight"));
  }
  SECTION("mis-shaped") {
    sd["layer1.0.conv2.weight"] = torch::zeros({16, 16, 5, 5});
    CHECK_THAT(load_error("cifar_resnet20", sd),
               Catch::Contains("layer1.0.conv2.weight") && Catch::Contains("[16, 16, 5, 5]") &&
                   Catch::Contains("[16, 16, 3, 3]"));
  }
  SECTION("another network's weights") {
    CHECK_THAT(load_error("cifar_resnet32", sd), Catch::Contains("missing") && Catch::Contains("layer1.3"));
    // All problems at once: shapes, missing and unexpected tensors.
    CHECK_THAT(load_error("resnet18", sd), Catch::Contains("conv1.weight (file [16, 3, 3, 3], model [64, 3, 7, 7])") &&
                                               Catch::Contains("missing tensors: fc.bias") &&
                                               Catch::Contains("unexpected tensors: layer1.2.bn1.bias"));
  }
}

TEST_CASE("weights files: round trip, and bad files give errors naming them", "[models]") {
  TempDir tmp;
  auto m = bb::make_model("lenet5");
  bb::write_state_dict(m->state(), tmp / "w.pt");
  bb::StateDict back = bb::read_state_dict(tmp / "w.pt");
  REQUIRE(back.size() == m->state().size());
  for (auto& [k, v] : m->state()) CHECK(torch::equal(back.at(k), v));
  auto m2 = bb::make_model("lenet5");
  bb::load_weights(*m2, tmp / "w.pt");
  for (auto& [k, v] : m2->state()) CHECK(torch::equal(v, m->state().at(k)));

  CHECK_THROWS_WITH(bb::read_state_dict(tmp / "absent.pt"), Catch::Contains("absent.pt"));
  write_text(tmp / "empty.pt", "");
  CHECK_THROWS_WITH(bb::read_state_dict(tmp / "empty.pt"), Catch::Contains("empty.pt"));
  write_text(tmp / "junk.pt", "this is not a pickle at all");
  CHECK_THROWS_WITH(bb::read_state_dict(tmp / "junk.pt"), Catch::Contains("junk.pt"));
  // A pickled tensor rather than a dict.
  std::vector<char> bytes = torch::pickle_save(c10::IValue(torch::zeros({2})));
  write_text(tmp / "tensor.pt", std::string(bytes.begin(), bytes.end()));
  CHECK_THROWS_WITH(bb::read_state_dict(tmp / "tensor.pt"), Catch::Contains("tensor.pt") && Catch::Contains("dict"));
  // A one-entry dict, which libtorch's unpickler cannot read (see weights_io.h).
  if (python_has("torch, torchvision")) {
    Proc p = run_cmd(std::string(python()) + " -c " +
                     sh_quote("import torch; torch.save({'w': torch.zeros(2)}, '" + tmp / "one.pt" + "')"));
    REQUIRE(p.status == 0);
    CHECK_THROWS_WITH(bb::read_state_dict(tmp / "one.pt"), Catch::Contains("one.pt") && Catch::Contains("one entry"));
  }
  // A truncated file.
  std::string good = slurp(tmp / "w.pt");
  write_text(tmp / "cut.pt", good.substr(0, good.size() / 2));
  CHECK_THROWS_WITH(bb::read_state_dict(tmp / "cut.pt"), Catch::Contains("cut.pt"));
}

TEST_CASE("the pretrained weights in the data root load strictly", "[models]") {
  const std::string d = bb::data_root() + "/models/";
  for (auto [arch, file] : std::vector<std::pair<std::string, std::string>>{
           {"cifar_resnet20", "cifar10_resnet20.pt"},
           {"cifar_resnet32", "cifar10_resnet32.pt"},
           {"cifar_resnet44", "cifar10_resnet44.pt"},
           {"cifar_resnet56", "cifar10_resnet56.pt"},
           {"lenet5", "mnist_lenet5.pt"}}) {
    INFO(file);
    auto m = bb::make_model(arch);
    CHECK_NOTHROW(bb::load_weights(*m, d + file));
  }
}
