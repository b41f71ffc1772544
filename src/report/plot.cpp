#include "report/plot.h"
#include "common/error.h"
#include "common/fs_util.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>

namespace bb {
namespace {

const double kMargin = 12;                   // around the canvas
const double kPlotW = 600, kPlotH = 420;     // plot area
const double kRow = 22, kSwatch = 28;        // legend row height, legend symbol width
const double kTitle = 18, kAxis = 14, kTick = 12, kLegend = 12;  // font sizes (SVG px)
const double kPngScale = 0.0375;             // Hershey font scale per SVG px (12 px -> 0.45)

// Helvetica / Arial advance widths (1/1000 em) for ASCII 32..126.
const int kHelvetica[95] = {278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,  // ' '../
                            556, 556, 556, 556, 556, 556, 556, 556, 556, 556,                              // 0..9
                            278, 278, 584, 584, 584, 556, 1015,                                            // :..@
                            667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833,               // A..M
                            722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611,               // N..Z
                            278, 278, 278, 469, 556, 333,                                                  // [..`
                            556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833,               // a..m
                            556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500,               // n..z
                            334, 260, 334, 584};                                                           // {..~

struct Frame {
  double x0, x1, y0, y1;
  double left = 0, top = 0;
  double px(double x) const { return left + (x - x0) / (x1 - x0) * kPlotW; }
  double py(double y) const { return top + kPlotH - (y - y0) / (y1 - y0) * kPlotH; }
};

Frame frame_of(const PlotSpec& p) {
  double x0 = 1e9, x1 = -1e9, y0 = 1e9, y1 = -1e9;
  for (auto& s : p.series)
    for (auto& q : s.points) {
      x0 = std::min(x0, q.bpw);
      x1 = std::max(x1, q.bpw);
      y0 = std::min(y0, q.lo);
      y1 = std::max(y1, q.hi);
    }
  if (p.baseline >= 0) {
    y0 = std::min(y0, p.baseline);
    y1 = std::max(y1, p.baseline);
  }
  for (auto& r : p.references) {
    y0 = std::min(y0, r.top1);
    y1 = std::max(y1, r.top1);
  }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 100;
  x0 = std::max(0.0, std::floor(x0 - 0.25));
  x1 = std::ceil(x1 + 0.25);
  y0 = std::max(0.0, std::floor((y0 - 2) / 5) * 5);
  y1 = std::min(100.0, std::ceil((y1 + 1) / 5) * 5);
  if (y1 <= y0) y1 = y0 + 5;
  if (x1 <= x0) x1 = x0 + 1;
  return {x0, x1, y0, y1};
}

const std::vector<std::array<int, 3>> kColors = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},
                                                 {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127},
                                                 {188, 189, 34},  {23, 190, 207}};

std::string rgb(int i) {
  auto c = kColors[i % kColors.size()];
  char b[32];
  std::snprintf(b, sizeof b, "rgb(%d,%d,%d)", c[0], c[1], c[2]);
  return b;
}

double nice_step(double range, int target) {
  double raw = range / target, p = std::pow(10, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * p >= raw) return m * p;
  return 10 * p;
}

// Tick values i*step within [lo, hi] and their labels.
std::vector<std::pair<double, std::string>> ticks(double lo, double hi, double step) {
  std::vector<std::pair<double, std::string>> out;
  for (long i = (long)std::ceil(lo / step - 1e-9); i * step <= hi + 1e-9; ++i) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", i * step);
    out.push_back({i * step, b});
  }
  return out;
}

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '\'') o += "&apos;";
    else if ((unsigned char)c < 0x20) o += ' ';
    else o += c;
  }
  return o;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

struct Extent {
  double w, asc, desc;
};
using Measure = std::function<Extent(const std::string&, double)>;

Extent svg_measure(const std::string& t, double px) { return {svg_text_width(t, px), svg_text_ascent(px), svg_text_descent(px)}; }

Extent png_measure(const std::string& t, double px) {
  int base = 0;
  cv::Size s = cv::getTextSize(t, cv::FONT_HERSHEY_SIMPLEX, px * kPngScale, 1, &base);
  return {(double)s.width, (double)s.height, (double)base};
}

struct Entry {
  std::string name;
  enum Kind { baseline, reference, series, pareto, interval } kind;
  int color = 0;
};

std::vector<Entry> legend_entries(const PlotSpec& p) {
  std::vector<Entry> out;
  if (p.baseline >= 0) out.push_back({"FP baseline", Entry::baseline});
  for (auto& r : p.references) out.push_back({r.name, Entry::reference});
  for (size_t i = 0; i < p.series.size(); ++i) out.push_back({p.series[i].name, Entry::series, (int)i});
  out.push_back({"Pareto front", Entry::pareto});
  out.push_back({"95% interval", Entry::interval});
  return out;
}

