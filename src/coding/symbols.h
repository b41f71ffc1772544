// Index / level streams. Three coders behind one self-describing stream format:
//   fixed    ceil(log2(alphabet)) bits per symbol, packed (8-bit symbols are plain bytes: the
//            byte-aligned storage of Stock et al.)
//   huffman  canonical Huffman (Choi et al., Deep Compression); the code-length table is stored
//   rans     static rANS, near the empirical entropy; the frequency table is stored
// Every stream records its coder, count and alphabet, so decode needs nothing else.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bb {

enum class Coder : uint8_t { fixed = 0, huffman = 1, rans = 2 };
Coder parse_coder(const std::string& name);  // "fixed" | "huffman" | "rans"; bb::Error otherwise
const char* coder_name(Coder c);

// alphabet: symbols are < alphabet (checked). Empty input is allowed.
std::vector<uint8_t> encode_symbols(const std::vector<uint32_t>& syms, uint32_t alphabet, Coder coder);
// Throws bb::Error on any corruption (never reads out of bounds, never loops forever).
// max_count: the most symbols the caller expects (a decoder passes what its record's shape
// allows); a stream declaring more is rejected before anything is allocated, so a tiny file
// cannot claim 2^28 zero-bit symbols. The default (2^28 per stream) is for trusted input.
std::vector<uint32_t> decode_symbols(const uint8_t* data, size_t n, uint64_t max_count = 1ull << 28);
inline std::vector<uint32_t> decode_symbols(const std::vector<uint8_t>& v, uint64_t max_count = 1ull << 28) {
  return decode_symbols(v.data(), v.size(), max_count);
}

// Where a stream's bits go (decodes the stream; throws like decode_symbols). The three parts sum
// to 8 * n: header = coder, count, alphabet; table = code lengths / frequencies (with their
// size fields); payload = the coded symbols, padding included.
struct SymbolStreamInfo {
  Coder coder = Coder::fixed;
  uint64_t count = 0;
  uint32_t alphabet = 0;
  uint64_t header_bits = 0, table_bits = 0, payload_bits = 0;
  int rans_scale_bits = 0;         // rans: frequencies sum to 2^rans_scale_bits
  bool rans_length_table = false;  // rans: dyadic frequencies stored as code lengths
  int rans_ways = 0;               // rans: interleaved states (2, 4, 8 or 16)
  int huffman_lanes = 0;           // huffman: interleaved bit streams (1, 2, 4 or 8)
};
SymbolStreamInfo inspect_symbols(const uint8_t* data, size_t n);
inline SymbolStreamInfo inspect_symbols(const std::vector<uint8_t>& v) { return inspect_symbols(v.data(), v.size()); }

// n * H(p) in bits, p the empirical distribution of syms.
double empirical_entropy_bits(const std::vector<uint32_t>& syms, uint32_t alphabet);
// Bits per symbol of fixed-width coding: ceil(log2(alphabet)), 0 for alphabet <= 1.
int fixed_width_bits(uint32_t alphabet);

}  // namespace bb
