#include "data/loader.h"
#include "common/runtime.h"
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
  const int64_t n = (int64_t)indices.size(), bs = opt.batch_size;
  const int64_t nb = (n + bs - 1) / bs;
  if (nb == 0) return;
  int workers = opt.workers;
  if (workers <= 0)
    workers = (int)env_int_setting("BITBENCH_DECODE_THREADS", 0, 0, 1024);
  // Half the cores: decoding is a small share of the work next to inference, and every decode
  // thread that preempts an intra-op thread stalls the whole OpenMP team at its next barrier
  // (measured on 2 cores, ResNet-56 on the JPEG folder: 1 decode thread 325-370 img/s, 2: 230-300).
  // The consumer thread decodes too, but only while it waits for its batch (the first one, or when
  // decoding is the bottleneck), so it never competes with inference.
  if (workers <= 0) workers = (int)std::max(1u, std::thread::hardware_concurrency() / 2);
  workers = (int)std::min<int64_t>(workers, nb);
  const int64_t window = std::max(opt.prefetch, workers);
  auto batch_len = [&](int64_t b) { return std::min(n, (b + 1) * bs) - b * bs; };

  // Work is claimed one image at a time, in order; images go straight into their batch's tensor.
  struct Slot {
    torch::Tensor images;
    std::vector<int64_t> labels;
    int64_t done = 0;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::map<int64_t, Slot> slots;  // batches with at least one image decoded, not yet consumed
  int64_t next_pos = 0;           // next image position to claim
  int64_t consumed = 0;           // batches handed to fn
  bool stop = false;
  std::exception_ptr error;

  auto fail = [&](std::exception_ptr e) {
    std::lock_guard<std::mutex> lk(mu);
    if (!error) error = e;
    stop = true;
    cv.notify_all();
  };
  // Decodes position p into its batch. A memcpy, never a libtorch op, because on a decode thread a
  // large op would start an OpenMP team of its own and compete with inference.
  auto decode = [&](int64_t p) {
    try {
      const int64_t b = p / bs, j = p % bs;
      torch::Tensor img = ds.image(indices[p], opt.augment, opt.seed).contiguous();
      BB_CHECK(img.scalar_type() == torch::kFloat32, "dataset '", ds.name(), "' returned a non-float image");
      const int64_t label = ds.label(indices[p]);
      float* dst;
      Slot* slot;
      {
        std::lock_guard<std::mutex> lk(mu);
        slot = &slots[b];  // std::map: the node stays put until the consumer erases the full batch
        if (!slot->images.defined()) {
          std::vector<int64_t> shape{batch_len(b)};
          for (int64_t d : img.sizes()) shape.push_back(d);
          slot->images = torch::empty(shape, torch::kFloat32);
          slot->labels.resize(batch_len(b));
        }
        BB_CHECK(img.sizes() == slot->images.sizes().slice(1), "dataset '", ds.name(), "': image ", indices[p],
                 " has shape ", img.sizes(), ", the batch ", slot->images.sizes().slice(1));
        dst = slot->images.data_ptr<float>() + j * img.numel();
      }
      std::memcpy(dst, img.data_ptr<float>(), img.numel() * sizeof(float));
      std::lock_guard<std::mutex> lk(mu);
      slot->labels[j] = label;
      if (++slot->done == batch_len(b)) cv.notify_all();
    } catch (...) {
      fail(std::current_exception());
    }
  };
  auto work = [&] {
    for (;;) {
      int64_t p;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return stop || next_pos >= n || next_pos / bs < consumed + window; });
        if (stop || next_pos >= n) return;
        p = next_pos++;
      }
      decode(p);
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
      const int64_t len = batch_len(b), end = b * bs + len;
      {
        std::unique_lock<std::mutex> lk(mu);
        for (;;) {
          if (error) break;
          auto it = slots.find(b);
          if (it != slots.end() && it->second.done == len) {
            batch.images = std::move(it->second.images);
            batch.labels = torch::tensor(it->second.labels, torch::kInt64);
            slots.erase(it);
            break;
          }
          if (next_pos < end) {  // this batch still has unclaimed images: decode one here
            const int64_t p = next_pos++;
            lk.unlock();
            decode(p);
            lk.lock();
            continue;
          }
          cv.wait(lk);
        }
        if (error) break;
      }
      batch.indices.assign(indices.begin() + b * bs, indices.begin() + end);
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
