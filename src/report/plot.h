// Top-1 vs bits-per-weight plots: a curve per method, the FP baseline as a dashed line, other
// reference levels (a fine-tuning control: the FP network given the rows' fine-tuning) as
// dash-dotted lines, 95% confidence bars, the Pareto front marked. Written as SVG (by hand) and
// PNG (OpenCV) from one layout: the canvas is sized from the measured text, the legend sits right
// of the plot area with every label whole, and no two texts (title, axis titles, tick labels,
// legend) overlap.
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
struct PlotReference {
  std::string name;  // legend label
  double top1;
};
struct PlotSpec {
  std::string title, xlabel = "bits per weight (bpw_core)", ylabel = "top-1 (%)";
  std::vector<PlotSeries> series;
  double baseline = -1;                    // FP top-1, < 0 = none
  std::vector<PlotReference> references;  // further horizontal reference lines, in legend order
};

// A text as laid out: anchor point (x, y) on the baseline, its extent [x0, x1] x [y0, y1] in
// canvas pixels. `vertical` texts are rotated -90 degrees about the anchor.
struct PlotText {
  std::string text, role;  // role: title, xlabel, ylabel, xtick, ytick, legend
  double size = 12;        // font size in SVG pixels (the PNG scales its font to match)
  double x = 0, y = 0;
  std::string anchor = "start";  // start | middle | end
  bool vertical = false;
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
};
struct PlotLayout {
  int width = 0, height = 0;                        // canvas
  double left = 0, top = 0, plot_w = 0, plot_h = 0;  // plot area
  double legend_x = 0, legend_y = 0, legend_row = 0;
  std::vector<PlotText> texts;
};
enum class PlotBackend { svg, png };

// The layout each writer draws; text extents from svg_text_width (SVG) or OpenCV's Hershey font
// metrics (PNG).
PlotLayout plot_layout(const PlotSpec& p, PlotBackend backend);
// Estimated width in pixels of `text` in a sans-serif font of `px` pixels: Helvetica/Arial advance
// widths plus a 15% allowance for wider fallbacks (DejaVu Sans); 1 em per non-ASCII character.
double svg_text_width(const std::string& text, double px);
// Ascent and descent of svg text of `px` pixels (generous: any sans-serif fits).
inline double svg_text_ascent(double px) { return 0.8 * px; }
inline double svg_text_descent(double px) { return 0.25 * px; }

void write_plot_svg(const PlotSpec& p, const std::string& path);
void write_plot_png(const PlotSpec& p, const std::string& path);

}  // namespace bb
