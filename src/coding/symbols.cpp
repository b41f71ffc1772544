// Symbol streams (docs/FORMAT.md, "Symbol streams"). Layout of every stream:
//   u8 coder (bits 0-3; bits 4-5: huffman lane field) | varint count | varint alphabet |
//   coder-specific table | payload
// fixed:   payload = count * ceil(log2 alphabet) bits, LSB-first (8-bit symbols = plain bytes).
// huffman: varint S, then one LSB-first bit stream: code-length table (int-seq, below) followed by
//          the codes (canonical, bit-reversed so a decoder can index a table with the next bits).
//          With L = 1 << lane field > 1: varint S, L - 1 varint lane byte sizes, the table
//          padded to a byte, then L byte-aligned bit streams; symbol i is in lane i mod L.
// rans:    varint S, u8 scale byte (bits 0-4 scale; bits 5-6 f: 2 << f interleaved states; 0x80:
//          the table holds code lengths l, frequency 2^(scale-l)), frequency table (int-seq,
//          byte-aligned), then 32-bit words of the interleaved 64-bit-state rANS coders (32-bit
//          renormalisation).
// S = largest used symbol + 1; the tables list one value per symbol < S (0 = unused).
// A stream with a single distinct symbol has no payload (the symbol costs 0 bits).
#include "coding/symbols.h"
#include "coding/bytes.h"
#include "common/bits.h"
#include "common/error.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <queue>

namespace bb {

namespace {

// Limits, enforced on encode and decode (so a method can never write what cannot be read, and a
// corrupt count cannot make the decoder allocate without bound).
constexpr uint64_t kMaxSymbols = 1ull << 28;         // per stream (largest CNN layer: ~1e8)
constexpr uint32_t kMaxEntropyAlphabet = 1u << 24;   // huffman / rans alphabet
constexpr uint32_t kMaxUsedSymbols = 1u << 20;       // distinct symbols for huffman / rans
constexpr int kMaxCodeLen = 20;                      // huffman code-length limit (>= log2 used)
constexpr int kRootBits = 13;                        // first-level Huffman decode table bits
// Huffman lanes: symbol i goes to lane i mod L, each lane its own byte-aligned bit stream, so the
// decoder runs L independent table-lookup chains. L = 1 << field, the field in bits 4-5 of the
// coder byte (0: one stream, the original layout). Each extra lane costs a size varint and up to
// 7 padding bits (<= 39 bits): lanes only when that is <= 0.1% of the payload.
constexpr uint8_t kCoderMask = 0x0f, kLaneShift = 4;
constexpr int kHuffmanLaneField = 2;  // 4 lanes
constexpr double kLaneCostBits = 39;
constexpr int kRansMaxScale = 20;                    // rans frequency total <= 2^20
constexpr int kRansScaleSlack = 4;                   // scales tried: up to log2(used) + 4 (>= 16)
constexpr uint64_t kRansL = 1ull << 31;              // rans state lower bound
constexpr uint8_t kRansLengthTable = 0x80;           // scale-byte flag: table holds code lengths
// Interleaved rans states: 2 << field, the field in bits 5-6 of the scale byte (0 = 2 states, the
// original layout). More states let the decoder overlap more table lookups (bench_coding, one
// run: 4 states decode 1.4-1.5x faster than 2 on the 256- and 4,096-symbol sources, no faster on
// 16 symbols; 8 states 2.3x faster on a 2^20-slot table); each state costs 8 flushed bytes, so
// the encoder adds states only while they cost <= 0.1% of the payload.
constexpr uint8_t kRansWaysShift = 5, kRansWaysMask = 0x60, kRansScaleMask = 0x1f;
constexpr int kRansBigTableScale = 17;  // from 2^17 slots (>= 256 KiB of 16-bit entries): 8 states

// ---------------------------------------------------------------------------------------------
// LSB-first bit I/O.

class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>& out) : out_(out) {}
  // v must fit in `bits` (<= 32) bits.
  void put(uint64_t v, int bits) {
    acc_ |= v << n_;
    n_ += bits;
    if (n_ >= 32) {
      uint32_t w = (uint32_t)acc_;
      uint8_t b[4];
      std::memcpy(b, &w, 4);
      out_.insert(out_.end(), b, b + 4);
      acc_ >>= 32;
      n_ -= 32;
    }
  }
  // Pads the last byte with zero bits.
  void flush() {
    while (n_ > 0) {
      out_.push_back((uint8_t)acc_);
      acc_ >>= 8;
      n_ -= 8;
    }
    acc_ = 0;
    n_ = 0;
  }
  uint64_t bits_written() const { return (uint64_t)out_.size() * 8 + n_; }

 private:
  std::vector<uint8_t>& out_;
  uint64_t acc_ = 0;
  int n_ = 0;
};

// Reads past the end return zero bits (never memory past the end); finish() then rejects the
// stream. Every decode loop runs a bounded number of steps, so corrupt input cannot loop forever.
#define BB_INLINE inline __attribute__((always_inline))

class BitReader {
 public:
  BitReader() = default;
  BitReader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  // Guarantees >= 56 buffered bits.
  BB_INLINE void refill() {
    if (pos_ + 8 <= n_) {
      uint64_t v;
      std::memcpy(&v, p_ + pos_, 8);  // little-endian host (x86-64 / aarch64)
      buf_ |= v << bits_;
      pos_ += (63 - bits_) >> 3;
      bits_ |= 56;  // bits_ + 8 * bytes taken == 56 + (bits_ & 7)
    } else {
      while (bits_ <= 56) {
        uint64_t b = pos_ < n_ ? p_[pos_] : 0;
        buf_ |= b << bits_;
        ++pos_;
        bits_ += 8;
      }
    }
  }
  BB_INLINE uint32_t peek(int k) const { return (uint32_t)(buf_ & ((1ull << k) - 1)); }
  BB_INLINE void consume(int k) {
    buf_ >>= k;
    bits_ -= k;
  }
  uint32_t get(int k) {  // k <= 32
    if (bits_ < k) refill();
    uint32_t v = peek(k);
    consume(k);
    return v;
  }
  int buffered() const { return bits_; }
  uint64_t bits_consumed() const { return (uint64_t)pos_ * 8 - bits_; }
  // The stream must end in the last byte that holds a consumed bit.
  void finish(const char* what) const {
    uint64_t used = bits_consumed();
    BB_CHECK(used <= (uint64_t)n_ * 8, "corrupt ", what, " stream: reads ", used, " bits past its ",
             n_, " bytes");
    BB_CHECK((used + 7) / 8 == n_, "corrupt ", what, " stream: ", n_ - (used + 7) / 8,
             " trailing bytes");
  }

