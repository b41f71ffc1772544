// [dataset-yaml]: datasets described by YAML files (configs/datasets/<name>.yaml or a path): the
// built-in names keep their exact images, order, labels and identities; custom files give the
// same predictions as the built-ins; malformed files are refused with file:line.
#include <catch2/catch.hpp>

#include "common/error.h"
#include "common/hash.h"
#include "common/runtime.h"
#include "data/dataset.h"
#include "data/dataset_spec.h"
#include "data/loader.h"
#include "models/registry.h"
#include "models/weights_io.h"
#include "runner/experiment.h"
#include "test_data_helpers.h"

#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <cstdio>
#include <map>

using namespace bbtest;

namespace {

// Every image's path relative to the data root and its label, in dataset order, hashed.
std::string listing_hash(const bb::Dataset& ds) {
  const std::string root = bb::data_root() + "/";
  std::string text;
  for (int64_t i = 0; i < ds.size(); ++i) {
    std::string p = ds.image_path(i);
    if (p.rfind(root, 0) == 0) p = p.substr(root.size());
    text += p + "\t" + std::to_string(ds.label(i)) + "\n";
  }
  return bb::sha256_hex(text);
}

std::string portable_identity(const bb::Dataset& ds) {
  std::string id = ds.identity();
  const std::string root = bb::data_root();
  for (size_t p; (p = id.find(root)) != std::string::npos;) id.replace(p, root.size(), "${data}");
  return id;
}

}  // namespace

// The values the name -> C++ table gave before datasets were files (commit 136159c), measured
// with this very code: size, classes, family, identity (data root written ${data}) and the sha256
// of "<path under the data root>\t<label>\n" over every image in order. The YAML files must
// reproduce them exactly: the same images, order and labels, and the same cache identities.
TEST_CASE("built-in datasets: images, order, labels and identities pinned", "[dataset-yaml]") {
  struct Pin {
    const char* name;
    int64_t size, classes;
    const char* family;
    const char* identity;
    const char* listing;
  };
  const Pin pins[] = {
      {"cifar10-lossless-1k", 1000, 10, "cifar10", "cifar10-lossless-1k:1000",
       "b54ace4faa0f9e219bc1ddb7fa195c5f0ba305cf3891294d66666297d07b22a5"},
      {"cifar10-jpeg-train", 45000, 10, "cifar10",
       "cifar10-jpeg-train:${data}/cifar10/jpeg/train:45000:minus-holdout500/3405387008",
       "70806c4376ee8351ce007b7ee0b36ddd5fccbd547258873e47aa449cd2e2025a"},
      {"cifar10-jpeg-val", 5000, 10, "cifar10", "cifar10-jpeg-val:${data}/cifar10/jpeg/train:5000:holdout500/3405387008",
       "a547d44748e55b6c11f3ce98079e17cf8e8c22a626c8041823341d0d60300231"},
      {"cifar10-jpeg-test", 10000, 10, "cifar10", "cifar10-jpeg-test:${data}/cifar10/jpeg/test:10000",
       "b68035c61d9c09731fa8adc11a732580dabac21bd87796d953b9260aa8fb69ad"},
      {"mnist-test", 10000, 10, "mnist", "mnist-test:10000",
       "94d3b1176adf2d29e692c15a815050c6f342a08a653270b8711b1c55da2f488e"},
      {"imagenet-sample", 100, 1000, "imagenet", "imagenet-sample:${data}/imagenet-sample/val:100",
       "808fcf253bba7ebc99d1488a7bb964c85fc6fbd8fa959bce613bb667d6134424"},
  };
  for (const Pin& p : pins) {
    INFO(p.name);
    auto ds = bb::open_dataset(p.name);
    CHECK(ds->name() == p.name);
    CHECK(ds->size() == p.size);
    CHECK(ds->num_classes() == p.classes);
    CHECK(ds->family() == p.family);
    CHECK(portable_identity(*ds) == p.identity);
    CHECK(listing_hash(*ds) == p.listing);
    // Run IDs record "<name>:<size>" of these, as before.
    CHECK(bb::dataset_run_identity(p.name) == std::string(p.name) + ":" + std::to_string(p.size));
  }
  CHECK(bb::dataset_names() == std::vector<std::string>{"cifar10-jpeg-test", "cifar10-jpeg-train", "cifar10-jpeg-val",
                                                        "cifar10-lossless-1k", "imagenet-sample", "imagenet-val",
                                                        "mnist-test"});
  // Roles and defaults as the code had them.
  for (auto n : {"cifar10-lossless-1k", "cifar10-jpeg-test", "mnist-test", "imagenet-sample", "imagenet-val"})
    CHECK(bb::is_test_set(n));
  CHECK_FALSE(bb::is_test_set("cifar10-jpeg-val"));
  CHECK_FALSE(bb::is_test_set("cifar10-jpeg-train"));
  CHECK_FALSE(bb::is_test_set("no-such-set"));
  CHECK(bb::dataset_role("cifar10-jpeg-val") == "validation");
  CHECK(bb::validation_set_for_family("cifar10") == "cifar10-jpeg-val");
  CHECK(bb::validation_set_for_family("imagenet") == "");
  CHECK(bb::default_calibration_for_family("cifar10") == "cifar10-jpeg-train");
  CHECK(bb::default_calibration_for_family("imagenet") == "imagenet-sample");
  CHECK(bb::default_calibration_for_family("mnist") == "mnist-test");
  CHECK(bb::dataset_family("imagenet-val") == "imagenet");
  CHECK(bb::dataset_family("cifar11") == "");
}

