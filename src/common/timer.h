#pragma once
#include <chrono>

namespace bb {
inline double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}
// Peak resident set size of this process in bytes (from /proc/self/status VmHWM).
long peak_rss_bytes();
}  // namespace bb
