#include "report/table.h"
#include "common/error.h"
#include "common/yaml_util.h"
#include "common/fs_util.h"
#include "common/log.h"
#include "common/runtime.h"
#include "eval/evaluate.h"
#include "methods/method.h"
#include "report/plot.h"
#include "runner/experiment.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace bb {
namespace {

std::vector<uint8_t> from_hex_bits(const std::string& hex, size_t n) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    char c = hex.at(i / 4);
    int v = c <= '9' ? c - '0' : c - 'a' + 10;
    out[i] = (v >> (i % 4)) & 1;
  }
  return out;
}

// The parameters that count training epochs, by name: fine-tuning (every method's
// finetune_epochs) and the sharing family's retraining after pruning; the older names of records
// from before the shared vocabulary (issue 23).
const char* const kEpochParams[] = {"finetune_epochs", "prune_retrain_epochs", "retrain_epochs", "global_finetune_epochs"};

// The epochs a run fine-tuned: the declared budget when the run had one (issue 21); otherwise
// the run's resolved parameters (identity.params, every key with the code's defaults), or for
// records without them the parameters as written.
double epochs_of(const nlohmann::json& r) {
  if (r.contains("finetune_budget") && r["finetune_budget"].contains("epochs"))
    return r["finetune_budget"]["epochs"].get<double>();
  const bool resolved = r.contains("identity") && r["identity"].contains("params") && r["identity"]["params"].is_object();
  const nlohmann::json& params = resolved ? r["identity"]["params"] : r["params"];
  double e = 0;
  for (const char* k : kEpochParams) {
    if (!params.contains(k)) continue;
    const auto& v = params[k];
    e += v.is_string() ? std::stod(v.get<std::string>()) : v.get<double>();
  }
  return e;
}

// Upper envelope sorted by bpw: keep points whose top-1 beats every cheaper point.
std::vector<std::pair<double, double>> envelope(std::vector<std::pair<double, double>> p) {
  std::sort(p.begin(), p.end());
  std::vector<std::pair<double, double>> out;
  for (auto& q : p)
    if (out.empty() || q.second > out.back().second) out.push_back(q);
  return out;
}

double interp(const std::vector<std::pair<double, double>>& c, double x) {
  if (x <= c.front().first) return c.front().second;
  for (size_t i = 1; i < c.size(); ++i)
    if (x <= c[i].first) {
      double t = (x - c[i - 1].first) / (c[i].first - c[i - 1].first);
      return c[i - 1].second + t * (c[i].second - c[i - 1].second);
    }
  return c.back().second;
}

std::string fmt(double v, int prec = 2) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

nlohmann::json load_published(const std::string& dir) {
  nlohmann::json out = nlohmann::json::array();
  if (!fs::is_directory(dir)) return out;
  std::vector<fs::path> files;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".yaml") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (auto& f : files) {
    YAML::Node n = yaml_load_map(f.string(), "published figures file");
    BB_CHECK(n["citation"] && n["models"], f.string(), ": needs 'citation' and 'models'");
    const std::string cite = n["citation"].as<std::string>();
    for (auto it = n["models"].begin(); it != n["models"].end(); ++it) {
      const std::string model = it->first.as<std::string>();
      const auto& m = it->second;
      for (const auto& r : m["rows"]) {
        nlohmann::json row = {{"kind", "published"}, {"model", model}, {"citation", cite}, {"source", f.filename().string()}};
        row["method"] = r["method"].as<std::string>();
        if (r["epochs"] && !r["epochs"].IsNull()) row["epochs"] = r["epochs"].as<double>();
        if (r["bits"] && !r["bits"].IsNull()) row["bits"] = r["bits"].as<double>();
        if (r["ratio"] && !r["ratio"].IsNull()) row["ratio"] = r["ratio"].as<double>();
        else if (row.contains("bits")) row["ratio"] = 32.0 / row["bits"].get<double>();
        if (r["top1"] && !r["top1"].IsNull()) row["top1_published"] = r["top1"].as<double>();
        if (r["top5"] && !r["top5"].IsNull()) row["top5_published"] = r["top5"].as<double>();
        if (r["note"]) row["note"] = r["note"].as<std::string>();
        if (m["dataset"]) row["dataset"] = m["dataset"].as<std::string>();
        if (m["fp"] && m["fp"]["top1"]) row["fp_top1_published"] = m["fp"]["top1"].as<double>();
        out.push_back(row);
      }
    }
  }
  return out;
}

}  // namespace

