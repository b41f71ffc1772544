// Baselines without quantization: `fp32` stores every weight as it is (the method returns no
// records, so the container stores the tensors); `fp16` stores conv/linear weights as IEEE half.
#include "coding/bbz.h"
#include "coding/bytes.h"
#include "methods/method.h"

namespace bb {
namespace {

class Fp32Method : public Method {
 public:
  std::string name() const override { return "fp32"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  std::vector<LayerRecord> compress(CompressContext&) override { return {}; }
  torch::Tensor decode(const LayerRecord& rec) const override {
    BB_THROW("fp32 writes no layer records, yet layer '", rec.layer, "' names it");
  }

 private:
  NoParams p_;
};

class Fp16Method : public Method {
 public:
  std::string name() const override { return "fp16"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    std::vector<LayerRecord> out;
    for (const auto& l : ctx.model->layers()) {
      LayerRecord rec;
      rec.layer = l.name;
      rec.method = name();
      rec.shape = l.weight().sizes().vec();
      ByteWriter w;
      put_floats(w, l.weight(), /*fp16=*/true);
      rec.add("values", Component::indices, w.take());
      rec.estimate.index_bits = rec.estimate.fixed_index_bits = 16.0 * l.weight().numel();
      out.push_back(std::move(rec));
    }
    return out;
  }
  torch::Tensor decode(const LayerRecord& rec) const override {
    int64_t n = 1;
    for (auto s : rec.shape) n *= s;
    const auto& sec = rec.section("values");
    ByteReader r(sec.bytes, "layer '" + rec.layer + "' values");
    torch::Tensor w = get_floats(r, n, true).reshape(rec.shape);
    r.expect_done();
    return w;
  }

 private:
  NoParams p_;
};

BB_REGISTER_METHOD("fp32", Fp32Method);
BB_REGISTER_METHOD("fp16", Fp16Method);

}  // namespace
}  // namespace bb
