// Scalar weight sharing, the machinery common to kmeans, hessian_kmeans, uniform_ecsq and ecsq
// (Deep Compression; Choi et al. 2017): every conv/linear weight is replaced by one of a few
// shared values, optionally after magnitude pruning; the shared values come from one codebook for
// the whole network (scope=network) or one per layer (scope=layer).
//
// Flow: prepare (prune [+ retrain with the mask], Hessian) -> the method's quantizer -> optional
// fine-tuning of the shared values -> records. This file is the algorithm; the method glue
// (parameters, the compress context, prepare / fine-tune / finish) is methods/weight_sharing_method.h.
//
// Record of one layer (decode needs nothing else):
//   "codebook"  codebook   varint k, u8 fp16 flag, k values (f32 or f16), ascending: the shared
//                          values this layer uses. With scope=network every layer stores the
//                          subset of the network codebook it uses, so the network codebook is
//                          paid for once per layer that uses it (the interface decodes one
//                          record at a time; counted honestly).
//   "idx"       indices    symbol stream (coder fixed|huffman|rans) of per-weight codebook
//                          indices, kept weights only, in row-major order
//   "pos"       indices    pruned only: varint run alphabet, then the Huffman-coded run stream
//                          of coding/prune.h (Deep Compression's index differences)
#pragma once
#include "coding/record.h"
#include "models/model.h"
#include "quant/finetune_shared.h"
#include "quant/hessian.h"

#include <functional>
#include <string>
#include <vector>

namespace bb {

// Settings shared by the four methods; each method sets its own defaults (the parameter names:
// SharingMethodParams::bind in methods/weight_sharing_method.h).
struct SharingParams {
  std::string scope = "network";    // network (one codebook) | layer (one per layer)
  std::string weighting = "hessian";// hessian (h_i = Hessian diagonal) | none (h_i = 1)
  std::string coder = "huffman";    // index stream coder: fixed | huffman | rans
  bool codebook_fp16 = false;       // store shared values as fp16 instead of fp32
  double target_bpw = 0;            // rate target in bits per weight (0 = off; method-specific use)
  double rate_tol = 0.005;          // rate search stops within this relative distance of the target

  HessianParams hessian;
  // The importance h as the quantizers see it, from the estimate, in this order (then scaled to
  // mean 1): floor, power, per-layer normalisation, damping.
  double hessian_floor = 1e-6;      // h_i >= floor * mean(h) (Hutchinson's negative entries included)
  double hessian_power = 1.0;       // h_i <- h_i^power (1: as estimated; 0.5 compresses its range)
  std::string hessian_norm = "none";// none | layer: each layer's h divided by its mean (weighting
                                    // then only redistributes error within a layer)
  double hessian_damping = 0;       // h_i <- h_i + damping * mean(h) (-> infinity: weighting=none)

  double prune_keep = 1.0;          // fraction of weights kept by magnitude pruning (1 = no pruning)
  std::string prune_scope = "layer";// layer (same fraction per layer) | network (one threshold)
  int prune_run_alphabet = 32;      // position runs: symbols 0..alphabet-2 plus one escape
  double prune_retrain_epochs = 0;  // retrain kept weights (mask fixed) before quantizing
  double prune_retrain_lr = 1e-4;

  FinetuneOptions finetune;         // finetune.epochs = 0: no fine-tuning of the shared values
  bool finetune_average = false;    // codeword gradient = mean (not sum) of member gradients

  void validate();
  bool pruned() const { return prune_keep < 1.0; }
};

// The weights to quantize: kept weights of every conv/linear layer, concatenated in layer order.
struct SharingProblem {
  std::vector<int> layers;               // indices into Model::layers()
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<torch::Tensor> masks;      // bool, per layer; undefined when not pruned
  std::vector<float> x;                  // kept weight values
  std::vector<float> h;                  // their importance (empty when weighting=none); mean 1
  std::vector<int64_t> offset;           // layer l owns x[offset[l], offset[l+1])
  int64_t total_weights = 0;             // all weights of the compressed layers (pruned included)
  int64_t size(size_t l) const { return offset[l + 1] - offset[l]; }
  const float* hptr() const { return h.empty() ? nullptr : h.data(); }
};

// Applies hessian_power, hessian_norm and hessian_damping to prob.h (already floored, >= 0) and
// scales it to mean 1. No-op when prob.h is empty (weighting=none).
void shape_importance(SharingProblem& prob, const SharingParams& p);

// A quantization of a problem: per layer its cluster values and per kept weight its cluster.
struct SharingSolution {
  std::vector<std::vector<double>> centers;  // per layer
  std::vector<int32_t> assign;               // per kept weight (problem order)
  double distortion = 0;                     // sum h (x - c)^2 over kept weights
};

// Runs `quantize` on the whole problem (scope=network; every layer gets the same centres) or on
// each layer alone (scope=layer). quantize(x, h, n) -> (centres, assignment).
using ScalarQuantizeFn = std::function<void(const float* x, const float* h, int64_t n, std::vector<double>& centers,
                                            std::vector<int32_t>& assign)>;
SharingSolution solve_sharing(const SharingProblem& prob, const SharingParams& p, const ScalarQuantizeFn& quantize);

// Records of a solution (the values as stored, fp16-rounded if asked).
std::vector<LayerRecord> encode_sharing(const SharingProblem& prob, const SharingSolution& sol, const SharingParams& p,
                                        const std::string& method);
torch::Tensor decode_sharing(const LayerRecord& rec);

// Coded size of the records in bits as the container counts it for bpw_core: every record as
// serialised (sections and record header).
double sharing_bits(const std::vector<LayerRecord>& recs);
inline double sharing_bpw(const SharingProblem& prob, const std::vector<LayerRecord>& recs) {
  return sharing_bits(recs) / (double)prob.total_weights;
}

// Rate search over a scalar knob t in [lo, hi] on which the rate is non-increasing (e.g. a step
// size or a Lagrange multiplier), by bisection on log t; the bracket is widened if needed.
// eval(t) returns the rate in bits per weight. Returns the knob whose rate came closest to target.
struct RateSearchResult {
  double knob = 0, bpw = 0;
  int evals = 0;
};
RateSearchResult search_rate(double lo, double hi, double target, double rel_tol, int max_evals,
                             const std::function<double(double)>& eval);
// The same search by secant steps on log t, for knobs whose rate is close to linear in log t
// (a Lagrange multiplier at moderate rates: R ~ -log2(t)/2 + const). Starts at `guess`, steps
// with the slope `dbpw_dlog` (expected d rate / d ln t, < 0) until the target is bracketed, then
// by regula falsi with the Illinois rule (which keeps a jump in the rate from stalling one end);
// it ends at the target within rel_tol, after max_evals, or at a jump (a bracket < 1e-4 in ln t).
// Typically 3-5 evaluations where bisection over a 10^4 bracket takes 8-10.
RateSearchResult search_rate_secant(double guess, double dbpw_dlog, double target, double rel_tol, int max_evals,
                                    const std::function<double(double)>& eval);

}  // namespace bb
