// [cli]: `bitbench eval` run as a user runs it (the built binary): the published accuracies of the
// bundled pretrained models, the JSON contract, and clear errors on bad input.
#include <catch2/catch.hpp>

#include "common/runtime.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "eval/evaluate.h"
#include "models/registry.h"
#include "models/weights_io.h"
#include "test_data_helpers.h"

#include <nlohmann/json.hpp>

#include <cstdio>

using namespace bbtest;

namespace {

std::string models_dir() { return bb::data_root() + "/models/"; }

Proc eval(const std::string& args) {
  const std::string bin = bitbench_binary();
  REQUIRE(fs::exists(bin));
  return run_cmd(sh_quote(bin) + " eval " + args);
}

nlohmann::json eval_json(const std::string& model, const std::string& weights, const std::string& dataset) {
  Proc p = eval("--model " + model + " --weights " + sh_quote(models_dir() + weights) + " --dataset " + dataset +
                " --json");
  INFO(p.err);
  REQUIRE(p.status == 0);
  // Exactly one JSON object on stdout.
  nlohmann::json j = nlohmann::json::parse(p.out);
  REQUIRE(j.is_object());
  for (const char* key : {"top1", "top5", "n", "top1_ci95", "images_per_s"}) REQUIRE(j.contains(key));
  REQUIRE(j["top1_ci95"].is_array());
  REQUIRE(j["top1_ci95"].size() == 2);
  CHECK(j["top1_ci95"][0].get<double>() <= j["top1"].get<double>());
  CHECK(j["top1"].get<double>() <= j["top1_ci95"][1].get<double>());
  CHECK(j["top1"].get<double>() <= j["top5"].get<double>());
  CHECK(j["images_per_s"].get<double>() > 0);
  std::printf("[cli] %s on %s: top-1 %.2f%%, top-5 %.2f%%, n %lld, CI [%.2f, %.2f], %.0f images/s\n", model.c_str(),
              dataset.c_str(), j["top1"].get<double>(), j["top5"].get<double>(), (long long)j["n"].get<int64_t>(),
              j["top1_ci95"][0].get<double>(), j["top1_ci95"][1].get<double>(), j["images_per_s"].get<double>());
  return j;
}

void check_cifar(int depth, double top1) {
  auto j = eval_json("cifar_resnet" + std::to_string(depth), "cifar10_resnet" + std::to_string(depth) + ".pt",
                     "cifar10-lossless-1k");
  CHECK(j["n"].get<int64_t>() == 1000);
  // 1000 images: every top-1 is a multiple of 0.1, so "exactly" is well defined.
  CHECK(j["top1"].get<double>() == Approx(top1).margin(1e-9));
}

// A failed command: non-zero exit, no crash (signal), a message on stderr containing `what`.
void check_fails(const std::string& args, const std::string& what) {
  Proc p = eval(args);
  INFO("bitbench eval " << args << "\nstderr: " << p.err);
  CHECK(p.signal == 0);
  CHECK(p.status > 0);
  CHECK(p.status < 128);
  CHECK_THAT(p.err, Catch::Contains("error") && Catch::Contains(what));
  CHECK(p.out.empty());
}

}  // namespace

TEST_CASE("eval: CIFAR ResNet-20 on cifar10-lossless-1k gives 91.50", "[cli]") { check_cifar(20, 91.50); }
TEST_CASE("eval: CIFAR ResNet-32 on cifar10-lossless-1k gives 92.80", "[cli]") { check_cifar(32, 92.80); }
TEST_CASE("eval: CIFAR ResNet-44 on cifar10-lossless-1k gives 93.30", "[cli][slow]") { check_cifar(44, 93.30); }
TEST_CASE("eval: CIFAR ResNet-56 on cifar10-lossless-1k gives 92.60", "[cli][slow]") { check_cifar(56, 92.60); }

TEST_CASE("eval: LeNet-5 on mnist-test is within 0.1 of 99.13", "[cli]") {
  auto j = eval_json("lenet5", "mnist_lenet5.pt", "mnist-test");
  CHECK(j["n"].get<int64_t>() == 10000);
  CHECK(std::fabs(j["top1"].get<double>() - 99.13) <= 0.1);
}

TEST_CASE("eval: --limit, --data-root and the text output", "[cli]") {
  Proc p = eval("--model cifar_resnet20 --weights " + sh_quote(models_dir() + "cifar10_resnet20.pt") +
                " --dataset cifar10-lossless-1k --limit 50 --data-root " + sh_quote(bb::data_root()));
  INFO(p.err);
  REQUIRE(p.status == 0);
  CHECK_THAT(p.out, Catch::Contains("top-1") && Catch::Contains("n=50"));
}

