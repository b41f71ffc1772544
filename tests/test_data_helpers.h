// Helpers shared by the [data], [models] and [cli] tests: temp folders, running a command with
// its output captured, the PyTorch oracle (/usr/bin/python3 with torch + torchvision), and the
// built bitbench binary.
#pragma once
#include "common/runtime.h"
#include "common/error.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace bbtest {

namespace fs = std::filesystem;

// A fresh folder under $TMPDIR (or /tmp), removed with everything in it on destruction.
struct TempDir {
  fs::path path;
  TempDir() {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/bitbench_test_XXXXXX";
    if (!mkdtemp(tmpl.data())) throw bb::Error("cannot create a temp folder from " + tmpl);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  std::string str() const { return path.string(); }
};

// Writes `text` to dir/name and returns that path.
inline std::string write_file(const std::string& dir, const std::string& name, const std::string& text) {
  std::string p = dir + "/" + name;
  std::ofstream f(p, std::ios::binary);
  f << text;
  if (!f) throw bb::Error("cannot write '" + p + "'");
  return p;
}

// The message of the bb::Error that f throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const bb::Error& e) {
    return e.what();
  }
  return "";
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f) throw bb::Error("cannot write '" + path + "'");
}

// Single-quoted for /bin/sh.
inline std::string sh_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct Proc {
  int status = -1;      // exit status (0..255), or -1 if the process did not exit normally
  int signal = 0;       // terminating signal, if it was killed (a crash)
  std::string out, err;
};

// Runs a /bin/sh command line with stdout and stderr captured.
inline Proc run_cmd(const std::string& cmd) {
  TempDir tmp;
  const std::string o = tmp / "stdout", e = tmp / "stderr";
  const int rc = std::system((cmd + " >" + sh_quote(o) + " 2>" + sh_quote(e)).c_str());
  Proc p;
  if (rc != -1 && WIFEXITED(rc)) p.status = WEXITSTATUS(rc);
  if (rc != -1 && WIFSIGNALED(rc)) p.signal = WTERMSIG(rc);
  p.out = slurp(o);
  p.err = slurp(e);
  // A shell reports a child killed by signal N as exit status 128 + N.
  if (p.status > 128 && p.status < 160) p.signal = p.status - 128;
  return p;
}

inline const char* python() { return "/usr/bin/python3"; }

// True when the oracle interpreter imports all of `modules` (e.g. "torch, torchvision").
// Cached: importing torch takes a second or two.
inline bool python_has(const std::string& modules) {
  static std::map<std::string, bool> known;
  auto it = known.find(modules);
  if (it != known.end()) return it->second;
  Proc p = run_cmd(std::string(python()) + " -c " + sh_quote("import " + modules));
  return known[modules] = p.status == 0;
}

inline std::string source_path(const std::string& rel) { return bb::source_dir() + "/" + rel; }

// Runs scripts/oracle/<script> (or another scripts/ path) with /usr/bin/python3.
inline Proc run_python(const std::string& script, const std::string& args) {
  return run_cmd(std::string(python()) + " " + sh_quote(source_path(script)) + " " + args);
}

// The bitbench executable of this build.
inline std::string bitbench_binary() {
  return bb::binary_dir() + "/bitbench";
}

}  // namespace bbtest

// Skips the rest of a test case, visibly, when the PyTorch oracle is missing.
#define BB_REQUIRE_ORACLE(modules)                                                                 \
  do {                                                                                             \
    if (!bbtest::python_has(modules)) {                                                            \
      WARN("SKIPPED: /usr/bin/python3 cannot import " << modules << "; this oracle test did not run"); \
      return;                                                                                      \
    }                                                                                              \
  } while (0)