PlotLayout layout_with(const PlotSpec& p, const Measure& measure, Frame& f) {
  PlotLayout L;
  f = frame_of(p);
  const double m = kMargin;
  auto place = [&](const std::string& text, const std::string& role, double size, double x, double y,
                   const std::string& anchor, bool vertical = false) {
    PlotText t;
    t.text = text;
    t.role = role;
    t.size = size;
    t.x = x;
    t.y = y;
    t.anchor = anchor;
    t.vertical = vertical;
    const Extent e = measure(text, size);
    const double start = anchor == "middle" ? -e.w / 2 : anchor == "end" ? -e.w : 0;
    if (vertical) {  // rotated -90 degrees about (x, y): the text runs upwards, ascent to the left
      t.x0 = x - e.asc, t.x1 = x + e.desc, t.y0 = y - start - e.w, t.y1 = y - start;
    } else {
      t.x0 = x + start, t.x1 = x + start + e.w, t.y0 = y - e.asc, t.y1 = y + e.desc;
    }
    L.texts.push_back(t);
  };
  const Extent title = measure(p.title, kTitle), axis = measure("0", kAxis), tick = measure("0", kTick);
  const double tick_h = tick.asc + tick.desc;
  const auto xt = ticks(f.x0, f.x1, nice_step(f.x1 - f.x0, 8)), yt = ticks(f.y0, f.y1, nice_step(f.y1 - f.y0, 8));
  double ytick_w = 0, last_xtick_w = 0;
  for (auto& t : yt) ytick_w = std::max(ytick_w, measure(t.second, kTick).w);
  if (!xt.empty()) last_xtick_w = measure(xt.back().second, kTick).w;

  // Vertically: title, (half a tick label), plot area, tick labels, x-axis title.
  const double title_base = m + title.asc;
  f.top = L.top = std::ceil(title_base + title.desc + 10 + tick_h / 2);
  // Horizontally: y-axis title (rotated), tick labels, plot area, legend.
  const double ylabel_base = m + axis.asc;
  f.left = L.left = std::ceil(ylabel_base + axis.desc + 10 + ytick_w + 6);
  L.plot_w = kPlotW;
  L.plot_h = kPlotH;
  for (auto& t : yt) place(t.second, "ytick", kTick, L.left - 6, f.py(t.first) + (tick.asc - tick.desc) / 2, "end");
  for (auto& t : xt) place(t.second, "xtick", kTick, f.px(t.first), L.top + kPlotH + 6 + tick.asc, "middle");
  const double xlabel_base = L.top + kPlotH + 6 + tick_h + 10 + axis.asc;
  place(p.xlabel, "xlabel", kAxis, L.left + kPlotW / 2, xlabel_base, "middle");
  place(p.ylabel, "ylabel", kAxis, ylabel_base, L.top + kPlotH / 2, "middle", true);

  // Legend right of the plot, clear of the last x tick label; each row as wide as its text.
  const auto entries = legend_entries(p);
  L.legend_x = std::ceil(L.left + kPlotW + std::max(20.0, last_xtick_w / 2 + 10));
  L.legend_y = L.top;
  L.legend_row = kRow;
  const Extent leg = measure("0", kLegend);
  double legend_w = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const double yc = L.legend_y + kRow * (i + 0.5);
    place(entries[i].name, "legend", kLegend, L.legend_x + kSwatch + 6, yc + (leg.asc - leg.desc) / 2, "start");
    legend_w = std::max(legend_w, L.texts.back().x1 - L.legend_x);
  }
  double width = L.legend_x + legend_w + m;
  double height = std::max(xlabel_base + axis.desc + m, L.legend_y + kRow * entries.size() + m);
  // Title centred over the plot area, shifted (or the canvas widened) to stay whole.
  width = std::max(width, title.w + 2 * m);
  double cx = L.left + kPlotW / 2;
  cx = std::min(std::max(cx, m + title.w / 2), width - m - title.w / 2);
  place(p.title, "title", kTitle, cx, title_base, "middle");
  L.width = (int)std::ceil(width);
  L.height = (int)std::ceil(height);
  return L;
}

// Line styles: the FP baseline dashed, other reference lines dash-dotted.
enum class Dash { solid, dashed, dashdot };
// Dash patterns (on, off, on, off, ... in pixels), shared by the SVG and PNG writers.
const std::vector<double>& dash_pattern(Dash d) {
  static const std::vector<double> none, dashed = {6, 4}, dashdot = {10, 3, 2, 3};
  return d == Dash::dashed ? dashed : d == Dash::dashdot ? dashdot : none;
}