TEST_CASE("eval: the context says how idle threads waited (OMP_WAIT_POLICY, GOMP_SPINCOUNT as set)", "[cli]") {
  const std::string args = "--model cifar_resnet20 --weights " + sh_quote(models_dir() + "cifar10_resnet20.pt") +
                           " --dataset cifar10-lossless-1k --limit 8 --json";
  struct Case {
    std::string env, policy, spincount;
  };
  for (const Case& c : std::vector<Case>{{"env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT ", "", ""},
                                         {"env -u GOMP_SPINCOUNT OMP_WAIT_POLICY=PASSIVE ", "PASSIVE", ""},
                                         {"env -u OMP_WAIT_POLICY GOMP_SPINCOUNT=30000 ", "", "30000"}}) {
    Proc p = run_cmd(c.env + sh_quote(bitbench_binary()) + " eval " + args);
    INFO(c.env << "\n" << p.err);
    REQUIRE(p.status == 0);
    const auto ctx = nlohmann::json::parse(p.out)["context"];
    CHECK(ctx["omp_wait_policy"] == c.policy);
    CHECK(ctx["gomp_spincount"] == c.spincount);
  }
}

TEST_CASE("eval: bad input gives a clear error and a non-zero exit", "[cli]") {
  const std::string w20 = sh_quote(models_dir() + "cifar10_resnet20.pt");
  TempDir tmp;
  SECTION("missing weights file") {
    check_fails("--model cifar_resnet20 --weights " + sh_quote(tmp / "none.pt") + " --dataset cifar10-lossless-1k",
                "none.pt");
  }
  SECTION("weights of another network") {
    check_fails("--model cifar_resnet32 --weights " + w20 + " --dataset cifar10-lossless-1k",
                "missing tensors: layer1.3");
  }
  SECTION("a tensor of the wrong shape") {
    bb::StateDict sd = bb::read_state_dict(models_dir() + "cifar10_resnet20.pt");
    sd["layer2.0.conv1.weight"] = torch::zeros({32, 16, 5, 5});
    bb::write_state_dict(sd, tmp / "bad.pt");
    check_fails("--model cifar_resnet20 --weights " + sh_quote(tmp / "bad.pt") + " --dataset cifar10-lossless-1k",
                "layer2.0.conv1.weight (file [32, 16, 5, 5], model [32, 16, 3, 3])");
  }
  SECTION("not a weights file") {
    write_text(tmp / "junk.pt", "junk");
    check_fails("--model cifar_resnet20 --weights " + sh_quote(tmp / "junk.pt") + " --dataset cifar10-lossless-1k",
                "junk.pt");
  }
  SECTION("unknown model") {
    check_fails("--model resnet999 --weights " + w20 + " --dataset cifar10-lossless-1k", "unknown model 'resnet999'");
  }
  SECTION("unknown dataset") {
    check_fails("--model cifar_resnet20 --weights " + w20 + " --dataset cifar11", "unknown dataset 'cifar11'");
  }
  SECTION("missing data root") {
    check_fails("--model cifar_resnet20 --weights " + w20 + " --dataset cifar10-lossless-1k --data-root " +
                    sh_quote(tmp / "nowhere"),
                "nowhere");
  }
  SECTION("data root without the dataset") {
    check_fails("--model cifar_resnet20 --weights " + w20 + " --dataset cifar10-lossless-1k --data-root " +
                    sh_quote(tmp.path.string()),
                "test_lossless_1k.bin");
  }
  SECTION("model and dataset of different families") {
    check_fails("--model cifar_resnet20 --weights " + w20 + " --dataset mnist-test", "mnist");
  }
  SECTION("missing required flag") { check_fails("--model cifar_resnet20 --dataset cifar10-lossless-1k", "--weights"); }
  SECTION("bad --limit") {
    check_fails("--model cifar_resnet20 --weights " + w20 + " --dataset cifar10-lossless-1k --limit -3", "--limit");
  }
}

