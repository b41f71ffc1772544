// A CPU allocator for libtorch that asks for transparent huge pages on large blocks.
//
// Why: glibc serves blocks above 32 MiB with a fresh mmap and returns them on free, so every
// large temporary (a batch's activations, a GEMM's output) is faulted in again 4 KiB at a time.
// On these VMs a page fault is expensive: perf on the Hessian pass of ResNet-18 showed ~30% of
// the time in the kernel's page-fault path. With THP in "madvise" mode (the Debian default), a
// block that is madvise(MADV_HUGEPAGE)d faults in 2 MiB at a time. Measured: the Hessian phase
// of `compress --method hessian_kmeans` on ResNet-18 went 47.4 s -> 17.7 s with glibc's own
// equivalent (GLIBC_TUNABLES=glibc.malloc.hugetlb=1), which we cannot set from inside the process.
//
// Blocks come from posix_memalign and go back through free(), exactly like c10's default CPU
// allocator (so raw_deleter is free and data == context); only the alignment of large blocks
// (2 MiB, so whole huge pages fit) and the madvise differ.
#include "common/runtime.h"

#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <new>
#include <sys/mman.h>

namespace bb {
namespace {

constexpr size_t kHuge = size_t(2) << 20;          // x86-64 huge page
constexpr size_t kLargeBlock = size_t(4) << 20;     // below this, plain 64-byte-aligned blocks
constexpr size_t kSmallAlign = 64;                  // c10's default alignment

void free_block(void* p) { std::free(p); }

class HugePageCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) const override {
    void* p = nullptr;
    if (n == 0) return {nullptr, nullptr, &free_block, c10::Device(c10::DeviceType::CPU)};
    if (n >= kLargeBlock) {
      const size_t size = (n + kHuge - 1) / kHuge * kHuge;
      if (posix_memalign(&p, kHuge, size) != 0) throw std::bad_alloc();
      madvise(p, size, MADV_HUGEPAGE);  // advice only: a kernel without THP ignores it
    } else {
      if (posix_memalign(&p, kSmallAlign, n) != 0) throw std::bad_alloc();
    }
    return {p, p, &free_block, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_block; }
};

}  // namespace

void install_hugepage_allocator() {
  static HugePageCPUAllocator alloc;
  c10::SetCPUAllocator(&alloc, /*priority=*/1);
}

}  // namespace bb
