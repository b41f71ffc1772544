// Golden numbers: the committed results/table2/table.json (written by `make reproduce-table2`) is
// a regression reference. This re-runs a small, cheap slice of experiments/table2.yaml on the
// lossless 1k set and fails if the bits or the top-1 drift.
//   bits: exact (same config and seed give the same weight bytes; bpw_core follows from them);
//   file bytes: the same up to the provenance block (resolved parameters as JSON);
//   top-1: within 0.2 points (2 of 1000 images), room for a different BLAS summing in another
//   order on another machine, nothing more.
#include <catch2/catch.hpp>

#include "coding/bbz.h"
#include "common/hash.h"
#include "common/runtime.h"
#include "methods/method.h"
#include "runner/experiment.h"
#include "methods/smoke.h"
#include "runner/pipeline.h"
#include "runner/runner.h"
#include "smoke_files.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace bb;

TEST_CASE("golden: a slice of results/table2 reproduces its bits and top-1", "[golden]") {
  const std::string table_path = source_dir() + "/results/table2/table.json";
  REQUIRE(fs::exists(table_path));
  nlohmann::json table = nlohmann::json::parse(std::ifstream(table_path));
  const auto& rows = table.at("models").at("cifar_resnet20").at("rows");

  Experiment ex = load_experiment(source_dir() + "/experiments/table2.yaml");
  apply_tuned(ex);  // as `bitbench run` does: rows tuned on validation use results/table2/tuned.yaml
  // The cheap methods of the slice: no calibration data, seconds each.
  auto wanted = [](const RunSpec& r) {
    if (r.model != "cifar_resnet20") return false;
    if (r.method == "fp32") return true;
    if (r.method == "uniform" && r.params.at("bits") == "4" && r.params.at("coder") == "fixed") return true;
    if (r.method == "kmeans" && r.params.at("bits") == "3") return true;
    return false;
  };
  int checked = 0;
  std::string tmp = fs::temp_directory_path() / ("bb-golden-" + std::to_string(getpid()) + ".bbz");
  for (RunSpec r : ex.runs) {
    if (!wanted(r)) continue;
    const std::string id = run_id(r);
    const nlohmann::json* row = nullptr;
    for (const auto& x : rows)
      if (x.value("run_id", "") == id) row = &x;
    INFO("run " << id << " " << r.method << " " << r.label);
    REQUIRE(row != nullptr);  // the committed table holds this run

    CompressRequest req;
    req.model = r.model;
    req.weights = r.model_cfg.weights;
    req.method = r.method;
    req.params = r.params;
    req.calib_dataset = r.calibration;
    req.seed = r.seed;
    req.out_path = tmp;
    req.eval_datasets = {"cifar10-lossless-1k"};
    CompressOutcome out = compress_model(req);
    std::remove(tmp.c_str());

    // The conv/linear weights' bytes, exactly (bpw_core is computed from them).
    CHECK(out.accounting.bpw_core == Approx(row->at("bits").get<double>()).epsilon(1e-12));
    // The whole file also holds the provenance block, the resolved parameters as JSON, which
    // grows by a few dozen bytes whenever a method gains a parameter; the weights' bytes are
    // checked exactly above, the rest of the file may differ by that block only.
    const int64_t file_diff = out.accounting.file_bytes - row->at("file_bytes").get<int64_t>();
    INFO("file bytes now " << out.accounting.file_bytes << ", golden " << row->at("file_bytes").get<int64_t>()
                           << "; provenance now " << out.provenance.dump().size() << " bytes");
    CHECK(std::llabs(file_diff) <= 256);
    const double golden = row->at("top1").at("cifar10-lossless-1k").get<double>();
    INFO("top-1 now " << out.evals.at(0).top1 << ", golden " << golden);
    CHECK(std::fabs(out.evals.at(0).top1 - golden) <= 0.2 + 1e-9);
    ++checked;
  }
  REQUIRE(checked == 3);
}

