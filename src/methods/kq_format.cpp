// KQ's record format: writing and reading one layer's record (meta, codebook, index streams,
// optional gains), and the bytes a record or a float weight adds to a .bbz file.
//
// Record (format version 1), sections:
//   meta      side       u8 version, varint d, varint k, u8 codebook_bits, u8 gain_bits, f32 scale
//   codebook  codebook   k*d grid levels (codebook_bits-wide, fixed) or k*d float32 (codebook_bits 32)
//   idx       indices    n codeword indices, alphabet k, the method's coder
//   gains     codebook   gain_shape: 2^gain_bits fp16 gains
//   gain_idx  indices    gain_shape: n gain indices, alphabet 2^gain_bits, the method's coder
#include "methods/kq_internal.h"

#include "coding/bbz.h"
#include "coding/bytes.h"
#include "coding/symbols.h"
#include "common/error.h"

#include <cmath>

namespace bb {
namespace kq {

static std::vector<uint32_t> to_symbols(const torch::Tensor& t, int64_t offset = 0) {
  auto v = t.to(torch::kInt64).contiguous();
  const int64_t* p = v.data_ptr<int64_t>();
  std::vector<uint32_t> out(v.numel());
  for (int64_t i = 0; i < v.numel(); ++i) out[i] = (uint32_t)(p[i] + offset);
  return out;
}

static torch::Tensor from_symbols(const std::vector<uint32_t>& s, int64_t offset = 0) {
  auto t = torch::empty({(int64_t)s.size()}, torch::kInt64);
  auto* p = t.data_ptr<int64_t>();
  for (size_t i = 0; i < s.size(); ++i) p[i] = (int64_t)s[i] - offset;
  return t;
}

LayerRecord encode_record(const std::string& layer, const std::vector<int64_t>& shape, const LayerCode& c, Coder coder) {
  LayerRecord rec;
  rec.layer = layer;
  rec.method = "kq";
  rec.shape = shape;
  ByteWriter meta;
  meta.u8(kFormatVersion);
  meta.varint((uint64_t)c.d);
  meta.varint((uint64_t)c.k);
  meta.u8((uint8_t)c.codebook_bits);
  meta.u8((uint8_t)c.gain_bits);
  meta.f32(c.scale);
  rec.add("meta", Component::side, meta.take());
  if (c.codebook_bits == 32) {
    ByteWriter w;
    put_floats(w, c.codebook_f, false);
    rec.add("codebook", Component::codebook, w.take());
  } else {
    rec.add("codebook", Component::codebook,
            encode_symbols(to_symbols(c.codebook_q.flatten(), int64_t(1) << (c.codebook_bits - 1)),
                           1u << c.codebook_bits, Coder::fixed));
  }
  auto idx = to_symbols(c.idx);
  rec.add("idx", Component::indices, encode_symbols(idx, (uint32_t)c.k, coder));
  const int64_t n = c.idx.numel();
  const int ib = index_width(c.k);
  rec.estimate.fixed_index_bits = (double)n * ib;
  rec.estimate.index_bits = coder == Coder::fixed ? (double)n * ib : empirical_entropy_bits(idx, (uint32_t)c.k);
  rec.estimate.codebook_bits = (double)c.k * c.d * c.codebook_bits + (c.codebook_bits == 32 ? 0 : 32);
  rec.estimate.codebook_values = c.k * c.d;
  if (c.gain_bits > 0) {
    ByteWriter w;
    put_floats(w, c.gains, true);
    rec.add("gains", Component::codebook, w.take());
    auto gi = to_symbols(c.gain_idx);
    const uint32_t G = 1u << c.gain_bits;
    rec.add("gain_idx", Component::indices, encode_symbols(gi, G, coder));
    rec.estimate.fixed_index_bits += (double)n * c.gain_bits;
    rec.estimate.index_bits += coder == Coder::fixed ? (double)n * c.gain_bits : empirical_entropy_bits(gi, G);
    rec.estimate.codebook_bits += 16.0 * G;
    rec.estimate.codebook_values += G;
  }
  return rec;
}

LayerCode decode_record(const LayerRecord& rec) {
  const std::string what = "kq record of layer '" + rec.layer + "'";
  ByteReader m(rec.section("meta").bytes, what + " meta");
  uint8_t ver = m.u8();
  BB_CHECK(ver == kFormatVersion, what, ": unsupported format version ", (int)ver);
  LayerCode c;
  c.d = (int64_t)m.varint();
  c.k = (int64_t)m.varint();
  c.codebook_bits = m.u8();
  c.gain_bits = m.u8();
  c.scale = m.f32();
  BB_CHECK(m.done(), what, ": trailing bytes in meta");
  int64_t numel = 1;
  for (auto s : rec.shape) {
    BB_CHECK(s > 0, what, ": bad shape");
    numel *= s;
  }
  BB_CHECK(c.d >= 1 && numel % c.d == 0, what, ": vector length ", c.d, " does not divide ", numel, " weights");
  const int64_t n = numel / c.d;
  BB_CHECK(c.k >= 1 && c.k <= n, what, ": codebook size ", c.k, " out of range for ", n, " vectors");
  BB_CHECK((c.codebook_bits >= 2 && c.codebook_bits <= 16) || c.codebook_bits == 32, what, ": bad codebook_bits ",
           c.codebook_bits);
  BB_CHECK(c.gain_bits <= 8, what, ": bad gain_bits ", c.gain_bits);
  BB_CHECK(std::isfinite(c.scale), what, ": non-finite scale");
  const auto& cbs = rec.section("codebook").bytes;
  if (c.codebook_bits == 32) {
    ByteReader r(cbs, what + " codebook");
    c.codebook_f = get_floats(r, c.k * c.d, false).reshape({c.k, c.d});
    BB_CHECK(r.done(), what, ": trailing bytes in codebook");
  } else {
    auto q = decode_symbols(cbs, (uint64_t)(c.k * c.d));
    BB_CHECK((int64_t)q.size() == c.k * c.d, what, ": codebook has ", q.size(), " entries, expected ", c.k * c.d);
    for (auto v : q) BB_CHECK(v < (1u << c.codebook_bits), what, ": codebook entry out of range");
    c.codebook_q = from_symbols(q, int64_t(1) << (c.codebook_bits - 1)).to(torch::kInt32).reshape({c.k, c.d});
  }
  auto idx = decode_symbols(rec.section("idx").bytes, (uint64_t)n);
  BB_CHECK((int64_t)idx.size() == n, what, ": ", idx.size(), " indices for ", n, " vectors");
  for (auto v : idx) BB_CHECK((int64_t)v < c.k, what, ": index ", v, " >= codebook size ", c.k);
  c.idx = from_symbols(idx);
  if (c.gain_bits > 0) {
    const int64_t G = int64_t(1) << c.gain_bits;
    ByteReader r(rec.section("gains").bytes, what + " gains");
    c.gains = get_floats(r, G, true);
    BB_CHECK(r.done(), what, ": trailing bytes in gains");
    auto gi = decode_symbols(rec.section("gain_idx").bytes, (uint64_t)n);
    BB_CHECK((int64_t)gi.size() == n, what, ": ", gi.size(), " gain indices for ", n, " vectors");
    for (auto v : gi) BB_CHECK((int64_t)v < G, what, ": gain index out of range");
    c.gain_idx = from_symbols(gi);
  }
  return c;
}

// Bytes a record adds to a .bbz file: sections plus its own header, measured by serialising.
int64_t record_file_bytes(const LayerRecord& rec) {
  static const int64_t empty = (int64_t)serialize_bbz(BbzFile{}).size();
  BbzFile f;
  f.layers.push_back(rec);
  return (int64_t)serialize_bbz(f).size() - empty;
}

// Bytes a weight left in float adds to the file (stored as fp32 by default, with its header).
int64_t kept_file_bytes(const Layer& l) {
  static const int64_t empty = (int64_t)serialize_bbz(BbzFile{}).size();
  BbzFile f;
  f.tensors.push_back({l.name + ".weight", l.weight().detach(), false});
  return (int64_t)serialize_bbz(f).size() - empty;
}

}  // namespace kq
}  // namespace bb
