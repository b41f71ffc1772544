#include "common/runtime.h"
#include "common/error.h"
#include "common/log.h"
#include "common/timer.h"
#include "bitbench_build_info.h"
#include "bitbench_git_info.h"

#include <torch/torch.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <ctime>
#include <atomic>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>
#include <dlfcn.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace bb {

// OMP_NUM_THREADS is OpenMP's own variable (it may hold a list such as "4,2"): its first number,
// leniently. bitbench's own settings are parsed strictly (env_int_setting).
static int omp_threads() {
  const char* v = std::getenv("OMP_NUM_THREADS");
  return v && *v ? std::atoi(v) : 0;
}

void run_single_threaded_tasks(int64_t tasks, const std::function<void(int64_t, int)>& fn, int max_workers) {
  int64_t nw = std::min<int64_t>(at::get_num_threads(), tasks);
  if (max_workers > 0) nw = std::min<int64_t>(nw, max_workers);
  nw = std::max<int64_t>(1, nw);
  std::atomic<int64_t> next{0};
  std::mutex m;
  std::exception_ptr err;
#pragma omp parallel num_threads((int)nw)
  {
    omp_set_num_threads(1);  // this thread's nested regions (oneDNN's, libtorch's): one thread
    torch::NoGradGuard ng;
    const int worker = omp_get_thread_num();
    for (int64_t t; (t = next++) < tasks;) {
      try {
        fn(t, worker);
      } catch (...) {
        std::lock_guard<std::mutex> l(m);
        if (!err) err = std::current_exception();
      }
    }
  }
  if (err) std::rethrow_exception(err);
}

int side_by_side_workers() {
  static const bool on = env_int_setting("BITBENCH_SIDE_BY_SIDE", 1, 0, 1) == 1;
  return on ? std::max(1, at::get_num_threads()) : 1;
}

void run_side_by_side(int64_t tasks, int workers, const std::function<void(int64_t, int)>& fn) {
  if (workers > 1) return run_single_threaded_tasks(tasks, fn, workers);
  for (int64_t t = 0; t < tasks; ++t) fn(t, 0);
}

int64_t env_int_setting(const char* name, int64_t def, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  const bool ok = end != v && *end == 0 && errno == 0 && !std::isspace((unsigned char)v[0]) && x >= lo && x <= hi;
  BB_CHECK(ok, "environment variable ", name, "='", v, "' is not an integer in [", lo, ", ", hi, "]");
  return x;
}

int64_t pq_finetune_cache_mb() { return env_int_setting("BITBENCH_PQ_FT_CACHE_MB", 2048, 0, int64_t(1) << 20); }

std::string blas_in_use() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  std::string found = "none-loaded";
  while (std::getline(maps, line)) {
    if (line.find("openblas") != std::string::npos) return "openblas";
    if (line.find("libmkl") != std::string::npos) return "mkl";
    if (line.find("/blas/libblas.so") != std::string::npos) found = "reference";
    if (line.find("libblis") != std::string::npos) return "blis";
  }
  return found;
}

void pin_blas_environment(char** argv) {
  bool set = false;
  if (!std::getenv("OPENBLAS_CORETYPE")) {  // set by the user, or by the first execution
    __builtin_cpu_init();
    const char* core = "Prescott";
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      core = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      core = "Haswell";
    set |= setenv("OPENBLAS_CORETYPE", core, 1) == 0;
  }
  if (!std::getenv("OPENBLAS_THREAD_TIMEOUT")) set |= setenv("OPENBLAS_THREAD_TIMEOUT", kBlasThreadTimeout, 1) == 0;
  if (!set) return;
  execv("/proc/self/exe", argv);
  // Only on failure (no /proc): carry on with what OpenBLAS chose; blas_kernels() and the run
  // identity say which kernels.
  std::fprintf(stderr, "bitbench: warning: could not re-execute to pin OpenBLAS's kernels and thread timeout (%s); running with %s\n",
               std::strerror(errno), blas_kernels().c_str());
}

std::string blas_kernels() {
  using CoreName = char* (*)();
  auto f = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!f) return "";
  const char* name = f();
  if (!name) return "";
  std::string s = name;
  while (!s.empty() && std::isspace((unsigned char)s.back())) s.pop_back();
  return s;
}

void init_runtime() {
  static bool done = false;
  if (done) return;
  done = true;
  // BITBENCH_LOG_LEVEL: quiet | info (default) | debug (per-iteration statistics, rate searches).
  if (const char* e = std::getenv("BITBENCH_LOG_LEVEL"); e && *e) {
    const std::string v = e;
    BB_CHECK(v == "quiet" || v == "info" || v == "debug", "BITBENCH_LOG_LEVEL must be quiet, info or debug, got '", v,
             "'");
    set_log_level(v == "quiet" ? LogLevel::quiet : v == "info" ? LogLevel::info : LogLevel::debug);
  }
  if (const char* e = std::getenv("BITBENCH_HUGEPAGES"); !e || std::string(e) != "0") install_hugepage_allocator();
  int n = (int)env_int_setting("BITBENCH_THREADS", 0, 0, 4096);
  if (n <= 0) n = omp_threads();
  if (n <= 0) n = (int)std::thread::hardware_concurrency();
  if (n <= 0) n = 1;
  torch::set_num_threads(n);
  // Force BLAS to load so we can see which one the dynamic linker picked.
  {
    torch::NoGradGuard g;
    auto a = torch::ones({8, 8});
    (void)torch::mm(a, a);
  }
  std::string blas = blas_in_use();
  if (blas == "reference") {
    log_warn("*** reference BLAS is loaded: libtorch will run ~30x slower. "
             "Install libopenblas0-pthread (scripts/install-deps.sh). ***");
  }
}

