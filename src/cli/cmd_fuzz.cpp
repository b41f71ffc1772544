// bitbench fuzz-bbz [FILES.bbz...] [--mutants N] [--seed S] [--timeout-s T] [--json OUT]
//
// Mutation fuzzing of the whole decode path (parse_bbz -> decode_bbz -> every method's decoder).
// Without files, one valid file per registered method is made first (methods/smoke.h settings on
// cifar_resnet20). Each mutant is one source file with one mutation (truncation, bit flips, a
// byte run overwritten, bytes inserted or deleted, a huge varint written, a splice from another
// file), left raw (the container's size/CRC checks see it) or resealed with a valid size and
// CRC-32 (the record and symbol-stream decoders see it).
//
// Mutants are decoded in child processes, a batch per child, so that a crash or a hang is caught
// and counted (and the run goes on with the next mutant); a mutant that runs past --timeout-s is
// a hang. Peak memory: each child resets its high-water mark at start (/proc/self/clear_refs) and
// reports how far VmHWM rose above its starting RSS; the same measure is taken for a child
// decoding the valid files, and the report gives the ratio. Exit status 1 when any crash, hang, non-bitbench exception or a
// memory ratio above --max-memory-ratio (default 4) was seen.
#include "cli/args.h"
#include "coding/bbz.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/log.h"
#include "methods/external.h"
#include "methods/method.h"
#include "runner/pipeline.h"

#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

namespace fs = std::filesystem;

namespace bb {
namespace {

constexpr int kModes = 7;
const char* kModeNames[kModes] = {"truncate", "bit_flips", "overwrite_run", "insert", "delete", "huge_varint", "splice"};

struct Source {
  std::string name;  // method or file name
  std::vector<uint8_t> bytes;
};

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  BB_CHECK(f, "cannot read '", path, "'");
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void reseal(std::vector<uint8_t>& b) {
  if (b.size() < 20) return;
  const uint64_t n = b.size();
  std::memcpy(b.data() + 8, &n, 8);
  const uint32_t crc = crc32(b.data(), b.size() - 4);
  std::memcpy(b.data() + b.size() - 4, &crc, 4);
}

// Mutant i is a pure function of (seed, i): a crash can be replayed from the report alone.
std::vector<uint8_t> make_mutant(const std::vector<Source>& src, uint64_t seed, int64_t i, int* mode_out,
                                 bool* sealed_out, size_t* source_out) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + (uint64_t)i);
  const size_t si = (size_t)(rng() % src.size());
  std::vector<uint8_t> b = src[si].bytes;
  const int mode = (int)(rng() % kModes);
  const bool sealed = (rng() & 1) != 0;
  auto pos = [&](size_t n) { return n == 0 ? (size_t)0 : (size_t)(rng() % n); };
  switch (mode) {
    case 0:
      b.resize(pos(b.size()));
      break;
    case 1: {
      const int flips = 1 + (int)(rng() % 8);
      for (int k = 0; k < flips && !b.empty(); ++k) b[pos(b.size())] ^= (uint8_t)(1u << (rng() % 8));
      break;
    }
    case 2: {
      const size_t at = pos(b.size()), len = 1 + rng() % 16;
      const int fill = (int)(rng() % 3);
      for (size_t k = at; k < std::min(b.size(), at + len); ++k)
        b[k] = fill == 0 ? 0x00 : fill == 1 ? 0xff : (uint8_t)rng();
      break;
    }
    case 3: {
      const size_t at = pos(b.size() + 1), len = 1 + rng() % 16;
      std::vector<uint8_t> ins(len);
      for (auto& x : ins) x = (uint8_t)rng();
      b.insert(b.begin() + (ptrdiff_t)at, ins.begin(), ins.end());
      break;
    }
    case 4: {
      const size_t at = pos(b.size()), len = std::min(b.size() - at, (size_t)(1 + rng() % 16));
      b.erase(b.begin() + (ptrdiff_t)at, b.begin() + (ptrdiff_t)(at + len));
      break;
    }
    case 5: {  // a varint claiming ~2^28..2^63 written over whatever was there (counts, lengths)
      const size_t at = pos(b.size());
      const int groups = 4 + (int)(rng() % 6);
      for (int k = 0; k < groups && at + k < b.size(); ++k) b[at + k] = k + 1 < groups ? 0xff : 0x0f;
      break;
    }
    default: {  // splice: a range of another (or the same) file copied over this one
      const auto& o = src[(size_t)(rng() % src.size())].bytes;
      const size_t from = pos(o.size()), at = pos(b.size());
      const size_t len = std::min({o.size() - from, b.size() - at, (size_t)(1 + rng() % 256)});
      std::memcpy(b.data() + at, o.data() + from, len);
      break;
    }
  }
  if (sealed) reseal(b);
  *mode_out = mode;
  *sealed_out = sealed;
  *source_out = si;
  return b;
}