std::vector<size_t> pareto_front(const std::vector<std::pair<double, double>>& pts) {
  std::vector<size_t> out;
  for (size_t i = 0; i < pts.size(); ++i) {
    bool dominated = false;
    for (size_t j = 0; j < pts.size() && !dominated; ++j)
      if (j != i && pts[j].first <= pts[i].first && pts[j].second > pts[i].second) dominated = true;
    if (!dominated) out.push_back(i);
  }
  return out;
}

nlohmann::json curve_gaps(std::vector<std::pair<double, double>> a, std::vector<std::pair<double, double>> b) {
  nlohmann::json out = {{"mean_top1_gap", nullptr}, {"mean_bit_saving", nullptr}, {"overlap_bpw", nullptr}};
  if (a.size() < 2 || b.size() < 2) return out;
  auto ea = envelope(a), eb = envelope(b);
  if (ea.size() < 2 || eb.size() < 2) return out;
  // Top-1 gap over the shared bit range, averaged uniformly in log2(bits).
  double lo = std::max(ea.front().first, eb.front().first), hi = std::min(ea.back().first, eb.back().first);
  if (hi > lo) {
    const int S = 200;
    double acc = 0;
    for (int i = 0; i <= S; ++i) {
      double x = std::exp2(std::log2(lo) + (std::log2(hi) - std::log2(lo)) * i / S);
      acc += interp(ea, x) - interp(eb, x);
    }
    out["mean_top1_gap"] = acc / (S + 1);
    out["overlap_bpw"] = {lo, hi};
  }
  // Bit saving at equal top-1 over the shared accuracy range (envelopes are increasing).
  std::vector<std::pair<double, double>> ia, ib;
  for (auto& p : ea) ia.push_back({p.second, p.first});
  for (auto& p : eb) ib.push_back({p.second, p.first});
  double ylo = std::max(ia.front().first, ib.front().first), yhi = std::min(ia.back().first, ib.back().first);
  if (yhi > ylo) {
    const int S = 200;
    double acc = 0;
    for (int i = 0; i <= S; ++i) {
      double y = ylo + (yhi - ylo) * i / S;
      acc += interp(ib, y) - interp(ia, y);
    }
    out["mean_bit_saving"] = acc / (S + 1);
    out["overlap_top1"] = {ylo, yhi};
  }
  return out;
}

