#!/usr/bin/env bash
# `make bench`: the benchmarks (not tests). Every speed figure is a ratio or a rate measured in
# this run on this machine.
#   1. Google Benchmark microbenchmarks (build/bitbench_bench): entropy coders' encode/decode MB/s
#      and bits/symbol against the empirical entropy; clustering kernels (vector and 1-D k-means,
#      the PQ E-step) against faiss on the same problems, time and objective. JSON (with the
#      context block) is written to results/bench/microbench.json; scripts/bench_summary.py
#      prints the ratios.
#   2. bench/eval_vs_pytorch.sh: `bitbench eval` images/s against a PyTorch Python loop on the same
#      images, as a ratio.
#   env: BENCH_FILTER  Google Benchmark filter regex (default: all)
#        SKIP_EVAL=1   skip the evaluation comparison
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
out=results/bench
mkdir -p "$out"
if [[ -x "$BUILD/bitbench_bench" ]]; then
  echo "=== microbenchmarks ($BUILD/bitbench_bench) ==="
  "$BUILD/bitbench_bench" --benchmark_filter="${BENCH_FILTER:-.}" \
    --benchmark_out="$out/microbench.json" --benchmark_out_format=json
  echo "JSON: $out/microbench.json"
  echo "=== summary ==="
  /usr/bin/python3 scripts/bench_summary.py "$out/microbench.json"
else
  echo "bench: $BUILD/bitbench_bench was not built (Google Benchmark missing? run scripts/install-deps.sh)" >&2
  exit 1
fi
if [[ "${SKIP_EVAL:-0}" != 1 ]]; then
  echo "=== evaluation: bitbench vs a PyTorch Python loop ==="
  bench/eval_vs_pytorch.sh "$BUILD"
fi
