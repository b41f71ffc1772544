#include "quant/prune.h"
#include "common/error.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace bb {

namespace {
// Keeps the `count` largest |w| among `vals` (flat), ties by lower position; returns flags.
std::vector<uint8_t> keep_largest(const std::vector<float>& mag, int64_t count) {
  const int64_t n = (int64_t)mag.size();
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  count = std::max<int64_t>(0, std::min(count, n));
  std::nth_element(order.begin(), order.begin() + count, order.end(), [&](int64_t a, int64_t b) {
    return mag[a] > mag[b] || (mag[a] == mag[b] && a < b);
  });
  std::vector<uint8_t> keep(n, 0);
  for (int64_t i = 0; i < count; ++i) keep[order[i]] = 1;
  return keep;
}
}  // namespace

std::vector<torch::Tensor> magnitude_prune_masks(const std::vector<torch::Tensor>& weights, double keep,
                                                 const std::string& scope) {
  BB_CHECK(keep > 0 && keep <= 1, "prune: keep ratio must be in (0, 1], got ", keep);
  BB_CHECK(scope == "layer" || scope == "network", "prune: scope must be layer or network, got '", scope, "'");
  std::vector<std::vector<float>> mags;
  for (auto& w : weights) {
    auto t = w.detach().abs().contiguous().to(torch::kFloat32).view(-1);
    mags.emplace_back(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
  }
  std::vector<std::vector<uint8_t>> flags;
  if (scope == "layer") {
    for (auto& m : mags) flags.push_back(keep_largest(m, std::max<int64_t>(1, std::llround(keep * (double)m.size()))));
  } else {
    std::vector<float> all;
    for (auto& m : mags) all.insert(all.end(), m.begin(), m.end());
    auto f = keep_largest(all, std::max<int64_t>(1, std::llround(keep * (double)all.size())));
    size_t off = 0;
    for (auto& m : mags) {
      flags.emplace_back(f.begin() + off, f.begin() + off + m.size());
      off += m.size();
    }
  }
  std::vector<torch::Tensor> out;
  for (size_t l = 0; l < weights.size(); ++l) {
    auto t = torch::from_blob(flags[l].data(), {(int64_t)flags[l].size()}, torch::kUInt8).clone();
    out.push_back(t.to(torch::kBool).view(weights[l].sizes()));
  }
  return out;
}

std::vector<uint32_t> mask_to_runs(const std::vector<uint8_t>& mask, uint32_t alphabet) {
  BB_CHECK(alphabet >= 2, "prune: run alphabet must be >= 2, got ", alphabet);
  const uint32_t esc = alphabet - 1;
  std::vector<uint32_t> runs;
  uint64_t gap = 0;
  for (uint8_t m : mask) {
    if (!m) {
      ++gap;
      continue;
    }
    while (gap >= esc) {
      runs.push_back(esc);
      gap -= esc;
    }
    runs.push_back((uint32_t)gap);
    gap = 0;
  }
  return runs;
}

std::vector<uint8_t> runs_to_mask(const std::vector<uint32_t>& runs, int64_t n, uint32_t alphabet) {
  BB_CHECK(alphabet >= 2, "prune: run alphabet must be >= 2, got ", alphabet);
  BB_CHECK(n >= 0, "prune: negative size");
  const uint32_t esc = alphabet - 1;
  std::vector<uint8_t> mask(n, 0);
  int64_t pos = 0;
  for (uint32_t s : runs) {
    BB_CHECK(s < alphabet, "prune: run symbol ", s, " outside alphabet ", alphabet);
    pos += s;
    if (s == esc) continue;
    BB_CHECK(pos < n, "prune: position stream overruns the tensor (", n, " weights)");
    mask[pos++] = 1;
  }
  BB_CHECK(pos <= n, "prune: position stream overruns the tensor (", n, " weights)");
  return mask;
}

}  // namespace bb