namespace {

// The run records of <results_dir>/runs (failure records counted, not read), sorted by model,
// label, bits and run ID.
std::vector<nlohmann::json> read_records(const std::string& results_dir, int& failed) {
  const std::string runs = results_dir + "/runs";
  BB_CHECK(fs::is_directory(runs), "no run records under '", runs, "' (run the experiment first)");
  std::vector<nlohmann::json> recs;
  failed = 0;
  std::vector<fs::path> files;
  for (auto& e : fs::directory_iterator(runs)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (auto& p : files) {
    const std::string name = p.filename().string();
    if (name.size() > 12 && name.substr(name.size() - 12) == ".failed.json") {
      ++failed;
      continue;
    }
    if (p.extension() != ".json") continue;
    try {
      recs.push_back(nlohmann::json::parse(read_file_text(p.string())));
    } catch (const nlohmann::json::exception& e) {
      BB_THROW("run record '", p.string(), "' is not valid JSON: ", e.what());
    }
  }
  BB_CHECK(!recs.empty(), "no finished run records under '", runs, "'");
  std::sort(recs.begin(), recs.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return std::make_tuple(a["model"].get<std::string>(), a["label"].get<std::string>(), a["bpw_core"].get<double>(),
                           a["run_id"].get<std::string>()) <
           std::make_tuple(b["model"].get<std::string>(), b["label"].get<std::string>(), b["bpw_core"].get<double>(),
                           b["run_id"].get<std::string>());
  });
  return recs;
}

// One measured row from a run record: variant (the params that vary within its label, seed,
// off-target and stale flags), bits, accuracies and McNemar's p against the FP run `fp` (or none).
// `ref` is what the row's drop and `mcnemar_p_vs_ref` are computed against: the run's FP control
// when it fine-tuned under a budget (issue 21), else the FP run; `reference` names it.
nlohmann::json measured_row(const nlohmann::json& r, const nlohmann::json* fp, const nlohmann::json* ref,
                            const nlohmann::json& reference, const std::vector<std::string>& datasets,
                            const std::map<std::string, std::set<std::string>>& label_values) {
  const std::string label = r["label"];
  std::string variant;
  for (auto it = r["params"].begin(); it != r["params"].end(); ++it)
    if (label_values.at(it.key()).size() > 1)
      variant += (variant.empty() ? "" : " ") + it.key() + "=" + it.value().get<std::string>();
  if (r.value("seed", 0) != 0) variant += (variant.empty() ? "" : " ") + std::string("seed=") + std::to_string(r["seed"].get<int>());
  // Equal rates: a run more than 2% off its target_bpw says so in the table.
  const bool off_target = r.contains("rate_target") && !r["rate_target"].value("within_2pct", true);
  if (off_target) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "OFF TARGET: %.3g for %.3g", r["rate_target"]["reached"].get<double>(),
                  r["rate_target"]["requested"].get<double>());
    variant += (variant.empty() ? "" : " ") + std::string(buf);
  }
  // A row computed by another version of its method's algorithm than this build's is stale
  // (records from before versions existed count as version 0).
  const int rec_version = r.contains("identity") ? r["identity"].value("algorithm_version", 0) : 0;
  const std::string method_name = r["method"].get<std::string>();
  const int cur_version = has_method(method_name) ? make_method(method_name)->algorithm_version() : -1;
  const bool stale = rec_version != cur_version;
  if (stale)
    variant += (variant.empty() ? "" : " ") + std::string("STALE: algorithm v") + std::to_string(rec_version) +
               ", current v" + (cur_version < 0 ? std::string("none") : std::to_string(cur_version));
  nlohmann::json row = {{"kind", "measured"},
                        {"method", r["method"]},
                        {"label", label},
                        {"variant", variant},
                        {"epochs", epochs_of(r)},
                        {"bits", r["bpw_core"]},
                        {"ratio", 32.0 / r["bpw_core"].get<double>()},
                        {"bpw_total", r["bpw_total"]},
                        {"bpw_choi", r["bpw_choi"]},
                        {"size_mb_stock", r["size_mb_stock"]},
                        {"bpw_young", r["bpw_young"]},
                        {"bpw_yu_conv", r["bpw_yu_conv"]},
                        {"file_bytes", r["file_bytes"]},
                        {"run_id", r["run_id"]},
                        {"wall_seconds", r.value("wall_seconds", 0.0)}};
  if (r.contains("rate_target")) row["rate_target"] = r["rate_target"];
  if (r.contains("tuned")) row["tuned"] = r["tuned"];
  row["algorithm_version"] = rec_version;
  if (stale) row["stale"] = true;
  if (r.contains("control_run_id")) row["control_run_id"] = r["control_run_id"];
  if (ref && ref != &r) row["reference"] = reference;
  for (auto& d : datasets) {
    const auto& e = r["eval"][d];
    row["top1"][d] = e["top1"];
    row["top5"][d] = e["top5"];
    row["top1_ci95"][d] = e["top1_ci95"];
    if (fp && fp != &r && r.contains("hit1_hex") && fp->contains("hit1_hex")) {
      size_t n = e["n"].get<size_t>();
      auto a = from_hex_bits(r["hit1_hex"][d].get<std::string>(), n);
      auto b = from_hex_bits((*fp)["hit1_hex"][d].get<std::string>(), n);
      row["mcnemar_p_vs_fp"][d] = mcnemar_p(a, b);
    }
    if (ref && ref != &r) {
      row["drop"][d] = (*ref)["eval"][d]["top1"].get<double>() - e["top1"].get<double>();
      if (r.contains("hit1_hex") && ref->contains("hit1_hex")) {
        size_t n = e["n"].get<size_t>();
        auto a = from_hex_bits(r["hit1_hex"][d].get<std::string>(), n);
        auto b = from_hex_bits((*ref)["hit1_hex"][d].get<std::string>(), n);
        row["mcnemar_p_vs_ref"][d] = mcnemar_p(a, b);
      }
    }
  }
  return row;
}

// Measured curves (not fp32) per label on one evaluation set: the rows' indices, in row order.
std::map<std::string, std::vector<size_t>> curve_rows(const nlohmann::json& rows) {
  std::map<std::string, std::vector<size_t>> out;
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i]["kind"] == "measured" && rows[i]["method"] != "fp32") out[rows[i]["label"]].push_back(i);
  return out;
}

// The FP baseline among a model's runs: the untuned fp32 run (an fp32 run that fine-tuned is a
// control: the reference of the runs that name it). Records and table rows alike.
bool is_fp_baseline(const nlohmann::json& method, double epochs) { return method == "fp32" && epochs == 0; }

// What a row's drop and p are measured against, as the Markdown's "vs" column names it.
std::string reference_text(const nlohmann::json& rf) {
  if (rf["kind"] == "control") return "control " + rf["run_id"].get<std::string>().substr(0, 8);
  return rf.contains("missing_control") ? "FP (control " + rf["missing_control"].get<std::string>().substr(0, 8) + " missing)"
                                        : "FP";
}

