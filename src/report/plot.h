// Top-1 vs bits-per-weight plots, one per model: a curve per method, the FP baseline as a line,
// 95% confidence bars, the Pareto front marked. Written as SVG (by hand) and PNG (OpenCV).
#pragma once
#include <string>
#include <vector>

namespace bb {

struct PlotPoint {
  double bpw, top1, lo, hi;
  bool pareto = false;
};
struct PlotSeries {
  std::string name;
  std::vector<PlotPoint> points;  // sorted by bpw
};
struct PlotSpec {
  std::string title, xlabel = "bits per weight (bpw_core)", ylabel = "top-1 (%)";
  std::vector<PlotSeries> series;
  double baseline = -1;  // FP top-1, < 0 = none
};

void write_plot_svg(const PlotSpec& p, const std::string& path);
void write_plot_png(const PlotSpec& p, const std::string& path);

}  // namespace bb
