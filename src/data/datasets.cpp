// The dataset implementations, built from dataset files (data/dataset_spec.h).
#include "common/error.h"
#include "common/runtime.h"
#include "data/dataset.h"
#include "data/dataset_spec.h"
#include "data/transforms.h"
#include "common/hash.h"

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
#include <functional>
#include <random>
#include <set>
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

// An image of another size than a fixed-size preprocessing accepts is an error naming the file:
// CIFAR networks would otherwise run, silently, on 1x1 or 64x64 inputs.
void check_size(const cv::Mat& img, const Preprocess& p, const std::string& ds_name, const std::string& what) {
  if (p.kind != "cifar" || p.size <= 0) return;
  BB_CHECK(img.rows == p.size && img.cols == p.size, "dataset '", ds_name, "': image ", what, " is ", img.cols, "x",
           img.rows, ", but its preprocessing takes ", p.size, "x", p.size,
           " images only (for other sizes give explicit preprocessing with resize and crop)");
}

// The official CIFAR-10 binary format: records of 1 label byte + 3072 bytes (R, G, B planes), in
// one file or several read one after the other (data_batch_1.bin ... data_batch_5.bin).
class CifarBinary : public Dataset {
 public:
  CifarBinary(const std::string& name, const std::string& family, const std::vector<std::string>& paths,
              Preprocess pre, int64_t limit, std::string id_extra)
      : pre_(std::move(pre)), extra_(std::move(id_extra)) {
    name_ = name;
    family_ = family;
    for (auto& p : paths) {
      files_.push_back(std::make_unique<MappedFile>(p));
      const MappedFile& f = *files_.back();
      BB_CHECK(f.size() > 0 && f.size() % 3073 == 0, "'", p, "' is not a CIFAR-10 binary file (size ", f.size(),
               " is not a multiple of 3073)");
      n_ += (int64_t)(f.size() / 3073);
      ends_.push_back(n_);
    }
    if (limit > 0) n_ = std::min(n_, limit);
  }
  int64_t size() const override { return n_; }
  int64_t label(int64_t i) const override {
    const int64_t y = record(i)[0];
    BB_CHECK(y < 10, "record ", i, " of dataset '", name_, "' has label ", y, ": not a CIFAR-10 binary file");
    return y;
  }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    const uint8_t* rec = record(i) + 1;
    cv::Mat rgb(32, 32, CV_8UC3);
    for (int p = 0; p < 1024; ++p)
      for (int c = 0; c < 3; ++c) rgb.data[p * 3 + c] = rec[c * 1024 + p];
    if (augment) rgb = cifar_augment(rgb, seed, i);
    return preprocess_rgb(rgb, pre_);
  }
  std::string identity() const override { return name_ + ":" + std::to_string(n_) + extra_; }

 private:
  const uint8_t* record(int64_t i) const {
    BB_CHECK(i >= 0 && i < n_, "image index ", i, " out of range for dataset '", name_, "'");
    size_t f = (size_t)(std::upper_bound(ends_.begin(), ends_.end(), i) - ends_.begin());
    const int64_t first = f == 0 ? 0 : ends_[f - 1];
    return files_[f]->data() + (size_t)(i - first) * 3073;
  }
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::vector<int64_t> ends_;  // cumulative record counts
  int64_t n_ = 0;
  Preprocess pre_;
  std::string extra_;
};

