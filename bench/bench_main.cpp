// Entry point of bitbench_bench; the benchmarks live in the other bench/*.cpp files. libtorch is
// set to all cores first (it starts at 1 thread), as in every bitbench command, and the JSON
// context block gets bitbench's version, commit, threads and BLAS beside Google Benchmark's own.
#include <benchmark/benchmark.h>

#include "common/runtime.h"

#include <torch/torch.h>

int main(int argc, char** argv) {
  bb::pin_blas_environment(argv);  // first: it may re-execute the program
  bb::init_runtime();
  benchmark::AddCustomContext("bitbench_version", bb::bitbench_version());
  benchmark::AddCustomContext("git_commit", bb::git_commit());
  benchmark::AddCustomContext("torch_threads", std::to_string(torch::get_num_threads()));
  benchmark::AddCustomContext("blas", bb::blas_in_use());
  benchmark::AddCustomContext("blas_kernels", bb::blas_kernels());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
