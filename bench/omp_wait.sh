#!/usr/bin/env bash
# How idle OpenMP threads wait, on a quiet machine and beside another job (docs/PERFORMANCE.md,
# "Waiting threads"). Interleaved runs of libgomp's default (nothing set), GOMP_SPINCOUNT=30000
# and OMP_WAIT_POLICY=PASSIVE on two workloads: fine-tuning (the `finetune` phase of an fp32
# compress) and evaluation (wall of `bitbench eval --limit 5000`). "loaded": a loop of
# default-policy `bitbench eval` runs beside them. Env: REPS (2), IMAGES (768).
set -euo pipefail
cd "$(dirname "$0")/.."
BB=${BB:-build/bitbench}
D=${BITBENCH_DATA_ROOT:-../shared/data}
W=$D/models/cifar10_resnet20.pt
REPS=${REPS:-2}
IMAGES=${IMAGES:-768}
TMP=$(mktemp -d)
LP=
stop_load() { if [ -n "$LP" ]; then kill "$LP" 2>/dev/null || true; wait "$LP" 2>/dev/null || true; LP=; fi; }
trap 'stop_load; rm -rf "$TMP"' EXIT
one() {  # label, then env arguments
  local lab=$1; shift
  local ft t1 t2
  ft=$(env "$@" "$BB" compress --method fp32 --set finetune_epochs=1 --set finetune_max_images="$IMAGES" \
         --model cifar_resnet20 --weights "$W" --out "$TMP/q.bbz" --calib cifar10-jpeg-train --json 2>/dev/null |
       python3 -c "import json,sys; print(json.load(sys.stdin)['phase_seconds']['finetune'])")
  t1=$(date +%s.%N)
  env "$@" "$BB" eval --model cifar_resnet20 --weights "$W" --dataset cifar10-jpeg-test --limit 5000 >/dev/null 2>&1
  t2=$(date +%s.%N)
  python3 -c "print('%-6s %-8s finetune_s %6.2f  eval5000_s %6.2f' % ('$MODE', '$lab', $ft, $t2 - $t1))"
}
for MODE in quiet loaded; do
  if [ "$MODE" = loaded ]; then
    # the loop's own eval finishes within seconds of the kill; its subshell stops at once
    (while true; do env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$BB" eval --model cifar_resnet20 --weights "$W" \
       --dataset cifar10-jpeg-test --limit 2000 >/dev/null 2>&1; done) &
    LP=$!
    sleep 2
  fi
  for _ in $(seq "$REPS"); do
    one default -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT
    one spin30k -u OMP_WAIT_POLICY GOMP_SPINCOUNT=30000
    one PASSIVE -u GOMP_SPINCOUNT OMP_WAIT_POLICY=PASSIVE
  done
done
