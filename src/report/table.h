// Merges an experiment's run records into the published artefacts: table.json (versioned, with a
// context block), table.md and table.csv laid out like Table 2 of Young et al. (TPAMI 2021), and a
// plot per model and evaluation set. Published figures (experiments/published/*.yaml) sit beside measured rows,
// marked as such. Comparisons a reviewer accepts: McNemar's paired test of every run against the
// FP baseline on the same images, and Bjontegaard-style average gaps between methods' curves.
#pragma once
#include "report/plot.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace bb {

struct TableOptions {
  std::string published_dir;  // default <source>/experiments/published
  bool plots = true;
};

// The table's data, as table.json holds it: per model its evaluation sets, rows (one per run
// record of <results_dir>/runs/*.json with McNemar's p against the FP run, then the published
// rows), curve comparisons and FP baseline. The writers below only format it.
nlohmann::json collect_table(const std::string& results_dir, const TableOptions& opt = {});

std::string table_json_text(const nlohmann::json& table);  // table.json
std::string table_markdown(const nlohmann::json& table);   // table.md
std::string table_csv(const nlohmann::json& table);        // table.csv

// One plot per model and evaluation set: a curve per measured label (fp32 excepted), the FP
// baseline, the Pareto front over all of that plot's points.
struct TablePlot {
  std::string model, dataset;
  PlotSpec spec;
};
std::vector<TablePlot> table_plots(const nlohmann::json& table);
// Writes plots/<model>.<dataset>.{svg,png} under results_dir (removing the older
// plots/<model>.{svg,png}); returns the paths written.
std::vector<std::string> write_table_plots(const nlohmann::json& table, const std::string& results_dir);

// collect_table, then writes table.{json,md,csv} and (opt.plots) the plots, their paths to
// *plots_written; returns the table.
nlohmann::json build_table(const std::string& results_dir, const TableOptions& opt = {},
                           std::vector<std::string>* plots_written = nullptr);

// For a committed table whose run records are not at hand: reads <results_dir>/table.json,
// recomputes with this build what derives from its rows alone (best_per_target; for a table
// written before rows had a reference, each row's reference = the FP run, its drop and p against
// it), and rewrites table.{json,md,csv}; the measured figures, comparisons and context stay as
// they were. Returns the table.
nlohmann::json reformat_table(const std::string& results_dir);

// Bjontegaard-style gaps between two rate-accuracy curves (points: bpw, top1), each reduced to its
// upper envelope. Returns {"mean_top1_gap": A-B over the overlapping log2(bpw) range,
// "mean_bit_saving": bits_B - bits_A over the overlapping top-1 range, "overlap_bpw": [lo, hi]};
// null members where the ranges do not overlap.
nlohmann::json curve_gaps(std::vector<std::pair<double, double>> a, std::vector<std::pair<double, double>> b);

// Indices of the points on the Pareto front (no other point has lower-or-equal bpw and higher top-1).
std::vector<size_t> pareto_front(const std::vector<std::pair<double, double>>& pts);

}  // namespace bb
