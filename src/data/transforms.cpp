#include "data/transforms.h"
#include "common/error.h"

#include <cmath>

namespace bb {

Preprocess Preprocess::cifar() {
  return Preprocess{"cifar", {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};
}
Preprocess Preprocess::imagenet() {
  return Preprocess{"imagenet", {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}, 256, 224};
}
Preprocess Preprocess::mnist() { return Preprocess{"mnist", {0.f}, {1.f}}; }

uint64_t mix_seed(uint64_t seed, uint64_t index) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

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

constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coeffs {
  int ksize;
  std::vector<int> bounds;  // per output: xmin, count
  std::vector<int32_t> k;   // per output: ksize fixed-point weights
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter.
Coeffs precompute(int in_size, int out_size) {
  const double scale = (double)in_size / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  Coeffs c;
  c.ksize = (int)std::ceil(support) * 2 + 1;
  c.bounds.resize(out_size * 2);
  c.k.assign((size_t)out_size * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
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
      c.k[(size_t)xx * c.ksize + x] =
          (int32_t)(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
    }
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int64_t v) {
  v >>= kPrecisionBits;
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

cv::Mat resample_horizontal(const cv::Mat& in, int out_w) {
  const int ch = in.channels();
  Coeffs c = precompute(in.cols, out_w);
  cv::Mat out(in.rows, out_w, in.type());
  for (int y = 0; y < in.rows; ++y) {
    const uint8_t* src = in.ptr<uint8_t>(y);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int xx = 0; xx < out_w; ++xx) {
      const int xmin = c.bounds[xx * 2], xmax = c.bounds[xx * 2 + 1];
      const int32_t* k = &c.k[(size_t)xx * c.ksize];
      for (int b = 0; b < ch; ++b) {
        int64_t ss = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < xmax; ++x) ss += (int64_t)src[(x + xmin) * ch + b] * k[x];
        dst[xx * ch + b] = clip8(ss);
      }
    }
  }
  return out;
}

cv::Mat resample_vertical(const cv::Mat& in, int out_h) {
  const int ch = in.channels();
  const int rowlen = in.cols * ch;
  Coeffs c = precompute(in.rows, out_h);
  cv::Mat out(out_h, in.cols, in.type());
  for (int yy = 0; yy < out_h; ++yy) {
    const int ymin = c.bounds[yy * 2], ymax = c.bounds[yy * 2 + 1];
    const int32_t* k = &c.k[(size_t)yy * c.ksize];
    uint8_t* dst = out.ptr<uint8_t>(yy);
    for (int i = 0; i < rowlen; ++i) {
      int64_t ss = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < ymax; ++y) ss += (int64_t)in.ptr<uint8_t>(y + ymin)[i] * k[y];
      dst[i] = clip8(ss);
    }
  }
  return out;
}

}  // namespace

cv::Mat pil_resize_bilinear(const cv::Mat& u8, int out_w, int out_h) {
  BB_CHECK(u8.depth() == CV_8U, "pil_resize_bilinear expects an 8-bit image");
  cv::Mat img = u8.isContinuous() ? u8 : u8.clone();
  if (out_w != img.cols) img = resample_horizontal(img, out_w);
  if (out_h != img.rows) img = resample_vertical(img, out_h);
  return img;
}

torch::Tensor preprocess_rgb(const cv::Mat& rgb_u8, const Preprocess& p) {
  cv::Mat img = rgb_u8;
  if (p.kind == "imagenet") {
    int w, h;
    resized_size(img.cols, img.rows, (int)p.resize, &w, &h);
    img = pil_resize_bilinear(img, w, h);
    // torchvision CenterCrop: offsets int(round((size - crop) / 2)), Python's round-half-even.
    const int crop = (int)p.crop;
    BB_CHECK(img.cols >= crop && img.rows >= crop, "image smaller than the crop after resizing");
    int top = (int)std::nearbyint((img.rows - crop) / 2.0);
    int left = (int)std::nearbyint((img.cols - crop) / 2.0);
    img = img(cv::Rect(left, top, crop, crop)).clone();
  } else if (p.kind == "mnist") {
    img = pil_resize_bilinear(img, 32, 32);
  }
  if (!img.isContinuous()) img = img.clone();
  const int c = img.channels();
  auto t = torch::from_blob(img.data, {img.rows, img.cols, c}, torch::kUInt8)
               .permute({2, 0, 1})
               .to(torch::kFloat32)
               .div_(255.0f);
  for (int i = 0; i < c; ++i) {
    float m = p.mean[std::min<size_t>(i, p.mean.size() - 1)];
    float s = p.std[std::min<size_t>(i, p.std.size() - 1)];
    t[i].sub_(m).div_(s);
  }
  return t.contiguous();
}

}  // namespace bb
