// Weights files: torch.save'd plain Python dicts {name: tensor} (what torch::pickle_load reads),
// written back in the same format so PyTorch and bitbench read each other's files.
#pragma once
#include "models/model.h"

#include <map>
#include <string>

namespace bb {

using StateDict = std::map<std::string, torch::Tensor>;

// Throws bb::Error naming the file. libtorch's unpickler cannot read a dict with exactly one entry
// (Python pickles it with the SETITEM opcode), so such a file is refused with that explanation.
StateDict read_state_dict(const std::string& path);
void write_state_dict(const StateDict& sd, const std::string& path);  // atomic (temp + rename)

// Strict load: every parameter/buffer of the model must be present with its exact shape, and no
// extra key may exist; all problems are reported in one error naming each tensor (with both shapes
// for a mis-shaped one), and the model is left untouched. The one tolerated difference: BN's `num_batches_tracked` (unused in
// evaluation) may be missing, as akamaster's files omit it.
void load_state_dict(Model& model, const StateDict& sd, const std::string& origin);
void load_weights(Model& model, const std::string& path);

}  // namespace bb