 private:
  const uint8_t* p_ = nullptr;
  size_t n_ = 0;
  size_t pos_ = 0;  // bytes loaded into buf_ (may run past n_: those bytes read as zero)
  uint64_t buf_ = 0;
  int bits_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Huffman code lengths and canonical codes.

// Optimal code lengths for `counts` (0 = unused), limited to max_len. One used symbol gets
// length 1 (it is then coded with 0 bits). Deterministic: ties broken by symbol index.
std::vector<uint8_t> huffman_lengths(const std::vector<uint32_t>& counts, int max_len) {
  std::vector<uint8_t> len(counts.size(), 0);
  std::vector<uint32_t> used;
  for (uint32_t s = 0; s < counts.size(); ++s)
    if (counts[s]) used.push_back(s);
  const size_t m = used.size();
  if (m == 0) return len;
  if (m == 1) {
    len[used[0]] = 1;
    return len;
  }
  BB_CHECK(m <= (1ull << max_len), "huffman: ", m, " distinct symbols exceed the ", max_len,
           "-bit code-length limit");
  std::sort(used.begin(), used.end(), [&](uint32_t a, uint32_t b) {
    return counts[a] != counts[b] ? counts[a] < counts[b] : a < b;
  });
  // Two-queue Huffman over leaves sorted by weight: internal nodes are created in nondecreasing
  // weight order, so the smallest two are always at the queue fronts.
  std::vector<uint64_t> weight(2 * m - 1);
  std::vector<uint32_t> parent(2 * m - 1, 0);
  for (size_t i = 0; i < m; ++i) weight[i] = counts[used[i]];
  size_t leaf = 0, inner = m;
  auto pop = [&](size_t next_inner) {
    if (leaf < m && (inner >= next_inner || weight[leaf] <= weight[inner])) return leaf++;
    return inner++;
  };
  for (size_t k = m; k < 2 * m - 1; ++k) {
    size_t a = pop(k), b = pop(k);
    weight[k] = weight[a] + weight[b];
    parent[a] = parent[b] = (uint32_t)k;
  }
  std::vector<uint32_t> depth(2 * m - 1, 0);
  for (size_t k = 2 * m - 1; k-- > 0;)
    if (k != 2 * m - 2) depth[k] = depth[parent[k]] + 1;
  uint32_t max_depth = 0;
  for (size_t i = 0; i < m; ++i) max_depth = std::max(max_depth, depth[i]);
  std::vector<uint64_t> nlen(std::max<uint32_t>(max_depth, max_len) + 1, 0);
  for (size_t i = 0; i < m; ++i) ++nlen[depth[i]];
  // Length limiting on the length histogram (JPEG Annex K.3 style): a pair at the deepest level
  // i > max_len becomes one leaf at i-1, and a leaf at the deepest level j < i-1 becomes two at
  // j+1. Each step keeps the Kraft sum at exactly 1, so the code stays complete.
  for (uint32_t i = max_depth; i > (uint32_t)max_len; --i) {
    while (nlen[i] > 0) {
      int j = (int)i - 2;
      while (j > 0 && nlen[j] == 0) --j;
      BB_CHECK(j > 0 && nlen[i] >= 2, "huffman: length limiting failed");
      nlen[i] -= 2;
      nlen[i - 1] += 1;
      nlen[j + 1] += 2;
      nlen[j] -= 1;
    }
  }
  // Rarest symbols get the longest codes.
  size_t i = 0;
  for (int l = max_len; l >= 1; --l)
    for (uint64_t c = 0; c < nlen[l]; ++c) len[used[i++]] = (uint8_t)l;
  return len;
}

// The low n bits of v, reversed (n in [1, 32]); a word-wide swap network, not a bit loop (table
// set-up for 2^16-codeword codes was ~10% of their decode time).
uint32_t reverse_bits(uint32_t v, int n) {
  v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
  v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
  v = ((v >> 4) & 0x0f0f0f0fu) | ((v & 0x0f0f0f0fu) << 4);
  v = ((v >> 8) & 0x00ff00ffu) | ((v & 0x00ff00ffu) << 8);
  v = (v >> 16) | (v << 16);
  return v >> (32 - n);
}

// Canonical prefix code from lengths (0 = unused): codes assigned in (length, symbol) order.
struct CanonicalCode {
  int max_len = 0;
  size_t used = 0;
  std::vector<uint32_t> rev_code;        // per symbol: code, bit-reversed (first bit in the LSB)
  std::vector<uint8_t> len;              // per symbol
  std::vector<uint32_t> count_by_len;    // [0..max_len]
  std::vector<uint32_t> sorted;          // symbols in (length, symbol) order

