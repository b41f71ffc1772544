#!/usr/bin/env bash
# Side by side (docs/PERFORMANCE.md, "Side by side"): wall seconds of two workloads with
# BITBENCH_SIDE_BY_SIDE=0 (one multi-threaded forward after the other) and =1 (bitbench's default:
# one single-threaded forward per core at a time), and whether both gave the same result: tq row-ELT
# at 2 bpw on cifar_resnet20 computing its curves (table2's settings; the files after their
# 200-byte provenance), and `bitbench eval` of cifar_resnet56 on cifar10-jpeg-test (top-1 and
# top-5). ROUNDS rounds (default 2), the two settings alternated.
source "$(dirname "$0")/ab_common.sh"
work() {  # setting, tag; prints one line
  local s=$1 tag=$2 q v
  rm -rf "$TMP/cache"
  q=$(secs BITBENCH_SIDE_BY_SIDE="$s" "$BB" compress --method tq $TQ --model cifar_resnet20 \
        --weights "$D/cifar10_resnet20.pt" --calib cifar10-jpeg-train --cache-dir "$TMP/cache" --out "$TMP/t$tag.bbz")
  v=$(secs_to "$TMP/e$tag.json" BITBENCH_SIDE_BY_SIDE="$s" "$BB" eval --model cifar_resnet56 \
        --weights "$D/cifar10_resnet56.pt" --dataset cifar10-jpeg-test --json)
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(j['top1'], j['top5'])" "$TMP/e$tag.json" >"$TMP/e$tag.txt"
  echo "BITBENCH_SIDE_BY_SIDE=$s tq $q s, eval $v s | tq file $(cmp -s <(tail -c +200 "$TMP/t0a1.bbz") <(tail -c +200 "$TMP/t$tag.bbz") && echo same || echo DIFFERENT), eval top-1/top-5 $(cat "$TMP/e$tag.txt") ($(cmp -s "$TMP/e0a1.txt" "$TMP/e$tag.txt" && echo same || echo DIFFERENT))"
}
for r in $(seq "$ROUNDS"); do
  work 0 "0a$r"
  work 1 "1a$r"
done
