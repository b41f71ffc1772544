// KQ's codebook fine-tuning: the indices (and gain indices) stay fixed, each layer's codebook is a
// learnable k x d leaf and the layer's weight is rebuilt as codebook[idx] (* gain). A codeword's
// gradient is the average over the kernels that share it (grad_scale = 1 / members), as the
// paper does. Afterwards the codebook goes back onto its b-bit grid (a fresh per-layer scale);
// the caller re-encodes the records, so the file holds exactly what is evaluated; the index
// streams and hence the rate are unchanged.
#include "methods/kq_internal.h"

#include "common/error.h"

namespace bb {
namespace kq {

void finetune_codebooks(Model& model, const Dataset& calib, const std::vector<LayerCode*>& codes,
                        const FinetuneOptions& opt) {
  const auto& layers = model.layers();
  SharedWeights sw;
  std::vector<int> owner;
  for (int i = 0; i < (int)codes.size(); ++i) {
    if (!codes[i] || !codes[i]->idx.defined()) continue;
    const LayerCode& c = *codes[i];
    sw.add_indexed(i, c.codebook(), c.idx, layers[i].weight().sizes().vec(),
                   c.gain_bits > 0 ? c.gains.index_select(0, c.gain_idx) : torch::Tensor());
    owner.push_back(i);
  }
  BB_CHECK(!owner.empty(), "kq: finetune_epochs > 0 but no layer is quantized");
  opt.validate();
  {
    torch::AutoGradMode grad(true);  // compress() runs under NoGradGuard
    finetune_shared(model, calib, sw, opt);
  }
  torch::NoGradGuard ng;
  for (size_t a = 0; a < owner.size(); ++a) {
    LayerCode& c = *codes[owner[a]];
    auto tuned = sw.leaves[a].detach().contiguous();
    if (c.codebook_bits == 32) {
      c.codebook_f = tuned;
    } else {
      c.scale = grid_scale(tuned, torch::bincount(c.idx, {}, c.k), c.codebook_bits);
      c.codebook_q = to_grid(tuned, c.scale, c.codebook_bits);
    }
  }
}

}  // namespace kq
}  // namespace bb