// ---- custom dataset files ----

namespace {

const char* kCifarClasses = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";

// Top-1 predictions (and logits) of the CIFAR ResNet-20 on images `idx` of `ds`.
torch::Tensor logits_of(const bb::Dataset& ds, const std::vector<int64_t>& idx) {
  static std::shared_ptr<bb::Model> model = [] {
    auto m = bb::make_model("cifar_resnet20");
    bb::load_weights(*m, bb::data_root() + "/models/cifar10_resnet20.pt");
    m->eval();
    return m;
  }();
  torch::NoGradGuard g;
  return model->forward(bb::load_batch(ds, idx).images);
}

// Images `mine` of `a` against images `theirs` of `b`: same labels, same tensors, same predictions.
void expect_same_images(const bb::Dataset& a, const std::vector<int64_t>& mine, const bb::Dataset& b,
                        const std::vector<int64_t>& theirs) {
  REQUIRE(mine.size() == theirs.size());
  for (size_t k = 0; k < mine.size(); ++k) {
    INFO(a.name() << " image " << mine[k] << " vs " << b.name() << " image " << theirs[k]);
    REQUIRE(a.label(mine[k]) == b.label(theirs[k]));
    REQUIRE(torch::equal(a.image(mine[k]), b.image(theirs[k])));
  }
  torch::Tensor la = logits_of(a, mine), lb = logits_of(b, theirs);
  CHECK(torch::equal(la.argmax(1), lb.argmax(1)));
  CHECK(torch::equal(la, lb));
}

std::vector<int64_t> range(int64_t a, int64_t b) {
  std::vector<int64_t> v;
  for (int64_t i = a; i < b; ++i) v.push_back(i);
  return v;
}

}  // namespace