std::vector<std::string> subfolders(const std::string& root) {
  std::vector<std::string> dirs;
  for (auto& e : fs::directory_iterator(root))
    if (e.is_directory()) dirs.push_back(e.path().filename().string());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

// root/<class>/<image>, decoded with OpenCV. Class index: position of the folder name in
// `classes` (ImageNet: synsets.tsv order = sorted wnids, the torchvision order), else sorted
// folder names. A folder absent from `classes` is an error.
class ImageFolder : public Dataset {
 public:
  ImageFolder(const std::string& name, const std::string& family, const std::string& root, Preprocess pre,
              std::vector<std::string> classes, const HoldOut& hold, int64_t limit, std::string id_extra)
      : root_(root), pre_(std::move(pre)), extra_(std::move(id_extra)) {
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
    apply_limit(limit);
  }
  // Flat folder with an explicit (file, label) list.
  ImageFolder(const std::string& name, const std::string& family, const std::string& root, Preprocess pre,
              std::vector<std::string> files, std::vector<int64_t> labels, int64_t num_classes, int64_t limit,
              std::string id_extra)
      : root_(root), pre_(std::move(pre)), extra_(std::move(id_extra)), files_(std::move(files)),
        labels_(std::move(labels)) {
    name_ = name;
    family_ = family;
    num_classes_ = num_classes;
    apply_limit(limit);
  }
  int64_t size() const override { return (int64_t)files_.size(); }
  int64_t label(int64_t i) const override { return labels_[i]; }
  std::string image_path(int64_t i) const override {
    BB_CHECK(i >= 0 && i < size(), "image index ", i, " out of range for dataset '", name_, "'");
    return (fs::path(root_) / files_[i]).string();
  }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    const std::string path = image_path(i);
    cv::Mat rgb = decode_image_rgb(path);
    check_size(rgb, pre_, name_, "'" + path + "'");
    if (augment) rgb = family_ == "cifar10" ? cifar_augment(rgb, seed, i) : maybe_flip(rgb, seed, i);
    return preprocess_rgb(rgb, pre_);
  }
  std::string identity() const override {
    return name_ + ":" + root_ + ":" + std::to_string(files_.size()) + split_ + extra_;
  }

 private:
  void apply_limit(int64_t limit) {
    if (limit > 0 && (int64_t)files_.size() > limit) {
      files_.resize((size_t)limit);
      labels_.resize((size_t)limit);
    }
  }
  std::string split_;  // "" or the hold-out rule, part of the identity
  std::string root_;
  Preprocess pre_;
  std::string extra_;
  std::vector<std::string> files_;
  std::vector<int64_t> labels_;
};

// MNIST IDX files (uncompressed); the mnist preprocessing resizes 28x28 to 32x32 bilinear, [0,1].
class MnistIdx : public Dataset {
 public:
  MnistIdx(const std::string& name, const std::string& family, const std::string& images, const std::string& labels,
           Preprocess pre, int64_t limit, std::string id_extra)
      : img_(images), lab_(labels), pre_(std::move(pre)), extra_(std::move(id_extra)) {
    name_ = name;
    family_ = family;
    BB_CHECK(img_.size() >= 16 && img_.be32(0) == 2051, "'", images, "' is not an IDX image file");
    BB_CHECK(lab_.size() >= 8 && lab_.be32(0) == 2049, "'", labels, "' is not an IDX label file");
    n_ = img_.be32(4);
    rows_ = img_.be32(8);
    cols_ = img_.be32(12);
    BB_CHECK(lab_.be32(4) == (uint32_t)n_, "MNIST image/label counts differ ('", images, "', '", labels, "')");
    BB_CHECK(img_.size() == 16 + (size_t)n_ * rows_ * cols_ && lab_.size() == 8 + (size_t)n_,
             "MNIST files '", images, "', '", labels, "' are truncated");
    if (limit > 0) n_ = std::min<int64_t>(n_, limit);
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
    check_size(m, pre_, name_, std::to_string(i));
    return preprocess_rgb(m, pre_);
  }
  std::string identity() const override { return name_ + ":" + std::to_string(n_) + extra_; }

 private:
  void check(int64_t i) const {
    BB_CHECK(i >= 0 && i < n_, "image index ", i, " out of range for dataset '", name_, "'");
  }
  MappedFile img_, lab_;
  int64_t n_, rows_, cols_;
  Preprocess pre_;
  std::string extra_;
};

// A class list: one class per line, either "<name>" or "<index> <name> [words]" (synsets.tsv:
// index in sorted-wnid order, wnid, words); the line order is the class index. An ImageNet list
// must hold the 1000 classes in sorted-wnid order (torchvision's class indices).
std::vector<std::string> read_classes(const std::string& path, bool imagenet) {
  std::ifstream f(path);
  BB_CHECK(f.good(), "cannot read ", imagenet ? "ImageNet " : "", "class list '", path, "'");
  std::vector<std::string> names;
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    std::istringstream ls(line);
    std::vector<std::string> tok;
    for (std::string t; ls >> t;) tok.push_back(t);
    if (tok.empty()) continue;
    if (tok.size() == 1) {
      names.push_back(tok[0]);
      continue;
    }
    char* end = nullptr;
    const long long idx = std::strtoll(tok[0].c_str(), &end, 10);
    BB_CHECK(end && *end == 0, path, ":", lineno, ": expected '<name>' or '<index> <name> [words]', got '", line, "'");
    BB_CHECK(idx == (long long)names.size(), path, ":", lineno, ": class index ", idx, " is not the line's position ",
             names.size(), " among the classes");
    names.push_back(tok[1]);
  }
  BB_CHECK(!names.empty(), "class list '", path, "' lists no classes");
  std::set<std::string> uniq(names.begin(), names.end());
  BB_CHECK(uniq.size() == names.size(), "class list '", path, "' names a class twice");
  if (imagenet) {
    BB_CHECK(names.size() == 1000, "'", path, "' lists ", names.size(), " classes, expected 1000");
    // Class indices must be torchvision's, or every label would be wrong without any error.
    BB_CHECK(std::adjacent_find(names.begin(), names.end(), std::greater_equal<std::string>()) == names.end(),
             "'", path, "': classes are not in sorted-wnid order (torchvision's class indices)");
  }
  return names;
}

