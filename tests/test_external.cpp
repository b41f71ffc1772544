// [external]: the `external` method (bring your own method as two shell commands). The contract:
// payload files become the record's bytes (bits = payload bytes + the container's per-record
// header bytes), decode runs on the payload read back from the .bbz, and every failure (exit
// status, timeout, missing / extra / mis-shaped / non-finite tensors) is a clear error with the
// command's output, with no file and no temp folder left behind.
// [external][python]: the Python examples of examples/external/ against the built-in methods they
// re-implement (uniform_zlib.py vs `uniform`, kmeans_pack.py vs `kmeans init=linear`).
#include <catch2/catch.hpp>

#include "coding/accounting.h"
#include "coding/bbz.h"
#include "common/error.h"
#include "common/fs_util.h"
#include "methods/external.h"
#include "methods/method.h"
#include "methods/smoke.h"
#include "models/registry.h"
#include "models/weights_io.h"
#include "runner/pipeline.h"
#include "test_data_helpers.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>

namespace fs = std::filesystem;
using namespace bb;

namespace {

std::string weights_path() { return data_root("") + "/models/cifar10_resnet20.pt"; }

// TMPDIR pointed at a fresh folder for the test's duration, so that the method's temp folders can
// be seen (and must be gone after every call).
struct SysTmp {
  bbtest::TempDir root;
  std::string dir, old;
  bool had_old = false;
  SysTmp() {
    dir = root / "sys";
    fs::create_directory(dir);
    if (const char* t = std::getenv("TMPDIR")) {
      had_old = true;
      old = t;
    }
    setenv("TMPDIR", dir.c_str(), 1);
  }
  ~SysTmp() {
    if (had_old)
      setenv("TMPDIR", old.c_str(), 1);
    else
      unsetenv("TMPDIR");
  }
  bool empty() const { return fs::is_empty(dir); }
};

CompressRequest request(const std::map<std::string, std::string>& params, const std::string& out) {
  CompressRequest req;
  req.model = "cifar_resnet20";
  req.weights = weights_path();
  req.method = "external";
  req.params = params;
  req.calib_dataset = "cifar10-jpeg-train";
  req.out_path = out;
  return req;
}

size_t varint_len(uint64_t v) {
  size_t n = 1;
  while (v >= 128) {
    v >>= 7;
    ++n;
  }
  return n;
}

// The bytes of every record as the container writes them (docs/FORMAT.md), from the records
// alone: the payload plus each record's own header. Returns {payload bytes, header bytes}.
std::pair<int64_t, int64_t> record_bytes(const BbzFile& f) {
  int64_t payload = 0, header = 0;
  for (const auto& r : f.layers) {
    header += (int64_t)(varint_len(r.layer.size()) + r.layer.size() + varint_len(r.method.size()) + r.method.size());
    header += (int64_t)varint_len(r.shape.size());
    for (int64_t d : r.shape) header += (int64_t)varint_len((uint64_t)d);
    header += 5 * 8;  // the estimate: 4 f64 + 1 i64
    header += (int64_t)varint_len(r.sections.size());
    for (const auto& s : r.sections) {
      header += (int64_t)(varint_len(s.name.size()) + s.name.size() + 1 + varint_len(s.bytes.size()));
      payload += (int64_t)s.bytes.size();
    }
  }
  return {payload, header};
}

// A decode command that ignores its payload and copies `pt` to {out}.
std::string copy_decoder(const std::string& pt) { return "cat {payload}/p > /dev/null && cp " + bbtest::sh_quote(pt) + " {out}"; }

StateDict layer_weights() {
  auto m = make_model("cifar_resnet20");
  load_weights(*m, weights_path());
  StateDict sd;
  for (const auto& l : m->layers()) sd[l.name + ".weight"] = l.weight().detach().clone();
  return sd;
}

}  // namespace