// Everything but the texts, drawn through a small set of primitives shared by both writers.
struct Painter {
  std::function<void(double, double, double, double, int color, double width, Dash dash)> line;  // color -1 = black, -2 = grid
  std::function<void(double, double, double r, int color, bool open)> circle;
  std::function<void(double, double, double, double)> frame;
};

void paint(const PlotSpec& p, const PlotLayout& L, const Frame& f, const Painter& d) {
  for (auto& t : ticks(f.x0, f.x1, nice_step(f.x1 - f.x0, 8))) d.line(f.px(t.first), L.top, f.px(t.first), L.top + L.plot_h, -2, 1, Dash::solid);
  for (auto& t : ticks(f.y0, f.y1, nice_step(f.y1 - f.y0, 8))) d.line(L.left, f.py(t.first), L.left + L.plot_w, f.py(t.first), -2, 1, Dash::solid);
  d.frame(L.left, L.top, L.plot_w, L.plot_h);
  if (p.baseline >= 0) d.line(L.left, f.py(p.baseline), L.left + L.plot_w, f.py(p.baseline), -1, 1, Dash::dashed);
  for (auto& r : p.references) d.line(L.left, f.py(r.top1), L.left + L.plot_w, f.py(r.top1), -1, 1, Dash::dashdot);
  for (size_t i = 0; i < p.series.size(); ++i) {
    const auto& se = p.series[i];
    for (size_t j = 1; j < se.points.size(); ++j)
      d.line(f.px(se.points[j - 1].bpw), f.py(se.points[j - 1].top1), f.px(se.points[j].bpw), f.py(se.points[j].top1), (int)i, 2, Dash::solid);
    for (auto& q : se.points) {
      d.line(f.px(q.bpw), f.py(q.lo), f.px(q.bpw), f.py(q.hi), (int)i, 1, Dash::solid);
      d.circle(f.px(q.bpw), f.py(q.top1), q.pareto ? 6 : 3.5, (int)i, q.pareto);
    }
  }
  const auto entries = legend_entries(p);
  for (size_t i = 0; i < entries.size(); ++i) {
    const double yc = L.legend_y + kRow * (i + 0.5), x0 = L.legend_x, x1 = L.legend_x + kSwatch, xm = (x0 + x1) / 2;
    switch (entries[i].kind) {
      case Entry::baseline: d.line(x0, yc, x1, yc, -1, 1, Dash::dashed); break;
      case Entry::reference: d.line(x0, yc, x1, yc, -1, 1, Dash::dashdot); break;
      case Entry::series:
        d.line(x0, yc, x1, yc, entries[i].color, 2, Dash::solid);
        d.circle(xm, yc, 3.5, entries[i].color, false);
        break;
      case Entry::pareto: d.circle(xm, yc, 6, -1, true); break;
      case Entry::interval:
        d.line(xm, yc - 8, xm, yc + 8, -1, 1, Dash::solid);
        d.circle(xm, yc, 3.5, -1, false);
        break;
    }
  }
}

}  // namespace

double svg_text_width(const std::string& text, double px) {
  double em = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = text[i];
    if (c >= 32 && c < 127) em += kHelvetica[c - 32] / 1000.0;
    else if (c >= 0xC0 || c < 0x80) em += 1.0;  // a non-ASCII character's first byte (continuation bytes add nothing)
  }
  return em * px * 1.15;
}

PlotLayout plot_layout(const PlotSpec& p, PlotBackend backend) {
  Frame f{};
  return layout_with(p, backend == PlotBackend::svg ? Measure(svg_measure) : Measure(png_measure), f);
}

