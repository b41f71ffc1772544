// In-process memo of preprocessed images. The runs of an experiment evaluate (and calibrate on)
// the same images over and over; decoding 10,000 JPEGs costs a quarter of a CIFAR ResNet-20
// evaluation on 2 cores. Un-augmented images are kept once decoded, up to a process-wide byte
// budget (BITBENCH_IMAGE_MEMO_MB, default 1536; 0 = off); past it images are decoded as usual.
// The values are exactly the decoded ones, so results do not depend on the memo.
#pragma once
#include "data/dataset.h"

namespace bb {

// open_dataset(name, root) wrapped in the memo; the same (name, root) gives the same object.
std::shared_ptr<Dataset> open_dataset_memoized(const std::string& name, const std::string& root_override = "");

}  // namespace bb
