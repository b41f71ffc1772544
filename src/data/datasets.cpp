// The dataset implementations and the name -> dataset table.
#include "common/error.h"
#include "common/runtime.h"
#include "data/dataset.h"
#include "data/transforms.h"

#include <opencv2/core.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
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

// A read-only memory map of a packed dataset file: records are paged in as they are read (and can
// be evicted), so the process never copies a whole dataset into memory.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    BB_CHECK(fd >= 0, "cannot open '", path, "': ", std::strerror(errno));
    struct stat st {};
    const bool ok = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    size_ = ok ? (size_t)st.st_size : 0;
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      data_ = p == MAP_FAILED ? nullptr : static_cast<const uint8_t*>(p);
    }
    ::close(fd);
    BB_CHECK(ok, "'", path, "' is not a regular file");
    BB_CHECK(size_ == 0 || data_, "cannot map '", path, "' into memory");
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  uint32_t be32(size_t off) const {
    return (uint32_t)data_[off] << 24 | (uint32_t)data_[off + 1] << 16 | (uint32_t)data_[off + 2] << 8 | data_[off + 3];
  }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// The official CIFAR-10 binary format: records of 1 label byte + 3072 bytes (R, G, B planes).
class CifarBinary : public Dataset {
 public:
  CifarBinary(const std::string& name, const std::string& path) : file_(path) {
    name_ = name;
    family_ = "cifar10";
    BB_CHECK(file_.size() > 0 && file_.size() % 3073 == 0, "'", path,
             "' is not a CIFAR-10 binary file (size ", file_.size(), " is not a multiple of 3073)");
    n_ = (int64_t)(file_.size() / 3073);
  }
  int64_t size() const override { return n_; }
  int64_t label(int64_t i) const override { return record(i)[0]; }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    const uint8_t* rec = record(i) + 1;
    cv::Mat rgb(32, 32, CV_8UC3);
    for (int p = 0; p < 1024; ++p)
      for (int c = 0; c < 3; ++c) rgb.data[p * 3 + c] = rec[c * 1024 + p];
    if (augment) rgb = cifar_augment(rgb, seed, i);
    return preprocess_rgb(rgb, Preprocess::cifar());
  }
  std::string identity() const override { return name_ + ":" + std::to_string(n_); }

 private:
  const uint8_t* record(int64_t i) const {
    BB_CHECK(i >= 0 && i < n_, "image index ", i, " out of range for dataset '", name_, "'");
    return file_.data() + (size_t)i * 3073;
  }
  MappedFile file_;
  int64_t n_;
};

