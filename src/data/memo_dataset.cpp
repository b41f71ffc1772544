#include "data/memo_dataset.h"
#include "common/runtime.h"

#include "common/error.h"

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>

namespace bb {
namespace {

int64_t memo_budget_bytes() {
  static const int64_t budget = [] {
    return env_int_setting("BITBENCH_IMAGE_MEMO_MB", 1536, 0, int64_t(1) << 24) << 20;
  }();
  return budget;
}
std::atomic<int64_t> g_memo_bytes{0};

class MemoDataset : public Dataset {
 public:
  explicit MemoDataset(std::shared_ptr<Dataset> base)
      : base_(std::move(base)), slots_((size_t)base_->size()) {
    name_ = base_->name();
    family_ = base_->family();
    num_classes_ = base_->num_classes();
  }
  int64_t size() const override { return base_->size(); }
  int64_t label(int64_t i) const override { return base_->label(i); }
  std::string image_path(int64_t i) const override { return base_->image_path(i); }
  std::string identity() const override { return base_->identity(); }
  torch::Tensor image(int64_t i, bool augment, uint64_t seed) const override {
    if (augment || i < 0 || i >= (int64_t)slots_.size()) return base_->image(i, augment, seed);
    std::mutex& m = locks_[(size_t)i % kStripes];
    {
      std::lock_guard<std::mutex> g(m);
      if (slots_[(size_t)i].defined()) return slots_[(size_t)i];
    }
    torch::Tensor img = base_->image(i, false, seed).contiguous();
    const int64_t bytes = (int64_t)(img.numel() * img.element_size());
    if (g_memo_bytes.fetch_add(bytes) + bytes <= memo_budget_bytes()) {
      std::lock_guard<std::mutex> g(m);
      if (!slots_[(size_t)i].defined()) slots_[(size_t)i] = img;
      else g_memo_bytes.fetch_sub(bytes);
    } else {
      g_memo_bytes.fetch_sub(bytes);
    }
    return img;
  }

 private:
  static constexpr size_t kStripes = 64;
  std::shared_ptr<Dataset> base_;
  mutable std::vector<torch::Tensor> slots_;
  mutable std::mutex locks_[kStripes];
};

}  // namespace

std::shared_ptr<Dataset> open_dataset_memoized(const std::string& name, const std::string& root_override) {
  if (memo_budget_bytes() == 0) return open_dataset(name, root_override);
  static std::mutex m;
  static std::map<std::pair<std::string, std::string>, std::shared_ptr<Dataset>> open;
  std::lock_guard<std::mutex> g(m);
  auto key = std::make_pair(name, root_override);
  auto it = open.find(key);
  if (it != open.end()) return it->second;
  auto ds = std::make_shared<MemoDataset>(open_dataset(name, root_override));
  open[key] = ds;
  return ds;
}

}  // namespace bb
