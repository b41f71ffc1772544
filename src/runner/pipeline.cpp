#include "runner/pipeline.h"

#include <set>
#include "common/error.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/runtime.h"
#include "common/timer.h"
#include "data/memo_dataset.h"
#include "methods/smoke.h"
#include "models/registry.h"

#include <cmath>
#include <filesystem>
#include <set>

namespace bb {

// The registered dataset file marked `default_calibration: true` for the family (configs/datasets).
std::string default_calibration(const std::string& family) {
  const std::string name = default_calibration_for_family(family);
  BB_CHECK(!name.empty(), "no default calibration set for family '", family,
           "' (mark one file of configs/datasets `default_calibration: true`, or pass one)");
  return name;
}

nlohmann::json CompressOutcome::to_json() const {
  nlohmann::json j = accounting.to_json();
  nlohmann::json ev = nlohmann::json::object();
  for (auto& e : evals) ev[e.dataset] = e.to_json();
  j["eval"] = ev;
  if (!evals.empty()) {
    j["top1"] = evals.front().top1;
    j["top5"] = evals.front().top5;
  }
  j["phase_seconds"] = phase_seconds;
  j["provenance"] = provenance;
  if (!rate_target.is_null()) j["rate_target"] = rate_target;
  return j;
}

StateDict decode_bbz(const BbzFile& f, const std::string& what) {
  StateDict sd;
  // Every record is checked against the architecture before it is decoded: a record for a layer
  // the model lacks, or one whose shape differs from the layer's, is an error, so a decoder only
  // ever allocates what the model holds (its streams are bounded by the record's shape).
  BB_CHECK(has_model(f.model), what, ": unknown model '", printable(f.model), "'");
  auto arch = make_model(f.model);
  std::set<std::string> seen;
  // The decoded weight of a record, checked against the record's shape.
  auto put = [&](const LayerRecord& rec, const torch::Tensor& w) {
    const std::string layer = printable(rec.layer);
    BB_CHECK(w.defined(), what, ": layer '", layer, "': method '", rec.method, "' decoded no weight");
    std::vector<int64_t> got(w.sizes().begin(), w.sizes().end());
    BB_CHECK(got == rec.shape, what, ": layer '", layer, "': method '", rec.method, "' decoded shape ", w.sizes(),
             " but the record says ", c10::IntArrayRef(rec.shape));
    sd[rec.layer + ".weight"] = w.to(torch::kFloat32).contiguous();
  };
  std::map<std::string, std::vector<const LayerRecord*>> together;  // method -> its records (decodes_together)
  for (const auto& rec : f.layers) {
    const std::string layer = printable(rec.layer);
    const int li = arch->layer_index(rec.layer);
    BB_CHECK(li >= 0, what, ": the record for layer '", layer, "' names no layer of model '", f.model, "'");
    BB_CHECK(seen.insert(rec.layer).second, what, ": two records for layer '", layer, "'");
    const auto want = arch->layers()[li].weight().sizes().vec();
    BB_CHECK(rec.shape == want, what, ": layer '", layer, "': the record's shape ", c10::IntArrayRef(rec.shape),
             " is not the model's ", c10::IntArrayRef(want));
    BB_CHECK(has_method(rec.method), what, ": layer '", layer, "': unknown method '", printable(rec.method), "'");
    auto method = make_method(rec.method);
    if (method->decodes_together()) {
      together[rec.method].push_back(&rec);
      continue;
    }
    torch::Tensor w;
    try {
      w = method->decode(rec);
    } catch (const Error& e) {
      BB_THROW(what, ": layer '", layer, "' (method '", rec.method, "'): ", e.what());
    }
    put(rec, w);
  }
  for (const auto& kv : together) {
    std::vector<torch::Tensor> ws;
    try {
      ws = make_method(kv.first)->decode_together(kv.second, f.provenance);
    } catch (const Error& e) {
      BB_THROW(what, ": layer '", printable(kv.second.front()->layer), "' (method '", kv.first, "', decoded with ",
               kv.second.size() == 1 ? std::string("no other record") : std::to_string(kv.second.size() - 1) + " more records",
               "): ", e.what());
    }
    BB_CHECK(ws.size() == kv.second.size(), what, ": method '", kv.first, "' decoded ", ws.size(), " weights for ",
             kv.second.size(), " records");
    for (size_t i = 0; i < ws.size(); ++i) put(*kv.second[i], ws[i]);
  }
  for (const auto& t : f.tensors) {
    BB_CHECK(!sd.count(t.name), what, ": tensor '", printable(t.name), "' is stored twice in the file");
    sd[t.name] = t.value;
  }
  return sd;
}

CompressOutcome compress_smoke(const std::string& method, const std::string& out_path) {
  CompressRequest req;
  req.model = "cifar_resnet20";
  req.weights = data_root("") + "/models/cifar10_resnet20.pt";
  req.method = method;
  req.params = smoke_params(method);
  req.calib_dataset = "cifar10-jpeg-train";
  req.seed = 0;
  req.out_path = out_path;
  return compress_model(req);
}

CompressOutcome compress_model(const CompressRequest& req) {
  CompressOutcome out;
  double t = now_seconds();
  auto lap = [&](const std::string& phase) {
    double n = now_seconds();
    out.phase_seconds[phase] += n - t;
    t = n;
  };
  BB_CHECK(req.rest_dtype == "fp32" || req.rest_dtype == "fp16", "rest dtype must be fp32 or fp16, got '",
           req.rest_dtype, "'");
  BB_CHECK(!req.out_path.empty(), "no output path given for the .bbz file");
  auto model = make_model(req.model);
  load_weights(*model, req.weights);
  const std::string weights_hash = sha256_file(req.weights);
  auto method = make_method(req.method);
  ParamBinder::apply(method->params(), req.params, "method '" + req.method + "'");
  lap("load");

  CompressContext ctx;
  ctx.model = model.get();
  ctx.seed = req.seed;
  ctx.cache_dir = req.cache_dir;
  ctx.weights_hash = weights_hash;
  // ctx.phase(name) starts phase `name`: the time until the next call (or the method's return) is
  // charged to it; what a method does before its first call is charged to "method".
  std::string method_phase = "method";
  ctx.phase = [&](const std::string& name) {
    lap(method_phase);
    method_phase = name;
  };
  std::string calib_name;
  if (method->needs_calibration()) {
    calib_name = req.calib_dataset.empty() ? default_calibration(model->input_spec().family) : req.calib_dataset;
    ctx.calib = open_dataset_memoized(calib_name, req.data_root);
    check_model_dataset(*model, *ctx.calib);
    if (dataset_role(calib_name) != "train")
      log_warn("calibrating on '" + calib_name + "', which is evaluation data: accuracy on it is optimistic");
  }
  log_info("compressing " + req.model + " with " + req.method);
  std::vector<LayerRecord> records = method->compress(ctx);
  lap(method_phase);
  ctx.phase = [](const std::string&) {};  // the closure refers to locals of this call
  const std::string rate_note = ctx.rate_note;

  // In-memory decode: what the method intends the evaluated weights to be.
  model->eval();
  BbzFile f;
  f.model = req.model;
  out.provenance = {{"bitbench_version", bitbench_version()},
                    {"git_commit", git_commit()},
                    {"method", req.method},
                    {"algorithm_version", method->algorithm_version()},
                    {"params", ParamBinder::to_json(method->params())},
                    {"weights_file", portable_data_path(req.weights)},
                    {"weights_sha256", weights_hash},
                    {"calibration", calib_name},
                    {"seed", req.seed},
                    {"rest_dtype", req.rest_dtype}};
  f.provenance = out.provenance;
  std::map<std::string, torch::Tensor> in_memory;
  std::vector<const LayerRecord*> together;  // a method that decodes its records at once
  for (auto& rec : records) {
    BB_CHECK(model->layer_index(rec.layer) >= 0, "method '", req.method, "' returned a record for unknown layer '",
             rec.layer, "'");
    BB_CHECK(!in_memory.count(rec.layer), "method '", req.method, "' returned layer '", rec.layer, "' twice");
    rec.method = rec.method.empty() ? req.method : rec.method;
    if (method->decodes_together()) {
      in_memory[rec.layer] = torch::Tensor();
      together.push_back(&rec);
    } else {
      in_memory[rec.layer] = method->decode(rec);
    }
  }
  if (!together.empty()) {
    std::vector<torch::Tensor> ws = method->decode_together(together, out.provenance);
    BB_CHECK(ws.size() == together.size(), "method '", req.method, "' decoded ", ws.size(), " weights for ",
             together.size(), " records");
    for (size_t i = 0; i < ws.size(); ++i) in_memory[together[i]->layer] = ws[i];
  }
  f.layers = records;
  for (auto& kv : model->state()) {
    bool compressed = false;
    for (auto& rec : records)
      if (kv.first == rec.layer + ".weight") compressed = true;
    if (compressed) continue;
    StoredTensor st;
    st.name = kv.first;
    st.value = kv.second.detach().clone();
    st.fp16 = req.rest_dtype == "fp16" && kv.second.is_floating_point();
    f.tensors.push_back(st);
  }
  BbzSizes wsizes;
  write_bbz(req.out_path, f, &wsizes);
  lap("write");

  // Everything evaluated comes from the file.
  // A file that does not decode to the method's weights is not left behind.
  BbzSizes rsizes;
  BbzFile back;
  StateDict sd;
  try {
    back = read_bbz(req.out_path, &rsizes);
    sd = decode_bbz(back, req.out_path);
    for (auto& kv : in_memory) {
      const auto& got = sd.at(kv.first + ".weight");
      BB_CHECK(got.sizes() == kv.second.sizes() && torch::equal(got, kv.second.to(torch::kFloat32)), "layer '",
               kv.first, "': weights decoded from the file differ from the method's in-memory result");
    }
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(req.out_path, ec);
    throw;
  }
  load_state_dict(*model, sd, "compressed file '" + req.out_path + "'");
  lap("decode");
  out.accounting = account(*model, back, rsizes);
  BB_CHECK(out.accounting.file_bytes == (int64_t)std::filesystem::file_size(req.out_path),
           "accounting disagrees with the file size of '", req.out_path, "'");
  if (const auto& p = out.provenance["params"]; p.contains("target_bpw") && p["target_bpw"].is_number() &&
                                                p["target_bpw"].get<double>() > 0) {
    const double want = p["target_bpw"].get<double>();
    const bool conv = p.contains("target_scope") && p["target_scope"] == "conv";
    const double got = conv ? out.accounting.bpw_yu_conv : out.accounting.bpw_core;
    const double rel = (got - want) / want;
    out.rate_target = {{"requested", want},
                       {"reached", got},
                       {"measure", conv ? "bpw_yu_conv" : "bpw_core"},
                       {"relative_error", rel},
                       {"within_2pct", std::fabs(rel) <= 0.02}};
    if (!rate_note.empty()) out.rate_target["why"] = rate_note;
    if (std::fabs(rel) > 0.02)
      log_warn("method '" + req.method + "': target_bpw " + std::to_string(want) + " reached " + std::to_string(got) +
               " (" + (conv ? "bpw_yu_conv" : "bpw_core") + ", " + std::to_string(100 * rel) +
               " %): off by more than 2%");
  }

  for (auto& name : req.eval_datasets) {
    auto ds = open_dataset_memoized(name, req.data_root);
    EvalOptions eo;
    eo.limit = req.eval_limit;
    out.evals.push_back(evaluate(*model, *ds, eo));
  }
  lap("eval");
  return out;
}

}  // namespace bb
