// Image decoding and preprocessing on OpenCV matrices, reproducing torchvision + PIL bit for bit
// (tests/test_data.cpp measures it against them).
#pragma once
#include "common/hash.h"
#include "data/dataset.h"

#include <opencv2/core.hpp>

#include <string>

namespace bb {

// Decodes an image file to 8-bit RGB the way torchvision's default loader does
// (PIL Image.open(path).convert("RGB")): greyscale replicated to three channels, EXIF orientation
// ignored (PIL does not apply it; OpenCV would by default). Throws bb::Error naming the file.
cv::Mat decode_image_rgb(const std::string& path);

// Bilinear resize with antialiasing, the algorithm of Pillow's Image.resize(BILINEAR) (what
// torchvision's Resize applies to PIL images): a triangle filter widened by the downscale factor,
// 22-bit fixed-point coefficients, horizontal pass then vertical pass, each rounded to uint8.
// OpenCV's INTER_LINEAR does not antialias and INTER_AREA uses another kernel; both shift top-1.
cv::Mat pil_resize_bilinear(const cv::Mat& u8, int out_w, int out_h);

// The `roi` part of pil_resize_bilinear(u8, out_w, out_h), computing only the pixels inside it
// (Resize + CenterCrop without resampling what the crop throws away); identical values.
cv::Mat pil_resize_bilinear_roi(const cv::Mat& u8, int out_w, int out_h, const cv::Rect& roi);

// torchvision Resize(size) output for an image of w x h: the short side becomes `size`, the long
// side int(size * long / short).
void resized_size(int w, int h, int size, int* out_w, int* out_h);

// torchvision CenterCrop(crop) window in a w x h image: offsets int(round((w - crop) / 2)).
cv::Rect center_crop_rect(int w, int h, int crop);

// Decoded 8-bit RGB (or grey for mnist) image -> normalised CHW float tensor: the geometry of
// p.kind, then ToTensor + Normalize ((v / 255 - mean) / std in float32, as torchvision computes it).
torch::Tensor preprocess_rgb(const cv::Mat& rgb_u8, const Preprocess& p);

// Per-(seed, index) generator seeds for augmentation and sampling: mix_seed (common/hash.h).

}  // namespace bb