// Per rate target, the best measured row on `dataset`: among the rows that asked for that
// target_bpw, landed within 2% of it and are not stale, the smallest drop against the row's own
// reference (its fine-tuning control, else the FP run), or the highest top-1 where a row has no
// reference; ties go to fewer bits, then to the earlier row. Sorted by target.
nlohmann::json best_per_target(const nlohmann::json& rows, const std::string& dataset) {
  std::map<double, std::vector<size_t>> at;  // requested target -> candidate rows
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    if (row["kind"] != "measured" || !row.contains("rate_target") || row.value("stale", false)) continue;
    const auto& rt = row["rate_target"];
    if (!rt.value("within_2pct", false) || !rt.contains("requested")) continue;
    at[rt["requested"].get<double>()].push_back(i);
  }
  nlohmann::json out = nlohmann::json::array();
  for (auto& [target, idx] : at) {
    bool all_drops = true;
    for (size_t i : idx) all_drops = all_drops && rows[i].contains("drop");
    // Higher is better.
    auto score = [&](size_t i) {
      return all_drops ? -rows[i]["drop"][dataset].get<double>() : rows[i]["top1"][dataset].get<double>();
    };
    size_t b = idx.front();
    for (size_t i : idx)
      if (score(i) > score(b) || (score(i) == score(b) && rows[i]["bits"].get<double>() < rows[b]["bits"].get<double>()))
        b = i;
    const auto& row = rows[b];
    nlohmann::json e = {{"target_bpw", target}, {"row", b},        {"label", row["label"]},
                        {"variant", row["variant"]}, {"bits", row["bits"]}, {"top1", row["top1"][dataset]},
                        {"candidates", idx.size()}, {"ranked_by", all_drops ? "drop" : "top1"}};
    if (row.contains("drop")) e["drop"] = row["drop"][dataset];
    if (row.contains("reference")) e["reference"] = row["reference"];
    out.push_back(e);
  }
  return out;
}

// One model's section of the table: rows (measured, then published), curve comparisons on the
// first evaluation set, the FP baseline.
nlohmann::json model_table(const std::string& model, const std::vector<nlohmann::json>& recs, const nlohmann::json& published) {
  std::vector<const nlohmann::json*> mine;
  for (auto& r : recs)
    if (r["model"] == model) mine.push_back(&r);
  std::vector<std::string> datasets;
  for (auto it = mine.front()->at("eval").begin(); it != mine.front()->at("eval").end(); ++it) datasets.push_back(it.key());
  const nlohmann::json* fp = nullptr;  // the FP baseline, if the experiment has one
  std::map<std::string, const nlohmann::json*> by_id;
  for (auto* r : mine) {
    by_id[(*r)["run_id"].get<std::string>()] = r;
    if (is_fp_baseline((*r)["method"], epochs_of(*r))) fp = r;
  }
  auto reference_of = [&](const nlohmann::json& r, nlohmann::json& reference) -> const nlohmann::json* {
    if (r.contains("control_run_id")) {
      const std::string cid = r["control_run_id"].get<std::string>();
      auto it = by_id.find(cid);
      if (it != by_id.end()) {
        reference = {{"kind", "control"}, {"run_id", cid}, {"label", (*it->second)["label"]}};
        return it->second;
      }
      reference = {{"kind", "fp"}, {"missing_control", cid}};
    } else {
      reference = {{"kind", "fp"}};
    }
    if (fp) reference["run_id"] = (*fp)["run_id"];
    return fp;
  };
  // Which params vary within a label: they make up the variant string.
  std::map<std::string, std::map<std::string, std::set<std::string>>> values;
  for (auto* r : mine)
    for (auto it = (*r)["params"].begin(); it != (*r)["params"].end(); ++it)
      values[(*r)["label"].get<std::string>()][it.key()].insert(it.value().get<std::string>());
  nlohmann::json rows = nlohmann::json::array();
  for (auto* r : mine) {
    nlohmann::json reference;
    const nlohmann::json* ref = reference_of(*r, reference);
    rows.push_back(measured_row(*r, fp, ref, reference, datasets, values[(*r)["label"].get<std::string>()]));
  }
  for (auto& p : published)
    if (p["model"] == model) rows.push_back(p);

  // Gaps between every pair of labels' curves on the first evaluation set.
  std::map<std::string, std::vector<std::pair<double, double>>> curves;
  for (auto& [label, idx] : curve_rows(rows))
    for (size_t i : idx) curves[label].push_back({rows[i]["bits"].get<double>(), rows[i]["top1"][datasets[0]].get<double>()});
  nlohmann::json comps = nlohmann::json::array();
  for (auto ia = curves.begin(); ia != curves.end(); ++ia)
    for (auto ib = std::next(ia); ib != curves.end(); ++ib) {
      auto g = curve_gaps(ia->second, ib->second);
      g["a"] = ia->first;
      g["b"] = ib->first;
      g["dataset"] = datasets[0];
      comps.push_back(g);
    }
  nlohmann::json m = {{"datasets", datasets}, {"rows", rows}, {"comparisons", comps}, {"best_per_target", best_per_target(rows, datasets[0])}};
  // What the model's runs cost, as each ran (their records' wall times), and on which CPUs.
  // CPU time (user + system, all threads) is summed over the records that carry it (those computed
  // before it was recorded do not): unlike wall time it does not count pauses (SIGSTOP) or time
  // spent waiting for a core, though threads spinning on a shared machine still add to it.
  double wall = 0, cpu = 0;
  size_t with_cpu = 0;
  std::set<std::string> cpus;
  for (auto* r : mine) {
    wall += r->value("wall_seconds", 0.0);
    if (r->contains("cpu_seconds")) {
      cpu += (*r)["cpu_seconds"].get<double>();
      ++with_cpu;
    }
    if (r->contains("context") && (*r)["context"].contains("cpu") && !(*r)["context"]["cpu"].get<std::string>().empty())
      cpus.insert((*r)["context"]["cpu"].get<std::string>());
  }
  m["runs"] = mine.size();
  m["wall_seconds"] = wall;
  m["cpu_seconds"] = cpu;
  m["runs_with_cpu_seconds"] = with_cpu;
  m["cpus"] = cpus;
  if (fp)
    for (auto& d : datasets) {
      m["baseline"]["top1"][d] = (*fp)["eval"][d]["top1"];
      m["baseline"]["top5"][d] = (*fp)["eval"][d]["top5"];
    }
  return m;
}

