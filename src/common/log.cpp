#include "common/log.h"
#include "common/timer.h"
#include <cstdio>
#include <unistd.h>

namespace bb {
namespace {
LogLevel g_level = LogLevel::info;
}
void set_log_level(LogLevel l) { g_level = l; }
LogLevel log_level() { return g_level; }
void log_info(const std::string& msg) {
  if (g_level >= LogLevel::info) std::fprintf(stderr, "[bitbench] %s\n", msg.c_str());
}
void log_warn(const std::string& msg) { std::fprintf(stderr, "[bitbench] WARNING: %s\n", msg.c_str()); }
void log_debug(const std::string& msg) {
  if (g_level >= LogLevel::debug) std::fprintf(stderr, "[bitbench] %s\n", msg.c_str());
}

Progress::Progress(std::string label, long total) : label_(std::move(label)), total_(total), start_(now_seconds()) {}
void Progress::advance(long n) {
  done_ += n;
  double t = now_seconds();
  if (g_level >= LogLevel::info && t - last_ >= 1.0) {
    last_ = t;
    std::fprintf(stderr, "\r[bitbench] %s: %ld/%ld (%.1f/s)   ", label_.c_str(), done_, total_,
                 done_ / std::max(1e-9, t - start_));
    std::fflush(stderr);
  }
}
void Progress::finish() {
  if (g_level >= LogLevel::info && last_ > 0) {
    double t = now_seconds();
    std::fprintf(stderr, "\r[bitbench] %s: %ld/%ld done in %.1f s          \n", label_.c_str(), done_,
                 total_, t - start_);
  }
}
}  // namespace bb
