// The .bbz container (docs/FORMAT.md): everything needed to rebuild every parameter and buffer
// of a model, plus provenance, closed by a CRC-32. Sizes are measured while serialising, and the
// accounting (coding/accounting.h) is computed from those measured bytes.
#pragma once
#include "coding/bytes.h"
#include "coding/record.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace bb {

// A tensor stored as it is: fp32 (default) or fp16 for floating tensors; integer buffers
// (num_batches_tracked) keep their type.
struct StoredTensor {
  std::string name;
  torch::Tensor value;   // as held in memory (decoded: float32 / int64)
  bool fp16 = false;     // stored as fp16 (value is rounded through fp16 on write)
};

struct BbzFile {
  std::string model;               // architecture name (models registry)
  nlohmann::json provenance;       // bitbench version, method, resolved params, weights hash, seed
  std::vector<LayerRecord> layers;
  std::vector<StoredTensor> tensors;
};

// Bytes each part took in the serialised file.
struct BbzSizes {
  struct Layer {
    std::string layer, method;
    int64_t indices = 0, codebook = 0, side = 0;  // side includes the record's own header bytes
    int64_t total() const { return indices + codebook + side; }
  };
  std::vector<Layer> layers;
  std::map<std::string, int64_t> tensors;  // per stored tensor, its header included
  int64_t header = 0;                      // magic, version, model name, provenance, counts
  int64_t checksum = 0;
  int64_t total = 0;                       // == file size
};

std::vector<uint8_t> serialize_bbz(const BbzFile& f, BbzSizes* sizes = nullptr);
// `what` names the source in errors (e.g. the path).
BbzFile parse_bbz(const uint8_t* data, size_t n, const std::string& what, BbzSizes* sizes = nullptr);

void write_bbz(const std::string& path, const BbzFile& f, BbzSizes* sizes = nullptr);  // atomic
BbzFile read_bbz(const std::string& path, BbzSizes* sizes = nullptr);

// put_floats / get_floats (tensor payloads of sections) are declared in coding/bytes.h.

}  // namespace bb
