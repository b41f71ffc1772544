// [data]: decoding and preprocessing against torchvision + PIL (the /usr/bin/python3 oracle), the
// two ImageNet validation-folder layouts, and the parallel batch loader.
#include <catch2/catch.hpp>

#include "common/error.h"
#include "common/runtime.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/memo_dataset.h"
#include "data/transforms.h"
#include "models/weights_io.h"
#include "test_data_helpers.h"

#include <opencv2/imgcodecs.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <thread>

using namespace bbtest;

namespace {

// Max/mean absolute difference, in plain loops: tiny libtorch ops would wake OpenMP threads
// that then spin, and on a loaded 2-core machine that spinning costs more than the comparison.
struct DiffStats {
  double max_abs = 0, sum_abs = 0;
  int64_t count = 0;
  void add(const torch::Tensor& a_, const torch::Tensor& b_) {
    REQUIRE(a_.sizes() == b_.sizes());
    torch::Tensor a = a_.contiguous(), b = b_.contiguous();
    if (a.scalar_type() == torch::kUInt8) {
      a = a.to(torch::kFloat32);
      b = b.to(torch::kFloat32);
    }
    REQUIRE(a.scalar_type() == torch::kFloat32);
    REQUIRE(b.scalar_type() == torch::kFloat32);
    const float* pa = a.data_ptr<float>();
    const float* pb = b.data_ptr<float>();
    for (int64_t i = 0, n = a.numel(); i < n; ++i) {
      const double d = std::fabs((double)pa[i] - (double)pb[i]);
      max_abs = std::max(max_abs, d);
      sum_abs += d;
    }
    count += a.numel();
  }
  double mean_abs() const { return count ? sum_abs / count : 0; }
};

std::string list_paths(const bb::Dataset& ds, const std::vector<int64_t>& idx, const TempDir& tmp) {
  std::string text;
  for (int64_t i : idx) text += ds.image_path(i) + "\n";
  write_text(tmp / "list.txt", text);
  return tmp / "list.txt";
}

// Compares bitbench's decode + preprocessing of images `idx` of `ds` with the oracle's
// PIL decode + torchvision transform; returns (decode stats, tensor stats).
std::pair<DiffStats, DiffStats> compare_with_pil(const bb::Dataset& ds, const std::vector<int64_t>& idx,
                                                 const std::string& kind, std::vector<double>* per_image_max) {
  TempDir tmp;
  const std::string list = list_paths(ds, idx, tmp);
  Proc p = run_python("scripts/oracle/preprocess.py",
                      kind + " --list " + sh_quote(list) + " --out " + sh_quote(tmp / "ref.pt"));
  INFO(p.err);
  REQUIRE(p.status == 0);
  bb::StateDict ref = bb::read_state_dict(tmp / "ref.pt");
  DiffStats dec, ten;
  for (size_t j = 0; j < idx.size(); ++j) {
    const std::string key = std::to_string(j);
    INFO("image " << ds.image_path(idx[j]));
    REQUIRE(ref.count(key + ".rgb"));
    cv::Mat rgb = bb::decode_image_rgb(ds.image_path(idx[j]));
    torch::Tensor mine = torch::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, torch::kUInt8).clone();
    const torch::Tensor& pil = ref[key + ".rgb"];
    REQUIRE(pil.sizes() == mine.sizes());
    dec.add(mine, pil);
    torch::Tensor t = ds.image(idx[j]);
    const torch::Tensor& tv = ref[key + ".tensor"];
    REQUIRE(t.sizes() == tv.sizes());
    DiffStats one;
    one.add(t, tv);
    ten.add(t, tv);
    if (per_image_max) per_image_max->push_back(one.max_abs);
  }
  return {dec, ten};
}

struct EnvGuard {
  std::string name;
  EnvGuard(const std::string& n, const std::string& value) : name(n) { setenv(n.c_str(), value.c_str(), 1); }
  ~EnvGuard() { unsetenv(name.c_str()); }
};

}  // namespace