// A flat folder plus a label file: lines "<file> <label>" where label is a class index or a class
// name (ImageNet: a wnid; e.g. Caffe's val.txt or scripts/devkit_to_labels.py's output).
std::shared_ptr<Dataset> open_flat(const std::string& name, const std::string& family, const std::string& root,
                                   const Preprocess& pre, const std::string& label_file,
                                   const std::vector<std::string>& classes, int64_t limit, const std::string& extra) {
  const bool imagenet = family == "imagenet";
  std::map<std::string, int64_t> index;
  for (size_t i = 0; i < classes.size(); ++i) index[classes[i]] = (int64_t)i;
  const int64_t k = (int64_t)classes.size();
  std::ifstream f(label_file);
  BB_CHECK(f.good(), "cannot read ", imagenet ? "ImageNet " : "", "label file '", label_file, "'");
  std::vector<std::string> files;
  std::vector<int64_t> labels;
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    std::istringstream ls(line);
    std::string file, lab;
    if (!(ls >> file)) continue;
    BB_CHECK((bool)(ls >> lab), label_file, ":", lineno, ": expected '<file> <label>', got '", line, "'",
             imagenet ? " (the devkit's ILSVRC2012_validation_ground_truth.txt lists bare class IDs: convert it "
                        "with scripts/devkit_to_labels.py)"
                      : "");
    int64_t y;
    if (index.count(lab)) {
      y = index[lab];
    } else {
      char* end = nullptr;
      y = std::strtoll(lab.c_str(), &end, 10);
      BB_CHECK(end && *end == 0 && y >= 0 && y < k, label_file, ":", lineno, ": label '", lab,
               "' is neither a class index 0..", k - 1, " nor a known ", imagenet ? "wnid" : "class name");
    }
    BB_CHECK(fs::exists(fs::path(root) / file), label_file, ":", lineno, ": image '", file, "' not found under '",
             root, "'");
    files.push_back(file);
    labels.push_back(y);
  }
  BB_CHECK(!files.empty(), imagenet ? "ImageNet " : "", "label file '", label_file, "' lists no images");
  return std::make_shared<ImageFolder>(name, family, root, pre, files, labels, k, limit, extra);
}

// The seven shipped dataset files as shipped, by the hash of their settings (DatasetSpec::canonical):
// these keep the identities they had before datasets were files, so cached Hessians and run IDs
// stay valid. Any other dataset, or one of these edited, has its settings' hash in its identity.
bool shipped_as_is(const DatasetSpec& s) {
  static const std::map<std::string, std::string> shipped = {
      {"cifar10-lossless-1k", "93d272165520cfb391e4641d3e4d6911c8c8635abb2c3b5cb8da599a7091e78a"},
      {"cifar10-jpeg-train", "3e0b8cfadd48a376c479b26b1f129e22b058f46c06ea9bd03f2297cb90acc82e"},
      {"cifar10-jpeg-val", "e43845f19288f9c56b279ba5531d85e5ad5842522702ef1808c7530618db7e98"},
      {"cifar10-jpeg-test", "659af7ed429023b5cce111b289baf4b516fb403069ad008dbb85adaa338fc0b5"},
      {"mnist-test", "f16a9c999f407a16bb7e8c05d724b5dc944f4e88aea1c3bac62b8e06c6e92026"},
      {"imagenet-sample", "381aa3577eaa635e2cf66bc2690869c6b7ed6eff4df1faaebfd5a4fdfb922713"},
      {"imagenet-val", "f38e7b4c5045d90bd10d83556effed1534c29b7260c6d5010f60059d8d3ba5aa"},
  };
  auto it = shipped.find(s.name);
  if (it == shipped.end()) return false;
  std::error_code ec;
  const fs::path reg = fs::path(dataset_configs_dir()) / (s.name + ".yaml");
  return fs::equivalent(reg, s.file, ec) && sha256_hex(s.canonical()) == it->second;
}

std::string spec_hash(const DatasetSpec& s) { return sha256_hex(s.canonical()).substr(0, 16); }

