// Batches a dataset with a pool of decode threads running ahead of the consumer, so JPEG decoding
// and preprocessing overlap with inference.
#pragma once
#include "data/dataset.h"

#include <functional>

namespace bb {

struct Batch {
  torch::Tensor images;  // N x C x H x W float32
  torch::Tensor labels;  // N int64
  std::vector<int64_t> indices;
};

struct LoaderOptions {
  int64_t batch_size = 100;
  int workers = 0;        // decode threads; 0 = $BITBENCH_DECODE_THREADS, else half the cores (at least 1)
  int prefetch = 4;       // batches in flight
  bool augment = false;   // training augmentation (seeded by seed + index)
  uint64_t seed = 0;
};

// Calls fn for each batch of `indices` (in order). Decoding runs on worker threads.
void for_each_batch(const Dataset& ds, const std::vector<int64_t>& indices, const LoaderOptions& opt,
                    const std::function<void(const Batch&)>& fn);

// Loads the given images into one tensor (for calibration sets that fit in memory).
Batch load_batch(const Dataset& ds, const std::vector<int64_t>& indices, bool augment = false,
                 uint64_t seed = 0);

}  // namespace bb
