// Process-wide set-up shared by the CLI, tests and benchmarks: thread count, BLAS check, paths,
// and the versioned "context" block every JSON output opens with.
#pragma once
#include <nlohmann/json.hpp>
#include <cstdint>
#include <functional>
#include <string>

namespace bb {

// Sets libtorch's intra-op threads to OMP_NUM_THREADS (or BITBENCH_THREADS), else the core
// count (libtorch starts at 1), and warns loudly if reference BLAS rather than OpenBLAS is loaded.
void init_runtime();
// Runs fn(task, worker) for task = 0 .. tasks-1 on an OpenMP team of min(at::get_num_threads(),
// tasks, max_workers if > 0) threads (worker = the team thread, 0 .. team-1), each task with an
// OpenMP team size of 1 for what it calls, under NoGradGuard. oneDNN plans its work (and splits
// its sums) by the OpenMP threads it sees, so every task gets the same single-threaded plan
// whatever the thread count. The team's own threads take the tasks in order, each as it comes
// free; the first exception a task throws is rethrown after all have finished. fn must be safe to
// run concurrently with itself.
void run_single_threaded_tasks(int64_t tasks, const std::function<void(int64_t task, int worker)>& fn,
                               int max_workers = 0);
// Work whose floats do not depend on how it is scheduled (evaluation's batches, TQ's curve-search
// blocks: a forward's floats do not depend on its thread count) runs side by side, one
// single-threaded task per core: on this machine's small convolutions faster than one
// multi-threaded task after the other (docs/PERFORMANCE.md, "Side by side").
// side_by_side_workers(): at::get_num_threads(), or 1 with BITBENCH_SIDE_BY_SIDE=0 (default 1;
// 0 or 1; to compare: bench/side_by_side.sh). run_side_by_side: with workers > 1,
// run_single_threaded_tasks on at most that many; else the tasks in order on the calling thread
// (worker 0), each on all threads.
int side_by_side_workers();
void run_side_by_side(int64_t tasks, int workers, const std::function<void(int64_t task, int worker)>& fn);

// Installs the CPU allocator that madvises large blocks for transparent huge pages (see
// hugepage_allocator.cpp); init_runtime does so unless BITBENCH_HUGEPAGES=0.
void install_hugepage_allocator();

// Runtime settings from the environment that change how fast, never what, bitbench computes (so
// they are not part of run IDs). Each is read here, parsed strictly: a value that is not a whole
// decimal integer in range is a bb::Error naming the variable and the value.
//
// BITBENCH_SIDE_BY_SIDE: see run_side_by_side.
//
// BITBENCH_PQ_FT_CACHE_MB (default 2048, 0..1048576): PQ's layer fine-tuning keeps every
// calibration image's layer input and teacher output when they fit in this many MiB, else
// recomputes them per step (the same batches either way).
int64_t pq_finetune_cache_mb();

// The strict parser: unset or empty -> def; otherwise the whole value must be a decimal integer in
// [lo, hi].
int64_t env_int_setting(const char* name, int64_t def, int64_t lo, int64_t hi);

// Name of the BLAS library mapped into this process ("openblas-pthread", "reference", ...).
std::string blas_in_use();

// OpenBLAS reads two settings from the environment as it loads; pin_blas_environment() makes both
// bitbench's and re-executes the program once (/proc/self/exe, same arguments) when it set either,
// so that OpenBLAS loads with them. Call it first thing in main().
// - Kernels: OpenBLAS picks them by CPU model, so one program gives other float results (other
//   bytes, another top-1) on another CPU, and OpenBLAS 0.3.21 falls back to generic SSE3 kernels on
//   CPUs it does not know. Unless OPENBLAS_CORETYPE is set, it is set by features rather than
//   model ("SkylakeX" where the CPU and OS have AVX-512 F/CD/BW/DQ/VL, else "Haswell" where AVX2
//   and FMA, else "Prescott"). kCanonicalBlasKernels: the kernels of the golden bytes and of every
//   committed run record whose identity has no "blas_kernels".
// - Thread timeout: after each call OpenBLAS's worker threads spin on sched_yield for 2^28 cycles
//   (its default) before they sleep, on the cores libtorch's OpenMP threads are about to use: in
//   one process, two thread pools on the same cores. Unless OPENBLAS_THREAD_TIMEOUT is set it is
//   set to kBlasThreadTimeout (2^4 cycles: they sleep at once; docs/PERFORMANCE.md, "Waiting
//   threads"). It decides only how idle threads wait, never a float.
void pin_blas_environment(char** argv);
inline constexpr const char* kBlasThreadTimeout = "4";
inline constexpr const char* kCanonicalBlasKernels = "SkylakeX";
// The kernels OpenBLAS runs (openblas_get_corename(): "SkylakeX", "Haswell", "Prescott", ...);
// "" where OpenBLAS is not loaded.
std::string blas_kernels();

// Data root: explicit value if non-empty, else $BITBENCH_DATA_ROOT, else ../shared/data
// relative to the source tree. Errors if the directory does not exist.
std::string data_root(const std::string& explicit_root = "");

// A file's name as written into outputs whose bytes must not depend on where the data lives:
// "${data}/<relative path>" for a file under the data root (the experiment-config spelling),
// otherwise the path as given. Same config on another machine => same string => same bytes.
std::string portable_data_path(const std::string& path);

// Source tree root (where configs/ and experiments/ live), build directory (where the bitbench
// binary is), version and commit as compiled in.
std::string source_dir();
std::string binary_dir();
std::string bitbench_version();
std::string git_commit();

// {"bitbench_version", "git_commit", "build_type", "host", "cpu", "date", "num_threads", "blas", "blas_kernels",
// "torch_version"}
nlohmann::json context_json();

}  // namespace bb
