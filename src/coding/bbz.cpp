// The .bbz container, format version 1 (byte layout and accounting rules: docs/FORMAT.md).
//   header   "BBZ\0" | u32 version | u64 file size | str model | str provenance JSON |
//            varint n_layers | varint n_tensors
//   layers   str layer | str method | shape | estimate | varint n_sections |
//            per section: str name | u8 component | varint size | bytes
//   tensors  str name | u8 dtype | shape | raw little-endian data
//   trailer  u32 CRC-32 of every byte before it
// Strings are varint length + bytes; a shape is varint ndim + varint dims.
#include "coding/bbz.h"
#include "coding/bytes.h"
#include "common/error.h"
#include "common/fs_util.h"
#include "common/hash.h"

#include <cstring>
#include <set>

namespace bb {

namespace {

constexpr char kMagic[4] = {'B', 'B', 'Z', '\0'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kMaxDims = 16;
constexpr size_t kFileSizeOffset = 8;  // after magic and version

enum class DType : uint8_t { f32 = 0, f16 = 1, i64 = 2 };

void put_shape(ByteWriter& w, const std::vector<int64_t>& shape, const std::string& what) {
  BB_CHECK(shape.size() <= kMaxDims, what, ": ", shape.size(), " dimensions (max ", kMaxDims, ")");
  w.varint(shape.size());
  for (int64_t d : shape) {
    BB_CHECK(d >= 0, what, ": negative dimension ", d);
    w.varint((uint64_t)d);
  }
}

// Reads a shape; returns its element count (checked against overflow).
std::vector<int64_t> get_shape(ByteReader& r, const std::string& what, uint64_t* numel) {
  uint64_t nd = r.varint();
  BB_CHECK(nd <= kMaxDims, "corrupt ", r.what(), ": ", what, " has ", nd, " dimensions");
  std::vector<int64_t> shape(nd);
  uint64_t n = 1;
  for (uint64_t i = 0; i < nd; ++i) {
    uint64_t d = r.varint();
    BB_CHECK(d < (1ull << 40), "corrupt ", r.what(), ": ", what, " dimension ", d);
    shape[i] = (int64_t)d;
    BB_CHECK(d == 0 || n <= (1ull << 50) / d, "corrupt ", r.what(), ": ", what, " is too large");
    n *= d;
  }
  *numel = n;
  return shape;
}

void put_record(ByteWriter& w, const LayerRecord& rec, BbzSizes::Layer* sz) {
  const std::string what = "layer '" + rec.layer + "'";
  const size_t start = w.size();
  int64_t payload[3] = {0, 0, 0};
  w.str(rec.layer);
  w.str(rec.method);
  put_shape(w, rec.shape, what);
  w.f64(rec.estimate.index_bits);
  w.f64(rec.estimate.codebook_bits);
  w.f64(rec.estimate.side_bits);
  w.f64(rec.estimate.fixed_index_bits);
  w.i64(rec.estimate.codebook_values);
  w.varint(rec.sections.size());
  std::set<std::string> names;
  for (const Section& s : rec.sections) {
    BB_CHECK(names.insert(s.name).second, what, ": duplicate section '", s.name, "'");
    BB_CHECK((uint8_t)s.component <= (uint8_t)Component::side, what, ": section '", s.name,
             "' has an invalid component");
    w.str(s.name);
    w.u8((uint8_t)s.component);
    w.bytes(s.bytes);
    payload[(int)s.component] += (int64_t)s.bytes.size();
  }
  const int64_t total = (int64_t)(w.size() - start);
  sz->layer = rec.layer;
  sz->method = rec.method;
  sz->indices = payload[0];
  sz->codebook = payload[1];
  // Everything that is not a section payload (names, shape, estimate, section headers) is side.
  sz->side = total - payload[0] - payload[1];
}

LayerRecord get_record(ByteReader& r, BbzSizes::Layer* sz) {
  const size_t start = r.pos();
  LayerRecord rec;
  rec.layer = r.str();
  rec.method = r.str();
  const std::string what = "layer '" + rec.layer + "'";
  uint64_t numel;
  rec.shape = get_shape(r, what, &numel);
  rec.estimate.index_bits = r.f64();
  rec.estimate.codebook_bits = r.f64();
  rec.estimate.side_bits = r.f64();
  rec.estimate.fixed_index_bits = r.f64();
  rec.estimate.codebook_values = r.i64();
  uint64_t ns = r.varint();
  int64_t payload[3] = {0, 0, 0};
  std::set<std::string> names;
  for (uint64_t i = 0; i < ns; ++i) {
    Section s;
    s.name = r.str();
    BB_CHECK(names.insert(s.name).second, "corrupt ", r.what(), ": ", what, " has section '", printable(s.name),
             "' twice");
    uint8_t c = r.u8();
    BB_CHECK(c <= (uint8_t)Component::side, "corrupt ", r.what(), ": ", what, " section '", printable(s.name),
             "' has component id ", (int)c);
    s.component = (Component)c;
    s.bytes = r.bytes();
    payload[c] += (int64_t)s.bytes.size();
    rec.sections.push_back(std::move(s));
  }
  const int64_t total = (int64_t)(r.pos() - start);
  sz->layer = rec.layer;
  sz->method = rec.method;
  sz->indices = payload[0];
  sz->codebook = payload[1];
  sz->side = total - payload[0] - payload[1];
  return rec;
}

void put_tensor(ByteWriter& w, const StoredTensor& t) {
  const std::string what = "tensor '" + printable(t.name) + "'";
  BB_CHECK(t.value.defined(), what, " is undefined");
  torch::Tensor v = t.value.to(torch::kCPU).contiguous();
  w.str(t.name);
  if (v.is_floating_point()) {
    w.u8((uint8_t)(t.fp16 ? DType::f16 : DType::f32));
    put_shape(w, v.sizes().vec(), what);
    put_floats(w, v, t.fp16);
  } else if (v.scalar_type() == torch::kLong) {
    BB_CHECK(!t.fp16, what, " is int64 and cannot be stored as fp16");
    w.u8((uint8_t)DType::i64);
    put_shape(w, v.sizes().vec(), what);
    w.raw(v.data_ptr<int64_t>(), (size_t)v.numel() * 8);  // little-endian host
  } else {
    BB_THROW(what, ": unsupported dtype ", v.scalar_type(),
             " (.bbz stores floating tensors as fp32/fp16 and int64 tensors as they are)");
  }
}

StoredTensor get_tensor(ByteReader& r) {
  StoredTensor t;
  t.name = r.str();
  const std::string what = "tensor '" + printable(t.name) + "'";
  uint8_t dt = r.u8();
  BB_CHECK(dt <= (uint8_t)DType::i64, "corrupt ", r.what(), ": ", what, " has dtype code ", (int)dt);
  uint64_t numel;
  std::vector<int64_t> shape = get_shape(r, what, &numel);
  if ((DType)dt == DType::i64) {
    r.need(numel * 8);
    t.value = torch::empty({(int64_t)numel}, torch::kLong);
    r.raw(t.value.data_ptr<int64_t>(), numel * 8);
  } else {
    t.fp16 = (DType)dt == DType::f16;
    t.value = get_floats(r, (int64_t)numel, t.fp16);
  }
  t.value = t.value.reshape(shape);
  return t;
}

}  // namespace

void put_floats(ByteWriter& w, const torch::Tensor& t, bool fp16) {
  torch::Tensor v = t.to(torch::kCPU).to(torch::kFloat).contiguous();
  const float* p = v.data_ptr<float>();
  const size_t n = (size_t)v.numel();
  if (!fp16) {
    w.raw(p, n * 4);  // little-endian host
    return;
  }
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = float_to_half(p[i]);
  w.raw(h.data(), n * 2);
}

torch::Tensor get_floats(ByteReader& r, int64_t count, bool fp16) {
  BB_CHECK(count >= 0 && (uint64_t)count <= (1ull << 50), "corrupt ", r.what(), ": float count ", count);
  const uint64_t elem = fp16 ? 2 : 4;
  r.need((uint64_t)count * elem);
  torch::Tensor v = torch::empty({count}, torch::kFloat);
  float* p = v.data_ptr<float>();
  if (!fp16) {
    r.raw(p, (size_t)count * 4);
  } else {
    const uint8_t* src = r.ptr();
    for (int64_t i = 0; i < count; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      p[i] = half_to_float(h);
    }
    r.skip((size_t)count * 2);
  }
  return v;
}

std::vector<uint8_t> serialize_bbz(const BbzFile& f, BbzSizes* sizes) {
  BbzSizes sz;
  ByteWriter w;
  w.raw(kMagic, 4);
  w.u32(kVersion);
  w.u64(0);  // file size, patched below
  w.str(f.model);
  std::string prov;
  try {
    prov = f.provenance.is_null() ? std::string("{}") : f.provenance.dump();
  } catch (const std::exception& e) {
    BB_THROW("bbz: provenance cannot be serialised: ", e.what());
  }
  w.str(prov);
  w.varint(f.layers.size());
  w.varint(f.tensors.size());
  sz.header = (int64_t)w.size();

  std::set<std::string> layer_names;
  for (const LayerRecord& rec : f.layers) {
    BB_CHECK(layer_names.insert(rec.layer).second, "bbz: layer '", printable(rec.layer), "' recorded twice");
    sz.layers.emplace_back();
    put_record(w, rec, &sz.layers.back());
  }
  for (const StoredTensor& t : f.tensors) {
    BB_CHECK(!sz.tensors.count(t.name), "bbz: tensor '", printable(t.name), "' stored twice");
    const size_t start = w.size();
    put_tensor(w, t);
    sz.tensors[t.name] = (int64_t)(w.size() - start);
  }
  std::vector<uint8_t> out = w.take();
  const uint64_t total = out.size() + 4;
  std::memcpy(out.data() + kFileSizeOffset, &total, 8);
  const uint32_t crc = crc32(out.data(), out.size());
  uint8_t c[4];
  std::memcpy(c, &crc, 4);
  out.insert(out.end(), c, c + 4);
  sz.checksum = 4;
  sz.total = (int64_t)out.size();
  if (sizes) *sizes = std::move(sz);
  return out;
}

BbzFile parse_bbz(const uint8_t* data, size_t n, const std::string& what, BbzSizes* sizes) {
  if (n < 4 || std::memcmp(data, kMagic, 4) != 0) {
    if (n < 4 && (n == 0 || std::memcmp(data, kMagic, n) == 0))
      BB_THROW(what, ": truncated .bbz file (", n, " bytes)");
    BB_THROW(what, ": not a bitbench .bbz file (bad magic)");
  }
  ByteReader r(data, n, what);
  r.skip(4);
  const uint32_t version = r.u32();
  BB_CHECK(version >= 1, what, ": invalid .bbz format version ", version);
  BB_CHECK(version <= kVersion, what, ": .bbz format version ", version,
           " is newer than this build reads (", kVersion, "); use a newer bitbench");
  const uint64_t declared = r.u64();
  BB_CHECK(declared == n, what, declared > n ? ": truncated .bbz file (" : ": .bbz file has trailing data (", n,
           " bytes, header says ", declared, ")");
  BB_CHECK(n >= r.pos() + 4, what, ": truncated .bbz file (", n, " bytes)");
  uint32_t stored_crc;
  std::memcpy(&stored_crc, data + n - 4, 4);
  const uint32_t crc = crc32(data, n - 4);
  BB_CHECK(crc == stored_crc, what, ": .bbz checksum mismatch (file is corrupt)");

  BbzSizes sz;
  BbzFile f;
  ByteReader body(data, n - 4, what);
  body.skip(r.pos());
  f.model = body.str();
  const std::string prov = body.str();
  try {
    f.provenance = nlohmann::json::parse(prov);
  } catch (const std::exception& e) {
    BB_THROW("corrupt ", what, ": provenance is not valid JSON: ", e.what());
  }
  BB_CHECK(f.provenance.is_object(), "corrupt ", what, ": provenance is ", f.provenance.type_name(),
           " JSON, not an object");
  const uint64_t n_layers = body.varint();
  const uint64_t n_tensors = body.varint();
  sz.header = (int64_t)body.pos();

  std::set<std::string> layer_names;
  for (uint64_t i = 0; i < n_layers; ++i) {
    sz.layers.emplace_back();
    f.layers.push_back(get_record(body, &sz.layers.back()));
    BB_CHECK(layer_names.insert(f.layers.back().layer).second, "corrupt ", what, ": layer '",
             printable(f.layers.back().layer), "' recorded twice");
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const size_t start = body.pos();
    f.tensors.push_back(get_tensor(body));
    const std::string& name = f.tensors.back().name;
    BB_CHECK(!sz.tensors.count(name), "corrupt ", what, ": tensor '", printable(name), "' stored twice");
    sz.tensors[name] = (int64_t)(body.pos() - start);
  }
  BB_CHECK(body.done(), "corrupt ", what, ": ", body.remaining(), " unparsed bytes before the checksum");
  sz.checksum = 4;
  sz.total = (int64_t)n;
  if (sizes) *sizes = std::move(sz);
  return f;
}

void write_bbz(const std::string& path, const BbzFile& f, BbzSizes* sizes) {
  std::vector<uint8_t> bytes = serialize_bbz(f, sizes);
  write_file_atomic(path, bytes.data(), bytes.size());
}

BbzFile read_bbz(const std::string& path, BbzSizes* sizes) {
  std::vector<unsigned char> bytes = read_file_bytes(path);
  return parse_bbz(bytes.data(), bytes.size(), path, sizes);
}

}  // namespace bb
