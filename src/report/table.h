// Merges an experiment's run records into the published artefacts: table.json (versioned, with a
// context block), table.md and table.csv laid out like Table 2 of Young et al. (TPAMI 2021), and a
// plot per model. Published figures (experiments/published/*.yaml) sit beside measured rows,
// marked as such. Comparisons a reviewer accepts: McNemar's paired test of every run against the
// FP baseline on the same images, and Bjontegaard-style average gaps between methods' curves.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace bb {

struct TableOptions {
  std::string published_dir;  // default <source>/experiments/published
  bool plots = true;
};

// Reads <results_dir>/runs/*.json, writes table.{json,md,csv} and plots/<model>.{png,svg}.
nlohmann::json build_table(const std::string& results_dir, const TableOptions& opt = {});

// Bjontegaard-style gaps between two rate-accuracy curves (points: bpw, top1), each reduced to its
// upper envelope. Returns {"mean_top1_gap": A-B over the overlapping log2(bpw) range,
// "mean_bit_saving": bits_B - bits_A over the overlapping top-1 range, "overlap_bpw": [lo, hi]};
// null members where the ranges do not overlap.
nlohmann::json curve_gaps(std::vector<std::pair<double, double>> a, std::vector<std::pair<double, double>> b);

// Indices of the points on the Pareto front (no other point has lower-or-equal bpw and higher top-1).
std::vector<size_t> pareto_front(const std::vector<std::pair<double, double>>& pts);

}  // namespace bb
