#!/usr/bin/env bash
# Submits an experiment as a Slurm job array of N shards plus a dependent merge job.
#   scripts/slurm/sweep.sh experiments/E.yaml N [extra sbatch args...]
# Each array task runs `bitbench run E.yaml`, which reads its shard from SLURM_ARRAY_TASK_ID /
# SLURM_ARRAY_TASK_COUNT; every run writes only its own files (named by run ID), so shards on a
# shared filesystem never write the same file. The merge job (afterany: it also runs when some
# shard failed; failed runs leave failure records) writes the table and plots.
# Environment: BITBENCH_BIN (default build/bitbench), BITBENCH_RESULTS (results root),
# BITBENCH_LOGS (default <results>/<experiment>/logs).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 EXPERIMENT.yaml N [sbatch args...]" >&2
  exit 2
fi
exp=$1
n=$2
shift 2
[[ -f "$exp" ]] || { echo "sweep: experiment '$exp' not found" >&2; exit 2; }
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "sweep: N must be a positive integer, got '$n'" >&2; exit 2; }
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BITBENCH_BIN:-$here/build/bitbench}
[[ -x "$bin" ]] || { echo "sweep: $bin not built (run make)" >&2; exit 2; }
exp=$(realpath "$exp")
# Validate the experiment before submitting anything.
results_dir=$("$bin" plan "$exp" --results-dir)
logs=${BITBENCH_LOGS:-$results_dir/logs}
mkdir -p "$logs"
export_vars=ALL
array=$(sbatch --parsable --export=$export_vars --array=0-$((n - 1)) --job-name="bb-$(basename "$exp" .yaml)" \
  --output="$logs/shard-%a.out" "$@" --wrap "\"$bin\" run \"$exp\"")
merge=$(sbatch --parsable --export=$export_vars --dependency=afterany:"$array" --job-name="bb-merge" \
  --output="$logs/merge.out" "$@" --wrap "\"$bin\" table \"$results_dir\" --quiet")
echo "submitted array $array ($n tasks) and merge $merge; results in $results_dir"
echo "$array $merge" > "$logs/jobs"