  // Builds the code; throws if the lengths over-subscribe the code space. complete is set when
  // the Kraft sum is exactly 1.
  CanonicalCode(const std::vector<uint8_t>& lengths, int limit, const char* what, bool* complete) {
    len = lengths;
    count_by_len.assign(limit + 1, 0);
    for (uint8_t l : lengths) {
      BB_CHECK(l <= limit, "corrupt ", what, ": code length ", (int)l, " > ", limit);
      if (l) {
        ++count_by_len[l];
        ++used;
        max_len = std::max(max_len, (int)l);
      }
    }
    uint64_t kraft = 0;  // in units of 2^-limit
    for (int l = 1; l <= limit; ++l) kraft += (uint64_t)count_by_len[l] << (limit - l);
    BB_CHECK(kraft <= (1ull << limit), "corrupt ", what, ": over-subscribed code lengths");
    *complete = kraft == (1ull << limit);
    std::vector<uint32_t> next(limit + 2, 0);
    uint32_t code = 0;
    for (int l = 1; l <= limit; ++l) {
      code = (code + count_by_len[l - 1]) << 1;
      next[l] = code;
    }
    next[0] = 0;
    rev_code.assign(lengths.size(), 0);
    std::vector<uint32_t> start(limit + 1, 0);
    for (int l = 1; l <= limit; ++l) start[l] = start[l - 1] + count_by_len[l - 1];
    // count_by_len[0] counts nothing (unused symbols are not counted), so start[1] == 0.
    sorted.assign(used, 0);
    for (uint32_t s = 0; s < lengths.size(); ++s) {
      int l = lengths[s];
      if (!l) continue;
      rev_code[s] = reverse_bits(next[l]++, l);
      sorted[start[l]++] = s;
    }
  }
};

// Two-level decode table for a complete code. Entry: symbol << 8 | length (bit 7 clear), or,
// for a root slot whose codes are longer than the root: offset << 8 | 0x80 | sub-table bits.
class FastDecoder {
 public:
  explicit FastDecoder(const CanonicalCode& c) {
    root_ = std::min(c.max_len, kRootBits);
    const uint32_t root_size = 1u << root_;
    table_.assign(root_size, 0);
    // Sub-table depth per root slot: longest code sharing that root prefix.
    std::vector<uint8_t> sub_bits(root_size, 0);
    for (uint32_t s = 0; s < c.len.size(); ++s) {
      int l = c.len[s];
      if (l > root_) {
        uint32_t p = c.rev_code[s] & (root_size - 1);
        sub_bits[p] = std::max<uint8_t>(sub_bits[p], (uint8_t)(l - root_));
      }
    }
    for (uint32_t p = 0; p < root_size; ++p) {
      if (!sub_bits[p]) continue;
      table_[p] = ((uint32_t)table_.size() << 8) | 0x80 | sub_bits[p];
      table_.resize(table_.size() + (1u << sub_bits[p]), 0);
    }
    for (uint32_t s = 0; s < c.len.size(); ++s) {
      int l = c.len[s];
      if (!l) continue;
      uint32_t r = c.rev_code[s];
      uint32_t entry = (s << 8) | (uint32_t)l;
      if (l <= root_) {
        for (uint32_t k = r; k < root_size; k += 1u << l) table_[k] = entry;
      } else {
        uint32_t link = table_[r & (root_size - 1)];
        uint32_t base = link >> 8, bits = link & 31;
        for (uint32_t k = r >> root_; k < (1u << bits); k += 1u << (l - root_)) table_[base + k] = entry;
      }
    }
  }

  // One code; the reader must hold >= 20 bits.
  BB_INLINE uint32_t one(BitReader& r) const {
    const uint32_t* t = table_.data();
    uint32_t e = t[r.peek(32) & ((1u << root_) - 1)];
    if (e & 0x80) e = t[(e >> 8) + ((r.peek(32) >> root_) & ((1u << (e & 31)) - 1))];
    r.consume(e & 31);
    return e >> 8;
  }

  void decode(BitReader& r, uint32_t* out, uint64_t n) const {
    uint64_t i = 0;
    // After a refill >= 56 bits are buffered: two codes of <= 20 bits each fit.
    for (; i + 2 <= n; i += 2) {
      r.refill();
      out[i] = one(r);
      out[i + 1] = one(r);
    }
    if (i < n) {
      r.refill();
      out[i] = one(r);
    }
  }

  // Symbol i from lane i mod L: L independent chains of lookups.
  template <int L>
  void decode_lanes(BitReader* lanes, uint32_t* out, uint64_t n) const {
    BitReader r[L];  // local copies: registers, not memory the output stores might alias
    for (int l = 0; l < L; ++l) r[l] = lanes[l];
    uint64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
#pragma GCC unroll 8
      for (int l = 0; l < L; ++l) r[l].refill();
#pragma GCC unroll 8
      for (int l = 0; l < L; ++l) out[i + l] = one(r[l]);
#pragma GCC unroll 8
      for (int l = 0; l < L; ++l) out[i + L + l] = one(r[l]);
    }
    for (; i < n; ++i) {
      BitReader& ri = r[i % L];
      ri.refill();
      out[i] = one(ri);
    }
    for (int l = 0; l < L; ++l) lanes[l] = r[l];
  }

 private:
  int root_ = 0;
  std::vector<uint32_t> table_;
};

// ---------------------------------------------------------------------------------------------
// int-seq: a sequence of unsigned ints (code lengths, frequencies), mostly small, with runs of
// zeros (unused symbols). Tokens: 0 = a run of >= 3 zeros, its length Elias-gamma coded;
// 1 + v for a literal v < 32 (covers every Huffman code length); 33 + (b - 5) for b = 5..31: a
// value in [2^b, 2^(b+1)) followed by its low b bits. The tokens are Huffman coded; their code
// lengths (<= 15) come first: 6 bits T = number of token lengths stored, then T x 4 bits.

constexpr int kTokZeroRun = 0;
constexpr int kNumLiterals = 32;
constexpr int kTokFirstBucket = 1 + kNumLiterals;
constexpr int kNumTokens = kTokFirstBucket + 27;
constexpr int kTokMaxLen = 15;

void put_gamma(BitWriter& w, uint64_t v) {  // v in [1, 2^32)
  int nb = 63 - __builtin_clzll(v);
  w.put(0, nb);
  w.put(1, 1);
  w.put(v & ((1ull << nb) - 1), nb);
}
uint64_t get_gamma(BitReader& r, const char* what) {
  int nb = 0;
  while (r.get(1) == 0)
    BB_CHECK(++nb < 32, "corrupt ", what, ": bad run length");
  return (1ull << nb) | r.get(nb);
}

