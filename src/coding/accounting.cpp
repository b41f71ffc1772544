#include "coding/accounting.h"
#include "common/error.h"

#include <set>

namespace bb {

nlohmann::json Accounting::to_json() const {
  return {{"n_weights", n_weights},   {"n_params", n_params},       {"file_bytes", file_bytes},
          {"bpw_core", bpw_core},     {"bpw_total", bpw_total},     {"est_bpw_core", est_bpw_core},
          {"bpw_choi", bpw_choi},     {"size_mb_stock", size_mb_stock}, {"bpw_young", bpw_young},
          {"bpw_yu_conv", bpw_yu_conv}, {"compression_ratio", bpw_core > 0 ? 32.0 / bpw_core : 0.0},
          {"breakdown", breakdown}};
}

Accounting account(const Model& model, const BbzFile& file, const BbzSizes& sizes) {
  Accounting a;
  a.n_weights = model.num_weights();
  a.n_params = model.num_params();
  a.file_bytes = sizes.total;
  std::set<std::string> params;
  for (auto& n : model.parameter_names()) params.insert(n);

  std::map<std::string, const BbzSizes::Layer*> rec_size;
  for (auto& l : sizes.layers) rec_size[l.layer] = &l;
  std::map<std::string, const LayerRecord*> recs;
  for (auto& r : file.layers) recs[r.layer] = &r;

  double core_bits = 0, est_bits = 0, young_bits = 0, conv_bits = 0, conv_weights = 0;
  double stock_bits = 0;  // compressed layers only; the rest is added below
  int64_t compressed_weights = 0;
  double comp[3] = {0, 0, 0};
  double stored_weight_bytes = 0;
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : model.layers()) {
    const int64_t numel = l.weight().numel();
    nlohmann::json j = {{"layer", l.name}, {"kind", l.is_conv() ? "conv" : "linear"}, {"numel", numel}};
    double bits;
    auto it = recs.find(l.name);
    if (it != recs.end()) {
      const auto* s = rec_size.at(l.name);
      bits = 8.0 * s->total();
      const auto& e = it->second->estimate;
      double est = e.index_bits + e.codebook_bits + e.side_bits;
      est_bits += est;
      young_bits += e.fixed_index_bits + e.codebook_bits;
      stock_bits += e.fixed_index_bits + 16.0 * e.codebook_values;
      compressed_weights += numel;
      comp[0] += s->indices;
      comp[1] += s->codebook;
      comp[2] += s->side;
      j["method"] = s->method;
      j["bytes"] = {{"indices", s->indices}, {"codebook", s->codebook}, {"side", s->side}};
      j["estimate_bits"] = {{"index", e.index_bits}, {"codebook", e.codebook_bits}, {"side", e.side_bits},
                            {"fixed_index", e.fixed_index_bits}, {"codebook_values", e.codebook_values}};
    } else {
      auto ts = sizes.tensors.find(l.name + ".weight");
      BB_CHECK(ts != sizes.tensors.end(), "file holds neither a record nor a tensor for layer '", l.name, "'");
      bits = 8.0 * ts->second;
      stored_weight_bytes += ts->second;
      est_bits += 32.0 * numel;
      young_bits += 32.0 * numel;
      j["method"] = "stored";
      j["bytes"] = {{"stored", ts->second}};
    }
    core_bits += bits;
    if (l.is_conv()) {
      conv_bits += bits;
      conv_weights += numel;
    }
    j["bits_per_weight"] = bits / numel;
    layers.push_back(j);
  }
  double other_param_bytes = 0, buffer_bytes = 0;
  for (auto& kv : sizes.tensors) {
    bool is_weight = false;
    for (const auto& l : model.layers())
      if (kv.first == l.name + ".weight") is_weight = true;
    if (is_weight) continue;
    (params.count(kv.first) ? other_param_bytes : buffer_bytes) += kv.second;
  }
  a.bpw_core = core_bits / a.n_weights;
  a.bpw_total = 8.0 * a.file_bytes / a.n_params;
  a.est_bpw_core = est_bits / a.n_weights;
  a.bpw_choi = (core_bits + 32.0 * (a.n_params - a.n_weights)) / a.n_params;
  a.bpw_young = young_bits / a.n_weights;
  a.bpw_yu_conv = conv_weights > 0 ? conv_bits / conv_weights : 0;
  a.size_mb_stock = (stock_bits + 32.0 * (a.n_params - compressed_weights)) / 8.0 / (1 << 20);
  a.breakdown = {{"layers", layers},
                 {"components_bytes",
                  {{"indices", comp[0]},
                   {"codebook", comp[1]},
                   {"side", comp[2]},
                   {"stored_weights", stored_weight_bytes},
                   {"other_params", other_param_bytes},
                   {"buffers", buffer_bytes},
                   {"header", sizes.header},
                   {"checksum", sizes.checksum}}}};
  return a;
}

}  // namespace bb
