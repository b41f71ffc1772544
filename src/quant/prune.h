// Magnitude pruning and the coding of which positions survive it.
//
// Positions are coded as in Deep Compression (Han et al. 2016): as differences between the
// indices of consecutive kept weights, entropy coded. The alphabet is bounded by `alphabet`:
//   symbol s < alphabet-1   s pruned positions, then one kept position
//   symbol alphabet-1       alphabet-1 pruned positions, no kept one (a gap too long for one symbol)
// Pruned positions after the last kept one are implied by the tensor size. (Deep Compression
// instead inserts a filler zero weight that also takes a value index; the escape symbol does the
// same job without a value.)
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace bb {

// Keep masks (bool, shaped like each weight) keeping the `keep` fraction of largest-|w| weights:
// scope "layer" keeps round(keep * numel) in every layer (at least 1), "network" applies one
// magnitude threshold to all layers together. Ties at the threshold are broken by position, so
// the kept count is exact and the result deterministic.
std::vector<torch::Tensor> magnitude_prune_masks(const std::vector<torch::Tensor>& weights, double keep,
                                                 const std::string& scope);

// mask (n flags, nonzero = kept) -> run symbols < alphabet (alphabet >= 2).
std::vector<uint32_t> mask_to_runs(const std::vector<uint8_t>& mask, uint32_t alphabet);
// Inverse; throws bb::Error if the runs overrun n positions or a symbol is out of range.
std::vector<uint8_t> runs_to_mask(const std::vector<uint32_t>& runs, int64_t n, uint32_t alphabet);

}  // namespace bb
