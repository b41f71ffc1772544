#include "common/error.h"

namespace bb {
namespace {

std::string escape(const std::string& s, bool keep_lines) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    const bool control = c < 0x20 || c == 0x7f;
    if (!control || (keep_lines && (c == '\n' || c == '\t'))) {
      out += (char)c;
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

}  // namespace

std::string printable(const std::string& s) { return escape(s, false); }
std::string sanitize_message(const std::string& msg) { return escape(msg, true); }

}  // namespace bb
