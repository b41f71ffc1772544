#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace bb {
// Writes to "<path>.tmp.<pid>" and renames over path, so readers never see a half-written file.
void write_file_atomic(const std::string& path, const void* data, size_t n);
inline void write_file_atomic(const std::string& path, const std::string& s) {
  write_file_atomic(path, s.data(), s.size());
}
std::vector<unsigned char> read_file_bytes(const std::string& path);  // throws bb::Error
std::string read_file_text(const std::string& path);
}  // namespace bb
