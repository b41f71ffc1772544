// Weights files: torch.save'd plain Python dicts {name: tensor} (what torch::pickle_load reads),
// written back in the same format so PyTorch and bitbench read each other's files.
#pragma once
#include "models/model.h"

#include <map>
#include <string>

namespace bb {

using StateDict = std::map<std::string, torch::Tensor>;

StateDict read_state_dict(const std::string& path);  // throws bb::Error naming the file
void write_state_dict(const StateDict& sd, const std::string& path);  // atomic (temp + rename)

// Strict load: every parameter/buffer of the model must be present with its exact shape, and no
// extra key may exist. The one tolerated difference: BN's `num_batches_tracked` (unused in
// evaluation) may be missing, as akamaster's files omit it.
void load_state_dict(Model& model, const StateDict& sd, const std::string& origin);
void load_weights(Model& model, const std::string& path);

}  // namespace bb
