// What a compression method hands to the container: per compressed layer, a list of byte
// sections, each tagged with the accounting component it belongs to. Bits are counted from these
// bytes as the container serialises them (coding/bbz.h), never from formulas.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bb {

// Accounting components of the per-layer / per-component breakdown.
enum class Component : uint8_t {
  indices = 0,   // index / level streams (fixed-width, Huffman or rANS coded)
  codebook = 1,  // codebooks, centroids, transform bases
  side = 2,      // scales, step sizes, bit allocations, lookup tables
};
const char* component_name(Component c);

struct Section {
  std::string name;  // method-defined, e.g. "idx", "centroids"
  Component component = Component::side;
  std::vector<uint8_t> bytes;
};

// The method's own estimate of its size (what papers report), shown beside the real bytes.
struct SizeEstimate {
  double index_bits = 0;        // e.g. n_subvectors * log2(k), or entropy * n
  double codebook_bits = 0;     // e.g. k * d * 16 for fp16 centroids
  double side_bits = 0;
  int64_t codebook_values = 0;  // scalar values in codebooks/bases (papers' fp16/fp32 conventions)
  double fixed_index_bits = 0;  // index bits if stored fixed-width without entropy coding
};

struct LayerRecord {
  std::string layer;             // layer name (state-dict prefix); the weight is "<layer>.weight"
  std::string method;            // registered method name that decodes it
  std::vector<int64_t> shape;    // weight shape
  std::vector<Section> sections;
  SizeEstimate estimate;

  const Section& section(const std::string& name) const;  // throws bb::Error naming layer+section
  Section& add(const std::string& name, Component c, std::vector<uint8_t> bytes);
};

}  // namespace bb
