#include "data/transforms.h"
#include "common/error.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

namespace bb {

Preprocess Preprocess::cifar() {
  Preprocess p{"cifar", {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};
  p.size = 32;
  return p;
}
Preprocess Preprocess::imagenet() {
  return Preprocess{"imagenet", {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}, 256, 224};
}
Preprocess Preprocess::mnist() { return Preprocess{"mnist", {0.f}, {1.f}}; }

void resized_size(int w, int h, int size, int* out_w, int* out_h) {
  if (w <= h) {
    *out_w = size;
    *out_h = (int)((double)size * h / w);
  } else {
    *out_h = size;
    *out_w = (int)((double)size * w / h);
  }
}

namespace {

// Pillow's fixed point: coefficients scaled by 2^22, accumulated in int32 (255 * 2^22 fits).
constexpr int kPrecisionBits = 32 - 8 - 2;

// Filter taps of output positions first..first+count-1 of a resize in_size -> out_size.
struct Coeffs {
  int ksize = 0;
  std::vector<int> lo, n;   // per output: first input index, number of taps
  std::vector<int32_t> k;   // per output: ksize fixed-point weights
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter.
Coeffs precompute(int in_size, int out_size, int first, int count) {
  const double scale = (double)in_size / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  const double ss = 1.0 / filterscale;
  Coeffs c;
  c.ksize = (int)std::ceil(support) * 2 + 1;
  c.lo.resize(count);
  c.n.resize(count);
  c.k.assign((size_t)count * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int j = 0; j < count; ++j) {
    const int xx = first + j;
    const double center = (xx + 0.5) * scale;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0;
    for (int x = 0; x < xmax; ++x) {
      double t = std::fabs((x + xmin - center + 0.5) * ss);
      w[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      double v = ww != 0.0 ? w[x] / ww : 0.0;
      c.k[(size_t)j * c.ksize + x] =
          (int32_t)(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
    }
    c.lo[j] = xmin;
    c.n[j] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Horizontal pass over input rows [row0, row0 + rows), output columns described by c.
template <int CH>
void horizontal(const cv::Mat& in, int row0, int rows, const Coeffs& c, int ch_rt, cv::Mat& out) {
  const int ch = CH > 0 ? CH : ch_rt;
  const int out_w = (int)c.lo.size();
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = in.ptr<uint8_t>(row0 + y);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int j = 0; j < out_w; ++j) {
      const uint8_t* s = src + (size_t)c.lo[j] * ch;
      const int32_t* k = &c.k[(size_t)j * c.ksize];
      const int n = c.n[j];
      if (CH == 3) {
        int32_t a0 = 1 << (kPrecisionBits - 1), a1 = a0, a2 = a0;
        for (int x = 0; x < n; ++x) {
          a0 += s[x * 3] * k[x];
          a1 += s[x * 3 + 1] * k[x];
          a2 += s[x * 3 + 2] * k[x];
        }
        dst[j * 3] = clip8(a0);
        dst[j * 3 + 1] = clip8(a1);
        dst[j * 3 + 2] = clip8(a2);
      } else {
        for (int b = 0; b < ch; ++b) {
          int32_t a = 1 << (kPrecisionBits - 1);
          for (int x = 0; x < n; ++x) a += s[x * ch + b] * k[x];
          dst[j * ch + b] = clip8(a);
        }
      }
    }
  }
}

}  // namespace

cv::Mat pil_resize_bilinear_roi(const cv::Mat& u8, int out_w, int out_h, const cv::Rect& roi) {
  BB_CHECK(u8.depth() == CV_8U && !u8.empty(), "pil_resize_bilinear expects a non-empty 8-bit image");
  BB_CHECK(out_w > 0 && out_h > 0 && roi.x >= 0 && roi.y >= 0 && roi.width > 0 && roi.height > 0 &&
               roi.x + roi.width <= out_w && roi.y + roi.height <= out_h,
           "resize region ", roi, " lies outside the ", out_w, "x", out_h, " output");
  const int ch = u8.channels();
  const bool need_h = out_w != u8.cols, need_v = out_h != u8.rows;

  // The vertical taps say which input rows the horizontal pass must produce (as Pillow does).
  Coeffs vc;
  int row_lo = roi.y, row_hi = roi.y + roi.height;
  if (need_v) {
    vc = precompute(u8.rows, out_h, roi.y, roi.height);
    row_lo = u8.rows;
    row_hi = 0;
    for (int j = 0; j < roi.height; ++j) {
      row_lo = std::min(row_lo, vc.lo[j]);
      row_hi = std::max(row_hi, vc.lo[j] + vc.n[j]);
    }
  }
  cv::Mat h;
  if (need_h) {
    Coeffs hc = precompute(u8.cols, out_w, roi.x, roi.width);
    h.create(row_hi - row_lo, roi.width, u8.type());
    if (ch == 3)
      horizontal<3>(u8, row_lo, row_hi - row_lo, hc, ch, h);
    else
      horizontal<0>(u8, row_lo, row_hi - row_lo, hc, ch, h);
  } else {
    h = u8(cv::Rect(roi.x, row_lo, roi.width, row_hi - row_lo));
  }
  if (!need_v) return need_h ? h : h.clone();

  const int rowlen = roi.width * ch;
  cv::Mat out(roi.height, roi.width, u8.type());
  std::vector<int32_t> acc(rowlen);
  for (int j = 0; j < roi.height; ++j) {
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    const int32_t* k = &vc.k[(size_t)j * vc.ksize];
    for (int y = 0; y < vc.n[j]; ++y) {
      const uint8_t* src = h.ptr<uint8_t>(vc.lo[j] + y - row_lo);
      const int32_t ky = k[y];
      for (int i = 0; i < rowlen; ++i) acc[i] += src[i] * ky;
    }
    uint8_t* dst = out.ptr<uint8_t>(j);
    for (int i = 0; i < rowlen; ++i) dst[i] = clip8(acc[i]);
  }
  return out;
}

cv::Mat pil_resize_bilinear(const cv::Mat& u8, int out_w, int out_h) {
  return pil_resize_bilinear_roi(u8, out_w, out_h, cv::Rect(0, 0, out_w, out_h));
}

cv::Rect center_crop_rect(int w, int h, int crop) {
  // Python's round() is round-half-even, as std::nearbyint in the default rounding mode.
  const int top = (int)std::nearbyint((h - crop) / 2.0);
  const int left = (int)std::nearbyint((w - crop) / 2.0);
  return cv::Rect(left, top, crop, crop);
}

cv::Mat decode_image_rgb(const std::string& path) {
  cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  BB_CHECK(!bgr.empty(), "cannot read or decode image '", path, "'");
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

torch::Tensor preprocess_rgb(const cv::Mat& u8, const Preprocess& p) {
  BB_CHECK(u8.depth() == CV_8U && !u8.empty(), "preprocessing expects a non-empty 8-bit image");
  cv::Mat img = u8;
  if (p.kind == "imagenet") {
    int w = img.cols, h = img.rows;
    if (p.resize > 0) resized_size(img.cols, img.rows, (int)p.resize, &w, &h);
    BB_CHECK(w >= p.crop && h >= p.crop, "crop ", p.crop, " is larger than the ", p.resize > 0 ? "resized " : "", w,
             "x", h, " image");
    const cv::Rect box = center_crop_rect(w, h, (int)p.crop);
    img = p.resize > 0 ? pil_resize_bilinear_roi(img, w, h, box) : img(box).clone();
  } else if (p.kind == "cifar" && p.size > 0) {
    BB_CHECK(img.rows == p.size && img.cols == p.size, "a ", img.cols, "x", img.rows, " image, but the preprocessing "
             "takes ", p.size, "x", p.size, " images only");
  } else if (p.kind == "mnist") {
    img = pil_resize_bilinear(img, 32, 32);
  }
  const int c = img.channels(), H = img.rows, W = img.cols;
  BB_CHECK(c <= 4 && !p.mean.empty() && p.mean.size() == p.std.size(), "bad preprocessing parameters");
  // One lookup per channel and value: the same float32 operations as torchvision's
  // ToTensor (v / 255) then Normalize ((x - mean) / std), so results are bit-identical.
  float lut[4][256];
  for (int i = 0; i < c; ++i) {
    const float m = p.mean[std::min<size_t>(i, p.mean.size() - 1)];
    const float s = p.std[std::min<size_t>(i, p.std.size() - 1)];
    for (int v = 0; v < 256; ++v) lut[i][v] = ((float)v / 255.0f - m) / s;
  }
  torch::Tensor t = torch::empty({c, H, W}, torch::kFloat32);
  float* out = t.data_ptr<float>();
  const size_t plane = (size_t)H * W;
  for (int y = 0; y < H; ++y) {
    const uint8_t* row = img.ptr<uint8_t>(y);
    float* o = out + (size_t)y * W;
    for (int x = 0; x < W; ++x)
      for (int i = 0; i < c; ++i) o[i * plane + x] = lut[i][row[x * c + i]];
  }
  return t;
}

}  // namespace bb