// Values of a dataset file turned into paths: ${data} (the data root) and ${env:NAME} expanded, a
// relative path read from the data root (one that starts with ${env:...}: from the current directory).
class Resolver {
 public:
  Resolver(const DatasetSpec& s, std::string root_override) : s_(s), root_(std::move(root_override)) {}
  std::string data() const { return data_root(s_.format == "imagenet-val" ? "" : root_); }
  // The value with variables expanded; "" with *unset = the variable's name when it names an unset
  // environment variable (the key then counts as not given).
  std::string expand(const SpecValue& v, std::string* unset) const {
    const std::string& t = v.text;
    std::string out;
    size_t i = 0;
    while (i < t.size()) {
      const size_t b = t.find("${", i);
      if (b == std::string::npos) {
        out += t.substr(i);
        break;
      }
      out += t.substr(i, b - i);
      const size_t e = t.find('}', b);
      BB_CHECK(e != std::string::npos, v.where, ": unterminated ${ in '", t, "'");
      const std::string var = t.substr(b + 2, e - b - 2);
      if (var == "data") {
        out += data();
      } else if (var.rfind("env:", 0) == 0) {
        const char* x = std::getenv(var.substr(4).c_str());
        if (!x || !*x) {
          if (unset) *unset = var.substr(4);
          return "";
        }
        out += x;
      } else {
        BB_THROW(v.where, ": unknown variable ${", var, "} in '", t, "' (known: ${data}, ${env:NAME})");
      }
      i = e + 1;
    }
    return out;
  }
  // The file or folder a value names ("" for an unset variable, with *unset set).
  std::string path(const SpecValue& v, std::string* unset = nullptr) const {
    if (!v.given) return "";
    std::string u;
    std::string x = expand(v, &u);
    if (!u.empty()) {
      if (unset) *unset = u;
      return "";
    }
    // A relative path from the environment is taken as the environment gives it (relative to the
    // current directory), as BITBENCH_IMAGENET_VAL and its kin always were.
    if (x.front() == '/' || v.text.rfind("${env:", 0) == 0) return x;
    return data() + "/" + x;
  }
  // A value that must name an existing file or folder.
  std::string existing(const SpecValue& v, const std::string& key) const {
    std::string unset;
    const std::string p = path(v, &unset);
    BB_CHECK(unset.empty(), "dataset '", s_.name, "' (", v.where, "): '", key, "' names the unset environment variable ",
             unset);
    BB_CHECK(fs::exists(p), "dataset '", s_.name, "' (", v.where, "): ", key, " '", p, "' does not exist");
    return p;
  }

 private:
  const DatasetSpec& s_;
  std::string root_;
};

// The 1000 ImageNet classes for a folder without a `classes` file: the data root's
// imagenet-sample/synsets.tsv, else the folder's 1000 class subfolders.
std::vector<std::string> imagenet_classes(const DatasetSpec& s, const std::string& val_root) {
  std::string sample;
  try {
    sample = data_root() + "/imagenet-sample/synsets.tsv";
  } catch (const Error&) {
  }
  if (!sample.empty() && fs::exists(sample)) return read_classes(sample, true);
  auto dirs = subfolders(val_root);
  if (dirs.size() == 1000) return dirs;
  BB_THROW("dataset '", s.name, "' needs the list of the 1000 ImageNet classes: ",
           s.classes.given ? "set the class list of its 'classes' (" + s.classes.text + ", " + s.classes.where + ")"
                           : "give 'classes' in " + s.file,
           " to a synsets.tsv (scripts/devkit_to_labels.py --synsets writes one; see datasets/README.md)");
}