TEST_CASE("custom dataset files give the built-ins' images, labels and predictions", "[dataset-yaml]") {
  TempDir tmp;
  const std::string root = bb::data_root();
  auto test = bb::open_dataset("cifar10-jpeg-test");

  SECTION("a slice of the JPEG test folder under another name, with a class list") {
    // Three class folders of 8 images each (links into the test folder): labels come from the
    // class list, not from the three folders present.
    std::map<std::string, int64_t> index_of;
    for (int64_t i = 0; i < test->size(); ++i) index_of[test->image_path(i)] = i;
    std::vector<int64_t> theirs;
    for (const char* cls : {"bird", "cat", "truck"}) {
      fs::create_directories(tmp.path / "slice" / cls);
      std::vector<std::string> files;
      for (auto& e : fs::directory_iterator(fs::path(root) / "cifar10/jpeg/test" / cls))
        files.push_back(e.path().filename().string());
      std::sort(files.begin(), files.end());
      for (int k = 0; k < 8; ++k) {
        const fs::path src = fs::path(root) / "cifar10/jpeg/test" / cls / files[k];
        fs::create_symlink(src, tmp.path / "slice" / cls / files[k]);
        REQUIRE(index_of.count(src.string()));
        theirs.push_back(index_of[src.string()]);
      }
    }
    write_text(tmp / "classes.txt", kCifarClasses);
    const std::string y = write_file(tmp.str(), "slice.yaml",
                                     "name: my-slice\nformat: imagefolder\npath: " + tmp.str() +
                                         "/slice\nclasses: " + tmp.str() + "/classes.txt\npreprocess: cifar\n");
    auto mine = bb::open_dataset(y);
    REQUIRE(mine->size() == 24);
    CHECK(mine->name() == "my-slice");
    CHECK(mine->num_classes() == 10);
    CHECK(mine->label(0) == 2);   // bird
    CHECK(mine->label(23) == 9);  // truck
    expect_same_images(*mine, range(0, 24), *test, theirs);
  }
  SECTION("${data}, limit, and explicit preprocessing equal to the cifar preset") {
    const std::string y = write_file(tmp.str(), "first.yaml",
                                     "name: first-40\nformat: imagefolder\npath: ${data}/cifar10/jpeg/test\n"
                                     "preprocess:\n  size: 32\n  mean: [0.485, 0.456, 0.406]\n"
                                     "  std: [0.229, 0.224, 0.225]\nfamily: cifar10\nlimit: 40\n");
    auto mine = bb::open_dataset(y);
    REQUIRE(mine->size() == 40);
    expect_same_images(*mine, range(0, 40), *test, range(0, 40));
  }
  SECTION("cifar-binary: a slice of records, and several files read as one") {
    auto lossless = bb::open_dataset("cifar10-lossless-1k");
    const std::string bin = slurp(root + "/cifar10/test_lossless_1k.bin");
    write_text(tmp / "slice.bin", bin.substr(100 * 3073, 64 * 3073));
    const std::string y = write_file(tmp.str(), "bin.yaml",
                                     "name: bin-slice\nformat: cifar-binary\npath: " + tmp.str() +
                                         "/slice.bin\npreprocess: cifar\n");
    auto mine = bb::open_dataset(y);
    REQUIRE(mine->size() == 64);
    expect_same_images(*mine, range(0, 64), *lossless, range(100, 164));
    const std::string y2 = write_file(tmp.str(), "two.yaml",
                                      "name: two-files\nformat: cifar-binary\npath: [cifar10/test_lossless_1k.bin, " +
                                          tmp.str() + "/slice.bin]\npreprocess: cifar\nlimit: 1010\n");
    auto two = bb::open_dataset(y2);
    REQUIRE(two->size() == 1010);
    expect_same_images(*two, range(995, 1010), *lossless, {995, 996, 997, 998, 999, 100, 101, 102, 103, 104, 105,
                                                            106, 107, 108, 109});
  }
  SECTION("a relative path from ${env:...} is read from the current directory, others from the data root") {
    const std::string bin = slurp(root + "/cifar10/test_lossless_1k.bin");
    write_text(tmp / "few.bin", bin.substr(0, 5 * 3073));
    const std::string rel = fs::relative(tmp.path / "few.bin", fs::current_path()).string();
    REQUIRE(rel.front() != '/');
    setenv("BB_TEST_DATASET_FILE", rel.c_str(), 1);
    const std::string y = write_file(tmp.str(), "env.yaml",
                                     "name: env-file\nformat: cifar-binary\npath: ${env:BB_TEST_DATASET_FILE}\n"
                                     "preprocess: cifar\n");
    auto mine = bb::open_dataset(y);
    unsetenv("BB_TEST_DATASET_FILE");
    REQUIRE(mine->size() == 5);
    expect_same_images(*mine, range(0, 5), *bb::open_dataset("cifar10-lossless-1k"), range(0, 5));
    CHECK_THAT(error_of([&] { bb::open_dataset(y); }),
               Catch::Contains("env.yaml:3") && Catch::Contains("BB_TEST_DATASET_FILE"));
  }
  SECTION("the validation hold-out rule in a file of one's own picks the same images in the same order") {
    const std::string y = write_file(tmp.str(), "val.yaml",
                                     "name: my-val\nformat: imagefolder\npath: cifar10/jpeg/train\npreprocess: cifar\n"
                                     "role: validation\nsubset: {part: held, per_class: 500, seed: 3405387008}\n");
    auto mine = bb::open_dataset(y);
    auto val = bb::open_dataset("cifar10-jpeg-val");
    REQUIRE(mine->size() == 5000);
    for (int64_t i = 0; i < 5000; ++i) {
      REQUIRE(mine->image_path(i) == val->image_path(i));
      REQUIRE(mine->label(i) == val->label(i));
    }
    CHECK(bb::dataset_role(y) == "validation");
    CHECK_FALSE(bb::is_test_set(y));
    // Not a shipped file: its settings are part of its identities (caches, run IDs).
    CHECK_THAT(mine->identity(), Catch::Contains(":spec="));
    const std::string run_id = bb::dataset_run_identity(y);
    CHECK_THAT(run_id, Catch::StartsWith(y + ":5000:"));
    write_file(tmp.str(), "val.yaml",
               "name: my-val\nformat: imagefolder\npath: cifar10/jpeg/train\npreprocess: cifar\n"
               "role: validation\nsubset: {part: held, per_class: 500, seed: 3405387009}\n");
    CHECK(bb::dataset_run_identity(y) != run_id);
  }
}

