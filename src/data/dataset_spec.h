// A dataset described by a YAML file: the registered names are configs/datasets/<name>.yaml, and
// any other file can be given by path wherever a dataset name is accepted. datasets/README.md
// documents the schema; this header is the parsed form that open_dataset builds a dataset from.
#pragma once
#include "data/dataset.h"

#include <cstdint>
#include <string>
#include <vector>

namespace bb {

// A fixed, class-balanced hold-out of an ImageFolder: in every class folder, `per_class` images
// picked by a seeded shuffle of the folder's sorted file names. The pick depends only on the
// names, the class folder name and the seed, not on the directory listing order or the machine.
// YAML: subset: {part: held | rest, per_class: N, seed: S}.
struct HoldOut {
  enum class Part { all, rest, held };
  Part part = Part::all;
  int64_t per_class = 0;
  uint64_t seed = 0;
  // mask[k] = file k (of the n sorted names of class folder `cls`) is held out.
  std::vector<bool> mask(size_t n, const std::string& cls) const;
  // "" or the rule as it appears in the dataset's identity (":holdout500/3405387008").
  std::string describe() const;
};

// A value of the file with where it was written ("file:line").
struct SpecValue {
  std::string text;   // as written (before ${...} expansion)
  std::string where;  // file:line
  bool given = false;
};

struct DatasetSpec {
  std::string file;            // the YAML file
  std::string name, description;
  std::string format;          // cifar-binary | imagefolder | imagenet-val | mnist-idx
  std::string family;          // cifar10 | imagenet | mnist (or any plain name)
  std::string role = "test";   // test | validation | train
  bool default_calibration = false;
  std::vector<SpecValue> paths;  // `path` (a list only for cifar-binary)
  SpecValue classes, labels;
  Preprocess pre;
  std::string preprocess_text;   // "cifar" / "imagenet" / "mnist", or the explicit settings
  bool preset = true;            // preprocess is one of the named presets
  int64_t limit = 0;             // 0 = every image
  HoldOut subset;
  std::string where_name, where_format, where_preprocess, where_limit, where_subset;
  // Canonical text of everything that decides the images, labels and tensors (paths as written).
  std::string canonical() const;
};

// The YAML file a dataset argument names: configs/datasets/<name>.yaml for a registered name, the
// argument itself for a path (it contains '/' or ends in .yaml/.yml), "" otherwise.
std::string dataset_spec_file(const std::string& name_or_path);

// Parses and checks a dataset file (keys, values, types); errors name file:line and the key.
// Does not touch the data.
DatasetSpec load_dataset_spec(const std::string& file);

// The spec for a name or path (throws "unknown dataset" for anything else).
DatasetSpec dataset_spec(const std::string& name_or_path);

// The folder of the registered dataset files (<source>/configs/datasets).
std::string dataset_configs_dir();

}  // namespace bb
