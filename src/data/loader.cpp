#include "data/loader.h"
#include "common/error.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

namespace bb {

Batch load_batch(const Dataset& ds, const std::vector<int64_t>& indices, bool augment, uint64_t seed) {
  Batch b;
  b.indices = indices;
  std::vector<int64_t> labels(indices.size());
  // Each image is copied straight into the batch tensor: a memcpy, never a libtorch op, because
  // on a decode thread a large op would start an OpenMP team of its own and compete with inference.
  for (size_t j = 0; j < indices.size(); ++j) {
    torch::Tensor img = ds.image(indices[j], augment, seed).contiguous();
    BB_CHECK(img.scalar_type() == torch::kFloat32, "dataset '", ds.name(), "' returned a non-float image");
    if (j == 0) {
      std::vector<int64_t> shape{(int64_t)indices.size()};
      for (int64_t d : img.sizes()) shape.push_back(d);
      b.images = torch::empty(shape, torch::kFloat32);
    }
    BB_CHECK(img.sizes() == b.images.sizes().slice(1), "dataset '", ds.name(), "': image ", indices[j], " has shape ",
             img.sizes(), ", the batch ", b.images.sizes().slice(1));
    std::memcpy(b.images.data_ptr<float>() + j * img.numel(), img.data_ptr<float>(), img.numel() * sizeof(float));
    labels[j] = ds.label(indices[j]);
  }
  if (indices.empty()) b.images = torch::empty({0});
  b.labels = torch::tensor(labels, torch::kInt64);
  return b;
}

void for_each_batch(const Dataset& ds, const std::vector<int64_t>& indices, const LoaderOptions& opt,
                    const std::function<void(const Batch&)>& fn) {
  BB_CHECK(opt.batch_size > 0, "batch size must be positive");
  const int64_t n = (int64_t)indices.size();
  const int64_t nb = (n + opt.batch_size - 1) / opt.batch_size;
  if (nb == 0) return;
  int workers = opt.workers;
  if (workers <= 0)
    if (const char* e = std::getenv("BITBENCH_DECODE_THREADS"); e && *e) workers = std::atoi(e);
  // Half the cores: decoding is a small share of the work next to inference, and every decode
  // thread that preempts an intra-op thread stalls the whole OpenMP team at its next barrier
  // (measured on 2 cores, ResNet-56 on the JPEG folder: 1 decode thread 325-370 img/s, 2: 230-300).
  if (workers <= 0) workers = (int)std::max(1u, std::thread::hardware_concurrency() / 2);
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
