// [dataset-yaml]: datasets described by YAML files (configs/datasets/<name>.yaml or a path): the
// built-in names keep their exact images, order, labels and identities; custom files give the
// same predictions as the built-ins; malformed files are refused with file:line.
#include <catch2/catch.hpp>

#include "common/error.h"
#include "common/hash.h"
#include "common/runtime.h"
#include "data/dataset.h"
#include "data/dataset_spec.h"
#include "test_data_helpers.h"

#include <cstdio>

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
