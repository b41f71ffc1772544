#include "quant/tq_core.h"

#include "coding/bytes.h"
#include "common/error.h"

#include <cmath>

namespace bb {
namespace {

// Version 1: no side byte (column side). Version 2: u8 side (0 column, 1 row) after the version.
constexpr uint8_t kFormatVersion = 2;
constexpr int kMaxStepExp = 4096;  // |exp| bound: keeps 2^(exp/spo) finite and nonzero

uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
int64_t unzigzag(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

// Symbols of a level stream for one bit depth: level + 2^(bits-1) in [0, 2^bits).
struct Streams {
  std::vector<uint32_t> syms[kTqMaxBits + 1];
};

// Visits, block by block, the T levels (row-major within the block) of blocks with t_bits > 0.
template <typename F>
void for_each_t(const TqLayerCode& c, F f) {
  for (size_t b = 0; b < c.blocks.size(); ++b) {
    if (c.blocks[b].t_bits == 0) continue;
    for (int64_t k = c.bounds[b]; k < c.bounds[b + 1]; ++k)
      for (int64_t j = 0; j < c.d; ++j) f(b, k * c.d + j);
  }
}
// Same for S levels (column k, entries i = 0..n-1; stored column-major at k*n + i).
template <typename F>
void for_each_s(const TqLayerCode& c, F f) {
  for (size_t b = 0; b < c.blocks.size(); ++b) {
    if (c.blocks[b].t_bits == 0) continue;
    for (int64_t k = c.bounds[b]; k < c.bounds[b + 1]; ++k)
      for (int64_t i = 0; i < c.n; ++i) f(b, k * c.n + i);
  }
}

void check_code(const TqLayerCode& c, const std::string& where) {
  BB_CHECK(c.n > 0 && c.d > 0, where, ": empty layer");
  BB_CHECK(c.steps_per_octave >= 1 && c.steps_per_octave <= 64, where, ": steps_per_octave out of range");
  BB_CHECK(c.bounds.size() == c.blocks.size() + 1 && !c.blocks.empty(), where, ": inconsistent block layout");
  BB_CHECK(c.bounds.front() == 0 && c.bounds.back() == c.n, where, ": blocks do not cover the ", c.n, " rows");
  for (size_t b = 0; b < c.blocks.size(); ++b) {
    BB_CHECK(c.bounds[b + 1] > c.bounds[b], where, ": empty block ", b);
    const TqBlockCode& k = c.blocks[b];
    BB_CHECK(k.t_bits >= 0 && k.t_bits <= kTqMaxBits, where, ": block ", b, " has ", k.t_bits, " bits");
    if (k.t_bits > 0) {
      BB_CHECK(k.s_bits >= 1 && k.s_bits <= kTqMaxBits, where, ": block ", b, " basis has ", k.s_bits, " bits");
      BB_CHECK(std::abs(k.t_exp) <= kMaxStepExp && std::abs(k.s_exp) <= kMaxStepExp, where, ": block ", b,
               " step exponent out of range");
    }
  }
}

}  // namespace

double tq_step(int exp, int steps_per_octave) { return std::exp2((double)exp / (double)steps_per_octave); }

std::vector<int64_t> tq_block_bounds(int64_t n, int blocks) {
  BB_CHECK(n > 0 && blocks > 0, "tq: block layout needs n > 0 and blocks > 0");
  const int64_t nb = std::min<int64_t>(blocks, n);
  std::vector<int64_t> b(nb + 1);
  for (int64_t i = 0; i <= nb; ++i) b[i] = i * n / nb;
  return b;
}

double TqLayerCode::t_bits_total() const {
  double s = 0;
  for (size_t b = 0; b < blocks.size(); ++b) s += (double)t_numel(b) * blocks[b].t_bits;
  return s;
}

double TqLayerCode::s_bits_total() const {
  double s = 0;
  for (size_t b = 0; b < blocks.size(); ++b)
    if (blocks[b].t_bits > 0) s += (double)s_numel(b) * blocks[b].s_bits;
  return s;
}

int64_t TqLayerCode::s_values() const {
  int64_t s = 0;
  for (size_t b = 0; b < blocks.size(); ++b)
    if (blocks[b].t_bits > 0) s += s_numel(b);
  return s;
}

int64_t TqLayerCode::active_rows() const {
  int64_t s = 0;
  for (size_t b = 0; b < blocks.size(); ++b)
    if (blocks[b].t_bits > 0) s += bounds[b + 1] - bounds[b];
  return s;
}

TqLevels tq_quantize(const TqLayerCode& c, const torch::Tensor& S, const torch::Tensor& T) {
  check_code(c, "tq_quantize");
  BB_CHECK(T.dim() == 2 && T.size(0) == c.n && T.size(1) == c.d, "tq_quantize: T must be ", c.n, "x", c.d);
  BB_CHECK(S.dim() == 2 && S.size(0) == c.n && S.size(1) == c.n, "tq_quantize: S must be ", c.n, "x", c.n);
  auto t = T.to(torch::kFloat64).contiguous();
  auto s = S.to(torch::kFloat64).t().contiguous();  // column k of S at k*n
  const double* tp = t.data_ptr<double>();
  const double* sp = s.data_ptr<double>();
  TqLevels lv;
  lv.t.assign(c.n * c.d, 0);
  lv.s.assign(c.n * c.n, 0);
  for_each_t(c, [&](size_t b, int64_t i) {
    const TqBlockCode& k = c.blocks[b];
    lv.t[i] = tq_level(tp[i], tq_step(k.t_exp, c.steps_per_octave), k.t_bits);
  });
  for_each_s(c, [&](size_t b, int64_t i) {
    const TqBlockCode& k = c.blocks[b];
    lv.s[i] = tq_level(sp[i], tq_step(k.s_exp, c.steps_per_octave), k.s_bits);
  });
  return lv;
}

void tq_dequantize(const TqLayerCode& c, const TqLevels& lv, torch::Tensor& S_hat, torch::Tensor& T_hat) {
  check_code(c, "tq_dequantize");
  BB_CHECK((int64_t)lv.t.size() == c.n * c.d && (int64_t)lv.s.size() == c.n * c.n, "tq_dequantize: level count mismatch");
  T_hat = torch::zeros({c.n, c.d}, torch::kFloat64);
  auto s_cm = torch::zeros({c.n, c.n}, torch::kFloat64);  // column-major: row k = column k of S
  double* tp = T_hat.data_ptr<double>();
  double* sp = s_cm.data_ptr<double>();
  for_each_t(c, [&](size_t b, int64_t i) { tp[i] = lv.t[i] * tq_step(c.blocks[b].t_exp, c.steps_per_octave); });
  for_each_s(c, [&](size_t b, int64_t i) { sp[i] = lv.s[i] * tq_step(c.blocks[b].s_exp, c.steps_per_octave); });
  S_hat = s_cm.t().contiguous();
}

torch::Tensor tq_reconstruct(const TqLayerCode& c, const TqLevels& lv) {
  torch::Tensor S_hat, T_hat;
  tq_dequantize(c, lv, S_hat, T_hat);
  // Plain loops in float64 with a fixed summation order (k ascending): the result does not
  // depend on the BLAS build or the thread count.
  std::vector<double> acc(c.d);
  auto w = torch::empty({c.n, c.d}, torch::kFloat32);
  float* wp = w.data_ptr<float>();
  const double* sp = S_hat.data_ptr<double>();
  const double* tp = T_hat.data_ptr<double>();
  for (int64_t i = 0; i < c.n; ++i) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (size_t b = 0; b < c.blocks.size(); ++b) {
      if (c.blocks[b].t_bits == 0) continue;
      for (int64_t k = c.bounds[b]; k < c.bounds[b + 1]; ++k) {
        const double sik = sp[i * c.n + k];
        if (sik == 0) continue;
        const double* row = tp + k * c.d;
        for (int64_t j = 0; j < c.d; ++j) acc[j] += sik * row[j];
      }
    }
    for (int64_t j = 0; j < c.d; ++j) wp[i * c.d + j] = (float)acc[j];
  }
  return w;
}

torch::Tensor tq_reconstruct_weight(const TqLayerCode& c, const TqLevels& lv, at::IntArrayRef shape) {
  return tq_unorient(tq_reconstruct(c, lv), shape, c.side);
}

void tq_encode(const TqLayerCode& c, const TqLevels& lv, Coder coder, LayerRecord& rec) {
  check_code(c, "tq_encode (" + rec.layer + ")");
  ByteWriter side;
  side.u8(kFormatVersion);
  side.u8(c.side == TransformSide::row ? 1 : 0);
  side.varint((uint64_t)c.n);
  side.varint((uint64_t)c.d);
  side.u8((uint8_t)c.steps_per_octave);
  side.varint(c.blocks.size());
  for (size_t b = 0; b < c.blocks.size(); ++b) side.varint((uint64_t)(c.bounds[b + 1] - c.bounds[b]));
  for (const TqBlockCode& k : c.blocks) {
    side.u8((uint8_t)k.t_bits);
    if (k.t_bits == 0) continue;
    side.varint(zigzag(k.t_exp));
    side.u8((uint8_t)k.s_bits);
    side.varint(zigzag(k.s_exp));
  }

  Streams ts, ss;
  for_each_t(c, [&](size_t b, int64_t i) {
    int bits = c.blocks[b].t_bits;
    ts.syms[bits].push_back((uint32_t)(lv.t[i] + (1 << (bits - 1))));
  });
  for_each_s(c, [&](size_t b, int64_t i) {
    int bits = c.blocks[b].s_bits;
    ss.syms[bits].push_back((uint32_t)(lv.s[i] + (1 << (bits - 1))));
  });
  double t_coded_bits = 0;
  ByteWriter coef, basis;
  for (int bits = 1; bits <= kTqMaxBits; ++bits) {
    const uint32_t alphabet = 1u << bits;
    if (!ts.syms[bits].empty()) {
      coef.bytes(encode_symbols(ts.syms[bits], alphabet, coder));
      t_coded_bits += coder == Coder::fixed ? (double)ts.syms[bits].size() * bits
                                            : empirical_entropy_bits(ts.syms[bits], alphabet);
    }
    if (!ss.syms[bits].empty()) basis.bytes(encode_symbols(ss.syms[bits], alphabet, coder));
  }
  rec.add("tq.side", Component::side, side.take());
  rec.add("tq.coef", Component::indices, coef.take());
  rec.add("tq.basis", Component::codebook, basis.take());
  rec.estimate.fixed_index_bits = c.t_bits_total();
  rec.estimate.index_bits = t_coded_bits;
  rec.estimate.codebook_bits = c.s_bits_total();
  rec.estimate.codebook_values = c.s_values();
  rec.estimate.side_bits = 8.0 * (double)rec.section("tq.side").bytes.size();
}

void tq_decode(const LayerRecord& rec, TqLayerCode& c, TqLevels& lv) {
  const std::string where = "tq layer '" + rec.layer + "'";
  ByteReader side(rec.section("tq.side").bytes, where + " side info");
  const uint8_t version = side.u8();
  BB_CHECK(version == 1 || version == kFormatVersion, where, ": unknown format version ", (int)version);
  c = TqLayerCode();
  if (version >= 2) {
    const uint8_t s = side.u8();
    BB_CHECK(s <= 1, where, ": unknown transform side ", (int)s);
    c.side = s == 1 ? TransformSide::row : TransformSide::column;
  }
  c.n = (int64_t)side.varint();
  c.d = (int64_t)side.varint();
  c.steps_per_octave = side.u8();
  BB_CHECK(c.n > 0 && c.d > 0 && c.n <= (1 << 24) && c.d <= (1 << 28) && c.n * c.d <= (int64_t)1 << 32, where,
           ": implausible size ", c.n, "x", c.d);
  int64_t shape_numel = 1;
  for (int64_t s : rec.shape) shape_numel *= s;
  const size_t axis = c.side == TransformSide::row ? 1 : 0;
  BB_CHECK(rec.shape.size() > axis && rec.shape[axis] == c.n && shape_numel == c.n * c.d &&
               (rec.shape.size() == 2 || rec.shape.size() == 4),
           where, ": size ", c.n, "x", c.d, " (", transform_side_name(c.side),
           " side) does not match the record's weight shape");
  const uint64_t nb = side.varint();
  BB_CHECK(nb >= 1 && nb <= (uint64_t)c.n, where, ": ", nb, " blocks for ", c.n, " rows");
  c.bounds.assign(1, 0);
  for (uint64_t b = 0; b < nb; ++b) {
    uint64_t rows = side.varint();
    BB_CHECK(rows >= 1 && rows <= (uint64_t)c.n, where, ": bad block size");
    c.bounds.push_back(c.bounds.back() + (int64_t)rows);
  }
  c.blocks.resize(nb);
  for (TqBlockCode& k : c.blocks) {
    k.t_bits = side.u8();
    BB_CHECK(k.t_bits <= kTqMaxBits, where, ": bit depth ", k.t_bits, " > ", kTqMaxBits);
    if (k.t_bits == 0) continue;
    const int64_t te = unzigzag(side.varint());
    k.s_bits = side.u8();
    const int64_t se = unzigzag(side.varint());
    BB_CHECK(std::abs(te) <= kMaxStepExp && std::abs(se) <= kMaxStepExp, where, ": step exponent out of range");
    k.t_exp = (int)te;
    k.s_exp = (int)se;
  }
  BB_CHECK(side.done(), where, ": trailing bytes in side info");
  check_code(c, where);

  // Expected stream lengths per bit depth, then read the streams in the encoder's order.
  int64_t t_count[kTqMaxBits + 1] = {0}, s_count[kTqMaxBits + 1] = {0};
  for (size_t b = 0; b < c.blocks.size(); ++b) {
    if (c.blocks[b].t_bits == 0) continue;
    t_count[c.blocks[b].t_bits] += c.t_numel(b);
    s_count[c.blocks[b].s_bits] += c.s_numel(b);
  }
  ByteReader coef(rec.section("tq.coef").bytes, where + " coefficients");
  ByteReader basis(rec.section("tq.basis").bytes, where + " basis");
  Streams ts, ss;
  for (int bits = 1; bits <= kTqMaxBits; ++bits) {
    if (t_count[bits] > 0) ts.syms[bits] = decode_symbols(coef.bytes(), (uint64_t)t_count[bits]);
    if (s_count[bits] > 0) ss.syms[bits] = decode_symbols(basis.bytes(), (uint64_t)s_count[bits]);
    BB_CHECK((int64_t)ts.syms[bits].size() == t_count[bits] && (int64_t)ss.syms[bits].size() == s_count[bits], where,
             ": level stream for ", bits, " bits has the wrong length");
    const uint32_t alphabet = 1u << bits;
    for (uint32_t v : ts.syms[bits]) BB_CHECK(v < alphabet, where, ": level out of range");
    for (uint32_t v : ss.syms[bits]) BB_CHECK(v < alphabet, where, ": basis level out of range");
  }
  BB_CHECK(coef.done() && basis.done(), where, ": trailing bytes in level streams");
  lv.t.assign(c.n * c.d, 0);
  lv.s.assign(c.n * c.n, 0);
  size_t tpos[kTqMaxBits + 1] = {0}, spos[kTqMaxBits + 1] = {0};
  for_each_t(c, [&](size_t b, int64_t i) {
    int bits = c.blocks[b].t_bits;
    lv.t[i] = (int32_t)ts.syms[bits][tpos[bits]++] - (1 << (bits - 1));
  });
  for_each_s(c, [&](size_t b, int64_t i) {
    int bits = c.blocks[b].s_bits;
    lv.s[i] = (int32_t)ss.syms[bits][spos[bits]++] - (1 << (bits - 1));
  });
}

TqMacs tq_macs_per_position(const TqLayerCode& c) {
  TqMacs m;
  const int64_t k = c.active_rows();
  m.direct = c.n * c.d;
  m.transform = k * c.d + c.n * k;
  return m;
}

}  // namespace bb
