#include "methods/smoke.h"

#include "common/error.h"

namespace bb {

const std::map<std::string, std::string>& smoke_params(const std::string& method) {
  static const std::map<std::string, std::map<std::string, std::string>> table = {
      {"fp32", {}},
      {"fp16", {}},
      {"uniform", {{"bits", "3"}}},
      {"kmeans", {{"bits", "2"}, {"max_iter", "10"}, {"init", "linear"}}},
      {"hessian_kmeans", {{"bits", "2"}, {"max_iter", "10"}, {"target_bpw", "0"}, {"hessian_images", "20"}, {"hessian_batch", "10"}}},
      {"uniform_ecsq", {{"target_bpw", "2"}, {"hessian_images", "20"}, {"hessian_batch", "10"}}},
      {"ecsq", {{"target_bpw", "2"}, {"hessian_images", "20"}, {"hessian_batch", "10"}, {"max_iter", "5"}, {"init_clusters", "64"}}},
      {"kq", {{"target_bpw", "2"}, {"calib_images", "16"}, {"kmeans_iters", "3"}, {"grid_iters", "1"}, {"alloc_max_bits", "6"},
              {"kmeans_metric", "output"}, {"alloc_proxy", "mse"}, {"sequential", "true"}}},
      {"pq", {{"em_iters", "2"}, {"calib_images", "16"}, {"patches_per_iter", "512"}}},
      {"gptq", {{"target_bpw", "2"}, {"calib_images", "8"}, {"steps_per_octave", "1"}}},
      {"tq", {{"target_bpw", "2"}, {"blocks", "1"}, {"calib_images", "2"}, {"batch_size", "2"}, {"step_search", "weight"}, {"transform", "elt"}}},
      // Lossless and shell-only (no Python): the payload is the layers' weights and their checksum.
      {"external",
       {{"encode", "cp {layer_weights} {out}/w.pt && cksum < {out}/w.pt > {out}/w.sum"},
        {"decode", "cksum < {payload}/w.pt | cmp -s - {payload}/w.sum && cp {payload}/w.pt {out} || "
                   "{ echo 'payload checksum mismatch' >&2; exit 1; }"}}},
  };
  auto it = table.find(method);
  BB_CHECK(it != table.end(), "method '", method, "' has no smoke settings: add them in src/methods/smoke.cpp");
  return it->second;
}

}  // namespace bb