// Shared between the parent and its current child (MAP_SHARED, anonymous).
struct Shared {
  volatile int64_t current;       // mutant being decoded (-1: none yet)
  volatile int64_t started_ns;    // when it started (steady clock)
  volatile int64_t done;          // mutants finished by this child
  volatile int64_t accepted[kModes][2], rejected[kModes][2], foreign[kModes][2];
  volatile int64_t max_decode_ns;
  volatile int64_t hwm_kb;        // VmHWM at the end of the child's work (after the reset) minus the RSS at its start
  volatile int64_t start_rss_kb;
  char foreign_what[512];         // first non-bitbench exception message
};

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::strlen(key));
  return -1;
}

void reset_hwm() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
}

// Decodes one file image the way `bitbench decompress` does; true if it decoded.
// Parses and decodes one file image; throws what the decoder throws.
void decode_image(const std::vector<uint8_t>& b) {
  BbzFile f = parse_bbz(b.data(), b.size(), "mutant.bbz");
  (void)decode_bbz(f, "mutant.bbz");
}

struct Totals {
  int64_t accepted[kModes][2] = {}, rejected[kModes][2] = {}, foreign[kModes][2] = {};
  std::vector<nlohmann::json> crashes, hangs;
  int64_t max_hwm_kb = 0, max_decode_ns = 0, children = 0;
  std::string foreign_what;
};

}  // namespace

