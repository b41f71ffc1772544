#pragma once
#include <chrono>
#include <ctime>

namespace bb {
inline double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}
// CPU time this process has used so far (user + system, all its threads). Unlike wall time it does
// not grow while the process is stopped (SIGSTOP) or waiting for a core another job holds; OpenMP
// threads spin-waiting beside another job do add to it (docs/PERFORMANCE.md, "Waiting threads").
inline double process_cpu_seconds() {
  timespec ts{};
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
// Peak resident set size of this process in bytes (from /proc/self/status VmHWM).
long peak_rss_bytes();
}  // namespace bb