void put_int_seq(BitWriter& w, const std::vector<uint32_t>& v) {
  struct Tok { int tok; uint32_t extra; int extra_bits; };
  std::vector<Tok> toks;
  for (size_t i = 0; i < v.size();) {
    if (v[i] == 0) {
      size_t j = i;
      while (j < v.size() && v[j] == 0) ++j;
      if (j - i >= 3) {
        toks.push_back({kTokZeroRun, (uint32_t)(j - i), -1});
        i = j;
        continue;
      }
    }
    uint32_t x = v[i++];
    if (x < (uint32_t)kNumLiterals) {
      toks.push_back({1 + (int)x, 0, 0});
    } else {
      int b = 31 - __builtin_clz(x);
      toks.push_back({kTokFirstBucket + b - 5, x & ((1u << b) - 1), b});
    }
  }
  std::vector<uint32_t> freq(kNumTokens, 0);
  for (const Tok& t : toks) ++freq[t.tok];
  std::vector<uint8_t> lens = huffman_lengths(freq, kTokMaxLen);
  int T = 0;
  for (int t = 0; t < kNumTokens; ++t)
    if (lens[t]) T = t + 1;
  w.put(T, 6);
  for (int t = 0; t < T; ++t) w.put(lens[t], 4);
  bool complete;
  CanonicalCode code(lens, kTokMaxLen, "int-seq", &complete);
  const bool zero_bit = code.used == 1;  // a single token kind costs no bits
  for (const Tok& t : toks) {
    if (!zero_bit) w.put(code.rev_code[t.tok], lens[t.tok]);
    if (t.extra_bits < 0)
      put_gamma(w, t.extra);
    else if (t.extra_bits > 0)
      w.put(t.extra, t.extra_bits);
  }
}

