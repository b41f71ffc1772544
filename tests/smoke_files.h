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

struct SmokeRun {
  bb::BbzFile file;
  bb::CompressOutcome outcome;  // what compress_model reported (rate_target, accounting)
};

inline const SmokeRun& smoke_run(const std::string& method) {
  static std::map<std::string, SmokeRun> runs;
  auto it = runs.find(method);
  if (it != runs.end()) return it->second;
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("bb-smoke-" + method + "-" + std::to_string(getpid()) + ".bbz")).string();
  SmokeRun r;
  r.outcome = bb::compress_smoke(method, path);
  r.file = bb::read_bbz(path);
  std::remove(path.c_str());
  return runs.emplace(method, std::move(r)).first->second;
}

inline const bb::BbzFile& smoke_file(const std::string& method) { return smoke_run(method).file; }

}  // namespace bbtest
