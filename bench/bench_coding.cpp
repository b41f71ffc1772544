// Symbol-stream coders on ~1M symbols of a realistic distribution (a discretised Laplacian, the
// shape of quantised weights, and random codebook indices). Throughput is reported per symbol:
// bytes_per_second counts one byte per symbol (so MB/s == Msymbols/s), items_per_second the same.
// Counters: bits_per_sym (whole stream incl. header and table), entropy (empirical H), and
// overhead_pct = 100 * (bits_per_sym / entropy - 1); payload_overhead_pct the same for the coded
// symbols alone, table_pct the stored code-length / frequency table against n * H.
#include <benchmark/benchmark.h>

#include "coding/symbols.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace {

constexpr size_t kSymbols = 1 << 20;

std::vector<uint32_t> laplacian(size_t n, uint32_t alphabet, double scale, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> mag(1.0 / scale);
  std::vector<uint32_t> v(n);
  const int64_t centre = alphabet / 2;
  for (auto& x : v) {
    int64_t k = (int64_t)std::floor(mag(rng) + 0.5);
    if (rng() & 1) k = -k;
    x = (uint32_t)std::clamp<int64_t>(centre + k, 0, alphabet - 1);
  }
  return v;
}

// Codebook indices: lognormal usage over `alphabet` codewords, no order.
std::vector<uint32_t> codebook_indices(size_t n, uint32_t alphabet, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> ln(0.0, 1.0);
  std::vector<double> w(alphabet);
  for (auto& x : w) x = ln(rng);
  std::discrete_distribution<uint32_t> d(w.begin(), w.end());
  std::vector<uint32_t> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Source by index: 0 laplace over 16, 1 laplace over 256, 2 codebook over 4096, 3 codebook 65536.
struct Source {
  std::vector<uint32_t> syms;
  uint32_t alphabet;
};
const Source& source(int id) {
  static const Source s[4] = {{laplacian(kSymbols, 16, 1.5, 1), 16},
                              {laplacian(kSymbols, 256, 12.0, 2), 256},
                              {codebook_indices(kSymbols, 4096, 3), 4096},
                              {codebook_indices(kSymbols, 65536, 4), 65536}};
  return s[id];
}

void set_counters(benchmark::State& state, const Source& src, const std::vector<uint8_t>& stream) {
  const double n = (double)src.syms.size();
  const double bps = stream.size() * 8.0 / n;
  const double h = bb::empirical_entropy_bits(src.syms, src.alphabet) / n;
  const bb::SymbolStreamInfo info = bb::inspect_symbols(stream);
  state.counters["bits_per_sym"] = bps;
  state.counters["entropy"] = h;
  state.counters["overhead_pct"] = h > 0 ? 100.0 * (bps / h - 1.0) : 0.0;
  // The coded symbols alone (no header, no table): the coder's own loss against H.
  state.counters["payload_overhead_pct"] = h > 0 ? 100.0 * (info.payload_bits / n / h - 1.0) : 0.0;
  state.counters["table_pct"] = h > 0 ? 100.0 * (info.table_bits / n / h) : 0.0;
  state.SetItemsProcessed((int64_t)state.iterations() * (int64_t)src.syms.size());
  state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)src.syms.size());
}

void BM_Encode(benchmark::State& state, bb::Coder coder) {
  const Source& src = source((int)state.range(0));
  std::vector<uint8_t> out;
  for (auto _ : state) {
    out = bb::encode_symbols(src.syms, src.alphabet, coder);
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, src, out);
}

void BM_Decode(benchmark::State& state, bb::Coder coder) {
  const Source& src = source((int)state.range(0));
  const std::vector<uint8_t> enc = bb::encode_symbols(src.syms, src.alphabet, coder);
  for (auto _ : state) {
    std::vector<uint32_t> d = bb::decode_symbols(enc);
    benchmark::DoNotOptimize(d.data());
  }
  set_counters(state, src, enc);
}

void sources(benchmark::internal::Benchmark* b) {
  b->ArgName("src")->Arg(0)->Arg(1)->Arg(2)->Arg(3)->Unit(benchmark::kMillisecond);
}

BENCHMARK_CAPTURE(BM_Encode, huffman, bb::Coder::huffman)->Apply(sources);
BENCHMARK_CAPTURE(BM_Decode, huffman, bb::Coder::huffman)->Apply(sources);
BENCHMARK_CAPTURE(BM_Encode, rans, bb::Coder::rans)->Apply(sources);
BENCHMARK_CAPTURE(BM_Decode, rans, bb::Coder::rans)->Apply(sources);
// Fixed-width pack / unpack (4-bit, 8-bit byte-aligned, 12-bit, 16-bit).
BENCHMARK_CAPTURE(BM_Encode, fixed, bb::Coder::fixed)->Apply(sources);
BENCHMARK_CAPTURE(BM_Decode, fixed, bb::Coder::fixed)->Apply(sources);

}  // namespace