std::vector<uint32_t> get_int_seq(BitReader& r, uint64_t count, const char* what) {
  int T = (int)r.get(6);
  BB_CHECK(T <= kNumTokens, "corrupt ", what, ": ", T, " token lengths");
  std::vector<uint8_t> lens(kNumTokens, 0);
  for (int t = 0; t < T; ++t) lens[t] = (uint8_t)r.get(4);
  bool complete;
  CanonicalCode code(lens, kTokMaxLen, what, &complete);
  BB_CHECK(code.used >= 1 && (complete || code.used == 1), "corrupt ", what, ": bad token code");
  uint32_t single = 0;
  for (int t = 0; t < kNumTokens; ++t)
    if (lens[t]) single = t;
  std::optional<FastDecoder> fast;
  if (code.used > 1) fast.emplace(code);
  std::vector<uint32_t> v;
  v.reserve(std::min<uint64_t>(count, 1u << 16));
  while (v.size() < count) {
    int tok = (int)single;
    if (fast) {
      if (r.buffered() < kTokMaxLen) r.refill();
      tok = (int)fast->one(r);
    }
    if (tok == kTokZeroRun) {
      uint64_t run = get_gamma(r, what);
      BB_CHECK(run <= count - v.size(), "corrupt ", what, ": zero run past the end");
      v.resize(v.size() + run, 0);
    } else if (tok < kTokFirstBucket) {
      v.push_back((uint32_t)(tok - 1));
    } else {
      int b = tok - kTokFirstBucket + 5;
      v.push_back((1u << b) | r.get(b));
    }
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Stream header.

struct Header {
  Coder coder;
  int lane_field = 0;  // huffman: 1 << lane_field lanes
  uint64_t count;
  uint32_t alphabet;
};

void put_header(ByteWriter& w, Coder c, uint64_t count, uint32_t alphabet) {
  w.u8((uint8_t)c);
  w.varint(count);
  w.varint(alphabet);
}

Header get_header(ByteReader& r) {
  Header h;
  const uint8_t byte = r.u8();
  const uint8_t c = byte & kCoderMask;
  BB_CHECK(c <= (uint8_t)Coder::rans, "corrupt symbol stream: unknown coder id ", (int)c);
  h.coder = (Coder)c;
  h.lane_field = byte >> kLaneShift;
  // Only the layouts an encoder writes decode: one stream, or 4 Huffman lanes (fields 1 and 3,
  // 2 and 8 lanes, are reserved, like the rANS state-count field 3).
  BB_CHECK(h.lane_field == 0 || (h.coder == Coder::huffman && h.lane_field == kHuffmanLaneField),
           "corrupt symbol stream: coder byte ", (int)byte);
  h.count = r.varint();
  BB_CHECK(h.count <= kMaxSymbols, "corrupt symbol stream: count ", h.count, " > limit ", kMaxSymbols);
  uint64_t a = r.varint();
  BB_CHECK(a <= 0xffffffffull, "corrupt symbol stream: alphabet ", a, " out of range");
  h.alphabet = (uint32_t)a;
  BB_CHECK(h.count == 0 || h.alphabet >= 1, "corrupt symbol stream: empty alphabet");
  return h;
}

// Histogram over [0, max symbol]; also checks every symbol < alphabet.
std::vector<uint32_t> histogram(const std::vector<uint32_t>& syms, uint32_t alphabet) {
  uint32_t mx = 0;
  for (uint32_t s : syms) {
    if (s >= alphabet) BB_THROW("symbol ", s, " out of range for alphabet ", alphabet);
    mx = std::max(mx, s);
  }
  std::vector<uint32_t> h(syms.empty() ? 0 : (size_t)mx + 1, 0);
  for (uint32_t s : syms) ++h[s];
  return h;
}

// ---------------------------------------------------------------------------------------------
// fixed

void encode_fixed(ByteWriter& w, const std::vector<uint32_t>& syms, uint32_t alphabet) {
  const int b = fixed_width_bits(alphabet);
  std::vector<uint8_t> payload;
  payload.reserve((syms.size() * b + 7) / 8);
  if (b == 8) {
    for (uint32_t s : syms) payload.push_back((uint8_t)s);
  } else if (b > 0) {
    BitWriter bw(payload);
    for (uint32_t s : syms) bw.put(s, b);
    bw.flush();
  }
  w.raw(payload.data(), payload.size());
}

void decode_fixed(ByteReader& r, const Header& h, std::vector<uint32_t>& out) {
  const int b = fixed_width_bits(h.alphabet);
  const uint64_t need = (h.count * b + 7) / 8;
  BB_CHECK(r.remaining() == need, "corrupt fixed-width symbol stream: ", r.remaining(),
           " payload bytes, expected ", need);
  out.resize(h.count);
  const uint8_t* p = r.ptr();
  if (b == 0) {
    std::fill(out.begin(), out.end(), 0u);
  } else if (b == 8) {
    for (uint64_t i = 0; i < h.count; ++i) out[i] = p[i];
  } else {
    BitReader br(p, r.remaining());
    const uint32_t mask = (uint32_t)((1ull << b) - 1);
    for (uint64_t i = 0; i < h.count; ++i) {
      if (br.buffered() < b) br.refill();
      out[i] = br.peek(32) & mask;
      br.consume(b);
    }
  }
  r.skip(need);
  if ((h.alphabet & (h.alphabet - 1)) != 0)  // not a power of two: values >= alphabet possible
    for (uint32_t s : out)
      BB_CHECK(s < h.alphabet, "corrupt fixed-width symbol stream: symbol ", s, " >= alphabet ",
               h.alphabet);
}

// ---------------------------------------------------------------------------------------------
// huffman

void check_entropy_alphabet(uint32_t alphabet, const char* coder) {
  BB_CHECK(alphabet <= kMaxEntropyAlphabet, coder, " coder: alphabet ", alphabet, " exceeds 2^24");
}

// Returns the lane field for the coder byte.
int encode_huffman(ByteWriter& w, const std::vector<uint32_t>& syms, uint32_t alphabet) {
  check_entropy_alphabet(alphabet, "huffman");
  if (syms.empty()) return 0;
  std::vector<uint32_t> hist = histogram(syms, alphabet);
  std::vector<uint8_t> lens = huffman_lengths(hist, kMaxCodeLen);
  w.varint(hist.size());
  bool complete;
  CanonicalCode code(lens, kMaxCodeLen, "huffman", &complete);
  double payload_bits = 0;
  if (code.used > 1)
    for (size_t s = 0; s < hist.size(); ++s) payload_bits += (double)hist[s] * lens[s];
  const int lanes = 1 << kHuffmanLaneField;
  if (payload_bits * 1e-3 < kLaneCostBits * (lanes - 1)) {  // one stream: table, then the codes
    std::vector<uint8_t> bits;
    BitWriter bw(bits);
    put_int_seq(bw, std::vector<uint32_t>(lens.begin(), lens.end()));
    if (code.used > 1)
      for (uint32_t s : syms) bw.put(code.rev_code[s], lens[s]);
    bw.flush();
    w.raw(bits.data(), bits.size());
    return 0;
  }
  // Lanes: sizes of lanes 0..L-2, the table padded to a byte, then the lanes.
  std::vector<uint8_t> table;
  BitWriter tw(table);
  put_int_seq(tw, std::vector<uint32_t>(lens.begin(), lens.end()));
  tw.flush();
  std::vector<std::vector<uint8_t>> lane(lanes);
  std::vector<BitWriter> lw;
  for (auto& l : lane) lw.emplace_back(l);
  for (size_t i = 0; i < syms.size(); ++i) lw[i & (lanes - 1)].put(code.rev_code[syms[i]], lens[syms[i]]);
  for (auto& b : lw) b.flush();
  for (int l = 0; l + 1 < lanes; ++l) w.varint(lane[l].size());
  w.raw(table.data(), table.size());
  for (auto& l : lane) w.raw(l.data(), l.size());
  return kHuffmanLaneField;
}

void decode_huffman(ByteReader& r, const Header& h, std::vector<uint32_t>& out, SymbolStreamInfo* info) {
  check_entropy_alphabet(h.alphabet, "corrupt huffman stream:");
  if (h.count == 0) return;
  const size_t table_start = r.pos();
  uint64_t S = r.varint();
  BB_CHECK(S >= 1 && S <= h.alphabet, "corrupt huffman stream: table size ", S, " for alphabet ", h.alphabet);
  const int lanes = 1 << h.lane_field;
  std::vector<uint64_t> lane_bytes(lanes, 0);
  uint64_t sized = 0;
  for (int l = 0; l + 1 < lanes; ++l) {
    lane_bytes[l] = r.varint();
    sized += lane_bytes[l];
    BB_CHECK(sized <= r.remaining(), "corrupt huffman stream: lanes of ", sized, " bytes in ", r.remaining());
  }
  BitReader br(r.ptr(), r.remaining());
  std::vector<uint32_t> l32 = get_int_seq(br, S, "huffman code-length table");
  if (lanes > 1) r.skip((br.bits_consumed() + 7) / 8);  // need() inside: rejects a table read past the end
  if (info) {
    info->table_bits = (r.pos() - table_start) * 8 + (lanes > 1 ? 0 : br.bits_consumed());
    info->huffman_lanes = lanes;
  }
  std::vector<uint8_t> lens(S);
  for (uint64_t s = 0; s < S; ++s) {
    BB_CHECK(l32[s] <= (uint32_t)kMaxCodeLen, "corrupt huffman stream: code length ", l32[s]);
    lens[s] = (uint8_t)l32[s];
  }
  bool complete;
  CanonicalCode code(lens, kMaxCodeLen, "huffman stream", &complete);
  BB_CHECK(code.used >= 1, "corrupt huffman stream: no symbols");
  if (code.used == 1) {
    BB_CHECK(lanes == 1, "corrupt huffman stream: lanes for a single-symbol code");
    out.assign(h.count, code.sorted[0]);
  } else {
    BB_CHECK(complete, "corrupt huffman stream: incomplete code");
    // Every code is >= 1 bit: reject impossible counts before allocating.
    BB_CHECK(h.count <= (uint64_t)r.remaining() * 8, "corrupt huffman stream: ", h.count,
             " symbols in ", r.remaining(), " bytes");
    out.resize(h.count);
    if (lanes == 1) {
      FastDecoder(code).decode(br, out.data(), h.count);
    } else {
      BB_CHECK(sized <= r.remaining(), "corrupt huffman stream: lanes of ", sized, " bytes in ", r.remaining());
      lane_bytes[lanes - 1] = r.remaining() - sized;
      std::vector<BitReader> lr;
      size_t off = 0;
      for (int l = 0; l < lanes; ++l) {
        lr.emplace_back(r.ptr() + off, lane_bytes[l]);
        off += lane_bytes[l];
      }
      const FastDecoder dec(code);
      dec.decode_lanes<1 << kHuffmanLaneField>(lr.data(), out.data(), h.count);  // the header allows no other
      for (BitReader& l : lr) l.finish("huffman lane");
      r.skip(r.remaining());
      return;
    }
  }
  br.finish("huffman");
  r.skip(r.remaining());
}

// ---------------------------------------------------------------------------------------------
// rans

// Frequencies summing to 2^scale, every used symbol >= 1, closest to counts in coded size:
// rounding, then +-1 steps on the symbols where each step costs the fewest bits.
std::vector<uint32_t> quantize_freqs(const std::vector<uint32_t>& counts, uint64_t n, int scale) {
  const uint64_t M = 1ull << scale;
  std::vector<uint32_t> q(counts.size(), 0);
  int64_t sum = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    if (!counts[s]) continue;
    uint64_t v = ((uint64_t)counts[s] * M * 2 + n) / (2 * n);  // round(c * M / n)
    q[s] = (uint32_t)std::max<uint64_t>(1, v);
    sum += q[s];
  }
  int64_t diff = (int64_t)M - sum;
  if (diff == 0) return q;
  // Heap of (cost of the next step, symbol); lowest cost first, ties by symbol.
  using Item = std::pair<double, uint32_t>;
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
  auto step_cost = [&](uint32_t s) {
    double c = counts[s];
    if (diff > 0) return -c * std::log2((q[s] + 1.0) / q[s]);  // gain as negative cost
    return q[s] > 1 ? c * std::log2((double)q[s] / (q[s] - 1.0)) : HUGE_VAL;
  };
  for (uint32_t s = 0; s < counts.size(); ++s)
    if (counts[s]) heap.push({step_cost(s), s});
  while (diff != 0) {
    uint32_t s = heap.top().second;
    heap.pop();
    if (diff > 0) {
      ++q[s];
      --diff;
    } else {
      BB_CHECK(q[s] > 1, "rans: cannot fit frequencies into 2^", scale);
      --q[s];
      ++diff;
    }
    heap.push({step_cost(s), s});
  }
  return q;
}

void encode_rans(ByteWriter& w, const std::vector<uint32_t>& syms, uint32_t alphabet) {
  check_entropy_alphabet(alphabet, "rans");
  if (syms.empty()) return;
  const uint64_t n = syms.size();
  std::vector<uint32_t> hist = histogram(syms, alphabet);
  size_t used = 0;
  for (uint32_t c : hist) used += c > 0;
  BB_CHECK(used <= kMaxUsedSymbols, "rans: ", used, " distinct symbols exceed 2^20");
  w.varint(hist.size());
  if (used == 1) {  // zero-bit stream: scale 0, the symbol's frequency is 1 == 2^0
    w.u8(0);
    std::vector<uint32_t> f(hist.size(), 0);
    for (size_t s = 0; s < hist.size(); ++s) f[s] = hist[s] ? 1 : 0;
    std::vector<uint8_t> bits;
    BitWriter bw(bits);
    put_int_seq(bw, f);
    bw.flush();
    w.raw(bits.data(), bits.size());
    return;
  }
  // Candidate tables; the one minimising table + payload wins (payload estimated as the
  // cross-entropy of the counts under q; the coder adds only its flushed states to that).
  struct Candidate {
    uint8_t scale_byte = 0;
    std::vector<uint32_t> q;
    std::vector<uint8_t> table;
    double bits = 0;
  };
  auto make = [&](uint8_t scale_byte, int scale, std::vector<uint32_t> q, const std::vector<uint32_t>& stored) {
    Candidate c;
    c.scale_byte = scale_byte;
    BitWriter bw(c.table);
    put_int_seq(bw, stored);
    bw.flush();
    for (size_t s = 0; s < hist.size(); ++s)
      if (hist[s]) c.bits += hist[s] * (scale - std::log2((double)q[s]));
    c.bits += 8.0 * c.table.size();
    c.q = std::move(q);
    return c;
  };
  Candidate best;
  best.bits = HUGE_VAL;
  // Frequencies quantised to 2^scale. Totals beyond log2(used) + slack gain almost nothing but
  // cost decode-table cache misses.
  const int min_scale = std::max(1, ceil_log2(used));
  const int max_scale = std::min(kRansMaxScale, std::max(16, min_scale + kRansScaleSlack));
  for (int scale = min_scale; scale <= max_scale; ++scale) {
    std::vector<uint32_t> q = quantize_freqs(hist, n, scale);
    Candidate c = make((uint8_t)scale, scale, q, q);
    if (c.bits < best.bits) best = std::move(c);
  }
  // Dyadic frequencies 2^(L - length) from Huffman code lengths: the lengths are a much cheaper
  // table when the alphabet is large next to the count (big codebooks), at Huffman's payload.
  {
    std::vector<uint8_t> lens = huffman_lengths(hist, kMaxCodeLen);
    const int L = *std::max_element(lens.begin(), lens.end());
    std::vector<uint32_t> q(hist.size(), 0), stored(hist.size(), 0);
    for (size_t s = 0; s < hist.size(); ++s)
      if (lens[s]) q[s] = 1u << (L - lens[s]), stored[s] = lens[s];
    Candidate c = make((uint8_t)(kRansLengthTable | L), L, std::move(q), stored);
    if (c.bits < best.bits) best = std::move(c);
  }
  const int scale = best.scale_byte & kRansScaleMask;
  const std::vector<uint32_t>& q = best.q;
  const double payload_bits = best.bits - 8.0 * best.table.size();
  int ways = scale >= kRansBigTableScale ? 8 : 4;
  while (ways > 2 && 64.0 * (ways - 2) > 1e-3 * payload_bits) ways /= 2;
  w.u8((uint8_t)(best.scale_byte | (ceil_log2(ways) - 1) << kRansWaysShift));
  w.raw(best.table.data(), best.table.size());

  std::vector<uint32_t> cum(q.size(), 0);
  for (size_t s = 1; s < q.size(); ++s) cum[s] = cum[s - 1] + q[s - 1];
  // Encode backwards so the decoder runs forwards; words come out in reverse order. Symbol i
  // uses state i % ways (independent chains let the decoder overlap table lookups);
  // all states share one word stream, read by the decoder in the order it decodes.
  std::vector<uint32_t> words;
  words.reserve(n / 4 + 4);
  std::vector<uint64_t> x(ways);
  for (uint64_t& xi : x) xi = kRansL;
  const uint64_t x_max_base = (kRansL >> scale) << 32;
  for (uint64_t i = n; i-- > 0;) {
    uint64_t& xi = x[i & (ways - 1)];
    const uint32_t s = syms[i];
    const uint64_t f = q[s];
    if (xi >= x_max_base * f) {
      words.push_back((uint32_t)xi);
      xi >>= 32;
    }
    xi = ((xi / f) << scale) + (xi % f) + cum[s];
  }
  for (int j = ways; j-- > 0;) {  // read back as lo0, hi0, lo1, hi1, ...
    words.push_back((uint32_t)(x[j] >> 32));
    words.push_back((uint32_t)x[j]);
  }
  std::reverse(words.begin(), words.end());
  w.raw(words.data(), words.size() * 4);  // little-endian host
}

// The rANS payload decoder, W interleaved states. Two tables instead of one wide one: slot ->
// symbol (SlotT), then the symbol's frequency and cumulative start, which is small and stays in
// cache; the slot table is what the decoder's cache misses are made of (2^scale entries).
template <typename SlotT, int W>
void rans_decode_loop(const std::vector<uint32_t>& q, int scale, const std::vector<uint32_t>& words,
                      uint64_t count, uint32_t* out) {
  const uint64_t M = 1ull << scale;
  std::vector<SlotT> slot_sym(M);
  struct FreqCum {
    uint32_t freq, cum;
  };
  std::vector<FreqCum> fc(q.size());
  uint32_t cum = 0;
  for (size_t s = 0; s < q.size(); ++s) {
    fc[s] = {q[s], cum};
    std::fill_n(slot_sym.begin() + cum, q[s], (SlotT)s);
    cum += q[s];
  }
  const size_t nwords = words.size();
  const uint64_t mask = M - 1;
  uint64_t x[W];
  #pragma GCC unroll 16
  for (int j = 0; j < W; ++j) x[j] = (uint64_t)words[2 * j] | ((uint64_t)words[2 * j + 1] << 32);
  size_t pos = 2 * W;
  // A corrupt stream may ask for words past the end: rejected, never read.
  auto step = [&](uint64_t& x, uint32_t s, uint64_t i) {
    const FreqCum f = fc[s];
    x = f.freq * (x >> scale) + (x & mask) - f.cum;
    if (x < kRansL) {
      BB_CHECK(pos < nwords, "corrupt rans stream: payload ends early at symbol ", i);
      x = (x << 32) | words[pos++];
    }
  };
  uint64_t i = 0;
  for (; i + W <= count; i += W) {
    uint32_t sym[W];
    #pragma GCC unroll 16
    for (int j = 0; j < W; ++j) sym[j] = slot_sym[x[j] & mask];
    #pragma GCC unroll 16
    for (int j = 0; j < W; ++j) out[i + j] = sym[j];
    #pragma GCC unroll 16
    for (int j = 0; j < W; ++j) step(x[j], sym[j], i + j);
  }
  for (int j = 0; i < count; ++i, ++j) {
    const uint32_t s = slot_sym[x[j] & mask];
    out[i] = s;
    step(x[j], s, i);
  }
  bool final_ok = pos == nwords;
  for (int j = 0; j < W; ++j) final_ok = final_ok && x[j] == kRansL;
  BB_CHECK(final_ok, "corrupt rans stream: final state mismatch");
}

template <typename SlotT>
void rans_decode_ways(int ways, const std::vector<uint32_t>& q, int scale, const std::vector<uint32_t>& words,
                      uint64_t count, uint32_t* out) {
  switch (ways) {
    case 2: return rans_decode_loop<SlotT, 2>(q, scale, words, count, out);
    case 4: return rans_decode_loop<SlotT, 4>(q, scale, words, count, out);
    default: return rans_decode_loop<SlotT, 8>(q, scale, words, count, out);
  }
}

void decode_rans(ByteReader& r, const Header& h, std::vector<uint32_t>& out, SymbolStreamInfo* info) {
  check_entropy_alphabet(h.alphabet, "corrupt rans stream:");
  if (h.count == 0) return;
  const size_t table_start = r.pos();
  uint64_t S = r.varint();
  BB_CHECK(S >= 1 && S <= h.alphabet, "corrupt rans stream: table size ", S, " for alphabet ", h.alphabet);
  const uint8_t scale_byte = r.u8();
  const int scale = scale_byte & kRansScaleMask;
  const int way_field = (scale_byte & kRansWaysMask) >> kRansWaysShift;
  BB_CHECK(scale <= kRansMaxScale, "corrupt rans stream: scale 2^", scale);
  // Field 3 (16 states) is reserved: no encoder writes it, so it can only mean corruption.
  BB_CHECK(way_field <= 2, "corrupt rans stream: reserved state-count field ", way_field);
  const int ways = 2 << way_field;
  BitReader br(r.ptr(), r.remaining());
  std::vector<uint32_t> q = get_int_seq(br, S, "rans frequency table");
  r.skip((br.bits_consumed() + 7) / 8);  // need() inside: rejects a table read past the end
  if (scale_byte & kRansLengthTable) {  // code lengths: frequency 2^(scale - length)
    for (uint32_t& v : q) {
      BB_CHECK(v <= (uint32_t)scale, "corrupt rans stream: code length ", v, " > ", scale);
      if (v) v = 1u << (scale - v);
    }
  }
  if (info) {
    info->table_bits = (r.pos() - table_start) * 8;
    info->rans_scale_bits = scale;
    info->rans_ways = ways;
    info->rans_length_table = (scale_byte & kRansLengthTable) != 0;
  }
  const uint64_t M = 1ull << scale;
  uint64_t sum = 0;
  size_t used = 0;
  uint32_t single = 0;
  for (size_t s = 0; s < S; ++s) {
    sum += q[s];
    if (q[s]) ++used, single = (uint32_t)s;
  }
  BB_CHECK(sum == M, "corrupt rans stream: frequencies sum to ", sum, ", not 2^", scale);
  if (used == 1) {
    BB_CHECK(r.done(), "corrupt rans stream: payload after a single-symbol table");
    out.assign(h.count, single);
    return;
  }
  const size_t nbytes = r.remaining();
  BB_CHECK(nbytes >= 8 * (size_t)ways && nbytes % 4 == 0, "corrupt rans stream: payload of ", nbytes, " bytes");
  const size_t nwords = nbytes / 4;
  std::vector<uint32_t> words(nwords);
  std::memcpy(words.data(), r.ptr(), nbytes);
  r.skip(nbytes);
  out.resize(h.count);
  // 16-bit slot entries whenever the symbols fit: the slot table is what the decoder's cache
  // misses are made of (2^scale entries, up to 2^20).
  if (S <= 65536) rans_decode_ways<uint16_t>(ways, q, scale, words, h.count, out.data());
  else rans_decode_ways<uint32_t>(ways, q, scale, words, h.count, out.data());
}

std::vector<uint32_t> decode_impl(const uint8_t* data, size_t n, SymbolStreamInfo* info,
                                  uint64_t max_count = kMaxSymbols) {
  ByteReader r(data, n, "symbol stream");
  Header h = get_header(r);
  // A stream may code a symbol in 0 bits (one-letter alphabets): its declared count is checked
  // against what the caller can hold before anything is allocated.
  BB_CHECK(h.count <= max_count, "corrupt symbol stream: ", h.count, " symbols where at most ", max_count,
           " fit the record");
  if (info) {
    info->coder = h.coder;
    info->count = h.count;
    info->alphabet = h.alphabet;
    info->header_bits = r.pos() * 8;
  }
  std::vector<uint32_t> out;
  switch (h.coder) {
    case Coder::fixed: decode_fixed(r, h, out); break;
    case Coder::huffman: decode_huffman(r, h, out, info); break;
    case Coder::rans: decode_rans(r, h, out, info); break;
  }
  BB_CHECK(r.done(), "corrupt ", coder_name(h.coder), " symbol stream: ", r.remaining(), " trailing bytes");
  BB_CHECK(out.size() == h.count, "corrupt symbol stream: decoded ", out.size(), " of ", h.count);
  return out;
}

}  // namespace

