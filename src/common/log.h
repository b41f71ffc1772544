// Progress and diagnostics go to stderr so stdout stays clean for --json output.
#pragma once
#include <string>

namespace bb {
enum class LogLevel { quiet = 0, info = 1, debug = 2 };
void set_log_level(LogLevel l);
LogLevel log_level();
void log_info(const std::string& msg);
void log_warn(const std::string& msg);
void log_debug(const std::string& msg);

// Throttled single-line progress ("label: done/total  rate"), printed at most every ~1 s.
class Progress {
 public:
  Progress(std::string label, long total);
  void advance(long n = 1);
  void finish();
 private:
  std::string label_;
  long total_, done_ = 0;
  double start_, last_ = 0;
};
}  // namespace bb