std::vector<std::string> subfolders(const std::string& root) {
  std::vector<std::string> dirs;
  for (auto& e : fs::directory_iterator(root))
    if (e.is_directory()) dirs.push_back(e.path().filename().string());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

// A fixed, class-balanced hold-out of an ImageFolder: in every class folder, `per_class` images
// picked by a seeded shuffle of the folder's sorted file names. The pick depends only on the
// names, the class folder name and the seed, not on the directory listing order or the machine.
struct HoldOut {
  enum class Part { all, rest, held };
  Part part = Part::all;
  int64_t per_class = 0;
  uint64_t seed = 0;
  std::vector<bool> mask(size_t n, const std::string& cls) const {
    std::vector<bool> m(n, false);
    if (part == Part::all) return m;
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    uint64_t h = seed;  // FNV-1a of the class name, mixed into the seed
    for (unsigned char c : cls) h = (h ^ c) * 0x100000001b3ULL;
    std::mt19937_64 rng(h);
    for (size_t i = 0; i + 1 < n; ++i) {  // Fisher-Yates, explicit (std::shuffle is not portable)
      size_t j = i + (size_t)(rng() % (uint64_t)(n - i));
      std::swap(order[i], order[j]);
    }
    for (int64_t k = 0; k < per_class && k < (int64_t)n; ++k) m[order[k]] = true;
    return m;
  }
  std::string describe() const {
    if (part == Part::all) return "";
    return std::string(part == Part::held ? ":holdout" : ":minus-holdout") + std::to_string(per_class) + "/" +
           std::to_string(seed);
  }
};

// The CIFAR-10 JPEG train folder's validation split: 500 images per class (5,000), never used for
// calibration, Hessians or fine-tuning (cifar10-jpeg-train is the other 45,000).
constexpr int64_t kCifarValPerClass = 500;
constexpr uint64_t kCifarValSeed = 0xcafa1500ULL;

// root/<class>/<image>, decoded with OpenCV. Class index: position of the folder name in
// `classes` (ImageNet: synsets.tsv order = sorted wnids, the torchvision order), else sorted
// folder names. A folder absent from `classes` is an error.
class ImageFolder : public Dataset {
 public:
  ImageFolder(const std::string& name, const std::string& family, const std::string& root,
              Preprocess pre, std::vector<std::string> classes, const HoldOut& hold = {})
      : root_(root), pre_(std::move(pre)) {
    name_ = name;
    family_ = family;
    BB_CHECK(fs::is_directory(root), "dataset '", name, "': folder '", root, "' does not exist");
    std::vector<std::string> dirs = subfolders(root);
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
      std::vector<bool> held = hold.mask(files.size(), d);
      BB_CHECK(hold.part == HoldOut::Part::all || files.size() > (size_t)hold.per_class, "dataset '", name,
               "': class folder '", d, "' has ", files.size(), " images, too few to hold out ", hold.per_class);
      for (size_t k = 0; k < files.size(); ++k) {
        if (hold.part == HoldOut::Part::held ? !held[k] : (hold.part == HoldOut::Part::rest && held[k])) continue;
        files_.push_back(d + "/" + files[k]);
        labels_.push_back(it->second);
      }
    }
    BB_CHECK(!files_.empty(), "dataset '", name, "': no images found under '", root, "'");
    split_ = hold.describe();
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
  std::string image_path(int64_t i) const override {
    BB_CHECK(i >= 0 && i < size(), "image index ", i, " out of range for dataset '", name_, "'");
    return (fs::path(root_) / files_[i]).string();
  }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    cv::Mat rgb = decode_image_rgb(image_path(i));
    if (augment) rgb = family_ == "cifar10" ? cifar_augment(rgb, seed, i) : maybe_flip(rgb, seed, i);
    return preprocess_rgb(rgb, pre_);
  }
  std::string identity() const override {
    return name_ + ":" + root_ + ":" + std::to_string(files_.size()) + split_;
  }

 private:
  std::string split_;  // "" or the hold-out rule, part of the identity
  std::string root_;
  Preprocess pre_;
  std::vector<std::string> files_;
  std::vector<int64_t> labels_;
};

// MNIST IDX files (uncompressed); 28x28 resized to 32x32 bilinear, [0,1], no normalisation.
class MnistIdx : public Dataset {
 public:
  MnistIdx(const std::string& name, const std::string& images, const std::string& labels)
      : img_(images), lab_(labels) {
    name_ = name;
    family_ = "mnist";
    BB_CHECK(img_.size() >= 16 && img_.be32(0) == 2051, "'", images, "' is not an IDX image file");
    BB_CHECK(lab_.size() >= 8 && lab_.be32(0) == 2049, "'", labels, "' is not an IDX label file");
    n_ = img_.be32(4);
    rows_ = img_.be32(8);
    cols_ = img_.be32(12);
    BB_CHECK(lab_.be32(4) == (uint32_t)n_, "MNIST image/label counts differ ('", images, "', '", labels, "')");
    BB_CHECK(img_.size() == 16 + (size_t)n_ * rows_ * cols_ && lab_.size() == 8 + (size_t)n_,
             "MNIST files '", images, "', '", labels, "' are truncated");
  }
  int64_t size() const override { return n_; }
  int64_t label(int64_t i) const override {
    check(i);
    return lab_.data()[8 + i];
  }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    check(i);
    // A header over the mapped bytes: read only, never written.
    cv::Mat m(rows_, cols_, CV_8UC1, const_cast<uint8_t*>(img_.data() + 16 + (size_t)i * rows_ * cols_));
    return preprocess_rgb(m, Preprocess::mnist());
  }
  std::string identity() const override { return name_ + ":" + std::to_string(n_); }

 private:
  void check(int64_t i) const {
    BB_CHECK(i >= 0 && i < n_, "image index ", i, " out of range for dataset '", name_, "'");
  }
  MappedFile img_, lab_;
  int64_t n_, rows_, cols_;
};