std::vector<std::string> datasets_of(const nlohmann::json& m) { return m["datasets"].get<std::vector<std::string>>(); }

}  // namespace

nlohmann::json collect_table(const std::string& results_dir, const TableOptions& opt) {
  int failed = 0;
  const std::vector<nlohmann::json> recs = read_records(results_dir, failed);
  auto published = load_published(opt.published_dir.empty() ? source_dir() + "/experiments/published" : opt.published_dir);
  nlohmann::json table = {{"context", context_json()},
                          {"experiment", recs.front().value("experiment", fs::path(results_dir).filename().string())},
                          {"failed_runs", failed},
                          {"bits_column", "bpw_core: bits of everything needed to rebuild conv+FC weights / n_weights, from the file's bytes"},
                          {"models", nlohmann::json::object()}};
  std::set<std::string> models;
  for (auto& r : recs) models.insert(r["model"].get<std::string>());
  for (auto& model : models) table["models"][model] = model_table(model, recs, published);
  return table;
}

std::string table_json_text(const nlohmann::json& table) { return table.dump(1) + "\n"; }

std::string table_markdown(const nlohmann::json& table) {
  std::ostringstream md;
  md << "# " << table["experiment"].get<std::string>() << "\n\n"
     << "Bits = `bpw_core` (bits of everything needed to rebuild the conv+FC weights, counted from the .bbz file's "
        "bytes, divided by the number of conv+FC weights). Compression = 32 / bits. Top-1/top-5 in percent with "
        "95% Wilson intervals. Drop = the reference's top-1 minus the row's and p = McNemar's paired test against "
        "the reference on the same images, both on the first evaluation set; the reference is the FP baseline, or "
        "for a run fine-tuned under the experiment's budget its control \"" << kFpControlLabel << "\" (the FP "
        "network given the same fine-tuning). "
        "Published rows are as printed in the cited papers (their own bit conventions, ImageNet unless stated).\n\n";
  for (auto mt = table["models"].begin(); mt != table["models"].end(); ++mt) {
    const std::string& model = mt.key();
    const auto& m = mt.value();
    const auto datasets = datasets_of(m);
    md << "## " << model << "\n\n| Method | Variant | Epochs | Compression | Bits |";
    for (auto& d : datasets) md << " Top-1 " << d << " | Top-5 " << d << " |";
    md << " Drop | p | vs | Source |\n|---|---|---|---|---|";
    for (size_t i = 0; i < datasets.size(); ++i) md << "---|---|";
    md << "---|---|---|---|\n";
    for (auto& row : m["rows"]) {
      const bool meas = row["kind"] == "measured";
      md << "| " << (meas ? row["label"].get<std::string>() : row["method"].get<std::string>()) << " | "
         << (meas ? row["variant"].get<std::string>() : "") << " | "
         << (row.contains("epochs") ? fmt(row["epochs"].get<double>(), 0) : "–") << " | "
         << (row.contains("ratio") ? fmt(row["ratio"].get<double>(), 1) + "×" : "–") << " | "
         << (row.contains("bits") ? fmt(row["bits"].get<double>(), 3) : "–") << " |";
      for (auto& d : datasets) {
        if (meas) {
          md << " " << fmt(row["top1"][d].get<double>()) << " (" << fmt(row["top1_ci95"][d][0].get<double>(), 1) << "–"
             << fmt(row["top1_ci95"][d][1].get<double>(), 1) << ") | " << fmt(row["top5"][d].get<double>()) << " |";
        } else if (d == datasets[0]) {
          md << " " << (row.contains("top1_published") ? fmt(row["top1_published"].get<double>(), 2) : "–") << " | "
             << (row.contains("top5_published") ? fmt(row["top5_published"].get<double>(), 2) : "–") << " |";
        } else {
          md << " | |";
        }
      }
      std::string drop, p, vs;
      if (meas && row.contains("drop")) drop = fmt(row["drop"][datasets[0]].get<double>());
      if (meas && row.contains("mcnemar_p_vs_ref")) p = fmt(row["mcnemar_p_vs_ref"][datasets[0]].get<double>(), 3);
      if (meas && row.contains("reference")) vs = reference_text(row["reference"]);
      md << " " << drop << " | " << p << " | " << vs << " | "
         << (meas ? "measured" : "published: " + row["citation"].get<std::string>() +
                                     (row.contains("dataset") ? " (" + row["dataset"].get<std::string>() + ")" : ""))
         << " |\n";
    }
    // Equal rates: every row off its target says why (the method's own account of its search).
    bool any_off = false;
    for (auto& row : m["rows"]) {
      if (!row.contains("rate_target") || row["rate_target"].value("within_2pct", true)) continue;
      if (!any_off) md << "\nOff-target rows (more than 2% from target_bpw), and why:\n\n";
      any_off = true;
      md << "- " << row["label"].get<std::string>() << ", " << row["variant"].get<std::string>() << ": "
         << row["rate_target"].value("why", std::string("(the record gives no reason: computed before reasons were recorded)"))
         << "\n";
    }
    if (m.contains("wall_seconds")) {
      const size_t runs = m["runs"].get<size_t>();
      md << "\nWall time of " << (runs == 1 ? std::string("the run") : "the " + std::to_string(runs) + " runs")
         << " above: " << fmt(m["wall_seconds"].get<double>() / 60, 1)
         << " min (their records' wall times summed, each as it ran; a cached run keeps its first time)";
      const auto& cpus = m["cpus"];
      for (size_t i = 0; i < cpus.size(); ++i) md << (i ? ", " : "; CPU: ") << cpus[i].get<std::string>();
      md << ".";
      const size_t with_cpu = m.value("runs_with_cpu_seconds", (size_t)0);
      if (with_cpu > 0)
        md << (with_cpu == runs ? " CPU time" : " CPU time of the " + std::to_string(with_cpu) + " of them that record it")
           << ": " << fmt(m["cpu_seconds"].get<double>() / 60, 1)
           << " min (user + system, all threads; pauses do not count, threads spinning beside other jobs do).";
      md << "\n";
    }
    const auto& best = m.value("best_per_target", nlohmann::json::array());
    if (!best.empty()) {
      md << "\nBest row per rate target on " << datasets[0]
         << " (rows that asked for the target_bpw and landed within 2% of it; the smallest drop against the row's "
            "reference, or the highest top-1 where a row has none; ties to fewer bits):\n\n| target | Method | Variant | Bits | Top-1 | Drop | vs | rows |\n"
            "|---|---|---|---|---|---|---|---|\n";
      for (auto& e : best) {
        const std::string vs = e.contains("reference") ? reference_text(e["reference"]) : "";
        char target[32];
        std::snprintf(target, sizeof target, "%g", e["target_bpw"].get<double>());
        md << "| " << target << " | " << e["label"].get<std::string>() << " | "
           << e["variant"].get<std::string>() << " | " << fmt(e["bits"].get<double>(), 3) << " | "
           << fmt(e["top1"].get<double>()) << " | " << (e.contains("drop") ? fmt(e["drop"].get<double>()) : "") << " | "
           << vs << " | " << e["candidates"].get<size_t>() << " |\n";
      }
    }
    // Pairs whose curves share neither a bit range nor a top-1 range have nothing to compare: the
    // JSON keeps them (all null), the Markdown counts them.
    const auto& comps = m["comparisons"];
    auto nothing_shared = [](const nlohmann::json& c) { return c["mean_top1_gap"].is_null() && c["mean_bit_saving"].is_null(); };
    size_t empty = 0;
    for (auto& c : comps) empty += nothing_shared(c);
    if (comps.size() > empty) {
      md << "\nCurve comparisons on " << datasets[0]
         << " (Bjøntegaard-style: mean top-1 gap A−B over the shared bit range; mean bits saved by A at equal top-1";
      if (empty > 0) md << "; " << empty << " of the " << comps.size() << " pairs share neither range and are not listed";
      md << "):\n\n| A | B | mean top-1 gap | bits saved by A | shared bits |\n|---|---|---|---|---|\n";
      for (auto& c : comps) {
        if (nothing_shared(c)) continue;
        md << "| " << c["a"].get<std::string>() << " | " << c["b"].get<std::string>() << " | "
           << (c["mean_top1_gap"].is_null() ? "–" : fmt(c["mean_top1_gap"].get<double>())) << " | "
           << (c["mean_bit_saving"].is_null() ? "–" : fmt(c["mean_bit_saving"].get<double>(), 3)) << " | "
           << (c["overlap_bpw"].is_null() ? "–"
                                           : fmt(c["overlap_bpw"][0].get<double>()) + "–" + fmt(c["overlap_bpw"][1].get<double>()))
           << " |\n";
      }
    }
    md << "\n";
  }
  return md.str();
}

