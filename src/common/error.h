// User-facing errors in the faiss style: the failed condition plus a message that names the
// file/key/layer at fault. Everything the CLI cannot recover from is a bb::Error; main() prints
// it and exits non-zero, so bad input never crashes.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace bb {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace bb

// Throws bb::Error("msg") .
#define BB_THROW(...) throw ::bb::Error(::bb::detail::concat(__VA_ARGS__))
// Throws bb::Error when cond is false; the message carries the condition text.
#define BB_CHECK(cond, ...)                                                              \
  do {                                                                                   \
    if (!(cond)) throw ::bb::Error(::bb::detail::concat(__VA_ARGS__, " [failed: " #cond "]")); \
  } while (0)
