// The dataset implementations and the name -> dataset table.
#include "common/error.h"
#include "common/fs_util.h"
#include "common/runtime.h"
#include "data/dataset.h"
#include "data/transforms.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

namespace fs = std::filesystem;

namespace bb {
namespace {

// CIFAR training augmentation: 4-pixel zero padding (black, before normalisation, as
// torchvision's RandomCrop on a PIL image) + random 32x32 crop + horizontal flip.
cv::Mat cifar_augment(const cv::Mat& rgb, uint64_t seed, int64_t index) {
  std::mt19937_64 rng(mix_seed(seed, (uint64_t)index));
  cv::Mat padded;
  cv::copyMakeBorder(rgb, padded, 4, 4, 4, 4, cv::BORDER_CONSTANT, cv::Scalar(0, 0, 0));
  int dx = (int)(rng() % 9), dy = (int)(rng() % 9);
  cv::Mat out = padded(cv::Rect(dx, dy, rgb.cols, rgb.rows)).clone();
  if (rng() & 1) cv::flip(out, out, 1);
  return out;
}

cv::Mat maybe_flip(const cv::Mat& img, uint64_t seed, int64_t index) {
  std::mt19937_64 rng(mix_seed(seed, (uint64_t)index));
  if (rng() & 1) {
    cv::Mat out;
    cv::flip(img, out, 1);
    return out;
  }
  return img;
}

// The official CIFAR-10 binary format: records of 1 label byte + 3072 bytes (R, G, B planes).
class CifarBinary : public Dataset {
 public:
  CifarBinary(const std::string& name, const std::string& path) : path_(path) {
    name_ = name;
    family_ = "cifar10";
    bytes_ = read_file_bytes(path);
    BB_CHECK(!bytes_.empty() && bytes_.size() % 3073 == 0, "'", path,
             "' is not a CIFAR-10 binary file (size ", bytes_.size(), " is not a multiple of 3073)");
    n_ = (int64_t)bytes_.size() / 3073;
  }
  int64_t size() const override { return n_; }
  int64_t label(int64_t i) const override { return bytes_[(size_t)i * 3073]; }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    const uint8_t* rec = &bytes_[(size_t)i * 3073 + 1];
    cv::Mat rgb(32, 32, CV_8UC3);
    for (int p = 0; p < 1024; ++p)
      for (int c = 0; c < 3; ++c) rgb.data[p * 3 + c] = rec[c * 1024 + p];
    if (augment) rgb = cifar_augment(rgb, seed, i);
    return preprocess_rgb(rgb, Preprocess::cifar());
  }
  std::string identity() const override { return name_ + ":" + std::to_string(n_); }

 private:
  std::string path_;
  std::vector<unsigned char> bytes_;
  int64_t n_;
};

// root/<class>/<image>, decoded with OpenCV. Class index: position of the folder name in
// `classes` (ImageNet: synsets.tsv order = sorted wnids, the torchvision order), else sorted
// folder names. A folder absent from `classes` is an error.
class ImageFolder : public Dataset {
 public:
  ImageFolder(const std::string& name, const std::string& family, const std::string& root,
              Preprocess pre, std::vector<std::string> classes)
      : root_(root), pre_(std::move(pre)) {
    name_ = name;
    family_ = family;
    BB_CHECK(fs::is_directory(root), "dataset '", name, "': folder '", root, "' does not exist");
    std::vector<std::string> dirs;
    for (auto& e : fs::directory_iterator(root))
      if (e.is_directory()) dirs.push_back(e.path().filename().string());
    std::sort(dirs.begin(), dirs.end());
    if (classes.empty()) classes = dirs;
    std::map<std::string, int64_t> index;
    for (size_t i = 0; i < classes.size(); ++i) index[classes[i]] = (int64_t)i;
    num_classes_ = (int64_t)classes.size();
    for (auto& d : dirs) {
      auto it = index.find(d);
      BB_CHECK(it != index.end(), "dataset '", name, "': class folder '", d, "' under '", root,
               "' is not a known class name");
      std::vector<std::string> files;
      for (auto& e : fs::directory_iterator(fs::path(root) / d)) {
        if (!e.is_regular_file()) continue;
        std::string ext = e.path().extension().string();
        std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
        if (ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".bmp")
          files.push_back(e.path().filename().string());
      }
      std::sort(files.begin(), files.end());
      for (auto& f : files) {
        files_.push_back(d + "/" + f);
        labels_.push_back(it->second);
      }
    }
    BB_CHECK(!files_.empty(), "dataset '", name, "': no images found under '", root, "'");
  }
  // Flat folder with an explicit (file, label) list.
  ImageFolder(const std::string& name, const std::string& family, const std::string& root, Preprocess pre,
              std::vector<std::string> files, std::vector<int64_t> labels, int64_t num_classes)
      : root_(root), pre_(std::move(pre)), files_(std::move(files)), labels_(std::move(labels)) {
    name_ = name;
    family_ = family;
    num_classes_ = num_classes;
  }
  int64_t size() const override { return (int64_t)files_.size(); }
  int64_t label(int64_t i) const override { return labels_[i]; }
  const std::string& file(int64_t i) const { return files_[i]; }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    const std::string path = (fs::path(root_) / files_[i]).string();
    cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
    BB_CHECK(!bgr.empty(), "cannot decode image '", path, "'");
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    if (augment) rgb = family_ == "cifar10" ? cifar_augment(rgb, seed, i) : maybe_flip(rgb, seed, i);
    return preprocess_rgb(rgb, pre_);
  }
  std::string identity() const override {
    return name_ + ":" + root_ + ":" + std::to_string(files_.size());
  }