std::string table_csv(const nlohmann::json& table) {
  std::ostringstream csv;
  csv << "model,kind,method,label,variant,epochs,compression,bits,bpw_total,dataset,top1,top1_lo,top1_hi,top5,"
         "mcnemar_p_vs_fp,drop,mcnemar_p_vs_ref,reference_run_id,run_id,citation\n";
  auto q = [](const std::string& s) { return "\"" + s + "\""; };
  for (auto mt = table["models"].begin(); mt != table["models"].end(); ++mt) {
    const std::string& model = mt.key();
    const auto datasets = datasets_of(mt.value());
    // One line per dataset for measured rows, one per published row.
    for (auto& row : mt.value()["rows"]) {
      if (row["kind"] == "measured") {
        for (auto& d : datasets)
          csv << model << ",measured," << row["method"].get<std::string>() << "," << q(row["label"]) << ","
              << q(row["variant"]) << "," << row["epochs"] << "," << row["ratio"] << "," << row["bits"] << ","
              << row["bpw_total"] << "," << d << "," << row["top1"][d] << "," << row["top1_ci95"][d][0] << ","
              << row["top1_ci95"][d][1] << "," << row["top5"][d] << ","
              << (row.contains("mcnemar_p_vs_fp") ? row["mcnemar_p_vs_fp"][d].dump() : "") << ","
              << (row.contains("drop") ? row["drop"][d].dump() : "") << ","
              << (row.contains("mcnemar_p_vs_ref") ? row["mcnemar_p_vs_ref"][d].dump() : "") << ","
              << (row.contains("reference") ? row["reference"].value("run_id", "") : "") << ","
              << row["run_id"].get<std::string>() << ",\n";
      } else {
        csv << model << ",published," << q(row["method"]) << ",,," << (row.contains("epochs") ? row["epochs"].dump() : "")
            << "," << (row.contains("ratio") ? row["ratio"].dump() : "") << ","
            << (row.contains("bits") ? row["bits"].dump() : "") << ",," << q(row.value("dataset", "")) << ","
            << (row.contains("top1_published") ? row["top1_published"].dump() : "") << ",,,"
            << (row.contains("top5_published") ? row["top5_published"].dump() : "") << ",,,,,," << q(row["citation"])
            << "\n";
      }
    }
  }
  return csv.str();
}