TEST_CASE("images of the wrong size for CIFAR preprocessing are errors naming the file", "[dataset-yaml]") {
  TempDir tmp;
  fs::create_directories(tmp.path / "odd/cat");
  fs::create_directories(tmp.path / "odd/dog");
  cv::Mat tiny(1, 1, CV_8UC3, cv::Scalar(10, 20, 30)), big(64, 64, CV_8UC3, cv::Scalar(1, 2, 3));
  REQUIRE(cv::imwrite(tmp / "odd/cat/tiny.png", tiny));
  REQUIRE(cv::imwrite(tmp / "odd/dog/big.png", big));
  write_text(tmp / "classes.txt", kCifarClasses);
  const std::string y = write_file(tmp.str(), "odd.yaml",
                                   "name: odd\nformat: imagefolder\npath: " + tmp.str() + "/odd\nclasses: " +
                                       tmp.str() + "/classes.txt\npreprocess: cifar\n");
  auto ds = bb::open_dataset(y);
  REQUIRE(ds->size() == 2);
  CHECK_THAT(error_of([&] { ds->image(0); }), Catch::Contains("tiny.png") && Catch::Contains("1x1"));
  CHECK_THAT(error_of([&] { ds->image(1); }), Catch::Contains("big.png") && Catch::Contains("64x64"));
  // The command fails, naming the file, instead of reporting a top-1.
  Proc p = run_cmd(sh_quote(bitbench_binary()) + " eval --model cifar_resnet20 --weights " +
                   sh_quote(bb::data_root() + "/models/cifar10_resnet20.pt") + " --dataset " + sh_quote(y));
  CHECK(p.status != 0);
  CHECK_THAT(p.err, Catch::Contains("tiny.png") || Catch::Contains("big.png"));
  // Explicit geometry takes them: resize the short side to 32, crop 32.
  write_file(tmp.str(), "odd.yaml",
             "name: odd\nformat: imagefolder\npath: " + tmp.str() +
                 "/odd\nfamily: cifar10\npreprocess: {resize: 32, crop: 32, mean: [0.5], std: [0.25]}\n");
  auto fixed = bb::open_dataset(y);
  CHECK(fixed->image(0).sizes() == torch::IntArrayRef({3, 32, 32}));
  CHECK(fixed->image(1).sizes() == torch::IntArrayRef({3, 32, 32}));
}

