// A dataset of random N(0, 1) images (label i % 10) for benchmarks: the cost of what they time
// does not depend on the pixel values.
#pragma once
#include "data/dataset.h"

#include <string>

namespace bbbench {

class RandomImages : public bb::Dataset {
 public:
  RandomImages(int64_t n, int64_t hw, const std::string& family) : n_(n), hw_(hw) {
    name_ = "bench-random-images";
    family_ = family;
  }
  int64_t size() const override { return n_; }
  int64_t label(int64_t i) const override { return i % 10; }
  torch::Tensor image(int64_t i, bool, uint64_t) const override {
    auto g = at::detail::createCPUGenerator(100 + i);
    return torch::randn({3, hw_, hw_}, g);
  }
  std::string identity() const override { return name_ + "-" + std::to_string(n_) + "x" + std::to_string(hw_); }

 private:
  int64_t n_, hw_;
};

}  // namespace bbbench