TEST_CASE("ImageNet preprocessing equals torchvision Resize(256)+CenterCrop(224) on imagenet-sample", "[data]") {
  BB_REQUIRE_ORACLE("torch, torchvision, PIL");
  auto ds = bb::open_dataset("imagenet-sample");
  REQUIRE(ds->size() == 100);
  std::vector<int64_t> idx(ds->size());
  for (int64_t i = 0; i < ds->size(); ++i) idx[i] = i;
  std::vector<double> per_image;
  auto [dec, ten] = compare_with_pil(*ds, idx, "imagenet", &per_image);
  // The images that exercise the odd paths: greyscale, and short side < 224 (upscaling).
  double odd_max = 0;
  int odd = 0;
  for (size_t j = 0; j < idx.size(); ++j) {
    cv::Mat m = cv::imread(ds->image_path(idx[j]), cv::IMREAD_UNCHANGED);
    if (m.channels() == 1 || std::min(m.rows, m.cols) < 224) {
      ++odd;
      odd_max = std::max(odd_max, per_image[j]);
    }
  }
  std::printf("[data] imagenet-sample, 100 images: decode (OpenCV vs PIL convert('RGB')) max |diff| %g, mean %g; "
              "normalised 3x224x224 tensors vs torchvision max |diff| %g, mean %g; the %d greyscale/small "
              "images max |diff| %g\n",
              dec.max_abs, dec.mean_abs(), ten.max_abs, ten.mean_abs(), odd, odd_max);
  CHECK(odd == 9);  // 1 greyscale + 8 with a short side below 224
  CHECK(dec.max_abs == 0);
  CHECK(ten.max_abs <= 1e-6);
}

TEST_CASE("CIFAR-10 JPEG decode and normalisation equal PIL + torchvision", "[data]") {
  BB_REQUIRE_ORACLE("torch, torchvision, PIL");
  auto ds = bb::open_dataset("cifar10-jpeg-test");
  REQUIRE(ds->size() == 10000);
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < ds->size(); i += 10) idx.push_back(i);  // 100 of every class
  auto [dec, ten] = compare_with_pil(*ds, idx, "cifar", nullptr);
  std::printf("[data] cifar10-jpeg-test, %zu images: decode max |diff| %g, mean %g; tensors max |diff| %g, mean %g\n",
              idx.size(), dec.max_abs, dec.mean_abs(), ten.max_abs, ten.mean_abs());
  CHECK(dec.max_abs == 0);
  CHECK(ten.max_abs <= 1e-6);
}

TEST_CASE("MNIST 28->32 resize equals torchvision Resize((32, 32)) on PIL 'L' images", "[data]") {
  BB_REQUIRE_ORACLE("torch, torchvision, PIL");
  auto ds = bb::open_dataset("mnist-test");
  REQUIRE(ds->size() == 10000);
  TempDir tmp;
  const std::string images = bb::data_root() + "/mnist/t10k-images-idx3-ubyte";
  Proc p = run_python("scripts/oracle/preprocess.py",
                      "mnist --images " + sh_quote(images) + " --out " + sh_quote(tmp / "ref.pt"));
  INFO(p.err);
  REQUIRE(p.status == 0);
  bb::StateDict ref = bb::read_state_dict(tmp / "ref.pt");
  REQUIRE(ref.size() == 10000);
  DiffStats st;
  for (int64_t i = 0; i < ds->size(); ++i) {
    torch::Tensor t = ds->image(i);
    const torch::Tensor& tv = ref[std::to_string(i) + ".tensor"];
    REQUIRE(t.sizes() == tv.sizes());
    st.add(t, tv);
  }
  std::printf("[data] mnist-test, 10000 images 1x32x32: max |diff| %g, mean %g\n", st.max_abs, st.mean_abs());
  CHECK(st.max_abs <= 1e-6);
}

TEST_CASE("pil_resize_bilinear_roi equals the crop of the full resize", "[data]") {
  cv::Mat img(37, 53, CV_8UC3);
  cv::randu(img, 0, 256);
  for (auto [w, h] : std::vector<std::pair<int, int>>{{80, 40}, {20, 90}, {53, 12}, {11, 37}, {53, 37}}) {
    cv::Mat full = bb::pil_resize_bilinear(img, w, h);
    REQUIRE(full.cols == w);
    REQUIRE(full.rows == h);
    cv::Rect roi(w / 4, h / 3, w / 2, h / 2);
    cv::Mat part = bb::pil_resize_bilinear_roi(img, w, h, roi);
    CHECK(cv::norm(part, full(roi), cv::NORM_INF) == 0);
  }
  CHECK_THROWS_AS(bb::pil_resize_bilinear_roi(img, 10, 10, cv::Rect(5, 5, 6, 2)), bb::Error);
}

