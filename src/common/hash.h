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

// The one seed mixer: a well-spread 64-bit seed for stream `index` of `seed` (SplitMix64's
// finaliser of seed * golden + index + constant). Deterministic per (seed, index); drives dataset
// sampling and augmentation (data/) and every derived seed of the methods (e.g. PQ's per-layer
// streams). Changing it changes the bytes of every method that uses it.
inline uint64_t mix_seed(uint64_t seed, uint64_t index) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace bb
