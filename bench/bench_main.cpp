// Entry point of bitbench_bench; the benchmarks live in the other bench/*.cpp files.
#include <benchmark/benchmark.h>

BENCHMARK_MAIN();
