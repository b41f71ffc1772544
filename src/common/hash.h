// Content hashes (run IDs, cache keys, weights identity) and the .bbz checksum.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bb {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(const std::string& s) { update(s.data(), s.size()); }
  std::string hex();  // finalises
 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(const std::string& data);
std::string sha256_file(const std::string& path);  // throws bb::Error if unreadable

uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

}  // namespace bb