TEST_CASE("torchvision resize and crop geometry", "[data]") {
  int w, h;
  bb::resized_size(500, 375, 256, &w, &h);
  CHECK((w == 341 && h == 256));
  bb::resized_size(106, 150, 256, &w, &h);
  CHECK((w == 256 && h == 362));
  // round((341 - 224) / 2) = round(58.5) = 58 (half to even); round((362 - 224) / 2) = 69.
  CHECK(bb::center_crop_rect(341, 256, 224) == cv::Rect(58, 16, 224, 224));
  CHECK(bb::center_crop_rect(256, 362, 224) == cv::Rect(16, 69, 224, 224));
  CHECK(bb::center_crop_rect(256, 283, 224) == cv::Rect(16, 30, 224, 224));  // round(29.5) = 30
}

// ---- ImageNet validation folder layouts, built from imagenet-sample images in a temp dir ----

namespace {

struct SampleImage {
  int64_t index;  // in imagenet-sample
  std::string path, wnid;
  int64_t label;
};

std::vector<SampleImage> pick_samples(const bb::Dataset& ds, int n) {
  std::vector<SampleImage> out;
  for (int64_t i = 0; i < ds.size() && (int)out.size() < n; i += 8) {
    std::string path = ds.image_path(i);
    out.push_back({i, path, fs::path(path).parent_path().filename().string(), ds.label(i)});
  }
  return out;
}

std::string val_name(size_t k) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "ILSVRC2012_val_%08zu.JPEG", k + 1);
  return buf;
}

// A flat folder ILSVRC2012_val_00000001.JPEG... holding the samples in order.
void make_flat(const std::vector<SampleImage>& s, const fs::path& root) {
  fs::create_directories(root);
  for (size_t k = 0; k < s.size(); ++k) fs::copy_file(s[k].path, root / val_name(k));
}

void expect_same(const bb::Dataset& sample, const bb::Dataset& val, const std::vector<SampleImage>& s) {
  REQUIRE(val.size() == (int64_t)s.size());
  CHECK(val.num_classes() == 1000);
  CHECK(val.family() == "imagenet");
  for (size_t k = 0; k < s.size(); ++k) {
    INFO("image " << k << " " << val.image_path(k));
    CHECK(val.label(k) == s[k].label);
    CHECK(torch::equal(val.image(k), sample.image(s[k].index)));
  }
}

}  // namespace

TEST_CASE("imagenet-val: class-subfolder layout", "[data]") {
  auto sample = bb::open_dataset("imagenet-sample");
  auto s = pick_samples(*sample, 12);
  TempDir tmp;
  for (auto& x : s) {
    fs::create_directories(tmp.path / "val" / x.wnid);
    fs::copy_file(x.path, tmp.path / "val" / x.wnid / fs::path(x.path).filename());
  }
  auto val = bb::open_dataset("imagenet-val", tmp / "val");
  expect_same(*sample, *val, s);  // folders sorted = wnid order, so the order matches
}

TEST_CASE("imagenet-val: flat folder with a label file (wnids or class indices)", "[data]") {
  auto sample = bb::open_dataset("imagenet-sample");
  auto s = pick_samples(*sample, 12);
  TempDir tmp;
  make_flat(s, tmp.path / "val");
  std::string by_wnid, by_index;
  for (size_t k = 0; k < s.size(); ++k) {
    by_wnid += val_name(k) + " " + s[k].wnid + "\n";
    by_index += val_name(k) + "\t" + std::to_string(s[k].label) + "\n";
  }
  SECTION("val_labels.txt inside the folder, wnid labels") {
    write_text(tmp / "val/val_labels.txt", by_wnid);
    expect_same(*sample, *bb::open_dataset("imagenet-val", tmp / "val"), s);
  }
  SECTION("BITBENCH_IMAGENET_LABELS, class-index labels") {
    write_text(tmp / "labels.txt", by_index);
    EnvGuard g("BITBENCH_IMAGENET_LABELS", tmp / "labels.txt");
    expect_same(*sample, *bb::open_dataset("imagenet-val", tmp / "val"), s);
  }
  SECTION("BITBENCH_IMAGENET_VAL names the folder") {
    write_text(tmp / "val/val_labels.txt", by_wnid);
    EnvGuard g("BITBENCH_IMAGENET_VAL", tmp / "val");
    expect_same(*sample, *bb::open_dataset("imagenet-val"), s);
  }
  SECTION("errors name the line and the file") {
    auto open_with = [&](const std::string& labels) {
      write_text(tmp / "val/val_labels.txt", labels);
      try {
        bb::open_dataset("imagenet-val", tmp / "val");
      } catch (const bb::Error& e) {
        return std::string(e.what());
      }
      return std::string("no error");
    };
    CHECK_THAT(open_with(val_name(0) + " n01440764\nmissing.JPEG n01440764\n"),
               Catch::Contains("missing.JPEG") && Catch::Contains(":2:"));
    CHECK_THAT(open_with(val_name(0) + " n99999999\n"), Catch::Contains("n99999999"));
    CHECK_THAT(open_with(val_name(0) + " 1000\n"), Catch::Contains("'1000'"));
    CHECK_THAT(open_with("65\n970\n"), Catch::Contains("devkit_to_labels.py"));
    CHECK_THAT(open_with(""), Catch::Contains("lists no images"));
  }
}

