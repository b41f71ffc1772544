#include "data/loader.h"
#include "common/error.h"

#include <atomic>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

namespace bb {

Batch load_batch(const Dataset& ds, const std::vector<int64_t>& indices, bool augment, uint64_t seed) {
  Batch b;
  b.indices = indices;
  std::vector<torch::Tensor> imgs;
  imgs.reserve(indices.size());
  std::vector<int64_t> labels;
  for (int64_t i : indices) {
    imgs.push_back(ds.image(i, augment, seed));
    labels.push_back(ds.label(i));
  }
  b.images = imgs.empty() ? torch::empty({0}) : torch::stack(imgs);
  b.labels = torch::tensor(labels, torch::kInt64);
  return b;
}

void for_each_batch(const Dataset& ds, const std::vector<int64_t>& indices, const LoaderOptions& opt,
                    const std::function<void(const Batch&)>& fn) {
  BB_CHECK(opt.batch_size > 0, "batch size must be positive");
  const int64_t n = (int64_t)indices.size();
  const int64_t nb = (n + opt.batch_size - 1) / opt.batch_size;
  if (nb == 0) return;
  int workers = opt.workers > 0 ? opt.workers : (int)std::max(1u, std::thread::hardware_concurrency());
  workers = (int)std::min<int64_t>(workers, nb);
  const int64_t window = std::max(opt.prefetch, workers);

  std::mutex mu;
  std::condition_variable cv;
  std::map<int64_t, Batch> ready;
  std::atomic<int64_t> next{0};
  int64_t consumed = 0;
  bool stop = false;
  std::exception_ptr error;

  auto work = [&] {
    try {
      for (;;) {
        int64_t b = next.fetch_add(1);
        if (b >= nb) return;
        {
          std::unique_lock<std::mutex> lk(mu);
          cv.wait(lk, [&] { return stop || b < consumed + window; });
          if (stop) return;
        }
        std::vector<int64_t> idx(indices.begin() + b * opt.batch_size,
                                 indices.begin() + std::min(n, (b + 1) * opt.batch_size));
        Batch batch = load_batch(ds, idx, opt.augment, opt.seed);
        std::lock_guard<std::mutex> lk(mu);
        ready.emplace(b, std::move(batch));
        cv.notify_all();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu);
      if (!error) error = std::current_exception();
      stop = true;
      cv.notify_all();
    }
  };
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w) pool.emplace_back(work);

  auto finish = [&] {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
      cv.notify_all();
    }
    for (auto& t : pool) t.join();
  };
  try {
    for (int64_t b = 0; b < nb; ++b) {
      Batch batch;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return error || ready.count(b); });
        if (error) break;
        batch = std::move(ready[b]);
        ready.erase(b);
      }
      fn(batch);
      std::lock_guard<std::mutex> lk(mu);
      consumed = b + 1;
      cv.notify_all();
    }
  } catch (...) {
    finish();
    throw;
  }
  finish();
  if (error) std::rethrow_exception(error);
}

}  // namespace bb