// Golden bytes per method: every registered method compresses cifar_resnet20 once with cheap
// settings, and the sha256 of the written .bbz with its provenance block emptied (which holds
// the git commit) must equal tests/golden/methods.json for the method's algorithm_version().
// A method whose bytes change without a bump of its version fails here: the bump makes the
// runner treat its old records as stale instead of reusing them as current. After a deliberate
// change: bump algorithm_version() in src/methods/<method>.cpp, then regenerate the file with
//   BITBENCH_UPDATE_GOLDEN=1 build/bitbench_tests "[golden-methods]"
// (it rewrites only the methods whose version changed or that are new; a changed hash under an
// unchanged version stays an error).
TEST_CASE("golden: each method's output bytes are pinned to its algorithm version", "[golden][golden-methods]") {
  const std::string golden_path = source_dir() + "/tests/golden/methods.json";
  const bool update = std::getenv("BITBENCH_UPDATE_GOLDEN") != nullptr;
  nlohmann::json golden = fs::exists(golden_path) ? nlohmann::json::parse(std::ifstream(golden_path)) : nlohmann::json::object();
  // Cheap settings (src/methods/smoke.cpp): seconds per method; every method's own code path
  // (calibration, search, coding) still runs.
  std::string weights_path = data_root("") + "/models/cifar10_resnet20.pt";
  REQUIRE(fs::exists(weights_path));
  // The bytes are pinned for OpenBLAS's canonical kernels (pin_blas_environment: every CPU with
  // AVX-512 runs them); other kernels give other floats, so elsewhere the hashes are not compared
  // (and never written), and the test says so.
  const std::string kernels = blas_kernels();
  const bool canonical = kernels == kCanonicalBlasKernels;
  if (!canonical)
    WARN("OpenBLAS runs its '" << kernels << "' kernels, not the canonical '" << kCanonicalBlasKernels
                               << "' the golden bytes were computed with (this CPU lacks AVX-512, or "
                                  "OPENBLAS_CORETYPE was set): the hashes are not compared here");
  REQUIRE((canonical || !update));
  bool changed_file = false;
  for (const std::string& m : method_names()) {
    if (m.rfind("test_", 0) == 0) continue;  // probes registered by other tests
    INFO("method " << m);
    const std::map<std::string, std::string>& smoke = smoke_params(m);  // a new method adds its own
    BbzFile f = bbtest::smoke_file(m);
    f.provenance = nlohmann::json::object();
    const std::vector<uint8_t> bytes = serialize_bbz(f);
    const std::string sha = sha256_hex(std::string(bytes.begin(), bytes.end()));
    const int version = make_method(m)->algorithm_version();
    const nlohmann::json want = {{"algorithm_version", version},
                                 {"params", smoke},
                                 {"bytes", bytes.size()},
                                 {"sha256", sha}};
    const bool known = golden.contains(m);
    const bool same_version = known && golden[m].value("algorithm_version", -1) == version &&
                              golden[m].value("params", nlohmann::json()) == want["params"];
    if (same_version) {
      INFO("the bytes of '" << m << "' changed under the same algorithm_version " << version
                            << ": bump it in src/methods/" << m << ".cpp (old records become stale), then "
                            << "BITBENCH_UPDATE_GOLDEN=1 build/bitbench_tests \"[golden-methods]\"; golden "
                            << golden[m].dump() << ", now " << want.dump());
      if (canonical) CHECK(golden[m]["sha256"] == sha);
    } else if (update) {
      golden[m] = want;
      changed_file = true;
    } else {
      INFO("'" << m << "' (algorithm_version " << version << ") has no golden bytes for this version and these "
               << "settings: BITBENCH_UPDATE_GOLDEN=1 build/bitbench_tests \"[golden-methods]\" writes them; now "
               << want.dump());
      CHECK(known);
      CHECK(same_version);
    }
  }
  if (changed_file) {
    fs::create_directories(fs::path(golden_path).parent_path());
    std::ofstream(golden_path) << golden.dump(1) << "\n";
  }
}
