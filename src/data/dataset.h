// Labelled image datasets. Images are decoded and preprocessed on demand (thread-safe), so a
// loader can prefetch in parallel with inference and nothing holds a whole dataset in memory.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace bb {

// Preprocessing of one image into a normalised CHW float tensor.
struct Preprocess {
  std::string kind;  // "cifar" (mean/std only), "imagenet" (resize 256, crop 224), "mnist" (28->32 bilinear)
  std::vector<float> mean, std;
  int64_t resize = 256, crop = 224;  // imagenet only
  static Preprocess cifar();
  static Preprocess imagenet();
  static Preprocess mnist();
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual int64_t label(int64_t i) const = 0;
  // Preprocessed image i as a float32 CHW tensor. With augment=true, training augmentation
  // (random crop with padding and horizontal flip for CIFAR; flip for others) seeded by `seed`.
  virtual torch::Tensor image(int64_t i, bool augment = false, uint64_t seed = 0) const = 0;
  // The file image i is read from ("" for datasets packed into one file).
  virtual std::string image_path(int64_t i) const { return ""; }
  // Dataset identity for content hashes: name, root, count.
  virtual std::string identity() const = 0;
  const std::string& name() const { return name_; }
  const std::string& family() const { return family_; }  // "cifar10", "imagenet", "mnist"
  int64_t num_classes() const { return num_classes_; }

 protected:
  std::string name_, family_;
  int64_t num_classes_ = 10;
};

// Known names: cifar10-lossless-1k, cifar10-jpeg-train, cifar10-jpeg-val, cifar10-jpeg-test,
// mnist-test, imagenet-sample, imagenet-val. cifar10-jpeg-val is a fixed, class-balanced hold-out
// of 5,000 images of the JPEG train folder (500 per class); cifar10-jpeg-train is the other 45,000. `root` is the data root (see bb::data_root) except for
// imagenet-val, whose root is the validation folder itself (--data-root or BITBENCH_IMAGENET_VAL)
// in one of two layouts: class subfolders (<wnid>/<file>), or a flat folder of images plus a label
// file of "<file> <label>" lines, label = class index (sorted-wnid order) or wnid: the folder's
// val_labels.txt or $BITBENCH_IMAGENET_LABELS (scripts/devkit_to_labels.py writes one from the
// ILSVRC2012 devkit). Class list: $BITBENCH_IMAGENET_SYNSETS, else <data root>/imagenet-sample/
// synsets.tsv, else the 1000 class subfolders themselves. See datasets/README.md.
std::shared_ptr<Dataset> open_dataset(const std::string& name, const std::string& root_override = "");
std::vector<std::string> dataset_names();
bool has_dataset(const std::string& name);
// Test sets only report results: nothing chooses a setting on them (`bitbench tune` refuses them).
// cifar10-lossless-1k, cifar10-jpeg-test, mnist-test, imagenet-sample, imagenet-val.
bool is_test_set(const std::string& name);
// The validation split settings are tuned on for a family ("cifar10" -> cifar10-jpeg-val), or "".
std::string validation_set_for_family(const std::string& family);
// Family a dataset name belongs to, without opening it ("" if unknown).
std::string dataset_family(const std::string& name);

// A fixed, seeded subset of indices (stratification is not needed for calibration).
std::vector<int64_t> sample_indices(int64_t dataset_size, int64_t n, uint64_t seed);

}  // namespace bb
