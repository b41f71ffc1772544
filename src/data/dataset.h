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
  // "cifar": no geometry (images must be `size` x `size` when size > 0); "imagenet": torchvision
  // Resize(resize) (skipped when resize == 0) + CenterCrop(crop); "mnist": 28 -> 32 bilinear.
  std::string kind;
  std::vector<float> mean, std;
  int64_t resize = 256, crop = 224;  // imagenet only
  int64_t size = 0;                  // cifar: the one image size accepted (32 for CIFAR)
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

// Datasets are described by YAML files (schema: datasets/README.md; parser: data/dataset_spec.h).
// A registered name is configs/datasets/<name>.yaml: cifar10-lossless-1k, cifar10-jpeg-train,
// cifar10-jpeg-val, cifar10-jpeg-test, mnist-test, imagenet-sample, imagenet-val, and any file
// added there. Anywhere a name is accepted, the path of a dataset file (it contains '/' or ends
// in .yaml/.yml) works too. cifar10-jpeg-val is a fixed, class-balanced hold-out of 5,000 images
// of the JPEG train folder (500 per class); cifar10-jpeg-train is the other 45,000.
// `root_override` replaces the data root (bb::data_root) that relative paths are read from; for
// format imagenet-val it is the validation folder itself (--data-root), which is otherwise the
// file's `path` (imagenet-val: $BITBENCH_IMAGENET_VAL) in one of two layouts: class subfolders
// (<wnid>/<file>), or a flat folder of images plus a label file of "<file> <label>" lines, label =
// class index (sorted-wnid order) or wnid: the file's `labels` ($BITBENCH_IMAGENET_LABELS), else
// the folder's val_labels.txt (scripts/devkit_to_labels.py writes one from the ILSVRC2012 devkit).
// Class list: the file's `classes` ($BITBENCH_IMAGENET_SYNSETS), else <data root>/imagenet-sample/
// synsets.tsv, else the 1000 class subfolders themselves. Malformed files are errors naming
// file:line and the key.
std::shared_ptr<Dataset> open_dataset(const std::string& name, const std::string& root_override = "");
// The registered names (configs/datasets/*.yaml), sorted.
std::vector<std::string> dataset_names();
// True for a registered name; for a path, parses and checks the file (throwing on a malformed
// one) without reading the data; false for anything else.
bool has_dataset(const std::string& name);
// Test sets only report results: nothing chooses a setting on them (`bitbench tune` refuses them).
// A dataset file's `role` (test, the default, validation or train): cifar10-lossless-1k,
// cifar10-jpeg-test, mnist-test, imagenet-sample, imagenet-val are test sets. False for unknown names.
bool is_test_set(const std::string& name);
// The dataset's role: "test", "validation" or "train" ("" for an unknown name).
std::string dataset_role(const std::string& name);
// The registered validation split settings are tuned on for a family ("cifar10" -> cifar10-jpeg-val), or "".
std::string validation_set_for_family(const std::string& family);
// The registered dataset marked `default_calibration: true` for a family ("cifar10" ->
// cifar10-jpeg-train, "imagenet" -> imagenet-sample, "mnist" -> mnist-test), or "".
std::string default_calibration_for_family(const std::string& family);
// Family a dataset name or file belongs to, without opening the data ("" if unknown).
std::string dataset_family(const std::string& name);
// What a run's identity records of a dataset: "<name>:<size>" for the shipped datasets as
// shipped (the identity run IDs had before dataset files), else "<name or path>:<size>:<hash of
// the file's settings>", so editing a dataset file gives new run IDs.
std::string dataset_run_identity(const std::string& name, const std::string& root_override = "");

// A fixed, seeded subset of indices (stratification is not needed for calibration).
std::vector<int64_t> sample_indices(int64_t dataset_size, int64_t n, uint64_t seed);

}  // namespace bb