TEST_CASE("external: shell round trip is lossless, bits are payload bytes plus record headers", "[external]") {
  bbtest::TempDir t;  // before SysTmp: outside the watched temp folder
  SysTmp sys;
  const std::string out = t / "e.bbz";
  CompressOutcome o = compress_model(request(smoke_params("external"), out));
  CHECK(sys.empty());
  BbzSizes sizes;
  BbzFile f = read_bbz(out, &sizes);
  REQUIRE(f.layers.size() == 20);
  // The payload is the first record's sections, named as the files; the others hold none.
  REQUIRE(f.layers[0].sections.size() == 2);
  CHECK(f.layers[0].sections[0].name == "w.pt");
  CHECK(f.layers[0].sections[1].name == "w.sum");
  for (size_t i = 1; i < f.layers.size(); ++i) CHECK(f.layers[i].sections.empty());
  // bits: measured bytes of the records == payload files' bytes + per-record header bytes.
  const auto [payload, header] = record_bytes(f);
  // w.pt is the {layer_weights} file as bitbench writes it; w.sum its cksum line.
  write_state_dict(layer_weights(), t / "lw.pt");
  const auto lw = read_file_bytes(t / "lw.pt");
  CHECK(std::vector<unsigned char>(f.layers[0].sections[0].bytes.begin(), f.layers[0].sections[0].bytes.end()) == lw);
  CHECK(payload == (int64_t)lw.size() + (int64_t)f.layers[0].sections[1].bytes.size());
  int64_t rec_total = 0;
  for (const auto& l : sizes.layers) rec_total += l.total();
  CHECK(rec_total == payload + header);
  CHECK(o.accounting.bpw_core * o.accounting.n_weights == Approx(8.0 * (payload + header)).epsilon(1e-12));
  INFO("payload " << payload << " bytes, headers " << header << " bytes (" << header / 20.0 << " per record)");
  CHECK(header < 20 * 80);
  // Lossless: the evaluated weights are the model's.
  StateDict sd = decode_bbz(f, out);
  for (const auto& kv : layer_weights()) CHECK(torch::equal(sd.at(kv.first), kv.second));
  CHECK(sys.empty());

  // bitbench decompress runs the stored command; a missing program is a clear error.
  bbtest::Proc p = bbtest::run_cmd(bbtest::sh_quote(bbtest::bitbench_binary()) + " decompress " + bbtest::sh_quote(out) +
                                   " --out " + bbtest::sh_quote(t / "d.pt"));
  INFO(p.err);
  REQUIRE(p.status == 0);
  StateDict d = read_state_dict(t / "d.pt");
  for (const auto& kv : layer_weights()) CHECK(torch::equal(d.at(kv.first), kv.second));
  BbzFile g = f;
  g.provenance["params"]["decode"] = "/nonexistent/bb-decoder {payload} {out}";
  write_bbz(t / "g.bbz", g);
  p = bbtest::run_cmd(bbtest::sh_quote(bbtest::bitbench_binary()) + " decompress " + bbtest::sh_quote(t / "g.bbz") +
                      " --out " + bbtest::sh_quote(t / "g.pt"));
  INFO(p.err);
  CHECK(p.status != 0);
  CHECK_THAT(p.err, Catch::Contains("g.bbz") && Catch::Contains("layer 'conv1'") && Catch::Contains("status 127") &&
                        Catch::Contains("command not found") && Catch::Contains("/nonexistent/bb-decoder"));
  CHECK(!fs::exists(t / "g.pt"));
}

