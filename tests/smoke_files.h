// One .bbz per registered method, compressed with its smoke settings (runner/pipeline.h
// compress_smoke) once per test process and shared by the tests that need a real file of every
// method (golden bytes, hostile records).
#pragma once
#include "coding/bbz.h"
#include "runner/pipeline.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

namespace bbtest {

inline const bb::BbzFile& smoke_file(const std::string& method) {
  static std::map<std::string, bb::BbzFile> files;
  auto it = files.find(method);
  if (it != files.end()) return it->second;
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("bb-smoke-" + method + "-" + std::to_string(getpid()) + ".bbz")).string();
  bb::compress_smoke(method, path);
  bb::BbzFile f = bb::read_bbz(path);
  std::remove(path.c_str());
  return files.emplace(method, std::move(f)).first->second;
}

}  // namespace bbtest