TEST_CASE("malformed dataset files are refused naming file:line and the key", "[dataset-yaml]") {
  TempDir tmp;
  const std::string ok = "name: a\nformat: imagefolder\npath: cifar10/jpeg/test\npreprocess: cifar\n";
  auto err = [&](const std::string& text) {
    const std::string y = write_file(tmp.str(), "bad.yaml", text);
    return error_of([&] { bb::open_dataset(y); });
  };
  CHECK(err(ok).empty());
  CHECK_THAT(err(ok + "colour: 3\n"), Catch::Contains("bad.yaml:5") && Catch::Contains("unknown key 'colour'"));
  CHECK_THAT(err("name: a\nformat: imagefolder\npreprocess: cifar\n"),
             Catch::Contains("bad.yaml:1") && Catch::Contains("missing key 'path'"));
  CHECK_THAT(err("name: a\nformat: jpeg\npath: x\npreprocess: cifar\n"),
             Catch::Contains("bad.yaml:2") && Catch::Contains("'format'") && Catch::Contains("'jpeg'"));
  CHECK_THAT(err("name: a\nformat: imagefolder\npath: x\npreprocess: bicubic\n"),
             Catch::Contains("bad.yaml:4") && Catch::Contains("'preprocess'") && Catch::Contains("'bicubic'"));
  CHECK_THAT(err("name: a\nformat: imagefolder\npath: x\nfamily: cifar10\npreprocess:\n  crop: 24\n  mean: [0.5]\n"
                 "  std: [0.5]\n  scale: 2\n"),
             Catch::Contains("bad.yaml:9") && Catch::Contains("unknown key 'scale'"));
  CHECK_THAT(err("name: a\nformat: imagefolder\npath: x\npath: y\npreprocess: cifar\n"),
             Catch::Contains("bad.yaml:4") && Catch::Contains("duplicate key 'path'"));
  CHECK_THAT(err("name: a\nformat: imagefolder\npath: cifar10/jpeg/nowhere\npreprocess: cifar\n"),
             Catch::Contains("bad.yaml:3") && Catch::Contains("nowhere") && Catch::Contains("does not exist"));
  CHECK_THAT(err("name: a\nformat: imagefolder\npath: x\npreprocess: {size: 32, mean: [0.5], std: [0.5]}\n"),
             Catch::Contains("bad.yaml:4") && Catch::Contains("'family'"));
  CHECK_THAT(err(ok + "limit: lots\n"), Catch::Contains("bad.yaml:5") && Catch::Contains("'limit'"));
  CHECK_THAT(err(ok + "subset: {part: some, per_class: 5, seed: 1}\n"),
             Catch::Contains("bad.yaml:5") && Catch::Contains("'part'"));
  CHECK_THAT(err("name: cifar10-jpeg-test\nformat: imagefolder\npath: x\npreprocess: cifar\n"),
             Catch::Contains("bad.yaml:1") && Catch::Contains("registered dataset"));
  CHECK_THAT(err("name: [a\n"), Catch::Contains("bad.yaml:") && Catch::Contains("malformed YAML"));
  CHECK_THAT(err("name: a\nformat: mnist-idx\npath: mnist/t10k-images-idx3-ubyte\npreprocess: mnist\n"),
             Catch::Contains("bad.yaml:1") && Catch::Contains("'labels'"));
  CHECK_THAT(error_of([&] { bb::open_dataset(tmp / "absent.yaml"); }),
             Catch::Contains("absent.yaml") && Catch::Contains("does not exist"));
  CHECK_THAT(error_of([&] { bb::open_dataset("cifar11"); }),
             Catch::Contains("unknown dataset 'cifar11'") && Catch::Contains("dataset YAML"));

  // Every command that takes a dataset exits non-zero with that message.
  const std::string bad = write_file(tmp.str(), "bad.yaml", ok + "colour: 3\n");
  const std::string w = sh_quote(bb::data_root() + "/models/cifar10_resnet20.pt");
  for (const std::string& args :
       {"eval --model cifar_resnet20 --weights " + w + " --dataset " + sh_quote(bad),
        "compress --method uniform --model cifar_resnet20 --weights " + w + " --out " + sh_quote(tmp / "x.bbz") +
            " --eval " + sh_quote(bad) + " --dry-run",
        "compress --method kmeans --model cifar_resnet20 --weights " + w + " --out " + sh_quote(tmp / "x.bbz") +
            " --calib " + sh_quote(bad) + " --dry-run"}) {
    INFO(args);
    Proc p = run_cmd(sh_quote(bitbench_binary()) + " " + args);
    CHECK(p.status != 0);
    CHECK_THAT(p.err, Catch::Contains("bad.yaml:5") && Catch::Contains("unknown key 'colour'"));
  }
  // And an experiment naming it.
  const std::string ex = write_file(tmp.str(), "ex.yaml",
                                    "models: [cifar_resnet20]\neval: [" + bad + "]\nruns:\n  - method: fp16\n");
  CHECK_THAT(error_of([&] { bb::load_experiment(ex, "", tmp.str()); }),
             Catch::Contains("bad.yaml:5") && Catch::Contains("unknown key 'colour'"));
}

TEST_CASE("an experiment and compress take dataset files wherever they take dataset names", "[dataset-yaml]") {
  TempDir tmp;
  const std::string y = write_file(tmp.str(), "mine.yaml",
                                   "name: my-lossless-64\nformat: cifar-binary\npath: cifar10/test_lossless_1k.bin\n"
                                   "preprocess: cifar\nrole: train\nlimit: 64\n");
  const std::string ex = write_file(tmp.str(), "ex.yaml",
                                    "models: [cifar_resnet20]\neval: [" + y + ", cifar10-lossless-1k]\ncalibration: " +
                                        y + "\neval_limit: 64\nruns:\n  - method: fp16\n");
  auto e = bb::load_experiment(ex, "", tmp.str());
  REQUIRE(e.runs.size() == 1);
  CHECK(e.runs[0].eval == std::vector<std::string>{y, "cifar10-lossless-1k"});
  CHECK(e.runs[0].calibration == y);
  Proc p = run_cmd(sh_quote(bitbench_binary()) + " compress --method fp16 --model cifar_resnet20 --weights " +
                   sh_quote(bb::data_root() + "/models/cifar10_resnet20.pt") + " --out " + sh_quote(tmp / "x.bbz") +
                   " --eval " + sh_quote(y) + " --eval cifar10-lossless-1k --limit 64 --json");
  INFO(p.err);
  REQUIRE(p.status == 0);
  auto j = nlohmann::json::parse(p.out);
  // The same 64 images under two names: the same top-1.
  REQUIRE(j["eval"].contains("my-lossless-64"));
  CHECK(j["eval"]["my-lossless-64"]["top1"] == j["eval"]["cifar10-lossless-1k"]["top1"]);
  CHECK(j["eval"]["my-lossless-64"]["n"] == 64);
}