Coder parse_coder(const std::string& name) {
  if (name == "fixed") return Coder::fixed;
  if (name == "huffman") return Coder::huffman;
  if (name == "rans") return Coder::rans;
  BB_THROW("unknown coder '", name, "' (known: fixed, huffman, rans)");
}

const char* coder_name(Coder c) {
  switch (c) {
    case Coder::fixed: return "fixed";
    case Coder::huffman: return "huffman";
    case Coder::rans: return "rans";
  }
  return "unknown";
}

int fixed_width_bits(uint32_t alphabet) { return ceil_log2(alphabet); }

std::vector<uint8_t> encode_symbols(const std::vector<uint32_t>& syms, uint32_t alphabet, Coder coder) {
  BB_CHECK(syms.size() <= kMaxSymbols, "symbol stream of ", syms.size(), " symbols exceeds the limit ", kMaxSymbols);
  BB_CHECK(syms.empty() || alphabet >= 1, "symbol stream: empty alphabet");
  ByteWriter w;
  put_header(w, coder, syms.size(), alphabet);
  int lane_field = 0;
  switch (coder) {
    case Coder::fixed:
      for (uint32_t s : syms)
        if (s >= alphabet) BB_THROW("symbol ", s, " out of range for alphabet ", alphabet);
      encode_fixed(w, syms, alphabet);
      break;
    case Coder::huffman: lane_field = encode_huffman(w, syms, alphabet); break;
    case Coder::rans: encode_rans(w, syms, alphabet); break;
    default: BB_THROW("unknown coder id ", (int)coder);
  }
  std::vector<uint8_t> out = w.take();
  out[0] |= (uint8_t)(lane_field << kLaneShift);
  return out;
}

