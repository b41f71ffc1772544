// User-facing errors in the faiss style: the failed condition plus a message that names the
// file/key/layer at fault. Everything the CLI cannot recover from is a bb::Error; main() prints
// it and exits non-zero, so bad input never crashes.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace bb {

// `s` with every control byte (newline included) and DEL written as \xNN: for names that come
// from files (layers, sections, tensors, models), so a hostile name cannot forge lines or drive
// the terminal.
std::string printable(const std::string& s);
// Messages keep their own newlines and tabs; every other control byte is escaped as above.
std::string sanitize_message(const std::string& msg);

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(sanitize_message(msg)) {}
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