std::string source_dir() { return BITBENCH_SOURCE_DIR; }
std::string binary_dir() { return BITBENCH_BINARY_DIR; }
std::string bitbench_version() { return BITBENCH_VERSION; }
std::string git_commit() { return BITBENCH_GIT_COMMIT; }

std::string data_root(const std::string& explicit_root) {
  std::string root = explicit_root;
  std::string origin = "--data-root";
  if (root.empty()) {
    if (const char* e = std::getenv("BITBENCH_DATA_ROOT"); e && *e) {
      root = e;
      origin = "BITBENCH_DATA_ROOT";
    }
  }
  if (root.empty()) {
    root = BITBENCH_DEFAULT_DATA_ROOT;
    origin = "default";
    // A relocated build: fall back to ../shared/data next to the current directory.
    if (!fs::exists(root) && fs::exists("../shared/data")) root = "../shared/data";
  }
  BB_CHECK(fs::is_directory(root), "data root '", root, "' (", origin,
           ") does not exist; pass --data-root DIR or set BITBENCH_DATA_ROOT (see datasets/README.md)");
  return fs::weakly_canonical(root).string();
}

std::string portable_data_path(const std::string& path) {
  std::error_code ec;
  const fs::path file = fs::weakly_canonical(path, ec);
  if (ec) return path;
  std::string root;
  try {
    root = data_root();
  } catch (const std::exception&) {
    return path;  // no data root on this machine: nothing to be relative to
  }
  const fs::path rel = file.lexically_relative(root);
  if (rel.empty() || *rel.begin() == "..") return path;
  return "${data}/" + rel.generic_string();
}

long peak_rss_bytes() {
  std::ifstream st("/proc/self/status");
  std::string key;
  while (st >> key) {
    if (key == "VmHWM:") {
      long kb = 0;
      st >> kb;
      return kb * 1024;
    }
    std::string rest;
    std::getline(st, rest);
  }
  return 0;
}

// "<model name> (family F model M)" from /proc/cpuinfo, "" where it is unreadable: libraries pick
// kernels by CPU (OpenBLAS unless pinned, oneDNN), so float results can differ between CPU models.
static std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  std::map<std::string, std::string> kv;  // the first processor's "key : value" lines
  while (std::getline(in, line) && !line.empty()) {
    const size_t c = line.find(':');
    if (c == std::string::npos) continue;
    const size_t ke = line.find_last_not_of(" \t", c == 0 ? 0 : c - 1);
    const size_t vb = line.find_first_not_of(" \t", c + 1);
    if (ke == std::string::npos || c == 0) continue;
    kv.emplace(line.substr(0, ke + 1), vb == std::string::npos ? "" : line.substr(vb));
  }
  if (!kv.count("model name")) return "";
  std::string out = kv["model name"];
  if (kv.count("cpu family") && kv.count("model")) out += " (family " + kv["cpu family"] + " model " + kv["model"] + ")";
  return out;
}

nlohmann::json context_json() {
  auto env = [](const char* name) { const char* v = std::getenv(name); return std::string(v ? v : ""); };
  static const std::string cpu = cpu_model();
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::time_t t = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return {{"schema_version", 1},
          {"bitbench_version", BITBENCH_VERSION},
          {"git_commit", BITBENCH_GIT_COMMIT},
          {"git_dirty", BITBENCH_GIT_DIRTY},  // tracked files differed from the commit at build time
          {"build_type", BITBENCH_BUILD_TYPE},
          {"host", host},
          {"cpu", cpu},
          {"date", date},
          {"num_threads", torch::get_num_threads()},
          {"blas", blas_in_use()},
          {"blas_kernels", blas_kernels()},
          // how idle threads waited, as libgomp read it at start-up ("" = unset: libgomp's default;
          // docs/PERFORMANCE.md, "Waiting threads")
          {"omp_wait_policy", env("OMP_WAIT_POLICY")},
          {"gomp_spincount", env("GOMP_SPINCOUNT")},
          // how long OpenBLAS's idle workers spin (pin_blas_environment; "" = OpenBLAS's default)
          {"openblas_thread_timeout", env("OPENBLAS_THREAD_TIMEOUT")},
          // workers of run_side_by_side (1 with BITBENCH_SIDE_BY_SIDE=0)
          {"side_by_side_workers", side_by_side_workers()},
          {"torch_version", TORCH_VERSION}};
}

}  // namespace bb
