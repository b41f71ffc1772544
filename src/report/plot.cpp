#include "report/plot.h"
#include "common/error.h"
#include "common/fs_util.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace bb {
namespace {

const int W = 900, H = 600, L = 80, R = 220, T = 50, B = 70;

struct Frame {
  double x0, x1, y0, y1;
  double px(double x) const { return L + (x - x0) / (x1 - x0) * (W - L - R); }
  double py(double y) const { return H - B - (y - y0) / (y1 - y0) * (H - T - B); }
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

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else o += c;
  }
  return o;
}

}  // namespace

void write_plot_svg(const PlotSpec& p, const std::string& path) {
  Frame f = frame_of(p);
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif'>\n";
  s << "<rect width='100%' height='100%' fill='white'/>\n";
  s << "<text x='" << W / 2 << "' y='28' text-anchor='middle' font-size='18'>" << esc(p.title) << "</text>\n";
  double xs = nice_step(f.x1 - f.x0, 8), ys = nice_step(f.y1 - f.y0, 8);
  for (double x = std::ceil(f.x0 / xs) * xs; x <= f.x1 + 1e-9; x += xs)
    s << "<line x1='" << f.px(x) << "' y1='" << T << "' x2='" << f.px(x) << "' y2='" << H - B
      << "' stroke='#eee'/><text x='" << f.px(x) << "' y='" << H - B + 18 << "' text-anchor='middle' font-size='12'>"
      << x << "</text>\n";
  for (double y = std::ceil(f.y0 / ys) * ys; y <= f.y1 + 1e-9; y += ys)
    s << "<line x1='" << L << "' y1='" << f.py(y) << "' x2='" << W - R << "' y2='" << f.py(y)
      << "' stroke='#eee'/><text x='" << L - 6 << "' y='" << f.py(y) + 4 << "' text-anchor='end' font-size='12'>" << y
      << "</text>\n";
  s << "<rect x='" << L << "' y='" << T << "' width='" << W - L - R << "' height='" << H - T - B
    << "' fill='none' stroke='black'/>\n";
  s << "<text x='" << (L + W - R) / 2 << "' y='" << H - 25 << "' text-anchor='middle' font-size='14'>" << esc(p.xlabel)
    << "</text>\n";
  s << "<text transform='translate(22," << (T + H - B) / 2 << ") rotate(-90)' text-anchor='middle' font-size='14'>"
    << esc(p.ylabel) << "</text>\n";
  int ly = T + 10;
  if (p.baseline >= 0) {
    s << "<line x1='" << L << "' y1='" << f.py(p.baseline) << "' x2='" << W - R << "' y2='" << f.py(p.baseline)
      << "' stroke='black' stroke-dasharray='6,4'/>\n";
    s << "<line x1='" << W - R + 10 << "' y1='" << ly << "' x2='" << W - R + 35 << "' y2='" << ly
      << "' stroke='black' stroke-dasharray='6,4'/><text x='" << W - R + 40 << "' y='" << ly + 4
      << "' font-size='12'>FP baseline</text>\n";
    ly += 20;
  }
  for (size_t i = 0; i < p.series.size(); ++i) {
    const auto& se = p.series[i];
    std::string c = rgb((int)i);
    std::string pts;
    for (auto& q : se.points) pts += std::to_string(f.px(q.bpw)) + "," + std::to_string(f.py(q.top1)) + " ";
    s << "<polyline points='" << pts << "' fill='none' stroke='" << c << "' stroke-width='2'/>\n";
    for (auto& q : se.points) {
      s << "<line x1='" << f.px(q.bpw) << "' y1='" << f.py(q.lo) << "' x2='" << f.px(q.bpw) << "' y2='" << f.py(q.hi)
        << "' stroke='" << c << "'/>\n";
      s << "<circle cx='" << f.px(q.bpw) << "' cy='" << f.py(q.top1) << "' r='" << (q.pareto ? 6 : 3.5) << "' fill='"
        << (q.pareto ? "white" : c) << "' stroke='" << c << "' stroke-width='2'/>\n";
    }
    s << "<line x1='" << W - R + 10 << "' y1='" << ly << "' x2='" << W - R + 35 << "' y2='" << ly << "' stroke='" << c
      << "' stroke-width='2'/><text x='" << W - R + 40 << "' y='" << ly + 4 << "' font-size='12'>" << esc(se.name)
      << "</text>\n";
    ly += 20;
  }
  s << "<circle cx='" << W - R + 22 << "' cy='" << ly << "' r='6' fill='white' stroke='black' stroke-width='2'/>"
    << "<text x='" << W - R + 40 << "' y='" << ly + 4 << "' font-size='12'>Pareto front</text>\n";
  s << "</svg>\n";
  write_file_atomic(path, s.str());
}