TEST_CASE("external: every failure is a clear error; nothing is left behind", "[external]") {
  bbtest::TempDir t;  // before SysTmp: outside the watched temp folder
  SysTmp sys;
  const std::string out = t / "e.bbz";
  const StateDict good = layer_weights();
  auto variant = [&](const std::string& name, const std::function<void(StateDict&)>& change) {
    StateDict sd = good;
    change(sd);
    const std::string p = t / (name + ".pt");
    write_state_dict(sd, p);
    return p;
  };
  const std::string enc = "echo payload > {out}/p";
  auto fails = [&](const std::map<std::string, std::string>& params) {
    const std::string e = bbtest::error_of([&] { compress_model(request(params, out)); });
    INFO(e);
    CHECK(!e.empty());
    CHECK(!fs::exists(out));
    CHECK(sys.empty());
    return e;
  };
  SECTION("the good variant passes (the failures below are each one change away from it)") {
    CHECK_NOTHROW(compress_model(request({{"encode", enc}, {"decode", copy_decoder(variant("good", [](StateDict&) {}))}}, out)));
    CHECK(sys.empty());
  }
  SECTION("encode exits non-zero: its status and stderr") {
    const std::string e = fails({{"encode", "echo 'encoder says: boom' >&2; exit 3 # {out}"}, {"decode", "cp {payload}/x {out}"}});
    CHECK_THAT(e, Catch::Contains("encode command exited with status 3") && Catch::Contains("encoder says: boom"));
  }
  SECTION("encode runs past timeout_s: killed, with its process group") {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string e = fails({{"encode", "echo started; sleep 30 & sleep 30; echo {out}"},
                                 {"decode", "cp {payload}/x {out}"},
                                 {"timeout_s", "0.5"}});
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(s < 10);
    CHECK_THAT(e, Catch::Contains("timed out after 0.5") && Catch::Contains("started"));
  }
  SECTION("decode exits non-zero") {
    const std::string e = fails({{"encode", enc}, {"decode", "echo 'decoder: bad payload' >&2; false {payload} {out}"}});
    CHECK_THAT(e, Catch::Contains("decode command exited with status 1") && Catch::Contains("decoder: bad payload"));
  }
  SECTION("decode writes nothing") {
    const std::string e = fails({{"encode", enc}, {"decode", "true {payload} {out}"}});
    CHECK_THAT(e, Catch::Contains("wrote no file at {out}"));
  }
  SECTION("a missing tensor") {
    const std::string e = fails({{"encode", enc}, {"decode", copy_decoder(variant("missing", [](StateDict& sd) {
                                                     sd.erase("layer2.1.conv2.weight");
                                                   }))}});
    CHECK_THAT(e, Catch::Contains("missing tensors: layer2.1.conv2.weight"));
  }
  SECTION("an extra tensor") {
    const std::string e = fails({{"encode", enc}, {"decode", copy_decoder(variant("extra", [](StateDict& sd) {
                                                     sd["bn1.weight"] = torch::ones({16});
                                                   }))}});
    CHECK_THAT(e, Catch::Contains("unexpected tensors: bn1.weight"));
  }
  SECTION("a tensor of the wrong shape") {
    const std::string e = fails({{"encode", enc}, {"decode", copy_decoder(variant("shape", [](StateDict& sd) {
                                                     sd["conv1.weight"] = sd["conv1.weight"].reshape({16, 27});
                                                   }))}});
    CHECK_THAT(e, Catch::Contains("conv1.weight has shape [16, 27], the layer's is [16, 3, 3, 3]"));
  }
  SECTION("NaN and inf") {
    const std::string e = fails({{"encode", enc}, {"decode", copy_decoder(variant("nan", [](StateDict& sd) {
                                                     auto& w = sd["linear.weight"];
                                                     w[0][0] = NAN;
                                                     w[1][1] = INFINITY;
                                                   }))}});
    CHECK_THAT(e, Catch::Contains("linear.weight holds 2 NaN/inf values"));
  }
  SECTION("a decoder that is not deterministic") {
    const std::string e = fails({{"encode", enc},
                                 {"decode", "if [ -e " + bbtest::sh_quote(t / "once") + " ]; then cp " +
                                                bbtest::sh_quote(variant("b", [](StateDict& sd) { sd["conv1.weight"] *= 2; })) +
                                                " {out}; else touch " + bbtest::sh_quote(t / "once") + "; cp " +
                                                bbtest::sh_quote(variant("a", [](StateDict&) {})) + " {out}; fi # {payload}"}});
    CHECK_THAT(e, Catch::Contains("differ from the method's in-memory result"));
  }
  SECTION("a payload that is not a flat folder of plain files") {
    CHECK_THAT(fails({{"encode", "mkdir {out}/sub"}, {"decode", "cp {payload}/x {out}"}}),
               Catch::Contains("not a regular file"));
    CHECK_THAT(fails({{"encode", "touch '{out}/a b'"}, {"decode", "cp {payload}/x {out}"}}),
               Catch::Contains("payload file name 'a b' is not allowed"));
  }
  SECTION("bad parameters are refused before anything runs") {
    CHECK_THAT(fails({{"encode", "true"}, {"decode", "cp {payload}/x {out}"}}), Catch::Contains("does not mention {out}"));
    CHECK_THAT(fails({{"encode", enc}, {"decode", "cp {weights} {out} # {payload}"}}),
               Catch::Contains("decode sees only the payload"));
    CHECK_THAT(fails({{"encode", "cp {calib} {out}/c"}, {"decode", "cp {payload}/x {out}"}}),
               Catch::Contains("set calib_images=N"));
    CHECK_THAT(fails({}), Catch::Contains("set both encode="));
  }
}