TEST_CASE("scripts/cifar10_pickle_to_bin.py: torchvision's pickles to the binary format", "[dataset-yaml]") {
  BB_REQUIRE_ORACLE("numpy");
  TempDir tmp;
  const std::string bin = bb::data_root() + "/cifar10/test_lossless_1k.bin";
  // A fake cifar-10-batches-py batch holding lossless test images 0..9 (as torchvision's pickles
  // hold them: bytes keys, an N x 3072 uint8 array, a list of labels), and a broken one.
  const std::string make =
      "import pickle, sys, numpy as np\n"
      "raw = open(sys.argv[1], 'rb').read()[:10 * 3073]\n"
      "recs = [raw[i * 3073:(i + 1) * 3073] for i in range(10)]\n"
      "d = {b'batch_label': b'fake', b'labels': [r[0] for r in recs], b'filenames': [b'f'] * 10,\n"
      "     b'data': np.frombuffer(b''.join(r[1:] for r in recs), dtype=np.uint8).reshape(10, 3072)}\n"
      "import os; os.makedirs(sys.argv[2] + '/cifar-10-batches-py', exist_ok=True)\n"
      "pickle.dump(d, open(sys.argv[2] + '/cifar-10-batches-py/test_batch', 'wb'), protocol=2)\n"
      "d[b'labels'][3] = 12\n"
      "pickle.dump(d, open(sys.argv[2] + '/broken_batch', 'wb'), protocol=2)\n";
  write_text(tmp / "make.py", make);
  Proc p = run_cmd(std::string(python()) + " " + sh_quote(tmp / "make.py") + " " + sh_quote(bin) + " " + tmp.str());
  INFO(p.err);
  REQUIRE(p.status == 0);
  p = run_python("scripts/cifar10_pickle_to_bin.py",
                 sh_quote(tmp / "cifar-10-batches-py") + " --out-dir " + sh_quote(tmp / "bin"));
  INFO(p.err);
  REQUIRE(p.status == 0);
  // Byte for byte the official records.
  CHECK(slurp(tmp / "bin/test_batch.bin") == slurp(bin).substr(0, 10 * 3073));
  const std::string y = write_file(tmp.str(), "conv.yaml",
                                   "name: converted\nformat: cifar-binary\npath: " + tmp.str() +
                                       "/bin/test_batch.bin\npreprocess: cifar\n");
  auto mine = bb::open_dataset(y);
  REQUIRE(mine->size() == 10);
  expect_same_images(*mine, range(0, 10), *bb::open_dataset("cifar10-lossless-1k"), range(0, 10));
  p = run_python("scripts/cifar10_pickle_to_bin.py", sh_quote(tmp / "broken_batch") + " --out " + sh_quote(tmp / "b.bin"));
  CHECK(p.status != 0);
  CHECK_THAT(p.err, Catch::Contains("label 3 is 12"));
}

TEST_CASE("the example dataset files in docs/examples are well formed", "[dataset-yaml]") {
  int n = 0;
  for (auto& e : fs::directory_iterator(source_path("docs/examples"))) {
    const std::string f = e.path().filename().string();
    if (f.rfind("dataset-", 0) != 0 || e.path().extension() != ".yaml") continue;
    INFO(f);
    CHECK_NOTHROW(bb::load_dataset_spec(e.path().string()));
    ++n;
  }
  CHECK(n >= 3);
  // The one the docs run: the JPEG test folder under another name.
  auto mine = bb::open_dataset(source_path("docs/examples/dataset-cifar10-jpeg-test-copy.yaml"));
  auto test = bb::open_dataset("cifar10-jpeg-test");
  REQUIRE(mine->size() == test->size());
  CHECK(listing_hash(*mine) == listing_hash(*test));
}
