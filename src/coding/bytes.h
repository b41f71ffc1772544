// Little-endian byte writer/reader for sections and the container. The reader is bounds-checked:
// a truncated or corrupt input raises bb::Error naming what was being read, never UB.
#pragma once
#include "common/error.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace at {
class Tensor;  // torch::Tensor; the full type comes from the precompiled torch headers
}

namespace bb {

uint16_t float_to_half(float f);  // round-to-nearest-even, as torch's .half()
float half_to_float(uint16_t h);

class ByteWriter {
 public:
  void u8(uint8_t v) { buf_.push_back(v); }
  void u16(uint16_t v) { raw(&v, 2); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void i64(int64_t v) { raw(&v, 8); }
  void f32(float v) { raw(&v, 4); }
  void f64(double v) { raw(&v, 8); }
  void f16(float v) { u16(float_to_half(v)); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      buf_.push_back((uint8_t)(v | 0x80));
      v >>= 7;
    }
    buf_.push_back((uint8_t)v);
  }
  void str(const std::string& s) {
    varint(s.size());
    raw(s.data(), s.size());
  }
  void bytes(const std::vector<uint8_t>& b) {
    varint(b.size());
    raw(b.data(), b.size());
  }
  void raw(const void* p, size_t n) {
    const uint8_t* c = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), c, c + n);
  }
  size_t size() const { return buf_.size(); }
  const std::vector<uint8_t>& data() const { return buf_; }
  std::vector<uint8_t> take() { return std::move(buf_); }

 private:
  std::vector<uint8_t> buf_;
};

class ByteReader {
 public:
  ByteReader(const uint8_t* p, size_t n, std::string what) : p_(p), n_(n), what_(std::move(what)) {}
  explicit ByteReader(const std::vector<uint8_t>& v, std::string what = "stream")
      : ByteReader(v.data(), v.size(), std::move(what)) {}
  uint8_t u8() { uint8_t v; raw(&v, 1); return v; }
  uint16_t u16() { uint16_t v; raw(&v, 2); return v; }
  uint32_t u32() { uint32_t v; raw(&v, 4); return v; }
  uint64_t u64() { uint64_t v; raw(&v, 8); return v; }
  int64_t i64() { int64_t v; raw(&v, 8); return v; }
  float f32() { float v; raw(&v, 4); return v; }
  double f64() { double v; raw(&v, 8); return v; }
  float f16() { return half_to_float(u16()); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b = u8();
      v |= (uint64_t)(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    BB_THROW("corrupt ", what_, ": bad varint at offset ", pos_);
  }
  std::string str() {
    uint64_t n = varint();
    need(n);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }
  std::vector<uint8_t> bytes() {
    uint64_t n = varint();
    need(n);
    std::vector<uint8_t> b(p_ + pos_, p_ + pos_ + n);
    pos_ += n;
    return b;
  }
  void raw(void* out, size_t n) {
    need(n);
    std::memcpy(out, p_ + pos_, n);
    pos_ += n;
  }
  const uint8_t* ptr() const { return p_ + pos_; }
  void skip(size_t n) { need(n); pos_ += n; }
  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }
  bool done() const { return pos_ == n_; }
  // A section read to its end: trailing bytes mean a corrupt or forged section.
  void expect_done() const {
    if (pos_ != n_) BB_THROW("corrupt ", what_, ": ", n_ - pos_, " trailing bytes after ", pos_, " bytes read");
  }
  void need(uint64_t n) const {
    if (n > n_ - pos_) BB_THROW("corrupt or truncated ", what_, ": needs ", n, " bytes at offset ", pos_, " of ", n_);
  }
  const std::string& what() const { return what_; }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  std::string what_;
};

class ByteWriter;
class ByteReader;
// Float tensor payloads for methods' sections (shape not included): numel values as fp32, or fp16
// rounded as torch's .half(). get_floats returns a 1-D float32 tensor; bounds-checked.
void put_floats(ByteWriter& w, const at::Tensor& t, bool fp16);
at::Tensor get_floats(ByteReader& r, int64_t count, bool fp16);

}  // namespace bb