void write_plot_svg(const PlotSpec& p, const std::string& path) {
  Frame f{};
  const PlotLayout L = layout_with(p, svg_measure, f);
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << L.width << "' height='" << L.height
    << "' font-family='Helvetica, Arial, Liberation Sans, DejaVu Sans, sans-serif'>\n";
  s << "<rect width='100%' height='100%' fill='white'/>\n";
  auto color = [](int c) { return c == -1 ? std::string("black") : c == -2 ? std::string("#e8e8e8") : rgb(c); };
  Painter d;
  d.line = [&](double x0, double y0, double x1, double y1, int c, double w, Dash dash) {
    s << "<line x1='" << num(x0) << "' y1='" << num(y0) << "' x2='" << num(x1) << "' y2='" << num(y1) << "' stroke='"
      << color(c) << "'" << (w != 1 ? " stroke-width='" + num(w) + "'" : "");
    const auto& pat = dash_pattern(dash);
    for (size_t k = 0; k < pat.size(); ++k) s << (k ? "," : " stroke-dasharray='") << pat[k];
    s << (pat.empty() ? "" : "'") << "/>\n";
  };
  d.circle = [&](double x, double y, double r, int c, bool open) {
    s << "<circle cx='" << num(x) << "' cy='" << num(y) << "' r='" << num(r) << "' fill='" << (open ? "white" : color(c))
      << "' stroke='" << color(c) << "' stroke-width='2'/>\n";
  };
  d.frame = [&](double x, double y, double w, double h) {
    s << "<rect x='" << num(x) << "' y='" << num(y) << "' width='" << num(w) << "' height='" << num(h)
      << "' fill='none' stroke='black'/>\n";
  };
  paint(p, L, f, d);
  for (auto& t : L.texts) {
    s << "<text ";
    if (t.vertical) s << "transform='translate(" << num(t.x) << "," << num(t.y) << ") rotate(-90)'";
    else s << "x='" << num(t.x) << "' y='" << num(t.y) << "'";
    s << " text-anchor='" << t.anchor << "' font-size='" << t.size << "'>" << esc(t.text) << "</text>\n";
  }
  s << "</svg>\n";
  write_file_atomic(path, s.str());
}

void write_plot_png(const PlotSpec& p, const std::string& path) {
  Frame f{};
  const PlotLayout L = layout_with(p, png_measure, f);
  cv::Mat img(L.height, L.width, CV_8UC3, cv::Scalar(255, 255, 255));
  auto P = [](double x, double y) { return cv::Point((int)std::lround(x), (int)std::lround(y)); };
  auto col = [](int i) {
    if (i == -1) return cv::Scalar(0, 0, 0);
    if (i == -2) return cv::Scalar(232, 232, 232);
    auto c = kColors[i % kColors.size()];
    return cv::Scalar(c[2], c[1], c[0]);
  };
  Painter d;
  d.line = [&](double x0, double y0, double x1, double y1, int c, double w, Dash dash) {
    const auto& pat = dash_pattern(dash);
    if (pat.empty()) {
      cv::line(img, P(x0, y0), P(x1, y1), col(c), (int)w, c >= 0 ? cv::LINE_AA : cv::LINE_8);
      return;
    }
    const double len = std::hypot(x1 - x0, y1 - y0);
    size_t k = 0;
    for (double a = 0; a < len; a += pat[k] + pat[k + 1], k = (k + 2) % pat.size()) {
      const double b = std::min(len, a + pat[k]);
      cv::line(img, P(x0 + (x1 - x0) * a / len, y0 + (y1 - y0) * a / len), P(x0 + (x1 - x0) * b / len, y0 + (y1 - y0) * b / len),
               col(c), (int)w);
    }
  };
  d.circle = [&](double x, double y, double r, int c, bool open) {
    if (open) {
      cv::circle(img, P(x, y), (int)std::lround(r), cv::Scalar(255, 255, 255), cv::FILLED, cv::LINE_AA);
      cv::circle(img, P(x, y), (int)std::lround(r), col(c), 2, cv::LINE_AA);
    } else {
      cv::circle(img, P(x, y), (int)std::lround(r), col(c), cv::FILLED, cv::LINE_AA);
    }
  };
  d.frame = [&](double x, double y, double w, double h) { cv::rectangle(img, P(x, y), P(x + w, y + h), cv::Scalar(0, 0, 0), 1); };
  paint(p, L, f, d);
  const auto font = cv::FONT_HERSHEY_SIMPLEX;
  for (auto& t : L.texts) {
    const double scale = t.size * kPngScale;
    if (!t.vertical) {
      cv::putText(img, t.text, P(t.x0, t.y), font, scale, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
      continue;
    }
    // Rotated: drawn horizontally on its own canvas, turned a quarter counter-clockwise, pasted.
    int base = 0;
    cv::Size sz = cv::getTextSize(t.text, font, scale, 1, &base);
    cv::Mat tmp(sz.height + base, sz.width, CV_8UC3, cv::Scalar(255, 255, 255)), rot;
    cv::putText(tmp, t.text, cv::Point(0, sz.height), font, scale, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
    cv::rotate(tmp, rot, cv::ROTATE_90_COUNTERCLOCKWISE);
    const cv::Rect dst((int)std::lround(t.x0), (int)std::lround(t.y0), rot.cols, rot.rows);
    BB_CHECK((dst & cv::Rect(0, 0, img.cols, img.rows)) == dst, "plot text '", t.text, "' outside the canvas");
    rot.copyTo(img(dst));
  }
  std::vector<uchar> png;
  BB_CHECK(cv::imencode(".png", img, png), "cannot encode plot PNG");
  write_file_atomic(path, png.data(), png.size());
}

}  // namespace bb