void write_plot_png(const PlotSpec& p, const std::string& path) {
  Frame f = frame_of(p);
  cv::Mat img(H, W, CV_8UC3, cv::Scalar(255, 255, 255));
  auto pt = [&](double x, double y) { return cv::Point((int)std::lround(f.px(x)), (int)std::lround(f.py(y))); };
  auto col = [](int i) {
    auto c = kColors[i % kColors.size()];
    return cv::Scalar(c[2], c[1], c[0]);
  };
  const auto font = cv::FONT_HERSHEY_SIMPLEX;
  double xs = nice_step(f.x1 - f.x0, 8), ys = nice_step(f.y1 - f.y0, 8);
  char buf[64];
  for (double x = std::ceil(f.x0 / xs) * xs; x <= f.x1 + 1e-9; x += xs) {
    cv::line(img, pt(x, f.y0), pt(x, f.y1), cv::Scalar(235, 235, 235), 1);
    std::snprintf(buf, sizeof buf, "%g", x);
    cv::putText(img, buf, pt(x, f.y0) + cv::Point(-10, 20), font, 0.45, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  }
  for (double y = std::ceil(f.y0 / ys) * ys; y <= f.y1 + 1e-9; y += ys) {
    cv::line(img, pt(f.x0, y), pt(f.x1, y), cv::Scalar(235, 235, 235), 1);
    std::snprintf(buf, sizeof buf, "%g", y);
    cv::putText(img, buf, pt(f.x0, y) + cv::Point(-40, 5), font, 0.45, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  }
  cv::rectangle(img, cv::Point(L, T), cv::Point(W - R, H - B), cv::Scalar(0, 0, 0), 1);
  cv::putText(img, p.title, cv::Point(L, 30), font, 0.6, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  cv::putText(img, p.xlabel, cv::Point((L + W - R) / 2 - 100, H - 25), font, 0.5, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  cv::putText(img, "top-1 (%)", cv::Point(5, T - 10), font, 0.5, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  int ly = T + 10;
  if (p.baseline >= 0) {
    for (double x = f.x0; x < f.x1; x += (f.x1 - f.x0) / 60)
      cv::line(img, pt(x, p.baseline), pt(std::min(f.x1, x + (f.x1 - f.x0) / 120), p.baseline), cv::Scalar(0, 0, 0), 1);
    cv::line(img, cv::Point(W - R + 10, ly), cv::Point(W - R + 35, ly), cv::Scalar(0, 0, 0), 1);
    cv::putText(img, "FP baseline", cv::Point(W - R + 40, ly + 4), font, 0.45, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
    ly += 20;
  }
  for (size_t i = 0; i < p.series.size(); ++i) {
    const auto& se = p.series[i];
    for (size_t j = 1; j < se.points.size(); ++j)
      cv::line(img, pt(se.points[j - 1].bpw, se.points[j - 1].top1), pt(se.points[j].bpw, se.points[j].top1), col((int)i),
               2, cv::LINE_AA);
    for (auto& q : se.points) {
      cv::line(img, pt(q.bpw, q.lo), pt(q.bpw, q.hi), col((int)i), 1);
      if (q.pareto) {
        cv::circle(img, pt(q.bpw, q.top1), 6, cv::Scalar(255, 255, 255), cv::FILLED, cv::LINE_AA);
        cv::circle(img, pt(q.bpw, q.top1), 6, col((int)i), 2, cv::LINE_AA);
      } else {
        cv::circle(img, pt(q.bpw, q.top1), 4, col((int)i), cv::FILLED, cv::LINE_AA);
      }
    }
    cv::line(img, cv::Point(W - R + 10, ly), cv::Point(W - R + 35, ly), col((int)i), 2);
    cv::putText(img, se.name, cv::Point(W - R + 40, ly + 4), font, 0.45, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
    ly += 20;
  }
  cv::circle(img, cv::Point(W - R + 22, ly), 6, cv::Scalar(0, 0, 0), 2, cv::LINE_AA);
  cv::putText(img, "Pareto front", cv::Point(W - R + 40, ly + 4), font, 0.45, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  std::vector<uchar> png;
  BB_CHECK(cv::imencode(".png", img, png), "cannot encode plot PNG");
  write_file_atomic(path, png.data(), png.size());
}

}  // namespace bb