TEST_CASE("imagenet-val: devkit ground truth converted by scripts/devkit_to_labels.py", "[data]") {
  BB_REQUIRE_ORACLE("scipy.io, numpy");
  auto sample = bb::open_dataset("imagenet-sample");
  auto s = pick_samples(*sample, 12);
  TempDir tmp;
  make_flat(s, tmp.path / "val");
  const std::string synsets = bb::data_root() + "/imagenet-sample/synsets.tsv";
  Proc p = run_python("scripts/oracle/make_devkit_meta.py", "--synsets " + sh_quote(synsets) + " --out " +
                                                                 sh_quote(tmp / "meta.mat") + " --ids " +
                                                                 sh_quote(tmp / "ids.txt") + " --seed 3");
  INFO(p.err);
  REQUIRE(p.status == 0);
  // The synthetic devkit numbers classes in a shuffled order, as the real one does.
  std::map<std::string, std::string> id_of;
  {
    std::istringstream in(slurp(tmp / "ids.txt"));
    std::string id, wnid;
    while (in >> id >> wnid) id_of[wnid] = id;
  }
  REQUIRE(id_of.size() == 1000);
  std::string gt;
  for (auto& x : s) gt += id_of[x.wnid] + "\n";
  write_text(tmp / "ILSVRC2012_validation_ground_truth.txt", gt);
  p = run_python("scripts/devkit_to_labels.py",
                 "--meta " + sh_quote(tmp / "meta.mat") + " --ground-truth " +
                     sh_quote(tmp / "ILSVRC2012_validation_ground_truth.txt") + " --out " +
                     sh_quote(tmp / "val/val_labels.txt") + " --synsets " + sh_quote(tmp / "synsets.tsv") +
                     " --val-dir " + sh_quote(tmp / "val"));
  INFO(p.err);
  REQUIRE(p.status == 0);
  // The class list it writes is torchvision's order, usable as BITBENCH_IMAGENET_SYNSETS.
  EnvGuard g("BITBENCH_IMAGENET_SYNSETS", tmp / "synsets.tsv");
  expect_same(*sample, *bb::open_dataset("imagenet-val", tmp / "val"), s);

  SECTION("the raw ground-truth file is refused with a pointer to the converter") {
    EnvGuard l("BITBENCH_IMAGENET_LABELS", tmp / "ILSVRC2012_validation_ground_truth.txt");
    CHECK_THROWS_WITH(bb::open_dataset("imagenet-val", tmp / "val"), Catch::Contains("devkit_to_labels.py"));
  }
}

TEST_CASE("imagenet-val: missing folder, missing labels, bad class list", "[data]") {
  TempDir tmp;
  CHECK_THROWS_WITH(bb::open_dataset("imagenet-val", tmp / "nope"), Catch::Contains("does not exist"));
  fs::create_directories(tmp.path / "empty");
  CHECK_THROWS_WITH(bb::open_dataset("imagenet-val", tmp / "empty"),
                    Catch::Contains("BITBENCH_IMAGENET_LABELS"));
  // Class list in the wrong order: every label would silently be wrong, so it is refused.
  std::string text;
  for (int i = 0; i < 1000; ++i) text += std::to_string(i) + "\tn" + std::to_string(99999999 - i) + "\tx\n";
  write_text(tmp / "syn.tsv", text);
  EnvGuard g("BITBENCH_IMAGENET_SYNSETS", tmp / "syn.tsv");
  CHECK_THROWS_WITH(bb::open_dataset("imagenet-val", tmp / "empty"), Catch::Contains("sorted-wnid order"));
}