TEST_CASE("eval: folding BN into the convs, in NCHW or blocked, changes no prediction (ResNet-56, lossless 1k)", "[cli]") {
  auto model = bb::make_model("cifar_resnet56");
  bb::load_weights(*model, models_dir() + "cifar10_resnet56.pt");
  auto ds = bb::open_dataset("cifar10-lossless-1k");
  bb::EvalOptions o;
  o.progress = false;
  o.fold_bn = false;
  auto plain = bb::evaluate(*model, *ds, o);
  o.fold_bn = true;
  o.blocked_layout = false;
  auto folded = bb::evaluate(*model, *ds, o);
  o.blocked_layout = true;
  auto blocked = bb::evaluate(*model, *ds, o);
  REQUIRE(plain.n == 1000);
  REQUIRE(folded.hit1 == plain.hit1);  // image by image
  REQUIRE(folded.correct5 == plain.correct5);
  REQUIRE(blocked.hit1 == plain.hit1);
  REQUIRE(blocked.correct5 == plain.correct5);
  REQUIRE(!model->fold_bn());  // evaluate() leaves the model as it found it
  REQUIRE(!model->blocked_layout());
}

TEST_CASE("eval: batches side by side give the predictions of one batch after the other", "[cli]") {
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  auto model = bb::make_model("cifar_resnet20");
  bb::load_weights(*model, models_dir() + "cifar10_resnet20.pt");
  auto ds = bb::open_dataset("cifar10-lossless-1k");
  bb::EvalOptions o;
  o.progress = false;
  o.limit = 450;  // 5 batches: the last pair's odd one out runs alone
  o.workers = 1;
  auto one = bb::evaluate(*model, *ds, o);
  o.workers = 2;
  auto two = bb::evaluate(*model, *ds, o);
  at::set_num_threads(threads);
  REQUIRE(one.n == 450);
  REQUIRE(two.n == 450);
  CHECK(two.hit1 == one.hit1);  // image by image, in order
  CHECK(two.correct1 == one.correct1);
  CHECK(two.correct5 == one.correct5);
  // And the hits of a plain loop over the same batches of 100, in order, on evaluation's network
  // (BN folded, blocked layout).
  std::vector<uint8_t> ref;
  torch::NoGradGuard ng;
  model->eval();
  bb::FoldBnScope fold(*model, true, true);
  for (int64_t s = 0; s < 450; s += 100) {
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min<int64_t>(450, s + 100); ++i) idx.push_back(i);
    bb::Batch b = bb::load_batch(*ds, idx);
    auto hit = model->forward(b.images).argmax(1).eq(b.labels);
    for (int64_t i = 0; i < hit.size(0); ++i) ref.push_back(hit[i].item<bool>() ? 1 : 0);
  }
  CHECK(two.hit1 == ref);
}

TEST_CASE("eval: the context says how many workers run side by side; a bad BITBENCH_SIDE_BY_SIDE is an error", "[cli]") {
  const std::string args = "--model cifar_resnet20 --weights " + sh_quote(models_dir() + "cifar10_resnet20.pt") +
                           " --dataset cifar10-lossless-1k --limit 8 --json";
  for (const auto& [env, workers] : std::vector<std::pair<std::string, int>>{
           {"env -u BITBENCH_SIDE_BY_SIDE OMP_NUM_THREADS=2 ", 2}, {"env BITBENCH_SIDE_BY_SIDE=0 OMP_NUM_THREADS=2 ", 1}}) {
    Proc p = run_cmd(env + sh_quote(bitbench_binary()) + " eval " + args);
    INFO(env << "\n" << p.err);
    REQUIRE(p.status == 0);
    CHECK(nlohmann::json::parse(p.out)["context"]["side_by_side_workers"] == workers);
  }
  Proc p = run_cmd("env BITBENCH_SIDE_BY_SIDE=yes " + sh_quote(bitbench_binary()) + " eval " + args);
  CHECK(p.status != 0);
  CHECK_THAT(p.err, Catch::Contains("BITBENCH_SIDE_BY_SIDE"));
}

// `run` and `plan` share most flags; the plan-only ones must not start an experiment under `run`.
TEST_CASE("run rejects plan-only flags, plan prints the results folder", "[cli]") {
  const std::string bin = bitbench_binary();
  REQUIRE(fs::exists(bin));
  const std::string exp = sh_quote(bb::source_dir() + "/experiments/table2.yaml");
  for (const char* flag : {"--results-dir", "--json"}) {
    Proc p = run_cmd(sh_quote(bin) + " run " + exp + " " + flag);
    INFO("bitbench run " << flag << "\nstderr: " << p.err);
    CHECK(p.status > 0);
    CHECK(p.status < 128);
    CHECK(p.err.find(std::string("unknown flag '") + flag + "'") != std::string::npos);
  }
  Proc p = run_cmd(sh_quote(bin) + " plan " + exp + " --results-dir");
  INFO(p.err);
  REQUIRE(p.status == 0);
  CHECK(p.out.find("results/table2") != std::string::npos);
  Proc q = run_cmd(sh_quote(bin) + " plan " + exp + " --force");
  CHECK(q.status > 0);
}
