// Decoding a whole compressed model: parse the .bbz bytes (CRC, sections) and rebuild every
// parameter (the methods' decoders), for ResNet-18 shapes (11.7M parameters, random weights)
// stored as uniform 4-bit levels with each coder. Counters: bytes of the file, MB/s of file.
#include <benchmark/benchmark.h>

#include "coding/bbz.h"
#include "methods/method.h"
#include "methods/params.h"
#include "models/registry.h"
#include "runner/pipeline.h"

namespace {

std::vector<uint8_t> resnet18_file(const std::string& coder) {
  torch::manual_seed(5);
  auto model = bb::make_model("resnet18");
  auto method = bb::make_method("uniform");
  bb::ParamBinder::apply(method->params(), {{"bits", "4"}, {"coder", coder}}, "bench");
  bb::CompressContext ctx;
  ctx.model = model.get();
  ctx.seed = 1;
  bb::BbzFile f;
  f.model = "resnet18";
  f.layers = method->compress(ctx);
  for (auto& kv : model->state()) {
    bool compressed = false;
    for (auto& r : f.layers) compressed |= kv.first == r.layer + ".weight";
    if (!compressed) f.tensors.push_back({kv.first, kv.second.detach().clone(), false});
  }
  return bb::serialize_bbz(f);
}

void BM_bbz_decode_resnet18(benchmark::State& st, const std::string& coder) {
  static std::map<std::string, std::vector<uint8_t>> files;
  if (!files.count(coder)) files[coder] = resnet18_file(coder);
  const auto& bytes = files[coder];
  size_t n = 0;
  for (auto _ : st) {
    auto f = bb::parse_bbz(bytes.data(), bytes.size(), "bench");
    auto sd = bb::decode_bbz(f);
    n += sd.size();
  }
  benchmark::DoNotOptimize(n);
  st.SetBytesProcessed((int64_t)st.iterations() * (int64_t)bytes.size());
  st.counters["file_bytes"] = (double)bytes.size();
}
BENCHMARK_CAPTURE(BM_bbz_decode_resnet18, fixed, std::string("fixed"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_bbz_decode_resnet18, huffman, std::string("huffman"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_bbz_decode_resnet18, rans, std::string("rans"))->Unit(benchmark::kMillisecond);

}  // namespace