std::vector<TablePlot> table_plots(const nlohmann::json& table) {
  std::vector<TablePlot> out;
  for (auto mt = table["models"].begin(); mt != table["models"].end(); ++mt) {
    const std::string& model = mt.key();
    const auto& m = mt.value();
    const auto& rows = m["rows"];
    const auto curves = curve_rows(rows);
    for (const std::string& d : datasets_of(m)) {
      TablePlot tp;
      tp.model = model;
      tp.dataset = d;
      PlotSpec& ps = tp.spec;
      ps.title = model + " on " + d;
      if (m.contains("baseline")) ps.baseline = m["baseline"]["top1"][d].get<double>();
      // Fine-tuning controls (fp32 runs that fine-tuned): the level their rows' drops are measured
      // from, drawn beside the untuned FP line (one epoch on the JPEG training images lifts the FP
      // network on the JPEG test by about 5 points: against the FP line alone a retrained row
      // would look that much better than it is).
      for (const auto& row : rows)
        if (row["kind"] == "measured" && row["method"] == "fp32" && !is_fp_baseline(row["method"], row.value("epochs", 0.0)))
          ps.references.push_back({row["label"].get<std::string>(), row["top1"][d].get<double>()});
      std::vector<std::pair<double, double>> all;
      std::vector<std::pair<size_t, size_t>> where;  // (series, point) of each entry of `all`
      for (auto& [label, idx] : curves) {
        PlotSeries s;
        s.name = label;
        for (size_t i : idx) {
          const auto& ci = rows[i]["top1_ci95"][d];
          s.points.push_back({rows[i]["bits"].get<double>(), rows[i]["top1"][d].get<double>(), ci[0].get<double>(),
                              ci[1].get<double>()});
        }
        std::sort(s.points.begin(), s.points.end(), [](auto& a, auto& b) { return a.bpw < b.bpw; });
        for (size_t i = 0; i < s.points.size(); ++i) {
          all.push_back({s.points[i].bpw, s.points[i].top1});
          where.push_back({ps.series.size(), i});
        }
        ps.series.push_back(s);
      }
      for (size_t i : pareto_front(all)) ps.series[where[i].first].points[where[i].second].pareto = true;
      out.push_back(std::move(tp));
    }
  }
  return out;
}

