// Per-layer cache files (results/cache: the Hessian diagonals of quant/hessian.h, gptq's
// allocation candidates): str magic, str key, varint layer count, then per layer its str name and
// an entry the caller writes and reads. Writing is atomic. Reading checks the magic, the key, the
// layer count, every layer's name and that nothing trails the last entry; any mismatch (a
// truncated or foreign file) is an error naming the file, never a silent re-use.
#pragma once
#include "coding/bytes.h"

#include <functional>
#include <string>
#include <vector>

namespace bb {

void write_layer_cache(const std::string& path, const std::string& magic, const std::string& key,
                       const std::vector<std::string>& layers,
                       const std::function<void(ByteWriter&, size_t layer)>& entry);

// false when the file is absent. `what` names the cache in errors ("hessian cache"); `entry`
// reads one layer's entry (its own checks may name the file through `what` + path too).
bool read_layer_cache(const std::string& path, const std::string& what, const std::string& magic,
                      const std::string& key, const std::vector<std::string>& layers,
                      const std::function<void(ByteReader&, size_t layer)>& entry);

}  // namespace bb
