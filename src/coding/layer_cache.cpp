#include "coding/layer_cache.h"

#include "common/error.h"
#include "common/fs_util.h"

#include <filesystem>

namespace bb {

void write_layer_cache(const std::string& path, const std::string& magic, const std::string& key,
                       const std::vector<std::string>& layers,
                       const std::function<void(ByteWriter&, size_t layer)>& entry) {
  ByteWriter w;
  w.str(magic);
  w.str(key);
  w.varint(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    w.str(layers[l]);
    entry(w, l);
  }
  write_file_atomic(path, w.data().data(), w.size());
}

bool read_layer_cache(const std::string& path, const std::string& what, const std::string& magic,
                      const std::string& key, const std::vector<std::string>& layers,
                      const std::function<void(ByteReader&, size_t layer)>& entry) {
  if (!std::filesystem::exists(path)) return false;
  const auto bytes = read_file_bytes(path);
  ByteReader r(bytes.data(), bytes.size(), what + " " + path);
  BB_CHECK(r.str() == magic, what, " ", path, ": bad magic");
  BB_CHECK(r.str() == key, what, " ", path, ": key mismatch");
  BB_CHECK(r.varint() == layers.size(), what, " ", path, ": layer count mismatch");
  for (size_t l = 0; l < layers.size(); ++l) {
    BB_CHECK(r.str() == layers[l], what, " ", path, ": layer name mismatch at '", layers[l], "'");
    entry(r, l);
  }
  BB_CHECK(r.done(), what, " ", path, ": trailing bytes");
  return true;
}

}  // namespace bb