 private:
  std::string root_;
  Preprocess pre_;
  std::vector<std::string> files_;
  std::vector<int64_t> labels_;
};

uint32_t be32(const std::vector<unsigned char>& b, size_t off) {
  return (uint32_t)b[off] << 24 | (uint32_t)b[off + 1] << 16 | (uint32_t)b[off + 2] << 8 | b[off + 3];
}

// MNIST IDX files (uncompressed); 28x28 resized to 32x32 bilinear, [0,1], no normalisation.
class MnistIdx : public Dataset {
 public:
  MnistIdx(const std::string& name, const std::string& images, const std::string& labels) {
    name_ = name;
    family_ = "mnist";
    img_ = read_file_bytes(images);
    lab_ = read_file_bytes(labels);
    BB_CHECK(img_.size() >= 16 && be32(img_, 0) == 2051, "'", images, "' is not an IDX image file");
    BB_CHECK(lab_.size() >= 8 && be32(lab_, 0) == 2049, "'", labels, "' is not an IDX label file");
    n_ = be32(img_, 4);
    rows_ = be32(img_, 8);
    cols_ = be32(img_, 12);
    BB_CHECK(be32(lab_, 4) == (uint32_t)n_, "MNIST image/label counts differ");
    BB_CHECK(img_.size() == 16 + (size_t)n_ * rows_ * cols_ && lab_.size() == 8 + (size_t)n_,
             "MNIST files are truncated");
  }
  int64_t size() const override { return n_; }
  int64_t label(int64_t i) const override { return lab_[8 + i]; }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    cv::Mat m(rows_, cols_, CV_8UC1, const_cast<unsigned char*>(&img_[16 + (size_t)i * rows_ * cols_]));
    return preprocess_rgb(m, Preprocess::mnist());
  }
  std::string identity() const override { return name_ + ":" + std::to_string(n_); }

 private:
  std::vector<unsigned char> img_, lab_;
  int64_t n_, rows_, cols_;
};

// synsets.tsv: "index<TAB>wnid<TAB>name" for all 1000 classes in torchvision order.
std::vector<std::string> read_synsets(const std::string& path) {
  std::ifstream f(path);
  BB_CHECK(f.good(), "cannot read ImageNet class list '", path, "'");
  std::vector<std::string> wnids;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ls(line);
    std::string idx, wnid;
    if (!(ls >> idx >> wnid)) continue;
    wnids.push_back(wnid);
  }
  BB_CHECK(wnids.size() == 1000, "'", path, "' lists ", wnids.size(), " classes, expected 1000");
  return wnids;
}

std::string imagenet_synsets_path(const std::string& root_override) {
  if (const char* e = std::getenv("BITBENCH_IMAGENET_SYNSETS"); e && *e) return e;
  return data_root() + "/imagenet-sample/synsets.tsv";
}

// A flat validation folder plus a label file: lines "<file> <label>" where label is a class
// index (torchvision order, e.g. Caffe's val.txt) or a wnid.
std::shared_ptr<Dataset> open_flat_imagenet(const std::string& root, const std::string& label_file,
                                            const std::vector<std::string>& wnids) {
  std::map<std::string, int64_t> index;
  for (size_t i = 0; i < wnids.size(); ++i) index[wnids[i]] = (int64_t)i;
  std::ifstream f(label_file);
  BB_CHECK(f.good(), "cannot read ImageNet label file '", label_file, "'");
  std::vector<std::string> files;
  std::vector<int64_t> labels;
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    std::istringstream ls(line);
    std::string file, lab;
    if (!(ls >> file)) continue;
    BB_CHECK((bool)(ls >> lab), label_file, ":", lineno, ": expected '<file> <label>'");
    int64_t y;
    if (index.count(lab)) {
      y = index[lab];
    } else {
      char* end = nullptr;
      y = std::strtoll(lab.c_str(), &end, 10);
      BB_CHECK(end && *end == 0 && y >= 0 && y < 1000, label_file, ":", lineno, ": label '", lab,
               "' is neither a class index 0..999 nor a known wnid");
    }
    BB_CHECK(fs::exists(fs::path(root) / file), label_file, ":", lineno, ": image '", file,
             "' not found under '", root, "'");
    files.push_back(file);
    labels.push_back(y);
  }
  BB_CHECK(!files.empty(), "ImageNet label file '", label_file, "' lists no images");
  return std::make_shared<ImageFolder>("imagenet-val", "imagenet", root, Preprocess::imagenet(), files,
                                       labels, 1000);
}