// ---- the parallel loader ----

namespace {

// Image i is a 1x2x2 tensor filled with i; records how many images each thread decoded and how
// many were decoded so far, can throw at one index, and can take `delay` to decode.
class FakeDataset : public bb::Dataset {
 public:
  explicit FakeDataset(int64_t n, int64_t throw_at = -1, std::chrono::microseconds delay = {})
      : n_(n), throw_at_(throw_at), delay_(delay) {
    name_ = "fake";
    family_ = "cifar10";
  }
  int64_t size() const override { return n_; }
  int64_t label(int64_t i) const override { return i % 10; }
  torch::Tensor image(int64_t i, bool, uint64_t) const override {
    if (i == throw_at_) BB_THROW("cannot decode fake image ", i);
    if (delay_.count()) std::this_thread::sleep_for(delay_);
    {
      std::lock_guard<std::mutex> lk(mu);
      ++threads[std::this_thread::get_id()];
    }
    decoded.fetch_add(1);
    return torch::full({1, 2, 2}, (float)i);
  }
  std::string identity() const override { return "fake"; }

  mutable std::mutex mu;
  mutable std::map<std::thread::id, int64_t> threads;  // images decoded per thread
  mutable std::atomic<int64_t> decoded{0};

 private:
  int64_t n_, throw_at_;
  std::chrono::microseconds delay_;
};

}  // namespace

TEST_CASE("for_each_batch: order, content, decode on worker threads, bounded read-ahead", "[data]") {
  FakeDataset ds(1000);
  std::vector<int64_t> idx;
  for (int64_t i = 999; i >= 0; i -= 3) idx.push_back(i);  // any order, not just 0..n-1
  bb::LoaderOptions opt;
  opt.batch_size = 7;
  opt.workers = 3;
  opt.prefetch = 2;
  const int64_t window = std::max<int64_t>(opt.prefetch, opt.workers);
  int64_t b = 0, seen = 0, max_ahead = 0;
  bb::for_each_batch(ds, idx, opt, [&](const bb::Batch& batch) {
    const int64_t n = batch.images.size(0);
    REQUIRE(batch.labels.size(0) == n);
    REQUIRE((int64_t)batch.indices.size() == n);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t want = idx[seen + j];
      REQUIRE(batch.indices[j] == want);
      REQUIRE(batch.images[j].min().item<float>() == (float)want);
      REQUIRE(batch.labels[j].item<int64_t>() == want % 10);
    }
    // Never more than `window` batches beyond the one being consumed: memory stays bounded.
    const int64_t ahead = ds.decoded.load() - (seen + n);
    max_ahead = std::max(max_ahead, ahead);
    CHECK(ahead <= window * opt.batch_size);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a slow consumer: workers run ahead
    seen += n;
    ++b;
  });
  CHECK(seen == (int64_t)idx.size());
  CHECK(b == ((int64_t)idx.size() + 6) / 7);
  // Workers do the decoding; the consumer only helps while it waits (at the start), so with a
  // slow consumer it decodes a small share.
  const int64_t on_consumer = ds.threads.count(std::this_thread::get_id()) ? ds.threads[std::this_thread::get_id()] : 0;
  CHECK(on_consumer < (int64_t)idx.size() / 4);
  CHECK(ds.threads.size() - (on_consumer > 0) >= 2);
  CHECK(max_ahead > 0);  // decoding did run ahead of the consumer
}

TEST_CASE("for_each_batch: a waiting consumer decodes its own batch's images", "[data]") {
  // Decoding is the bottleneck (1 ms per image, one worker, an instant consumer): the consumer
  // thread claims images of the batch it waits for instead of idling, and order stays right.
  FakeDataset ds(120, -1, std::chrono::microseconds(1000));
  std::vector<int64_t> idx(120);
  for (int64_t i = 0; i < 120; ++i) idx[i] = i;
  bb::LoaderOptions opt;
  opt.batch_size = 10;
  opt.workers = 1;
  int64_t seen = 0;
  bb::for_each_batch(ds, idx, opt, [&](const bb::Batch& batch) {
    for (int64_t j = 0; j < batch.images.size(0); ++j) {
      REQUIRE(batch.indices[j] == seen + j);
      REQUIRE(batch.images[j].max().item<float>() == (float)(seen + j));
    }
    seen += batch.images.size(0);
  });
  CHECK(seen == 120);
  CHECK(ds.decoded.load() == 120);
  REQUIRE(ds.threads.count(std::this_thread::get_id()) == 1);
  const int64_t on_consumer = ds.threads[std::this_thread::get_id()];
  CHECK(on_consumer > 0);
  CHECK(on_consumer < 120);  // the worker decoded the rest
}