int cmd_fuzz_bbz(int argc, char** argv) {
  Args a("fuzz-bbz", {{"--mutants", true, "", false, "number of mutated files (default 10000)"},
                      {"--seed", true, "", false, "mutation seed (default 1)"},
                      {"--batch", true, "", false, "mutants per child process (default 500)"},
                      {"--timeout-s", true, "", false, "a mutant decoding longer than this is a hang (default 20)"},
                      {"--max-memory-ratio", true, "", false,
                       "fail when a child's peak memory exceeds this multiple of the valid decode's (default 4)"},
                      {"--json", true, "", false, "write the report here (JSON)"},
                      {"--inject-crash-at", true, "", false, "harness self-test: mutant N crashes (SIGSEGV)"},
                      {"--inject-hang-at", true, "", false, "harness self-test: mutant N hangs"},
                      {"--help", false, "", false, "this help"}});
  a.parse(argc, argv);
  if (a.has("--help")) {
    std::printf("usage: bitbench fuzz-bbz [FILES.bbz...] [flags]\n"
                "Mutation fuzzing of the decoder; without files, one smoke-compressed cifar_resnet20 file per\n"
                "registered method is made first. Exit 1 on any crash, hang or memory blow-up.\n%s",
                a.usage().c_str());
    return 0;
  }
  const int64_t n_mutants = a.get_int("--mutants", 10000);
  const uint64_t seed = (uint64_t)a.get_int("--seed", 1);
  const int64_t batch = a.get_int("--batch", 500);
  const double timeout_s = std::stod(a.get("--timeout-s", "20"));
  const double max_ratio = std::stod(a.get("--max-memory-ratio", "4"));
  BB_CHECK(n_mutants >= 1 && batch >= 1 && timeout_s > 0 && max_ratio > 0, "fuzz-bbz: --mutants, --batch, "
           "--timeout-s and --max-memory-ratio must be positive");
  const int64_t crash_at = a.get_int("--inject-crash-at", -1), hang_at = a.get_int("--inject-hang-at", -1);
  const double t_start = now_ns() * 1e-9;

  // Sources. Generating them runs libtorch in a child, so that this process forks children that
  // have never inherited a running thread pool.
  std::vector<Source> sources;
  std::string tmpdir;
  if (a.positional().empty()) {
    char tmpl[] = "/tmp/bb-fuzz-XXXXXX";
    BB_CHECK(mkdtemp(tmpl), "fuzz-bbz: cannot create a temp folder");
    tmpdir = tmpl;
    std::vector<std::string> methods;
    for (const auto& m : method_names())
      if (m.rfind("test_", 0) != 0) methods.push_back(m);
    fflush(nullptr);
    const pid_t pid = fork();
    BB_CHECK(pid >= 0, "fuzz-bbz: fork failed");
    if (pid == 0) {
      int rc = 0;
      try {
        for (const auto& m : methods) compress_smoke(m, tmpdir + "/" + m + ".bbz");
      } catch (const std::exception& e) {
        std::fprintf(stderr, "fuzz-bbz: making the source files failed: %s\n", e.what());
        rc = 1;
      }
      fflush(nullptr);
      _exit(rc);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    BB_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fuzz-bbz: making the source files failed");
    for (const auto& m : methods) sources.push_back({m, read_all(tmpdir + "/" + m + ".bbz")});
  } else {
    for (const auto& p : a.positional()) sources.push_back({fs::path(p).filename().string(), read_all(p)});
  }

  // A file of the external method runs the decode command stored in it: mutants may run only the
  // valid sources' commands, so a mutated command string is refused, never executed.
  std::vector<std::string> commands;
  for (const auto& s : sources) {
    try {
      const std::string c = external_decode_command(parse_bbz(s.bytes.data(), s.bytes.size(), s.name).provenance);
      if (!c.empty()) commands.push_back(c);
    } catch (const Error&) {
    }
  }
  restrict_external_commands(commands);

  auto* sh = static_cast<Shared*>(mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  BB_CHECK(sh != MAP_FAILED, "fuzz-bbz: mmap failed");

  // Runs [first, last) in a child; returns the index after the last one it finished (a crash or
  // hang stops the child at that index).
  auto run_child = [&](int64_t first, int64_t last, bool valid_only, Totals& tot) -> int64_t {
    std::memset((void*)sh, 0, sizeof(Shared));
    sh->current = -1;
    fflush(nullptr);
    const pid_t pid = fork();
    BB_CHECK(pid >= 0, "fuzz-bbz: fork failed");
    if (pid == 0) {
      torch::set_num_threads(1);
      set_log_level(LogLevel::quiet);
      sh->start_rss_kb = status_kb("VmRSS:");
      reset_hwm();
      if (valid_only) {
        for (const auto& s : sources) {
          try {
            decode_image(s.bytes);
          } catch (const std::exception& e) {
            std::fprintf(stderr, "fuzz-bbz: the valid file '%s' does not decode: %s\n", s.name.c_str(), e.what());
            _exit(2);
          }
        }
      } else {
        for (int64_t i = first; i < last; ++i) {
          int mode;
          bool sealed;
          size_t si;
          std::vector<uint8_t> b = make_mutant(sources, seed, i, &mode, &sealed, &si);
          sh->current = i;
          sh->started_ns = now_ns();
          if (i == crash_at) raise(SIGSEGV);
          if (i == hang_at)
            for (;;) pause();
          try {
            decode_image(b);
            sh->accepted[mode][sealed]++;
          } catch (const Error&) {
            sh->rejected[mode][sealed]++;
          } catch (const std::exception& e) {  // libtorch or std: not a clean bitbench error
            if (!sh->foreign_what[0]) std::snprintf(sh->foreign_what, sizeof sh->foreign_what, "mutant %lld: %s", (long long)i, e.what());
            sh->foreign[mode][sealed]++;
          }
          const int64_t dt = now_ns() - sh->started_ns;
          if (dt > sh->max_decode_ns) sh->max_decode_ns = dt;
          sh->done = i + 1 - first;
        }
      }
      sh->hwm_kb = status_kb("VmHWM:") - sh->start_rss_kb;
      _exit(0);
    }
    ++tot.children;
    int st = 0;
    for (;;) {
      const pid_t r = waitpid(pid, &st, WNOHANG);
      if (r == pid) break;
      const int64_t started = sh->started_ns;
      if (!valid_only && sh->current >= 0 && started > 0 && (now_ns() - started) * 1e-9 > timeout_s) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        tot.hangs.push_back({{"mutant", (int64_t)sh->current}});
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    for (int m = 0; m < kModes; ++m)
      for (int s = 0; s < 2; ++s) {
        tot.accepted[m][s] += sh->accepted[m][s];
        tot.rejected[m][s] += sh->rejected[m][s];
        tot.foreign[m][s] += sh->foreign[m][s];
      }
    if (sh->foreign_what[0] && tot.foreign_what.empty()) tot.foreign_what = sh->foreign_what;
    tot.max_decode_ns = std::max<int64_t>(tot.max_decode_ns, (int64_t)sh->max_decode_ns);
    if (WIFSIGNALED(st) && WTERMSIG(st) != SIGKILL) {
      tot.crashes.push_back({{"mutant", (int64_t)sh->current}, {"signal", WTERMSIG(st)}});
    } else if (WIFEXITED(st) && WEXITSTATUS(st) != 0) {
      BB_THROW("fuzz-bbz: a child exited with status ", WEXITSTATUS(st));
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
      tot.max_hwm_kb = std::max<int64_t>(tot.max_hwm_kb, (int64_t)sh->hwm_kb);
      return last;
    }
    return sh->current + 1;  // crashed or hung at `current`: go on after it
  };

  Totals valid;
  run_child(0, 0, true, valid);
  const int64_t valid_hwm_kb = valid.max_hwm_kb;
  BB_CHECK(valid_hwm_kb > 0, "fuzz-bbz: could not read the valid decode's peak memory (/proc/self/status)");

  Totals tot;
  int64_t next = 0;
  double last_log = 0;
  while (next < n_mutants) {
    next = run_child(next, std::min(n_mutants, next + batch), false, tot);
    const double t = now_ns() * 1e-9;
    if (t - last_log > 10 || next >= n_mutants) {
      log_info("fuzz-bbz: " + std::to_string(next) + " / " + std::to_string(n_mutants) + " mutants, " +
               std::to_string(tot.crashes.size()) + " crashes, " + std::to_string(tot.hangs.size()) + " hangs");
      last_log = t;
    }
  }
  munmap(sh, sizeof(Shared));
  if (!tmpdir.empty()) fs::remove_all(tmpdir);

  int64_t accepted = 0, rejected = 0, foreign = 0;
  nlohmann::json by_mode = nlohmann::json::object();
  for (int m = 0; m < kModes; ++m)
    for (int s = 0; s < 2; ++s) {
      accepted += tot.accepted[m][s];
      rejected += tot.rejected[m][s];
      foreign += tot.foreign[m][s];
      by_mode[std::string(kModeNames[m]) + (s ? "+resealed" : "")] = {
          {"accepted", tot.accepted[m][s]}, {"rejected", tot.rejected[m][s]}, {"foreign_exceptions", tot.foreign[m][s]}};
    }
  const double ratio = (double)tot.max_hwm_kb / (double)valid_hwm_kb;
  nlohmann::json src = nlohmann::json::array();
  for (const auto& s : sources) src.push_back({{"name", s.name}, {"bytes", s.bytes.size()}});
  nlohmann::json rep = {{"mutants", n_mutants},
                        {"seed", seed},
                        {"sources", src},
                        {"accepted", accepted},
                        {"rejected_with_error", rejected},
                        {"foreign_exceptions", foreign},
                        {"first_foreign_exception", tot.foreign_what},
                        {"crashes", tot.crashes},
                        {"hangs", tot.hangs},
                        {"timeout_s", timeout_s},
                        {"max_decode_seconds", tot.max_decode_ns * 1e-9},
                        {"peak_memory_valid_decode_mb", valid_hwm_kb / 1024.0},  // above the child's starting RSS
                        {"peak_memory_mutants_mb", tot.max_hwm_kb / 1024.0},
                        {"peak_memory_ratio", ratio},
                        {"max_memory_ratio", max_ratio},
                        {"child_processes", tot.children},
                        {"by_mode", by_mode},
                        {"wall_seconds", now_ns() * 1e-9 - t_start}};
  const bool ok = tot.crashes.empty() && tot.hangs.empty() && foreign == 0 && ratio <= max_ratio;
  rep["passed"] = ok;
  if (a.has("--json")) {
    const std::string out = a.get("--json");
    if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
    const std::string tmp = out + ".tmp";
    std::ofstream(tmp) << rep.dump(1) << "\n";
    fs::rename(tmp, out);
  }
  std::printf("fuzz-bbz: %lld mutants of %zu files: %lld decoded, %lld rejected with an error, %lld other exceptions, "
              "%zu crashes, %zu hangs; peak memory %.1f MB vs %.1f MB for the valid files (ratio %.2f, limit %.1f); "
              "slowest decode %.3f s -> %s\n",
              (long long)n_mutants, sources.size(), (long long)accepted, (long long)rejected, (long long)foreign,
              tot.crashes.size(), tot.hangs.size(), tot.max_hwm_kb / 1024.0, valid_hwm_kb / 1024.0, ratio, max_ratio,
              tot.max_decode_ns * 1e-9, ok ? "PASSED" : "FAILED");
  return ok ? 0 : 1;
}

namespace {
const bool r1 = register_command("fuzz-bbz", cmd_fuzz_bbz, "mutation-fuzz the .bbz decoder (crashes, hangs, memory)");
}  // namespace

}  // namespace bb