TEST_CASE("external: a failed run leaves a failure record with the command's output", "[external][runner]") {
  bbtest::TempDir t;
  bbtest::write_text(t / "x.yaml",
                     "experiment: ext_fail\n"
                     "models: [cifar_resnet20]\n"
                     "eval: [cifar10-lossless-1k]\n"
                     "runs:\n"
                     "  - method: external\n"
                     "    params: {encode: \"echo 'no luck today' >&2; exit 5 # {out}\", decode: \"cp {payload}/p {out}\"}\n");
  bbtest::Proc p = bbtest::run_cmd(bbtest::sh_quote(bbtest::bitbench_binary()) + " run " + bbtest::sh_quote(t / "x.yaml") +
                                   " --results " + bbtest::sh_quote(t / "results"));
  INFO(p.out << p.err);
  std::vector<fs::path> failed, done;
  for (const auto& e : fs::recursive_directory_iterator(t / "results")) {
    const std::string n = e.path().filename().string();
    if (n.size() > 12 && n.substr(n.size() - 12) == ".failed.json") failed.push_back(e.path());
    else if (n.size() > 5 && n.substr(n.size() - 5) == ".json" && n.find("table") == std::string::npos) done.push_back(e.path());
  }
  REQUIRE(failed.size() == 1);
  CHECK(done.empty());
  const auto j = nlohmann::json::parse(bbtest::slurp(failed[0].string()));
  CHECK_THAT(j["error"].get<std::string>(), Catch::Contains("exited with status 5") && Catch::Contains("no luck today"));
}

TEST_CASE("external: fuzz-bbz's restriction refuses any other decode command", "[external]") {
  bbtest::TempDir t;
  compress_model(request(smoke_params("external"), t / "e.bbz"));
  const BbzFile f = read_bbz(t / "e.bbz");
  restrict_external_commands({external_decode_command(f.provenance)});
  CHECK_NOTHROW(decode_bbz(f, "ok.bbz"));
  BbzFile g = f;
  g.provenance["params"]["decode"] = "touch " + t / "ran" + " # {payload} {out}";
  const std::string e = bbtest::error_of([&] { decode_bbz(g, "evil.bbz"); });
  unrestrict_external_commands();
  CHECK_THAT(e, Catch::Contains("evil.bbz") && Catch::Contains("does not run the decode command"));
  CHECK(!fs::exists(t / "ran"));
  CHECK_THROWS(decode_bbz(g, "evil.bbz"));  // unrestricted again: it runs (and writes no weights)
  CHECK(fs::exists(t / "ran"));
}

namespace {

std::string example(const std::string& script) {
  return std::string(bbtest::python()) + " " + bbtest::sh_quote(bbtest::source_path("examples/external/" + script));
}

struct Row {
  CompressOutcome o;
  BbzFile f;
  StateDict sd;
};

Row compress_row(const std::string& method, const std::map<std::string, std::string>& params, const std::string& out) {
  CompressRequest req = request(params, out);
  req.method = method;
  req.eval_datasets = {"cifar10-lossless-1k"};
  req.eval_limit = 200;
  Row r;
  r.o = compress_model(req);
  r.f = read_bbz(out);
  r.sd = decode_bbz(r.f, out);
  return r;
}

double max_abs_diff(const StateDict& a, const StateDict& b) {
  double m = 0;
  for (const auto& kv : layer_weights()) m = std::max(m, (a.at(kv.first) - b.at(kv.first)).abs().max().item<double>());
  return m;
}

}  // namespace

