// Image preprocessing on OpenCV matrices.
#pragma once
#include "data/dataset.h"

#include <opencv2/core.hpp>

namespace bb {

// Bilinear resize with antialiasing, the algorithm of Pillow's Image.resize(BILINEAR) (what
// torchvision's Resize applies to PIL images): a triangle filter widened by the downscale factor,
// 22-bit fixed-point coefficients, horizontal pass then vertical pass, each rounded to uint8.
// OpenCV's INTER_LINEAR does not antialias and INTER_AREA uses another kernel; both shift top-1.
cv::Mat pil_resize_bilinear(const cv::Mat& u8, int out_w, int out_h);

// torchvision Resize(size) output for an image of w x h: the short side becomes `size`, the long
// side int(size * long / short).
void resized_size(int w, int h, int size, int* out_w, int* out_h);

// Decoded 8-bit RGB (or grey for mnist) image -> normalised CHW float tensor.
torch::Tensor preprocess_rgb(const cv::Mat& rgb_u8, const Preprocess& p);

// Deterministic per-(seed, index) random generator for augmentation.
uint64_t mix_seed(uint64_t seed, uint64_t index);

}  // namespace bb