std::vector<uint32_t> decode_symbols(const uint8_t* data, size_t n, uint64_t max_count) {
  return decode_impl(data, n, nullptr, max_count);
}

SymbolStreamInfo inspect_symbols(const uint8_t* data, size_t n) {
  SymbolStreamInfo info;
  decode_impl(data, n, &info);
  info.payload_bits = (uint64_t)n * 8 - info.header_bits - info.table_bits;
  return info;
}

double empirical_entropy_bits(const std::vector<uint32_t>& syms, uint32_t alphabet) {
  if (syms.empty()) return 0;
  std::vector<uint32_t> counts;
  if (alphabet <= kMaxEntropyAlphabet || alphabet <= syms.size()) {
    counts = histogram(syms, alphabet);
  } else {  // huge sparse alphabet: count runs of the sorted symbols
    std::vector<uint32_t> sorted = syms;
    std::sort(sorted.begin(), sorted.end());
    BB_CHECK(sorted.back() < alphabet, "symbol ", sorted.back(), " out of range for alphabet ", alphabet);
    for (size_t i = 0; i < sorted.size();) {
      size_t j = i;
      while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
      counts.push_back((uint32_t)(j - i));
      i = j;
    }
  }
  const double n = (double)syms.size();
  double bits = 0;
  for (uint32_t c : counts)
    if (c) bits += c * std::log2(n / c);
  return bits;
}

}  // namespace bb