TEST_CASE("external: the Python examples match the built-in methods they re-implement", "[external][python][slow]") {
  BB_REQUIRE_ORACLE("torch, numpy");
  bbtest::TempDir t;  // before SysTmp: outside the watched temp folder
  SysTmp sys;
  SECTION("uniform_zlib.py at 4 bits == uniform bits=4 (asymmetric, float offset, minmax)") {
    Row ext = compress_row("external",
                           {{"encode", example("uniform_zlib.py") + " encode --weights {weights} --layers {layers} --out {out} --bits 4"},
                            {"decode", example("uniform_zlib.py") + " decode --payload {payload} --out {out}"}},
                           t / "ext.bbz");
    Row ref = compress_row("uniform", {{"bits", "4"}}, t / "ref.bbz");
    CHECK(sys.empty());
    // The same float32 arithmetic: the same decoded weights, bit for bit, hence the same top-1.
    const double diff = max_abs_diff(ext.sd, ref.sd);
    INFO("max |w_ext - w_uniform| = " << diff);
    CHECK(diff == 0.0);
    CHECK(ext.o.evals.at(0).top1 == ref.o.evals.at(0).top1);
    CHECK(ext.o.evals.at(0).hit1 == ref.o.evals.at(0).hit1);
    // bits: the zlib payload plus the records' headers, exactly.
    REQUIRE(ext.f.layers[0].sections.size() == 1);
    CHECK(ext.f.layers[0].sections[0].name == "payload.zlib");
    const auto [payload, header] = record_bytes(ext.f);
    CHECK(ext.o.accounting.bpw_core * ext.o.accounting.n_weights == Approx(8.0 * (payload + header)).epsilon(1e-12));
    // zlib codes the packed levels below their 4 bits (they are far from uniform): fewer bits than
    // uniform's fixed-width stream, with the same weights.
    std::fprintf(stderr, "[external] uniform_zlib.py 4 bits: bpw_core %.4f (uniform fixed %.4f), top-1 %.2f (uniform %.2f) on %lld images\n",
                 ext.o.accounting.bpw_core, ref.o.accounting.bpw_core, ext.o.evals.at(0).top1, ref.o.evals.at(0).top1,
                 (long long)ext.o.evals.at(0).n);
    CHECK(ext.o.accounting.bpw_core < ref.o.accounting.bpw_core);
    // The independent check (scripts/oracle/external_demo_check.py): Python parses the .bbz, runs
    // the stored decode command itself, evaluates in the akamaster ResNet, compares with the record.
    nlohmann::json rec = ext.o.to_json();
    bbtest::write_text(t / "ext.json", rec.dump());
    bbtest::Proc p = bbtest::run_python("scripts/oracle/external_demo_check.py",
                                        bbtest::sh_quote(t / "ext.bbz") + " --limit 200 --data " +
                                            bbtest::sh_quote(data_root("") + "/cifar10/test_lossless_1k.bin"));
    INFO(p.out << p.err);
    CHECK(p.status == 0);
    CHECK_THAT(p.out, Catch::Contains("\"python_top1_lossless_1k\": " + std::to_string(ext.o.evals.at(0).top1).substr(0, 4)));
  }
  SECTION("kmeans_pack.py at 3 bits ~ kmeans bits=3 init=linear scope=layer") {
    Row ext = compress_row("external",
                           {{"encode", example("kmeans_pack.py") +
                                           " encode --layer-weights {layer_weights} --layers {layers} --out {out} --bits 3"},
                            {"decode", example("kmeans_pack.py") + " decode --payload {payload} --out {out}"}},
                           t / "ext.bbz");
    Row ref = compress_row("kmeans", {{"bits", "3"}, {"init", "linear"}, {"scope", "layer"}}, t / "ref.bbz");
    CHECK(sys.empty());
    // Components by file name: side_layers.bin -> side, codebook.bin -> codebook, indices.bin -> indices.
    const auto& l0 = ext.o.accounting.breakdown["layers"][0]["bytes"];
    CHECK(l0["codebook"].get<int64_t>() == 20 * 8 * 4);
    CHECK(l0["indices"].get<int64_t>() > 0);
    const auto [payload, header] = record_bytes(ext.f);
    CHECK(ext.o.accounting.bpw_core * ext.o.accounting.n_weights == Approx(8.0 * (payload + header)).epsilon(1e-12));
    const double diff = max_abs_diff(ext.sd, ref.sd);
    INFO("max |w_ext - w_kmeans| = " << diff << "; top-1 " << ext.o.evals.at(0).top1 << " vs " << ref.o.evals.at(0).top1
                                      << "; bpw_core " << ext.o.accounting.bpw_core << " vs " << ref.o.accounting.bpw_core);
    std::fprintf(stderr, "[external] kmeans_pack.py 3 bits: bpw_core %.4f (kmeans %.4f), top-1 %.2f (kmeans %.2f), max |dw| %.3g\n",
                 ext.o.accounting.bpw_core, ref.o.accounting.bpw_core, ext.o.evals.at(0).top1, ref.o.evals.at(0).top1, diff);
    // The same algorithm (linear seeding, Lloyd on sorted values in float64): measured identical
    // weights; allowed: float64 sums taken in another order.
    CHECK(diff <= 1e-6);
    CHECK(std::fabs(ext.o.evals.at(0).top1 - ref.o.evals.at(0).top1) <= 0.5 + 1e-9);  // one image of 200
    CHECK(std::fabs(ext.o.accounting.bpw_core - ref.o.accounting.bpw_core) < 0.05);
  }
  SECTION("what encode is given: Python reads {weights} {layers} {calib} {calib_labels} {seed}; bitbench reads Python's .pt") {
    const std::string probe =
        "import json, sys, torch\n"
        "w, lw, layers, calib, labels, seed, out = sys.argv[1:]\n"
        "sd, lsd, L = torch.load(w), torch.load(lw), json.load(open(layers))\n"
        "x, y = torch.load(calib), torch.load(labels)\n"
        "assert len(L) == 20 and L[0] == {'name': 'conv1', 'weight': 'conv1.weight', 'shape': [16, 3, 3, 3], 'kind': 'conv'}, L[0]\n"
        "assert 'bn1.running_mean' in sd and sorted(lsd) == sorted(l['weight'] for l in L)\n"
        "assert x.dtype == torch.float32 and tuple(x.shape) == (6, 3, 32, 32), x.shape\n"
        "assert y.dtype == torch.int64 and tuple(y.shape) == (6,) and 0 <= int(y.min()) and int(y.max()) < 10\n"
        "assert abs(float(x.mean())) < 1.5 and seed == '7'\n"
        "torch.save({l['weight']: sd[l['weight']].double() for l in L}, out + '/w.pt')\n";
    bbtest::write_text(t / "probe.py", probe);
    CompressRequest req = request({{"encode", std::string(bbtest::python()) + " " + bbtest::sh_quote(t / "probe.py") +
                                                  " {weights} {layer_weights} {layers} {calib} {calib_labels} {seed} {out}"},
                                   {"decode", "cp {payload}/w.pt {out}"},
                                   {"calib_images", "6"}},
                                  t / "p.bbz");
    req.seed = 7;
    CompressOutcome o = compress_model(req);
    // float64 tensors from Python are evaluated as float32: lossless here.
    StateDict sd = decode_bbz(read_bbz(t / "p.bbz"), "p.bbz");
    for (const auto& kv : layer_weights()) CHECK(torch::equal(sd.at(kv.first), kv.second));
    CHECK(sys.empty());
  }
}
