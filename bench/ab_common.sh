# Sourced by the A/B scripts of bench/ (blas_timeout.sh, side_by_side.sh): the binary, the models
# folder, the rounds, table2's TQ row-ELT settings, a scratch folder removed on exit, and timers.
set -euo pipefail
cd "$(dirname "$0")/.."
BB=${BB:-build/bitbench}
D=${BITBENCH_DATA_ROOT:-../shared/data}/models
ROUNDS=${ROUNDS:-2}
TQ="--set batch_size=25 --set blocks=16 --set calib_images=25 --set coder=fixed --set elt_ridge=0.001 --set step_search=logits_descent --set steps_per_octave=1 --set target_bpw=2 --set target_rate=core --set transform=elt --set transform_side=row"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# secs_to FILE [VAR=value ...] command ...: runs it under env with stdout to FILE (stderr dropped)
# and prints its wall seconds; secs: the same with stdout dropped.
secs_to() {
  local out=$1 s
  shift
  s=$(date +%s.%N)
  env "$@" >"$out" 2>/dev/null
  python3 -c "print('%.1f' % ($(date +%s.%N) - $s))"
}
secs() { secs_to /dev/null "$@"; }