std::shared_ptr<Dataset> open_spec(const DatasetSpec& s, const std::string& root_override) {
  const Resolver r(s, root_override);
  const std::string extra = shipped_as_is(s) ? "" : ":spec=" + spec_hash(s);
  const bool imagenet = s.family == "imagenet";
  if (s.format == "cifar-binary") {
    std::vector<std::string> files;
    for (auto& p : s.paths) files.push_back(r.existing(p, "path"));
    return std::make_shared<CifarBinary>(s.name, s.family, files, s.pre, s.limit, extra);
  }
  if (s.format == "mnist-idx")
    return std::make_shared<MnistIdx>(s.name, s.family, r.existing(s.paths[0], "path"), r.existing(s.labels, "labels"),
                                      s.pre, s.limit, extra);
  if (s.format == "imagefolder") {
    const std::string root = r.existing(s.paths[0], "path");
    BB_CHECK(fs::is_directory(root), "dataset '", s.name, "' (", s.paths[0].where, "): path '", root,
             "' is not a folder");
    std::vector<std::string> classes;
    if (s.classes.given) classes = read_classes(r.existing(s.classes, "classes"), imagenet);
    if (s.labels.given) {
      if (classes.empty()) classes = imagenet_classes(s, root);
      return open_flat(s.name, s.family, root, s.pre, r.existing(s.labels, "labels"), classes, s.limit, extra);
    }
    return std::make_shared<ImageFolder>(s.name, s.family, root, s.pre, classes, s.subset, s.limit, extra);
  }
  // imagenet-val: --data-root is the folder itself, else the file's path.
  std::string root = root_override;
  if (root.empty()) {
    std::string unset;
    root = r.path(s.paths[0], &unset);
    BB_CHECK(unset.empty(), "dataset '", s.name, "' needs its folder: pass --data-root DIR or set ", unset, " (",
             s.paths[0].where, "; see datasets/README.md)");
  }
  BB_CHECK(fs::is_directory(root), s.name, " folder '", root, "' does not exist");
  std::vector<std::string> classes;
  {
    std::string unset;
    const std::string c = r.path(s.classes, &unset);
    classes = c.empty() ? imagenet_classes(s, root) : read_classes(c, imagenet);
  }
  std::string labels = r.path(s.labels);
  if (labels.empty() && fs::exists(fs::path(root) / "val_labels.txt")) labels = (fs::path(root) / "val_labels.txt").string();
  if (!labels.empty()) return open_flat(s.name, s.family, root, s.pre, labels, classes, s.limit, extra);
  BB_CHECK(!subfolders(root).empty(), s.name, " folder '", root, "' has no class subfolders and no val_labels.txt; for "
           "a flat folder give its label file (", s.labels.given ? "labels: " + s.labels.text : "'labels'", " in ",
           s.file, "; see datasets/README.md)");
  return std::make_shared<ImageFolder>(s.name, s.family, root, s.pre, classes, HoldOut{}, s.limit, extra);
}

// The registered dataset files.
std::vector<DatasetSpec> registered_specs() {
  std::vector<DatasetSpec> out;
  for (auto& n : dataset_names()) out.push_back(load_dataset_spec(dataset_configs_dir() + "/" + n + ".yaml"));
  return out;
}

// The one registered dataset of a family with a property, or "" (two are an error).
std::string unique_registered(const std::string& family, const std::string& what,
                              const std::function<bool(const DatasetSpec&)>& pick) {
  std::string found, file;
  for (auto& s : registered_specs()) {
    if (s.family != family || !pick(s)) continue;
    BB_CHECK(found.empty(), "two datasets are the ", what, " of family '", family, "': ", file, " and ", s.file);
    found = s.name;
    file = s.file;
  }
  return found;
}

}  // namespace

std::shared_ptr<Dataset> open_dataset(const std::string& name, const std::string& root_override) {
  return open_spec(dataset_spec(name), root_override);
}

std::vector<std::string> dataset_names() {
  std::vector<std::string> out;
  const std::string dir = dataset_configs_dir();
  if (!fs::is_directory(dir)) return out;
  for (auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file() || e.path().extension() != ".yaml") continue;
    out.push_back(e.path().stem().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool has_dataset(const std::string& name) {
  const std::string file = dataset_spec_file(name);
  if (file.empty()) return false;
  if (file != name) return true;  // a registered name
  dataset_spec(name);             // a path: the file must exist and be well formed
  return true;
}

std::string dataset_role(const std::string& name) {
  if (dataset_spec_file(name).empty()) return "";
  return dataset_spec(name).role;
}

bool is_test_set(const std::string& name) { return dataset_role(name) == "test"; }

std::string validation_set_for_family(const std::string& family) {
  return unique_registered(family, "validation split (role: validation)",
                           [](const DatasetSpec& s) { return s.role == "validation"; });
}

std::string default_calibration_for_family(const std::string& family) {
  return unique_registered(family, "default calibration set (default_calibration: true)",
                           [](const DatasetSpec& s) { return s.default_calibration; });
}

std::string dataset_family(const std::string& name) {
  if (dataset_spec_file(name).empty()) return "";
  return dataset_spec(name).family;
}

std::string dataset_run_identity(const std::string& name, const std::string& root_override) {
  const DatasetSpec s = dataset_spec(name);
  auto ds = open_spec(s, root_override);
  std::string id = name + ":" + std::to_string(ds->size());
  if (!shipped_as_is(s)) id += ":" + spec_hash(s);
  return id;
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
