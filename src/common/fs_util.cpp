#include "common/fs_util.h"
#include "common/error.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <unistd.h>

namespace fs = std::filesystem;

namespace bb {

void write_file_atomic(const std::string& path, const void* data, size_t n) {
  fs::path p(path);
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    BB_CHECK(f.good(), "cannot write '", tmp, "'");
    f.write(static_cast<const char*>(data), (std::streamsize)n);
    f.flush();
    BB_CHECK(f.good(), "short write to '", tmp, "'");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp);
    BB_THROW("cannot rename '", tmp, "' to '", path, "': ", ec.message());
  }
}

std::vector<unsigned char> read_file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  BB_CHECK(f.good(), "cannot open '", path, "'");
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::string read_file_text(const std::string& path) {
  std::ifstream f(path);
  BB_CHECK(f.good(), "cannot open '", path, "'");
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

}  // namespace bb
