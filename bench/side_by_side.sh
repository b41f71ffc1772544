#!/usr/bin/env bash
# Side by side (docs/PERFORMANCE.md, "Side by side"): wall seconds of two workloads with
# BITBENCH_SIDE_BY_SIDE=0 (one multi-threaded forward after the other) and =1 (bitbench's default:
# one single-threaded forward per core at a time), and whether both gave the same result: tq row-ELT
# at 2 bpw on cifar_resnet20 computing its curves (table2's settings; the files after their
# 200-byte provenance), and `bitbench eval` of cifar_resnet56 on cifar10-jpeg-test (top-1 and
# top-5). ROUNDS rounds (default 2), the two settings alternated.
set -euo pipefail
cd "$(dirname "$0")/.."
BB=${BB:-build/bitbench}
D=${BITBENCH_DATA_ROOT:-../shared/data}/models
ROUNDS=${ROUNDS:-2}
TQ="--set batch_size=25 --set blocks=16 --set calib_images=25 --set coder=fixed --set elt_ridge=0.001 --set step_search=logits_descent --set steps_per_octave=1 --set target_bpw=2 --set target_rate=core --set transform=elt --set transform_side=row"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
now() { date +%s.%N; }
work() {  # setting, tag; prints one line
  local s=$1 tag=$2 t0 q v out
  rm -rf "$TMP/cache"
  t0=$(now)
  BITBENCH_SIDE_BY_SIDE=$s "$BB" compress --method tq $TQ --model cifar_resnet20 --weights "$D/cifar10_resnet20.pt" \
    --calib cifar10-jpeg-train --cache-dir "$TMP/cache" --out "$TMP/t$tag.bbz" >/dev/null 2>&1
  q=$(python3 -c "print('%.1f' % ($(now) - $t0))")
  t0=$(now)
  out=$(BITBENCH_SIDE_BY_SIDE=$s "$BB" eval --model cifar_resnet56 --weights "$D/cifar10_resnet56.pt" \
    --dataset cifar10-jpeg-test --json 2>/dev/null)
  v=$(python3 -c "print('%.1f' % ($(now) - $t0))")
  echo "$out" | python3 -c "import json,sys; j=json.load(sys.stdin); print(j['top1'], j['top5'])" > "$TMP/e$tag.txt"
  echo "BITBENCH_SIDE_BY_SIDE=$s tq $q s, eval $v s | tq file $(cmp -s <(tail -c +200 "$TMP/t0a1.bbz") <(tail -c +200 "$TMP/t$tag.bbz") && echo same || echo DIFFERENT), eval top-1/top-5 $(cat "$TMP/e$tag.txt") ($(cmp -s "$TMP/e0a1.txt" "$TMP/e$tag.txt" && echo same || echo DIFFERENT))"
}
for r in $(seq "$ROUNDS"); do
  work 0 "0a$r"
  work 1 "1a$r"
done