TEST_CASE("for_each_batch: errors from decoding or the consumer propagate, no hang", "[data]") {
  std::vector<int64_t> idx(500);
  for (int64_t i = 0; i < 500; ++i) idx[i] = i;
  bb::LoaderOptions opt;
  opt.batch_size = 10;
  opt.workers = 2;
  {
    FakeDataset ds(500, 321);
    int64_t consumed = 0;
    CHECK_THROWS_WITH(bb::for_each_batch(ds, idx, opt, [&](const bb::Batch& b) { consumed += b.images.size(0); }),
                      Catch::Contains("fake image 321"));
    CHECK(consumed <= 320);
  }
  {
    FakeDataset ds(500);
    int calls = 0;
    CHECK_THROWS_WITH(bb::for_each_batch(ds, idx, opt,
                                         [&](const bb::Batch&) {
                                           if (++calls == 3) BB_THROW("consumer failed");
                                         }),
                      Catch::Contains("consumer failed"));
    CHECK(calls == 3);
  }
  {
    FakeDataset ds(5);
    int calls = 0;
    bb::for_each_batch(ds, {}, opt, [&](const bb::Batch&) { ++calls; });
    CHECK(calls == 0);
  }
}

TEST_CASE("memoized datasets give the decoded images exactly, and share one object per name", "[data]") {
  auto base = bb::open_dataset("cifar10-jpeg-test");
  auto memo = bb::open_dataset_memoized("cifar10-jpeg-test");
  REQUIRE(memo == bb::open_dataset_memoized("cifar10-jpeg-test"));
  REQUIRE(memo->size() == base->size());
  REQUIRE(memo->identity() == base->identity());
  for (int64_t i : {0, 1, 4999, 9999}) {
    // An augmented image first: it must pass through without taking the slot of the plain one.
    REQUIRE(torch::equal(memo->image(i, true, 7), base->image(i, true, 7)));
    auto first = memo->image(i);   // decoded and kept
    auto again = memo->image(i);   // from the memo: the very same storage
    auto truth = base->image(i);
    REQUIRE(torch::equal(first, truth));
    REQUIRE(again.data_ptr() == first.data_ptr());
    REQUIRE(memo->label(i) == base->label(i));
  }
  // A batch through the threaded loader equals the plain one.
  std::vector<int64_t> idx = {3, 1, 4, 1, 5, 9, 2, 6};
  auto via_memo = bb::load_batch(*memo, idx);
  auto plain = bb::load_batch(*base, idx);
  REQUIRE(torch::equal(via_memo.images, plain.images));
}

TEST_CASE("cifar10-jpeg-val: a fixed 500-per-class hold-out, disjoint from cifar10-jpeg-train", "[data]") {
  auto train = bb::open_dataset("cifar10-jpeg-train");
  auto val = bb::open_dataset("cifar10-jpeg-val");
  REQUIRE(val->size() == 5000);
  REQUIRE(train->size() == 45000);
  std::map<int64_t, int> per_class;
  std::set<std::string> val_files;
  for (int64_t i = 0; i < val->size(); ++i) {
    per_class[val->label(i)]++;
    val_files.insert(val->image_path(i));
  }
  REQUIRE(per_class.size() == 10);
  for (auto& kv : per_class) CHECK(kv.second == 500);
  REQUIRE(val_files.size() == 5000);
  std::set<std::string> all = val_files;
  for (int64_t i = 0; i < train->size(); ++i) {
    INFO(train->image_path(i));
    REQUIRE(val_files.count(train->image_path(i)) == 0);  // no training image is a validation image
    all.insert(train->image_path(i));
  }
  CHECK(all.size() == 50000);  // together they are the whole folder
  // The pick is not the first 500 files of each class (a seeded shuffle of the sorted names), and
  // it is the same on every open.
  auto again = bb::open_dataset("cifar10-jpeg-val");
  for (int64_t i = 0; i < val->size(); i += 97) CHECK(again->image_path(i) == val->image_path(i));
  CHECK(val->image_path(0) != bb::open_dataset("cifar10-jpeg-test")->image_path(0));
  CHECK(train->identity() != val->identity());
}