// synsets.tsv: "index<TAB>wnid<TAB>name" for all 1000 classes in torchvision order (sorted wnids).
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
  // Class indices must be torchvision's, or every label would be wrong without any error.
  BB_CHECK(std::adjacent_find(wnids.begin(), wnids.end(), std::greater_equal<std::string>()) == wnids.end(),
           "'", path, "': classes are not in sorted-wnid order (torchvision's class indices)");
  return wnids;
}

// The 1000 ImageNet classes for a validation folder elsewhere: $BITBENCH_IMAGENET_SYNSETS, else
// the data root's imagenet-sample/synsets.tsv, else the folder's 1000 class subfolders.
std::vector<std::string> imagenet_classes(const std::string& val_root) {
  if (const char* e = std::getenv("BITBENCH_IMAGENET_SYNSETS"); e && *e) return read_synsets(e);
  std::string sample;
  try {
    sample = data_root() + "/imagenet-sample/synsets.tsv";
  } catch (const Error&) {
  }
  if (!sample.empty() && fs::exists(sample)) return read_synsets(sample);
  auto dirs = subfolders(val_root);
  if (dirs.size() == 1000) return dirs;
  BB_THROW("dataset 'imagenet-val' needs the list of the 1000 ImageNet classes: set "
           "BITBENCH_IMAGENET_SYNSETS to a synsets.tsv (scripts/devkit_to_labels.py --synsets writes one; "
           "see datasets/README.md)");
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
    BB_CHECK((bool)(ls >> lab), label_file, ":", lineno, ": expected '<file> <label>', got '", line,
             "' (the devkit's ILSVRC2012_validation_ground_truth.txt lists bare class IDs: convert it with "
             "scripts/devkit_to_labels.py)");
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
                                               Preprocess::cifar(), std::vector<std::string>{},
                                               HoldOut{HoldOut::Part::rest, kCifarValPerClass, kCifarValSeed});
        }}},
      {"cifar10-jpeg-val",
       {"cifar10",
        [](const std::string& r) {
          return std::make_shared<ImageFolder>("cifar10-jpeg-val", "cifar10", data_root(r) + "/cifar10/jpeg/train",
                                               Preprocess::cifar(), std::vector<std::string>{},
                                               HoldOut{HoldOut::Part::held, kCifarValPerClass, kCifarValSeed});
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
          auto wnids = imagenet_classes(root);
          std::string labels;
          if (const char* e = std::getenv("BITBENCH_IMAGENET_LABELS"); e && *e) labels = e;
          if (labels.empty() && fs::exists(fs::path(root) / "val_labels.txt"))
            labels = (fs::path(root) / "val_labels.txt").string();
          if (!labels.empty()) return open_flat_imagenet(root, labels, wnids);
          BB_CHECK(!subfolders(root).empty(), "imagenet-val folder '", root, "' has no class subfolders and no "
                   "val_labels.txt; for a flat folder set BITBENCH_IMAGENET_LABELS (see datasets/README.md)");
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

bool is_test_set(const std::string& name) {
  return name == "cifar10-lossless-1k" || name == "cifar10-jpeg-test" || name == "mnist-test" ||
         name == "imagenet-sample" || name == "imagenet-val";
}

std::string validation_set_for_family(const std::string& family) {
  return family == "cifar10" ? "cifar10-jpeg-val" : "";
}

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