std::vector<std::string> write_table_plots(const nlohmann::json& table, const std::string& results_dir) {
  const std::string dir = results_dir + "/plots";
  fs::create_directories(dir);
  std::vector<std::string> written;
  for (auto& tp : table_plots(table)) {
    const std::string stem = dir + "/" + tp.model + "." + tp.dataset;
    write_plot_svg(tp.spec, stem + ".svg");
    write_plot_png(tp.spec, stem + ".png");
    written.push_back(stem + ".svg");
    written.push_back(stem + ".png");
  }
  // The names from before there was a plot per evaluation set (plots/<model>.{svg,png}) would
  // otherwise stay behind, stale.
  for (auto mt = table["models"].begin(); mt != table["models"].end(); ++mt)
    for (const char* ext : {".svg", ".png"}) fs::remove(dir + "/" + mt.key() + ext);
  return written;
}

namespace {
void write_table_files(const nlohmann::json& table, const std::string& results_dir) {
  write_file_atomic(results_dir + "/table.json", table_json_text(table));
  write_file_atomic(results_dir + "/table.md", table_markdown(table));
  write_file_atomic(results_dir + "/table.csv", table_csv(table));
}
}  // namespace

nlohmann::json build_table(const std::string& results_dir, const TableOptions& opt, std::vector<std::string>* plots_written) {
  nlohmann::json table = collect_table(results_dir, opt);
  if (opt.plots) {
    auto written = write_table_plots(table, results_dir);
    if (plots_written) *plots_written = written;
  }
  write_table_files(table, results_dir);
  return table;
}

nlohmann::json reformat_table(const std::string& results_dir) {
  const std::string path = results_dir + "/table.json";
  BB_CHECK(fs::exists(path), "'", path, "' does not exist (bitbench table RESULTS_DIR writes it from run records)");
  nlohmann::json table;
  try {
    table = nlohmann::json::parse(read_file_text(path));
  } catch (const nlohmann::json::exception& e) {
    BB_THROW("'", path, "' is not valid JSON: ", e.what());
  }
  BB_CHECK(table.contains("models") && table["models"].is_object(), "'", path, "' has no \"models\" object");
  for (auto mt = table["models"].begin(); mt != table["models"].end(); ++mt) {
    auto& m = mt.value();
    BB_CHECK(m.contains("rows") && m.contains("datasets") && !m["datasets"].empty(), "'", path, "': model '", mt.key(),
             "' has no rows or datasets");
    // Tables written before rows had a reference (issue 21) compared every row with the FP run:
    // give such rows that reference, as collect_table would for records without a control.
    const nlohmann::json* fp = nullptr;
    for (auto& row : m["rows"])
      if (row["kind"] == "measured" && is_fp_baseline(row["method"], row.value("epochs", 0.0))) fp = &row;
    if (fp && m.contains("baseline"))
      for (auto& row : m["rows"]) {
        if (row["kind"] != "measured" || &row == fp || row.contains("reference")) continue;
        row["reference"] = {{"kind", "fp"}, {"run_id", (*fp)["run_id"]}};
        for (auto& d : datasets_of(m)) {
          row["drop"][d] = m["baseline"]["top1"][d].get<double>() - row["top1"][d].get<double>();
          if (row.contains("mcnemar_p_vs_fp") && row["mcnemar_p_vs_fp"].contains(d))
            row["mcnemar_p_vs_ref"][d] = row["mcnemar_p_vs_fp"][d];
        }
      }
    m["best_per_target"] = best_per_target(m["rows"], datasets_of(m)[0]);
  }
  write_table_files(table, results_dir);
  return table;
}

}  // namespace bb