struct Entry {
  std::string family;
  std::function<std::shared_ptr<Dataset>(const std::string& root_override)> open;
};

const std::map<std::string, Entry>& table() {
  static const std::map<std::string, Entry> t = {
      {"cifar10-lossless-1k",
       {"cifar10",
        [](const std::string& r) {
          return std::make_shared<CifarBinary>("cifar10-lossless-1k",
                                               data_root(r) + "/cifar10/test_lossless_1k.bin");
        }}},
      {"cifar10-jpeg-train",
       {"cifar10",
        [](const std::string& r) {
          return std::make_shared<ImageFolder>("cifar10-jpeg-train", "cifar10", data_root(r) + "/cifar10/jpeg/train",
                                               Preprocess::cifar(), std::vector<std::string>{});
        }}},
      {"cifar10-jpeg-test",
       {"cifar10",
        [](const std::string& r) {
          return std::make_shared<ImageFolder>("cifar10-jpeg-test", "cifar10", data_root(r) + "/cifar10/jpeg/test",
                                               Preprocess::cifar(), std::vector<std::string>{});
        }}},
      {"mnist-test",
       {"mnist",
        [](const std::string& r) {
          std::string d = data_root(r) + "/mnist/";
          return std::make_shared<MnistIdx>("mnist-test", d + "t10k-images-idx3-ubyte", d + "t10k-labels-idx1-ubyte");
        }}},
      {"imagenet-sample",
       {"imagenet",
        [](const std::string& r) {
          std::string d = data_root(r) + "/imagenet-sample";
          return std::make_shared<ImageFolder>("imagenet-sample", "imagenet", d + "/val", Preprocess::imagenet(),
                                               read_synsets(d + "/synsets.tsv"));
        }}},
      {"imagenet-val",
       {"imagenet",
        [](const std::string& r) -> std::shared_ptr<Dataset> {
          std::string root = r;
          if (root.empty())
            if (const char* e = std::getenv("BITBENCH_IMAGENET_VAL"); e && *e) root = e;
          BB_CHECK(!root.empty(), "dataset 'imagenet-val' needs its folder: pass --data-root DIR or set "
                                  "BITBENCH_IMAGENET_VAL (see datasets/README.md)");
          BB_CHECK(fs::is_directory(root), "imagenet-val folder '", root, "' does not exist");
          auto wnids = read_synsets(imagenet_synsets_path(r));
          std::string labels;
          if (const char* e = std::getenv("BITBENCH_IMAGENET_LABELS"); e && *e) labels = e;
          if (labels.empty() && fs::exists(fs::path(root) / "val_labels.txt"))
            labels = (fs::path(root) / "val_labels.txt").string();
          if (!labels.empty()) return open_flat_imagenet(root, labels, wnids);
          return std::make_shared<ImageFolder>("imagenet-val", "imagenet", root, Preprocess::imagenet(), wnids);
        }}},
  };
  return t;
}

}  // namespace

std::shared_ptr<Dataset> open_dataset(const std::string& name, const std::string& root_override) {
  auto it = table().find(name);
  if (it == table().end()) {
    std::string known;
    for (auto& kv : table()) known += (known.empty() ? "" : ", ") + kv.first;
    BB_THROW("unknown dataset '", name, "' (known: ", known, ")");
  }
  return it->second.open(root_override);
}

std::vector<std::string> dataset_names() {
  std::vector<std::string> out;
  for (auto& kv : table()) out.push_back(kv.first);
  return out;
}

bool has_dataset(const std::string& name) { return table().count(name) > 0; }

std::string dataset_family(const std::string& name) {
  auto it = table().find(name);
  return it == table().end() ? "" : it->second.family;
}

std::vector<int64_t> sample_indices(int64_t size, int64_t n, uint64_t seed) {
  std::vector<int64_t> idx(size);
  for (int64_t i = 0; i < size; ++i) idx[i] = i;
  if (n >= size) return idx;
  std::mt19937_64 rng(mix_seed(seed, 0x5eed));
  for (int64_t i = 0; i < n; ++i) {
    int64_t j = i + (int64_t)(rng() % (uint64_t)(size - i));
    std::swap(idx[i], idx[j]);
  }
  idx.resize(n);
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace bb
